//! The frontend's single-threaded epoll loop (mio, edge-triggered): the control listener,
//! every client connection, the broker's socket and pidfd, each session's log pipes, and
//! the termination signals.
//!
//! Each connection handles one command at a time: a command that needs the broker parks
//! the connection (its later, pipelined commands wait in its buffer or in the kernel),
//! so replies always come back in order, while every other connection keeps being served.

use crate::auth::{Identity, Throttle, Tokens};
use crate::config::Config;
use crate::elf;
use crate::protocol::{self, Code, Command, Frame, Framer, ProtoError, StartOpts, UploadSize};
use crate::session::{self, LogRing, Session, State};
use crate::stream::Stream;
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde_json::{json, Value};
use shared::{Refusal, Reply, Request, SessionId, StartSpec, Tube, TubeError, MAGIC, WIRE_VERSION};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

const BROKER: Token = Token(1);
const BROKER_PID: Token = Token(2);
const SIGNALS: Token = Token(3);
const WORKER: Token = Token(4);
const FIRST_DYNAMIC: usize = 16;

/// Largest JSON chunk of output per LOGS --follow line.
const FOLLOW_CHUNK: usize = 64 * 1024;
/// A connection's output buffer above which we stop producing more for it.
const OUT_HIGH_WATER: usize = 1 << 20;
/// Bytes of pipelined input buffered while a connection is parked.
const IN_CAP: usize = 64 * 1024;

/// Someone waiting for a run to end (STOP/KILL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    conn: Token,
    wait: u64,
}

struct Upload {
    /// Who it will belong to.
    owner: Arc<str>,
    memfd: File,
    size: u64,
    /// Its job on the hashing thread, which writes the bytes into `memfd`.
    job: u64,
    /// A bundle's executable path; `None` for a single binary.
    exec_path: Option<String>,
}

/// A bundle being extracted by the worker.
struct Extracting {
    owner: Arc<str>,
    peer: String,
    conn: Token,
    wait: u64,
    /// Bytes reserved for the compressed upload.
    size: u64,
    sha256: String,
    exec_path: String,
    id: Uuid,
}

enum Mode {
    /// Reading command lines.
    Lines,
    /// Reading the raw bytes of an upload.
    Upload(Box<Upload>),
    /// Discarding the bytes of a refused upload (the framer counts them).
    Drain,
    /// Parked until the broker answers (or a run ends); the number identifies the wait.
    Waiting(u64),
    /// Streaming a session's output.
    Follow { id: Uuid, offset: u64 },
    /// Streaming events (of one session, or all that `viewer` may see), from sequence
    /// number `next`.
    Events { filter: Option<Uuid>, next: u64, viewer: Identity },
}

/// Events kept for subscribers that fall behind (they are told how many they missed).
const EVENTS_KEPT: usize = 4096;

/// The event log: the last [`EVENTS_KEPT`] events, numbered from 1.
struct EventLog {
    ring: std::collections::VecDeque<(u64, Uuid, Arc<str>, Value)>,
    next_seq: u64,
    cap: usize,
}

/// What a subscriber gets next.
#[derive(Debug, Default, PartialEq)]
struct Batch {
    /// Events it can no longer get (they left the log before it read them).
    missed: u64,
    /// Events for it, in order.
    events: Vec<Value>,
    /// Where it goes on from.
    next: u64,
    /// A one-session stream saw the session's deletion: it ends.
    ended: bool,
}

impl EventLog {
    fn new(cap: usize) -> Self {
        EventLog { ring: Default::default(), next_seq: 1, cap }
    }

    fn push(&mut self, id: Uuid, owner: Arc<str>, v: Value) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back((seq, id, owner, v));
        seq
    }

    /// Up to `max` events from sequence `next` on, for `filter` (one session or all), of
    /// the sessions `viewer` may see.
    fn since(&self, next: u64, filter: Option<Uuid>, viewer: &Identity, max: usize) -> Batch {
        let oldest = self.ring.front().map_or(self.next_seq, |(s, _, _, _)| *s);
        let mut b = Batch { next: next.max(oldest), missed: oldest.saturating_sub(next), ..Default::default() };
        for (seq, id, owner, v) in self.ring.iter().skip((b.next - oldest) as usize) {
            if b.events.len() == max {
                break;
            }
            b.next = seq + 1;
            if filter.is_some_and(|f| f != *id) || !viewer.may_see(owner) {
                continue;
            }
            b.events.push(v.clone());
            if filter.is_some() && v["event"] == "deleted" {
                b.ended = true;
                break;
            }
        }
        b
    }
}

struct Conn {
    stream: Stream,
    /// The client's address (`None` for a `--stdio` client on a pipe).
    peer: Option<SocketAddr>,
    /// Our address it reached.
    local: Option<SocketAddr>,
    /// Who it is: `None` until AUTH succeeds on a rig with tokens.
    identity: Option<Identity>,
    /// The command being answered (for the audit log).
    verb: &'static str,
    /// Refusals written to the audit log for it (bounded).
    refusals: u32,
    /// Where its command lines and upload payloads begin and end.
    framer: Framer,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    mode: Mode,
    /// The peer sent EOF.
    eof: bool,
    /// Close once `out` is written.
    closing: bool,
    /// The socket failed; drop it.
    dead: bool,
}

/// A debug port waiting for gdb: one connection, from `allowed`, before `deadline`.
struct DebugPort {
    id: Uuid,
    /// Who asked for it.
    identity: Arc<str>,
    listener: TcpListener,
    allowed: std::net::IpAddr,
    deadline: Instant,
    /// gdbserver's stdio (relayed once gdb is connected).
    sock: std::os::unix::net::UnixStream,
}

/// Bytes between gdb's TCP connection and gdbserver's stdio socket.
struct Relay {
    id: Uuid,
    /// Who is debugging (for the audit log).
    peer: String,
    /// The relay is the `--stdio` daemon's one client (DEBUG --stdio on it).
    stdio_client: bool,
    identity: Arc<str>,
    tcp: Stream,
    unix: mio::net::UnixStream,
    to_unix: Vec<u8>,
    to_tcp: Vec<u8>,
    tokens: [Token; 2],
}

/// Most bytes buffered in one direction of a relay before reading that side pauses.
const RELAY_BUF: usize = 256 * 1024;

enum Op {
    Debug {
        id: Uuid,
        local: std::net::IpAddr,
        peer: std::net::IpAddr,
        /// Part of a START --debug (its answer carries the run too).
        started: bool,
        /// DEBUG --stdio: the connection becomes the relay.
        stdio: bool,
        /// Who asked.
        identity: Arc<str>,
    },
    Load {
        owner: Arc<str>,
        peer: String,
        upload_size: u64,
        sha256: String,
        elf: elf::ElfInfo,
        id: Uuid,
        kind: session::Kind,
    },
    Start {
        id: Uuid,
        limits: shared::RunLimits,
        args: Vec<String>,
        env_keys: Vec<String>,
        /// START --debug: the (local, peer) addresses of the client.
        debug: Option<(std::net::IpAddr, std::net::IpAddr)>,
        /// Who asked.
        actor: Arc<str>,
    },
    Stop {
        id: Uuid,
    },
    Delete {
        id: Uuid,
    },
}

struct Pending {
    conn: Token,
    wait: u64,
    op: Op,
}

enum PipeOwner {
    Log { id: Uuid, stream: usize, file: File },
}

/// An AUTH answer held back because its address failed too often.
struct DelayedAuth {
    at: Instant,
    conn: Token,
    wait: u64,
    identity: Option<Identity>,
}

/// Where clients come from.
#[derive(Debug)]
pub enum Clients {
    /// Listening sockets (bound by us or passed by systemd).
    Listeners(Vec<std::net::TcpListener>),
    /// One client on a Unix stream socket (`--stdio`): the daemon ends with it.
    Stdio(std::os::unix::net::UnixStream),
}

/// Sessions and bytes of one identity's uploads in progress.
#[derive(Debug, Default, Clone, Copy)]
struct Reserved {
    sessions: usize,
    bytes: u64,
}

/// Refusals of one connection written to the audit log before it goes quiet about them.
const AUDITED_REFUSALS: u32 = 32;

/// The frontend.
pub struct Server {
    cfg: Config,
    poll: Poll,
    listeners: HashMap<Token, TcpListener>,
    /// The `--stdio` client's connection: when it ends, the daemon shuts down.
    stdio: Option<Token>,
    /// Tokens (`None`: no authentication; everyone is anonymous).
    tokens: Option<Tokens>,
    throttle: Throttle,
    delayed_auth: Vec<DelayedAuth>,
    audit: crate::audit::Audit,
    reserved_by: HashMap<Arc<str>, Reserved>,
    /// The thread that stores and hashes upload bytes.
    hasher: Option<crate::hasher::Hasher>,
    /// Uploads whose last byte arrived, waiting for the thread: job → (conn, wait, upload).
    hashing: HashMap<u64, (Token, u64, Box<Upload>)>,
    next_job: u64,
    /// Connections that found no free upload buffer (driven again when one comes back).
    starved: Vec<Token>,
    tube: Tube,
    broker_pidfd: OwnedFd,
    signals: SignalFd,
    conns: HashMap<Token, Conn>,
    pipes: HashMap<Token, PipeOwner>,
    sessions: BTreeMap<Uuid, Session>,
    pending: HashMap<u64, Pending>,
    next_token: usize,
    next_tag: u64,
    next_wait: u64,
    /// Sessions and bytes promised to uploads in progress.
    reserved_sessions: usize,
    reserved_bytes: u64,
    /// Bytes of all loaded sessions.
    loaded_bytes: u64,
    warnings: Vec<String>,
    scratch: Vec<u8>,
    shutdown_deadline: Option<Instant>,
    /// The bundle store (handed to the worker when it starts).
    store: Option<OwnedFd>,
    waker: std::sync::Arc<mio::Waker>,
    worker: Option<crate::worker::Worker>,
    extracting: HashMap<u64, Extracting>,
    next_ticket: u64,
    events: EventLog,
    /// What confines a session here (for receipts).
    jail: Value,
    /// The mDNS advertisement, if any (withdrawn at shutdown).
    advertiser: Option<crate::discovery::Advertiser>,
    /// Debug listeners by token.
    debug_ports: HashMap<Token, DebugPort>,
    /// Debug relays by id, and their tokens.
    relays: HashMap<u64, Relay>,
    relay_tokens: HashMap<Token, u64>,
    next_relay: u64,
}

/// Who may use the rig and where that is recorded.
#[derive(Debug)]
pub struct Security {
    /// The operator's tokens; `None` = no authentication (loopback, or --insecure-no-auth).
    pub tokens: Option<Tokens>,
    /// The audit log.
    pub audit: crate::audit::Audit,
}

impl Conn {
    fn new(stream: Stream, peer: Option<SocketAddr>, local: Option<SocketAddr>, identity: Option<Identity>) -> Conn {
        Conn {
            stream,
            peer,
            local,
            identity,
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
        }
    }

