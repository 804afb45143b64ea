//! Attached runs (`START <id> --attach`, [`proto::attach`]): the connection that started
//! the run carries its I/O as frames and owns it. This owner holds, per attached
//! connection, the run's stdin (a pipe, or the terminal's master) and reads the client's
//! frames: stdin bytes are written as they arrive — when the pipe is full the rest waits
//! in the connection's buffer and nothing more is read from the socket, so the client
//! blocks in `write` — resizes go to the terminal, signals to the broker. The output side
//! is the output owner's (a consumer in frame format). When the connection goes away
//! before the run's end, the loop abandons the run: it is killed (and with `remove`,
//! deleted).

use super::broker_link::Owner;
use super::ctx::Shared;
use super::io::Source;
use super::uploads::session_id;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use proto::attach::{self, ClientFrame, FrameError, HEADER};
use shared::Request;
use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use uuid::Uuid;

#[derive(Debug)]
struct Attached {
    id: Uuid,
    /// An exec of the session (`EXEC`) instead of its program.
    exec: Option<u32>,
    /// The run's stdin (the terminal's master on a tty) and its token, while open.
    stdin: Option<(File, Token)>,
    /// The client sends stdin.
    wants_stdin: bool,
    /// The run is on a terminal (resizes apply).
    tty: bool,
    /// Delete the session when the run ends or the client goes.
    remove: bool,
    /// Bytes of the current stdin frame's payload still to come.
    stdin_left: usize,
}

/// What reading a connection's frames did.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes were taken (`true`) or none were there (`false`).
    Took(bool),
    /// stdin is full: the rest waits until the program reads.
    Blocked,
    /// The client broke the framing.
    Bad(FrameError),
}

/// The attach owner.
#[derive(Debug, Default)]
pub struct Attach {
    conns: HashMap<Token, Attached>,
}

impl Attach {
    /// Connection `conn` now carries the run of `id` (or its exec `exec`).
    pub fn adopt(&mut self, conn: Token, id: Uuid, exec: Option<u32>, stdin: bool, tty: bool, remove: bool) {
        self.conns.insert(conn, Attached { id, exec, stdin: None, wants_stdin: stdin, tty, remove, stdin_left: 0 });
    }

    /// The run of `id` (or its exec `exec`) started: its stdin's write end. Kept for an
    /// attached client that sends stdin (or for a terminal's resizes); otherwise closed, so
    /// stdin is at EOF.
    pub fn take_stdin(&mut self, sh: &mut Shared, id: Uuid, exec: Option<u32>, fd: OwnedFd) {
        let Some((&conn, a)) = self.conns.iter_mut().find(|(_, a)| a.id == id && a.exec == exec) else { return };
        if !a.wants_stdin && !a.tty {
            return;
        }
        let file = File::from(fd);
        let _ = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
        // Watched for room: the connection's waiting input goes on when the program reads.
        match sh.io.register(&mut SourceFd(&file.as_raw_fd()), Interest::WRITABLE, Source::Stdin { conn }) {
            Ok(t) => a.stdin = Some((file, t)),
            Err(e) => log::error!("cannot watch the stdin of {id}: {e}"),
        }
    }

    /// The exec the connection carries, if it carries one.
    pub fn exec_of(&self, conn: Token) -> Option<u32> {
        self.conns.get(&conn).and_then(|a| a.exec)
    }

    /// Takes the complete frames at the front of `inbuf` (stdin payloads as far as they
    /// have come and the pipe takes them).
    pub fn input(&mut self, sh: &mut Shared, conn: Token, inbuf: &mut Vec<u8>) -> Input {
        let Some(a) = self.conns.get_mut(&conn) else { return Input::Took(false) };
        let mut at = 0;
        let mut result = None;
        while at < inbuf.len() && result.is_none() {
            if a.stdin_left > 0 {
                let n = a.stdin_left.min(inbuf.len() - at);
                match write_stdin(a, &inbuf[at..at + n]) {
                    Ok(0) => result = Some(Input::Blocked),
                    Ok(w) => {
                        at += w;
                        a.stdin_left -= w;
                    }
                    // Closed (the program closed its stdin, or the client did not ask for
                    // it): the bytes go nowhere.
                    Err(broken) => {
                        if broken {
                            close_stdin(sh, a);
                        }
                        at += n;
                        a.stdin_left -= n;
                    }
                }
                continue;
            }
            let (t, len) = match attach::client_header(&inbuf[at..]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    result = Some(Input::Bad(e));
                    break;
                }
            };
            if t == 0 {
                at += HEADER;
                if len == 0 {
                    // EOF. A terminal stays open (it also carries the output).
                    if !a.tty {
                        close_stdin(sh, a);
                    }
                } else {
                    a.stdin_left = len;
                }
                continue;
            }
            let Some(payload) = inbuf.get(at + HEADER..at + HEADER + len) else { break };
            match attach::control(t, payload) {
                Ok(ClientFrame::Resize { rows, cols }) => {
                    if let (true, Some((f, _))) = (a.tty, &a.stdin) {
                        let _ = crate::sys::set_winsize(f.as_fd(), rows.max(1), cols.max(1));
                    }
                }
                Ok(ClientFrame::Signal(sig)) => {
                    let req = Request::Signal { id: session_id(&a.id), exec: a.exec, sig: i32::from(sig) };
                    // The broker's answer changes nothing here; a refusal is a run that
                    // just ended.
                    let _ = sh.broker.send(Owner::Attach, req);
                }
                Ok(_) => {}
                Err(e) => {
                    result = Some(Input::Bad(e));
                    break;
                }
            }
            at += HEADER + len;
        }
        inbuf.drain(..at);
        result.unwrap_or(Input::Took(at > 0))
    }

    /// The connection is done with the run (its end was sent, or the client went away):
    /// the session, its exec if it carried one, and whether the session is to be deleted.
    pub fn finish(&mut self, sh: &mut Shared, conn: Token) -> Option<(Uuid, Option<u32>, bool)> {
        let mut a = self.conns.remove(&conn)?;
        close_stdin(sh, &mut a);
        Some((a.id, a.exec, a.remove))
    }

    /// The session is gone: its stdin closes (the connection learns it from its stream).
    pub fn forget(&mut self, sh: &mut Shared, id: Uuid) {
        for a in self.conns.values_mut().filter(|a| a.id == id) {
            close_stdin(sh, a);
        }
    }
}

/// Writes to the run's stdin: bytes written (0: full); `Err(false)` if it is closed,
/// `Err(true)` if it just broke (the program closed its end).
fn write_stdin(a: &mut Attached, bytes: &[u8]) -> Result<usize, bool> {
    let (f, _) = a.stdin.as_mut().ok_or(false)?;
    loop {
        match f.write(bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(true),
        }
    }
}

fn close_stdin(sh: &mut Shared, a: &mut Attached) {
    if let Some((f, t)) = a.stdin.take() {
        sh.io.deregister(&mut SourceFd(&f.as_raw_fd()), t);
    }
}
