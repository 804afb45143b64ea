//! Debugging (SPEC §8): `DEBUG <id> [--stdio]` and the debugger of `START --debug`. The
//! broker attaches gdbserver inside the session and hands us its stdio socket; we open a
//! one-shot TCP port on the address the client reached us on, admit one connection from
//! the client's address before the deadline, and relay bytes — or, with `--stdio`, relay
//! the control connection itself. gdbserver's exit (gdb detached or left) is reported by
//! the broker: the session is `RUNNING` again.

use super::broker_link::{refusal_code, Owner};
use super::ctx::{Caller, Outcome, Shared};
use super::io::{Side, Source};
use super::uploads::session_id;
use crate::stream::Stream;
use mio::net::{TcpListener, UnixStream};
use mio::{Interest, Token};
use proto::reply::{DebugPort, Debugging, EventKind, Started, State};
use proto::Error;
use serde_json::json;
use shared::{Reply, Request};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// Most bytes buffered in one direction of a relay before reading that side pauses.
const RELAY_BUF: usize = 256 * 1024;

#[derive(Debug)]
struct Pending {
    caller: Caller,
    id: Uuid,
    /// Part of a START --debug (its answer carries the run too).
    started: bool,
    /// DEBUG --stdio: the connection becomes the relay.
    stdio: bool,
}

/// A debug port waiting for gdb: one connection, from `allowed`, before `deadline`.
#[derive(Debug)]
struct Port {
    id: Uuid,
    identity: Arc<str>,
    listener: TcpListener,
    allowed: IpAddr,
    deadline: Instant,
    sock: std::os::unix::net::UnixStream,
}

/// Bytes between gdb and gdbserver's stdio.
#[derive(Debug)]
struct Relay {
    id: Uuid,
    peer: String,
    stdio_client: bool,
    identity: Arc<str>,
    client: Stream,
    gdb: UnixStream,
    to_gdb: Vec<u8>,
    to_client: Vec<u8>,
    tokens: [Token; 2],
}

/// The debug owner.
#[derive(Debug, Default)]
pub struct Debug {
    waiting: HashMap<u64, Pending>,
    ports: HashMap<Token, Port>,
    relays: HashMap<u64, Relay>,
    next_relay: u64,
}