    fn peer_str(&self) -> String {
        self.peer.map_or_else(|| "stdio".to_string(), |p| p.to_string())
    }
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

fn err_json(code: Code, message: impl Into<String>) -> Value {
    json!({"ok": false, "error": code.as_str(), "message": message.into()})
}

fn proto_json(e: ProtoError) -> Value {
    err_json(e.code, e.message)
}

fn id_of(u: &Uuid) -> SessionId {
    SessionId(*u.as_bytes())
}

/// The host pid of a pidfd, from `/proc/self/fdinfo`.
fn host_pid(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    // -1 once the process has exited (it may already have).
    info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse().ok()).filter(|&p: &i32| p > 0)
}

impl Server {
    /// Sets up the loop around an already bound listener and a started broker, and does
    /// the hello with the broker.
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
        // Hello first, synchronously: nothing is served before the broker is known good.
        tube.send(1, Request::Hello { magic: MAGIC, version: WIRE_VERSION })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let broker_warnings = loop {
            let mut pfd = [nix::poll::PollFd::new(tube.as_fd(), nix::poll::PollFlags::POLLIN)];
            nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16))?;
            match tube.recv::<Reply>()? {
                Some((1, Reply::Hello { magic, version, warnings })) if magic == MAGIC && version == WIRE_VERSION => {
                    break warnings
                }
                Some((_, other)) => return Err(ServeError::Hello(format!("unexpected answer {other:?}"))),
                None if Instant::now() > deadline => return Err(ServeError::Hello("no answer within 10 s".into())),
                None => {}
            }
        };
        warnings.extend(broker_warnings);
        let registry = poll.registry();
        let mut next_token = FIRST_DYNAMIC;
        let mut listeners = HashMap::new();
        let mut stdio = None;
        let mut conns = HashMap::new();
        match clients {
            Clients::Listeners(ls) => {
                for l in ls {
                    l.set_nonblocking(true)?;
                    let mut l = TcpListener::from_std(l);
                    registry.register(&mut l, Token(next_token), Interest::READABLE)?;
                    listeners.insert(Token(next_token), l);
                    next_token += 1;
                }
            }
            Clients::Stdio(sock) => {
                sock.set_nonblocking(true)?;
                let mut stream = Stream::Unix(mio::net::UnixStream::from_std(sock));
                let t = Token(next_token);
                next_token += 1;
                registry.register(&mut stream, t, Interest::READABLE | Interest::WRITABLE)?;
                // The bridge's peer: the socket on fd 0, when it is one (inetd, systemd Accept=yes).
                let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(0)
                    .ok()
                    .and_then(|a| crate::stream::to_std(&a));
                let local = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(0)
                    .ok()
                    .and_then(|a| crate::stream::to_std(&a));
                let identity = security.tokens.is_none().then(Identity::anonymous);
                conns.insert(t, Conn::new(stream, peer, local, identity));
                stdio = Some(t);
            }
        }
        registry.register(&mut SourceFd(&tube.as_raw_fd()), BROKER, Interest::READABLE)?;
        registry.register(&mut SourceFd(&broker.pidfd.as_raw_fd()), BROKER_PID, Interest::READABLE)?;
        registry.register(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE)?;
        let waker = std::sync::Arc::new(mio::Waker::new(registry, WORKER)?);
        Ok(Server {
            cfg,
            poll,
            listeners,
            stdio,
            tokens: security.tokens,
            throttle: Throttle::default(),
            delayed_auth: Vec::new(),
            audit: security.audit,
            reserved_by: HashMap::new(),
            hasher: None,
            hashing: HashMap::new(),
            next_job: 1,
            starved: Vec::new(),
            tube,
            broker_pidfd: broker.pidfd,
            signals,
            conns,
            pipes: HashMap::new(),
            sessions: BTreeMap::new(),
            pending: HashMap::new(),
            next_token,
            next_tag: 2,
            next_wait: 1,
            reserved_sessions: 0,
            reserved_bytes: 0,
            loaded_bytes: 0,
            warnings,
            scratch: vec![0u8; 1 << 20],
            shutdown_deadline: None,
            store: Some(store),
            waker,
            worker: None,
            extracting: HashMap::new(),
            next_ticket: 1,
            events: EventLog::new(EVENTS_KEPT),
            jail: Value::Null,
            advertiser: None,
            debug_ports: HashMap::new(),
            relays: HashMap::new(),
            relay_tokens: HashMap::new(),
            next_relay: 1,
        })
    }

    /// Serves until SIGTERM/SIGINT (Ok, after the broker stopped every session) or until
    /// the broker fails (Err: the caller exits non-zero; the broker's death already took
    /// every session with it).
    pub fn run(mut self) -> Result<(), ServeError> {
        self.describe_jail();
        let mut events = Events::with_capacity(1024);
        loop {
            let next = self
                .debug_ports
                .values()
                .map(|p| p.deadline)
                .chain(self.delayed_auth.iter().map(|d| d.at))
                .chain(self.shutdown_deadline)
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
            self.expire_debug_ports();
            let mut touched = Vec::new();
            self.answer_delayed_auth(&mut touched);
            for ev in events.iter() {
                match ev.token() {
                    t if self.listeners.contains_key(&t) => self.accept(t)?,
                    BROKER => {
                        if ev.is_writable() {
                            self.tube.flush()?;
                        }
                        loop {
                            match self.tube.recv::<Reply>() {
                                Ok(Some((tag, reply))) => self.on_broker(tag, reply, &mut touched),
                                Ok(None) => break,
                                // The broker closes its end when it has finished shutting down.
                                Err(TubeError::PeerGone) if self.shutdown_deadline.is_some() => {
                                    return self.await_broker_exit()
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    BROKER_PID => {
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
                    WORKER => {
                        self.on_worker(&mut touched);
                        self.on_hasher(&mut touched);
                    }
                    SIGNALS => {
                        while let Ok(Some(sig)) = self.signals.read_signal() {
                            eprintln!("debuglantern: signal {}: stopping every session, then exiting", sig.ssi_signo);
                            self.begin_shutdown()?;
                        }
                    }
                    t if self.pipes.contains_key(&t) => self.read_pipe(t, &mut touched),
                    t if self.debug_ports.contains_key(&t) => self.accept_debug(t, &mut touched),
                    t if self.relay_tokens.contains_key(&t) => {
                        let rid = self.relay_tokens[&t];
                        self.pump_relay(rid);
                    }
                    t => {
                        if let Some(c) = self.conns.get_mut(&t) {
                            if ev.is_error() {
                                c.dead = true;
                            }
                            if ev.is_read_closed() && !matches!(c.mode, Mode::Lines | Mode::Upload(_) | Mode::Drain) {
                                // Parked: nothing will be read from it; note the EOF now.
                                c.eof = true;
                            }
                        }
                        touched.push(t);
                    }
                }
            }
            touched.sort_unstable();
            touched.dedup();
            for t in touched {
                self.drive(t);
            }
            // A --stdio daemon serves one client: when it is gone (also as a DEBUG --stdio
            // relay), stop everything.
            let stdio_gone = self.stdio.is_some_and(|t| !self.conns.contains_key(&t))
                && !self.relays.values().any(|r| r.stdio_client);
            if stdio_gone && self.shutdown_deadline.is_none() {
                eprintln!("debuglantern: the --stdio client is gone: stopping every session, then exiting");
                self.begin_shutdown()?;
            }
            let interest =
                if self.tube.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            self.poll.registry().reregister(&mut SourceFd(&self.tube.as_raw_fd()), BROKER, interest)?;
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
        for (_, mut l) in self.listeners.drain() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        // Goodbye packets first: clients stop offering a rig that is going away.
        if let Some(a) = self.advertiser.take() {
            a.stop();
        }
        let grace = self.cfg.stop_grace;
        self.tube.send(0, Request::Shutdown { grace_ms: grace.as_millis() as u64 })?;
        self.shutdown_deadline = Some(Instant::now() + grace + Duration::from_secs(5));
        Ok(())
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn accept(&mut self, lt: Token) -> Result<(), ServeError> {
        loop {
            let Some(listener) = self.listeners.get(&lt) else { return Ok(()) };
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) =>
                {
                    eprintln!("debuglantern: cannot accept: {e}");
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::ConnectionAborted || e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if self.conns.len() >= self.cfg.max_connections {
                let line = format!(
                    "{}\n",
                    err_json(
                        Code::LimitReached,
                        format!("the rig serves at most {} connections; try again later", self.cfg.max_connections)
                    )
                );
                let _ = stream.write(line.as_bytes());
                continue;
            }
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            let t = self.token();
            let mut stream = Stream::Tcp(stream);
            self.poll.registry().register(&mut stream, t, Interest::READABLE | Interest::WRITABLE)?;
            let identity = self.tokens.is_none().then(Identity::anonymous);
            self.conns.insert(t, Conn::new(stream, Some(peer), local, identity));
        }
    }

    // ---- connections -------------------------------------------------------------------

    /// Queues a reply line; a refusal is also audited.
    fn send(&mut self, t: Token, v: &Value) {
        self.write_line(t, v);
        if let Some(c) = self.conns.get_mut(&t) {
            // Every refusal is audited, up to a bound per connection (a client sending
            // garbage must not flood the log).
            if v["ok"] == false && c.refusals <= AUDITED_REFUSALS {
                c.refusals += 1;
                let who = c.identity.as_ref().map(|i| Value::from(&*i.name)).unwrap_or(Value::Null);
                let mut f = json!({"peer": c.peer_str(), "identity": who, "command": c.verb, "error": v["error"], "message": v["message"]});
                if c.refusals > AUDITED_REFUSALS {
                    f["note"] = json!("further refusals of this connection are not logged");
                }
                self.audit.log_noise("refused", f);
            }
        }
    }

    fn write_line(&mut self, t: Token, v: &Value) {
        if let Some(c) = self.conns.get_mut(&t) {
            let mut line = serde_json::to_vec(v).unwrap_or_else(|_| br#"{"ok":false,"error":"internal"}"#.to_vec());
            line.push(b'\n');
            c.out.extend_from_slice(&line);
        }
    }

    /// Audits an action on a session: who, from where, on whose session.
    fn audit_session(&mut self, t: Token, event: &str, id: Uuid) {
        let owner = self.sessions.get(&id).map(|s| s.owner.clone());
        self.audit_action(t, event, json!({"id": id.to_string(), "owner": owner.as_deref()}));
    }

    /// Records an action in the audit log, with who asked and from where.
    fn audit_action(&mut self, t: Token, event: &str, mut fields: Value) {
        let Some(c) = self.conns.get(&t) else { return };
        fields["peer"] = json!(c.peer_str());
        fields["identity"] = json!(c.identity.as_ref().map(|i| &*i.name));
        self.audit.log(event, fields);
    }

    /// Replies and returns the connection to reading lines.
    fn finish(&mut self, t: Token, v: &Value) {
        self.send(t, v);
        if let Some(c) = self.conns.get_mut(&t) {
            c.mode = Mode::Lines;
        }
    }

    /// Replies with an error and closes the connection: framing is lost.
    fn fatal(&mut self, t: Token, v: &Value) {
        self.send(t, v);
        if let Some(c) = self.conns.get_mut(&t) {
            c.closing = true;
            c.mode = Mode::Lines;
        }
    }

    /// Does everything a connection can do now: read, run commands, write.
    fn drive(&mut self, t: Token) {
        loop {
            let Some(c) = self.conns.get_mut(&t) else { return };
            if c.dead || c.closing {
                break;
            }
            let progressed = match c.mode {
                Mode::Lines => self.step_lines(t),
                Mode::Upload(_) | Mode::Drain => self.step_upload(t),
                Mode::Waiting(_) => false,
                Mode::Follow { .. } => self.pump_follow(t),
                Mode::Events { .. } => self.pump_events(t),
            };
            if !progressed {
                break;
            }
        }
        self.flush_conn(t);
    }

    /// Reads into the input buffer until it would block. Returns false at EOF or error.
    fn fill(&mut self, t: Token) -> bool {
        let Some(c) = self.conns.get_mut(&t) else { return false };
        let mut got_any = false;
        while c.inbuf.len() < IN_CAP {
            match c.stream.read(&mut self.scratch[..IN_CAP]) {
                Ok(0) => {
                    c.eof = true;
                    return got_any;
                }
                Ok(n) => {
                    c.inbuf.extend_from_slice(&self.scratch[..n]);
                    got_any = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return got_any,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    return false;
                }
            }
        }
        got_any
    }

    fn step_lines(&mut self, t: Token) -> bool {
        let Some(c) = self.conns.get_mut(&t) else { return false };
        match c.framer.next(&mut c.inbuf, c.eof) {
            Frame::Line(line) => {
                self.command(t, &line);
                true
            }
            Frame::TooLong => {
                self.fatal(
                    t,
                    &err_json(
                        Code::BadRequest,
                        format!("line longer than {} bytes; closing the connection", protocol::MAX_LINE),
                    ),
                );
                false
            }
            // Only in payload mode, which step_upload serves.
            Frame::Payload(_) | Frame::PayloadEnd => false,
            Frame::NeedMore if c.eof => {
                c.closing = true;
                false
            }
            Frame::NeedMore => self.fill(t) || self.conns.get(&t).is_some_and(|c| c.eof),
        }
    }

    /// Puts a connection into an upload's payload: `Mode::Upload` stores it,
    /// `Mode::Drain` skips it; the framer counts it either way.
    fn payload_mode(&mut self, t: Token, mode: Mode, size: u64) {
        if let Some(c) = self.conns.get_mut(&t) {
            c.mode = mode;
            c.framer.expect_payload(size);
        }
    }

    fn step_upload(&mut self, t: Token) -> bool {
        let Some(c) = self.conns.get_mut(&t) else { return false };
        let want = c.framer.payload_left().unwrap_or(0);
        if want == 0 || !c.inbuf.is_empty() {
            // The payload's end, or bytes already buffered after the command line.
            return match c.framer.next(&mut c.inbuf, c.eof) {
                Frame::Payload(bytes) => {
                    self.consume_upload(t, bytes);
                    true
                }
                _ => {
                    self.complete_upload(t);
                    true
                }
            };
        }
        // The fast path: straight from the socket into a buffer of the hashing thread (an
        // upload), or into the scratch buffer (a drain).
        let storing = matches!(c.mode, Mode::Upload(_));
        let mut buf = if storing {
            match self.hasher.as_mut().and_then(|h| h.buffer()) {
                Some(b) => b,
                None => {
                    // Every buffer is in flight: go on when one comes back.
                    self.starved.push(t);
                    return false;
                }
            }
        } else {
            std::mem::take(&mut self.scratch)
        };
        let Some(c) = self.conns.get_mut(&t) else { return false };
        let cap = want.min(buf.len() as u64) as usize;
        let got = match c.stream.read(&mut buf[..cap]) {
            Ok(0) => {
                c.eof = true;
                Err(true)
            }
            Ok(n) => {
                c.framer.payload_read(n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
            Err(_) => {
                c.dead = true;
                Err(true)
            }
        };
        let (progressed, n) = match got {
            Ok(n) => (true, n),
            Err(gone) => {
                if gone {
                    self.abort_upload(t);
                }
                (false, 0)
            }
        };
        if storing {
            buf.truncate(n);
            match self.hasher.as_mut() {
                Some(h) if n == 0 => h.give_back(buf),
                _ => self.consume_upload(t, buf),
            }
        } else {
            self.scratch = buf;
        }
        progressed
    }

    /// Passes payload bytes on: to the hashing thread for an upload; nowhere for a drain.
    fn consume_upload(&mut self, t: Token, data: Vec<u8>) {
        let Some(c) = self.conns.get(&t) else { return };
        match (&c.mode, self.hasher.as_mut()) {
            (Mode::Upload(u), Some(h)) => h.chunk(u.job, data),
            (_, Some(h)) => h.give_back_if_pooled(data),
            _ => {}
        }
    }

    /// Gives back what [`Server::reserve`] promised.
    fn release(&mut self, owner: &Arc<str>, size: u64) {
        self.reserved_sessions -= 1;
        self.reserved_bytes -= size;
        if let Some(r) = self.reserved_by.get_mut(owner) {
            r.sessions -= 1;
            r.bytes -= size;
            if r.sessions == 0 {
                self.reserved_by.remove(owner);
            }
        }
    }

    /// A client went away mid-upload: nothing of it stays.
    fn abort_upload(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        if let Mode::Upload(u) = std::mem::replace(&mut c.mode, Mode::Lines) {
            if let Some(h) = &self.hasher {
                h.abort(u.job);
            }
            self.release(&u.owner, u.size);
        }
        if let Some(c) = self.conns.get_mut(&t) {
            c.closing = true;
        }
    }

    /// The last byte arrived: wait for the hashing thread to have stored and hashed them all.
    fn complete_upload(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        let Mode::Upload(u) = std::mem::replace(&mut c.mode, Mode::Lines) else {
            // A drain finished: its error was sent when the upload was refused.
            return;
        };
        let wait = self.next_wait;
        self.next_wait += 1;
        c.mode = Mode::Waiting(wait);
        if let Some(h) = &self.hasher {
            h.end(u.job);
        }
        self.hashing.insert(u.job, (t, wait, u));
    }

    /// The hashing thread finished uploads (and gave buffers back): go on with them, and
    /// with the connections that waited for a buffer.
    fn on_hasher(&mut self, touched: &mut Vec<Token>) {
        let done = match self.hasher.as_mut() {
            Some(h) => h.results(),
            None => return,
        };
        for (job, result) in done {
            let Some((t, wait, u)) = self.hashing.remove(&job) else { continue };
            let ours = self.conns.get(&t).is_some_and(|c| matches!(c.mode, Mode::Waiting(w) if w == wait));
            // A client that left after its last byte still gets its session (as before the
            // thread existed); its answer is dropped.
            let t = if ours { t } else { Token(usize::MAX) };
            match result {
                Ok(sha256) => self.stored_upload(t, *u, sha256),
                Err(e) => {
                    self.release(&u.owner, u.size);
                    eprintln!("debuglantern: {e}");
                    self.finish(t, &err_json(Code::Internal, e));
                }
            }
            touched.push(t);
        }
        touched.append(&mut self.starved);
    }

    /// An upload whose bytes are all stored and hashed: a bundle goes to the worker, a
    /// binary is sealed, validated and handed to the broker.
    fn stored_upload(&mut self, t: Token, u: Upload, sha256: String) {
        let Upload { owner, memfd, size, exec_path, .. } = u;
        if let Some(exec_path) = exec_path {
            return self.extract_bundle(t, owner, memfd, size, sha256, exec_path);
        }
        if let Err(e) = crate::sys::seal(&memfd) {
            self.release(&owner, size);
            return self.finish(t, &err_json(Code::Internal, format!("cannot seal the upload: {e}")));
        }
        let info = match elf::validate(&memfd) {
            Ok(i) => i,
            Err(why) => {
                self.release(&owner, size);
                return self.finish(t, &err_json(Code::InvalidElf, why));
            }
        };
        let id = Uuid::new_v4();
        let tag = self.next_tag();
        if let Err(e) = self.tube.send(tag, Request::Load { id: id_of(&id), memfd: memfd.into() }) {
            eprintln!("debuglantern: broker link: {e}");
            self.release(&owner, size);
            return self.finish(t, &err_json(Code::Internal, "the broker is unavailable"));
        }
        let peer = self.conns.get(&t).map(Conn::peer_str).unwrap_or_default();
        let op = Op::Load { owner, peer, upload_size: size, sha256, elf: info, id, kind: session::Kind::Binary };
        self.park(t, tag, op);
    }

    /// Hands a complete bundle upload to the worker; the connection waits.
    fn extract_bundle(
        &mut self,
        t: Token,
        owner: Arc<str>,
        archive: File,
        size: u64,
        sha256: String,
        exec_path: String,
    ) {
        let Some(worker) = &self.worker else {
            self.release(&owner, size);
            return self.finish(t, &err_json(Code::Internal, "the bundle worker is not running"));
        };
        // Everything the budget has left, counting this upload's own reservation.
        let free = self.cfg.max_total_size.saturating_sub(self.loaded_bytes + self.reserved_bytes - size);
        let limits = crate::bundle::Limits {
            max_entries: self.cfg.max_bundle_entries,
            max_bytes: free,
            max_depth: self.cfg.max_bundle_depth,
        };
        let id = Uuid::new_v4();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        worker.submit(crate::worker::Job::Extract {
            ticket,
            archive,
            dir: id_of(&id).dir_name(),
            exec_path: exec_path.clone(),
            limits,
        });
        let wait = self.next_wait;
        self.next_wait += 1;
        if let Some(c) = self.conns.get_mut(&t) {
            c.mode = Mode::Waiting(wait);
        }
        let peer = self.conns.get(&t).map(Conn::peer_str).unwrap_or_default();
        self.extracting.insert(ticket, Extracting { owner, peer, conn: t, wait, size, sha256, exec_path, id });
    }

    fn on_worker(&mut self, touched: &mut Vec<Token>) {
        let done: Vec<crate::worker::Done> = match &self.worker {
            Some(w) => w.results().collect(),
            None => return,
        };
        for crate::worker::Done::Extracted { ticket, result } in done {
            let Some(x) = self.extracting.remove(&ticket) else { continue };
            match result {
                Err(why) => {
                    self.release(&x.owner, x.size);
                    self.answer(x.conn, x.wait, &err_json(Code::InvalidBundle, why), touched);
                }
                Ok(b) => {
                    // The reservation now holds the extracted bytes instead of the archive.
                    self.reserved_bytes = self.reserved_bytes - x.size + b.bytes;
                    if let Some(r) = self.reserved_by.get_mut(&x.owner) {
                        r.bytes = r.bytes - x.size + b.bytes;
                    }
                    let tag = self.next_tag();
                    let req = Request::LoadBundle { id: id_of(&x.id), exec_path: x.exec_path.clone().into_bytes() };
                    if self.tube.send(tag, req).is_err() {
                        self.release(&x.owner, b.bytes);
                        self.remove_bundle(x.id);
                        self.answer(x.conn, x.wait, &err_json(Code::Internal, "the broker is unavailable"), touched);
                        continue;
                    }
                    let kind = session::Kind::Bundle { exec_path: x.exec_path };
                    let op = Op::Load {
                        owner: x.owner,
                        peer: x.peer,
                        upload_size: b.bytes,
                        sha256: x.sha256,
                        elf: b.elf,
                        id: x.id,
                        kind,
                    };
                    self.pending.insert(tag, Pending { conn: x.conn, wait: x.wait, op });
                }
            }
        }
    }

    /// Removes a bundle's files from the store (on the worker).
    fn remove_bundle(&self, id: Uuid) {
        if let Some(w) = &self.worker {
            w.submit(crate::worker::Job::Remove { dir: id_of(&id).dir_name() });
        }
    }

    fn next_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn park(&mut self, t: Token, tag: u64, op: Op) {
        let wait = self.next_wait;
        self.next_wait += 1;
        if let Some(c) = self.conns.get_mut(&t) {
            c.mode = Mode::Waiting(wait);
        }
        self.pending.insert(tag, Pending { conn: t, wait, op });
    }

    fn flush_conn(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        while c.out_pos < c.out.len() && !c.dead {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => c.dead = true,
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => c.dead = true,
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        } else if c.out_pos > (1 << 16) {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        let parked = matches!(c.mode, Mode::Waiting(_) | Mode::Follow { .. });
        let finished = c.closing && c.out.is_empty();
        // A parked connection whose peer is gone is dropped when its answer comes.
        if c.dead || finished || (c.eof && !parked && c.out.is_empty() && c.inbuf.is_empty()) {
            self.close(t);
        }
    }

    fn close(&mut self, t: Token) {
        if let Some(mut c) = self.conns.remove(&t) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if let Mode::Upload(u) = c.mode {
                if let Some(h) = &self.hasher {
                    h.abort(u.job);
                }
                self.release(&u.owner, u.size);
            }
        }
    }

    // ---- commands ----------------------------------------------------------------------

    fn command(&mut self, t: Token, line: &[u8]) {
        let parsed = protocol::parse_line(line);
        let Some(c) = self.conns.get_mut(&t) else { return };
        c.verb = match &parsed {
            Ok(Some(cmd)) => cmd.verb(),
            _ => "",
        };
        let cmd = match parsed {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return,
            Err(e) => return self.send(t, &proto_json(e)),
        };
        // On a rig with tokens, only HELLO and AUTH are open to a connection that has not
        // authenticated.
        if c.identity.is_none() && !matches!(cmd, Command::Hello | Command::Auth(_)) {
            let v = err_json(Code::Unauthorized, "authenticate first: AUTH <token> (lantern --token-file FILE)");
            self.send(t, &v);
            if let Command::Upload { size, .. } = cmd {
                // Its bytes follow: skip them like any refused upload's, or close.
                match size {
                    UploadSize::Bytes(n) if n <= self.cfg.drain_limit => self.payload_mode(t, Mode::Drain, n),
                    _ => self.fatal(
                        t,
                        &err_json(Code::TooLarge, "closing the connection: the upload's bytes cannot be skipped"),
                    ),
                }
            }
            return;
        }
        match cmd {
            Command::Hello => {
                let v = self.hello(t);
                self.send(t, &v)
            }
            Command::Auth(token) => self.auth(t, token),
            Command::Upload { size, exec_path } => self.upload(t, size, exec_path),
            Command::Start { id, debug, opts } => self.start(t, id, debug, opts),
            Command::Stop(id) => self.stop(t, id, false),
            Command::Kill(id) => self.stop(t, id, true),
            Command::Delete(id) => self.delete(t, id),
            Command::List => {
                let Some(viewer) = self.viewer(t) else { return };
                let list: Vec<Value> = self
                    .sessions
                    .values()
                    .filter(|s| !s.deleting && viewer.may_see(&s.owner))
                    .map(Session::summary)
                    .collect();
                self.send(t, &json!({"ok": true, "sessions": list}))
            }
            Command::Status(id) => match self.session(t, id) {
                Ok(s) => {
                    let mut v = json!({"ok": true});
                    if let (Some(m), Value::Object(status)) = (v.as_object_mut(), s.status()) {
                        m.extend(status);
                    }
                    self.send(t, &v)
                }
                Err(e) => self.send(t, &e),
            },
            Command::Logs { id, follow } => self.logs(t, id, follow),
            Command::Debug { id, stdio } => self.debug(t, id, stdio),
            Command::Receipt { id, run } => {
                let v = match self.session(t, id) {
                    Err(e) => e,
                    Ok(s) => {
                        let found = match run {
                            None => s.receipts.back(),
                            Some(n) => s.receipts.iter().find(|r| r["run"] == n),
                        };
                        match (found, run) {
                            (Some(r), _) => json!({"ok": true, "receipt": r}),
                            (None, None) => err_json(
                                Code::InvalidState,
                                format!("session is {} and has no finished run yet", s.state.as_str()),
                            ),
                            (None, Some(n)) => err_json(
                                Code::NotFound,
                                format!(
                                    "no receipt for run {n}: the session has finished {} runs and keeps the last {}",
                                    s.receipts.len(),
                                    session::RECEIPTS_KEPT
                                ),
                            ),
                        }
                    }
                };
                self.send(t, &v)
            }
            Command::Events { id: filter, since } => {
                if let Some(id) = filter {
                    if let Err(e) = self.session(t, id) {
                        return self.send(t, &e);
                    }
                }
                let Some(viewer) = self.viewer(t) else { return };
                // From now on, or replaying what the log still holds from `since`.
                let next = since.unwrap_or(self.events.next_seq).min(self.events.next_seq);
                if let Some(c) = self.conns.get_mut(&t) {
                    c.mode = Mode::Events { filter, next, viewer };
                }
                let head = self.events.next_seq;
                self.send(t, &json!({"ok": true, "subscribed": true, "next_seq": next, "head_seq": head}))
            }
        }
    }

    fn hello(&self, t: Token) -> Value {
        let c = &self.cfg;
        let identity = self.conns.get(&t).and_then(|c| c.identity.as_ref());
        json!({
            "ok": true,
            "server": "debuglantern",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "auth_required": self.tokens.is_some(),
            "identity": identity.map(|i| json!({"name": &*i.name, "admin": i.admin})),
            "limits": {
                "max_sessions": c.max_sessions,
                "max_total_size": c.max_total_size,
                "max_upload": c.max_upload,
                "max_line": protocol::MAX_LINE,
                "log_buffer": c.log_buffer,
                "stop_grace_ms": c.stop_grace.as_millis() as u64,
                "run": session::limits_json(&c.limits),
            },
            "warnings": self.warnings,
            "mdns": self.advertiser.as_ref().map(|a| json!({"instance": a.name, "service": crate::discovery::SERVICE})),
            "jail": self.jail,
        })
    }

    /// Who a connection is (every connection past the gate in `command` has an identity).
    fn viewer(&self, t: Token) -> Option<Identity> {
        self.conns.get(&t).and_then(|c| c.identity.clone())
    }

    /// A session the connection's identity may see: others' sessions do not exist for it.
    fn session(&self, t: Token, id: Uuid) -> Result<&Session, Value> {
        let viewer = self.conns.get(&t).and_then(|c| c.identity.as_ref());
        match self.sessions.get(&id) {
            Some(s) if !s.deleting && viewer.is_some_and(|v| v.may_see(&s.owner)) => Ok(s),
            _ => Err(err_json(Code::NotFound, format!("no session {id}"))),
        }
    }

    /// AUTH: the token is checked at once, in constant time; the answer goes out when the
    /// address's failures allow (`Throttle`). A failure leaves the connection
    /// unauthenticated, whatever it was before.
    fn auth(&mut self, t: Token, token: String) {
        let Some(tokens) = &self.tokens else {
            return self.send(
                t,
                &err_json(
                    Code::Unsupported,
                    "authentication is not configured on this rig: every client on it is anonymous",
                ),
            );
        };
        let Some(c) = self.conns.get_mut(&t) else { return };
        c.identity = None;
        let now = Instant::now();
        let ip = c.peer.map_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), |p| p.ip());
        if let Some(wait) = self.throttle.locked(ip, now) {
            // Too many failures queued for this address: no answer slot, no token check.
            self.audit.log_noise("auth_locked", json!({"peer": c.peer_str(), "retry_after_s": wait.as_secs() + 1}));
            let v = err_json(
                Code::Unauthorized,
                format!("too many failed AUTH attempts from your address: try again in {} s", wait.as_secs() + 1),
            );
            return self.write_line(t, &v);
        }
        let found = tokens.check(token.as_bytes());
        drop(token);
        let at = self.throttle.attempt(ip, now, found.is_none());
        if at <= now {
            return self.finish_auth(t, found);
        }
        let wait = self.next_wait;
        self.next_wait += 1;
        c.mode = Mode::Waiting(wait);
        self.delayed_auth.push(DelayedAuth { at, conn: t, wait, identity: found });
    }

    fn finish_auth(&mut self, t: Token, found: Option<Identity>) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        let peer = c.peer_str();
        match found {
            Some(id) => {
                let v = json!({"ok": true, "identity": &*id.name, "admin": id.admin});
                self.audit.log("auth_ok", json!({"peer": peer, "identity": &*id.name, "admin": id.admin}));
                c.identity = Some(id);
                self.finish(t, &v);
            }
            None => {
                let failures = c.peer.map_or(0, |p| self.throttle.failures(p.ip()));
                self.audit.log_noise("auth_failed", json!({"peer": peer, "failures": failures}));
                let v = err_json(
                    Code::Unauthorized,
                    "unknown token (repeated failures from your address are answered ever more slowly)",
                );
                // Audited above as auth_failed, not again as a refusal.
                self.write_line(t, &v);
                if let Some(c) = self.conns.get_mut(&t) {
                    c.mode = Mode::Lines;
                }
            }
        }
    }

    /// Answers AUTHs whose delay is over.
    fn answer_delayed_auth(&mut self, touched: &mut Vec<Token>) {
        let now = Instant::now();
        let (due, later): (Vec<DelayedAuth>, Vec<DelayedAuth>) =
            std::mem::take(&mut self.delayed_auth).into_iter().partition(|d| d.at <= now);
        self.delayed_auth = later;
        for d in due {
            if self.conns.get(&d.conn).is_some_and(|c| matches!(c.mode, Mode::Waiting(w) if w == d.wait)) {
                self.finish_auth(d.conn, d.identity);
                touched.push(d.conn);
            }
        }
    }

    fn upload(&mut self, t: Token, size: UploadSize, exec_path: Option<String>) {
        let size = match size {
            UploadSize::Bytes(n) if n <= self.cfg.drain_limit || n <= self.cfg.max_upload => n,
            _ => {
                return self.fatal(
                    t,
                    &err_json(
                        Code::TooLarge,
                        format!(
                            "upload larger than {} bytes; closing the connection as its bytes cannot be skipped",
                            self.cfg.drain_limit.max(self.cfg.max_upload)
                        ),
                    ),
                )
            }
        };
        let bad_exec = exec_path.as_deref().and_then(|p| {
            match crate::bundle::clean_path(p.as_bytes(), self.cfg.max_bundle_depth) {
                Err(e) => Some(format!("exec_path: {e}")),
                Ok(parts) if parts.is_empty() => Some("exec_path names the bundle root, not a program".into()),
                Ok(_) => None,
            }
        });
        let refusal = if let Some(why) = bad_exec {
            Some(err_json(Code::InvalidBundle, why))
        } else if size > self.cfg.max_upload {
            Some(err_json(
                Code::TooLarge,
                format!("upload of {size} bytes exceeds the limit of {} bytes", self.cfg.max_upload),
            ))
        } else if let Some(why) = self.over_quota(t, size) {
            Some(err_json(Code::LimitReached, why))
        } else if self.sessions.len() + self.reserved_sessions >= self.cfg.max_sessions {
            Some(err_json(
                Code::LimitReached,
                format!("the rig holds its maximum of {} sessions; DELETE one first", self.cfg.max_sessions),
            ))
        } else if self.loaded_bytes + self.reserved_bytes + size > self.cfg.max_total_size {
            Some(err_json(
                Code::LimitReached,
                format!(
                    "storing {size} more bytes would exceed the rig's total of {} bytes ({} in use); DELETE sessions first",
                    self.cfg.max_total_size,
                    self.loaded_bytes + self.reserved_bytes
                ),
            ))
        } else {
            None
        };
        if let Some(err) = refusal {
            // Refused before storing a byte; the bytes are read and dropped.
            self.send(t, &err);
            return self.payload_mode(t, Mode::Drain, size);
        }
        let memfd = match crate::sys::memfd_for_upload(size) {
            Ok(f) => f,
            Err(e) => {
                // Out of memory for it: refuse before storing a byte, skip the bytes.
                self.send(t, &err_json(Code::LimitReached, format!("the rig cannot hold {size} more bytes now: {e}")));
                return self.payload_mode(t, Mode::Drain, size);
            }
        };
        let Some(owner) = self.viewer(t).map(|i| i.name) else { return };
        self.reserve(&owner, size);
        let job = self.next_job;
        self.next_job += 1;
        let thread_copy = match (memfd.try_clone(), &self.hasher) {
            (Ok(f), Some(_)) => f,
            (Err(e), _) => {
                self.release(&owner, size);
                self.send(t, &err_json(Code::Internal, format!("cannot store the upload: {e}")));
                return self.payload_mode(t, Mode::Drain, size);
            }
            (_, None) => {
                self.release(&owner, size);
                self.send(t, &err_json(Code::Internal, "the upload thread is not running"));
                return self.payload_mode(t, Mode::Drain, size);
            }
        };
        if let Some(h) = &self.hasher {
            h.begin(job, thread_copy);
        }
        let upload = Upload { owner, memfd, size, job, exec_path };
        self.payload_mode(t, Mode::Upload(Box::new(upload)), size);
    }

    /// Why an upload of `size` more bytes would take the connection's identity over its
    /// quota, if it would.
    fn over_quota(&self, t: Token, size: u64) -> Option<String> {
        let who = self.viewer(t)?;
        let (max_sessions, max_bytes) = self.cfg.quota(&who.name);
        let r = self.reserved_by.get(&who.name).copied().unwrap_or_default();
        let (mut sessions, mut bytes) = (r.sessions, r.bytes);
        for s in self.sessions.values().filter(|s| s.owner == who.name) {
            sessions += 1;
            bytes += s.size;
        }
        if sessions >= max_sessions {
            return Some(format!(
                "{} holds {sessions} sessions, its quota on this rig is {max_sessions}; DELETE one first",
                who.name
            ));
        }
        if bytes + size > max_bytes {
            return Some(format!(
                "{} holds {bytes} bytes; {size} more would exceed its quota of {max_bytes} bytes; DELETE sessions first",
                who.name
            ));
        }
        None
    }

    /// Promises a session and `size` bytes to an upload in progress.
    fn reserve(&mut self, owner: &Arc<str>, size: u64) {
        self.reserved_sessions += 1;
        self.reserved_bytes += size;
        let r = self.reserved_by.entry(owner.clone()).or_default();
        r.sessions += 1;
        r.bytes += size;
    }

    fn start(&mut self, t: Token, id: Uuid, debug: bool, opts: StartOpts) {
        // START --debug attaches a debugger for the client that asked: note its addresses.
        let debug = match (debug, self.conns.get(&t)) {
            (false, _) => None,
            (true, Some(c)) => match (c.local, c.peer) {
                (Some(l), Some(p)) => Some((l.ip(), p.ip())),
                _ => return self.send(t, &err_json(Code::Unsupported, "this connection has no network address to open a debug port on: use DEBUG <id> --stdio (lantern gdb-pipe)")),
            },
            (true, None) => return,
        };
        let s = match self.session(t, id) {
            Ok(s) => s,
            Err(e) => return self.send(t, &e),
        };
        if s.busy || s.state.alive() {
            return self
                .send(t, &err_json(Code::InvalidState, format!("session is {}; STOP it first", s.state.as_str())));
        }
        let mut argv = vec![b"program".to_vec()];
        argv.extend(opts.args.iter().map(|a| a.as_bytes().to_vec()));
        let env: Vec<(String, String)> = match opts.env {
            Some(env) => env.into_iter().collect(),
            None => [("PATH", "/usr/local/bin:/usr/bin:/bin"), ("HOME", "/tmp"), ("TERM", "dumb")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let env_keys: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
        let env: Vec<Vec<u8>> = env.into_iter().map(|(k, v)| format!("{k}={v}").into_bytes()).collect();
        let args = opts.args;
        let list_processes = opts.list_processes.unwrap_or(true);
        let req = opts.limits.unwrap_or_default();
        let limits = policy::rlimits::tighten(
            self.cfg.limits,
            shared::RunLimits {
                cpu_seconds: req.cpu_seconds.unwrap_or(0),
                address_space: req.address_space.unwrap_or(0),
                open_files: req.open_files.unwrap_or(0),
                processes: req.processes.unwrap_or(0),
                tmp_bytes: req.tmp_bytes.unwrap_or(0),
                memory_bytes: req.memory_bytes.unwrap_or(0),
            },
        );
        let tag = self.next_tag();
        let spec = StartSpec { argv, env, limits, debug: debug.is_some(), list_processes };
        if let Err(e) = self.tube.send(tag, Request::Start { id: id_of(&id), spec }) {
            eprintln!("debuglantern: broker link: {e}");
            return self.send(t, &err_json(Code::Internal, "the broker is unavailable"));
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.busy = true;
        }
        let actor = self.viewer(t).map(|i| i.name).unwrap_or_else(|| Arc::from(""));
        self.audit_session(t, "start", id);
        self.park(t, tag, Op::Start { id, limits, args, env_keys, debug, actor });
    }

    fn stop(&mut self, t: Token, id: Uuid, kill: bool) {
        let s = match self.session(t, id) {
            Ok(s) => s,
            Err(e) => return self.send(t, &e),
        };
        if !s.state.alive() {
            return self
                .send(t, &err_json(Code::InvalidState, format!("session is {}, not RUNNING", s.state.as_str())));
        }
        let tag = self.next_tag();
        let req = if kill {
            Request::Kill { id: id_of(&id) }
        } else {
            Request::Stop { id: id_of(&id), grace_ms: self.cfg.stop_grace.as_millis() as u64 }
        };
        if self.tube.send(tag, req).is_err() {
            return self.send(t, &err_json(Code::Internal, "the broker is unavailable"));
        }
        self.audit_session(t, if kill { "kill" } else { "stop" }, id);
        self.park(t, tag, Op::Stop { id });
        let wait = self.pending[&tag].wait;
        if let Some(s) = self.sessions.get_mut(&id) {
            s.exit_waiters.push(Waiter { conn: t, wait });
        }
    }

    fn delete(&mut self, t: Token, id: Uuid) {
        let s = match self.session(t, id) {
            Ok(s) => s,
            Err(e) => return self.send(t, &e),
        };
        if s.busy && !s.state.alive() {
            return self.send(t, &err_json(Code::InvalidState, "session is starting; try again"));
        }
        let tag = self.next_tag();
        if self.tube.send(tag, Request::Delete { id: id_of(&id) }).is_err() {
            return self.send(t, &err_json(Code::Internal, "the broker is unavailable"));
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.deleting = true;
        }
        self.audit_session(t, "delete", id);
        self.park(t, tag, Op::Delete { id });
    }

    fn logs(&mut self, t: Token, id: Uuid, follow: bool) {
        let s = match self.session(t, id) {
            Ok(s) => s,
            Err(e) => return self.send(t, &e),
        };
        if !follow {
            let (bytes, dropped) = s.logs.read_from(0, usize::MAX);
            let (data, b64) = session::output_json(&bytes);
            let mut v = json!({"ok": true, "id": id.to_string(), "state": s.state.as_str(), "data": data, "dropped": dropped, "truncated": dropped > 0});
            if let Some(b) = b64 {
                v["data_base64"] = b;
            }
            return self.send(t, &v);
        }
        let offset = 0;
        if let Some(c) = self.conns.get_mut(&t) {
            c.mode = Mode::Follow { id, offset };
        }
    }

    /// Sends what a follower has not seen; ends the stream when the run is over and its
    /// output is drained. Returns whether the connection went back to reading commands.
    fn pump_follow(&mut self, t: Token) -> bool {
        let Some(c) = self.conns.get(&t) else { return false };
        let Mode::Follow { id, offset } = c.mode else { return false };
        if c.out.len() - c.out_pos > OUT_HIGH_WATER {
            return false;
        }
        let Some(s) = self.sessions.get(&id).filter(|s| !s.deleting) else {
            self.finish(t, &json!({"ok": true, "id": id.to_string(), "end": true, "deleted": true}));
            return true;
        };
        let mut lines = Vec::new();
        let mut off = offset;
        while off < s.logs.end() {
            let (bytes, dropped) = s.logs.read_from(off, FOLLOW_CHUNK);
            off += dropped + bytes.len() as u64;
            let (data, b64) = session::output_json(&bytes);
            let mut v = json!({"ok": true, "id": id.to_string(), "data": data, "dropped": dropped});
            if let Some(b) = b64 {
                v["data_base64"] = b;
            }
            lines.push(v);
        }
        let over = !s.state.alive() && s.pipes_open == 0 && !s.busy;
        let end = over.then(|| json!({"ok": true, "id": id.to_string(), "end": true, "state": s.state.as_str(), "exit": s.exit.map(session::exit_json)}));
        for v in &lines {
            self.send(t, v);
        }
        if let Some(c) = self.conns.get_mut(&t) {
            c.mode = Mode::Follow { id, offset: off };
        }
        match end {
            Some(v) => {
                self.finish(t, &v);
                true
            }
            None => false,
        }
    }

    // ---- debugging -------------------------------------------------------------------------

    fn debug(&mut self, t: Token, id: Uuid, stdio: bool) {
        let s = match self.session(t, id) {
            Ok(s) => s,
            Err(e) => return self.send(t, &e),
        };
        if s.busy || s.state != State::Running {
            return self
                .send(t, &err_json(Code::InvalidState, format!("session is {}, not RUNNING", s.state.as_str())));
        }
        let Some(c) = self.conns.get(&t) else { return };
        let unspecified = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        let (local, peer) = match (c.local, c.peer) {
            (Some(l), Some(p)) => (l.ip(), p.ip()),
            // The gdb protocol comes over this very connection: no port is opened.
            _ if stdio => (unspecified, unspecified),
            _ => return self.send(t, &err_json(Code::Unsupported, "this connection has no network address to open a debug port on: use DEBUG <id> --stdio (lantern gdb-pipe)")),
        };
        let identity = c.identity.as_ref().map(|i| i.name.clone()).unwrap_or_else(|| Arc::from(""));
        let tag = self.next_tag();
        if self.tube.send(tag, Request::Debug { id: id_of(&id) }).is_err() {
            return self.send(t, &err_json(Code::Internal, "the broker is unavailable"));
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.busy = true;
        }
        self.audit_session(t, "debug", id);
        self.park(t, tag, Op::Debug { id, local, peer, started: false, stdio, identity });
    }

    /// A TCP listener on the address the client reached us on, on the first free port of
    /// the configured range.
    fn debug_listener(&self, ip: std::net::IpAddr) -> Result<TcpListener, String> {
        let (lo, hi) = self.cfg.debug_ports;
        for port in lo..=hi {
            match std::net::TcpListener::bind((ip, port)) {
                Ok(l) => {
                    l.set_nonblocking(true).map_err(|e| e.to_string())?;
                    return Ok(TcpListener::from_std(l));
                }
                Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
                Err(e) => return Err(format!("cannot listen on {ip}:{port}: {e}")),
            }
        }
        Err(format!("every debug port {lo}-{hi} is in use"))
    }

    fn on_debugging(
        &mut self,
        id: Uuid,
        local: std::net::IpAddr,
        peer: std::net::IpAddr,
        identity: Arc<str>,
        sock: OwnedFd,
        held: bool,
    ) -> Value {
        let sock = std::os::unix::net::UnixStream::from(sock);
        let mut listener = match self.debug_listener(local) {
            Ok(l) => l,
            // Dropping the socket makes gdbserver exit: the session goes back to RUNNING.
            Err(e) => return err_json(Code::LimitReached, e),
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let t = self.token();
        if let Err(e) = self.poll.registry().register(&mut listener, t, Interest::READABLE) {
            return err_json(Code::Internal, format!("debug listener: {e}"));
        }
        let deadline = Instant::now() + self.cfg.debug_deadline;
        self.debug_ports.insert(t, DebugPort { id, listener, allowed: peer, identity, deadline, sock });
        let Some(s) = self.sessions.get_mut(&id) else { return err_json(Code::NotFound, "the session is gone") };
        s.state = State::Debugging;
        let host = match local {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let ns_pid = s.ns_pid.unwrap_or(2);
        // A program held at its entry (START --debug) was stopped with SIGSTOP; gdb sees
        // that stop once more when it resumes: tell it to swallow it.
        let held = if held { " -ex 'handle SIGSTOP nostop noprint nopass'" } else { "" };
        let gdb = format!(
            "gdb -q -ex 'set confirm off'{held} -ex 'target remote {host}:{port}' -ex 'file target:/proc/{ns_pid}/exe'"
        );
        json!({"ok": true, "id": id.to_string(), "state": "DEBUGGING", "debug": {
            "port": port, "host": local.to_string(), "pid": s.pid, "ns_pid": ns_pid, "gdb": gdb,
            "deadline_ms": self.cfg.debug_deadline.as_millis() as u64,
        }})
    }

    fn accept_debug(&mut self, t: Token, touched: &mut Vec<Token>) {
        loop {
            let Some(p) = self.debug_ports.get(&t) else { return };
            let (stream, from) = match p.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            if from.ip() != p.allowed {
                eprintln!("debuglantern: refused a debug connection from {from} (only {} may connect)", p.allowed);
                self.audit.log_noise(
                    "debug_refused",
                    json!({"peer": from.to_string(), "id": p.id.to_string(), "allowed": p.allowed.to_string(), "identity": &*p.identity}),
                );
                drop(stream);
                continue;
            }
            let Some(mut p) = self.debug_ports.remove(&t) else { return };
            let _ = self.poll.registry().deregister(&mut p.listener);
            drop(p.listener);
            let _ = p.sock.set_nonblocking(true);
            let rid = self.next_relay;
            self.next_relay += 1;
            let (tt, tu) = (self.token(), self.token());
            let mut relay = Relay {
                id: p.id,
                peer: from.to_string(),
                stdio_client: false,
                identity: p.identity.clone(),
                tcp: Stream::Tcp({
                    // gdb's packets are small and latency-bound: no Nagle.
                    let _ = stream.set_nodelay(true);
                    stream
                }),
                unix: mio::net::UnixStream::from_std(p.sock),
                to_unix: Vec::new(),
                to_tcp: Vec::new(),
                tokens: [tt, tu],
            };
            let both = Interest::READABLE | Interest::WRITABLE;
            if self.poll.registry().register(&mut relay.tcp, tt, both).is_err()
                || self.poll.registry().register(&mut relay.unix, tu, both).is_err()
            {
                return;
            }
            self.relay_tokens.insert(tt, rid);
            self.relay_tokens.insert(tu, rid);
            self.relays.insert(rid, relay);
            self.audit.log(
                "debug_attach",
                json!({"peer": from.to_string(), "id": p.id.to_string(), "identity": &*p.identity}),
            );
            self.emit(p.id, "debug_attached", json!({"peer": from.to_string()}), touched);
            self.pump_relay(rid);
            return;
        }
    }

    /// DEBUG --stdio: after its reply line, the control connection itself carries the gdb
    /// remote protocol (no port is opened). The connection leaves the command loop for good.
    fn relay_connection(
        &mut self,
        conn: Token,
        wait: u64,
        id: Uuid,
        identity: Arc<str>,
        sock: OwnedFd,
        touched: &mut Vec<Token>,
    ) {
        let waiting = self.conns.get(&conn).is_some_and(|c| matches!(c.mode, Mode::Waiting(w) if w == wait));
        let Some(mut c) = self.conns.remove(&conn).filter(|_| waiting) else { return };
        let _ = self.poll.registry().deregister(&mut c.stream);
        let unix = std::os::unix::net::UnixStream::from(sock);
        let _ = unix.set_nonblocking(true);
        let mut reply =
            serde_json::to_vec(&json!({"ok": true, "id": id.to_string(), "state": "DEBUGGING", "stdio": true}))
                .unwrap_or_default();
        reply.push(b'\n');
        let mut to_tcp = c.out.split_off(c.out_pos);
        to_tcp.extend_from_slice(&reply);
        let rid = self.next_relay;
        self.next_relay += 1;
        let (tt, tu) = (self.token(), self.token());
        let peer = format!("{} (control connection, --stdio)", c.peer_str());
        self.audit.log("debug_attach", json!({"peer": peer, "id": id.to_string(), "identity": &*identity}));
        let mut relay = Relay {
            id,
            peer,
            stdio_client: self.stdio == Some(conn),
            identity,
            tcp: c.stream,
            unix: mio::net::UnixStream::from_std(unix),
            // Whatever the client already sent after the command line is gdb's.
            to_unix: std::mem::take(&mut c.inbuf),
            to_tcp,
            tokens: [tt, tu],
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        if self.poll.registry().register(&mut relay.tcp, tt, both).is_err()
            || self.poll.registry().register(&mut relay.unix, tu, both).is_err()
        {
            return;
        }
        self.relay_tokens.insert(tt, rid);
        self.relay_tokens.insert(tu, rid);
        self.relays.insert(rid, relay);
        self.emit(id, "debug_attached", json!({"peer": "control connection (--stdio)"}), touched);
        self.pump_relay(rid);
    }

    /// Moves bytes both ways until both sides would block; ends the relay at EOF or error
    /// on either side (gdbserver, seeing its socket close, exits and detaches).
    fn pump_relay(&mut self, rid: u64) {
        let Some(r) = self.relays.get_mut(&rid) else { return };
        let mut buf = [0u8; 64 * 1024];
        let mut closed = false;
        loop {
            let mut progress = false;
            for dir in 0..2 {
                let (src, dst_buf): (&mut dyn Read, &mut Vec<u8>) =
                    if dir == 0 { (&mut r.tcp, &mut r.to_unix) } else { (&mut r.unix, &mut r.to_tcp) };
                if dst_buf.len() < RELAY_BUF {
                    match src.read(&mut buf) {
                        Ok(0) => closed = true,
                        Ok(n) => {
                            dst_buf.extend_from_slice(&buf[..n]);
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
                    if dir == 0 { (&mut r.unix, &mut r.to_unix) } else { (&mut r.tcp, &mut r.to_tcp) };
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
            self.end_relay(rid);
        }
    }

    fn end_relay(&mut self, rid: u64) {
        if let Some(mut r) = self.relays.remove(&rid) {
            self.audit.log("debug_detach", json!({"peer": r.peer, "id": r.id.to_string(), "identity": &*r.identity}));
            let _ = self.poll.registry().deregister(&mut r.tcp);
            let _ = self.poll.registry().deregister(&mut r.unix);
            for t in r.tokens {
                self.relay_tokens.remove(&t);
            }
        }
    }

    /// Closes debug ports whose deadline passed: gdbserver sees its socket close and exits.
    fn expire_debug_ports(&mut self) {
        let now = Instant::now();
        let expired: Vec<Token> = self.debug_ports.iter().filter(|(_, p)| p.deadline <= now).map(|(t, _)| *t).collect();
        for t in expired {
            if let Some(mut p) = self.debug_ports.remove(&t) {
                let _ = self.poll.registry().deregister(&mut p.listener);
                eprintln!("debuglantern: debug port of {} closed: no debugger connected in time", p.id);
                self.audit.log("debug_expired", json!({"id": p.id.to_string(), "identity": &*p.identity}));
            }
        }
    }

    /// Forgets the debug port and relay of a session.
    fn drop_debugging_of(&mut self, id: Uuid) {
        let ports: Vec<Token> = self.debug_ports.iter().filter(|(_, p)| p.id == id).map(|(t, _)| *t).collect();
        for t in ports {
            if let Some(mut p) = self.debug_ports.remove(&t) {
                let _ = self.poll.registry().deregister(&mut p.listener);
            }
        }
        let relays: Vec<u64> = self.relays.iter().filter(|(_, r)| r.id == id).map(|(k, _)| *k).collect();
        for rid in relays {
            self.end_relay(rid);
        }
    }

    // ---- events --------------------------------------------------------------------------

    /// Records an event and wakes its subscribers; run events also go into the session's
    /// timeline (a new run starts at `spawned`).
    fn emit(&mut self, id: Uuid, event: &'static str, mut detail: Value, touched: &mut Vec<Token>) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if event == "spawned" {
                s.timeline.clear();
            }
            // exited and limit_hit are put in the timeline by on_exited, before the receipt.
            if matches!(event, "spawned" | "setup_finished" | "debug_attached" | "debug_detached") {
                s.timeline.push((event, SystemTime::now()));
            }
        }
        let seq = self.events.next_seq;
        let mut v = json!({"ok": true, "event": event, "seq": seq, "time": session::time(SystemTime::now()), "id": id.to_string()});
        if let (Some(m), Some(d)) = (v.as_object_mut(), detail.as_object_mut()) {
            m.append(d);
        }
        let owner = self.sessions.get(&id).map_or_else(|| Arc::from(""), |s| s.owner.clone());
        self.events.push(id, owner, v);
        touched.extend(self.conns.iter().filter(|(_, c)| matches!(c.mode, Mode::Events { .. })).map(|(t, _)| *t));
    }

    /// Sends a subscriber what it has not seen, as far as its output buffer allows; a
    /// subscriber that fell behind the log is told how many events it missed. Returns
    /// whether the stream ended (a one-session stream ends with the session's deletion).
    fn pump_events(&mut self, t: Token) -> bool {
        let Some(c) = self.conns.get(&t) else { return false };
        let Mode::Events { filter, next, ref viewer } = c.mode else { return false };
        let viewer = viewer.clone();
        // Never more than the output buffer allows: a slow subscriber falls behind the
        // log (and is told so), it never makes the daemon hold more for it.
        let room = OUT_HIGH_WATER.saturating_sub(c.out.len() - c.out_pos) / 512;
        let b = self.events.since(next, filter, &viewer, room);
        if b.missed > 0 {
            self.send(t, &json!({"ok": true, "missed": b.missed}));
        }
        for v in &b.events {
            self.send(t, v);
        }
        if b.ended {
            self.finish(t, &json!({"ok": true, "end": true, "deleted": true}));
            return true;
        }
        if let Some(c) = self.conns.get_mut(&t) {
            c.mode = Mode::Events { filter, next: b.next, viewer };
        }
        false
    }

    // ---- broker ------------------------------------------------------------------------

    /// Answers the connection parked on `wait`, if it still waits for it.
    fn answer(&mut self, conn: Token, wait: u64, v: &Value, touched: &mut Vec<Token>) {
        if let Some(c) = self.conns.get(&conn) {
            if matches!(c.mode, Mode::Waiting(w) if w == wait) {
                self.finish(conn, v);
                touched.push(conn);
            }
        }
    }

    fn on_broker(&mut self, tag: u64, reply: Reply, touched: &mut Vec<Token>) {
        if tag == 0 {
            match reply {
                Reply::Exited { id, status, usage, limit_hit } => {
                    self.on_exited(Uuid::from_bytes(id.0), status, usage, limit_hit, touched)
                }
                Reply::DebugEnded { id } => {
                    let id = Uuid::from_bytes(id.0);
                    self.drop_debugging_of(id);
                    if let Some(s) = self.sessions.get_mut(&id) {
                        if s.state == State::Debugging {
                            s.state = State::Running;
                        }
                    }
                    self.emit(id, "debug_detached", json!({}), touched);
                }
                Reply::Spawned { id } => {
                    let id = Uuid::from_bytes(id.0);
                    let run = self.sessions.get(&id).map_or(0, |s| s.runs + 1);
                    self.emit(id, "spawned", json!({"run": run}), touched);
                }
                other => eprintln!("debuglantern: unexpected broker event {other:?}"),
            }
            return;
        }
        let Some(p) = self.pending.remove(&tag) else {
            eprintln!("debuglantern: broker answered an unknown request {tag}");
            return;
        };
        match (p.op, reply) {
            (Op::Load { owner, peer, upload_size, sha256, elf, id, kind }, Reply::Loaded { .. }) => {
                self.release(&owner, upload_size);
                self.loaded_bytes += upload_size;
                let kind_name = match kind {
                    session::Kind::Binary => "binary",
                    session::Kind::Bundle { .. } => "bundle",
                };
                self.audit.log(
                    "upload",
                    json!({"peer": peer, "identity": &*owner, "id": id.to_string(), "kind": kind_name, "size": upload_size, "sha256": sha256}),
                );
                let s = Session {
                    id,
                    owner,
                    kind,
                    state: State::Loaded,
                    size: upload_size,
                    sha256: sha256.clone(),
                    elf: elf.clone(),
                    created: SystemTime::now(),
                    pid: None,
                    ns_pid: None,
                    exit: None,
                    usage: None,
                    cgroup_hit: None,
                    limits: self.cfg.limits,
                    runs: 0,
                    started: None,
                    ended: None,
                    logs: LogRing::new(self.cfg.log_buffer),
                    out_bytes: [0, 0],
                    pipes_open: 0,
                    busy: false,
                    deleting: false,
                    exit_waiters: Vec::new(),
                    run_args: Vec::new(),
                    run_env_keys: Vec::new(),
                    out_hash: Default::default(),
                    receipts: Default::default(),
                    timeline: Vec::new(),
                };
                self.sessions.insert(id, s);
                let v = json!({"ok": true, "id": id.to_string(), "state": "LOADED", "kind": kind_name, "size": upload_size, "sha256": sha256.clone(), "elf": elf});
                self.answer(p.conn, p.wait, &v, touched);
                self.emit(id, "uploaded", json!({"kind": kind_name, "size": upload_size, "sha256": sha256}), touched);
            }
            (Op::Load { owner, upload_size, id, kind, .. }, Reply::Refused { message, .. }) => {
                self.release(&owner, upload_size);
                if kind != session::Kind::Binary {
                    self.remove_bundle(id);
                }
                self.answer(
                    p.conn,
                    p.wait,
                    &err_json(Code::Internal, format!("the broker refused the upload: {message}")),
                    touched,
                );
            }
            (
                Op::Start { id, limits, args, env_keys, debug, actor },
                Reply::Started { ns_pid, pidfd, stdout, stderr, .. },
            ) => {
                let pid = host_pid(&pidfd);
                drop(pidfd);
                let mut tokens = Vec::new();
                for (stream, fd) in [stdout, stderr].into_iter().enumerate() {
                    let t = self.token();
                    let file = File::from(fd);
                    let _ = nix::fcntl::fcntl(
                        file.as_raw_fd(),
                        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                    );
                    if self.poll.registry().register(&mut SourceFd(&file.as_raw_fd()), t, Interest::READABLE).is_ok() {
                        self.pipes.insert(t, PipeOwner::Log { id, stream, file });
                        tokens.push(t);
                    }
                }
                let Some(s) = self.sessions.get_mut(&id) else { return };
                s.busy = false;
                s.state = State::Running;
                s.pid = pid;
                s.ns_pid = Some(ns_pid);
                s.exit = None;
                s.usage = None;
                s.cgroup_hit = None;
                s.limits = limits;
                s.runs += 1;
                s.started = Some(SystemTime::now());
                s.ended = None;
                s.logs.clear();
                s.out_bytes = [0, 0];
                s.out_hash = Default::default();
                s.run_args = args;
                s.run_env_keys = env_keys;
                let run = s.runs;
                s.pipes_open = tokens.len() as u8;
                let v = json!({"ok": true, "id": id.to_string(), "state": "RUNNING", "pid": pid, "ns_pid": ns_pid});
                self.emit(id, "setup_finished", json!({"run": run, "pid": pid, "ns_pid": ns_pid}), touched);
                match debug {
                    // Held at its entry point: attach the debugger, then answer.
                    Some((local, peer)) => {
                        let tag = self.next_tag();
                        if self.tube.send(tag, Request::Debug { id: id_of(&id) }).is_ok() {
                            if let Some(s) = self.sessions.get_mut(&id) {
                                s.busy = true;
                            }
                            let op = Op::Debug { id, local, peer, started: true, stdio: false, identity: actor };
                            self.pending.insert(tag, Pending { conn: p.conn, wait: p.wait, op });
                        } else {
                            self.answer(
                                p.conn,
                                p.wait,
                                &err_json(Code::Internal, "the broker is unavailable"),
                                touched,
                            );
                        }
                    }
                    None => self.answer(p.conn, p.wait, &v, touched),
                }
                // Output may already be waiting: edge-triggered, so read it now.
                for t in tokens {
                    self.read_pipe(t, touched);
                }
            }
            (Op::Start { id, .. }, Reply::Refused { refusal, message }) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.busy = false;
                }
                self.emit(id, "start_failed", json!({"message": message.clone()}), touched);
                let code = match refusal {
                    Refusal::NotFound => Code::NotFound,
                    Refusal::InvalidState => Code::InvalidState,
                    Refusal::LimitReached => Code::LimitReached,
                    Refusal::BadRequest => Code::BadRequest,
                    Refusal::Internal => Code::Internal,
                    Refusal::Unsupported => Code::Unsupported,
                };
                self.answer(p.conn, p.wait, &err_json(code, message), touched);
            }
            (Op::Debug { id, stdio: true, identity, .. }, Reply::Debugging { sock, .. }) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.busy = false;
                    s.state = State::Debugging;
                }
                self.relay_connection(p.conn, p.wait, id, identity, sock, touched);
            }
            (Op::Debug { id, local, peer, started, identity, .. }, Reply::Debugging { sock, .. }) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.busy = false;
                }
                let mut v = self.on_debugging(id, local, peer, identity, sock, started);
                if started {
                    // START --debug's answer: the run and its debugger.
                    let (pid, ns_pid) = (v["debug"]["pid"].clone(), v["debug"]["ns_pid"].clone());
                    v["pid"] = pid;
                    v["ns_pid"] = ns_pid;
                }
                self.answer(p.conn, p.wait, &v, touched);
            }
            (Op::Debug { id, .. }, Reply::Refused { refusal, message }) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.busy = false;
                }
                let code = match refusal {
                    Refusal::Unsupported => Code::Unsupported,
                    Refusal::InvalidState => Code::InvalidState,
                    Refusal::NotFound => Code::NotFound,
                    _ => Code::Internal,
                };
                self.answer(p.conn, p.wait, &err_json(code, message), touched);
            }
            (Op::Stop { .. }, Reply::Accepted { .. }) => {}
            (Op::Stop { id }, Reply::Refused { message, .. }) => {
                // Usually a race with the run's own exit, whose event came first.
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.exit_waiters.retain(|w| w.wait != p.wait);
                }
                let state = self.sessions.get(&id).map(|s| s.state.as_str()).unwrap_or("gone");
                self.answer(
                    p.conn,
                    p.wait,
                    &err_json(Code::InvalidState, format!("session is {state}: {message}")),
                    touched,
                );
            }
            (Op::Delete { id }, Reply::Deleted { .. }) => {
                self.emit(id, "deleted", json!({}), touched);
                if let Some(s) = self.sessions.remove(&id) {
                    self.loaded_bytes -= s.size;
                    if s.kind != session::Kind::Binary {
                        self.remove_bundle(id);
                    }
                    for w in s.exit_waiters {
                        self.answer(w.conn, w.wait, &err_json(Code::NotFound, "the session was deleted"), touched);
                    }
                }
                self.drop_pipes_of(id);
                self.answer(p.conn, p.wait, &json!({"ok": true, "id": id.to_string(), "deleted": true}), touched);
                // Followers of the session end their stream.
                touched.extend(self.followers_of(id));
            }
            (Op::Delete { id }, Reply::Refused { message, .. }) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.deleting = false;
                }
                self.answer(
                    p.conn,
                    p.wait,
                    &err_json(Code::Internal, format!("the broker refused to delete: {message}")),
                    touched,
                );
            }
            (_, other) => {
                eprintln!("debuglantern: unexpected broker reply {other:?} to request {tag}");
                self.answer(p.conn, p.wait, &err_json(Code::Internal, "unexpected answer from the broker"), touched);
            }
        }
    }

    fn on_exited(
        &mut self,
        id: Uuid,
        status: shared::ExitStatus,
        usage: shared::Usage,
        limit_hit: Option<shared::LimitHit>,
        touched: &mut Vec<Token>,
    ) {
        // Every process of the run is dead: the pipes hold their last bytes, then EOF.
        let pipe_tokens = self.pipes_of(id);
        for t in pipe_tokens {
            self.read_pipe(t, touched);
        }
        self.drop_debugging_of(id);
        let Some(s) = self.sessions.get_mut(&id) else { return };
        s.state = State::Stopped;
        s.exit = Some(status);
        s.usage = Some(usage);
        s.cgroup_hit = limit_hit;
        s.ended = Some(SystemTime::now());
        let waiters = std::mem::take(&mut s.exit_waiters);
        // The receipt is written now: its timeline ends here (the events follow below).
        let now = SystemTime::now();
        if s.limit_hit().is_some() {
            s.timeline.push(("limit_hit", now));
        }
        s.timeline.push(("exited", now));
        let receipt = s.receipt(&self.jail, &self.warnings);
        if s.receipts.len() == session::RECEIPTS_KEPT {
            s.receipts.pop_front();
        }
        s.receipts.push_back(receipt);
        let (run, hit) = (s.runs, s.limit_hit());
        let v = json!({"ok": true, "id": id.to_string(), "state": "STOPPED", "exit": session::exit_json(status), "limit_hit": hit});
        for w in waiters {
            self.answer(w.conn, w.wait, &v, touched);
        }
        touched.extend(self.followers_of(id));
        if let Some(limit) = hit {
            let owner = self.sessions.get(&id).map(|s| s.owner.clone());
            self.audit
                .log("limit_hit", json!({"id": id.to_string(), "owner": owner.as_deref(), "run": run, "limit": limit}));
            self.emit(id, "limit_hit", json!({"run": run, "limit": limit}), touched);
        }
        self.emit(id, "exited", json!({"run": run, "exit": session::exit_json(status), "limit_hit": hit}), touched);
    }

    /// Connections streaming the output of `id`.
    fn followers_of(&self, id: Uuid) -> Vec<Token> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.mode, Mode::Follow { id: f, .. } if f == id))
            .map(|(t, _)| *t)
            .collect()
    }

    /// The log pipes of `id` still open.
    fn pipes_of(&self, id: Uuid) -> Vec<Token> {
        self.pipes
            .iter()
            .filter(|(_, p)| matches!(p, PipeOwner::Log { id: i, .. } if *i == id))
            .map(|(t, _)| *t)
            .collect()
    }

    fn drop_pipes_of(&mut self, id: Uuid) {
        let tokens = self.pipes_of(id);
        for t in tokens {
            if let Some(PipeOwner::Log { file, .. }) = self.pipes.remove(&t) {
                let _ = self.poll.registry().deregister(&mut SourceFd(&file.as_raw_fd()));
            }
        }
    }

    fn read_pipe(&mut self, t: Token, touched: &mut Vec<Token>) {
        let Some(PipeOwner::Log { id, stream, file }) = self.pipes.get_mut(&t) else { return };
        let (id, stream) = (*id, *stream);
        let mut eof = false;
        let mut got = false;
        loop {
            match file.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    got = true;
                    if let Some(s) = self.sessions.get_mut(&id) {
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
            if let Some(PipeOwner::Log { file, .. }) = self.pipes.remove(&t) {
                let _ = self.poll.registry().deregister(&mut SourceFd(&file.as_raw_fd()));
            }
            if let Some(s) = self.sessions.get_mut(&id) {
                s.pipes_open = s.pipes_open.saturating_sub(1);
            }
        }
        if got || eof {
            touched.extend(self.followers_of(id));
        }
    }
}

