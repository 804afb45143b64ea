//! The frontend's view of sessions (SPEC §4): what the broker reported, the state machine,
//! captured output, receipts, and the daemon's event log. Every owner reads and updates
//! it; none owns it. It never guesses: the broker owns the processes.

use super::ring::Ring;
use crate::auth::Identity;
use proto::reply::{Elf, Event, EventKind, Exit, Kind, LimitHit, Receipt, Script, State};
use proto::Time;
use shared::{RunLimits, Usage};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;
use uuid::Uuid;

/// How many receipts a session keeps.
pub const RECEIPTS_KEPT: usize = 16;
/// Events kept for subscribers that fall behind (they are told how many they missed).
pub const EVENTS_KEPT: usize = 4096;

/// `data` as UTF-8 text (invalid sequences replaced) and, when it was not valid UTF-8, its
/// exact bytes in base64.
pub fn output_text(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), Some(proto::base64::encode(bytes))),
    }
}

/// What an upload made of a new session.
#[derive(Debug)]
pub struct NewSession {
    /// Its id.
    pub id: Uuid,
    /// The uploading identity.
    pub owner: Arc<str>,
    /// Binary or bundle.
    pub kind: Kind,
    /// A bundle's executable.
    pub exec_path: Option<String>,
    /// Bytes it holds.
    pub size: u64,
    /// sha256 of the upload.
    pub sha256: String,
    /// ELF facts of its program (`None`: a script).
    pub elf: Option<Elf>,
    /// A script's `#!` line.
    pub script: Option<Script>,
    /// The program's name (`UPLOAD --name`).
    pub name: Option<String>,
}

/// One session.
#[derive(Debug)]
pub struct Session {
    /// Its id.
    pub id: Uuid,
    /// The identity that uploaded it (SPEC §7): only it and admins see it.
    pub owner: Arc<str>,
    /// Binary or bundle.
    pub kind: Kind,
    /// A bundle's executable, relative to its root.
    pub exec_path: Option<String>,
    /// State.
    pub state: State,
    /// Bytes it holds of the budget.
    pub size: u64,
    /// sha256 of the upload.
    pub sha256: String,
    /// ELF facts of its program (`None`: a script).
    pub elf: Option<Elf>,
    /// A script's `#!` line.
    pub script: Option<Script>,
    /// The program's name (`UPLOAD --name`).
    pub name: Option<String>,
    /// Upload time.
    pub created: Time,
    /// Host pid of the current/last program.
    pub pid: Option<i32>,
    /// Pid inside its namespace.
    pub ns_pid: Option<u32>,
    /// How the last run ended.
    pub exit: Option<Exit>,
    /// What the last run used.
    pub usage: Option<Usage>,
    /// A cgroup limit the last run ran into (from the broker).
    pub cgroup_hit: Option<shared::LimitHit>,
    /// Limits of the current/last run.
    pub limits: RunLimits,
    /// Runs so far.
    pub runs: u32,
    /// Start of the current/last run.
    pub started: Option<Time>,
    /// End of the last run.
    pub ended: Option<Time>,
    /// Captured output of the current/last run.
    pub logs: Ring,
    /// Bytes the program wrote to stdout / stderr in this run.
    pub out_bytes: [u64; 2],
    /// sha256 of stdout and stderr of the current/last run, as they are read.
    pub out_hash: [sha2::Sha256; 2],
    /// Log pipes still open (stdout, stderr).
    pub pipes_open: u8,
    /// A START, DEBUG or DELETE is in flight with the broker.
    pub busy: bool,
    /// Being deleted: invisible to every command.
    pub deleting: bool,
    /// Arguments (after argv[0]) of the current/last run.
    pub run_args: Vec<String>,
    /// Environment variable names of the current/last run (never the values).
    pub run_env_keys: Vec<String>,
    /// Receipts of the last runs, oldest first.
    pub receipts: VecDeque<Receipt>,
    /// Lifecycle events of the current/last run, with their times (for the receipt).
    pub timeline: Vec<(&'static str, Time)>,
    /// Its `/tmp` when the last run ended.
    pub tmp: Option<shared::TmpUsage>,
    /// Processes EXEC started in the current run that have ended (for its receipt).
    pub exec_processes: Vec<proto::reply::Process>,
    /// DEBUGGING: its debugger's endpoint or peer (for STATUS).
    pub debug: Option<Box<DebugView>>,
    /// Bytes of its `/tmp` counted in the rig's budget (see [`Sessions::set_tmp_held`]).
    tmp_held: u64,
    /// The last core dump a run left (see [`Sessions::keep_core`]).
    core: Option<KeptCore>,
}

/// A core dump kept for a session: a sealed memfd (`CORE` sends it), counted in the rig's
/// budget until the next one or DELETE.
#[derive(Debug)]
pub struct KeptCore {
    /// The ELF core file.
    pub file: std::fs::File,
    /// What it is.
    pub info: proto::reply::Core,
}

/// What STATUS shows of a DEBUGGING session.
#[derive(Debug, Clone, Default)]
pub struct DebugView {
    /// gdbserver launched the program (START --debug).
    pub launched: bool,
    /// A waiting port and its address.
    pub port: Option<(u16, String)>,
    /// A gdb line that connects.
    pub gdb: Option<String>,
    /// When a debugger no longer may connect.
    pub deadline: Option<std::time::Instant>,
    /// The connected debugger.
    pub peer: Option<String>,
}

impl DebugView {
    /// As STATUS shows it.
    pub fn status(&self) -> proto::reply::DebugStatus {
        let left = self.deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()).as_millis() as u64);
        proto::reply::DebugStatus {
            launched: self.launched,
            port: self.port.as_ref().map(|p| p.0),
            host: self.port.as_ref().map(|p| p.1.clone()),
            gdb: self.gdb.clone(),
            deadline_ms: left,
            peer: self.peer.clone(),
        }
    }
}

