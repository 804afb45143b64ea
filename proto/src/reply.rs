//! Every reply of the control protocol, as a type. Field names and shapes are the wire's
//! (README's protocol reference); `ok` is [`True`] in every success reply.

use crate::{Time, True};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// SPEC §4 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Uploaded, never started or deleted.
    Loaded,
    /// Its program runs.
    Running,
    /// Its program runs with gdbserver attached (or waiting for gdb).
    Debugging,
    /// Its last run ended.
    Stopped,
}

impl State {
    /// Its program is alive (RUNNING or DEBUGGING).
    pub fn alive(self) -> bool {
        matches!(self, State::Running | State::Debugging)
    }

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Loaded => "LOADED",
            State::Running => "RUNNING",
            State::Debugging => "DEBUGGING",
            State::Stopped => "STOPPED",
        }
    }
}

/// Binary or bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One ELF binary.
    Binary,
    /// A `.tar.gz` bundle.
    Bundle,
}

/// How a run ended: `{"code":N}` or `{"signal":N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// What a shell would report: the code, or 128 + the signal.
    pub fn shell_status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// The limit that ended or capped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitHit {
    /// CPU seconds (`RLIMIT_CPU`).
    Cpu,
    /// The memory cgroup.
    Memory,
    /// The pids cgroup.
    Pids,
}

impl LimitHit {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitHit::Cpu => "cpu",
            LimitHit::Memory => "memory",
            LimitHit::Pids => "pids",
        }
    }
}

/// Limits of a run (`null` = none of this kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLimits {
    /// CPU seconds of each process.
    pub cpu_seconds: Option<u64>,
    /// Address space of each process, bytes.
    pub address_space: Option<u64>,
    /// Open descriptors of each process.
    pub open_files: Option<u64>,
    /// Processes of the session.
    pub processes: Option<u64>,
    /// Size of the private `/tmp`, bytes.
    pub tmp_bytes: Option<u64>,
    /// Memory of the whole session (cgroup), bytes.
    pub memory_bytes: Option<u64>,
}

/// What the ELF header of a program says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elf {
    /// `ELF32` or `ELF64`.
    pub class: String,
    /// Machine, e.g. `x86_64`.
    pub machine: String,
    /// `EXEC` or `DYN`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `PT_INTERP`, if any.
    pub interpreter: Option<String>,
    /// No interpreter.
    #[serde(rename = "static")]
    pub is_static: bool,
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInfo {
    /// Identity name.
    pub name: Arc<str>,
    /// May see and manage every session.
    pub admin: bool,
}

/// HELLO's `limits`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Sessions loaded at once.
    pub max_sessions: usize,
    /// Bytes of all loaded sessions.
    pub max_total_size: u64,
    /// Largest upload.
    pub max_upload: u64,
    /// Longest command line.
    pub max_line: usize,
    /// Captured output kept per session.
    pub log_buffer: usize,
    /// STOP's SIGTERM → SIGKILL delay.
    pub stop_grace_ms: u64,
    /// Default limits of a run.
    pub run: RunLimits,
}

/// HELLO's `mdns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mdns {
    /// The instance name advertised.
    pub instance: String,
    /// The service type.
    pub service: String,
}

/// What confines a session (HELLO, receipts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jail {
    /// Namespaces of its own.
    pub namespaces: Vec<String>,
    /// Its filesystem.
    pub root: String,
    /// Distinct per session, or shared (rootless).
    pub uid: String,
    /// Capabilities it has.
    pub capabilities: String,
    /// `no_new_privs`.
    pub no_new_privs: bool,
    /// Its seccomp filter.
    pub seccomp: JailSeccomp,
    /// What of `/proc` is hidden or read-only.
    pub proc: JailProc,
    /// A cgroup namespace of its own.
    pub cgroup_namespace: bool,
    /// Cgroup controllers limiting it.
    pub cgroups: Vec<String>,
    /// Rlimits applied.
    pub rlimits: Vec<String>,
    /// The spawner's filter, which stacks under every session.
    pub spawner_seccomp: String,
    /// The frontend's filters.
    pub frontend_seccomp: String,
}

