//! Messages inside the broker: broker ↔ spawner ([`SpawnerCall`], [`SpawnReply`]),
//! session init (or debug helper) → broker ([`InitMsg`]) and broker → init ([`InitCall`]). Each travels like the
//! frontend/broker messages: one bincode body per SEQPACKET packet, descriptors by
//! `SCM_RIGHTS`, the descriptor count checked against the kind.

use bincode::{Decode, Encode};
use shared::{ExecSpec, ExitStatus, Message, RunLimits, StartSpec, Usage, WireError};
use std::os::fd::OwnedFd;

/// Most cgroup directories a session joins: v1 memory, pids, cpu, and v2's.
pub const MAX_CGROUP_DIRS: u8 = 4;

/// Broker → spawner: create a session.
#[derive(Debug)]
pub struct SpawnRequest {
    /// The session's directory name (its bundle in the store, its kept `/tmp`).
    pub dir: String,
    /// What to run.
    pub spec: StartSpec,
    /// Uid inside the broker's user namespace, or single-uid mode.
    pub ns_uid: Option<u32>,
    /// Whether a pids cgroup bounds the session (then no `RLIMIT_NPROC`).
    pub pids_cgroup: bool,
    /// What to run.
    pub image: SpawnImage,
    /// `cgroup.procs` of the session's cgroups the init joins itself (0 to
    /// [`MAX_CGROUP_DIRS`]: v1 hierarchies).
    pub cgroup_procs: Vec<OwnedFd>,
    /// The session's cgroup v2 directory, which the init is created in
    /// (`CLONE_INTO_CGROUP`).
    pub into_cgroup: Option<OwnedFd>,
}

/// What a session runs.
#[derive(Debug)]
pub enum SpawnImage {
    /// The sealed program image.
    Memfd(OwnedFd),
    /// A bundle (in the store's directory of the session): the executable relative to it.
    Bundle {
        /// The executable, relative to the bundle root.
        exec_path: Vec<u8>,
    },
}

/// Broker → spawner: everything the spawner does.
#[derive(Debug)]
pub enum SpawnerCall {
    /// Create a session.
    Session(SpawnRequest),
    /// Start gdbserver inside a session, attached to its program.
    Debug {
        /// A pidfd of the session's init (names its namespaces).
        init_pidfd: OwnedFd,
        /// The session's uid inside the broker's user namespace.
        ns_uid: Option<u32>,
        /// The program's pid inside the session.
        target: u32,
    },
    /// A session was deleted: its kept `/tmp` goes.
    DropTmp {
        /// The session's directory name.
        dir: String,
    },
    /// Start another process in a running session (EXEC).
    Exec {
        /// A pidfd of the session's init (names its namespaces).
        init_pidfd: OwnedFd,
        /// The session's uid.
        ns_uid: Option<u32>,
        /// `cgroup.procs` of the session's cgroups.
        cgroup_procs: Vec<OwnedFd>,
        /// The run's limits (rlimits).
        limits: RunLimits,
        /// Whether a pids cgroup bounds the session.
        pids_cgroup: bool,
        /// It runs a bundle (the working directory is `/bundle`, else `/tmp`).
        bundle: bool,
        /// What to run.
        spec: ExecSpec,
    },
    /// Fork a files helper for the session (GET, PUT).
    Files {
        /// The session's directory name.
        dir: String,
        /// It runs a bundle (the helper may read it).
        bundle: bool,
        /// The session's uid.
        ns_uid: Option<u32>,
        /// Size of its `/tmp` if it has none yet.
        tmp_bytes: u64,
    },
}

/// Encodable [`SpawnerCall`].
#[derive(Encode, Decode, Debug)]
pub enum SpawnerCallWire {
    /// See [`SpawnerCall::Session`].
    Session(SpawnRequestWire),
    /// See [`SpawnerCall::Debug`].
    Debug {
        /// Uid.
        ns_uid: Option<u32>,
        /// Target pid.
        target: u32,
    },
    /// See [`SpawnerCall::DropTmp`].
    DropTmp {
        /// Directory name.
        dir: String,
    },
    /// See [`SpawnerCall::Exec`]; the init's pidfd, then the cgroups' descriptors.
    Exec {
        /// Uid.
        ns_uid: Option<u32>,
        /// How many cgroup descriptors follow.
        cgroups: u8,
        /// Limits.
        limits: RunLimits,
        /// Pids cgroup.
        pids_cgroup: bool,
        /// A bundle.
        bundle: bool,
        /// What to run.
        spec: ExecSpec,
    },
    /// See [`SpawnerCall::Files`].
    Files {
        /// Directory name.
        dir: String,
        /// A bundle.
        bundle: bool,
        /// Uid.
        ns_uid: Option<u32>,
        /// Size of a new /tmp.
        tmp_bytes: u64,
    },
}