impl Server {
    /// Starts the worker thread (after landlock, before seccomp: see `worker`).
    pub fn start_worker(&mut self) -> std::io::Result<()> {
        self.hasher = Some(crate::hasher::Hasher::start(self.waker.clone())?);
        if let Some(store) = self.store.take() {
            self.worker = Some(crate::worker::Worker::start(store, self.waker.clone())?);
        }
        Ok(())
    }

    /// The bundle store's descriptor, for the landlock ruleset (before the worker starts).
    pub fn store_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.store.as_ref().map(|s| s.as_fd())
    }

    /// Warnings of this daemon (degraded host, rootless mode, broker's).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Starts advertising over mDNS if the configuration asks for it here (a failure is a
    /// warning). After landlock, before seccomp: the responder's thread inherits the first
    /// and has started before the second.
    pub fn start_mdns(&mut self, listen: SocketAddr) {
        let Some(plan) = self.cfg.mdns.clone() else { return };
        if !crate::discovery::wanted(&plan, listen) {
            return;
        }
        match crate::discovery::start(&plan, listen) {
            Ok(a) => {
                eprintln!("debuglantern: advertising {:?} over mDNS", a.name);
                self.advertiser = Some(a);
            }
            Err(e) => self.warnings.push(format!("not advertised over mDNS: {e}")),
        }
    }

    /// Adds a warning (shown in HELLO).
    pub fn add_warning(&mut self, w: String) {
        self.warnings.push(w);
    }

    /// Describes the confinement of sessions (HELLO, receipts), from the policy and what
    /// the start-up found.
    fn describe_jail(&mut self) {
        let has = |needle: &str| self.warnings.iter().any(|w| w.contains(needle));
        self.jail = jail_description(
            if has("share one uid") { "shared (rootless)" } else { "distinct per session" },
            if has("cgroup") { json!([]) } else { json!(["memory", "pids"]) },
        );
    }
}

