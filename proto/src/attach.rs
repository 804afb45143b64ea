//! The frames of an attached run (`START <id> --attach`). After START's reply line, the
//! connection carries binary frames both ways until the rig's `end` frame, after which the
//! rig closes it. Each frame is an 8-byte header — its type (one byte), three zero bytes,
//! the payload's length (u32, big-endian) — and the payload:
//!
//! | type | direction | payload |
//! |---|---|---|
//! | 0 `stdin` | client → rig | bytes for the program's stdin; an empty payload is EOF |
//! | 1 `stdout` | rig → client | bytes the program wrote to stdout (or its terminal) |
//! | 2 `stderr` | rig → client | bytes the program wrote to stderr |
//! | 3 `end` | rig → client | the run's end, JSON ([`crate::reply::LogEnd`]) |
//! | 4 `resize` | client → rig | the terminal's rows and columns (u16 + u16, big-endian) |
//! | 5 `signal` | client → rig | a signal number (one byte) for the program's process group |
//!
//! The run belongs to the connection: if it closes before the `end` frame, the run is
//! killed (and with `"remove":true` the session deleted). This is a parser of untrusted
//! input on both ends: it never panics, never allocates from a length before the bytes
//! are there, and refuses unknown types, non-zero reserved bytes and oversized frames.

/// Bytes of a frame header.
pub const HEADER: usize = 8;
/// Largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest `end` payload.
pub const MAX_END: usize = 64 * 1024;

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client → rig: stdin bytes (empty: EOF).
    Stdin = 0,
    /// Rig → client: stdout bytes.
    Stdout = 1,
    /// Rig → client: stderr bytes.
    Stderr = 2,
    /// Rig → client: the end, JSON.
    End = 3,
    /// Client → rig: terminal size.
    Resize = 4,
    /// Client → rig: a signal.
    Signal = 5,
}

/// A frame the rig accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// Bytes for stdin.
    Stdin(&'a [u8]),
    /// stdin is over.
    StdinEof,
    /// The client's terminal changed size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Send this signal to the program's process group.
    Signal(u8),
}