impl Message for SpawnerCall {
    type Wire = SpawnerCallWire;

    fn into_wire(self) -> (SpawnerCallWire, Vec<OwnedFd>) {
        match self {
            SpawnerCall::Session(r) => {
                let (w, fds) = r.into_wire();
                (SpawnerCallWire::Session(w), fds)
            }
            SpawnerCall::Debug { init_pidfd, ns_uid, target } => {
                (SpawnerCallWire::Debug { ns_uid, target }, vec![init_pidfd])
            }
            SpawnerCall::DropTmp { dir } => (SpawnerCallWire::DropTmp { dir }, vec![]),
            SpawnerCall::Exec { init_pidfd, ns_uid, cgroup_procs, limits, pids_cgroup, bundle, spec } => {
                let cgroups = cgroup_procs.len() as u8;
                let mut fds = vec![init_pidfd];
                fds.extend(cgroup_procs);
                (SpawnerCallWire::Exec { ns_uid, cgroups, limits, pids_cgroup, bundle, spec }, fds)
            }
            SpawnerCall::Files { dir, bundle, ns_uid, tmp_bytes } => {
                (SpawnerCallWire::Files { dir, bundle, ns_uid, tmp_bytes }, vec![])
            }
        }
    }

    fn from_wire(w: SpawnerCallWire, fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        match w {
            SpawnerCallWire::Session(r) => Ok(SpawnerCall::Session(SpawnRequest::from_wire(r, fds)?)),
            SpawnerCallWire::Debug { ns_uid, target } => {
                let got = fds.len();
                let [init_pidfd] = <[OwnedFd; 1]>::try_from(fds).map_err(|_| WireError::FdCount {
                    kind: "debug",
                    expected: 1,
                    got,
                })?;
                Ok(SpawnerCall::Debug { init_pidfd, ns_uid, target })
            }
            SpawnerCallWire::DropTmp { dir } => {
                if !fds.is_empty() {
                    return Err(WireError::FdCount { kind: "drop tmp", expected: 0, got: fds.len() });
                }
                Ok(SpawnerCall::DropTmp { dir })
            }
            SpawnerCallWire::Exec { ns_uid, cgroups, limits, pids_cgroup, bundle, spec } => {
                let expected = 1 + usize::from(cgroups.min(MAX_CGROUP_DIRS));
                if cgroups > MAX_CGROUP_DIRS || fds.len() != expected {
                    return Err(WireError::FdCount { kind: "exec", expected, got: fds.len() });
                }
                let mut fds = fds;
                let init_pidfd = fds.remove(0);
                Ok(SpawnerCall::Exec { init_pidfd, ns_uid, cgroup_procs: fds, limits, pids_cgroup, bundle, spec })
            }
            SpawnerCallWire::Files { dir, bundle, ns_uid, tmp_bytes } => {
                if !fds.is_empty() {
                    return Err(WireError::FdCount { kind: "files", expected: 0, got: fds.len() });
                }
                Ok(SpawnerCall::Files { dir, bundle, ns_uid, tmp_bytes })
            }
        }
    }
}

/// Spawner → broker.
#[derive(Debug)]
pub enum SpawnReply {
    /// The session's init runs.
    Spawned {
        /// Its pidfd.
        init_pidfd: OwnedFd,
        /// The broker's end of the init's control socket.
        ctl: OwnedFd,
        /// Read end of stdout.
        stdout: OwnedFd,
        /// Read end of stderr.
        stderr: OwnedFd,
        /// Write end of stdin.
        stdin: OwnedFd,
    },
    /// gdbserver runs in the session, attached.
    Debugging {
        /// Its pidfd.
        gdb_pidfd: OwnedFd,
        /// The frontend's end of gdbserver's stdio (a stream socket).
        sock: OwnedFd,
    },
    /// Nothing was created.
    Failed {
        /// Why.
        message: String,
    },
    /// Done, nothing to hand over (DropTmp).
    Done,
    /// A files helper runs; `sock` is the frontend's end of its socketpair.
    Files {
        /// The frontend's end.
        sock: OwnedFd,
    },
    /// An exec helper runs (it reports like an init: Running, Failed, Exited).
    Exec {
        /// Its pidfd.
        helper_pidfd: OwnedFd,
        /// The broker's end of its control socket.
        ctl: OwnedFd,
        /// Read end of stdout.
        stdout: OwnedFd,
        /// Read end of stderr.
        stderr: OwnedFd,
        /// Write end of stdin.
        stdin: OwnedFd,
    },
}

