//! The broker's single-threaded epoll loop: the frontend's socket, each run's init pidfd
//! and control socket, and the deadlines of STOP's grace period and of runs' wall-clock
//! limits.
//!
//! Hostile input policy: a message that is *semantically* wrong (unknown id, wrong state,
//! a descriptor that is not a sealed memfd, a NUL inside argv) is refused with a reply and
//! the broker goes on: such messages can come from a correct frontend racing with a
//! session's exit. A message that is *structurally* wrong (undecodable, oversized,
//! truncated, wrong descriptor count, a bad hello) cannot come from a correct frontend;
//! it means the frontend is compromised or broken, so the broker fails closed: it kills
//! every session and exits non-zero, and the daemon with it.

use crate::messages::{InitCall, InitMsg, SpawnImage, SpawnReply, SpawnRequest, SpawnerCall};
use crate::sys;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use shared::{ExitStatus, Refusal, Reply, Request, SessionId, StartSpec, Tube, TubeError, Usage, MAGIC, WIRE_VERSION};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

mod execs;
mod runs;
#[cfg(test)]
mod tests;

use runs::request_kill;

const FRONTEND: Token = Token(0);
const SPAWNER: Token = Token(1);
/// How long the init gets to kill and reap its namespace before we SIGKILL it.
const KILL_SAFETY: Duration = Duration::from_secs(2);
/// How long a debugger may stay attached to a program that has exited.
const DEBUGGER_GRACE: Duration = Duration::from_secs(2);
/// Most sessions the broker holds, whatever the frontend asks (a second line of defence).
const MAX_SESSIONS: usize = 65_536;