/// The session's seccomp filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSeccomp {
    /// `allowlist`.
    pub mode: String,
    /// Calls allowed.
    pub allowed: usize,
    /// What anything else gets.
    pub default: String,
    /// Calls refused on purpose.
    pub denied: usize,
    /// What they get.
    pub denied_errno: String,
    /// Socket families allowed.
    pub socket_families: Vec<String>,
    /// What other families get.
    pub other_families: String,
    /// What `clone` with a namespace flag gets.
    pub clone_namespaces: String,
    /// What a call through the x32 ABI gets.
    pub x32_abi: String,
    /// What a call of another architecture gets.
    pub foreign_arch: String,
}

/// The session's `/proc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailProc {
    /// Hidden (read as empty).
    pub masked: Vec<String>,
    /// Read-only.
    pub read_only: Vec<String>,
}

/// `HELLO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// `true`.
    pub ok: True,
    /// `debuglantern`.
    pub server: String,
    /// The daemon's version.
    pub version: String,
    /// Protocol version (1).
    pub protocol: u32,
    /// Whether AUTH is needed.
    pub auth_required: bool,
    /// Who this connection is (`null` before AUTH).
    pub identity: Option<IdentityInfo>,
    /// The rig's limits.
    pub limits: Limits,
    /// What the host could not give (degraded host).
    pub warnings: Vec<String>,
    /// The mDNS advertisement, if any.
    pub mdns: Option<Mdns>,
    /// What confines sessions.
    pub jail: Jail,
}

/// `AUTH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authed {
    /// `true`.
    pub ok: True,
    /// The identity the token names.
    pub identity: Arc<str>,
    /// Whether it is an admin.
    pub admin: bool,
}

/// `UPLOAD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loaded {
    /// `true`.
    pub ok: True,
    /// The new session.
    pub id: Uuid,
    /// `LOADED`.
    pub state: State,
    /// Binary or bundle.
    pub kind: Kind,
    /// Bytes (a bundle's: extracted).
    pub size: u64,
    /// sha256 of the upload.
    pub sha256: String,
    /// The program's ELF facts.
    pub elf: Elf,
}

/// A debug port waiting for gdb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugPort {
    /// The port.
    pub port: u16,
    /// The address to connect to.
    pub host: String,
    /// Host pid of the program.
    pub pid: Option<i32>,
    /// Its pid in the session.
    pub ns_pid: u32,
    /// A gdb command line to paste.
    pub gdb: String,
    /// How long the port waits, ms.
    pub deadline_ms: u64,
}

/// `START`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// `RUNNING`, or `DEBUGGING` with `--debug`.
    pub state: State,
    /// With `--debug`: the debug port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<DebugPort>,
    /// Host pid of the program.
    pub pid: Option<i32>,
    /// Its pid in the session (2).
    pub ns_pid: u32,
}

/// `DEBUG`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debugging {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// `DEBUGGING`.
    pub state: State,
    /// The debug port (not with `--stdio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<DebugPort>,
    /// `--stdio`: this connection now carries the gdb remote protocol.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdio: bool,
}

/// `STOP`, `KILL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// `STOPPED`.
    pub state: State,
    /// How the run ended.
    pub exit: Option<Exit>,
    /// A limit that ended it.
    pub limit_hit: Option<LimitHit>,
}

/// One session in `LIST` (and the first fields of `STATUS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Its id.
    pub id: Uuid,
    /// Its state.
    pub state: State,
    /// Binary or bundle.
    pub kind: Kind,
    /// Bytes.
    pub size: u64,
    /// The identity that uploaded it.
    pub owner: Arc<str>,
    /// Host pid of the current/last program.
    pub pid: Option<i32>,
    /// Upload time.
    pub created: Time,
    /// How the last run ended.
    pub exit: Option<Exit>,
}

/// `LIST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct List {
    /// `true`.
    pub ok: True,
    /// The sessions this identity may see.
    pub sessions: Vec<Summary>,
}