/// Encodable [`SpawnRequest`].
#[derive(Encode, Decode, Debug)]
pub struct SpawnRequestWire {
    dir: String,
    spec: StartSpec,
    ns_uid: Option<u32>,
    pids_cgroup: bool,
    /// `None`: a memfd comes as the first descriptor; else a bundle's exec path.
    bundle: Option<Vec<u8>>,
    cgroups: u8,
    /// A cgroup v2 directory comes after the memfd.
    into_cgroup: bool,
}

/// Encodable [`SpawnReply`].
#[derive(Encode, Decode, Debug)]
pub enum SpawnReplyWire {
    /// See [`SpawnReply::Spawned`].
    Spawned,
    /// See [`SpawnReply::Debugging`].
    Debugging,
    /// See [`SpawnReply::Failed`].
    Failed {
        /// Why.
        message: String,
    },
    /// See [`SpawnReply::Done`].
    Done,
    /// See [`SpawnReply::Files`].
    Files,
    /// See [`SpawnReply::Exec`].
    Exec,
}

impl Message for SpawnRequest {
    type Wire = SpawnRequestWire;

    fn into_wire(self) -> (SpawnRequestWire, Vec<OwnedFd>) {
        let cgroups = self.cgroup_procs.len() as u8;
        let (bundle, mut fds) = match self.image {
            SpawnImage::Memfd(fd) => (None, vec![fd]),
            SpawnImage::Bundle { exec_path } => (Some(exec_path), vec![]),
        };
        let into_cgroup = self.into_cgroup.is_some();
        fds.extend(self.into_cgroup);
        fds.extend(self.cgroup_procs);
        let w = SpawnRequestWire {
            dir: self.dir,
            spec: self.spec,
            ns_uid: self.ns_uid,
            pids_cgroup: self.pids_cgroup,
            bundle,
            cgroups,
            into_cgroup,
        };
        (w, fds)
    }

    fn from_wire(w: SpawnRequestWire, mut fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        let expected =
            usize::from(w.bundle.is_none()) + usize::from(w.into_cgroup) + usize::from(w.cgroups.min(MAX_CGROUP_DIRS));
        if w.cgroups > MAX_CGROUP_DIRS || fds.len() != expected {
            return Err(WireError::FdCount { kind: "spawn", expected, got: fds.len() });
        }
        let image = match w.bundle {
            None => SpawnImage::Memfd(fds.remove(0)),
            Some(exec_path) => SpawnImage::Bundle { exec_path },
        };
        let into_cgroup = w.into_cgroup.then(|| fds.remove(0));
        Ok(SpawnRequest {
            dir: w.dir,
            spec: w.spec,
            ns_uid: w.ns_uid,
            pids_cgroup: w.pids_cgroup,
            image,
            cgroup_procs: fds,
            into_cgroup,
        })
    }
}

impl Message for SpawnReply {
    type Wire = SpawnReplyWire;

    fn into_wire(self) -> (SpawnReplyWire, Vec<OwnedFd>) {
        match self {
            SpawnReply::Spawned { init_pidfd, ctl, stdout, stderr, stdin } => {
                (SpawnReplyWire::Spawned, vec![init_pidfd, ctl, stdout, stderr, stdin])
            }
            SpawnReply::Debugging { gdb_pidfd, sock } => (SpawnReplyWire::Debugging, vec![gdb_pidfd, sock]),
            SpawnReply::Failed { message } => (SpawnReplyWire::Failed { message }, vec![]),
            SpawnReply::Done => (SpawnReplyWire::Done, vec![]),
            SpawnReply::Files { sock } => (SpawnReplyWire::Files, vec![sock]),
            SpawnReply::Exec { helper_pidfd, ctl, stdout, stderr, stdin } => {
                (SpawnReplyWire::Exec, vec![helper_pidfd, ctl, stdout, stderr, stdin])
            }
        }
    }

