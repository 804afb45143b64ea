//! Messages between the frontend (unprivileged, network-facing) and the broker (owner of
//! sessions). Every message is one bincode-encoded [`Envelope`] per SEQPACKET packet, with
//! its file descriptors attached. Descriptors never appear as integers in the encoded body:
//! each message kind declares how many it carries, and [`Message::from_wire`] refuses a
//! packet whose descriptor count does not match exactly.

use bincode::{Decode, Encode};
use std::os::fd::OwnedFd;

/// First bytes of the hello exchanged by both halves.
pub const MAGIC: [u8; 8] = *b"DBGLNTRN";
/// Version of the frontend/broker protocol. Both halves come from one build; a mismatch
/// means a stale binary, and both refuse to go on.
pub const WIRE_VERSION: u32 = 2;
/// Largest encoded message, in bytes. Checked before decoding.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 8;

/// A session's identity: the 16 bytes of its UUID.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// The name of the session's bundle directory: the UUID, lowercase, hyphenated.
    pub fn dir_name(&self) -> String {
        let h: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }
}

/// Resource limits applied to one run. Zero means "no limit of this kind".
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunLimits {
    /// `RLIMIT_CPU`, seconds.
    pub cpu_seconds: u64,
    /// `RLIMIT_AS`, bytes.
    pub address_space: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_NPROC` (per session uid).
    pub processes: u64,
    /// Size of the session's private `/tmp`, bytes.
    pub tmp_bytes: u64,
    /// Memory of the whole session (cgroup), bytes.
    pub memory_bytes: u64,
    /// Wall-clock seconds of the run (the broker kills it then).
    pub wall_seconds: u64,
    /// CPU bandwidth of the whole session (cgroup `cpu.max` / `cpu.cfs_quota_us`), in
    /// thousandths of a CPU; 0 = none.
    pub cpu_millis: u64,
    /// Largest core dump kept of a process of the session that dies of a core-dumping
    /// signal, bytes. Unlike the others, 0 means none: no core is taken (and nothing is
    /// traced).
    pub core_bytes: u64,
}

/// A cgroup limit that a run ran into.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// The memory cgroup's OOM killer killed a process of the session.
    Memory,
    /// A fork failed at the session's pids limit.
    Pids,
    /// The run's wall-clock limit passed; the broker killed it.
    Wall,
}

/// A terminal's size.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Winsize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What to run for a `Start`.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq)]
pub struct StartSpec {
    /// Full argv, `argv[0]` included. Each element is free of NUL bytes.
    pub argv: Vec<Vec<u8>>,
    /// Full environment as `KEY=VALUE` byte strings.
    pub env: Vec<Vec<u8>>,
    /// Limits for this run.
    pub limits: RunLimits,
    /// Stop the program at its entry point, for a debugger to attach (START --debug).
    pub debug: bool,
    /// Note every `exit_group` of the tree for the receipt (costs a round trip to the init
    /// per process exit).
    pub list_processes: bool,
    /// Run the program on a terminal of its session (its stdin, stdout and stderr, and its
    /// controlling terminal), of this size.
    pub tty: Option<Winsize>,
    /// Keep the session's `/tmp` of the last run (else it starts empty).
    pub keep_tmp: bool,
    /// What the session's init records of the calls the tree makes.
    pub observe: crate::observe::Observe,
}

/// What to run for an `Exec` (another process in a running session).
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Full argv; `argv[0]` is the path of the program in the session's view.
    pub argv: Vec<Vec<u8>>,
    /// Full environment.
    pub env: Vec<Vec<u8>>,
    /// On a terminal of the session, of this size.
    pub tty: Option<Winsize>,
}

/// How a run ended.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// The program called `exit(code)`.
    Code(i32),
    /// The program was killed by this signal.
    Signal(i32),
}

/// Resources a run's whole process tree used (from `getrusage(RUSAGE_CHILDREN)` in the
/// session's init, after everything was reaped).
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct Usage {
    /// User CPU time, microseconds.
    pub user_us: u64,
    /// System CPU time, microseconds.
    pub sys_us: u64,
    /// Largest resident set of any process of the tree, KiB.
    pub max_rss_kib: u64,
    /// Processes the run created (the program and everything it forked), read from the
    /// session's fresh PID namespace, where pids are handed out from 1 (the init).
    pub processes: u64,
    /// The processes of the tree that ended with `exit_group`, in the order they ended (at
    /// most [`MAX_SPANS`]; a process killed by a signal never calls it).
    pub tree: Vec<ProcSpan>,
    /// Exits beyond [`MAX_SPANS`], counted only.
    pub tree_dropped: u32,
    /// The session's `/tmp` when the run ended.
    pub tmp: TmpUsage,
    /// What the session's cgroups counted (the broker fills it in at the end).
    pub cgroup: Option<CgroupUsage>,
    /// The core dump the init took of the last process of the tree that died of a
    /// core-dumping signal (its memfd travels beside the message).
    pub core: Option<Box<CoreMeta>>,
}

/// A core dump the session's init wrote (an ELF core file in a sealed memfd).
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct CoreMeta {
    /// Its size, bytes.
    pub bytes: u64,
    /// sha256 of its bytes, as the init wrote them.
    pub sha256: [u8; 32],
    /// The signal the process died of.
    pub signal: i32,
    /// The process (thread group) in the session's PID namespace.
    pub pid: u32,
    /// Its name (`comm`).
    pub comm: String,
    /// Its threads, each with its registers in the core.
    pub threads: u32,
    /// The size limit cut memory out of it (the stacks come first).
    pub truncated: bool,
}

/// A run's counters from its cgroups (v2 `memory.peak`, `cpu.stat`; v1 the equivalents).
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupUsage {
    /// Most memory the whole session held at once, bytes.
    pub memory_peak_bytes: Option<u64>,
    /// CPU time of the whole session, microseconds.
    pub cpu_usage_usec: Option<u64>,
    /// Time the session was held back by its CPU limit, microseconds.
    pub cpu_throttled_usec: Option<u64>,
}

/// Most files of `/tmp` a run's end lists (the message stays under 64 KiB).
pub const MAX_TMP_FILES: usize = 64;
/// Longest path of a listed file (longer ones are cut).
pub const MAX_TMP_PATH: usize = 200;

/// What a run left in its session's `/tmp`.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct TmpUsage {
    /// Bytes in use.
    pub used_bytes: u64,
    /// Its size (the run's `tmp_bytes`).
    pub size_bytes: u64,
    /// Regular files, depth first, at most [`MAX_TMP_FILES`].
    pub files: Vec<TmpFile>,
    /// Files beyond those, counted only.
    pub unlisted: u32,
}

/// One file left in `/tmp`.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct TmpFile {
    /// Its path in the session (`/tmp/...`).
    pub path: String,
    /// Its size.
    pub size: u64,
}

/// Most process spans one run reports (they travel in one message of at most 64 KiB).
pub const MAX_SPANS: usize = 512;

/// One process of a session's tree, from its start to its `exit_group`.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcSpan {
    /// Its pid in the session (the program is 2).
    pub pid: u32,
    /// Its parent's pid in the session (1 = the init, for orphans and the program).
    pub ppid: u32,
    /// Its command name (`comm`, at most 15 bytes).
    pub comm: String,
    /// Start, microseconds since the Unix epoch (the kernel keeps it in clock ticks: 10 ms).
    pub start_us: u64,
    /// `exit_group`, microseconds since the Unix epoch.
    pub end_us: u64,
    /// The status it passed to `exit_group`.
    pub code: i32,
}

/// Error kinds the broker reports; the frontend maps them to control-protocol codes.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such session in the broker.
    NotFound,
    /// The session is not in a state that allows this.
    InvalidState,
    /// The request was well-formed but its content was refused (bad fd, bad argv).
    BadRequest,
    /// A broker-side limit was reached.
    LimitReached,
    /// The broker failed to do what was asked (spawn failure and the like).
    Internal,
    /// The rig lacks what this needs (e.g. gdbserver).
    Unsupported,
}

/// Frontend → broker.
#[derive(Debug)]
pub enum Request {
    /// First message: who we are.
    Hello {
        /// Must be [`MAGIC`].
        magic: [u8; 8],
        /// Must be [`WIRE_VERSION`].
        version: u32,
    },
    /// Take ownership of a sealed memfd holding a validated binary.
    Load {
        /// New session.
        id: SessionId,
        /// The sealed memfd (`F_SEAL_WRITE|F_SEAL_GROW|F_SEAL_SHRINK|F_SEAL_SEAL`).
        memfd: OwnedFd,
    },
    /// Register a bundle the frontend extracted into the store's directory named by the
    /// session id (lowercase hyphenated UUID); `exec_path` is relative to it.
    LoadBundle {
        /// New session.
        id: SessionId,
        /// The executable, relative to the bundle root.
        exec_path: Vec<u8>,
    },
    /// Run a loaded session.
    Start {
        /// Session to run.
        id: SessionId,
        /// What to run.
        spec: StartSpec,
    },
    /// SIGTERM the session's tree, SIGKILL after `grace_ms`.
    Stop {
        /// Session to stop.
        id: SessionId,
        /// Grace period before SIGKILL.
        grace_ms: u64,
    },
    /// SIGKILL the session's tree.
    Kill {
        /// Session to kill.
        id: SessionId,
    },
    /// Send a signal to the program's process group (an attached client's Ctrl-C), or to
    /// an exec'd process.
    Signal {
        /// Session.
        id: SessionId,
        /// An exec of the session instead of its program.
        exec: Option<u32>,
        /// The signal, 1..=64.
        sig: i32,
    },
    /// Start another process in the session's running namespaces (`EXEC`).
    Exec {
        /// Session.
        id: SessionId,
        /// What to run.
        spec: ExecSpec,
    },
    /// Attach gdbserver (in the session's namespaces, as its uid) to the running program.
    Debug {
        /// Session to debug.
        id: SessionId,
    },
    /// The debugger of a session left without detaching: gdbserver was asked to detach
    /// the program; kill gdbserver if it has not exited within `grace_ms` (0 once it has
    /// detached: after a detach, gdbserver only waits for its child to end).
    DebugRelease {
        /// The session.
        id: SessionId,
        /// How long gdbserver may take.
        grace_ms: u32,
    },
    /// A files helper for the session's `/tmp` and bundle (GET, PUT); `tmp_bytes`: the
    /// size of its `/tmp` if it has none yet.
    Files {
        /// Session.
        id: SessionId,
        /// Size of a new `/tmp`.
        tmp_bytes: u64,
    },
    /// Kill if running, then forget the session and close its memfd.
    Delete {
        /// Session to delete.
        id: SessionId,
    },
    /// Stop everything (SIGTERM, SIGKILL after `grace_ms`) and exit.
    Shutdown {
        /// Grace period before SIGKILL.
        grace_ms: u64,
    },
}

/// Broker → frontend. Replies echo the tag of their request; events carry tag 0.
#[derive(Debug)]
pub enum Reply {
    /// Answer to [`Request::Hello`].
    Hello {
        /// Must be [`MAGIC`].
        magic: [u8; 8],
        /// Must be [`WIRE_VERSION`].
        version: u32,
        /// What the broker could not set up (degraded host).
        warnings: Vec<String>,
    },
    /// A session's init was created (event, tag 0); `Started` follows when its setup is
    /// done, or the START is refused.
    Spawned {
        /// The session.
        id: SessionId,
    },
    /// The memfd was accepted.
    Loaded {
        /// The session.
        id: SessionId,
    },
    /// The session runs.
    Started {
        /// The session.
        id: SessionId,
        /// The program's pid inside the session's PID namespace.
        ns_pid: u32,
        /// A pidfd of the program (the frontend reads its host pid from fdinfo, then closes it).
        pidfd: OwnedFd,
        /// Read end of the program's stdout; on a terminal, the terminal's master.
        stdout: OwnedFd,
        /// Read end of the program's stderr (none on a terminal: it writes to stdout's).
        stderr: Option<OwnedFd>,
        /// Write end of the program's stdin; on a terminal, the master again.
        stdin: OwnedFd,
        /// START --debug: the stdio of the gdbserver that launched the program, held at
        /// its entry (the gdb remote protocol, a stream socket).
        debug: Option<OwnedFd>,
    },
    /// gdbserver is attached; `sock` carries the gdb remote protocol (a stream socket).
    Debugging {
        /// The session.
        id: SessionId,
        /// The frontend's end of gdbserver's stdio.
        sock: OwnedFd,
    },
    /// An exec'd process runs.
    ExecStarted {
        /// The session.
        id: SessionId,
        /// Its number in the session.
        exec: u32,
        /// Its pid in the session.
        ns_pid: u32,
        /// Read end of its stdout (a terminal's master).
        stdout: OwnedFd,
        /// Read end of its stderr (none on a terminal).
        stderr: Option<OwnedFd>,
        /// Write end of its stdin (the terminal's master).
        stdin: OwnedFd,
    },
    /// An exec'd process ended (event, tag 0).
    ExecExited {
        /// The session.
        id: SessionId,
        /// Its number.
        exec: u32,
        /// How.
        status: ExitStatus,
    },
    /// A files helper runs for the session; `sock` speaks [`crate::files`].
    Files {
        /// The session.
        id: SessionId,
        /// The frontend's end of the helper's socketpair.
        sock: OwnedFd,
    },
    /// gdbserver of a session exited (event, tag 0): gdb detached or disconnected.
    DebugEnded {
        /// The session.
        id: SessionId,
    },
    /// A run ended (event, tag 0). Sent once per run, after everything in it was reaped.
    Exited {
        /// The session.
        id: SessionId,
        /// How the program ended.
        status: ExitStatus,
        /// What the tree used.
        usage: Usage,
        /// A cgroup limit the run ran into.
        limit_hit: Option<LimitHit>,
        /// What the run touched (START `observe`): a sealed memfd with the encoded record
        /// (`crate::observe::Observed`), written by the session's init: untrusted.
        observed: Option<OwnedFd>,
        /// The core dump `usage.core` describes: a sealed memfd written by the init.
        core: Option<OwnedFd>,
    },
    /// The session is gone.
    Deleted {
        /// The session.
        id: SessionId,
    },
    /// A request was accepted and is in progress (Stop: the grace period runs).
    Accepted {
        /// The session.
        id: SessionId,
    },
    /// A request was refused.
    Refused {
        /// The kind of refusal.
        refusal: Refusal,
        /// Human-readable reason, lowercase.
        message: String,
    },
}

/// An encoded message: the tag, and the body without its descriptors.
#[derive(Encode, Decode, Debug)]
pub struct Envelope<W> {
    /// Correlates a reply with its request; 0 for events.
    pub tag: u64,
    /// The body.
    pub body: W,
}

/// Errors turning a wire body plus descriptors into a typed message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The packet carried a different number of descriptors than its kind requires.
    #[error("message {kind} needs {expected} file descriptors, got {got}")]
    FdCount {
        /// Message kind.
        kind: &'static str,
        /// Descriptors this kind carries.
        expected: usize,
        /// Descriptors that came.
        got: usize,
    },
    /// The body asks for something no message of its kind can be.
    #[error("message {0} is not a valid combination")]
    Combination(&'static str),
}

/// A message that can be split into an encodable body and its descriptors.
pub trait Message: Sized {
    /// The encodable body.
    type Wire: Encode + Decode<()>;
    /// Splits into body and descriptors.
    fn into_wire(self) -> (Self::Wire, Vec<OwnedFd>);
    /// Joins body and descriptors, checking the descriptor count.
    fn from_wire(wire: Self::Wire, fds: Vec<OwnedFd>) -> Result<Self, WireError>;
}

/// Encodable form of [`Request`].
#[allow(missing_docs)]
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq)]
pub enum RequestWire {
    Hello { magic: [u8; 8], version: u32 },
    Load { id: SessionId },
    LoadBundle { id: SessionId, exec_path: Vec<u8> },
    Start { id: SessionId, spec: StartSpec },
    Stop { id: SessionId, grace_ms: u64 },
    Kill { id: SessionId },
    Signal { id: SessionId, exec: Option<u32>, sig: i32 },
    Exec { id: SessionId, spec: ExecSpec },
    Debug { id: SessionId },
    DebugRelease { id: SessionId, grace_ms: u32 },
    Files { id: SessionId, tmp_bytes: u64 },
    Delete { id: SessionId },
    Shutdown { grace_ms: u64 },
}

/// Encodable form of [`Reply`].
#[allow(missing_docs)]
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq)]
pub enum ReplyWire {
    Hello { magic: [u8; 8], version: u32, warnings: Vec<String> },
    Loaded { id: SessionId },
    Spawned { id: SessionId },
    Started { id: SessionId, ns_pid: u32, tty: bool, debug: bool },
    Debugging { id: SessionId },
    Files { id: SessionId },
    ExecStarted { id: SessionId, exec: u32, ns_pid: u32, tty: bool },
    ExecExited { id: SessionId, exec: u32, status: ExitStatus },
    DebugEnded { id: SessionId },
    Exited { id: SessionId, status: ExitStatus, usage: Usage, limit_hit: Option<LimitHit>, observed: bool, core: bool },
    Deleted { id: SessionId },
    Accepted { id: SessionId },
    Refused { refusal: Refusal, message: String },
}

fn take_fds<const N: usize>(kind: &'static str, fds: Vec<OwnedFd>) -> Result<[OwnedFd; N], WireError> {
    let got = fds.len();
    <[OwnedFd; N]>::try_from(fds).map_err(|_| WireError::FdCount { kind, expected: N, got })
}

impl Message for Request {
    type Wire = RequestWire;

    fn into_wire(self) -> (RequestWire, Vec<OwnedFd>) {
        match self {
            Request::Hello { magic, version } => (RequestWire::Hello { magic, version }, vec![]),
            Request::Load { id, memfd } => (RequestWire::Load { id }, vec![memfd]),
            Request::LoadBundle { id, exec_path } => (RequestWire::LoadBundle { id, exec_path }, vec![]),
            Request::Start { id, spec } => (RequestWire::Start { id, spec }, vec![]),
            Request::Stop { id, grace_ms } => (RequestWire::Stop { id, grace_ms }, vec![]),
            Request::Kill { id } => (RequestWire::Kill { id }, vec![]),
            Request::Signal { id, exec, sig } => (RequestWire::Signal { id, exec, sig }, vec![]),
            Request::Exec { id, spec } => (RequestWire::Exec { id, spec }, vec![]),
            Request::Debug { id } => (RequestWire::Debug { id }, vec![]),
            Request::DebugRelease { id, grace_ms } => (RequestWire::DebugRelease { id, grace_ms }, vec![]),
            Request::Files { id, tmp_bytes } => (RequestWire::Files { id, tmp_bytes }, vec![]),
            Request::Delete { id } => (RequestWire::Delete { id }, vec![]),
            Request::Shutdown { grace_ms } => (RequestWire::Shutdown { grace_ms }, vec![]),
        }
    }

    fn from_wire(wire: RequestWire, fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        Ok(match wire {
            RequestWire::Hello { magic, version } => {
                let [] = take_fds("hello", fds)?;
                Request::Hello { magic, version }
            }
            RequestWire::Load { id } => {
                let [memfd] = take_fds("load", fds)?;
                Request::Load { id, memfd }
            }
            RequestWire::LoadBundle { id, exec_path } => {
                let [] = take_fds("load bundle", fds)?;
                Request::LoadBundle { id, exec_path }
            }
            RequestWire::Start { id, spec } => {
                let [] = take_fds("start", fds)?;
                Request::Start { id, spec }
            }
            RequestWire::Stop { id, grace_ms } => {
                let [] = take_fds("stop", fds)?;
                Request::Stop { id, grace_ms }
            }
            RequestWire::Kill { id } => {
                let [] = take_fds("kill", fds)?;
                Request::Kill { id }
            }
            RequestWire::Signal { id, exec, sig } => {
                let [] = take_fds("signal", fds)?;
                Request::Signal { id, exec, sig }
            }
            RequestWire::Exec { id, spec } => {
                let [] = take_fds("exec", fds)?;
                Request::Exec { id, spec }
            }
            RequestWire::Debug { id } => {
                let [] = take_fds("debug", fds)?;
                Request::Debug { id }
            }
            RequestWire::DebugRelease { id, grace_ms } => {
                let [] = take_fds("debug release", fds)?;
                Request::DebugRelease { id, grace_ms }
            }
            RequestWire::Files { id, tmp_bytes } => {
                let [] = take_fds("files", fds)?;
                Request::Files { id, tmp_bytes }
            }
            RequestWire::Delete { id } => {
                let [] = take_fds("delete", fds)?;
                Request::Delete { id }
            }
            RequestWire::Shutdown { grace_ms } => {
                let [] = take_fds("shutdown", fds)?;
                Request::Shutdown { grace_ms }
            }
        })
    }
}

impl Message for Reply {
    type Wire = ReplyWire;

    fn into_wire(self) -> (ReplyWire, Vec<OwnedFd>) {
        match self {
            Reply::Hello { magic, version, warnings } => (ReplyWire::Hello { magic, version, warnings }, vec![]),
            Reply::Loaded { id } => (ReplyWire::Loaded { id }, vec![]),
            Reply::Spawned { id } => (ReplyWire::Spawned { id }, vec![]),
            Reply::Debugging { id, sock } => (ReplyWire::Debugging { id }, vec![sock]),
            Reply::Files { id, sock } => (ReplyWire::Files { id }, vec![sock]),
            Reply::ExecStarted { id, exec, ns_pid, stdout, stderr, stdin } => match stderr {
                Some(e) => (ReplyWire::ExecStarted { id, exec, ns_pid, tty: false }, vec![stdout, e, stdin]),
                None => (ReplyWire::ExecStarted { id, exec, ns_pid, tty: true }, vec![stdout, stdin]),
            },
            Reply::ExecExited { id, exec, status } => (ReplyWire::ExecExited { id, exec, status }, vec![]),
            Reply::DebugEnded { id } => (ReplyWire::DebugEnded { id }, vec![]),
            Reply::Started { id, ns_pid, pidfd, stdout, stderr, stdin, debug } => {
                let wire = ReplyWire::Started { id, ns_pid, tty: stderr.is_none(), debug: debug.is_some() };
                let mut fds = vec![pidfd, stdout];
                fds.extend(stderr);
                fds.push(stdin);
                fds.extend(debug);
                (wire, fds)
            }
            Reply::Exited { id, status, usage, limit_hit, observed, core } => (
                ReplyWire::Exited { id, status, usage, limit_hit, observed: observed.is_some(), core: core.is_some() },
                observed.into_iter().chain(core).collect(),
            ),
            Reply::Deleted { id } => (ReplyWire::Deleted { id }, vec![]),
            Reply::Accepted { id } => (ReplyWire::Accepted { id }, vec![]),
            Reply::Refused { refusal, message } => (ReplyWire::Refused { refusal, message }, vec![]),
        }
    }

    fn from_wire(wire: ReplyWire, fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        Ok(match wire {
            ReplyWire::Hello { magic, version, warnings } => {
                let [] = take_fds("hello", fds)?;
                Reply::Hello { magic, version, warnings }
            }
            ReplyWire::Loaded { id } => {
                let [] = take_fds("loaded", fds)?;
                Reply::Loaded { id }
            }
            ReplyWire::Debugging { id } => {
                let [sock] = take_fds("debugging", fds)?;
                Reply::Debugging { id, sock }
            }
            ReplyWire::Files { id } => {
                let [sock] = take_fds("files", fds)?;
                Reply::Files { id, sock }
            }
            ReplyWire::ExecStarted { id, exec, ns_pid, tty: false } => {
                let [stdout, stderr, stdin] = take_fds("exec started", fds)?;
                Reply::ExecStarted { id, exec, ns_pid, stdout, stderr: Some(stderr), stdin }
            }
            ReplyWire::ExecStarted { id, exec, ns_pid, tty: true } => {
                let [stdout, stdin] = take_fds("exec started on a terminal", fds)?;
                Reply::ExecStarted { id, exec, ns_pid, stdout, stderr: None, stdin }
            }
            ReplyWire::ExecExited { id, exec, status } => {
                let [] = take_fds("exec exited", fds)?;
                Reply::ExecExited { id, exec, status }
            }
            ReplyWire::DebugEnded { id } => {
                let [] = take_fds("debug ended", fds)?;
                Reply::DebugEnded { id }
            }
            ReplyWire::Spawned { id } => {
                let [] = take_fds("spawned", fds)?;
                Reply::Spawned { id }
            }
            ReplyWire::Started { id, ns_pid, tty: false, debug: false } => {
                let [pidfd, stdout, stderr, stdin] = take_fds("started", fds)?;
                Reply::Started { id, ns_pid, pidfd, stdout, stderr: Some(stderr), stdin, debug: None }
            }
            ReplyWire::Started { id, ns_pid, tty: false, debug: true } => {
                let [pidfd, stdout, stderr, stdin, sock] = take_fds("started for a debugger", fds)?;
                Reply::Started { id, ns_pid, pidfd, stdout, stderr: Some(stderr), stdin, debug: Some(sock) }
            }
            ReplyWire::Started { id, ns_pid, tty: true, debug } => {
                if debug {
                    return Err(WireError::Combination("started on a terminal for a debugger"));
                }
                let [pidfd, stdout, stdin] = take_fds("started on a terminal", fds)?;
                Reply::Started { id, ns_pid, pidfd, stdout, stderr: None, stdin, debug: None }
            }
            ReplyWire::Exited { id, status, usage, limit_hit, observed, core } => {
                if core != usage.core.is_some() {
                    return Err(WireError::Combination("a core without its description, or the other way round"));
                }
                let expected = usize::from(observed) + usize::from(core);
                if fds.len() != expected {
                    return Err(WireError::FdCount { kind: "exited", expected, got: fds.len() });
                }
                let mut fds = fds.into_iter();
                let observed = if observed { fds.next() } else { None };
                let core = if core { fds.next() } else { None };
                Reply::Exited { id, status, usage, limit_hit, observed, core }
            }
            ReplyWire::Deleted { id } => {
                let [] = take_fds("deleted", fds)?;
                Reply::Deleted { id }
            }
            ReplyWire::Accepted { id } => {
                let [] = take_fds("accepted", fds)?;
                Reply::Accepted { id }
            }
            ReplyWire::Refused { refusal, message } => {
                let [] = take_fds("refused", fds)?;
                Reply::Refused { refusal, message }
            }
        })
    }
}

/// The bincode configuration both halves use: fixed, with a decode limit.
pub fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

/// Decodes one body, refusing trailing bytes.
pub fn decode_body<W: Decode<()>>(bytes: &[u8]) -> Result<Envelope<W>, String> {
    if bytes.len() > MAX_MESSAGE {
        return Err(format!("message of {} bytes exceeds {MAX_MESSAGE}", bytes.len()));
    }
    let (env, used): (Envelope<W>, usize) =
        bincode::decode_from_slice(bytes, bincode_config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes after message", bytes.len() - used));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip() {
        let spec = StartSpec {
            argv: vec![b"a".to_vec()],
            env: vec![b"A=1".to_vec()],
            limits: RunLimits::default(),
            debug: false,
            list_processes: true,
            tty: Some(Winsize { rows: 24, cols: 80 }),
            keep_tmp: false,
            observe: Default::default(),
        };
        let wire = RequestWire::Start { id: SessionId([7; 16]), spec };
        let bytes = bincode::encode_to_vec(Envelope { tag: 9, body: wire.clone() }, bincode_config()).unwrap();
        let env: Envelope<RequestWire> = decode_body(&bytes).unwrap();
        assert_eq!(env.tag, 9);
        assert_eq!(env.body, wire);
    }

    #[test]
    fn trailing_bytes_refused() {
        let mut bytes = bincode::encode_to_vec(
            Envelope { tag: 1, body: RequestWire::Kill { id: SessionId([0; 16]) } },
            bincode_config(),
        )
        .unwrap();
        bytes.push(0);
        assert!(decode_body::<RequestWire>(&bytes).unwrap_err().contains("trailing"));
    }

    #[test]
    fn garbage_and_huge_lengths_refused() {
        // A Vec length prefix claiming 2^60 elements must not allocate.
        let bytes =
            [0u8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode_body::<RequestWire>(&bytes).is_err());
        assert!(decode_body::<RequestWire>(&[0xff; 40]).is_err());
        assert!(decode_body::<RequestWire>(&vec![0u8; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn bundle_dir_name_is_the_uuid() {
        let id =
            SessionId([0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00]);
        assert_eq!(id.dir_name(), "123e4567-e89b-12d3-a456-426614174000");
    }

    #[test]
    fn fd_count_must_match() {
        let err = Request::from_wire(RequestWire::Load { id: SessionId([0; 16]) }, vec![]).unwrap_err();
        assert_eq!(err, WireError::FdCount { kind: "load", expected: 1, got: 0 });
        let fd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(Request::from_wire(RequestWire::Kill { id: SessionId([0; 16]) }, vec![fd]).is_err());
    }
}
