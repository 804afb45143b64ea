//! What a run touched (START `observe`): the files it opened, the programs it executed,
//! the network endpoints it tried, as the session's init saw them through the seccomp
//! user-notification listener. Bounded: at most `limit` distinct entries per kind (then
//! counted in `truncated`) and [`MAX_EVENTS`] instant events, so the init's bookkeeping
//! and the record that crosses to the frontend stay within a fixed budget.
//!
//! The record travels from the init to the frontend in a sealed memfd (it may be larger
//! than a message), encoded with bincode and decoded with a size limit: the init runs as
//! the session's uid, so the frontend treats the bytes as untrusted.

use bincode::{Decode, Encode};
use std::collections::HashMap;

/// Default distinct entries per kind.
pub const DEFAULT_LIMIT: u32 = 1024;
/// Highest limit a START may ask for.
pub const MAX_LIMIT: u32 = 16_384;
/// Most instant events (file opens, execs, connects) kept for the trace.
pub const MAX_EVENTS: usize = 4096;
/// Longest path or address kept (longer ones are cut on a character boundary).
pub const MAX_PATH: usize = 512;
/// Most arguments of an exec kept, and the longest one.
pub const MAX_ARGS: usize = 64;
/// Longest argument kept.
pub const MAX_ARG: usize = 256;
/// Most distinct failures kept per path.
const MAX_FAILURES: usize = 8;
/// Largest encoded record the frontend accepts.
pub const MAX_BYTES: usize = 32 << 20;

/// What to observe.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observe {
    /// File opens and creations.
    pub files: bool,
    /// execve/execveat.
    pub exec: bool,
    /// connect/bind/sendto/sendmsg with an address.
    pub net: bool,
    /// Distinct entries kept per kind.
    pub limit: u32,
}

impl Observe {
    /// Whether anything is observed.
    pub fn any(&self) -> bool {
        self.files || self.exec || self.net
    }
}

/// One path the run opened (as the program named it).
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct FileSeen {
    /// The path as passed to the call.
    pub path: String,
    /// The absolute path it names in the session's view, when it could be resolved (a
    /// relative path against the process's working directory or directory descriptor).
    pub resolved: Option<String>,
    /// Opened for reading.
    pub read: bool,
    /// Opened for writing.
    pub write: bool,
    /// Created (it did not exist, `O_CREAT`).
    pub create: bool,
    /// Executed.
    pub exec: bool,
    /// Calls that named it.
    pub count: u32,
    /// First call, microseconds since the Unix epoch.
    pub first_us: u64,
    /// Failures: (errno, count).
    pub failures: Vec<(i32, u32)>,
}

/// One exec.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecSeen {
    /// Pid in the session.
    pub pid: u32,
    /// Its parent.
    pub ppid: u32,
    /// The program's path as passed.
    pub path: String,
    /// Its arguments (at most [`MAX_ARGS`], each at most [`MAX_ARG`] bytes).
    pub argv: Vec<String>,
    /// More arguments were passed than kept.
    pub argv_truncated: bool,
    /// When, microseconds since the Unix epoch.
    pub time_us: u64,
    /// Why it failed (errno), if it did.
    pub error: Option<i32>,
}

/// A network operation.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NetOp {
    /// connect(2).
    #[default]
    Connect,
    /// bind(2).
    Bind,
    /// sendto(2) with an address.
    Sendto,
    /// sendmsg(2) with an address.
    Sendmsg,
}

impl NetOp {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetOp::Connect => "connect",
            NetOp::Bind => "bind",
            NetOp::Sendto => "sendto",
            NetOp::Sendmsg => "sendmsg",
        }
    }
}

/// One endpoint tried, by one operation.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct NetSeen {
    /// The operation.
    pub op: NetOp,
    /// `inet`, `inet6`, `unix` or `af<N>`.
    pub family: String,
    /// The address (an IP, or a unix socket path, `@name` for an abstract one).
    pub address: String,
    /// The port (0 for unix sockets).
    pub port: u16,
    /// Calls.
    pub count: u32,
    /// First call, microseconds since the Unix epoch.
    pub first_us: u64,
    /// Failures: (errno, count).
    pub failures: Vec<(i32, u32)>,
}

/// Kinds of instant events.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventKind {
    /// A file opened.
    #[default]
    File,
    /// An exec.
    Exec,
    /// A network call.
    Net,
}

/// One call, for the timeline.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// Pid in the session.
    pub pid: u32,
    /// When, microseconds since the Unix epoch.
    pub time_us: u64,
    /// Its kind.
    pub kind: EventKind,
    /// What (e.g. `open /etc/passwd r`, `connect 127.0.0.1:1 ECONNREFUSED`).
    pub what: String,
    /// errno, if it failed.
    pub error: Option<i32>,
}

/// Entries beyond the bounds, counted only.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Truncated {
    /// Calls naming a path not kept.
    pub files: u64,
    /// Execs not kept.
    pub execs: u64,
    /// Network calls to endpoints not kept.
    pub net: u64,
    /// Instant events not kept.
    pub events: u64,
}

