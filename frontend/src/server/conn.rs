//! A client connection: its byte stream, where its command lines and payloads begin and
//! end (the [`Framer`]), what it is doing ([`Mode`]), and its buffered output.

use super::ctx::{Caller, StreamKind, Waiter};
use crate::auth::Identity;
use crate::stream::Stream;
use mio::Token;
use proto::Framer;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

/// Bytes of pipelined input buffered while a connection is busy with a command.
pub const IN_CAP: usize = 64 * 1024;
/// Bytes of an attached client's input (stdin frames) buffered on their way to the run.
pub const ATTACHED_IN_CAP: usize = 1 << 20;
/// A connection's output buffer above which nothing more is produced for it.
pub const OUT_HIGH_WATER: usize = 1 << 20;

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reading command lines.
    Lines,
    /// Reading an upload's payload: stored by job `Some(job)`, or skipped (`None`); the
    /// UPLOAD's wait number, for its answer.
    Payload {
        /// The hashing thread's job.
        job: Option<u64>,
        /// The UPLOAD's wait.
        wait: u64,
    },
    /// Parked on wait `n` until an answer comes.
    Waiting(u64),
    /// Streaming (its owner pumps it).
    Stream(StreamKind),
    /// Carrying an attached run's frames both ways (`START --attach`).
    Attached,
    /// Sending a GET's or CORE's bytes ([`Conn::sending`]: the file, the offset reached,
    /// what is left), then reading commands again.
    Sending,
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    /// Its stream.
    pub stream: Stream,
    /// The client's address (`None` for a `--stdio` client on a pipe).
    pub peer: Option<SocketAddr>,
    /// Our address it reached.
    pub local: Option<SocketAddr>,
    /// Who it is: `None` until AUTH succeeds on a rig with tokens.
    pub identity: Option<Identity>,
    /// It is the `--stdio` daemon's one client.
    pub stdio_client: bool,
    /// The command being answered (for the audit log).
    pub verb: &'static str,
    /// Refusals written to the audit log for it (bounded).
    pub refusals: u32,
    /// Where its command lines and upload payloads begin and end.
    pub framer: Framer,
    /// Input read but not yet handled.
    pub inbuf: Vec<u8>,
    /// Output not yet written.
    pub out: Vec<u8>,
    out_pos: usize,
    /// What it is doing.
    pub mode: Mode,
    /// The peer sent EOF.
    pub eof: bool,
    /// Close once `out` is written.
    pub closing: bool,
    /// The socket failed; drop it.
    pub dead: bool,
    /// A GET's bytes still to send, and how many.
    pub sending: Option<(std::fs::File, u64, u64)>,
}

impl Conn {
    /// A new connection, reading command lines.
    pub fn new(
        stream: Stream,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        identity: Option<Identity>,
    ) -> Conn {
        Conn {
            stream,
            peer,
            local,
            identity,
            stdio_client: false,
            verb: "",
            refusals: 0,
            framer: Framer::default(),
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            mode: Mode::Lines,
            eof: false,
            closing: false,
            dead: false,
            sending: None,
        }
    }

    /// The caller a command of this connection is handled for.
    pub fn caller(&self, conn: Token, wait: u64) -> Caller {
        Caller {
            waiter: Waiter { conn, wait },
            identity: self.identity.clone(),
            peer: self.peer,
            local: self.local,
            stdio_client: self.stdio_client,
        }
    }

    /// The address as the audit log writes it.
    pub fn peer_str(&self) -> String {
        self.peer.map_or_else(|| "stdio".to_string(), |p| p.to_string())
    }

    /// Bytes queued for the client.
    pub fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Room left for output before the high-water mark.
    pub fn out_room(&self) -> usize {
        OUT_HIGH_WATER.saturating_sub(self.pending_out())
    }

    /// Reads into the input buffer until it would block or holds [`IN_CAP`]. Returns
    /// whether anything came (EOF and errors are noted in `eof` / `dead`).
    pub fn fill(&mut self, scratch: &mut [u8]) -> bool {
        self.fill_to(IN_CAP, scratch)
    }

    /// [`Conn::fill`], up to `cap` bytes buffered.
    pub fn fill_to(&mut self, cap: usize, scratch: &mut [u8]) -> bool {
        let mut got_any = false;
        while self.inbuf.len() < cap {
            let room = (cap - self.inbuf.len()).min(scratch.len());
            match self.stream.read(&mut scratch[..room]) {
                Ok(0) => {
                    self.eof = true;
                    return got_any;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    got_any = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return got_any,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    return false;
                }
            }
        }
        got_any
    }

    /// Writes what it can of the output buffer.
    pub fn flush(&mut self) {
        while self.out_pos < self.out.len() && !self.dead {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => self.dead = true,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > (1 << 16) {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// The output not yet written, taken out (the connection is handed over).
    pub fn take_out(&mut self) -> Vec<u8> {
        let rest = self.out.split_off(self.out_pos);
        self.out.clear();
        self.out_pos = 0;
        rest
    }

    /// Whether the connection is done: failed, closing with nothing left to write, or at
    /// EOF with nothing left to do (a parked or streaming one is dropped when it ends).
    pub fn finished(&self) -> bool {
        let busy = matches!(self.mode, Mode::Waiting(_) | Mode::Stream(_) | Mode::Attached | Mode::Sending);
        self.dead
            || (self.closing && self.pending_out() == 0)
            || (self.eof && !busy && self.pending_out() == 0 && self.inbuf.is_empty())
    }
}
