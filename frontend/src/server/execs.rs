//! `EXEC` (issue 17): another process in a running session, attached to the connection
//! that asked, as `START --attach` is. The broker starts it through an exec helper; its
//! stdout and stderr (or terminal) are relayed here straight into the connection's frames
//! — read only as far as the connection's output buffer has room, so a slow client holds
//! the process back and nothing is lost — and its stdin, resizes and signals are the
//! attach owner's. Its end is the `end` frame with its exit status; it also goes into the
//! receipt's process list. A client that goes away kills it.

use super::broker_link::{refusal_code, Owner};
use super::ctx::{Caller, Followup, Outcome, Shared, Waiter};
use super::io::Source;
use super::model::exit_reply;
use super::output::Pumped;
use super::uploads::session_id;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use proto::attach::{self, Kind as FrameKind};
use proto::reply::{Execd, LogEnd, Process, State};
use proto::{Error, ExecOpts, Stream, Time};
use serde_json::json;
use shared::{ExecSpec, ExitStatus, Reply, Request, Winsize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use uuid::Uuid;

/// Largest frame of an exec's output.
const FRAME: usize = 256 * 1024;

#[derive(Debug)]
struct Pending {
    to: Waiter,
    id: Uuid,
    stdin: bool,
    tty: bool,
    comm: String,
}

#[derive(Debug)]
struct Pipe {
    token: Token,
    stream: Stream,
    file: File,
    /// May have bytes (an edge came, or it was not read to `WouldBlock` yet).
    ready: bool,
}

#[derive(Debug)]
struct Running {
    id: Uuid,
    exec: u32,
    ns_pid: u32,
    pipes: Vec<Pipe>,
    exit: Option<ExitStatus>,
    started: Time,
    comm: String,
}

/// The execs owner.
#[derive(Debug, Default)]
pub struct Execs {
    waiting: HashMap<u64, Pending>,
    /// By connection.
    running: HashMap<Token, Running>,
}

impl Execs {
    /// `EXEC <id> <json>`.
    pub fn exec(&mut self, sh: &mut Shared, caller: &Caller, id: Uuid, opts: ExecOpts) -> Outcome {
        let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
            Ok(s) => s,
            Err(e) => return Outcome::Refuse(e),
        };
        if !s.state.alive() || s.busy {
            return Outcome::Refuse(Error::invalid_state(format!(
                "session is {}: EXEC needs a running session (START it first)",
                s.state.as_str()
            )));
        }
        let env: Vec<Vec<u8>> = match &opts.env {
            Some(env) => env.iter().map(|(k, v)| format!("{k}={v}").into_bytes()).collect(),
            None => ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "TERM=dumb"]
                .iter()
                .map(|e| e.as_bytes().to_vec())
                .collect(),
        };
        let tty = opts.tty.map(|t| Winsize { rows: t.rows, cols: t.cols });
        let spec = ExecSpec { argv: opts.argv.iter().map(|a| a.as_bytes().to_vec()).collect(), env, tty };
        let tag = match sh.broker.send(Owner::Execs, Request::Exec { id: session_id(&id), spec }) {
            Ok(t) => t,
            Err(e) => return Outcome::Refuse(e),
        };
        let program = opts.argv[0].clone();
        sh.audit.log(
            "exec",
            json!({"id": id.to_string(), "owner": &*s.owner, "peer": caller.peer_str(), "identity": &*caller.name(), "program": program}),
        );
        let comm: String = program.rsplit('/').next().unwrap_or_default().chars().take(15).collect();
        let p = Pending { to: caller.waiter, id, stdin: opts.stdin.unwrap_or(false), tty: tty.is_some(), comm };
        self.waiting.insert(tag, p);
        Outcome::Park
    }

    /// The broker's answer: the process runs (the loop attaches it) or a refusal.
    pub fn on_reply(&mut self, sh: &mut Shared, tag: u64, reply: Reply) {
        let Some(p) = self.waiting.remove(&tag) else { return };
        match reply {
            Reply::ExecStarted { exec, ns_pid, stdout, stderr, stdin, .. } => {
                let r = Execd { ok: proto::True, id: p.id, exec, ns_pid };
                sh.follow_up(Followup::ExecAttach {
                    to: p.to,
                    id: p.id,
                    exec,
                    ns_pid,
                    reply: proto::line(&r),
                    stdout,
                    stderr,
                    stdin,
                    wants_stdin: p.stdin,
                    tty: p.tty,
                    comm: p.comm,
                });
            }
            Reply::Refused { refusal, message } => {
                sh.answer(p.to, Outcome::Refuse(Error::new(refusal_code(refusal), message)));
            }
            Reply::Accepted { .. } => {}
            other => {
                log::error!("unexpected broker reply {other:?} to EXEC");
                sh.answer(p.to, Outcome::Refuse(Error::internal("unexpected answer from the broker")));
            }
        }
    }

    /// Connection `conn` carries exec `exec` of `id` from now on: its output pipes.
    #[allow(clippy::too_many_arguments)]
    pub fn adopt(
        &mut self,
        sh: &mut Shared,
        conn: Token,
        id: Uuid,
        exec: u32,
        ns_pid: u32,
        stdout: OwnedFd,
        stderr: Option<OwnedFd>,
        comm: String,
    ) {
        let mut pipes = Vec::new();
        for (stream, fd) in [(Stream::Stdout, Some(stdout)), (Stream::Stderr, stderr)] {
            let Some(fd) = fd else { continue };
            let file = File::from(fd);
            let _ = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
            match sh.io.register(&mut SourceFd(&file.as_raw_fd()), Interest::READABLE, Source::ExecPipe { conn }) {
                Ok(token) => pipes.push(Pipe { token, stream, file, ready: true }),
                Err(e) => log::error!("cannot watch the output of an exec of {id}: {e}"),
            }
        }
        self.running.insert(conn, Running { id, exec, ns_pid, pipes, exit: None, started: Time::now(), comm });
    }

    /// A pipe of `conn`'s exec has bytes (or EOF).
    pub fn readable(&mut self, conn: Token, t: Token) {
        if let Some(r) = self.running.get_mut(&conn) {
            for p in r.pipes.iter_mut().filter(|p| p.token == t) {
                p.ready = true;
            }
        }
    }

    /// The exec ended (every byte of its output may still be in its pipes).
    pub fn on_exited(&mut self, sh: &mut Shared, id: Uuid, exec: u32, status: ExitStatus) -> Option<Token> {
        let (&conn, r) = self.running.iter_mut().find(|(_, r)| r.id == id && r.exec == exec)?;
        r.exit = Some(status);
        // The receipt of the run lists it with the processes of the tree.
        let p = Process {
            pid: r.ns_pid,
            ppid: 0,
            comm: r.comm.clone(),
            start: r.started,
            end: Time::now(),
            exit_code: match status {
                ExitStatus::Code(c) => c,
                ExitStatus::Signal(s) => 128 + s,
            },
        };
        if let Some(s) = sh.sessions.get_mut(&id) {
            match (s.state.alive(), s.receipts.back_mut()) {
                (false, Some(rc)) if rc.run == s.runs => rc.processes.push(p),
                _ => s.exec_processes.push(p),
            }
        }
        Some(conn)
    }

    /// The exec's frames for `conn`, within about `room` bytes; its end once its output is
    /// read and it has exited.
    pub fn pump(&mut self, sh: &mut Shared, conn: Token, room: usize) -> Pumped {
        let mut out = Pumped::default();
        let Some(r) = self.running.get_mut(&conn) else { return out };
        let mut buf = vec![0u8; FRAME];
        let mut closed = Vec::new();
        for p in r.pipes.iter_mut() {
            while p.ready && out.bytes.len() < room {
                let want = FRAME.min(room - out.bytes.len()).max(1);
                match p.file.read(&mut buf[..want]) {
                    Ok(0) => {
                        closed.push(p.token);
                        p.ready = false;
                    }
                    Ok(n) => {
                        let kind = if p.stream == Stream::Stdout { FrameKind::Stdout } else { FrameKind::Stderr };
                        attach::push(&mut out.bytes, kind, &buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => p.ready = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // EIO: a terminal whose every slave is closed.
                    Err(_) => {
                        closed.push(p.token);
                        p.ready = false;
                    }
                }
            }
        }
        for t in closed {
            if let Some(i) = r.pipes.iter().position(|p| p.token == t) {
                let p = r.pipes.remove(i);
                sh.io.deregister(&mut SourceFd(&p.file.as_raw_fd()), t);
            }
        }
        if r.pipes.is_empty() {
            if let Some(status) = r.exit {
                let state = sh.sessions.get(&r.id).map_or(State::Stopped, |s| s.state);
                let end = LogEnd::Ended {
                    ok: proto::True,
                    id: r.id,
                    end: proto::True,
                    state,
                    exit: Some(exit_reply(status)),
                    limit_hit: None,
                };
                let json = serde_json::to_vec(&end).unwrap_or_default();
                attach::push(&mut out.bytes, FrameKind::End, &json);
                out.done = true;
                self.running.remove(&conn);
            }
        }
        out
    }

    /// The connection is done with its exec: if the process still runs, it is killed.
    pub fn finish(&mut self, sh: &mut Shared, conn: Token) {
        let Some(r) = self.running.remove(&conn) else { return };
        for p in &r.pipes {
            sh.io.deregister(&mut SourceFd(&p.file.as_raw_fd()), p.token);
        }
        if r.exit.is_none() {
            let req = Request::Signal { id: session_id(&r.id), exec: Some(r.exec), sig: libc::SIGKILL };
            let _ = sh.broker.send(Owner::Execs, req);
        }
    }

    /// The session is gone: its execs' streams end (their processes died with it).
    pub fn forget(&mut self, id: Uuid) -> Vec<Token> {
        let conns: Vec<Token> = self.running.iter().filter(|(_, r)| r.id == id).map(|(t, _)| *t).collect();
        for c in &conns {
            if let Some(r) = self.running.get_mut(c) {
                r.exit.get_or_insert(ExitStatus::Signal(libc::SIGKILL));
            }
        }
        conns
    }
}