/// What confines a session, as HELLO and receipts report it.
pub fn jail_description(uid: &str, cgroups: Value) -> Value {
    use policy::seccomp::session as s;
    let families: Vec<String> = s::SOCKET_FAMILIES
        .iter()
        .map(|(f, _)| match *f {
            libc::AF_UNIX => "unix".to_string(),
            libc::AF_INET => "inet".to_string(),
            libc::AF_INET6 => "inet6".to_string(),
            libc::AF_NETLINK => "netlink (route only)".to_string(),
            other => format!("family {other}"),
        })
        .collect();
    let paths = |l: &'static [(&'static str, &'static str)]| l.iter().map(|(p, _)| *p).collect::<Vec<&str>>();
    json!({
        "namespaces": ["user", "pid", "mount", "network", "ipc", "uts", "cgroup"],
        "root": "tmpfs with read-only system binds, own /proc, /tmp, /dev/pts; no /sys",
        "uid": uid,
        "capabilities": "none",
        "no_new_privs": true,
        "seccomp": {
            "mode": "allowlist",
            "allowed": s::allowed().count(),
            "default": "ENOSYS",
            "denied": s::DENIED.len(),
            "denied_errno": "EPERM",
            "socket_families": families,
            "other_families": "EAFNOSUPPORT",
            "clone_namespaces": "EPERM",
            "x32_abi": "killed",
            "foreign_arch": "killed",
        },
        "proc": {
            "masked": paths(policy::mounts::PROC_MASKED_FILES).into_iter().chain(paths(policy::mounts::PROC_MASKED_DIRS)).collect::<Vec<_>>(),
            "read_only": paths(policy::mounts::PROC_READ_ONLY),
        },
        "cgroup_namespace": true,
        "cgroups": cgroups,
        "rlimits": ["cpu", "address_space", "open_files", "processes", "core"],
        "spawner_seccomp": format!("deny list of {} calls, stacked under every session", policy::seccomp::spawner_denied().count()),
        "frontend_seccomp": "allow list; the event loop thread also refuses UDP, raw and netlink sockets and interface ioctls",
    })
}

