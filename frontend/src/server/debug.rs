//! Debugging (SPEC §8): `DEBUG <id> [--stdio]` and the debugger of `START --debug`.
//!
//! Two kinds of gdbserver run in a session: one the broker attaches to a running program
//! (`DEBUG`), and one that launched the program itself, held at its entry (`START
//! --debug`). Either way we hold its stdio socket and wait for a debugger: on a one-shot
//! TCP port on the address the client reached us on (one connection, from the client's
//! address, before the deadline), or on `DEBUG <id> --stdio`, which relays the control
//! connection itself (and takes over a waiting port). Then we relay bytes.
//!
//! A debugger that leaves a launched program without detaching (gdb killed, connection
//! lost) or never comes (the deadline) must not take the program with it: we detach
//! gdbserver ourselves (an interrupt if the program runs, then `D`), drain its answers,
//! and ask the broker to kill a gdbserver that has not left a moment later. gdbserver's
//! exit (reported by the broker) makes the session RUNNING again. The stop replies that
//! say how a launched program ended (`W`/`X`) are noted: gdbserver, not the session's
//! init, reaps that program.

use super::broker_link::{refusal_code, Owner};
use super::ctx::{Caller, Outcome, Shared};
use super::io::{Side, Source};
use super::model::DebugView;
use super::uploads::session_id;
use crate::stream::Stream;
use mio::net::{TcpListener, UnixStream};
use mio::{Interest, Token};
use proto::reply::{DebugPort, DebugStdio, Debugging, EventKind, Started, State};
use proto::Error;
use serde_json::json;
use shared::rsp::Watch;
use shared::{ExitStatus, Reply, Request};
use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// Most bytes buffered in one direction of a relay before reading that side pauses.
const RELAY_BUF: usize = 256 * 1024;
/// How long gdbserver gets to detach a program whose debugger left, in ms.
const RELEASE_GRACE: u32 = 2000;

/// Asks the broker to end gdbserver of `id` if it has not left within `grace_ms`.
fn release(id: Uuid, grace_ms: u32) -> Request {
    Request::DebugRelease { id: session_id(&id), grace_ms }
}

/// A DEBUG the broker is attaching gdbserver for.
#[derive(Debug)]
struct Pending {
    caller: Caller,
    id: Uuid,
    /// DEBUG --stdio: the connection becomes the relay.
    stdio: bool,
}

/// A gdbserver waiting for its debugger until `deadline`: on a port, or for
/// `DEBUG <id> --stdio` alone.
#[derive(Debug)]
struct Waiting {
    identity: Arc<str>,
    deadline: Instant,
    sock: std::os::unix::net::UnixStream,
    port: Option<Port>,
}

/// A debug port: one connection, from `allowed`.
#[derive(Debug)]
struct Port {
    token: Token,
    listener: TcpListener,
    allowed: IpAddr,
    info: DebugPort,
}

/// Bytes between a debugger and gdbserver's stdio. Without a client, gdbserver is being
/// detached: what it says is drained until it leaves.
#[derive(Debug)]
struct Relay {
    id: Uuid,
    peer: String,
    stdio_client: bool,
    identity: Arc<str>,
    client: Option<(Stream, Token)>,
    gdb: UnixStream,
    gdb_token: Token,
    to_gdb: Vec<u8>,
    to_client: Vec<u8>,
    /// gdbserver launched the program.
    launched: bool,
    /// What the relayed packets say about the program.
    watch: Watch,
    /// We asked gdbserver to detach and wait for its `OK`.
    releasing: bool,
    /// The broker was asked to end gdbserver, whose program is detached.
    let_go: bool,
}

/// The debug owner.
#[derive(Debug, Default)]
pub struct Debug {
    pending: HashMap<u64, Pending>,
    waiting: HashMap<Uuid, Waiting>,
    port_tokens: HashMap<Token, Uuid>,
    relays: HashMap<u64, Relay>,
    next_relay: u64,
    /// Sessions whose gdbserver launched the program.
    launched: HashSet<Uuid>,
    /// How a launched program ended, as its gdbserver told the debugger.
    exits: HashMap<Uuid, ExitStatus>,
}

