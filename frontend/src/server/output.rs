//! Program output: each run's stdout and stderr pipes (or its terminal), read into the
//! session's [`super::ring::Ring`] with per-stream byte counts and sha256 for the receipt; `LOGS`; and
//! the consumers of a run's output — `LOGS --follow` connections (JSON lines) and the
//! attached client of `START --attach` (frames).
//!
//! Back-pressure: while a run has consumers, its pipes are read only as far as the ring
//! can hold what the slowest of them has not taken yet. A pipe that may not be read is
//! *paused* (not read, so the program blocks in `write`), and resumed when a consumer takes
//! enough or goes away. Nothing a consumer follows is ever dropped; nobody else waits.
//! Without consumers the ring keeps the newest bytes and counts the rest as dropped. When
//! a run has ended, the last bytes in its pipes are read whatever the room (the ring grows
//! by at most the pipes' size), so that its receipt counts every byte.

use super::ctx::{Caller, Outcome, Shared, StreamKind};
use super::io::Source;
use super::model::output_text;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use proto::attach::{self, Kind as FrameKind};
use proto::reply::{LogChunk, LogEnd, Logs};
use proto::Stream;
use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use uuid::Uuid;

/// Largest chunk of output per `LOGS --follow` line.
const FOLLOW_CHUNK: usize = 64 * 1024;
/// Largest stdout/stderr frame of an attached run.
const FRAME_CHUNK: usize = 256 * 1024;
/// Room a paused pipe waits for before it is read again (fewer, larger reads).
const RESUME_ROOM: usize = 64 * 1024;

#[derive(Debug)]
struct Pipe {
    id: Uuid,
    stream: Stream,
    file: File,
    /// Not read for lack of room (its readiness edge was not consumed).
    paused: bool,
}

/// How a consumer gets its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `LOGS --follow`: JSON lines, of one stream or both.
    Lines(Option<Stream>),
    /// An attached client: frames ([`proto::attach`]).
    Frames,
}

#[derive(Debug)]
struct Consumer {
    id: Uuid,
    offset: u64,
    format: Format,
    /// Bytes dropped before it came, told with its first chunk.
    dropped_before: u64,
}

/// What a consumer gets now.
#[derive(Debug, Default)]
pub struct Pumped {
    /// Reply lines or frames.
    pub bytes: Vec<u8>,
    /// The stream ended with the last of them.
    pub done: bool,
}

/// The output owner.
#[derive(Debug)]
pub struct Output {
    pipes: HashMap<Token, Pipe>,
    consumers: HashMap<Token, Consumer>,
    scratch: Vec<u8>,
}

impl Default for Output {
    fn default() -> Self {
        Output { pipes: HashMap::new(), consumers: HashMap::new(), scratch: vec![0u8; 1 << 20] }
    }
}