impl Session {
    /// The last core dump a run left, if one is kept.
    pub fn core(&self) -> Option<&KeptCore> {
        self.core.as_ref()
    }

    /// A session just loaded, with the daemon's default `limits` and an output buffer of
    /// `log_buffer` bytes.
    pub fn loaded(n: NewSession, limits: RunLimits, log_buffer: usize) -> Session {
        let NewSession { id, owner, kind, exec_path, size, sha256, elf, script, name } = n;
        Session {
            id,
            owner,
            kind,
            exec_path,
            state: State::Loaded,
            size,
            sha256,
            elf,
            script,
            name,
            created: Time::now(),
            debug: None,
            pid: None,
            ns_pid: None,
            exit: None,
            usage: None,
            cgroup_hit: None,
            limits,
            runs: 0,
            started: None,
            ended: None,
            logs: Ring::new(log_buffer),
            out_bytes: [0, 0],
            out_hash: Default::default(),
            pipes_open: 0,
            busy: false,
            deleting: false,
            run_args: Vec::new(),
            run_env_keys: Vec::new(),
            receipts: VecDeque::new(),
            timeline: Vec::new(),
            tmp: None,
            exec_processes: Vec::new(),
            tmp_held: 0,
            core: None,
        }
    }

    /// What ended the run, if a limit did.
    pub fn limit_hit(&self) -> Option<LimitHit> {
        match self.cgroup_hit {
            Some(shared::LimitHit::Memory) => return Some(LimitHit::Memory),
            Some(shared::LimitHit::Pids) => return Some(LimitHit::Pids),
            Some(shared::LimitHit::Wall) => return Some(LimitHit::Wall),
            None => {}
        }
        match self.exit? {
            Exit::Signal(s) if s == libc::SIGXCPU => Some(LimitHit::Cpu),
            Exit::Signal(s) if s == libc::SIGKILL && self.limits.cpu_seconds > 0 => {
                let used = self.usage.as_ref().map(|u| (u.user_us + u.sys_us) / 1_000_000).unwrap_or(0);
                (used >= self.limits.cpu_seconds).then_some(LimitHit::Cpu)
            }
            _ => None,
        }
    }

    /// The LIST form.
    pub fn summary(&self) -> proto::reply::Summary {
        proto::reply::Summary {
            id: self.id,
            state: self.state,
            kind: self.kind,
            size: self.size,
            owner: self.owner.clone(),
            pid: self.pid,
            created: self.created,
            exit: self.exit,
        }
    }
}

/// `{cpu_seconds, ...}` with 0 (unlimited) as `null`.
pub fn limits_reply(l: &RunLimits) -> proto::reply::RunLimits {
    let n = |v: u64| (v != 0).then_some(v);
    proto::reply::RunLimits {
        cpu_seconds: n(l.cpu_seconds),
        address_space: n(l.address_space),
        open_files: n(l.open_files),
        processes: n(l.processes),
        tmp_bytes: n(l.tmp_bytes),
        memory_bytes: n(l.memory_bytes),
        wall_seconds: n(l.wall_seconds),
        cpus: n(l.cpu_millis).map(proto::units::MilliCpus),
        core_bytes: n(l.core_bytes),
    }
}

