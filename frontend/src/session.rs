//! The frontend's view of sessions: metadata, the state machine of SPEC §4, captured
//! output, and their JSON form. The broker owns the processes; this table mirrors what
//! the broker reported and never guesses.

use crate::elf::ElfInfo;
use serde_json::{json, Value};
use shared::{ExitStatus, RunLimits, Usage};
use std::collections::VecDeque;
use std::time::SystemTime;
use uuid::Uuid;

/// SPEC §4 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A bounded buffer of captured output: keeps the newest `cap` bytes and counts what it
/// dropped.
#[derive(Debug)]
pub struct LogRing {
    buf: VecDeque<u8>,
    cap: usize,
    /// Bytes ever pushed (the offset just past the newest byte).
    total: u64,
}

impl LogRing {
    /// An empty ring of `cap` bytes.
    pub fn new(cap: usize) -> Self {
        LogRing { buf: VecDeque::new(), cap, total: 0 }
    }

    /// Appends, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let data = if data.len() > self.cap { &data[data.len() - self.cap..] } else { data };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    /// Offset of the oldest byte still held.
    pub fn start(&self) -> u64 {
        self.total - self.buf.len() as u64
    }

    /// Offset just past the newest byte.
    pub fn end(&self) -> u64 {
        self.total
    }

    /// Bytes from `offset` on (at most `max`), and how many bytes before them were dropped
    /// since `offset`.
    pub fn read_from(&self, offset: u64, max: usize) -> (Vec<u8>, u64) {
        let from = offset.max(self.start());
        let dropped = from - offset;
        let skip = (from - self.start()) as usize;
        (self.buf.iter().skip(skip).take(max).copied().collect(), dropped)
    }

    /// Forgets everything (a new run starts).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.total = 0;
    }
}

/// Output as JSON: `data` is UTF-8 text (invalid sequences replaced); when the bytes were
/// not valid UTF-8, `data_base64` carries them exactly.
pub fn output_json(bytes: &[u8]) -> (Value, Option<Value>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (json!(s), None),
        Err(_) => (json!(String::from_utf8_lossy(bytes)), Some(json!(base64(bytes)))),
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A single ELF binary (in a sealed memfd).
    Binary,
    /// A bundle extracted into the store; the executable is `exec_path` inside it.
    Bundle {
        /// Relative to the bundle root.
        exec_path: String,
    },
}

/// One session.
#[derive(Debug)]
pub struct Session {
    /// Its id.
    pub id: Uuid,
    /// The identity that uploaded it (SPEC §7): only it and admins see it.
    pub owner: std::sync::Arc<str>,
    /// Binary or bundle.
    pub kind: Kind,
    /// State.
    pub state: State,
    /// Upload size.
    pub size: u64,
    /// sha256 of the upload.
    pub sha256: String,
    /// ELF facts.
    pub elf: ElfInfo,
    /// Upload time.
    pub created: SystemTime,
    /// Host pid of the current/last program.
    pub pid: Option<i32>,
    /// Pid inside its namespace.
    pub ns_pid: Option<u32>,
    /// How the last run ended.
    pub exit: Option<ExitStatus>,
    /// What the last run used.
    pub usage: Option<Usage>,
    /// A cgroup limit the last run ran into (from the broker).
    pub cgroup_hit: Option<shared::LimitHit>,
    /// Limits of the current/last run.
    pub limits: RunLimits,
    /// Runs so far.
    pub runs: u32,
    /// Start of the current/last run.
    pub started: Option<SystemTime>,
    /// End of the last run.
    pub ended: Option<SystemTime>,
    /// Captured output of the current/last run.
    pub logs: LogRing,
    /// Bytes the program wrote to stdout / stderr in this run.
    pub out_bytes: [u64; 2],
    /// Log pipes still open (stdout, stderr).
    pub pipes_open: u8,
    /// A START/STOP/KILL/DELETE is in flight with the broker.
    pub busy: bool,
    /// Being deleted.
    pub deleting: bool,
    /// Waits (STOP/KILL) to answer when the run ends.
    pub exit_waiters: Vec<crate::server::Waiter>,
    /// Arguments (after argv[0]) of the current/last run.
    pub run_args: Vec<String>,
    /// Environment variable names of the current/last run (never the values).
    pub run_env_keys: Vec<String>,
    /// sha256 of stdout and stderr of the current/last run, as they are read.
    pub out_hash: [sha2::Sha256; 2],
    /// Receipts of the last runs, oldest first.
    pub receipts: VecDeque<Value>,
    /// Lifecycle events of the current/last run, with their times (for the receipt).
    pub timeline: Vec<(&'static str, SystemTime)>,
}

/// How many receipts a session keeps.
pub const RECEIPTS_KEPT: usize = 16;
/// Version of the receipt schema (RECEIPT's `schema` field).
pub const RECEIPT_SCHEMA: &str = "debuglantern.receipt/1";

impl Session {
    /// What ended the run, if a limit did.
    pub fn limit_hit(&self) -> Option<&'static str> {
        match self.cgroup_hit {
            Some(shared::LimitHit::Memory) => return Some("memory"),
            Some(shared::LimitHit::Pids) => return Some("pids"),
            None => {}
        }
        match self.exit? {
            ExitStatus::Signal(s) if s == libc::SIGXCPU => Some("cpu"),
            ExitStatus::Signal(s) if s == libc::SIGKILL && self.limits.cpu_seconds > 0 => {
                let used = self.usage.as_ref().map(|u| (u.user_us + u.sys_us) / 1_000_000).unwrap_or(0);
                (used >= self.limits.cpu_seconds).then_some("cpu")
            }
            _ => None,
        }
    }