    fn from_wire(w: SpawnReplyWire, fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        match w {
            SpawnReplyWire::Spawned => {
                let got = fds.len();
                let [init_pidfd, ctl, stdout, stderr, stdin] = <[OwnedFd; 5]>::try_from(fds)
                    .map_err(|_| WireError::FdCount { kind: "spawned", expected: 5, got })?;
                Ok(SpawnReply::Spawned { init_pidfd, ctl, stdout, stderr, stdin })
            }
            SpawnReplyWire::Debugging => {
                let got = fds.len();
                let [gdb_pidfd, sock] = <[OwnedFd; 2]>::try_from(fds).map_err(|_| WireError::FdCount {
                    kind: "debugging",
                    expected: 2,
                    got,
                })?;
                Ok(SpawnReply::Debugging { gdb_pidfd, sock })
            }
            SpawnReplyWire::Failed { message } => {
                if !fds.is_empty() {
                    return Err(WireError::FdCount { kind: "spawn failed", expected: 0, got: fds.len() });
                }
                Ok(SpawnReply::Failed { message })
            }
            SpawnReplyWire::Done => {
                if !fds.is_empty() {
                    return Err(WireError::FdCount { kind: "done", expected: 0, got: fds.len() });
                }
                Ok(SpawnReply::Done)
            }
            SpawnReplyWire::Exec => {
                let got = fds.len();
                let [helper_pidfd, ctl, stdout, stderr, stdin] =
                    <[OwnedFd; 5]>::try_from(fds).map_err(|_| WireError::FdCount { kind: "exec", expected: 5, got })?;
                Ok(SpawnReply::Exec { helper_pidfd, ctl, stdout, stderr, stdin })
            }
            SpawnReplyWire::Files => {
                let got = fds.len();
                let [sock] = <[OwnedFd; 1]>::try_from(fds).map_err(|_| WireError::FdCount {
                    kind: "files",
                    expected: 1,
                    got,
                })?;
                Ok(SpawnReply::Files { sock })
            }
        }
    }
}

/// Messages from a session's init to the broker.
#[derive(Debug)]
pub enum InitMsg {
    /// The program was exec'd.
    Running {
        /// Its pid inside the session's namespace.
        ns_pid: u32,
        /// A pidfd for it.
        pidfd: OwnedFd,
        /// The master of its terminal, when it runs on one.
        tty: Option<OwnedFd>,
        /// START --debug: the gdbserver that launched the program, held at its entry.
        debugger: Option<Launched>,
    },
    /// Setup or exec failed; the run never started.
    Failed {
        /// What failed, for the user.
        message: String,
    },
    /// The program asked for could not be executed (missing, not executable, a missing
    /// interpreter): the asker's mistake, not the rig's (exec helpers).
    NotExecuted {
        /// Why, naming the program.
        message: String,
    },
    /// The program exited and everything was reaped.
    Exited {
        /// The program's status.
        status: ExitStatus,
        /// The whole tree's resource use.
        usage: Usage,
        /// What the run touched (START `observe`): a sealed memfd holding the record.
        observed: Option<OwnedFd>,
        /// The core dump `usage.core` describes, a sealed memfd.
        core: Option<OwnedFd>,
    },
    /// It traces nothing of the tree any more (the answer to [`InitCall::Release`]): a
    /// debugger may attach.
    Released,
}

/// A gdbserver that launched the session's program (START --debug).
#[derive(Debug)]
pub struct Launched {
    /// gdbserver's pidfd.
    pub pidfd: OwnedFd,
    /// Its remote-protocol stdio (the other end is gdbserver's fds 0 and 1).
    pub sock: OwnedFd,
}

impl InitMsg {
    /// The answer to the START or EXEC of a program that never ran (`None` for the
    /// messages of one that did).
    pub fn refusal(self) -> Option<shared::Reply> {
        let (refusal, message) = match self {
            InitMsg::Failed { message } => (shared::Refusal::Internal, message),
            InitMsg::NotExecuted { message } => (shared::Refusal::BadRequest, message),
            InitMsg::Running { .. } | InitMsg::Exited { .. } | InitMsg::Released => return None,
        };
        Some(shared::Reply::Refused { refusal, message })
    }
}

