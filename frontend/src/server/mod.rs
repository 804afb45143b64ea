//! The frontend's single-threaded event loop (mio, edge-triggered). Each token stands for
//! one [`io::Source`]; each concern owns its state in its own module and its handlers
//! return an [`ctx::Outcome`] that only this loop applies to a connection:
//!
//! | module | owns |
//! |---|---|
//! | [`conn`] | a connection's bytes, framing, mode and output |
//! | [`access`] | AUTH, the tokens, the slow-down of failures |
//! | [`uploads`] | UPLOAD: budgets, quotas, the hashing and bundle threads, loading |
//! | [`lifecycle`] | START, STOP, KILL, DELETE, runs' ends, receipts |
//! | [`output`] | log pipes, LOGS, the consumers of a run's output (LOGS --follow, attached clients) |
//! | [`attach`] | START --attach: the client's frames, the run's stdin |
//! | [`files`] | GET, PUT: files helpers, the worker's copies |
//! | [`execs`] | EXEC: another process of a running session, its output relayed |
//! | [`events`] | EVENTS subscribers |
//! | [`debug`] | DEBUG: ports, relays |
//! | [`queries`] | HELLO, LIST, STATUS, RECEIPT |
//!
//! Each connection handles one command at a time: a command that needs the broker parks
//! the connection (its later, pipelined commands wait in its buffer or in the kernel), so
//! replies always come back in order, while every other connection keeps being served.
//! Owners never call each other: a completion that concerns another owner leaves a
//! [`ctx::Followup`], which the loop hands on.

pub mod access;
pub mod attach;
pub mod broker_link;
pub mod conn;
pub mod ctx;
pub mod debug;
mod drive;
pub mod events;
pub mod execs;
pub mod files;
pub mod io;
pub mod lifecycle;
pub mod model;
pub mod observed;
pub mod output;
pub mod queries;
pub mod ring;
pub mod uploads;

use self::broker_link::{BrokerLink, Incoming, Owner};
use self::conn::{Conn, Mode};
use self::ctx::{Followup, Shared};
use self::io::{Io, Source};
use crate::auth::Tokens;
use crate::config::Config;
use crate::stream::Stream;
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use shared::{Reply, Request, Tube, TubeError, MAGIC, WIRE_VERSION};
use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const BROKER: Token = Token(1);
const BROKER_PID: Token = Token(2);
const SIGNALS: Token = Token(3);
const WAKER: Token = Token(4);
const FIRST_DYNAMIC: usize = 16;

/// Refusals of one connection written to the audit log before it goes quiet about them.
const AUDITED_REFUSALS: u32 = 32;

/// Where clients come from.
#[derive(Debug)]
pub enum Clients {
    /// Listening sockets (bound by us or passed by systemd).
    Listeners(Vec<std::net::TcpListener>),
    /// One client on a Unix stream socket (`--stdio`): the daemon ends with it.
    Stdio(std::os::unix::net::UnixStream),
}

/// Who may use the rig and where that is recorded.
#[derive(Debug)]
pub struct Security {
    /// The operator's tokens; `None` = no authentication (loopback, or --insecure-no-auth).
    pub tokens: Option<Tokens>,
    /// The audit log.
    pub audit: crate::audit::Audit,
    /// The cgroup controllers that limit sessions (`memory`, `pids`, `cpu`).
    pub cgroups: Vec<String>,
    /// How landlock confines the halves on this kernel ([`policy::landlock::describe`],
    /// probed before the seccomp filter forbids the probe).
    pub landlock: String,
}