/// What the last run used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// User CPU, ms.
    pub cpu_user_ms: u64,
    /// System CPU, ms.
    pub cpu_sys_ms: u64,
    /// Largest resident set, KiB.
    pub max_rss_kib: u64,
}

/// Output of the last run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Bytes written to stdout.
    pub stdout_bytes: u64,
    /// Bytes written to stderr.
    pub stderr_bytes: u64,
    /// Bytes still buffered.
    pub buffered: usize,
    /// Bytes dropped from the buffer.
    pub dropped: u64,
}

/// `STATUS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `true`.
    pub ok: True,
    /// The LIST fields.
    #[serde(flatten)]
    pub summary: Summary,
    /// sha256 of the upload.
    pub sha256: String,
    /// A bundle's executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_path: Option<String>,
    /// The program's ELF facts.
    pub elf: Elf,
    /// The program's pid in the session.
    pub ns_pid: Option<u32>,
    /// Runs so far.
    pub runs: u32,
    /// Start of the current/last run.
    pub started: Option<Time>,
    /// End of the last run.
    pub ended: Option<Time>,
    /// Limits of the current/last run.
    pub limits: RunLimits,
    /// A limit that ended or capped the last run.
    pub limit_hit: Option<LimitHit>,
    /// What the last run used.
    pub usage: Option<Usage>,
    /// Its output.
    pub output: Output,
}

/// `DELETE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// `true`.
    pub deleted: bool,
}

/// `LOGS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// Its state.
    pub state: State,
    /// The output (UTF-8; invalid sequences replaced).
    pub data: String,
    /// Older bytes lost to the buffer.
    pub dropped: u64,
    /// Whether any were.
    pub truncated: bool,
    /// The exact bytes, when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

/// One chunk of `LOGS --follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// The output (UTF-8; invalid sequences replaced).
    pub data: String,
    /// Bytes lost to the buffer before this chunk.
    pub dropped: u64,
    /// The exact bytes, when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl LogChunk {
    /// The chunk's exact bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match &self.data_base64 {
            Some(b) => crate::base64::decode(b).unwrap_or_else(|| self.data.clone().into_bytes()),
            None => self.data.clone().into_bytes(),
        }
    }
}

/// The last line of `LOGS --follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogEnd {
    /// The run is over.
    Ended {
        /// `true`.
        ok: True,
        /// The session.
        id: Uuid,
        /// `true`.
        end: True,
        /// Its state.
        state: State,
        /// How the run ended.
        exit: Option<Exit>,
    },
    /// The session was deleted.
    Deleted {
        /// `true`.
        ok: True,
        /// The session.
        id: Uuid,
        /// `true`.
        end: True,
        /// `true`.
        deleted: bool,
    },
}

/// A line of `LOGS --follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FollowLine {
    /// The end.
    End(LogEnd),
    /// Output.
    Chunk(LogChunk),
}

/// A process of a run's tree, in a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Its pid in the session.
    pub pid: u32,
    /// Its parent's.
    pub ppid: u32,
    /// Its command name.
    pub comm: String,
    /// Its start (the kernel's 10 ms clock ticks).
    pub start: Time,
    /// Its exit.
    pub end: Time,
    /// Its exit status.
    pub exit_code: i32,
}

/// Bytes and sha256 of one output stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDigest {
    /// Bytes.
    pub bytes: u64,
    /// sha256 (hex).
    pub sha256: String,
}

/// A lifecycle event of a run, with its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The event's name.
    pub event: String,
    /// When.
    pub time: Time,
}