/// The wire form of what a run's cgroups counted.
pub fn cgroup_figures(c: Option<shared::CgroupUsage>) -> proto::reply::CgroupFigures {
    let c = c.unwrap_or_default();
    proto::reply::CgroupFigures {
        memory_peak_bytes: c.memory_peak_bytes,
        cpu_usage_usec: c.cpu_usage_usec,
        cpu_throttled_usec: c.cpu_throttled_usec,
    }
}

/// The wire form of an exit status.
pub fn exit_reply(e: shared::ExitStatus) -> Exit {
    match e {
        shared::ExitStatus::Code(c) => Exit::Code(c),
        shared::ExitStatus::Signal(s) => Exit::Signal(s),
    }
}

/// Every session, and the bytes they hold.
#[derive(Debug, Default)]
pub struct Sessions {
    map: BTreeMap<Uuid, Session>,
    /// Bytes of all loaded sessions.
    pub loaded_bytes: u64,
    /// Sessions whose output or state changed since the loop last woke their followers.
    dirty: Vec<Uuid>,
}

impl Sessions {
    /// A session the identity may see (SPEC §7): others' sessions do not exist for it, nor
    /// do sessions being deleted.
    pub fn visible(&self, viewer: Option<&Identity>, id: Uuid) -> Result<&Session, proto::Error> {
        match self.map.get(&id) {
            Some(s) if !s.deleting && viewer.is_some_and(|v| v.may_see(&s.owner)) => Ok(s),
            _ => Err(proto::Error::not_found(format!("no session {id}"))),
        }
    }

    /// Every session `viewer` may see, in id order.
    pub fn visible_all<'a>(&'a self, viewer: &'a Identity) -> impl Iterator<Item = &'a Session> + 'a {
        self.map.values().filter(move |s| !s.deleting && viewer.may_see(&s.owner))
    }

    /// A session, whoever owns it (for completions of what was already checked).
    pub fn get(&self, id: &Uuid) -> Option<&Session> {
        self.map.get(id)
    }

    /// A session, to change it.
    pub fn get_mut(&mut self, id: &Uuid) -> Option<&mut Session> {
        self.map.get_mut(id)
    }

    /// Adds a loaded session and counts its bytes.
    pub fn insert(&mut self, s: Session) {
        self.loaded_bytes += s.size;
        self.map.insert(s.id, s);
    }

    /// Removes a session and gives its bytes (its upload and its `/tmp`) back.
    pub fn remove(&mut self, id: &Uuid) -> Option<Session> {
        let s = self.map.remove(id)?;
        self.loaded_bytes -= s.size + s.tmp_held + s.core.as_ref().map_or(0, |c| c.info.bytes);
        Some(s)
    }

    /// Keeps `core` as session `id`'s last core dump (the one before is let go), if the
    /// rig's budget (`--max-total-size`) has room for it; else it is refused (and
    /// returned, for the caller to say why).
    pub fn keep_core(&mut self, id: &Uuid, core: KeptCore, budget: u64) -> Result<(), KeptCore> {
        let Some(s) = self.map.get_mut(id) else { return Err(core) };
        let old = s.core.as_ref().map_or(0, |c| c.info.bytes);
        let others = self.loaded_bytes - old;
        if others.saturating_add(core.info.bytes) > budget {
            return Err(core);
        }
        self.loaded_bytes = others + core.info.bytes;
        s.core = Some(core);
        Ok(())
    }

    /// The bytes of session `id`'s `/tmp` now (kept between runs until DELETE) count in the
    /// rig's budget (`--max-total-size`) with its upload.
    pub fn set_tmp_held(&mut self, id: &Uuid, bytes: u64) {
        if let Some(s) = self.map.get_mut(id) {
            self.loaded_bytes = self.loaded_bytes - s.tmp_held + bytes;
            s.tmp_held = bytes;
        }
    }

    /// Sessions loaded (deleting ones included: they still hold their bytes).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Sessions whose program is alive.
    pub fn running(&self) -> usize {
        self.map.values().filter(|s| s.state.alive()).count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sessions and bytes `owner` holds.
    pub fn held_by(&self, owner: &str) -> (usize, u64) {
        self.map.values().filter(|s| &*s.owner == owner).fold((0, 0), |(n, b), s| (n + 1, b + s.size))
    }

    /// Notes that followers of `id` have something new.
    pub fn touch(&mut self, id: Uuid) {
        if !self.dirty.contains(&id) {
            self.dirty.push(id);
        }
    }

    /// The sessions touched since the last call.
    pub fn take_dirty(&mut self) -> Vec<Uuid> {
        std::mem::take(&mut self.dirty)
    }
}

