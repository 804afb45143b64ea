//! The record of a run (`RECEIPT`).

use super::{Exit, Jail, Kind, LimitHit, RunLimits};
use crate::{Time, True};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// A file left in a session's `/tmp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpFile {
    /// Its path in the session (`/tmp/...`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
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
    /// What the session's cgroups counted.
    #[serde(flatten)]
    pub cgroup: super::CgroupFigures,
    /// Processes the run created.
    pub processes_spawned: u64,
    /// Processes that ended by themselves, in the order they ended.
    pub processes: Vec<Process>,
    /// Exits not listed (beyond the bound, or not asked for).
    pub processes_unlisted: u32,
    /// Regular files the run left in `/tmp` (path, size), depth first, at most 64.
    #[serde(default)]
    pub tmp_files: Vec<TmpFile>,
    /// Files beyond those, counted only.
    #[serde(default)]
    pub tmp_files_unlisted: u32,
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
    /// What the run touched, when START asked to observe it (`debuglantern.receipt/2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
    /// The core dump the rig kept of a process of the run that died of a core-dumping
    /// signal (the last one, when several did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<super::Core>,
}

/// What a run touched (START `observe`), as the session's init saw its calls. A result is
/// what the init found just before the call, with the caller's uid and view (see the
/// README): `ok`, or an errno name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Observed {
    /// What was asked: `files`, `exec`, `net`.
    pub asked: Vec<String>,
    /// Distinct entries kept per kind.
    pub limit: u32,
    /// Paths, in the order first named.
    pub files: Vec<FileSeen>,
    /// Execs, in order.
    pub execs: Vec<ExecSeen>,
    /// Network endpoints, in the order first tried.
    pub net: Vec<NetSeen>,
    /// Calls beyond the bounds, counted only.
    pub truncated: ObservedTruncated,
    /// Every call, in order (at most 4096), for the timeline (`lantern receipt --trace`).
    #[serde(default)]
    pub events: Vec<ObservedEvent>,
}

/// One path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSeen {
    /// As the program named it.
    pub path: String,
    /// The absolute path it named, when it was relative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<String>,
    /// Opened for reading.
    pub read: bool,
    /// Opened for writing.
    pub write: bool,
    /// Created by the run.
    pub create: bool,
    /// Executed.
    pub exec: bool,
    /// Calls that named it.
    pub count: u32,
    /// The first.
    pub first: Time,
    /// Failures, per errno name (`ENOENT`: 2).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failures: std::collections::BTreeMap<String, u32>,
}

/// One exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSeen {
    /// Pid in the session.
    pub pid: u32,
    /// Its parent.
    pub ppid: u32,
    /// The program as named.
    pub path: String,
    /// Its arguments (at most 64 of 256 bytes).
    pub argv: Vec<String>,
    /// More were passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub argv_truncated: bool,
    /// When.
    pub time: Time,
    /// `ok` or an errno name.
    pub result: String,
}

/// One endpoint, per operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSeen {
    /// `connect`, `bind`, `sendto`, `sendmsg`.
    pub op: String,
    /// `inet`, `inet6`, `unix`.
    pub family: String,
    /// The address (unix: the path, `@name` when abstract).
    pub address: String,
    /// The port (0 for unix).
    pub port: u16,
    /// Calls.
    pub count: u32,
    /// The first.
    pub first: Time,
    /// The result of the last call: `ok` or an errno name.
    pub result: String,
    /// Failures, per errno name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failures: std::collections::BTreeMap<String, u32>,
}

/// Calls not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObservedTruncated {
    /// Calls naming paths beyond the bound.
    pub files: u64,
    /// Execs beyond it.
    pub execs: u64,
    /// Network calls to endpoints beyond it.
    pub net: u64,
    /// Events beyond 4096.
    pub events: u64,
}

/// One call on the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedEvent {
    /// Pid in the session.
    pub pid: u32,
    /// When.
    pub time: Time,
    /// `file`, `exec` or `net`.
    pub kind: String,
    /// What (`open /etc/passwd r`).
    pub what: String,
    /// An errno name if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `observed` summary of an `exited` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObservedSummary {
    /// Distinct paths.
    pub files: usize,
    /// Execs.
    pub execs: usize,
    /// Distinct endpoints.
    pub net: usize,
    /// Failed calls among them.
    pub failures: u64,
    /// Calls not kept.
    pub truncated: u64,
}

/// `RECEIPT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptReply {
    /// `true`.
    pub ok: True,
    /// The receipt.
    pub receipt: Receipt,
}
