//! One end of the frontend/broker `SOCK_SEQPACKET` socketpair: one message per packet,
//! descriptors by `SCM_RIGHTS`, a size check before decoding, a cap on descriptors per
//! packet, and a zero-length read taken as "peer gone".
//!
//! The socket is non-blocking. Sends that would block are queued in order and flushed when
//! the socket is writable again, so neither half ever blocks on the other.

use crate::wire::{decode_body, Envelope, Message, WireError, MAX_FDS, MAX_MESSAGE};
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Errors on the tube. Every one of them except `WouldBlock`-like conditions (which are
/// not errors here) means the peer is gone or not to be trusted any more.
#[derive(Debug, thiserror::Error)]
pub enum TubeError {
    /// The peer closed its end (or sent a zero-length packet, which we never send).
    #[error("peer closed the socketpair")]
    PeerGone,
    /// The packet was larger than [`MAX_MESSAGE`] or carried more than [`MAX_FDS`] descriptors.
    #[error("packet truncated: larger than {MAX_MESSAGE} bytes or more than {MAX_FDS} descriptors")]
    Truncated,
    /// The packet did not decode.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// The packet's descriptors do not fit its kind.
    #[error(transparent)]
    Fds(#[from] WireError),
    /// The message could not be encoded (too large).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A socket call failed.
    #[error("socketpair i/o")]
    Io(#[from] Errno),
}

struct Outgoing {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// One end of the socketpair.
pub struct Tube {
    sock: OwnedFd,
    outbox: VecDeque<Outgoing>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Tube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tube").field("fd", &self.sock.as_raw_fd()).field("queued", &self.outbox.len()).finish()
    }
}

impl Tube {
    /// Wraps a connected `SOCK_SEQPACKET` socket and makes it non-blocking.
    pub fn new(sock: OwnedFd) -> Result<Self, TubeError> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(sock.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(sock.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(Tube { sock, outbox: VecDeque::new(), buf: vec![0u8; MAX_MESSAGE + 1] })
    }

    /// Queues a message (and tries to send everything queued).
    pub fn send<M: Message>(&mut self, tag: u64, msg: M) -> Result<(), TubeError> {
        let (body, fds) = msg.into_wire();
        let bytes = bincode::encode_to_vec(Envelope { tag, body }, crate::wire::bincode_config())
            .map_err(|e| TubeError::Encode(e.to_string()))?;
        if bytes.len() > MAX_MESSAGE {
            return Err(TubeError::Encode(format!("{} bytes exceeds {MAX_MESSAGE}", bytes.len())));
        }
        self.outbox.push_back(Outgoing { bytes, fds });
        self.flush()
    }

    /// Sends raw bytes and descriptors as one packet, unchecked. Only for tests that play a
    /// hostile peer.
    pub fn send_raw(&mut self, bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Result<(), TubeError> {
        self.outbox.push_back(Outgoing { bytes, fds });
        self.flush()
    }

    /// Whether messages wait for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Sends queued messages until the socket would block.
    pub fn flush(&mut self) -> Result<(), TubeError> {
        while let Some(out) = self.outbox.front() {
            let raw: Vec<RawFd> = out.fds.iter().map(|f| f.as_raw_fd()).collect();
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &[IoSlice::new(&out.bytes)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(_) => {
                    self.outbox.pop_front();
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(TubeError::PeerGone),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one message, or `None` if none is waiting.
    pub fn recv<M: Message>(&mut self) -> Result<Option<(u64, M)>, TubeError> {
        let Some((len, fds)) = self.recv_packet()? else { return Ok(None) };
        let env: Envelope<M::Wire> = decode_body(&self.buf[..len]).map_err(TubeError::Decode)?;
        Ok(Some((env.tag, M::from_wire(env.body, fds)?)))
    }

    fn recv_packet(&mut self) -> Result<Option<(usize, Vec<OwnedFd>)>, TubeError> {
        let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut self.buf)];
        let msg = match recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => m,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::ECONNRESET) => return Err(TubeError::PeerGone),
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        // With MSG_CTRUNC nix refuses to iterate (ENOBUFS); the kernel has closed what did not fit.
        for c in msg.cmsgs().map_err(|_| TubeError::Truncated)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                fds.extend(crate::os::adopt_received(&raw));
            }
        }
        let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        let len = msg.bytes;
        // The control buffer may be rounded up by the allocator, so also count what came.
        if truncated || len > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(TubeError::Truncated);
        }
        if len == 0 {
            return Err(TubeError::PeerGone);
        }
        Ok(Some((len, fds)))
    }
}

impl AsFd for Tube {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Tube {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Makes a connected, close-on-exec `SOCK_SEQPACKET` pair.
pub fn socketpair() -> Result<(OwnedFd, OwnedFd), Errno> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Reply, Request, SessionId};

    #[test]
    fn messages_and_fds_cross() {
        let (a, b) = socketpair().unwrap();
        let (mut a, mut b) = (Tube::new(a).unwrap(), Tube::new(b).unwrap());
        let f: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        a.send(5, Request::Load { id: SessionId([1; 16]), memfd: f }).unwrap();
        let (tag, req) = b.recv::<Request>().unwrap().unwrap();
        assert_eq!(tag, 5);
        assert!(matches!(req, Request::Load { .. }));
        assert!(b.recv::<Request>().unwrap().is_none());
    }

    #[test]
    fn wrong_fd_count_is_an_error() {
        let (a, b) = socketpair().unwrap();
        let (mut a, mut b) = (Tube::new(a).unwrap(), Tube::new(b).unwrap());
        let (body, _) = Request::Kill { id: SessionId([1; 16]) }.into_wire();
        let bytes = bincode::encode_to_vec(Envelope { tag: 1, body }, crate::wire::bincode_config()).unwrap();
        let f: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        a.send_raw(bytes, vec![f]).unwrap();
        assert!(matches!(b.recv::<Request>(), Err(TubeError::Fds(_))));
    }

    #[test]
    fn too_many_fds_and_oversize_are_truncation() {
        let (a, b) = socketpair().unwrap();
        let (mut a, mut b) = (Tube::new(a).unwrap(), Tube::new(b).unwrap());
        let fds: Vec<OwnedFd> = (0..MAX_FDS + 1).map(|_| std::fs::File::open("/dev/null").unwrap().into()).collect();
        a.send_raw(vec![1, 2, 3], fds).unwrap();
        let r = b.recv::<Reply>();
        assert!(matches!(r, Err(TubeError::Truncated)), "{r:?}");
        a.send_raw(vec![0; MAX_MESSAGE + 10], vec![]).unwrap();
        let r = b.recv::<Reply>();
        assert!(matches!(r, Err(TubeError::Truncated)), "{r:?}");
    }

    #[test]
    fn closed_peer_is_gone() {
        let (a, b) = socketpair().unwrap();
        drop(a);
        let mut b = Tube::new(b).unwrap();
        assert!(matches!(b.recv::<Reply>(), Err(TubeError::PeerGone)));
    }
}