impl Server {
    /// The jail description (for tests of the frontend).
    pub fn jail(&self) -> &Value {
        &self.jail
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("sessions", &self.sessions.len())
            .field("connections", &self.conns.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize, cap: usize, ids: &[Uuid]) -> EventLog {
        let mut l = EventLog::new(cap);
        for i in 0..n {
            let id = ids[i % ids.len()];
            // Owned by "u<last digit of the id>".
            let owner: Arc<str> = Arc::from(format!("u{}", id.as_u128() % 10));
            l.push(id, owner, json!({"event": if i + 1 == n { "deleted" } else { "x" }, "i": i}));
        }
        l
    }

    #[test]
    fn a_subscriber_that_fell_behind_is_told_how_many_it_missed() {
        let l = log_with(10, 4, &[Uuid::nil()]);
        let b = l.since(1, None, &Identity::anonymous(), 100);
        assert_eq!(b.missed, 6);
        assert_eq!(b.events.len(), 4);
        assert_eq!(b.next, 11);
        // Caught up: nothing more, nothing missed.
        assert_eq!(l.since(11, None, &Identity::anonymous(), 100), Batch { next: 11, ..Default::default() });
    }

    #[test]
    fn batches_are_bounded_and_resume_where_they_stopped() {
        let l = log_with(10, 100, &[Uuid::nil()]);
        let b = l.since(1, None, &Identity::anonymous(), 3);
        assert_eq!((b.events.len(), b.next, b.missed), (3, 4, 0));
        let b = l.since(b.next, None, &Identity::anonymous(), 100);
        assert_eq!(b.events.len(), 7);
        assert_eq!(b.events[0]["i"], 3);
    }

    #[test]
    fn a_session_stream_filters_and_ends_at_deletion() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let l = log_with(9, 100, &[a, b, a]);
        // Events 0..9 alternate a, b, a; the last (i = 8, id a) is the deletion.
        let got = l.since(1, Some(a), &Identity::anonymous(), 100);
        assert!(got.events.iter().all(|e| e["i"].as_u64().unwrap() % 3 != 1));
        assert!(got.ended);
        let got_b = l.since(1, Some(b), &Identity::anonymous(), 100);
        assert_eq!(got_b.events.len(), 3);
        assert!(!got_b.ended);
    }

    #[test]
    fn an_identity_sees_only_the_events_of_its_sessions() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let l = log_with(9, 100, &[a, b, a]);
        let u2 = Identity { name: Arc::from("u2"), admin: false };
        let got = l.since(1, None, &u2, 100);
        assert_eq!(got.events.len(), 3);
        assert!(got.events.iter().all(|e| e["i"].as_u64().unwrap() % 3 == 1));
        assert_eq!(got.next, 10);
        // Asking for another's session by id gives nothing either.
        assert!(l.since(1, Some(a), &u2, 100).events.is_empty());
        let admin = Identity { name: Arc::from("root"), admin: true };
        assert_eq!(l.since(1, None, &admin, 100).events.len(), 9);
    }
}