    /// The receipt of the run that just ended (call once, when it has ended and its output
    /// is drained). `jail` describes the confinement in force, `warnings` the daemon's.
    pub fn receipt(&self, jail: &Value, warnings: &[String]) -> Value {
        use sha2::Digest;
        let started = self.started.unwrap_or(self.created);
        let ended = self.ended.unwrap_or_else(SystemTime::now);
        let duration = ended.duration_since(started).unwrap_or_default();
        let usage = self.usage.clone().unwrap_or_default();
        let (exec_path, kind) = match &self.kind {
            Kind::Binary => (Value::Null, "binary"),
            Kind::Bundle { exec_path } => (json!(exec_path), "bundle"),
        };
        let digest = |i: usize| hex::encode(self.out_hash[i].clone().finalize());
        json!({
            "schema": RECEIPT_SCHEMA,
            "session": self.id.to_string(),
            "run": self.runs,
            "kind": kind,
            "sha256": self.sha256,
            "exec_path": exec_path,
            "args": self.run_args,
            "env_keys": self.run_env_keys,
            "identity": &*self.owner,
            "started": time(started),
            "ended": time(ended),
            "duration_ms": duration.as_millis() as u64,
            "exit": self.exit.map(exit_json),
            "limit_hit": self.limit_hit(),
            "cpu_user_ms": usage.user_us / 1000,
            "cpu_sys_ms": usage.sys_us / 1000,
            "max_rss_kib": usage.max_rss_kib,
            "processes_spawned": usage.processes,
            // Every process that ended with exit_group, in the order they ended.
            "processes": usage.tree.iter().map(|p| json!({
                "pid": p.pid,
                "ppid": p.ppid,
                "comm": p.comm,
                "start": time(SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(p.start_us)),
                "end": time(SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(p.end_us)),
                "exit_code": p.code,
            })).collect::<Vec<_>>(),
            "processes_unlisted": usage.tree_dropped,
            "stdout": {"bytes": self.out_bytes[0], "sha256": digest(0)},
            "stderr": {"bytes": self.out_bytes[1], "sha256": digest(1)},
            "jail": jail,
            "limits": limits_json(&self.limits),
            "warnings": warnings,
            "timeline": self.timeline.iter().map(|(e, t)| json!({"event": e, "time": time(*t)})).collect::<Vec<_>>(),
        })
    }

    /// The short form (LIST).
    pub fn summary(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "state": self.state.as_str(),
            "kind": match self.kind { Kind::Binary => "binary", Kind::Bundle { .. } => "bundle" },
            "size": self.size,
            "owner": &*self.owner,
            "pid": self.pid,
            "created": time(self.created),
            "exit": self.exit.map(exit_json),
        })
    }

    /// The full form (STATUS).
    pub fn status(&self) -> Value {
        let mut v = self.summary();
        let m = v.as_object_mut().expect("object");
        m.insert("sha256".into(), json!(self.sha256));
        if let Kind::Bundle { exec_path } = &self.kind {
            m.insert("exec_path".into(), json!(exec_path));
        }
        m.insert("elf".into(), json!(self.elf));
        m.insert("ns_pid".into(), json!(self.ns_pid));
        m.insert("runs".into(), json!(self.runs));
        m.insert("started".into(), json!(self.started.map(time)));
        m.insert("ended".into(), json!(self.ended.map(time)));
        m.insert("limits".into(), limits_json(&self.limits));
        m.insert("limit_hit".into(), json!(self.limit_hit()));
        m.insert(
            "usage".into(),
            match &self.usage {
                Some(u) => json!({"cpu_user_ms": u.user_us / 1000, "cpu_sys_ms": u.sys_us / 1000, "max_rss_kib": u.max_rss_kib}),
                None => Value::Null,
            },
        );
        m.insert("output".into(), json!({"stdout_bytes": self.out_bytes[0], "stderr_bytes": self.out_bytes[1], "buffered": self.logs.buf.len(), "dropped": self.logs.start()}));
        v
    }
}

/// `{"code":N}` or `{"signal":N}`.
pub fn exit_json(e: ExitStatus) -> Value {
    match e {
        ExitStatus::Code(c) => json!({"code": c}),
        ExitStatus::Signal(s) => json!({"signal": s}),
    }
}

/// Limits as JSON (0 = unlimited is shown as null).
pub fn limits_json(l: &RunLimits) -> Value {
    let n = |v: u64| if v == 0 { Value::Null } else { json!(v) };
    json!({"cpu_seconds": n(l.cpu_seconds), "address_space": n(l.address_space), "open_files": n(l.open_files), "processes": n(l.processes), "tmp_bytes": n(l.tmp_bytes), "memory_bytes": n(l.memory_bytes)})
}

/// RFC 3339 UTC with milliseconds.
pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_newest_and_counts_drops() {
        let mut r = LogRing::new(8);
        r.push(b"hello ");
        r.push(b"world");
        assert_eq!(r.read_from(0, 100), (b"lo world".to_vec(), 3));
        assert_eq!(r.read_from(8, 100), (b"rld".to_vec(), 0));
        r.push(&[b'x'; 20]);
        assert_eq!(r.read_from(0, 100).0, vec![b'x'; 8]);
        assert_eq!(r.end(), 31);
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let (_, b) = output_json(&[0xff, b'a']);
        assert_eq!(b.unwrap(), "/2E=");
    }
}