/// What a run touched.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// What was asked.
    pub asked: Observe,
    /// Files, in the order first seen.
    pub files: Vec<FileSeen>,
    /// Execs, in order.
    pub execs: Vec<ExecSeen>,
    /// Network endpoints, in the order first seen.
    pub net: Vec<NetSeen>,
    /// Calls, in order, for the timeline.
    pub events: Vec<Event>,
    /// What did not fit.
    pub truncated: Truncated,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObservedError {
    /// Larger than [`MAX_BYTES`].
    #[error("the observation record is {0} bytes, more than {MAX_BYTES}")]
    TooLarge(usize),
    /// Not a record.
    #[error("the observation record is malformed: {0}")]
    Malformed(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BYTES>()
}

impl Observed {
    /// Its encoding.
    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, config()).unwrap_or_default()
    }

    /// Reads a record, refusing one beyond the bounds (of size, of entries per kind).
    pub fn decode(bytes: &[u8]) -> Result<Observed, ObservedError> {
        if bytes.len() > MAX_BYTES {
            return Err(ObservedError::TooLarge(bytes.len()));
        }
        let (o, used): (Observed, usize) =
            bincode::decode_from_slice(bytes, config()).map_err(|e| ObservedError::Malformed(e.to_string()))?;
        if used != bytes.len() {
            return Err(ObservedError::Malformed("bytes after the record".into()));
        }
        let limit = o.asked.limit.min(MAX_LIMIT) as usize;
        if o.files.len() > limit || o.execs.len() > limit || o.net.len() > limit || o.events.len() > MAX_EVENTS {
            return Err(ObservedError::Malformed("more entries than its bounds".into()));
        }
        Ok(o)
    }

    /// Calls seen in all (kept or not).
    pub fn calls(&self) -> u64 {
        let files: u64 = self.files.iter().map(|f| u64::from(f.count)).sum();
        let net: u64 = self.net.iter().map(|n| u64::from(n.count)).sum();
        files + net + self.execs.len() as u64 + self.truncated.files + self.truncated.execs + self.truncated.net
    }
}

/// Cuts `s` to `max` bytes on a character boundary.
pub fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn note_failure(failures: &mut Vec<(i32, u32)>, error: Option<i32>) {
    let Some(e) = error else { return };
    if let Some(f) = failures.iter_mut().find(|(have, _)| *have == e) {
        f.1 = f.1.saturating_add(1);
    } else if failures.len() < MAX_FAILURES {
        failures.push((e, 1));
    }
}

/// How a file was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    /// For reading.
    pub read: bool,
    /// For writing.
    pub write: bool,
    /// Created.
    pub create: bool,
    /// Executed.
    pub exec: bool,
}

/// The init's bounded bookkeeping.
#[derive(Debug, Default)]
pub struct Recorder {
    rec: Observed,
    files: HashMap<String, usize>,
    net: HashMap<(NetOp, String, String, u16), usize>,
}

impl Recorder {
    /// A recorder for `asked` (its limit capped at [`MAX_LIMIT`]).
    pub fn new(mut asked: Observe) -> Recorder {
        asked.limit = asked.limit.clamp(1, MAX_LIMIT);
        Recorder { rec: Observed { asked, ..Observed::default() }, ..Recorder::default() }
    }

    /// What is asked.
    pub fn asked(&self) -> Observe {
        self.rec.asked
    }

    /// Room for another event (else it is counted, and need not be described).
    fn event_room(&mut self) -> bool {
        let room = self.rec.events.len() < MAX_EVENTS;
        if !room {
            self.rec.truncated.events += 1;
        }
        room
    }

    fn event(&mut self, pid: u32, time_us: u64, kind: EventKind, what: String, error: Option<i32>) {
        self.rec.events.push(Event { pid, time_us, kind, what: clip(what, MAX_PATH + 32), error });
    }

    /// A file call.
    pub fn file(
        &mut self,
        pid: u32,
        time_us: u64,
        path: String,
        resolved: Option<String>,
        how: Access,
        error: Option<i32>,
    ) {
        let path = clip(path, MAX_PATH);
        if self.event_room() {
            let flags = format!(
                "{}{}{}{}",
                if how.read { "r" } else { "" },
                if how.write { "w" } else { "" },
                if how.create { "c" } else { "" },
                if how.exec { "x" } else { "" }
            );
            self.event(pid, time_us, EventKind::File, format!("open {path} {flags}"), error);
        }
        let limit = self.rec.asked.limit as usize;
        let i = match self.files.get(&path) {
            Some(&i) => i,
            None if self.rec.files.len() < limit => {
                self.rec.files.push(FileSeen {
                    path: path.clone(),
                    resolved: resolved.map(|r| clip(r, MAX_PATH)),
                    first_us: time_us,
                    ..FileSeen::default()
                });
                self.files.insert(path, self.rec.files.len() - 1);
                self.rec.files.len() - 1
            }
            None => {
                self.rec.truncated.files += 1;
                return;
            }
        };
        let f = &mut self.rec.files[i];
        f.count = f.count.saturating_add(1);
        if error.is_none() {
            f.read |= how.read;
            f.write |= how.write;
            f.create |= how.create;
            f.exec |= how.exec;
        }
        note_failure(&mut f.failures, error);
    }