/// Why the daemon stops.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The broker is gone or misbehaved: fail closed.
    #[error("broker link failed")]
    Broker(#[from] TubeError),
    /// The broker exited.
    #[error("the broker exited unexpectedly ({0})")]
    BrokerExited(String),
    /// The hello failed.
    #[error("broker hello: {0}")]
    Hello(String),
    /// epoll or signalfd failed.
    #[error("event loop")]
    Io(#[from] std::io::Error),
    /// Shutdown took too long.
    #[error("the broker did not finish shutting down in time")]
    ShutdownTimeout,
}

impl From<nix::Error> for ServeError {
    fn from(e: nix::Error) -> Self {
        ServeError::Io(e.into())
    }
}

/// The frontend.
pub struct Server {
    poll: Poll,
    sh: Shared,
    conns: HashMap<Token, Conn>,
    listeners: Vec<Option<(Token, TcpListener)>>,
    /// The `--stdio` client's connection: when it ends, the daemon shuts down.
    stdio: Option<Token>,
    broker_pidfd: OwnedFd,
    signals: SignalFd,
    waker: Arc<mio::Waker>,
    /// The bundle store (handed to the worker when it starts).
    store: Option<OwnedFd>,
    access: access::Access,
    uploads: uploads::Uploads,
    lifecycle: lifecycle::Lifecycle,
    output: output::Output,
    attach: attach::Attach,
    files: files::Files,
    execs: execs::Execs,
    /// Connections the broker's events concern (an exec's end), driven next.
    woken: Vec<Token>,
    events: events::Events,
    debug: debug::Debug,
    /// The mDNS advertisement, if any (withdrawn at shutdown).
    advertiser: Option<discovery::Advertiser>,
    /// The unicast DNS-SD registration, if any (its records deleted at shutdown).
    registrar: Option<discovery::unicast::Registrar>,
    shutdown_deadline: Option<Instant>,
    /// The cgroup controllers that limit sessions, and landlock (for the jail description).
    cgroups: Vec<String>,
    landlock: String,
    next_wait: u64,
    scratch: Vec<u8>,
    /// The event log's head when subscribers were last pumped.
    events_pumped: u64,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("sessions", &self.sh.sessions.len())
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Server {
    /// Sets up the loop around the clients' sockets and a started broker, and does the
    /// hello with the broker.
    pub fn new(
        cfg: Config,
        clients: Clients,
        broker: crate::launcher::Broker,
        store: OwnedFd,
        security: Security,
        mut warnings: Vec<String>,
    ) -> Result<Server, ServeError> {
        let poll = Poll::new()?;
        let mut tube = Tube::new(broker.sock)?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        warnings.extend(hello(&mut tube)?);
        let mut io = Io::new(poll.registry().try_clone()?, FIRST_DYNAMIC);
        let access = access::Access::new(security.tokens);
        let mut listeners = Vec::new();
        let mut stdio = None;
        let mut conns = HashMap::new();
        match clients {
            Clients::Listeners(ls) => {
                for (i, l) in ls.into_iter().enumerate() {
                    l.set_nonblocking(true)?;
                    let mut l = TcpListener::from_std(l);
                    let t = io.register(&mut l, Interest::READABLE, Source::Listener(i))?;
                    listeners.push(Some((t, l)));
                }
            }
            Clients::Stdio(sock) => {
                sock.set_nonblocking(true)?;
                let mut stream = Stream::Unix(mio::net::UnixStream::from_std(sock));
                let t = io.register(&mut stream, Interest::READABLE | Interest::WRITABLE, Source::Conn)?;
                // The bridge's peer: the socket on fd 0, when it is one (inetd, systemd Accept=yes).
                let addr =
                    |a: nix::Result<nix::sys::socket::SockaddrStorage>| a.ok().and_then(|a| crate::stream::to_std(&a));
                let peer = addr(nix::sys::socket::getpeername(0));
                let local = addr(nix::sys::socket::getsockname(0));
                let mut c = Conn::new(stream, peer, local, access.initial());
                c.stdio_client = true;
                conns.insert(t, c);
                stdio = Some(t);
            }
        }
        io.register_at(&mut SourceFd(&tube.as_raw_fd()), BROKER, Interest::READABLE, Source::Broker)?;
        io.register_at(&mut SourceFd(&broker.pidfd.as_raw_fd()), BROKER_PID, Interest::READABLE, Source::BrokerPid)?;
        io.register_at(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE, Source::Signals)?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        io.name(WAKER, Source::Waker);
        let (cgroups, landlock) = (security.cgroups, security.landlock);
        let mut sh = Shared::new(cfg, BrokerLink::new(tube), security.audit, io, warnings);
        sh.auth_required = access.required();
        Ok(Server {
            poll,
            sh,
            conns,
            listeners,
            stdio,
            broker_pidfd: broker.pidfd,
            signals,
            waker,
            store: Some(store),
            access,
            uploads: uploads::Uploads::default(),
            lifecycle: lifecycle::Lifecycle::default(),
            output: output::Output::default(),
            attach: attach::Attach::default(),
            files: files::Files::default(),
            execs: execs::Execs::default(),
            woken: Vec::new(),
            events: events::Events::default(),
            debug: debug::Debug::default(),
            advertiser: None,
            registrar: None,
            cgroups,
            landlock,
            shutdown_deadline: None,
            next_wait: 1,
            scratch: vec![0u8; 1 << 20],
            events_pumped: 0,
        })
    }

    /// Starts the helper threads (after landlock, before seccomp: see `hasher`, `worker`).
    pub fn start_worker(&mut self) -> std::io::Result<()> {
        match self.store.take() {
            Some(store) => self.uploads.start_threads(store, self.waker.clone()),
            None => Ok(()),
        }
    }

    /// The bundle store's descriptor, for the landlock ruleset (before the worker starts).
    pub fn store_fd(&self) -> Option<BorrowedFd<'_>> {
        self.store.as_ref().map(|s| s.as_fd())
    }

    /// Warnings of this daemon (degraded host, rootless mode, broker's).
    pub fn warnings(&self) -> &[String] {
        &self.sh.warnings
    }

    /// Adds a warning (shown in HELLO).
    pub fn add_warning(&mut self, w: String) {
        self.sh.warnings.push(w);
    }

    /// Starts advertising over mDNS if the configuration asks for it here (a failure is a
    /// warning). After landlock, before seccomp: the responder's threads inherit the first
    /// and have started before the second.
    pub fn start_mdns(&mut self, listen: SocketAddr) {
        let Some(plan) = self.sh.cfg.mdns.clone() else { return };
        if !discovery::wanted(&plan, listen) {
            return;
        }
        match discovery::start(&plan, listen) {
            Ok(a) => {
                log::info!("advertising {:?} over mDNS", a.name);
                self.sh.mdns =
                    Some(proto::reply::Mdns { instance: a.name.clone(), service: discovery::SERVICE.to_string() });
                self.advertiser = Some(a);
            }
            Err(e) => self.sh.warnings.push(format!("not advertised over mDNS: {}", shared::chain(&e))),
        }
    }

    /// Starts keeping the rig's records in its unicast DNS-SD domain, if configured (a
    /// failure, now or later, is a HELLO warning). Before seccomp, like [`Self::start_mdns`].
    pub fn start_dns_sd(&mut self, listen: SocketAddr) {
        let Some(plan) = self.sh.cfg.dns_sd.clone() else { return };
        let txt = discovery::txt(self.sh.auth_required, self.sh.cfg.max_sessions);
        match discovery::unicast::register(plan, listen, txt) {
            Ok(r) => {
                self.sh.dns_sd = Some(r.state_handle());
                self.registrar = Some(r);
            }
            Err(e) => self.sh.warnings.push(format!("not registered in DNS-SD: {}", shared::chain(&e))),
        }
    }

    /// Serves until SIGTERM/SIGINT (Ok, after the broker stopped every session) or until
    /// the broker fails (Err: the caller exits non-zero; the broker's death already took
    /// every session with it).
    pub fn run(mut self) -> Result<(), ServeError> {
        let has = |needle: &str| self.sh.warnings.iter().any(|w| w.contains(needle));
        let uid = if has("share one uid") { "shared (rootless)" } else { "distinct per session" };
        self.sh.jail = queries::jail(uid, self.cgroups.clone(), self.landlock.clone());
        let mut events = Events::with_capacity(1024);
        loop {
            let next = [self.debug.next_deadline(), self.access.next_deadline(), self.shutdown_deadline]
                .into_iter()
                .flatten()
                .min();
            let timeout = next.map(|d| d.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            if self.shutdown_deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ServeError::ShutdownTimeout);
            }
            self.debug.expire(&mut self.sh);
            self.access.answer_due(&mut self.sh);
            let mut touched = Vec::new();
            for ev in events.iter() {
                let t = ev.token();
                let Some(source) = self.sh.io.source(t) else { continue };
                match source {
                    Source::Listener(i) => self.accept(i)?,
                    Source::Broker => {
                        if ev.is_writable() {
                            self.sh.broker.flush()?;
                        }
                        loop {
                            match self.sh.broker.recv() {
                                // What one message left for other owners is handed on before
                                // the next is read: the reply that attaches a process comes
                                // before the event of its end, even when both came in one read.
                                Ok(Some(incoming)) => {
                                    self.on_broker(incoming);
                                    self.hand_on(&mut touched);
                                }
                                Ok(None) => break,
                                // The broker closes its end when it has finished shutting down.
                                Err(TubeError::PeerGone) if self.shutdown_deadline.is_some() => {
                                    return self.await_broker_exit()
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    Source::BrokerPid => {
                        let how = match shared::os::reap_pidfd(self.broker_pidfd.as_fd()) {
                            Ok(shared::os::Reaped::Code(c)) => format!("exit code {c}"),
                            Ok(shared::os::Reaped::Signal(s)) => format!("killed by signal {s}"),
                            Ok(shared::os::Reaped::Running) => continue,
                            Err(e) => format!("waitid: {e}"),
                        };
                        if self.shutdown_deadline.is_some() && how == "exit code 0" {
                            return Ok(());
                        }
                        return Err(ServeError::BrokerExited(how));
                    }
                    Source::Waker => {
                        for done in self.uploads.on_wake(&mut self.sh) {
                            self.files.on_done(&mut self.sh, done);
                        }
                        touched.extend(self.uploads.take_starved());
                    }
                    Source::Signals => {
                        while let Ok(Some(sig)) = self.signals.read_signal() {
                            log::info!("signal {}: stopping every session, then exiting", sig.ssi_signo);
                            self.begin_shutdown()?;
                        }
                    }
                    Source::Pipe { .. } => self.output.readable(&mut self.sh, t),
                    // An attached run's stdin has room: its client's waiting input goes on.
                    Source::Stdin { conn } => touched.push(conn),
                    Source::ExecPipe { conn } => {
                        self.execs.readable(conn, t);
                        touched.push(conn);
                    }
                    Source::DebugPort => self.debug.accept(&mut self.sh, t),
                    Source::Relay { relay, .. } => self.debug.pump(&mut self.sh, relay),
                    Source::Conn => {
                        if let Some(c) = self.conns.get_mut(&t) {
                            if ev.is_error() {
                                c.dead = true;
                            }
                            let unread = matches!(c.mode, Mode::Waiting(_) | Mode::Stream(_) | Mode::Attached);
                            if ev.is_read_closed() && unread {
                                // Nothing is read from it in these modes: note the EOF now.
                                c.eof = true;
                            }
                        }
                        touched.push(t);
                    }
                }
            }
            touched.append(&mut self.woken);
            // Drive what changed until nothing more follows (a command's completion can
            // answer other connections, and events wake subscribers).
            for _ in 0..64 {
                self.settle(&mut touched);
                if touched.is_empty() {
                    break;
                }
                touched.sort_unstable();
                touched.dedup();
                for t in std::mem::take(&mut touched) {
                    self.drive(t);
                }
            }
            // A --stdio daemon serves one client: when it is gone (also as a DEBUG --stdio
            // relay), stop everything.
            let stdio_gone =
                self.stdio.is_some_and(|t| !self.conns.contains_key(&t)) && !self.debug.relays_stdio_client();
            if stdio_gone && self.shutdown_deadline.is_none() {
                log::info!("the --stdio client is gone: stopping every session, then exiting");
                self.begin_shutdown()?;
            }
            let interest =
                if self.sh.broker.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            self.sh.io.reregister(&mut SourceFd(&self.sh.broker.as_raw_fd()), BROKER, interest)?;
        }
    }

    /// Hands on what owners left for each other, applies the answers they queued, and
    /// notes which streams have something new; `touched` gets every connection to drive.
    fn settle(&mut self, touched: &mut Vec<Token>) {
        self.hand_on(touched);
        for id in self.sh.sessions.take_dirty() {
            touched.extend(self.output.consumers_of(id));
        }
        if self.sh.events.head() != self.events_pumped {
            self.events_pumped = self.sh.events.head();
            touched.extend(self.events.subscribers());
        }
    }

    /// Hands on what owners left for each other and applies the answers they queued;
    /// `touched` gets every connection to drive.
    fn hand_on(&mut self, touched: &mut Vec<Token>) {
        loop {
            let followups = self.sh.take_followups();
            let answers = self.sh.take_answers();
            if followups.is_empty() && answers.is_empty() {
                break;
            }
            for f in followups {
                self.follow_up(f, touched);
            }
            for a in answers {
                let waits = self.conns.get(&a.to.conn).is_some_and(|c| c.mode == Mode::Waiting(a.to.wait));
                if waits {
                    self.apply(a.to.conn, a.to.wait, a.outcome);
                    touched.push(a.to.conn);
                }
            }
        }
    }

    fn follow_up(&mut self, f: Followup, touched: &mut Vec<Token>) {
        match f {
            Followup::Attach { to, id, reply, stdin, tty, remove } => {
                let Some(c) = self.conns.get_mut(&to.conn).filter(|c| c.mode == Mode::Waiting(to.wait)) else {
                    // The client went away while its run was being set up.
                    self.lifecycle.abandon(&mut self.sh, id, remove, "its attached client went away during START");
                    return;
                };
                c.out.extend_from_slice(&reply);
                c.mode = Mode::Attached;
                self.output.consume(&self.sh, to.conn, id, output::Format::Frames);
                self.attach.adopt(to.conn, id, None, stdin, tty, remove);
                touched.push(to.conn);
            }
            Followup::ExecAttach { to, id, exec, ns_pid, reply, stdout, stderr, stdin, wants_stdin, tty, comm } => {
                let Some(c) = self.conns.get_mut(&to.conn).filter(|c| c.mode == Mode::Waiting(to.wait)) else {
                    // The client went away while the process was being started.
                    let req =
                        shared::Request::Signal { id: uploads::session_id(&id), exec: Some(exec), sig: libc::SIGKILL };
                    let _ = self.sh.broker.send(Owner::Execs, req);
                    return;
                };
                c.out.extend_from_slice(&reply);
                c.mode = Mode::Attached;
                self.execs.adopt(&mut self.sh, to.conn, id, exec, ns_pid, stdout, stderr, comm);
                self.attach.adopt(to.conn, id, Some(exec), wants_stdin, tty, false);
                self.attach.take_stdin(&mut self.sh, id, Some(exec), stdin);
                touched.push(to.conn);
            }
            Followup::Put { to, target, data, size, sha256 } => {
                self.files.put_stored(&mut self.sh, to, target, data, size, sha256)
            }
            Followup::Pipes { id, stdout, stderr, stdin } => {
                self.output.add_pipes(&mut self.sh, id, stdout, stderr);
                self.attach.take_stdin(&mut self.sh, id, None, stdin);
            }
            Followup::DebugStarted { caller, id, sock, port, started } => {
                self.debug.start_held(&mut self.sh, caller, id, sock, port, started)
            }
            Followup::Deleted { id, bundle } => {
                self.output.forget(&mut self.sh, id);
                self.attach.forget(&mut self.sh, id);
                touched.extend(self.execs.forget(id));
                self.debug.forget(&mut self.sh, id);
                if bundle {
                    self.uploads.remove_bundle(id);
                }
            }
        }
    }

    fn on_broker(&mut self, incoming: Incoming) {
        let sh = &mut self.sh;
        match incoming {
            Incoming::Event(Reply::Exited { id, status, usage, limit_hit, observed, core }) => {
                let id = Uuid::from_bytes(id.0);
                // Every process of the run is dead: the pipes hold their last bytes.
                self.output.drain(sh, id);
                // A program gdbserver launched and reaped: its stop reply said how it ended.
                let status = self.debug.take_exit(id).unwrap_or(status);
                self.debug.forget(sh, id);
                let observed = observed.and_then(observed::read);
                self.lifecycle.on_exited(sh, id, status, usage, limit_hit, (observed, core));
            }
            Incoming::Event(Reply::DebugEnded { id }) => self.debug.on_ended(sh, Uuid::from_bytes(id.0)),
            Incoming::Event(Reply::ExecExited { id, exec, status }) => {
                self.woken.extend(self.execs.on_exited(sh, Uuid::from_bytes(id.0), exec, status));
            }
            Incoming::Event(Reply::Spawned { id }) => self.lifecycle.on_spawned(sh, Uuid::from_bytes(id.0)),
            Incoming::Event(other) => log::error!("unexpected broker event {other:?}"),
            Incoming::Reply { owner: Owner::Uploads, tag, reply } => self.uploads.on_reply(sh, tag, reply),
            Incoming::Reply { owner: Owner::Lifecycle, tag, reply } => self.lifecycle.on_reply(sh, tag, reply),
            Incoming::Reply { owner: Owner::Debug, tag, reply } => self.debug.on_reply(sh, tag, reply),
            // An attached client's signal: accepted, or the run had just ended.
            Incoming::Reply { owner: Owner::Attach, .. } => {}
            Incoming::Reply { owner: Owner::Execs, tag, reply } => self.execs.on_reply(sh, tag, reply),
            Incoming::Reply { owner: Owner::Files, tag, reply } => {
                self.files.on_reply(sh, self.uploads.worker(), tag, reply)
            }
            Incoming::Stray(tag, reply) => log::error!("broker answered an unknown request {tag}: {reply:?}"),
        }
    }

    /// After the broker closed its socket during shutdown: wait for it to exit and report
    /// whether it stopped everything cleanly.
    fn await_broker_exit(&mut self) -> Result<(), ServeError> {
        let deadline = self.shutdown_deadline.unwrap_or_else(Instant::now);
        loop {
            match shared::os::reap_pidfd(self.broker_pidfd.as_fd())? {
                shared::os::Reaped::Code(0) => return Ok(()),
                shared::os::Reaped::Code(c) => return Err(ServeError::BrokerExited(format!("exit code {c}"))),
                shared::os::Reaped::Signal(s) => return Err(ServeError::BrokerExited(format!("killed by signal {s}"))),
                shared::os::Reaped::Running if Instant::now() >= deadline => return Err(ServeError::ShutdownTimeout),
                shared::os::Reaped::Running => {
                    let mut pfd = [nix::poll::PollFd::new(self.broker_pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
                    nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16))?;
                }
            }
        }
    }

    fn begin_shutdown(&mut self) -> Result<(), ServeError> {
        if self.shutdown_deadline.is_some() {
            return Ok(());
        }
        for slot in &mut self.listeners {
            if let Some((t, mut l)) = slot.take() {
                self.sh.io.deregister(&mut l, t);
            }
        }
        // Goodbye packets first: clients stop offering a rig that is going away.
        if let Some(a) = self.advertiser.take() {
            a.stop();
        }
        if let Some(r) = self.registrar.take() {
            r.stop();
        }
        let grace = self.sh.cfg.stop_grace;
        self.sh.broker.notify(Request::Shutdown { grace_ms: grace.as_millis() as u64 })?;
        self.shutdown_deadline = Some(Instant::now() + grace + Duration::from_secs(5));
        Ok(())
    }

    fn accept(&mut self, i: usize) -> Result<(), ServeError> {
        loop {
            let Some(Some((_, listener))) = self.listeners.get(i) else { return Ok(()) };
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) =>
                {
                    log::error!("cannot accept: {e}");
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::ConnectionAborted || e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if self.conns.len() >= self.sh.cfg.max_connections {
                let e = proto::Error::limit(format!(
                    "the rig serves at most {} connections; try again later",
                    self.sh.cfg.max_connections
                ));
                let _ = stream.write(&proto::line(&e));
                continue;
            }
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            let mut stream = Stream::Tcp(stream);
            let t = self.sh.io.register(&mut stream, Interest::READABLE | Interest::WRITABLE, Source::Conn)?;
            self.conns.insert(t, Conn::new(stream, Some(peer), local, self.access.initial()));
        }
    }
}

/// The hello with the broker, synchronously: nothing is served before the broker is known
/// good. Returns the broker's warnings.
fn hello(tube: &mut Tube) -> Result<Vec<String>, ServeError> {
    tube.send(1, Request::Hello { magic: MAGIC, version: WIRE_VERSION })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pfd = [nix::poll::PollFd::new(tube.as_fd(), nix::poll::PollFlags::POLLIN)];
        nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16))?;
        match tube.recv::<Reply>()? {
            Some((1, Reply::Hello { magic, version, warnings })) if magic == MAGIC && version == WIRE_VERSION => {
                return Ok(warnings)
            }
            Some((_, other)) => return Err(ServeError::Hello(format!("unexpected answer {other:?}"))),
            None if Instant::now() > deadline => return Err(ServeError::Hello("no answer within 10 s".into())),
            None => {}
        }
    }
}
