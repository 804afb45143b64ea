//! Every reply of the control protocol, as a type. Field names and shapes are the wire's
//! (README's protocol reference); `ok` is [`True`] in every success reply.

mod events;
mod jail;
mod receipt;

pub use events::*;
pub use jail::*;
pub use receipt::*;

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

/// Which output stream of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Its stdout (or its terminal, on a tty).
    Stdout,
    /// Its stderr.
    Stderr,
}

impl Stream {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// 0 for stdout, 1 for stderr.
    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
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
    /// The run's wall-clock limit.
    Wall,
}

impl LimitHit {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitHit::Cpu => "cpu",
            LimitHit::Memory => "memory",
            LimitHit::Pids => "pids",
            LimitHit::Wall => "wall",
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
    /// Wall-clock seconds of the run.
    #[serde(default)]
    pub wall_seconds: Option<u64>,
    /// CPUs of the whole session (cgroup CPU bandwidth); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<crate::units::MilliCpus>,
    /// Largest core dump kept, bytes (absent: none is taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_bytes: Option<u64>,
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

/// A bundle's executable that is a script: what its `#!` line names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// The interpreter's path (in the session's view: the bundle or the rig's `/usr`).
    pub interpreter: String,
    /// Its optional argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg: Option<String>,
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

/// The rig's unicast DNS-SD registration (`--dns-sd-domain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSd {
    /// The domain (`lab.example`).
    pub domain: String,
    /// The DNS server taking the updates.
    pub server: String,
    /// The instance name registered (after renaming), once registered.
    pub instance: Option<String>,
    /// Whether the records are in place as of the last update.
    pub registered: bool,
    /// Why the last update failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How busy the rig is now (for clients choosing a rig: `lantern run --rig any`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Sessions loaded.
    pub sessions: usize,
    /// Of which running (or debugging).
    pub running: usize,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Bytes held by loaded sessions (uploads and kept `/tmp`s).
    pub bytes: u64,
    /// Bytes still free of `max_total_size`.
    pub bytes_free: u64,
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
    /// The unicast DNS-SD registration (absent when the rig registers nowhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_sd: Option<DnsSd>,
    /// The load now (absent from rigs before it was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
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
    /// The program's ELF facts (`null` for a script).
    pub elf: Option<Elf>,
    /// A script's `#!` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Script>,
    /// The program's name (`UPLOAD --name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    /// With `--debug` and no port (`"debug_port": false`, or a connection without a
    /// network address): the program waits for `DEBUG <id> --stdio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_stdio: Option<DebugStdio>,
    /// Host pid of the program.
    pub pid: Option<i32>,
    /// Its pid in the session.
    pub ns_pid: u32,
}

/// A program held for a debugger that comes over the control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugStdio {
    /// A gdb command line to paste (through `lantern gdb-pipe`).
    pub gdb: String,
    /// How long it waits, ms; then it runs on without a debugger.
    pub deadline_ms: u64,
}

/// STATUS of a DEBUGGING session: where its debugger connects or who is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugStatus {
    /// The program was launched by gdbserver (START --debug), else gdbserver attached.
    pub launched: bool,
    /// A waiting debug port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A gdb command line that connects (while nobody is connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gdb: Option<String>,
    /// While nobody is connected: ms until the program is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The connected debugger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// `EXEC`: then the connection carries the process's frames (as `START --attach`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execd {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// The exec's number in the session.
    pub exec: u32,
    /// Its pid in the session.
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
    /// What the session's cgroups counted.
    #[serde(flatten)]
    pub cgroup: CgroupFigures,
}

/// What a run's cgroups counted, in STATUS's usage and in receipts (each absent where the
/// host has no such counter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupFigures {
    /// Most memory the whole session held at once (v2 `memory.peak`), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    /// CPU time of the whole session (v2 `cpu.stat` `usage_usec`), microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage_usec: Option<u64>,
    /// Time the CPU limit held the session back (`throttled_usec`), microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_usec: Option<u64>,
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
    /// Bytes dropped from the buffer (nobody followed the run while they were there).
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
    /// The program's name (`UPLOAD --name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program's ELF facts (`null` for a script).
    pub elf: Option<Elf>,
    /// A script's `#!` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Script>,
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
    /// Its `/tmp` when the last run ended (kept until the next START or DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp: Option<TmpStatus>,
    /// DEBUGGING: the debugger's endpoint, or who is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<DebugStatus>,
    /// The last core dump a run of it left (`CORE` fetches it; kept until the next one
    /// or DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<Core>,
}

/// A core dump the rig kept of a process of a session that died of a core-dumping
/// signal (STATUS, the receipt, the `exited` event, the reply to `CORE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Core {
    /// Its size, bytes.
    pub bytes: u64,
    /// sha256 of its bytes.
    pub sha256: String,
    /// The signal the process died of.
    pub signal: i32,
    /// The process, in the session's PID namespace.
    pub pid: u32,
    /// Its name.
    pub comm: String,
    /// Its threads.
    pub threads: u32,
    /// The session's `core_bytes` cut memory out of it (the threads' stacks come first).
    pub truncated: bool,
    /// Which run left it.
    pub run: u32,
}

/// `CORE`: the reply line; `bytes` bytes of the ELF core file follow it, then the next
/// reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreGot {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// The core.
    #[serde(flatten)]
    pub core: Core,
}

/// A session's `/tmp` (STATUS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpStatus {
    /// Bytes in use.
    pub used_bytes: u64,
    /// Its size.
    pub size_bytes: u64,
}

/// `GET`: the reply line; `size` bytes follow it (a file's, or a tar stream of a
/// directory), then the next reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Got {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// The path in the session.
    pub path: String,
    /// `file` or `dir` (a tar stream follows).
    pub kind: String,
    /// Bytes that follow.
    pub size: u64,
    /// Entries that were not copied (devices, fifos, sockets, unreadable), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// `PUT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// The path in the session.
    pub path: String,
    /// Bytes written (file contents).
    pub bytes: u64,
    /// Files written.
    pub files: u64,
    /// sha256 of what was sent.
    pub sha256: String,
    /// Entries that were not written (hard links, devices, fifos), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
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
    /// The stream asked for (`--stream`); without, both, in the order they were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
}

impl Logs {
    /// The exact bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match &self.data_base64 {
            Some(b) => crate::base64::decode(b).unwrap_or_else(|| self.data.clone().into_bytes()),
            None => self.data.clone().into_bytes(),
        }
    }
}

/// One chunk of `LOGS --follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// `true`.
    pub ok: True,
    /// The session.
    pub id: Uuid,
    /// Which stream it came from.
    pub stream: Stream,
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
        /// A limit that ended it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit_hit: Option<LimitHit>,
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