/// Broker errors: all of them end the broker (fail closed).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The frontend's socket failed or carried a structurally bad message.
    #[error("frontend link")]
    Link(#[from] TubeError),
    /// The first message was not a valid hello.
    #[error("bad hello from the frontend: {0}")]
    Hello(String),
    /// A policy could not be built.
    #[error("session policy")]
    Policy(#[from] policy::seccomp::SeccompError),
    /// The spawner died or misbehaved.
    #[error("spawner link")]
    Spawner(#[source] TubeError),
    /// epoll failed.
    #[error("event loop")]
    Poll(#[from] std::io::Error),
}

struct Run {
    init_pidfd: OwnedFd,
    ctl: Tube,
    slot: Option<u32>,
    /// Tag of the START request while the init has not said "running" yet.
    start_tag: Option<u64>,
    /// Status, usage, the observation's memfd, the core's memfd.
    outcome: Option<(ExitStatus, Usage, Option<OwnedFd>, Option<OwnedFd>)>,
    /// The init reported that setup or exec failed: the run never started.
    failed: bool,
    term_deadline: Option<Instant>,
    kill_deadline: Option<Instant>,
    /// The run's cgroups, if any.
    cgroup: Option<crate::cgroup::SessionCgroup>,
    /// gdbserver's pidfd while one is attached.
    debugger: Option<(Token, OwnedFd)>,
    /// The program's pidfd: if the program dies while a debugger holds it as a traced
    /// zombie, the debugger is killed so that the init can reap the program.
    program: Option<(Token, OwnedFd)>,
    /// When a debugger still attached to the dead program is killed.
    debugger_deadline: Option<Instant>,
    /// The program's pid in its session (2, or what gdbserver launched for START --debug).
    ns_pid: u32,
    /// Pipes' ends, handed to the frontend with "started".
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    /// The run's limits (an exec'd process gets the same rlimits).
    limits: shared::RunLimits,
    /// When the run's wall-clock limit ends it.
    wall_deadline: Option<Instant>,
    /// The wall-clock limit ended it.
    wall_hit: bool,
    /// Its init traces the tree (core dumps): a debugger may attach once it has let go.
    traced: bool,
    /// A DEBUG waiting for the init to let go (its tag).
    release_tag: Option<u64>,
}

/// A START waiting for the spawner.
struct PendingSpawn {
    id: SessionId,
    start_tag: u64,
    slot: Option<u32>,
    cgroup: Option<crate::cgroup::SessionCgroup>,
    wall_seconds: u64,
    limits: shared::RunLimits,
    /// The init will trace the tree (core dumps).
    traced: bool,
}

/// What a session runs.
enum Image {
    /// A sealed memfd.
    Memfd(OwnedFd),
    /// A bundle in the store's directory named after the session; the path is relative
    /// to it, checked to be clean.
    Bundle(Vec<u8>),
}

struct Session {
    image: Image,
    /// Its uid slot, from LOAD to DELETE: every run of it (and every copy into its kept
    /// `/tmp`) is the same uid, and no other session's is while it exists. `None` in
    /// single-uid mode.
    slot: Option<u32>,
    run: Option<Run>,
    /// A START is with the spawner.
    spawning: bool,
    /// Tag of a DELETE waiting for the run to end.
    delete_tag: Option<u64>,
    /// The number the next EXEC gets.
    next_exec: u32,
    /// Its cgroups from LOAD to DELETE, while no run holds them (a run takes them at
    /// START and gives them back at its end).
    cgroup: Option<crate::cgroup::SessionCgroup>,
}

/// The broker's state.
pub struct Broker {
    poll: Poll,
    tube: Tube,
    sessions: HashMap<SessionId, Session>,
    /// Token → session whose run owns the token (pidfd tokens are odd, ctl tokens even).
    tokens: HashMap<Token, SessionId>,
    next_token: usize,
    free_slots: Vec<u32>,
    single_uid: bool,
    shutting_down: bool,
    /// Delegated cgroup directories (none in rootless mode).
    cgroups: crate::cgroup::Cgroups,
    /// The spawner's socket.
    spawner: Tube,
    /// STARTs with the spawner, by spawner tag.
    spawns: HashMap<u64, PendingSpawn>,
    /// DEBUGs with the spawner: spawner tag → (session, request tag).
    debug_calls: HashMap<u64, (SessionId, u64)>,
    /// gdbserver pidfds' tokens.
    debug_tokens: HashMap<Token, SessionId>,
    /// Program pidfds' tokens.
    program_tokens: HashMap<Token, SessionId>,
    /// Spawner tags of DropTmp calls (their answers change nothing).
    drops: std::collections::HashSet<u64>,
    /// Files helpers with the spawner: spawner tag → (session, request tag).
    files_calls: HashMap<u64, (SessionId, u64)>,
    /// Exec'd processes' helpers, and the tokens of their control sockets and pidfds.
    execs: execs::Execs,
    next_spawn: u64,
}

impl Broker {
    /// Takes the socket, waits for the hello and answers it.
    pub fn new(
        sock: OwnedFd,
        spawner: OwnedFd,
        session_uids: u32,
        warnings: Vec<String>,
        cgroups: crate::cgroup::Cgroups,
    ) -> Result<Self, BrokerError> {
        let tube = Tube::new(sock)?;
        let spawner = Tube::new(spawner).map_err(BrokerError::Spawner)?;
        let poll = Poll::new()?;
        poll.registry().register(&mut SourceFd(&tube.as_raw_fd()), FRONTEND, Interest::READABLE)?;
        poll.registry().register(&mut SourceFd(&spawner.as_raw_fd()), SPAWNER, Interest::READABLE)?;
        let mut b = Broker {
            poll,
            tube,
            sessions: HashMap::new(),
            tokens: HashMap::new(),
            next_token: 2,
            free_slots: (0..session_uids).rev().collect(),
            single_uid: session_uids == 0,
            shutting_down: false,
            cgroups,
            spawner,
            spawns: HashMap::new(),
            debug_calls: HashMap::new(),
            debug_tokens: HashMap::new(),
            program_tokens: HashMap::new(),
            drops: Default::default(),
            files_calls: HashMap::new(),
            execs: execs::Execs::default(),
            next_spawn: 1,
        };
        b.hello(warnings)?;
        Ok(b)
    }

    fn hello(&mut self, mut warnings: Vec<String>) -> Result<(), BrokerError> {
        let mut events = Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BrokerError::Hello("no hello within 10 s".into()));
            }
            self.poll.poll(&mut events, Some(left))?;
            if let Some((tag, req)) = self.tube.recv::<Request>()? {
                let Request::Hello { magic, version } = req else {
                    return Err(BrokerError::Hello("first message is not a hello".into()));
                };
                if magic != MAGIC || version != WIRE_VERSION {
                    return Err(BrokerError::Hello(format!("magic {magic:?} version {version}, want {WIRE_VERSION}")));
                }
                if self.single_uid {
                    warnings.push(
                        "sessions share one uid: the broker's user namespace maps a single uid (rootless mode)".into(),
                    );
                }
                self.tube.send(tag, Reply::Hello { magic: MAGIC, version: WIRE_VERSION, warnings })?;
                return Ok(());
            }
        }
    }

    /// Serves until shutdown (Ok) or until the frontend is gone or hostile (Err). Either
    /// way every session is dead when this returns.
    pub fn run(mut self) -> Result<(), BrokerError> {
        let result = self.serve();
        self.kill_everything();
        result
    }

    fn serve(&mut self) -> Result<(), BrokerError> {
        let mut events = Events::with_capacity(256);
        loop {
            if self.shutting_down && self.spawns.is_empty() && self.sessions.values().all(|s| s.run.is_none()) {
                return Ok(());
            }
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for ev in events.iter() {
                match ev.token() {
                    FRONTEND => {
                        if ev.is_writable() {
                            self.tube.flush()?;
                        }
                        while let Some((tag, req)) = self.tube.recv::<Request>()? {
                            self.handle(tag, req)?;
                        }
                    }
                    SPAWNER => loop {
                        match self.spawner.recv::<SpawnReply>() {
                            Ok(Some((tag, reply))) => self.on_spawned(tag, reply)?,
                            Ok(None) => break,
                            Err(e) => return Err(BrokerError::Spawner(e)),
                        }
                    },
                    t if self.debug_tokens.contains_key(&t) => self.on_debugger_exit(t)?,
                    t if self.execs.tokens.contains_key(&t) => self.on_exec_event(t)?,
                    t if self.program_tokens.contains_key(&t) => self.on_program_exit(t),
                    t => self.on_run_event(t)?,
                }
            }
            self.fire_deadlines();
            let interest =
                if self.tube.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            self.poll.registry().reregister(&mut SourceFd(&self.tube.as_raw_fd()), FRONTEND, interest)?;
        }
    }

    fn refuse(&mut self, tag: u64, refusal: Refusal, message: impl Into<String>) -> Result<(), BrokerError> {
        self.tube.send(tag, Reply::Refused { refusal, message: message.into() })?;
        Ok(())
    }

    fn handle(&mut self, tag: u64, req: Request) -> Result<(), BrokerError> {
        match req {
            Request::Hello { .. } => Err(BrokerError::Hello("second hello".into())),
            Request::Load { id, memfd } => {
                let image = check_sealed_memfd(&memfd).map(|()| Image::Memfd(memfd));
                self.load(tag, id, image)
            }
            Request::LoadBundle { id, exec_path } => {
                let image = check_exec_path(&exec_path).map(|()| Image::Bundle(exec_path));
                self.load(tag, id, image)
            }
            Request::Start { id, spec } => self.start(tag, id, spec),
            Request::Stop { id, grace_ms } => {
                let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) else {
                    return self.refuse_missing_run(tag, id);
                };
                if run.term_deadline.is_none() && run.kill_deadline.is_none() {
                    let _ = sys::pidfd_signal(run.init_pidfd.as_fd(), libc::SIGTERM);
                    run.term_deadline = Some(Instant::now() + Duration::from_millis(grace_ms));
                }
                self.tube.send(tag, Reply::Accepted { id })?;
                Ok(())
            }
            Request::Kill { id } => {
                let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) else {
                    return self.refuse_missing_run(tag, id);
                };
                request_kill(run);
                self.tube.send(tag, Reply::Accepted { id })?;
                Ok(())
            }
            Request::Exec { id, spec } => self.exec(tag, id, spec),
            Request::Signal { id, exec: Some(exec), sig } => self.exec_signal(tag, id, exec, sig),
            Request::Signal { id, exec: None, sig } => {
                if !(1..=64).contains(&sig) {
                    return self.refuse(tag, Refusal::BadRequest, format!("{sig} is not a signal number"));
                }
                let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) else {
                    return self.refuse_missing_run(tag, id);
                };
                if run.start_tag.is_some() {
                    return self.refuse(tag, Refusal::InvalidState, "session is starting");
                }
                // A dead init's socket fails; its run ends by itself.
                let _ = run.ctl.send(0, InitCall::Signal(sig));
                self.tube.send(tag, Reply::Accepted { id })?;
                Ok(())
            }
            Request::Debug { id } => self.debug(tag, id),
            Request::DebugRelease { id, grace_ms } => {
                let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) else {
                    return self.refuse_missing_run(tag, id);
                };
                if run.debugger.is_some() {
                    let at = Instant::now() + Duration::from_millis(grace_ms.into()).min(DEBUGGER_GRACE);
                    run.debugger_deadline = Some(run.debugger_deadline.map_or(at, |d| d.min(at)));
                }
                self.tube.send(tag, Reply::Accepted { id })?;
                Ok(())
            }
            Request::Files { id, tmp_bytes } => {
                let Some(s) = self.sessions.get(&id) else {
                    return self.refuse(tag, Refusal::NotFound, "no such session in the broker");
                };
                if s.delete_tag.is_some() {
                    return self.refuse(tag, Refusal::InvalidState, "session is being deleted");
                }
                let call = SpawnerCall::Files {
                    dir: id.dir_name(),
                    bundle: matches!(s.image, Image::Bundle(_)),
                    ns_uid: s.slot.map(policy::identity::IdPlan::session_ns_uid),
                    tmp_bytes,
                };
                let stag = self.next_spawn;
                self.next_spawn += 1;
                self.spawner.send(stag, call).map_err(BrokerError::Spawner)?;
                self.files_calls.insert(stag, (id, tag));
                Ok(())
            }
            Request::Delete { id } => {
                let Some(s) = self.sessions.get_mut(&id) else {
                    return self.refuse(tag, Refusal::NotFound, "no such session in the broker");
                };
                if s.delete_tag.is_some() {
                    return self.refuse(tag, Refusal::InvalidState, "session is already being deleted");
                }
                if s.spawning {
                    return self.refuse(tag, Refusal::InvalidState, "session is starting");
                }
                match s.run.as_mut() {
                    Some(run) => {
                        request_kill(run);
                        s.delete_tag = Some(tag);
                    }
                    None => {
                        self.forget(id)?;
                        self.tube.send(tag, Reply::Deleted { id })?;
                    }
                }
                Ok(())
            }
            Request::Shutdown { grace_ms } => {
                self.shutting_down = true;
                let deadline = Instant::now() + Duration::from_millis(grace_ms);
                for run in self.sessions.values_mut().filter_map(|s| s.run.as_mut()) {
                    if run.term_deadline.is_none() && run.kill_deadline.is_none() {
                        let _ = sys::pidfd_signal(run.init_pidfd.as_fd(), libc::SIGTERM);
                        run.term_deadline = Some(deadline);
                    }
                }
                Ok(())
            }
        }
    }

    /// Admits a new session whose image was checked (`Err`: why it was refused).
    fn load(&mut self, tag: u64, id: SessionId, image: Result<Image, ImageError>) -> Result<(), BrokerError> {
        if self.shutting_down {
            return self.refuse(tag, Refusal::InvalidState, "the broker is shutting down");
        }
        if self.sessions.contains_key(&id) {
            return self.refuse(tag, Refusal::InvalidState, "session id already exists");
        }
        if self.sessions.len() >= MAX_SESSIONS {
            return self.refuse(tag, Refusal::LimitReached, "the broker holds too many sessions");
        }
        let image = match image {
            Ok(image) => image,
            Err(why) => return self.refuse(tag, Refusal::BadRequest, why.to_string()),
        };
        let slot = if self.single_uid {
            None
        } else {
            match self.free_slots.pop() {
                Some(s) => Some(s),
                None => return self.refuse(tag, Refusal::LimitReached, "every session uid is in use"),
            }
        };
        // Its cgroups now, off START's path (START tries again if this fails).
        let cgroup = self.make_cgroup(id).ok().flatten();
        self.sessions
            .insert(id, Session { image, slot, run: None, spawning: false, delete_tag: None, next_exec: 1, cgroup });
        self.tube.send(tag, Reply::Loaded { id })?;
        Ok(())
    }

    fn refuse_missing_run(&mut self, tag: u64, id: SessionId) -> Result<(), BrokerError> {
        if self.sessions.contains_key(&id) {
            self.refuse(tag, Refusal::InvalidState, "session is not running")
        } else {
            self.refuse(tag, Refusal::NotFound, "no such session in the broker")
        }
    }

    fn start(&mut self, tag: u64, id: SessionId, spec: StartSpec) -> Result<(), BrokerError> {
        if self.shutting_down {
            return self.refuse(tag, Refusal::InvalidState, "the broker is shutting down");
        }
        let Some(session) = self.sessions.get(&id) else {
            return self.refuse(tag, Refusal::NotFound, "no such session in the broker");
        };
        if session.run.is_some() || session.spawning || session.delete_tag.is_some() {
            return self.refuse(tag, Refusal::InvalidState, "session is running");
        }
        if spec.argv.is_empty() || spec.argv.iter().chain(&spec.env).any(|a| a.contains(&0)) {
            return self.refuse(tag, Refusal::BadRequest, "argv must be non-empty; argv and env must not contain NUL");
        }
        let image = match &session.image {
            Image::Memfd(fd) => match fd.try_clone() {
                Ok(m) => SpawnImage::Memfd(m),
                Err(e) => return self.refuse(tag, Refusal::Internal, format!("dup: {e}")),
            },
            Image::Bundle(exec_path) => SpawnImage::Bundle { exec_path: exec_path.clone() },
        };
        let slot = session.slot;
        let kept = self.sessions.get_mut(&id).and_then(|s| s.cgroup.take());
        let cgroup = match kept.map(Ok).or_else(|| self.make_cgroup(id).transpose()) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(message)) => return self.refuse(tag, Refusal::Internal, shared::chain(&message)),
        };
        let (cgroup, cgroup_procs, into_cgroup) = match cgroup {
            Some(mut c) => match self.cgroups.arm(&mut c, &spec.limits) {
                Ok(armed) => (Some(c), armed.procs, armed.v2_dir),
                Err(message) => {
                    self.give_back_cgroup(id, c);
                    return self.refuse(tag, Refusal::Internal, shared::chain(&message));
                }
            },
            None => (None, Vec::new(), None),
        };
        let (wall_seconds, limits) = (spec.limits.wall_seconds, spec.limits);
        let traced = spec.limits.core_bytes > 0 && !spec.debug;
        let req = SpawnRequest {
            dir: id.dir_name(),
            spec,
            ns_uid: slot.map(policy::identity::IdPlan::session_ns_uid),
            pids_cgroup: cgroup.is_some() && self.cgroups.has_pids(),
            image,
            cgroup_procs,
            into_cgroup,
        };
        let stag = self.next_spawn;
        self.next_spawn += 1;
        self.spawner.send(stag, SpawnerCall::Session(req)).map_err(BrokerError::Spawner)?;
        self.spawns.insert(stag, PendingSpawn { id, start_tag: tag, slot, cgroup, wall_seconds, limits, traced });
        if let Some(s) = self.sessions.get_mut(&id) {
            s.spawning = true;
        }
        Ok(())
    }

    fn debug(&mut self, tag: u64, id: SessionId) -> Result<(), BrokerError> {
        let calling = self.debug_calls.values().any(|(i, _)| *i == id);
        let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) else {
            return self.refuse_missing_run(tag, id);
        };
        if run.start_tag.is_some() || run.kill_deadline.is_some() || run.term_deadline.is_some() {
            return self.refuse(tag, Refusal::InvalidState, "session is starting or stopping");
        }
        if run.debugger.is_some() || calling || run.release_tag.is_some() {
            return self.refuse(tag, Refusal::InvalidState, "a debugger is already attached");
        }
        if run.traced {
            // The init traces the program for core dumps: it lets go first.
            if let Err(e) = run.ctl.send(0, InitCall::Release) {
                return self.refuse(tag, Refusal::Internal, format!("the session's init: {e}"));
            }
            run.release_tag = Some(tag);
            return Ok(());
        }
        self.ask_debugger(tag, id)
    }

    /// DEBUG, once nothing traces the program: the spawner starts gdbserver attached.
    pub(super) fn ask_debugger(&mut self, tag: u64, id: SessionId) -> Result<(), BrokerError> {
        let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) else {
            return self.refuse_missing_run(tag, id);
        };
        let init_pidfd = match run.init_pidfd.try_clone() {
            Ok(fd) => fd,
            Err(e) => return self.refuse(tag, Refusal::Internal, format!("dup: {e}")),
        };
        let ns_uid = run.slot.map(policy::identity::IdPlan::session_ns_uid);
        let stag = self.next_spawn;
        self.next_spawn += 1;
        // The program is pid 2 of its session (pid 1 is the init), unless gdbserver
        // launched it (START --debug, then detached).
        let target = run.ns_pid;
        self.spawner.send(stag, SpawnerCall::Debug { init_pidfd, ns_uid, target }).map_err(BrokerError::Spawner)?;
        self.debug_calls.insert(stag, (id, tag));
        Ok(())
    }

    /// gdbserver (attached by DEBUG, or launching the program for START --debug) is the
    /// run's debugger: its exit is watched and reported as `DebugEnded`.
    pub(super) fn adopt_debugger(&mut self, id: SessionId, pidfd: OwnedFd) -> Result<(), BrokerError> {
        let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) else { return Ok(()) };
        let t = Token(self.next_token);
        self.next_token += 1;
        self.poll.registry().register(&mut SourceFd(&pidfd.as_raw_fd()), t, Interest::READABLE)?;
        run.debugger = Some((t, pidfd));
        self.debug_tokens.insert(t, id);
        Ok(())
    }

    fn on_debug_reply(&mut self, id: SessionId, tag: u64, reply: SpawnReply) -> Result<(), BrokerError> {
        match reply {
            SpawnReply::Debugging { gdb_pidfd, sock } => {
                if self.sessions.get(&id).and_then(|s| s.run.as_ref()).is_none() {
                    let _ = sys::pidfd_signal(gdb_pidfd.as_fd(), libc::SIGKILL);
                    return self.refuse(tag, Refusal::InvalidState, "the session ended");
                }
                self.adopt_debugger(id, gdb_pidfd)?;
                self.tube.send(tag, Reply::Debugging { id, sock })?;
                Ok(())
            }
            SpawnReply::Failed { message } => {
                // A program held for a debugger (START --debug) must not stay stopped.
                if let Some(run) = self.sessions.get(&id).and_then(|s| s.run.as_ref()) {
                    let _ = sys::pidfd_signal(run.init_pidfd.as_fd(), libc::SIGUSR2);
                }
                let refusal = if message.contains("not installed") { Refusal::Unsupported } else { Refusal::Internal };
                self.refuse(tag, refusal, message)
            }
            SpawnReply::Spawned { .. } | SpawnReply::Done | SpawnReply::Files { .. } | SpawnReply::Exec { .. } => {
                Err(BrokerError::Spawner(TubeError::Decode("a session where a debugger was asked".into())))
            }
        }
    }

    /// A session is gone: its uid slot is free, its kept `/tmp` goes (the spawner
    /// unmounts it).
    pub(super) fn forget(&mut self, id: SessionId) -> Result<(), BrokerError> {
        if let Some(s) = self.sessions.remove(&id) {
            if let Some(slot) = s.slot {
                self.free_slots.push(slot);
            }
            if let Some(c) = s.cgroup {
                self.cgroups.remove(c);
            }
        }
        self.kill_execs(id);
        self.drop_tmp(id)
    }

    /// The session's cgroups, named after it, not its uid slot (rootless sessions share
    /// one uid); `None` without cgroups.
    fn make_cgroup(&self, id: SessionId) -> Result<Option<crate::cgroup::SessionCgroup>, crate::cgroup::CgroupError> {
        if !self.cgroups.any() {
            return Ok(None);
        }
        self.cgroups.make(&id.dir_name()).map(Some)
    }

    /// A run's end (or a START that failed) hands the session's cgroups back for its next
    /// run; a session deleted meanwhile has its cgroups removed.
    pub(super) fn give_back_cgroup(&mut self, id: SessionId, c: crate::cgroup::SessionCgroup) {
        match self.sessions.get_mut(&id) {
            Some(s) => s.cgroup = Some(c),
            None => self.cgroups.remove(c),
        }
    }

    fn drop_tmp(&mut self, id: SessionId) -> Result<(), BrokerError> {
        let stag = self.next_spawn;
        self.next_spawn += 1;
        self.spawner.send(stag, SpawnerCall::DropTmp { dir: id.dir_name() }).map_err(BrokerError::Spawner)?;
        self.drops.insert(stag);
        Ok(())
    }

    fn on_spawned(&mut self, stag: u64, reply: SpawnReply) -> Result<(), BrokerError> {
        if self.drops.remove(&stag) {
            if let SpawnReply::Failed { message } = reply {
                log::error!("a deleted session's /tmp stays mounted: {message}");
            }
            return Ok(());
        }
        if let Some((id, tag)) = self.debug_calls.remove(&stag) {
            return self.on_debug_reply(id, tag, reply);
        }
        if let Some(call) = self.execs.calls.remove(&stag) {
            return self.on_exec_spawned(call, reply);
        }
        if let Some((id, tag)) = self.files_calls.remove(&stag) {
            return match reply {
                SpawnReply::Files { sock } => {
                    self.tube.send(tag, Reply::Files { id, sock })?;
                    Ok(())
                }
                SpawnReply::Failed { message } => self.refuse(tag, Refusal::Internal, message),
                _ => Err(BrokerError::Spawner(TubeError::Decode("not a files helper where one was asked".into()))),
            };
        }
        let Some(p) = self.spawns.remove(&stag) else {
            return Err(BrokerError::Spawner(TubeError::Decode(format!("answer to unknown request {stag}"))));
        };
        if let Some(s) = self.sessions.get_mut(&p.id) {
            s.spawning = false;
        }
        match reply {
            SpawnReply::Failed { message } => {
                if let Some(mut c) = p.cgroup {
                    self.cgroups.finish(&mut c);
                    self.give_back_cgroup(p.id, c);
                }
                self.refuse(p.start_tag, Refusal::Internal, message)
            }
            SpawnReply::Debugging { .. } | SpawnReply::Done | SpawnReply::Files { .. } | SpawnReply::Exec { .. } => {
                Err(BrokerError::Spawner(TubeError::Decode("a debugger where a session was asked".into())))
            }
            SpawnReply::Spawned { init_pidfd, ctl, stdout, stderr, stdin } => {
                self.tube.send(0, Reply::Spawned { id: p.id })?;
                let run = Run {
                    init_pidfd,
                    ctl: Tube::new(ctl)?,
                    slot: p.slot,
                    start_tag: Some(p.start_tag),
                    outcome: None,
                    failed: false,
                    cgroup: p.cgroup,
                    debugger: None,
                    program: None,
                    debugger_deadline: None,
                    ns_pid: 2,
                    term_deadline: None,
                    kill_deadline: None,
                    stdout: Some(stdout),
                    stderr: Some(stderr),
                    stdin: Some(stdin),
                    limits: p.limits,
                    // The wall clock runs from the init's creation: setup counts.
                    wall_deadline: (p.wall_seconds > 0)
                        .then(|| Instant::now() + Duration::from_secs(p.wall_seconds.min(100 * 365 * 86400))),
                    wall_hit: false,
                    traced: p.traced,
                    release_tag: None,
                };
                let base = self.next_token;
                self.next_token += 2;
                let (tp, tc) = (Token(base), Token(base + 1));
                self.poll.registry().register(&mut SourceFd(&run.init_pidfd.as_raw_fd()), tp, Interest::READABLE)?;
                self.poll.registry().register(&mut SourceFd(&run.ctl.as_raw_fd()), tc, Interest::READABLE)?;
                self.tokens.insert(tp, p.id);
                self.tokens.insert(tc, p.id);
                match self.sessions.get_mut(&p.id) {
                    Some(s) => s.run = Some(run),
                    // Cannot happen (DELETE waits for a spawning session); never leak a run.
                    None => {
                        let _ = sys::pidfd_signal(run.init_pidfd.as_fd(), libc::SIGKILL);
                    }
                }
                Ok(())
            }
        }
    }
}