/// What a subscriber gets next.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    /// Events it can no longer get (they left the log before it read them).
    pub missed: u64,
    /// Events for it, in order.
    pub events: Vec<Event>,
    /// Where it goes on from.
    pub next: u64,
    /// A one-session stream saw the session's deletion: it ends.
    pub ended: bool,
}

/// The event log: the last [`EVENTS_KEPT`] events, numbered from 1, each with the owner of
/// its session (subscribers see only what they may).
#[derive(Debug)]
pub struct EventLog {
    ring: VecDeque<(Arc<str>, Event)>,
    next_seq: u64,
    cap: usize,
}

impl EventLog {
    /// An empty log keeping `cap` events.
    pub fn new(cap: usize) -> Self {
        EventLog { ring: VecDeque::new(), next_seq: 1, cap }
    }

    /// The number the next event gets.
    pub fn head(&self) -> u64 {
        self.next_seq
    }

    /// Records an event of session `id` (owned by `owner`).
    pub fn push(&mut self, id: Uuid, owner: Arc<str>, what: EventKind) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back((owner, Event { ok: proto::True, what, seq, time: Time::now(), id }));
        seq
    }

    /// Up to `max` events from sequence `next` on, for `filter` (one session or all), of
    /// the sessions `viewer` may see.
    pub fn since(&self, next: u64, filter: Option<Uuid>, viewer: &Identity, max: usize) -> Batch {
        let oldest = self.ring.front().map_or(self.next_seq, |(_, e)| e.seq);
        let mut b = Batch { next: next.max(oldest), missed: oldest.saturating_sub(next), ..Default::default() };
        for (owner, e) in self.ring.iter().skip((b.next - oldest) as usize) {
            if b.events.len() == max {
                break;
            }
            b.next = e.seq + 1;
            if filter.is_some_and(|f| f != e.id) || !viewer.may_see(owner) {
                continue;
            }
            let deleted = matches!(e.what, EventKind::Deleted {});
            b.events.push(e.clone());
            if filter.is_some() && deleted {
                b.ended = true;
                break;
            }
        }
        b
    }
}

/// Now, for receipts and timelines.
pub fn now() -> Time {
    Time(SystemTime::now())
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
            let what = if i + 1 == n { EventKind::Deleted {} } else { EventKind::Spawned { run: i as u32 } };
            l.push(id, owner, what);
        }
        l
    }

    fn run_of(e: &Event) -> u32 {
        match e.what {
            EventKind::Spawned { run } => run,
            _ => u32::MAX,
        }
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
        assert_eq!(run_of(&b.events[0]), 3);
    }

    #[test]
    fn a_session_stream_filters_and_ends_at_deletion() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let l = log_with(9, 100, &[a, b, a]);
        // Events 0..9 alternate a, b, a; the last (i = 8, id a) is the deletion.
        let got = l.since(1, Some(a), &Identity::anonymous(), 100);
        assert!(got.events.iter().all(|e| e.id == a));
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
        assert!(got.events.iter().all(|e| e.id == b));
        assert_eq!(got.next, 10);
        // Asking for another's session by id gives nothing either.
        assert!(l.since(1, Some(a), &u2, 100).events.is_empty());
        let admin = Identity { name: Arc::from("root"), admin: true };
        assert_eq!(l.since(1, None, &admin, 100).events.len(), 9);
    }

    #[test]
    fn ownership_hides_others_sessions() {
        let mut s = Sessions::default();
        let id = Uuid::from_u128(7);
        let new = NewSession {
            id,
            owner: Arc::from("alice"),
            kind: Kind::Binary,
            exec_path: None,
            size: 10,
            sha256: String::new(),
            elf: Some(Elf::default()),
            script: None,
            name: None,
        };
        s.insert(Session::loaded(new, RunLimits::default(), 4096));
        let alice = Identity { name: Arc::from("alice"), admin: false };
        let bob = Identity { name: Arc::from("bob"), admin: false };
        assert!(s.visible(Some(&alice), id).is_ok());
        assert_eq!(s.visible(Some(&bob), id).unwrap_err().error, proto::Code::NotFound);
        assert!(s.visible(None, id).is_err());
        assert_eq!(s.visible_all(&bob).count(), 0);
        assert_eq!(s.held_by("alice"), (1, 10));
        s.get_mut(&id).unwrap().deleting = true;
        assert!(s.visible(Some(&alice), id).is_err());
        assert_eq!(s.remove(&id).unwrap().size, 10);
        assert_eq!(s.loaded_bytes, 0);
    }
}