/// The record of one run (`debuglantern.receipt/1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// `debuglantern.receipt/1`.
    pub schema: String,
    /// The session.
    pub session: Uuid,
    /// Which run (1 = the first).
    pub run: u32,
    /// Binary or bundle.
    pub kind: Kind,
    /// sha256 of the upload.
    pub sha256: String,
    /// A bundle's executable.
    pub exec_path: Option<String>,
    /// Arguments after `argv[0]`.
    pub args: Vec<String>,
    /// Environment variable names (never values).
    pub env_keys: Vec<String>,
    /// The session's owner.
    pub identity: Arc<str>,
    /// Start of the run.
    pub started: Time,
    /// Its end.
    pub ended: Time,
    /// Its duration, ms.
    pub duration_ms: u64,
    /// How it ended.
    pub exit: Option<Exit>,
    /// A limit that ended or capped it.
    pub limit_hit: Option<LimitHit>,
    /// User CPU, ms.
    pub cpu_user_ms: u64,
    /// System CPU, ms.
    pub cpu_sys_ms: u64,
    /// Largest resident set, KiB.
    pub max_rss_kib: u64,
    /// Processes the run created.
    pub processes_spawned: u64,
    /// Processes that ended by themselves, in the order they ended.
    pub processes: Vec<Process>,
    /// Exits not listed (beyond the bound, or not asked for).
    pub processes_unlisted: u32,
    /// stdout.
    pub stdout: StreamDigest,
    /// stderr.
    pub stderr: StreamDigest,
    /// What confined it.
    pub jail: Jail,
    /// Its limits.
    pub limits: RunLimits,
    /// The daemon's warnings.
    pub warnings: Vec<String>,
    /// Its lifecycle events.
    pub timeline: Vec<Mark>,
}

/// `RECEIPT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptReply {
    /// `true`.
    pub ok: True,
    /// The receipt.
    pub receipt: Receipt,
}

/// `EVENTS`: the subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// `true`.
    pub ok: True,
    /// `true`.
    pub subscribed: True,
    /// The first sequence number this stream sends.
    pub next_seq: u64,
    /// The next number the rig will give an event.
    pub head_seq: u64,
}

/// What happened, with its details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A session was loaded.
    Uploaded {
        /// Binary or bundle.
        kind: Kind,
        /// Bytes.
        size: u64,
        /// sha256 of the upload.
        sha256: String,
    },
    /// A run's init was created.
    Spawned {
        /// Which run.
        run: u32,
    },
    /// The run's program runs.
    SetupFinished {
        /// Which run.
        run: u32,
        /// Host pid.
        pid: Option<i32>,
        /// Pid in the session.
        ns_pid: u32,
    },
    /// The run ended.
    Exited {
        /// Which run.
        run: u32,
        /// How.
        exit: Exit,
        /// A limit that ended it.
        limit_hit: Option<LimitHit>,
    },
    /// A limit ended or capped the run.
    LimitHit {
        /// Which run.
        run: u32,
        /// Which limit.
        limit: LimitHit,
    },
    /// A START failed.
    StartFailed {
        /// Why.
        message: String,
    },
    /// The session is gone.
    Deleted {},
    /// A debugger connected.
    DebugAttached {
        /// From where.
        peer: String,
    },
    /// The debugger left.
    DebugDetached {},
}

impl EventKind {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Uploaded { .. } => "uploaded",
            EventKind::Spawned { .. } => "spawned",
            EventKind::SetupFinished { .. } => "setup_finished",
            EventKind::Exited { .. } => "exited",
            EventKind::LimitHit { .. } => "limit_hit",
            EventKind::StartFailed { .. } => "start_failed",
            EventKind::Deleted {} => "deleted",
            EventKind::DebugAttached { .. } => "debug_attached",
            EventKind::DebugDetached {} => "debug_detached",
        }
    }
}

/// One event of `EVENTS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `true`.
    pub ok: True,
    /// What happened.
    #[serde(flatten)]
    pub what: EventKind,
    /// Its number (monotonic).
    pub seq: u64,
    /// When.
    pub time: Time,
    /// The session.
    pub id: Uuid,
}

/// A subscriber fell behind: this many events are no longer kept for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missed {
    /// `true`.
    pub ok: True,
    /// How many.
    pub missed: u64,
}

/// The end of a one-session event stream (the session was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsEnd {
    /// `true`.
    pub ok: True,
    /// `true`.
    pub end: True,
    /// `true`.
    pub deleted: bool,
}

/// A line of `EVENTS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventLine {
    /// An event.
    Event(Event),
    /// Events lost to a slow reader.
    Missed(Missed),
    /// The end.
    End(EventsEnd),
}