impl Debug {
    /// `DEBUG <id> [--stdio]`: attach to a RUNNING program; on a DEBUGGING session whose
    /// gdbserver waits, `--stdio` connects to it and a plain DEBUG shows its port again.
    pub fn debug(&mut self, sh: &mut Shared, caller: &Caller, id: Uuid, stdio: bool) -> Outcome {
        let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
            Ok(s) => s,
            Err(e) => return Outcome::Refuse(e),
        };
        let addresses = caller.local.zip(caller.peer);
        if s.state == State::Debugging && !s.busy {
            return match self.waiting.contains_key(&id) {
                true if stdio => self.take_stdio(sh, caller, id),
                true => self.show_port(sh, caller, id),
                false => {
                    let peer = s.debug.as_ref().and_then(|d| d.peer.clone()).unwrap_or_else(|| "elsewhere".into());
                    Outcome::Refuse(Error::invalid_state(format!("a debugger is already connected ({peer})")))
                }
            };
        }
        if s.busy || s.state != State::Running {
            return Outcome::Refuse(Error::invalid_state(format!("session is {}, not RUNNING", s.state.as_str())));
        }
        if !stdio && addresses.is_none() {
            return Outcome::Refuse(no_address());
        }
        match sh.broker.send(Owner::Debug, Request::Debug { id: session_id(&id) }) {
            Ok(tag) => {
                if let Some(s) = sh.sessions.get_mut(&id) {
                    s.busy = true;
                }
                self.pending.insert(tag, Pending { caller: caller.clone(), id, stdio });
                sh.audit_session(caller, "debug", id);
                Outcome::Park
            }
            Err(e) => Outcome::Refuse(e),
        }
    }

    /// `DEBUG <id> --stdio` on a waiting gdbserver: this connection becomes its debugger.
    fn take_stdio(&mut self, sh: &mut Shared, caller: &Caller, id: Uuid) -> Outcome {
        let Some(w) = self.waiting.remove(&id) else { return Outcome::Refuse(Error::internal("no debugger waits")) };
        if let Some(mut p) = w.port {
            self.port_tokens.remove(&p.token);
            sh.io.deregister(&mut p.listener, p.token);
        }
        sh.audit_session(caller, "debug", id);
        let reply = Debugging { ok: proto::True, id, state: State::Debugging, debug: None, stdio: true };
        Outcome::Relay { reply: proto::line(&reply), id, identity: caller.name(), sock: w.sock.into() }
    }

    /// A plain `DEBUG <id>` on a waiting gdbserver: its port (opened now if it waited for
    /// `--stdio` alone).
    fn show_port(&mut self, sh: &mut Shared, caller: &Caller, id: Uuid) -> Outcome {
        let Some((local, peer)) = caller.local.zip(caller.peer) else { return Outcome::Refuse(no_address()) };
        let Some(w) = self.waiting.get_mut(&id) else { return Outcome::Refuse(Error::internal("no debugger waits")) };
        if w.port.is_none() {
            let ns_pid = sh.sessions.get(&id).and_then(|s| s.ns_pid).unwrap_or(2);
            let pid = sh.sessions.get(&id).and_then(|s| s.pid);
            let launched = self.launched.contains(&id);
            match open_port(sh, local.ip(), peer.ip(), pid, ns_pid, w.deadline, launched) {
                Ok(p) => {
                    self.port_tokens.insert(p.token, id);
                    w.port = Some(p);
                }
                Err(e) => return Outcome::Refuse(e),
            }
        }
        let Some(p) = &w.port else { return Outcome::Refuse(Error::internal("no port")) };
        let mut info = p.info.clone();
        info.deadline_ms = w.deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
        if let Some(s) = sh.sessions.get_mut(&id) {
            let v = s.debug.get_or_insert_with(Default::default);
            v.port = Some((info.port, info.host.clone()));
            v.gdb = Some(info.gdb.clone());
        }
        Outcome::reply(&Debugging { ok: proto::True, id, state: State::Debugging, debug: Some(info), stdio: false })
    }

    /// START --debug: gdbserver launched the program, held at its entry; open its debug
    /// endpoint (a port, or a wait for `DEBUG --stdio`), then answer the START.
    pub fn start_held(
        &mut self,
        sh: &mut Shared,
        caller: Caller,
        id: Uuid,
        sock: OwnedFd,
        port: bool,
        mut started: Started,
    ) {
        let deadline = Instant::now() + sh.cfg.debug_deadline;
        let deadline_ms = sh.cfg.debug_deadline.as_millis() as u64;
        self.launched.insert(id);
        let sock = std::os::unix::net::UnixStream::from(sock);
        let mut w = Waiting { identity: caller.name(), deadline, sock, port: None };
        let mut view = DebugView { launched: true, deadline: Some(deadline), ..Default::default() };
        if let (true, Some(local), Some(peer)) = (port, caller.local, caller.peer) {
            match open_port(sh, local.ip(), peer.ip(), started.pid, started.ns_pid, deadline, true) {
                Ok(p) => {
                    view.port = Some((p.info.port, p.info.host.clone()));
                    view.gdb = Some(p.info.gdb.clone());
                    started.debug = Some(p.info.clone());
                    self.port_tokens.insert(p.token, id);
                    w.port = Some(p);
                }
                Err(e) => {
                    // Dropping the socket ends gdbserver, which kills the program it holds.
                    self.launched.remove(&id);
                    return sh.answer(caller.waiter, Outcome::Refuse(e));
                }
            }
        } else {
            // The rig does not know the name the client reached it by: RIG stands for it.
            let gdb = format!("gdb -q -ex 'target remote | lantern gdb-pipe RIG {id}'");
            view.gdb = Some(gdb.clone());
            started.debug_stdio = Some(DebugStdio { gdb, deadline_ms });
        }
        self.waiting.insert(id, w);
        if let Some(s) = sh.sessions.get_mut(&id) {
            s.state = State::Debugging;
            s.debug = Some(Box::new(view));
        }
        started.state = State::Debugging;
        sh.answer(caller.waiter, Outcome::reply(&started));
    }

    /// The broker's answer to a DEBUG: gdbserver is attached (its stdio socket), or why not.
    pub fn on_reply(&mut self, sh: &mut Shared, tag: u64, reply: Reply) {
        let Some(p) = self.pending.remove(&tag) else { return };
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
        let id = p.id;
        let Some(s) = sh.sessions.get_mut(&id) else { return };
        s.state = State::Debugging;
        s.debug = Some(Box::default());
        if p.stdio {
            let reply = Debugging { ok: proto::True, id, state: State::Debugging, debug: None, stdio: true };
            let identity = p.caller.name();
            return sh.answer(to, Outcome::Relay { reply: proto::line(&reply), id, identity, sock });
        }
        let (Some(local), Some(peer)) = (p.caller.local, p.caller.peer) else { return };
        let (pid, ns_pid) = (s.pid, s.ns_pid.unwrap_or(2));
        let deadline = Instant::now() + sh.cfg.debug_deadline;
        let outcome = match open_port(sh, local.ip(), peer.ip(), pid, ns_pid, deadline, false) {
            // Dropping the socket makes gdbserver exit: the session is RUNNING again.
            Err(e) => Outcome::Refuse(e),
            Ok(port) => {
                let info = port.info.clone();
                if let Some(v) = sh.sessions.get_mut(&id).and_then(|s| s.debug.as_mut()) {
                    v.port = Some((info.port, info.host.clone()));
                    v.gdb = Some(info.gdb.clone());
                    v.deadline = Some(deadline);
                }
                self.port_tokens.insert(port.token, id);
                let sock = std::os::unix::net::UnixStream::from(sock);
                self.waiting.insert(id, Waiting { identity: p.caller.name(), deadline, sock, port: Some(port) });
                Outcome::reply(&Debugging {
                    ok: proto::True,
                    id,
                    state: State::Debugging,
                    debug: Some(info),
                    stdio: false,
                })
            }
        };
        sh.answer(to, outcome);
    }

    /// A connection on a debug port: from the allowed address it becomes the relay; from
    /// anywhere else it is refused (and audited).
    pub fn accept(&mut self, sh: &mut Shared, t: Token) {
        loop {
            let Some(&id) = self.port_tokens.get(&t) else { return };
            let Some(p) = self.waiting.get(&id).and_then(|w| w.port.as_ref()) else { return };
            let (stream, from) = match p.listener.accept() {
                Ok(s) => s,
                Err(_) => return,
            };
            if from.ip() != p.allowed {
                log::warn!("refused a debug connection from {from} (only {} may connect)", p.allowed);
                let identity = self.waiting.get(&id).map(|w| w.identity.clone()).unwrap_or_else(|| "".into());
                sh.audit.log_noise(
                    "debug_refused",
                    json!({"peer": from.to_string(), "id": id.to_string(), "allowed": p.allowed.to_string(), "identity": &*identity}),
                );
                continue;
            }
            self.port_tokens.remove(&t);
            let Some(w) = self.waiting.remove(&id) else { return };
            if let Some(mut p) = w.port {
                sh.io.deregister(&mut p.listener, p.token);
            }
            // gdb's packets are small and latency-bound: no Nagle.
            let _ = stream.set_nodelay(true);
            let peer = from.to_string();
            self.attached(sh, id, &peer, &peer, &w.identity);
            self.relay(sh, id, peer, false, w.identity, Some(Stream::Tcp(stream)), w.sock, Vec::new(), Vec::new());
            return;
        }
    }

    /// A debugger connected: audit, event, STATUS.
    fn attached(&mut self, sh: &mut Shared, id: Uuid, peer: &str, shown: &str, identity: &str) {
        sh.audit.log("debug_attach", json!({"peer": peer, "id": id.to_string(), "identity": identity}));
        sh.emit(id, EventKind::DebugAttached { peer: shown.to_string() });
        if let Some(v) = sh.sessions.get_mut(&id).and_then(|s| s.debug.as_mut()) {
            v.peer = Some(shown.to_string());
            v.port = None;
            v.gdb = None;
            v.deadline = None;
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
        let peer = format!("{peer} (control connection, --stdio)");
        self.attached(sh, id, &peer, "control connection (--stdio)", &identity);
        self.relay(sh, id, peer, stdio_client, identity, Some(client), sock, early_in, early_out);
    }

    #[allow(clippy::too_many_arguments)]
    fn relay(
        &mut self,
        sh: &mut Shared,
        id: Uuid,
        peer: String,
        stdio_client: bool,
        identity: Arc<str>,
        client: Option<Stream>,
        gdb: std::os::unix::net::UnixStream,
        to_gdb: Vec<u8>,
        to_client: Vec<u8>,
    ) {
        self.next_relay += 1;
        let rid = self.next_relay;
        let _ = gdb.set_nonblocking(true);
        let mut gdb = UnixStream::from_std(gdb);
        let both = Interest::READABLE | Interest::WRITABLE;
        let Ok(gdb_token) = sh.io.register(&mut gdb, both, Source::Relay { relay: rid, side: Side::Gdbserver }) else {
            return;
        };
        let client = match client {
            Some(mut c) => match sh.io.register(&mut c, both, Source::Relay { relay: rid, side: Side::Client }) {
                Ok(t) => Some((c, t)),
                Err(_) => {
                    sh.io.deregister(&mut gdb, gdb_token);
                    return;
                }
            },
            None => None,
        };
        let launched = self.launched.contains(&id);
        let releasing = client.is_none();
        let mut watch = Watch::default();
        watch.saw_client(&to_gdb);
        let to_gdb = shared::rsp::add_swbreak(&to_gdb).unwrap_or(to_gdb);
        let r = Relay {
            id,
            peer,
            stdio_client,
            identity,
            client,
            gdb,
            gdb_token,
            to_gdb,
            to_client,
            launched,
            watch,
            releasing,
            let_go: false,
        };
        self.relays.insert(rid, r);
        self.pump(sh, rid);
    }

    /// Moves bytes both ways until both sides would block. gdbserver's EOF ends the relay;
    /// the debugger's EOF ends it too, except that a launched program is first detached.
    pub fn pump(&mut self, sh: &mut Shared, rid: u64) {
        let Some(r) = self.relays.get_mut(&rid) else { return };
        let mut buf = [0u8; 64 * 1024];
        let (mut client_gone, mut gdb_gone) = (false, false);
        loop {
            let mut progress = false;
            // Debugger → gdbserver.
            if let Some((c, _)) = r.client.as_mut() {
                if r.to_gdb.len() < RELAY_BUF {
                    match c.read(&mut buf) {
                        Ok(0) => client_gone = true,
                        Ok(n) => {
                            r.watch.saw_client(&buf[..n]);
                            // lldb's qSupported gets `swbreak+` (see shared::rsp::add_swbreak).
                            match shared::rsp::add_swbreak(&buf[..n]) {
                                Some(fixed) => r.to_gdb.extend_from_slice(&fixed),
                                None => r.to_gdb.extend_from_slice(&buf[..n]),
                            }
                            progress = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                        Err(_) => client_gone = true,
                    }
                }
            }
            // gdbserver → debugger (or nowhere, while it is being detached).
            if r.to_client.len() < RELAY_BUF {
                match r.gdb.read(&mut buf) {
                    Ok(0) => gdb_gone = true,
                    Ok(n) => {
                        r.watch.saw_gdbserver(&buf[..n]);
                        if r.client.is_some() {
                            r.to_client.extend_from_slice(&buf[..n]);
                        }
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                    Err(_) => gdb_gone = true,
                }
            }
            match flush(&mut r.gdb, &mut r.to_gdb) {
                Ok(p) => progress |= p,
                Err(()) => gdb_gone = true,
            }
            if let Some((c, _)) = r.client.as_mut() {
                match flush(c, &mut r.to_client) {
                    Ok(p) => progress |= p,
                    Err(()) => client_gone = true,
                }
            }
            if client_gone && r.launched && !gdb_gone && !r.watch.ended && !r.watch.detached {
                // The debugger left without detaching: detach gdbserver ourselves, so the
                // program runs on, and drain gdbserver until it leaves.
                client_gone = false;
                if let Some((mut c, t)) = r.client.take() {
                    sh.io.deregister(&mut c, t);
                }
                r.to_client.clear();
                let ns_pid = sh.sessions.get(&r.id).and_then(|s| s.ns_pid);
                r.to_gdb = r.watch.release_bytes(ns_pid);
                r.watch.ok = false;
                r.releasing = true;
                sh.audit.log(
                    "debug_detach",
                    json!({"peer": r.peer, "id": r.id.to_string(), "identity": &*r.identity, "released": true}),
                );
                if let Some(v) = sh.sessions.get_mut(&r.id).and_then(|s| s.debug.as_mut()) {
                    v.peer = Some("(releasing: the debugger left)".into());
                }
                let _ = sh.broker.send(Owner::Debug, release(r.id, RELEASE_GRACE));
                progress = true;
            }
            if client_gone || gdb_gone || !progress {
                break;
            }
        }
        if r.launched && !r.let_go && ((r.releasing && r.watch.ok) || r.watch.detached) {
            // Detached (by us or by the debugger): what gdbserver does now is wait for its
            // child, and the program runs on without it: it may go.
            r.let_go = true;
            let _ = sh.broker.send(Owner::Debug, release(r.id, 0));
        }
        let launched_exit = r.watch.exit.take();
        if let Some(status) = launched_exit.filter(|_| r.launched) {
            self.exits.insert(r.id, status);
        }
        if client_gone || gdb_gone {
            self.end_relay(sh, rid);
        }
    }

    fn end_relay(&mut self, sh: &mut Shared, rid: u64) {
        if let Some(mut r) = self.relays.remove(&rid) {
            if let Some((mut c, t)) = r.client.take() {
                sh.audit.log("debug_detach", json!({"peer": r.peer, "id": r.id.to_string(), "identity": &*r.identity}));
                sh.io.deregister(&mut c, t);
            }
            sh.io.deregister(&mut r.gdb, r.gdb_token);
        }
    }

    /// Whether the `--stdio` daemon's one client is still here as a relay.
    pub fn relays_stdio_client(&self) -> bool {
        self.relays.values().any(|r| r.stdio_client && r.client.is_some())
    }

    /// When the next waiting debug endpoint closes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.deadline).min()
    }

    /// Ends the waits whose deadline passed: the program runs on without a debugger (a
    /// launched one is detached; an attached gdbserver sees its socket close and leaves).
    pub fn expire(&mut self, sh: &mut Shared) {
        let now = Instant::now();
        let expired: Vec<Uuid> = self.waiting.iter().filter(|(_, w)| w.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            let Some(w) = self.waiting.remove(&id) else { continue };
            if let Some(mut p) = w.port {
                self.port_tokens.remove(&p.token);
                sh.io.deregister(&mut p.listener, p.token);
            }
            log::info!("debugger endpoint of {id} closed: no debugger connected in time");
            sh.audit.log("debug_expired", json!({"id": id.to_string(), "identity": &*w.identity}));
            sh.emit(id, EventKind::DebugExpired {});
            if let Some(v) = sh.sessions.get_mut(&id).and_then(|s| s.debug.as_mut()) {
                **v = DebugView {
                    launched: v.launched,
                    peer: Some("(releasing: deadline)".into()),
                    ..Default::default()
                };
            }
            if self.launched.contains(&id) {
                let bytes = Watch::default().release_bytes(sh.sessions.get(&id).and_then(|s| s.ns_pid));
                let _ = sh.broker.send(Owner::Debug, release(id, RELEASE_GRACE));
                self.relay(sh, id, "(deadline)".into(), false, w.identity, None, w.sock, bytes, Vec::new());
            }
        }
    }

    /// How a launched program ended, if its gdbserver said so (once).
    pub fn take_exit(&mut self, id: Uuid) -> Option<ExitStatus> {
        self.exits.remove(&id)
    }

    /// gdbserver of `id` exited: the debugger detached or left.
    pub fn on_ended(&mut self, sh: &mut Shared, id: Uuid) {
        // Its last words (a stop reply with the program's exit) are still to be read.
        let rids: Vec<u64> = self.relays.iter().filter(|(_, r)| r.id == id).map(|(k, _)| *k).collect();
        for rid in rids {
            self.pump(sh, rid);
        }
        self.forget(sh, id);
        if let Some(s) = sh.sessions.get_mut(&id) {
            if s.state == State::Debugging {
                s.state = State::Running;
            }
        }
        sh.emit(id, EventKind::DebugDetached {});
    }

    /// Drops the debug endpoint and relay of a session (its run ended, or it is gone).
    pub fn forget(&mut self, sh: &mut Shared, id: Uuid) {
        if let Some(w) = self.waiting.remove(&id) {
            if let Some(mut p) = w.port {
                self.port_tokens.remove(&p.token);
                sh.io.deregister(&mut p.listener, p.token);
            }
        }
        let relays: Vec<u64> = self.relays.iter().filter(|(_, r)| r.id == id).map(|(k, _)| *k).collect();
        for rid in relays {
            self.end_relay(sh, rid);
        }
        self.launched.remove(&id);
        if let Some(s) = sh.sessions.get_mut(&id) {
            s.debug = None;
        }
    }
}

/// Writes what is pending; `Ok(progress)`, or `Err` when the peer is gone.
fn flush(dst: &mut dyn Write, pending: &mut Vec<u8>) -> Result<bool, ()> {
    let mut progress = false;
    while !pending.is_empty() {
        match dst.write(pending) {
            Ok(0) => return Err(()),
            Ok(n) => {
                pending.drain(..n);
                progress = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(progress)
}

fn no_address() -> Error {
    Error::unsupported(
        "this connection has no network address to open a debug port on: use DEBUG <id> --stdio (lantern gdb-pipe)",
    )
}

/// A listener on the address the client reached us on, on the first free port of the
/// configured range, registered.
fn open_port(
    sh: &mut Shared,
    local: IpAddr,
    peer: IpAddr,
    pid: Option<i32>,
    ns_pid: u32,
    deadline: Instant,
    launched: bool,
) -> Result<Port, Error> {
    let mut listener = debug_listener(local, sh.cfg.debug_ports).map_err(|e| Error::limit(shared::chain(&e)))?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let token = sh
        .io
        .register(&mut listener, Interest::READABLE, Source::DebugPort)
        .map_err(|e| Error::internal(format!("debug listener: {e}")))?;
    let host = match local {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    // A launched program runs from a real path: gdb reads its symbols back from the
    // exec-file gdbserver reports. An attached one may be a memfd, readable only as its
    // /proc/<pid>/exe.
    let file = if launched { String::new() } else { format!(" -ex 'file target:/proc/{ns_pid}/exe'") };
    let gdb = format!("gdb -q -ex 'target remote {host}:{port}'{file}");
    let deadline_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
    let info = DebugPort { port, host: local.to_string(), pid, ns_pid, gdb, deadline_ms };
    Ok(Port { token, listener, allowed: peer, info })
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
