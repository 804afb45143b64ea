//! Driving a connection: reading its command lines and payloads, running its commands,
//! pumping its stream, and applying the outcomes its handlers return — the only place
//! outcomes are applied.

use super::attach::Input;
use super::conn::{Mode, ATTACHED_IN_CAP};
use super::ctx::{Outcome, StreamKind, Waiter};
use super::{queries, Server, AUDITED_REFUSALS};
use mio::Token;
use proto::{Code, Command, Frame, UploadSize};
use serde_json::json;
use std::io::{ErrorKind, Read};

impl Server {
    /// Applies what a handler decided for connection `t` (its command's wait is `wait`).
    pub(super) fn apply(&mut self, t: Token, wait: u64, outcome: Outcome) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        match outcome {
            Outcome::Nothing => c.mode = Mode::Lines,
            Outcome::Reply(line) => {
                c.out.extend_from_slice(&line);
                c.mode = Mode::Lines;
            }
            Outcome::Refuse(e) => {
                self.refuse(t, &e);
                if let Some(c) = self.conns.get_mut(&t) {
                    c.mode = Mode::Lines;
                }
            }
            Outcome::Fatal(e) => {
                self.refuse(t, &e);
                if let Some(c) = self.conns.get_mut(&t) {
                    c.mode = Mode::Lines;
                    c.closing = true;
                }
            }
            Outcome::Park => c.mode = Mode::Waiting(wait),
            Outcome::Payload { job, size } => {
                c.mode = Mode::Payload { job: Some(job), wait };
                c.framer.expect_payload(size);
            }
            Outcome::Drain { refusal, size } => {
                self.refuse(t, &refusal);
                if let Some(c) = self.conns.get_mut(&t) {
                    c.mode = Mode::Payload { job: None, wait };
                    c.framer.expect_payload(size);
                }
            }
            Outcome::Identity { identity, then } => {
                c.identity = identity;
                self.apply(t, wait, *then);
            }
            Outcome::Stream { reply, kind } => {
                c.out.extend_from_slice(&reply);
                c.mode = Mode::Stream(kind);
            }
            Outcome::Send { reply, data, size } => {
                c.out.extend_from_slice(&reply);
                c.sending = Some((data, 0, size));
                c.mode = Mode::Sending;
            }
            Outcome::Relay { reply, id, identity, sock } => {
                let Some(mut c) = self.conns.remove(&t) else { return };
                self.sh.io.deregister(&mut c.stream, t);
                let mut early_out = c.take_out();
                early_out.extend_from_slice(&reply);
                // Whatever the client already sent after the command line is gdb's.
                let early_in = std::mem::take(&mut c.inbuf);
                let peer = c.peer_str();
                self.debug.adopt(&mut self.sh, c.stream, peer, c.stdio_client, id, identity, sock, early_in, early_out);
            }
        }
    }

    /// Writes a refusal, and audits it (up to a bound per connection: a client sending
    /// garbage must not flood the log).
    fn refuse(&mut self, t: Token, e: &proto::Error) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        proto::line_into(&mut c.out, e);
        if c.refusals <= AUDITED_REFUSALS {
            c.refusals += 1;
            let who = c.identity.as_ref().map(|i| &*i.name);
            let mut f = json!({"peer": c.peer_str(), "identity": who, "command": c.verb, "error": e.error, "message": e.message});
            if c.refusals > AUDITED_REFUSALS {
                f["note"] = json!("further refusals of this connection are not logged");
            }
            self.sh.audit.log_noise("refused", f);
        }
    }

    /// Does everything a connection can do now: read, run commands, stream, write.
    pub(super) fn drive(&mut self, t: Token) {
        loop {
            let Some(c) = self.conns.get(&t) else { return };
            if c.dead || c.closing {
                break;
            }
            let progressed = match c.mode {
                Mode::Lines => self.step_lines(t),
                Mode::Payload { .. } => self.step_payload(t),
                Mode::Waiting(_) => false,
                Mode::Stream(kind) => self.pump(t, kind),
                Mode::Attached => self.step_attached(t),
                Mode::Sending => self.step_sending(t),
            };
            if !progressed {
                break;
            }
        }
        let Some(c) = self.conns.get_mut(&t) else { return };
        c.flush();
        if c.finished() {
            self.close(t);
        }
    }

    fn close(&mut self, t: Token) {
        let Some(mut c) = self.conns.remove(&t) else { return };
        self.sh.io.deregister(&mut c.stream, t);
        if let Mode::Payload { job: Some(job), .. } = c.mode {
            self.uploads.abort(job);
        }
        self.output.drop_consumer(&mut self.sh, t);
        self.events.drop_sub(t);
        // An attached client that went away before its run's end: the run (or the exec'd
        // process) goes with it.
        match self.attach.finish(&mut self.sh, t) {
            Some((_, Some(_), _)) => self.execs.finish(&mut self.sh, t),
            Some((id, None, remove)) => {
                self.lifecycle.abandon(&mut self.sh, id, remove, "its attached client went away")
            }
            None => {}
        }
    }

    /// Streams what the owner of the stream has for it; when the stream ends, the
    /// connection reads commands again. Progress while everything produced was written
    /// (the socket has room: no writable edge will come, so pump again now).
    fn pump(&mut self, t: Token, kind: StreamKind) -> bool {
        let Some(c) = self.conns.get_mut(&t) else { return false };
        // What is written now makes room for what comes next.
        c.flush();
        let room = c.out_room();
        let p = match kind {
            StreamKind::Follow => self.output.pump(&mut self.sh, t, room),
            StreamKind::Events => self.events.pump(&self.sh, t, room),
        };
        let Some(c) = self.conns.get_mut(&t) else { return false };
        c.out.extend_from_slice(&p.bytes);
        if p.done {
            c.mode = Mode::Lines;
            return true;
        }
        if p.bytes.is_empty() {
            return false;
        }
        c.flush();
        c.pending_out() == 0 && !c.dead
    }

    /// A GET's bytes, as far as the connection's output buffer has room; then the
    /// connection reads commands again.
    fn step_sending(&mut self, t: Token) -> bool {
        let Some(c) = self.conns.get_mut(&t) else { return false };
        c.flush();
        let room = c.out_room();
        let Some((file, at, left)) = c.sending.as_mut() else {
            c.mode = Mode::Lines;
            return true;
        };
        if *left == 0 {
            c.sending = None;
            c.mode = Mode::Lines;
            return true;
        }
        if room == 0 {
            return false;
        }
        let n = room.min(*left as usize).min(self.scratch.len());
        // At our own offset: a kept core is sent from one memfd to every client that asks.
        match std::os::unix::fs::FileExt::read_at(file, &mut self.scratch[..n], *at) {
            Ok(0) | Err(_) => {
                // The snapshot cannot end early; if it did, the framing is lost.
                c.closing = true;
                return false;
            }
            Ok(got) => {
                *left -= got as u64;
                *at += got as u64;
                c.out.extend_from_slice(&self.scratch[..got]);
            }
        }
        c.flush();
        c.pending_out() == 0 && !c.dead
    }

    /// An attached run: the client's frames in (stdin as far as the program takes it),
    /// the run's frames out, and at the end its `end` frame, then the connection closes.
    fn step_attached(&mut self, t: Token) -> bool {
        let Some(c) = self.conns.get_mut(&t) else { return false };
        let mut progressed = false;
        let mut blocked = false;
        if !c.inbuf.is_empty() {
            match self.attach.input(&mut self.sh, t, &mut c.inbuf) {
                Input::Took(took) => progressed |= took,
                Input::Blocked => blocked = true,
                Input::Bad(e) => {
                    log::info!("closing an attached connection: {e}");
                    c.dead = true;
                    return false;
                }
            }
        }
        if !blocked && c.inbuf.len() < ATTACHED_IN_CAP && !c.eof {
            progressed |= c.fill_to(ATTACHED_IN_CAP, &mut self.scratch);
        }
        if c.eof {
            // The client went away (a client never half-closes an attached connection).
            c.dead = true;
            return false;
        }
        c.flush();
        let room = c.out_room();
        let p = match self.attach.exec_of(t) {
            Some(_) => self.execs.pump(&mut self.sh, t, room),
            None => self.output.pump(&mut self.sh, t, room),
        };
        let Some(c) = self.conns.get_mut(&t) else { return false };
        if !p.bytes.is_empty() {
            c.out.extend_from_slice(&p.bytes);
            c.flush();
            progressed |= c.pending_out() == 0 && !c.dead;
        }
        if p.done {
            c.mode = Mode::Lines;
            c.closing = true;
            if let Some((id, None, true)) = self.attach.finish(&mut self.sh, t) {
                self.lifecycle.abandon(&mut self.sh, id, true, "its run ended (remove)");
            }
            return false;
        }
        progressed
    }

    fn step_lines(&mut self, t: Token) -> bool {
        let Some(c) = self.conns.get_mut(&t) else { return false };
        match c.framer.next(&mut c.inbuf, c.eof) {
            Frame::Line(line) => {
                self.command(t, &line);
                true
            }
            Frame::TooLong => {
                let e =
                    proto::Error::bad(format!("line longer than {} bytes; closing the connection", proto::MAX_LINE));
                self.apply(t, 0, Outcome::Fatal(e));
                false
            }
            // Only in payload mode, which step_payload serves.
            Frame::Payload(_) | Frame::PayloadEnd => false,
            Frame::NeedMore if c.eof => {
                c.closing = true;
                false
            }
            Frame::NeedMore => c.fill(&mut self.scratch) || c.eof,
        }
    }

    /// An upload's payload: bytes already buffered go through the framer; the rest is read
    /// straight from the socket into a buffer of the hashing thread (or the scratch buffer,
    /// for a refused upload's bytes, which are dropped).
    fn step_payload(&mut self, t: Token) -> bool {
        let Some(c) = self.conns.get_mut(&t) else { return false };
        let Mode::Payload { job, wait } = c.mode else { return false };
        let want = c.framer.payload_left().unwrap_or(0);
        if want == 0 || !c.inbuf.is_empty() {
            match c.framer.next(&mut c.inbuf, c.eof) {
                Frame::Payload(bytes) => {
                    if let Some(job) = job {
                        self.uploads.chunk(job, bytes);
                    }
                }
                _ => {
                    let outcome = match job {
                        Some(job) => self.uploads.payload_end(Waiter { conn: t, wait }, job),
                        // A drain finished: its error was sent when the upload was refused.
                        None => Outcome::Nothing,
                    };
                    self.apply(t, wait, outcome);
                }
            }
            return true;
        }
        let mut buf = match job {
            Some(_) => match self.uploads.buffer(t) {
                Some(b) => b,
                // Every buffer is in flight: go on when one comes back.
                None => return false,
            },
            None => std::mem::take(&mut self.scratch),
        };
        let Some(c) = self.conns.get_mut(&t) else { return false };
        let cap = want.min(buf.len() as u64) as usize;
        let read = match c.stream.read(&mut buf[..cap]) {
            Ok(0) => {
                c.eof = true;
                c.closing = true;
                None
            }
            Ok(n) => {
                c.framer.payload_read(n as u64);
                Some(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Some(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => Some(0),
            Err(_) => {
                c.dead = true;
                None
            }
        };
        match job {
            Some(job) => {
                let n = read.unwrap_or(0);
                buf.truncate(n);
                self.uploads.chunk(job, buf);
                if read.is_none() {
                    // The client went away mid-upload: nothing of it stays.
                    self.uploads.abort(job);
                    if let Some(c) = self.conns.get_mut(&t) {
                        c.mode = Mode::Lines;
                    }
                }
            }
            None => self.scratch = buf,
        }
        matches!(read, Some(n) if n > 0)
    }

    /// Refuses a line; the bytes it announced (UPLOAD's, PUT's) are skipped like any
    /// refused upload's, or, beyond the drain limit, the connection is closed.
    fn refuse_with_payload(&mut self, t: Token, wait: u64, e: proto::Error, payload: Option<UploadSize>) {
        let outcome = match payload {
            None => Outcome::Refuse(e),
            Some(UploadSize::Bytes(n)) if n <= self.sh.cfg.drain_limit => Outcome::Drain { refusal: e, size: n },
            Some(_) => {
                self.apply(t, wait, Outcome::Refuse(e));
                Outcome::Fatal(proto::Error::new(
                    Code::TooLarge,
                    "closing the connection: the bytes that follow cannot be skipped",
                ))
            }
        };
        self.apply(t, wait, outcome)
    }

    /// Runs one command line.
    fn command(&mut self, t: Token, line: &[u8]) {
        let parsed = proto::parse_line(line);
        let wait = self.next_wait;
        self.next_wait += 1;
        let Some(c) = self.conns.get_mut(&t) else { return };
        c.verb = match &parsed {
            Ok(Some(cmd)) => cmd.verb(),
            _ => "",
        };
        let cmd = match parsed {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return,
            Err(e) => return self.refuse_with_payload(t, wait, e, proto::announced_payload(line)),
        };
        let caller = c.caller(t, wait);
        // On a rig with tokens, only HELLO and AUTH are open to a connection that has not
        // authenticated.
        if caller.identity.is_none() && !matches!(cmd, Command::Hello | Command::Auth(_)) {
            let e =
                proto::Error::new(Code::Unauthorized, "authenticate first: AUTH <token> (lantern --token-file FILE)");
            return self.refuse_with_payload(t, wait, e, cmd.payload());
        }
        let sh = &mut self.sh;
        let outcome = match cmd {
            Command::Hello => queries::hello(sh, &caller),
            Command::Auth(token) => self.access.auth(sh, &caller, token),
            Command::Upload { size, exec_path, name } => self.uploads.upload(sh, &caller, size, exec_path, name),
            Command::Start { id, debug, attach, opts } => self.lifecycle.start(sh, &caller, id, debug, attach, opts),
            Command::Stop(id) => self.lifecycle.stop(sh, &caller, id, false),
            Command::Kill(id) => self.lifecycle.stop(sh, &caller, id, true),
            Command::Delete(id) => self.lifecycle.delete(sh, &caller, id),
            Command::List => queries::list(sh, &caller),
            Command::Status(id) => queries::status(sh, &caller, id),
            Command::Core(id) => queries::core(sh, &caller, id),
            Command::Receipt { id, run } => queries::receipt(sh, &caller, id, run),
            Command::Logs { id, follow, stream } => self.output.logs(sh, &caller, id, follow, stream),
            Command::Debug { id, stdio } => self.debug.debug(sh, &caller, id, stdio),
            Command::Events { id, since } => self.events.subscribe(sh, &caller, id, since),
            Command::Get { id, path } => self.files.get(sh, &caller, id, &path),
            Command::Exec { id, opts } => self.execs.exec(sh, &caller, id, opts),
            Command::Put { id, path, size, tar } => match proto::RemotePath::parse(&path) {
                Ok(p) => {
                    let who = (caller.peer_str(), caller.name());
                    let target = super::uploads::PutTarget { id, rel: p.rel, tar, who };
                    self.uploads.put(sh, &caller, size, target)
                }
                Err(e) => return self.refuse_with_payload(t, wait, e, Some(size)),
            },
        };
        self.apply(t, wait, outcome);
    }
}
