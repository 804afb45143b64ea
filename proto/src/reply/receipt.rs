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
}

/// `RECEIPT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptReply {
    /// `true`.
    pub ok: True,
    /// The receipt.
    pub receipt: Receipt,
}
