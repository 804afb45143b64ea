//! Where command lines and upload payloads begin and end on a control connection.

use crate::command::{announced_payload, UploadSize, MAX_LINE};

/// What comes next on a control connection's byte stream (see [`Framer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A command line, without its `\n` (a last line at EOF needs none).
    Line(Vec<u8>),
    /// Bytes of the current upload's payload.
    Payload(Vec<u8>),
    /// The current upload's payload is complete.
    PayloadEnd,
    /// Nothing complete yet: read more.
    NeedMore,
    /// No `\n` within `MAX_LINE + 1` bytes: the framing is lost (say why, then close).
    TooLong,
}

/// Splits a control connection's bytes into command lines and upload payloads: after
/// `UPLOAD <size>` is accepted (or refused but drained), exactly `size` bytes are payload,
/// whatever they contain, and the next line starts right after them.
///
/// The server keeps one per connection. Bytes it already buffered go through
/// [`Framer::next`]; payload it reads straight from the socket (the fast path) is counted
/// with [`Framer::payload_read`], so both agree on where the payload ends.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    payload_left: Option<u64>,
}

impl Framer {
    /// The next `size` bytes are an upload's payload.
    pub fn expect_payload(&mut self, size: u64) {
        self.payload_left = Some(size);
    }

    /// Payload bytes still to come, if in a payload.
    pub fn payload_left(&self) -> Option<u64> {
        self.payload_left
    }

    /// Counts `n` payload bytes the caller read past the buffer. `n` must not exceed
    /// [`Framer::payload_left`].
    pub fn payload_read(&mut self, n: u64) {
        if let Some(left) = self.payload_left.as_mut() {
            debug_assert!(n <= *left, "read past the payload");
            *left -= n.min(*left);
        }
    }

    /// Takes the next frame from the front of `buf` (removing what it takes). `eof`: no
    /// more bytes will come, so a last line without `\n` is still a line.
    pub fn next(&mut self, buf: &mut Vec<u8>, eof: bool) -> Frame {
        match self.payload_left {
            Some(0) => {
                self.payload_left = None;
                Frame::PayloadEnd
            }
            Some(left) => {
                if buf.is_empty() {
                    return Frame::NeedMore;
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                self.payload_left = Some(left - n as u64);
                Frame::Payload(buf.drain(..n).collect())
            }
            None => match buf.iter().position(|&b| b == b'\n') {
                Some(nl) if nl <= MAX_LINE + 1 => {
                    let mut line: Vec<u8> = buf.drain(..=nl).collect();
                    line.pop();
                    Frame::Line(line)
                }
                Some(_) => Frame::TooLong,
                None if buf.len() > MAX_LINE + 1 => Frame::TooLong,
                None if eof && !buf.is_empty() => Frame::Line(std::mem::take(buf)),
                None => Frame::NeedMore,
            },
        }
    }
}

/// A whole stream through a [`Framer`], fed in chunks of the given sizes (then 7 bytes at
/// a time), as a connection would see it: UPLOAD and PUT lines (read with
/// [`announced_payload`]) switch it to payload. Consecutive payload pieces are merged. For tests and the fuzz target.
pub fn split_stream(stream: &[u8], chunks: &[usize]) -> Vec<Frame> {
    let mut f = Framer::default();
    let (mut buf, mut out, mut pos, mut ci) = (Vec::new(), Vec::new(), 0, 0);
    loop {
        let eof = pos == stream.len();
        match f.next(&mut buf, eof) {
            Frame::NeedMore if eof => return out,
            Frame::NeedMore => {
                let n = chunks.get(ci).copied().unwrap_or(7).max(1).min(stream.len() - pos);
                ci += 1;
                buf.extend_from_slice(&stream[pos..pos + n]);
                pos += n;
            }
            Frame::TooLong => {
                out.push(Frame::TooLong);
                return out;
            }
            Frame::Line(l) => {
                // Accepted or refused, an UPLOAD's or PUT's bytes are payload.
                if let Some(UploadSize::Bytes(n)) = announced_payload(&l) {
                    f.expect_payload(n);
                }
                out.push(Frame::Line(l));
            }
            Frame::Payload(p) => match out.last_mut() {
                Some(Frame::Payload(q)) => q.extend(p),
                _ => out.push(Frame::Payload(p)),
            },
            Frame::PayloadEnd => out.push(Frame::PayloadEnd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes_are_never_taken_for_commands_whatever_the_chunks() {
        let stream = b"HELLO\nUPLOAD 12\nLIST\nKILL x\nSTATUS 1\r\nUPLOAD 0\nLIST";
        let want = vec![
            Frame::Line(b"HELLO".to_vec()),
            Frame::Line(b"UPLOAD 12".to_vec()),
            Frame::Payload(b"LIST\nKILL x\n".to_vec()),
            Frame::PayloadEnd,
            Frame::Line(b"STATUS 1\r".to_vec()),
            Frame::Line(b"UPLOAD 0".to_vec()),
            Frame::PayloadEnd,
            Frame::Line(b"LIST".to_vec()),
        ];
        for chunks in [vec![1000], vec![1; 100], vec![3, 5, 1, 16, 2], vec![6, 10, 12]] {
            assert_eq!(split_stream(stream, &chunks), want, "{chunks:?}");
        }
    }

    #[test]
    fn a_line_without_newline_in_max_line_loses_the_framing() {
        let mut long = vec![b'A'; MAX_LINE + 2];
        long.push(b'\n');
        assert_eq!(split_stream(&long, &[100; 100]), vec![Frame::TooLong]);
        let mut ok = vec![b'A'; MAX_LINE + 1];
        ok.push(b'\n');
        assert!(matches!(split_stream(&ok, &[MAX_LINE + 2])[0], Frame::Line(_)));
        // A payload of any size never trips the line limit.
        let mut big = b"UPLOAD 10000\n".to_vec();
        big.extend(vec![b'x'; 10000]);
        big.extend(b"HELLO\n");
        let f = split_stream(&big, &[9000, 9000]);
        assert_eq!(f.last(), Some(&Frame::Line(b"HELLO".to_vec())));
    }

    #[test]
    fn payload_read_past_the_buffer_is_counted() {
        let mut f = Framer::default();
        f.expect_payload(10);
        let mut buf = b"abc".to_vec();
        assert_eq!(f.next(&mut buf, false), Frame::Payload(b"abc".to_vec()));
        f.payload_read(7);
        assert_eq!(f.payload_left(), Some(0));
        let mut buf = b"HELLO\n".to_vec();
        assert_eq!(f.next(&mut buf, false), Frame::PayloadEnd);
        assert_eq!(f.next(&mut buf, false), Frame::Line(b"HELLO".to_vec()));
    }
}