/// A bundle's executable path: relative, no `..`, no NUL, bounded. (The frontend checked
/// it already; a message is hostile until checked here too.)
fn check_exec_path(p: &[u8]) -> Result<(), ImageError> {
    if p.is_empty() || p.len() > 4096 || p.contains(&0) || p.starts_with(b"/") {
        return Err(ImageError::ExecPath);
    }
    if p.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(ImageError::DotDot);
    }
    Ok(())
}

/// Why a session's image is refused.
#[derive(Debug, thiserror::Error)]
enum ImageError {
    #[error("exec path must be relative, non-empty, without NUL, at most 4096 bytes")]
    ExecPath,
    #[error("exec path must not contain '..'")]
    DotDot,
    #[error("memfd seals are {0:#x}, want write|grow|shrink|seal")]
    Seals(i32),
    #[error("descriptor is not a sealable memfd")]
    NotMemfd,
}

/// The broker accepts only a memfd sealed against every change: what runs is byte for byte
/// what the frontend validated and hashed.
fn check_sealed_memfd(fd: &OwnedFd) -> Result<(), ImageError> {
    let want = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    match fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) if SealFlag::from_bits_truncate(bits).contains(want) => Ok(()),
        Ok(bits) => Err(ImageError::Seals(bits)),
        Err(_) => Err(ImageError::NotMemfd),
    }
}