impl Output {
    /// A run started: watch its pipes (`stderr` is `None` on a terminal), and read what is
    /// already there (edge-triggered).
    pub fn add_pipes(&mut self, sh: &mut Shared, id: Uuid, stdout: OwnedFd, stderr: Option<OwnedFd>) {
        // A follower still taking the last run's output (its ring was just cleared) goes on
        // with this run's, from its first byte.
        for c in self.consumers.values_mut().filter(|c| c.id == id) {
            c.offset = 0;
            c.dropped_before = 0;
        }
        let mut tokens = Vec::new();
        let pipes = [(Stream::Stdout, Some(stdout)), (Stream::Stderr, stderr)];
        for (stream, fd) in pipes.into_iter().filter_map(|(s, fd)| fd.map(|fd| (s, fd))) {
            let file = File::from(fd);
            let _ = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
            match sh.io.register(&mut SourceFd(&file.as_raw_fd()), Interest::READABLE, Source::Pipe { id, stream }) {
                Ok(t) => {
                    self.pipes.insert(t, Pipe { id, stream, file, paused: false });
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
            self.read_pipe(sh, t, false);
        }
    }

    /// A pipe has output (or EOF).
    pub fn readable(&mut self, sh: &mut Shared, t: Token) {
        self.read_pipe(sh, t, false);
    }

    /// The oldest offset a consumer of `id` has not taken, if it has consumers.
    fn keep_from(&self, id: Uuid) -> Option<u64> {
        self.consumers.values().filter(|c| c.id == id).map(|c| c.offset).min()
    }

    /// Reads a pipe until it would block, ends, or (unless `force`) the ring has no room
    /// for what the run's consumers have not taken.
    fn read_pipe(&mut self, sh: &mut Shared, t: Token, force: bool) {
        let Some(p) = self.pipes.get(&t) else { return };
        let (id, stream) = (p.id, p.stream);
        let keep = self.keep_from(id);
        let Some(p) = self.pipes.get_mut(&t) else { return };
        p.paused = false;
        let mut eof = false;
        let mut got = false;
        while let Some(s) = sh.sessions.get_mut(&id) {
            let room = match keep {
                Some(k) if !force => s.logs.room(k),
                _ => self.scratch.len(),
            };
            if room == 0 {
                p.paused = true;
                break;
            }
            let want = room.min(self.scratch.len());
            match p.file.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    got = true;
                    let data = &self.scratch[..n];
                    s.logs.push(stream, data, keep);
                    s.out_bytes[stream.index()] += n as u64;
                    sha2::Digest::update(&mut s.out_hash[stream.index()], data);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EIO: a terminal whose every slave is closed.
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

    /// Reads the paused pipes of `id` again if its consumers made enough room.
    fn resume(&mut self, sh: &mut Shared, id: Uuid) {
        let paused: Vec<Token> = self.pipes.iter().filter(|(_, p)| p.id == id && p.paused).map(|(t, _)| *t).collect();
        if paused.is_empty() {
            return;
        }
        let room = match (self.keep_from(id), sh.sessions.get(&id)) {
            (Some(k), Some(s)) => s.logs.room(k),
            _ => usize::MAX,
        };
        if room >= RESUME_ROOM.min(sh.cfg.log_buffer) {
            for t in paused {
                self.read_pipe(sh, t, false);
            }
        }
    }

    /// A run ended, every process of it is dead: its pipes hold their last bytes, then EOF.
    pub fn drain(&mut self, sh: &mut Shared, id: Uuid) {
        for t in self.pipes_of(id) {
            self.read_pipe(sh, t, true);
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

    /// `LOGS <id> [--follow] [--stream S]`.
    pub fn logs(
        &mut self,
        sh: &mut Shared,
        caller: &Caller,
        id: Uuid,
        follow: bool,
        stream: Option<Stream>,
    ) -> Outcome {
        let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
            Ok(s) => s,
            Err(e) => return Outcome::Refuse(e),
        };
        if follow {
            self.consume(sh, caller.waiter.conn, id, Format::Lines(stream));
            return Outcome::Stream { reply: Vec::new(), kind: StreamKind::Follow };
        }
        let (pieces, _) = s.logs.read(0, usize::MAX, stream);
        let mut bytes = Vec::with_capacity(pieces.iter().map(|p| p.len()).sum());
        for p in &pieces {
            bytes.extend_from_slice(p.bytes.0);
            bytes.extend_from_slice(p.bytes.1);
        }
        let dropped = s.logs.dropped(stream);
        let (data, data_base64) = output_text(&bytes);
        Outcome::reply(&Logs {
            ok: proto::True,
            id,
            state: s.state,
            data,
            dropped,
            truncated: dropped > 0,
            data_base64,
            stream,
        })
    }

    /// Connection `conn` consumes the output of `id` from the oldest byte held on.
    pub fn consume(&mut self, sh: &Shared, conn: Token, id: Uuid, format: Format) {
        let (offset, dropped_before) = match sh.sessions.get(&id) {
            Some(s) => (s.logs.start(), s.logs.dropped(if let Format::Lines(only) = format { only } else { None })),
            None => (0, 0),
        };
        self.consumers.insert(conn, Consumer { id, offset, format, dropped_before });
    }

    /// Connections consuming `id`.
    pub fn consumers_of(&self, id: Uuid) -> Vec<Token> {
        self.consumers.iter().filter(|(_, c)| c.id == id).map(|(t, _)| *t).collect()
    }

    /// The connection went away (or its stream ended): its run's pipes may be read again.
    pub fn drop_consumer(&mut self, sh: &mut Shared, conn: Token) {
        if let Some(c) = self.consumers.remove(&conn) {
            self.resume(sh, c.id);
        }
    }

    /// What consumer `conn` has not taken, within about `room` bytes; the end of the stream
    /// once the run is over and its output taken (or the session is gone).
    pub fn pump(&mut self, sh: &mut Shared, conn: Token, room: usize) -> Pumped {
        let mut p = Pumped::default();
        let Some(c) = self.consumers.get_mut(&conn) else { return p };
        let (id, format) = (c.id, c.format);
        let Some(s) = sh.sessions.get(&id).filter(|s| !s.deleting) else {
            let end = LogEnd::Deleted { ok: proto::True, id, end: proto::True, deleted: true };
            end_into(&mut p.bytes, format, &end);
            p.done = true;
            self.consumers.remove(&conn);
            return p;
        };
        let only = match format {
            Format::Lines(only) => only,
            Format::Frames => None,
        };
        let chunk = if format == Format::Frames { FRAME_CHUNK } else { FOLLOW_CHUNK };
        let before = c.offset;
        while c.offset < s.logs.end() && p.bytes.len() < room {
            let (pieces, next) = s.logs.read(c.offset, chunk, only);
            for piece in &pieces {
                match format {
                    Format::Frames => {
                        let kind = if piece.stream == Stream::Stdout { FrameKind::Stdout } else { FrameKind::Stderr };
                        p.bytes.extend_from_slice(&attach::header(kind, piece.len()));
                        p.bytes.extend_from_slice(piece.bytes.0);
                        p.bytes.extend_from_slice(piece.bytes.1);
                    }
                    Format::Lines(_) => {
                        let (data, data_base64) = output_text(&piece.to_vec());
                        let dropped = std::mem::take(&mut c.dropped_before);
                        let chunk = LogChunk { ok: proto::True, id, stream: piece.stream, data, dropped, data_base64 };
                        proto::line_into(&mut p.bytes, &chunk);
                    }
                }
            }
            c.offset = next;
        }
        let over = !s.state.alive() && s.pipes_open == 0 && !s.busy && c.offset >= s.logs.end();
        if over {
            let end = LogEnd::Ended {
                ok: proto::True,
                id,
                end: proto::True,
                state: s.state,
                exit: s.exit,
                limit_hit: s.limit_hit(),
            };
            end_into(&mut p.bytes, format, &end);
            p.done = true;
            self.consumers.remove(&conn);
        }
        if c_moved(before, self.consumers.get(&conn).map(|c| c.offset)) || p.done {
            self.resume(sh, id);
        }
        p
    }
}

/// Whether a consumer took anything (`None`: it is gone, which frees room too).
fn c_moved(before: u64, now: Option<u64>) -> bool {
    now.is_none_or(|n| n != before)
}

fn end_into(out: &mut Vec<u8>, format: Format, end: &LogEnd) {
    match format {
        Format::Lines(_) => proto::line_into(out, end),
        Format::Frames => {
            let json = serde_json::to_vec(end).unwrap_or_default();
            attach::push(out, FrameKind::End, &json);
        }
    }
}
