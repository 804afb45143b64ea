//! Program output: each run's stdout and stderr pipes, read into the session's bounded
//! buffer (with per-stream byte counts and sha256 for the receipt), `LOGS`, and the
//! streams of `LOGS --follow`.

use super::ctx::{Caller, Outcome, Shared, StreamKind};
use super::io::{OutStream, Source};
use super::model::output_text;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use proto::reply::{LogChunk, LogEnd, Logs};
use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use uuid::Uuid;

/// Largest chunk of output per `LOGS --follow` line.
const FOLLOW_CHUNK: usize = 64 * 1024;

#[derive(Debug)]
struct Pipe {
    id: Uuid,
    stream: OutStream,
    file: File,
}

#[derive(Debug)]
struct Follower {
    id: Uuid,
    offset: u64,
}

/// What a follower gets now.
#[derive(Debug, Default)]
pub struct Pumped {
    /// Reply lines.
    pub lines: Vec<u8>,
    /// The stream ended with the last of them.
    pub done: bool,
}

/// The output owner.
#[derive(Debug)]
pub struct Output {
    pipes: HashMap<Token, Pipe>,
    followers: HashMap<Token, Follower>,
    scratch: Vec<u8>,
}

impl Default for Output {
    fn default() -> Self {
        Output { pipes: HashMap::new(), followers: HashMap::new(), scratch: vec![0u8; 1 << 20] }
    }
}

impl Output {
    /// A run started: watch its pipes, and read what is already there (edge-triggered).
    pub fn add_pipes(&mut self, sh: &mut Shared, id: Uuid, stdout: OwnedFd, stderr: OwnedFd) {
        let mut tokens = Vec::new();
        for (stream, fd) in [(OutStream::Stdout, stdout), (OutStream::Stderr, stderr)] {
            let file = File::from(fd);
            let _ = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
            match sh.io.register(&mut SourceFd(&file.as_raw_fd()), Interest::READABLE, Source::Pipe { id, stream }) {
                Ok(t) => {
                    self.pipes.insert(t, Pipe { id, stream, file });
                    tokens.push(t);
                }
                Err(e) => {
                    log::error!("cannot watch the output of {id}: {e}");
                    if let Some(s) = sh.sessions.get_mut(&id) {
                        s.pipes_open = s.pipes_open.saturating_sub(1);
                    }
                }
            }
        }
        for t in tokens {
            self.readable(sh, t);
        }
    }

    /// A pipe has output (or EOF).
    pub fn readable(&mut self, sh: &mut Shared, t: Token) {
        let Some(p) = self.pipes.get_mut(&t) else { return };
        let (id, stream) = (p.id, p.stream.index());
        let mut eof = false;
        let mut got = false;
        loop {
            match p.file.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    got = true;
                    if let Some(s) = sh.sessions.get_mut(&id) {
                        s.logs.push(&self.scratch[..n]);
                        s.out_bytes[stream] += n as u64;
                        sha2::Digest::update(&mut s.out_hash[stream], &self.scratch[..n]);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            if let Some(p) = self.pipes.remove(&t) {
                sh.io.deregister(&mut SourceFd(&p.file.as_raw_fd()), t);
            }
            if let Some(s) = sh.sessions.get_mut(&id) {
                s.pipes_open = s.pipes_open.saturating_sub(1);
            }
        }
        if got || eof {
            sh.sessions.touch(id);
        }
    }

    fn pipes_of(&self, id: Uuid) -> Vec<Token> {
        self.pipes.iter().filter(|(_, p)| p.id == id).map(|(t, _)| *t).collect()
    }

    /// A run ended, every process of it is dead: its pipes hold their last bytes, then EOF.
    pub fn drain(&mut self, sh: &mut Shared, id: Uuid) {
        for t in self.pipes_of(id) {
            self.readable(sh, t);
        }
    }

    /// The session is gone: stop watching its pipes.
    pub fn forget(&mut self, sh: &mut Shared, id: Uuid) {
        for t in self.pipes_of(id) {
            if let Some(p) = self.pipes.remove(&t) {
                sh.io.deregister(&mut SourceFd(&p.file.as_raw_fd()), t);
            }
        }
    }

    /// `LOGS <id> [--follow]`.
    pub fn logs(&mut self, sh: &mut Shared, caller: &Caller, id: Uuid, follow: bool) -> Outcome {
        let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
            Ok(s) => s,
            Err(e) => return Outcome::Refuse(e),
        };
        if follow {
            self.followers.insert(caller.waiter.conn, Follower { id, offset: 0 });
            return Outcome::Stream { reply: Vec::new(), kind: StreamKind::Follow };
        }
        let (bytes, dropped) = s.logs.read_from(0, usize::MAX);
        let (data, data_base64) = output_text(&bytes);
        Outcome::reply(&Logs {
            ok: proto::True,
            id,
            state: s.state,
            data,
            dropped,
            truncated: dropped > 0,
            data_base64,
        })
    }

    /// Connections following `id`.
    pub fn followers_of(&self, id: Uuid) -> Vec<Token> {
        self.followers.iter().filter(|(_, f)| f.id == id).map(|(t, _)| *t).collect()
    }

    /// The connection went away (or its stream ended).
    pub fn drop_follower(&mut self, conn: Token) {
        self.followers.remove(&conn);
    }

    /// What follower `conn` has not seen, within `room` bytes of output; the end of the
    /// stream once the run is over and its output drained (or the session is gone).
    pub fn pump(&mut self, sh: &Shared, conn: Token, room: usize) -> Pumped {
        let mut p = Pumped::default();
        let Some(f) = self.followers.get_mut(&conn) else { return p };
        let id = f.id;
        let Some(s) = sh.sessions.get(&id).filter(|s| !s.deleting) else {
            let end = LogEnd::Deleted { ok: proto::True, id, end: proto::True, deleted: true };
            proto::line_into(&mut p.lines, &end);
            p.done = true;
            self.followers.remove(&conn);
            return p;
        };
        if room == 0 {
            return p;
        }
        while f.offset < s.logs.end() && p.lines.len() < room {
            let (bytes, dropped) = s.logs.read_from(f.offset, FOLLOW_CHUNK);
            f.offset += dropped + bytes.len() as u64;
            let (data, data_base64) = output_text(&bytes);
            proto::line_into(&mut p.lines, &LogChunk { ok: proto::True, id, data, dropped, data_base64 });
        }
        let over = !s.state.alive() && s.pipes_open == 0 && !s.busy && f.offset >= s.logs.end();
        if over {
            let end = LogEnd::Ended { ok: proto::True, id, end: proto::True, state: s.state, exit: s.exit };
            proto::line_into(&mut p.lines, &end);
            p.done = true;
            self.followers.remove(&conn);
        }
        p
    }
}