/// Encodable form of [`InitMsg`].
#[derive(bincode::Encode, bincode::Decode, Debug)]
pub enum InitWire {
    /// See [`InitMsg::Running`].
    Running {
        /// Pid in the session namespace.
        ns_pid: u32,
        /// A terminal's master follows the pidfd.
        tty: bool,
        /// gdbserver's pidfd and socket follow.
        debugger: bool,
    },
    /// See [`InitMsg::Failed`].
    Failed {
        /// Reason.
        message: String,
    },
    /// See [`InitMsg::NotExecuted`].
    NotExecuted {
        /// Reason.
        message: String,
    },
    /// See [`InitMsg::Exited`].
    Exited {
        /// Status.
        status: ExitStatus,
        /// Usage.
        usage: Usage,
        /// A memfd follows.
        observed: bool,
        /// A core's memfd follows (`usage.core` says what it holds).
        core: bool,
    },
    /// See [`InitMsg::Released`].
    Released,
}

impl Message for InitMsg {
    type Wire = InitWire;

    fn into_wire(self) -> (InitWire, Vec<OwnedFd>) {
        match self {
            InitMsg::Running { ns_pid, pidfd, tty, debugger } => {
                let wire = InitWire::Running { ns_pid, tty: tty.is_some(), debugger: debugger.is_some() };
                let mut fds = vec![pidfd];
                fds.extend(tty);
                if let Some(d) = debugger {
                    fds.extend([d.pidfd, d.sock]);
                }
                (wire, fds)
            }
            InitMsg::Failed { message } => (InitWire::Failed { message }, vec![]),
            InitMsg::NotExecuted { message } => (InitWire::NotExecuted { message }, vec![]),
            InitMsg::Exited { status, usage, observed, core } => (
                InitWire::Exited { status, usage, observed: observed.is_some(), core: core.is_some() },
                observed.into_iter().chain(core).collect(),
            ),
            InitMsg::Released => (InitWire::Released, vec![]),
        }
    }

    fn from_wire(wire: InitWire, fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        let expected = match &wire {
            InitWire::Running { tty, debugger, .. } => 1 + usize::from(*tty) + 2 * usize::from(*debugger),
            InitWire::Exited { observed, core, .. } => usize::from(*observed) + usize::from(*core),
            _ => 0,
        };
        if fds.len() != expected {
            return Err(WireError::FdCount { kind: "init", expected, got: fds.len() });
        }
        Ok(match wire {
            InitWire::Running { ns_pid, tty, debugger } => {
                let mut fds = fds.into_iter();
                let mut next = || fds.next().expect("counted above");
                let pidfd = next();
                let master = tty.then(&mut next);
                let debugger = debugger.then(|| Launched { pidfd: next(), sock: next() });
                InitMsg::Running { ns_pid, pidfd, tty: master, debugger }
            }
            InitWire::Failed { message } => InitMsg::Failed { message },
            InitWire::NotExecuted { message } => InitMsg::NotExecuted { message },
            InitWire::Exited { status, usage, observed, core } => {
                if core != usage.core.is_some() {
                    return Err(WireError::Combination("a core without its description, or the other way round"));
                }
                let mut fds = fds.into_iter();
                let observed = if observed { fds.next() } else { None };
                let core = if core { fds.next() } else { None };
                InitMsg::Exited { status, usage, observed, core }
            }
            InitWire::Released => InitMsg::Released,
        })
    }
}

/// Broker → a session's init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum InitCall {
    /// Send this signal to the program's process group (1..=64).
    Signal(i32),
    /// Stop tracing the tree (a debugger is about to attach to the program); answered
    /// with [`InitMsg::Released`].
    Release,
}

impl Message for InitCall {
    type Wire = InitCall;

    fn into_wire(self) -> (InitCall, Vec<OwnedFd>) {
        (self, vec![])
    }

    fn from_wire(wire: InitCall, fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        if !fds.is_empty() {
            return Err(WireError::FdCount { kind: "init call", expected: 0, got: fds.len() });
        }
        Ok(wire)
    }
}

/// Why the spawner did not carry out a request; the broker passes the message on.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The request itself cannot be carried out (bad argv, bad names, no gdbserver).
    #[error("{0}")]
    Refused(String),
    /// A system call failed.
    #[error("{what}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A helper reported why it failed.
    #[error("{0}")]
    Helper(String),
}

/// `map_err` for a failed system call.
pub fn sys_err(what: &'static str) -> impl FnOnce(nix::Error) -> SpawnError {
    move |source| SpawnError::Sys { what, source }
}