impl Debug {
    /// `DEBUG <id> [--stdio]`.
    pub fn debug(&mut self, sh: &mut Shared, caller: &Caller, id: Uuid, stdio: bool) -> Outcome {
        let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
            Ok(s) => s,
            Err(e) => return Outcome::Refuse(e),
        };
        if s.busy || s.state != State::Running {
            return Outcome::Refuse(Error::invalid_state(format!("session is {}, not RUNNING", s.state.as_str())));
        }
        if !stdio && (caller.local.is_none() || caller.peer.is_none()) {
            return Outcome::Refuse(Error::unsupported(
                "this connection has no network address to open a debug port on: use DEBUG <id> --stdio (lantern gdb-pipe)",
            ));
        }
        match self.ask(sh, caller.clone(), id, false, stdio) {
            Ok(()) => {
                sh.audit_session(caller, "debug", id);
                Outcome::Park
            }
            Err(e) => Outcome::Refuse(e),
        }
    }

    /// START --debug: the program is held at its entry; attach, then answer the START.
    pub fn start_held(&mut self, sh: &mut Shared, caller: Caller, id: Uuid) {
        let to = caller.waiter;
        if let Err(e) = self.ask(sh, caller, id, true, false) {
            if let Some(s) = sh.sessions.get_mut(&id) {
                s.busy = false;
            }
            sh.answer(to, Outcome::Refuse(e));
        }
    }

    fn ask(&mut self, sh: &mut Shared, caller: Caller, id: Uuid, started: bool, stdio: bool) -> Result<(), Error> {
        let tag = sh.broker.send(Owner::Debug, Request::Debug { id: session_id(&id) })?;
        if let Some(s) = sh.sessions.get_mut(&id) {
            s.busy = true;
        }
        self.waiting.insert(tag, Pending { caller, id, started, stdio });
        Ok(())
    }

    /// The broker's answer: gdbserver is attached (its stdio socket), or why not.
    pub fn on_reply(&mut self, sh: &mut Shared, tag: u64, reply: Reply) {
        let Some(p) = self.waiting.remove(&tag) else { return };
        if let Some(s) = sh.sessions.get_mut(&p.id) {
            s.busy = false;
        }
        let to = p.caller.waiter;
        let sock = match reply {
            Reply::Debugging { sock, .. } => sock,
            Reply::Refused { refusal, message } => {
                return sh.answer(to, Outcome::Refuse(Error::new(refusal_code(refusal), message)));
            }
            other => {
                log::error!("unexpected broker reply {other:?} to a debug request");
                return sh.answer(to, Outcome::Refuse(Error::internal("unexpected answer from the broker")));
            }
        };
        if p.stdio {
            if let Some(s) = sh.sessions.get_mut(&p.id) {
                s.state = State::Debugging;
            }
            let reply = Debugging { ok: proto::True, id: p.id, state: State::Debugging, debug: None, stdio: true };
            let identity = p.caller.name();
            return sh.answer(to, Outcome::Relay { reply: proto::line(&reply), id: p.id, identity, sock });
        }
        let (Some(local), Some(peer)) = (p.caller.local, p.caller.peer) else { return };
        let outcome = match self.open_port(sh, p.id, local.ip(), peer.ip(), p.caller.name(), sock, p.started) {
            Err(e) => Outcome::Refuse(e),
            Ok(port) if p.started => {
                let pid = port.pid;
                let ns_pid = port.ns_pid;
                Outcome::reply(&Started {
                    ok: proto::True,
                    id: p.id,
                    state: State::Debugging,
                    debug: Some(port),
                    pid,
                    ns_pid,
                })
            }
            Ok(port) => Outcome::reply(&Debugging {
                ok: proto::True,
                id: p.id,
                state: State::Debugging,
                debug: Some(port),
                stdio: false,
            }),
        };
        sh.answer(to, outcome);
    }

    /// A listener on the address the client reached us on, on the first free port of
    /// the configured range; the session is DEBUGGING while it waits.
    #[allow(clippy::too_many_arguments)]
    fn open_port(
        &mut self,
        sh: &mut Shared,
        id: Uuid,
        local: IpAddr,
        peer: IpAddr,
        identity: Arc<str>,
        sock: OwnedFd,
        held: bool,
    ) -> Result<DebugPort, Error> {
        let sock = std::os::unix::net::UnixStream::from(sock);
        // On failure, dropping the socket makes gdbserver exit: the session is RUNNING again.
        let mut listener = debug_listener(local, sh.cfg.debug_ports).map_err(|e| Error::limit(shared::chain(&e)))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let t = sh
            .io
            .register(&mut listener, Interest::READABLE, Source::DebugPort)
            .map_err(|e| Error::internal(format!("debug listener: {e}")))?;
        let deadline = Instant::now() + sh.cfg.debug_deadline;
        self.ports.insert(t, Port { id, listener, allowed: peer, identity, deadline, sock });
        let Some(s) = sh.sessions.get_mut(&id) else { return Err(Error::not_found("the session is gone")) };
        s.state = State::Debugging;
        let host = match local {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let ns_pid = s.ns_pid.unwrap_or(2);
        // A program held at its entry (START --debug) was stopped with SIGSTOP; gdb sees
        // that stop once more when it resumes: tell it to swallow it.
        let swallow = if held { " -ex 'handle SIGSTOP nostop noprint nopass'" } else { "" };
        let gdb = format!(
            "gdb -q -ex 'set confirm off'{swallow} -ex 'target remote {host}:{port}' -ex 'file target:/proc/{ns_pid}/exe'"
        );
        Ok(DebugPort {
            port,
            host: local.to_string(),
            pid: s.pid,
            ns_pid,
            gdb,
            deadline_ms: sh.cfg.debug_deadline.as_millis() as u64,
        })
    }

    /// A connection on a debug port: from the allowed address it becomes the relay; from
    /// anywhere else it is refused (and audited).
    pub fn accept(&mut self, sh: &mut Shared, t: Token) {
        loop {
            let Some(p) = self.ports.get(&t) else { return };
            let (stream, from) = match p.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            if from.ip() != p.allowed {
                log::warn!("refused a debug connection from {from} (only {} may connect)", p.allowed);
                sh.audit.log_noise(
                    "debug_refused",
                    json!({"peer": from.to_string(), "id": p.id.to_string(), "allowed": p.allowed.to_string(), "identity": &*p.identity}),
                );
                continue;
            }
            let Some(mut p) = self.ports.remove(&t) else { return };
            sh.io.deregister(&mut p.listener, t);
            // gdb's packets are small and latency-bound: no Nagle.
            let _ = stream.set_nodelay(true);
            let peer = from.to_string();
            sh.audit.log("debug_attach", json!({"peer": peer, "id": p.id.to_string(), "identity": &*p.identity}));
            sh.emit(p.id, EventKind::DebugAttached { peer: peer.clone() });
            let _ = p.sock.set_nonblocking(true);
            self.relay(sh, p.id, peer, false, p.identity, Stream::Tcp(stream), p.sock, Vec::new(), Vec::new());
            return;
        }
    }

    /// `DEBUG --stdio`: after its reply line, the control connection itself carries the
    /// gdb remote protocol; it has left the command loop for good.
    #[allow(clippy::too_many_arguments)]
    pub fn adopt(
        &mut self,
        sh: &mut Shared,
        client: Stream,
        peer: String,
        stdio_client: bool,
        id: Uuid,
        identity: Arc<str>,
        sock: OwnedFd,
        early_in: Vec<u8>,
        early_out: Vec<u8>,
    ) {
        let sock = std::os::unix::net::UnixStream::from(sock);
        let _ = sock.set_nonblocking(true);
        let peer = format!("{peer} (control connection, --stdio)");
        sh.audit.log("debug_attach", json!({"peer": peer, "id": id.to_string(), "identity": &*identity}));
        sh.emit(id, EventKind::DebugAttached { peer: "control connection (--stdio)".into() });
        self.relay(sh, id, peer, stdio_client, identity, client, sock, early_in, early_out);
    }

    #[allow(clippy::too_many_arguments)]
    fn relay(
        &mut self,
        sh: &mut Shared,
        id: Uuid,
        peer: String,
        stdio_client: bool,
        identity: Arc<str>,
        mut client: Stream,
        gdb: std::os::unix::net::UnixStream,
        to_gdb: Vec<u8>,
        to_client: Vec<u8>,
    ) {
        self.next_relay += 1;
        let rid = self.next_relay;
        let mut gdb = UnixStream::from_std(gdb);
        let both = Interest::READABLE | Interest::WRITABLE;
        let tc = sh.io.register(&mut client, both, Source::Relay { relay: rid, side: Side::Client });
        let tg = sh.io.register(&mut gdb, both, Source::Relay { relay: rid, side: Side::Gdbserver });
        let (Ok(tc), Ok(tg)) = (tc, tg) else { return };
        let r = Relay { id, peer, stdio_client, identity, client, gdb, to_gdb, to_client, tokens: [tc, tg] };
        self.relays.insert(rid, r);
        self.pump(sh, rid);
    }

    /// Moves bytes both ways until both sides would block; ends the relay at EOF or error
    /// on either side (gdbserver, seeing its socket close, exits and detaches).
    pub fn pump(&mut self, sh: &mut Shared, rid: u64) {
        let Some(r) = self.relays.get_mut(&rid) else { return };
        let mut buf = [0u8; 64 * 1024];
        let mut closed = false;
        loop {
            let mut progress = false;
            for dir in 0..2 {
                let (src, dst): (&mut dyn Read, &mut Vec<u8>) =
                    if dir == 0 { (&mut r.client, &mut r.to_gdb) } else { (&mut r.gdb, &mut r.to_client) };
                if dst.len() < RELAY_BUF {
                    match src.read(&mut buf) {
                        Ok(0) => closed = true,
                        Ok(n) => {
                            dst.extend_from_slice(&buf[..n]);
                            progress = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                        Err(_) => closed = true,
                    }
                }
            }
            for dir in 0..2 {
                let (dst, pending): (&mut dyn Write, &mut Vec<u8>) =
                    if dir == 0 { (&mut r.gdb, &mut r.to_gdb) } else { (&mut r.client, &mut r.to_client) };
                while !pending.is_empty() {
                    match dst.write(pending) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => {
                            pending.drain(..n);
                            progress = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if closed || !progress {
                break;
            }
        }
        if closed {
            self.end_relay(sh, rid);
        }
    }

    fn end_relay(&mut self, sh: &mut Shared, rid: u64) {
        if let Some(mut r) = self.relays.remove(&rid) {
            sh.audit.log("debug_detach", json!({"peer": r.peer, "id": r.id.to_string(), "identity": &*r.identity}));
            let [tc, tg] = r.tokens;
            sh.io.deregister(&mut r.client, tc);
            sh.io.deregister(&mut r.gdb, tg);
        }
    }

    /// Whether the `--stdio` daemon's one client is still here as a relay.
    pub fn relays_stdio_client(&self) -> bool {
        self.relays.values().any(|r| r.stdio_client)
    }

    /// When the next debug port closes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.ports.values().map(|p| p.deadline).min()
    }

    /// Closes debug ports whose deadline passed: gdbserver sees its socket close and exits.
    pub fn expire(&mut self, sh: &mut Shared) {
        let now = Instant::now();
        let expired: Vec<Token> = self.ports.iter().filter(|(_, p)| p.deadline <= now).map(|(t, _)| *t).collect();
        for t in expired {
            if let Some(mut p) = self.ports.remove(&t) {
                sh.io.deregister(&mut p.listener, t);
                log::info!("debug port of {} closed: no debugger connected in time", p.id);
                sh.audit.log("debug_expired", json!({"id": p.id.to_string(), "identity": &*p.identity}));
            }
        }
    }

    /// gdbserver of `id` exited: gdb detached or left.
    pub fn on_ended(&mut self, sh: &mut Shared, id: Uuid) {
        self.forget(sh, id);
        if let Some(s) = sh.sessions.get_mut(&id) {
            if s.state == State::Debugging {
                s.state = State::Running;
            }
        }
        sh.emit(id, EventKind::DebugDetached {});
    }

    /// Drops the debug port and relay of a session (its run ended, or it is gone).
    pub fn forget(&mut self, sh: &mut Shared, id: Uuid) {
        let ports: Vec<Token> = self.ports.iter().filter(|(_, p)| p.id == id).map(|(t, _)| *t).collect();
        for t in ports {
            if let Some(mut p) = self.ports.remove(&t) {
                sh.io.deregister(&mut p.listener, t);
            }
        }
        let relays: Vec<u64> = self.relays.iter().filter(|(_, r)| r.id == id).map(|(k, _)| *k).collect();
        for rid in relays {
            self.end_relay(sh, rid);
        }
    }
}

/// Why no debug port could be opened.
#[derive(Debug, thiserror::Error)]
enum PortError {
    #[error("every debug port {0}-{1} is in use")]
    AllInUse(u16, u16),
    #[error("cannot listen on {0}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
}

/// A TCP listener on `ip`, on the first free port of `range`.
fn debug_listener(ip: IpAddr, (lo, hi): (u16, u16)) -> Result<TcpListener, PortError> {
    for port in lo..=hi {
        let addr = std::net::SocketAddr::new(ip, port);
        match std::net::TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(l) => return Ok(TcpListener::from_std(l)),
            Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
            Err(e) => return Err(PortError::Listen(addr, e)),
        }
    }
    Err(PortError::AllInUse(lo, hi))
}