/// A frame the client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RigFrame<'a> {
    /// stdout bytes.
    Stdout(&'a [u8]),
    /// stderr bytes.
    Stderr(&'a [u8]),
    /// The end (JSON of [`crate::reply::LogEnd`]).
    End(&'a [u8]),
}

/// Why a byte stream is not a frame stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A type this side does not accept.
    #[error("frame type {0} is not accepted here")]
    Type(u8),
    /// Reserved header bytes were not zero.
    #[error("frame header has non-zero reserved bytes")]
    Reserved,
    /// The payload is longer than allowed.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLong(u32),
    /// A fixed-size payload had the wrong size.
    #[error("{kind} frame of {len} bytes, want {want}")]
    Size {
        /// Which frame.
        kind: &'static str,
        /// Its length.
        len: u32,
        /// The length it must have.
        want: u32,
    },
    /// Signal 0 or beyond the numbers a signal can have.
    #[error("signal {0} is not a signal number (1..64)")]
    Signal(u8),
}

/// The header of a frame of `kind` with `len` payload bytes.
pub fn header(kind: Kind, len: usize) -> [u8; HEADER] {
    let l = (len.min(u32::MAX as usize) as u32).to_be_bytes();
    [kind as u8, 0, 0, 0, l[0], l[1], l[2], l[3]]
}

/// Appends a whole frame to `out`.
pub fn push(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    out.extend_from_slice(&header(kind, payload.len()));
    out.extend_from_slice(payload);
}

/// The type and length of the frame at the front of `buf`, once its header is there.
fn head(buf: &[u8], max: impl Fn(u8) -> Option<usize>) -> Result<Option<(u8, usize)>, FrameError> {
    let Some(h) = buf.get(..HEADER) else { return Ok(None) };
    if h[1..4] != [0, 0, 0] {
        return Err(FrameError::Reserved);
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let limit = max(h[0]).ok_or(FrameError::Type(h[0]))?;
    if len as usize > limit {
        return Err(FrameError::TooLong(len));
    }
    Ok(Some((h[0], len as usize)))
}

/// The header at the front of `buf` (rig side), checked: the frame's type (0, 4 or 5) and
/// payload length, or `None` when the header is not all there. The rig streams a stdin
/// payload as it arrives; the small control payloads it takes whole ([`control`]).
pub fn client_header(buf: &[u8]) -> Result<Option<(u8, usize)>, FrameError> {
    let max = |t: u8| match t {
        0 => Some(MAX_PAYLOAD),
        4 => Some(4),
        5 => Some(1),
        _ => None,
    };
    head(buf, max)
}

/// A control frame (type 4 or 5) from its whole payload.
pub fn control(t: u8, p: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    let len = p.len() as u32;
    match t {
        4 if len == 4 => {
            Ok(ClientFrame::Resize { rows: u16::from_be_bytes([p[0], p[1]]), cols: u16::from_be_bytes([p[2], p[3]]) })
        }
        4 => Err(FrameError::Size { kind: "resize", len, want: 4 }),
        5 if len == 1 => match p[0] {
            s @ 1..=64 => Ok(ClientFrame::Signal(s)),
            s => Err(FrameError::Signal(s)),
        },
        5 => Err(FrameError::Size { kind: "signal", len, want: 1 }),
        t => Err(FrameError::Type(t)),
    }
}

/// The frame at the front of `buf` (rig side) and the bytes it took, or `None` when more
/// bytes are needed.
pub fn parse_client(buf: &[u8]) -> Result<Option<(ClientFrame<'_>, usize)>, FrameError> {
    let Some((t, len)) = client_header(buf)? else { return Ok(None) };
    let Some(p) = buf.get(HEADER..HEADER + len) else { return Ok(None) };
    let frame = match t {
        0 if p.is_empty() => ClientFrame::StdinEof,
        0 => ClientFrame::Stdin(p),
        t => control(t, p)?,
    };
    Ok(Some((frame, HEADER + len)))
}

/// The frame at the front of `buf` (client side) and the bytes it took, or `None` when
/// more bytes are needed.
pub fn parse_rig(buf: &[u8]) -> Result<Option<(RigFrame<'_>, usize)>, FrameError> {
    let max = |t: u8| match t {
        1 | 2 => Some(MAX_PAYLOAD),
        3 => Some(MAX_END),
        _ => None,
    };
    let Some((t, len)) = head(buf, max)? else { return Ok(None) };
    let Some(p) = buf.get(HEADER..HEADER + len) else { return Ok(None) };
    let frame = match t {
        1 => RigFrame::Stdout(p),
        2 => RigFrame::Stderr(p),
        _ => RigFrame::End(p),
    };
    Ok(Some((frame, HEADER + len)))
}

/// A resize frame.
pub fn resize(rows: u16, cols: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + 4);
    let (r, c) = (rows.to_be_bytes(), cols.to_be_bytes());
    push(&mut v, Kind::Resize, &[r[0], r[1], c[0], c[1]]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut wire = Vec::new();
        push(&mut wire, Kind::Stdin, b"hello");
        wire.extend(resize(24, 80));
        push(&mut wire, Kind::Signal, &[2]);
        push(&mut wire, Kind::Stdin, b"");
        let want = [
            ClientFrame::Stdin(b"hello"),
            ClientFrame::Resize { rows: 24, cols: 80 },
            ClientFrame::Signal(2),
            ClientFrame::StdinEof,
        ];
        let mut got = Vec::new();
        let mut at = 0;
        while let Some((f, used)) = parse_client(&wire[at..]).unwrap() {
            got.push(format!("{f:?}"));
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(got, want.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>());
        // Every prefix short of a whole frame asks for more.
        for cut in 0..HEADER + 5 {
            assert_eq!(parse_client(&wire[..cut]).unwrap(), None, "{cut}");
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        assert_eq!(parse_client(&[9, 0, 0, 0, 0, 0, 0, 0]), Err(FrameError::Type(9)));
        assert_eq!(parse_client(&[1, 0, 0, 0, 0, 0, 0, 0]), Err(FrameError::Type(1)));
        assert_eq!(parse_client(&[0, 1, 0, 0, 0, 0, 0, 0]), Err(FrameError::Reserved));
        assert_eq!(parse_client(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]), Err(FrameError::TooLong(u32::MAX)));
        assert_eq!(
            parse_client(&[4, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]),
            Err(FrameError::Size { kind: "resize", len: 3, want: 4 })
        );
        assert_eq!(parse_client(&[5, 0, 0, 0, 0, 0, 0, 1, 0]), Err(FrameError::Signal(0)));
        assert_eq!(parse_client(&[5, 0, 0, 0, 0, 0, 0, 1, 65]), Err(FrameError::Signal(65)));
        assert_eq!(parse_rig(&[0, 0, 0, 0, 0, 0, 0, 0]), Err(FrameError::Type(0)));
        assert_eq!(parse_rig(&[3, 0, 0, 0, 0, 1, 0, 1]), Err(FrameError::TooLong(65537)));
        let mut v = Vec::new();
        push(&mut v, Kind::Stderr, b"e");
        assert_eq!(parse_rig(&v).unwrap(), Some((RigFrame::Stderr(b"e"), HEADER + 1)));
    }
}