    /// An exec.
    pub fn exec(&mut self, e: ExecSeen) {
        let mut e = e;
        e.path = clip(e.path, MAX_PATH);
        if self.event_room() {
            let what = format!("exec {} {}", e.path, e.argv.iter().skip(1).cloned().collect::<Vec<_>>().join(" "));
            self.event(e.pid, e.time_us, EventKind::Exec, what.trim_end().to_string(), e.error);
        }
        if self.rec.execs.len() < self.rec.asked.limit as usize {
            self.rec.execs.push(e);
        } else {
            self.rec.truncated.execs += 1;
        }
    }

    /// A network call.
    #[allow(clippy::too_many_arguments)]
    pub fn net(
        &mut self,
        pid: u32,
        time_us: u64,
        op: NetOp,
        family: String,
        address: String,
        port: u16,
        error: Option<i32>,
    ) {
        let address = clip(address, MAX_PATH);
        if self.event_room() {
            let at = if port != 0 { format!("{address}:{port}") } else { address.clone() };
            self.event(pid, time_us, EventKind::Net, format!("{} {at}", op.as_str()), error);
        }
        let key = (op, family.clone(), address.clone(), port);
        let limit = self.rec.asked.limit as usize;
        let i = match self.net.get(&key) {
            Some(&i) => i,
            None if self.rec.net.len() < limit => {
                self.rec.net.push(NetSeen { op, family, address, port, first_us: time_us, ..NetSeen::default() });
                self.net.insert(key, self.rec.net.len() - 1);
                self.rec.net.len() - 1
            }
            None => {
                self.rec.truncated.net += 1;
                return;
            }
        };
        let n = &mut self.rec.net[i];
        n.count = n.count.saturating_add(1);
        note_failure(&mut n.failures, error);
    }

    /// The record.
    pub fn finish(self) -> Observed {
        self.rec
    }
}

/// The errno's name (`ENOENT`), or its number.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EROFS => "EROFS",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOEXEC => "ENOEXEC",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        libc::ETXTBSY => "ETXTBSY",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(limit: u32) -> Observe {
        Observe { files: true, exec: true, net: true, limit }
    }

    #[test]
    fn files_are_merged_per_path_and_bounded() {
        let mut r = Recorder::new(asked(2));
        let read = Access { read: true, ..Access::default() };
        r.file(2, 10, "/etc/passwd".into(), Some("/etc/passwd".into()), read, None);
        r.file(2, 11, "/etc/passwd".into(), None, Access { write: true, ..read }, Some(libc::EACCES));
        r.file(2, 12, "/nope".into(), None, read, Some(libc::ENOENT));
        r.file(2, 13, "/nope".into(), None, read, Some(libc::ENOENT));
        r.file(2, 14, "/third".into(), None, read, None);
        let o = r.finish();
        assert_eq!(o.files.len(), 2);
        let p = &o.files[0];
        assert!(p.read && !p.write, "a failed write adds no flag");
        assert_eq!((p.count, p.first_us, p.failures.clone()), (2, 10, vec![(libc::EACCES, 1)]));
        assert_eq!(o.files[1].failures, vec![(libc::ENOENT, 2)]);
        assert_eq!(o.truncated.files, 1);
        assert_eq!(o.events.len(), 5);
        assert_eq!(o.calls(), 5);
    }

    #[test]
    fn records_round_trip_and_hostile_ones_are_refused() {
        let mut r = Recorder::new(asked(4));
        r.exec(ExecSeen {
            pid: 3,
            ppid: 2,
            path: "/bin/true".into(),
            argv: vec!["true".into(), "x".into()],
            ..ExecSeen::default()
        });
        r.net(2, 5, NetOp::Connect, "inet".into(), "127.0.0.1".into(), 1, Some(libc::ECONNREFUSED));
        r.net(2, 6, NetOp::Connect, "inet".into(), "127.0.0.1".into(), 1, Some(libc::ECONNREFUSED));
        let o = r.finish();
        assert_eq!(o.net[0].count, 2);
        assert_eq!(o.events[0].what, "exec /bin/true x");
        let bytes = o.encode();
        assert_eq!(Observed::decode(&bytes).unwrap(), o);
        assert!(Observed::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Observed::decode(&longer).is_err());
        // More entries than its own limit says.
        let mut big = o.clone();
        big.asked.limit = 1;
        big.net.push(big.net[0].clone());
        assert!(Observed::decode(&big.encode()).is_err());
        // A huge announced length does not allocate.
        let mut huge = vec![0u8; 16];
        huge[4] = 0xfd;
        huge[5..13].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Observed::decode(&huge).is_err());
        assert_eq!(clip("é".repeat(10), 5).len(), 4);
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(9999), "errno 9999");
    }
}
