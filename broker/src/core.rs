//! Post-mortem core dumps, taken by the session's init (PID 1 of the session), whatever
//! the host's `core_pattern` says: the kernel's own dumper is never used (`RLIMIT_CORE`
//! stays 0 in the jail), nothing is written to any filesystem, and a process's memory is
//! only ever read by the init of its own session.
//!
//! The init traces the program's process from its fork (`PTRACE_SEIZE`, which stops
//! nothing by itself) with every thread and child it makes (`TRACECLONE`, `TRACEFORK`,
//! `TRACEVFORK`): a tracee stops only when a signal is delivered to it, at a fork, and
//! for job control. When the signal is one whose default action dumps core and the
//! process neither catches nor ignores it, the init stops the process's other threads,
//! writes an ELF core file (registers of every thread, the process's notes, its memory)
//! into a memfd of at most `core_bytes` — stacks first, then the rest in address order,
//! what does not fit cut — seals it, and lets the signal kill the process as it would
//! have. The last core of a run goes to the broker with the run's end.
//!
//! Tracing must give way to the program's own debugging: a `ptrace` call of the tree
//! (`PTRACE_TRACEME`, `PTRACE_ATTACH`, `PTRACE_SEIZE`) reaches the init through the
//! seccomp listener first, and the init detaches from the thread it names before the call
//! goes on; DEBUG (gdbserver attaching) asks the init to detach from everything first
//! ([`Tracer::release_all`]). A process the init no longer traces gets no core from it
//! (its debugger sees the crash).

use crate::sys;
use sha2::Digest;
use shared::CoreMeta;
use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

const PTRACE_EVENT_FORK: i32 = 1;
const PTRACE_EVENT_VFORK: i32 = 2;
const PTRACE_EVENT_CLONE: i32 = 3;
const PTRACE_EVENT_STOP: i32 = 128;
const PAGE: u64 = 4096;
/// How long a thread gets to stop when asked (one in uninterruptible sleep may not).
const STOP_WAIT: Duration = Duration::from_secs(1);

/// Signals whose default action is to dump core (signal(7)).
pub fn dumps_core(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGQUIT
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGABRT
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGSEGV
            | libc::SIGXCPU
            | libc::SIGXFSZ
            | libc::SIGSYS
    )
}

/// The init's tracing of its tree, and the last core it took.
pub struct Tracer {
    /// Largest core, bytes.
    limit: u64,
    /// Threads traced (each thread is its own tracee).
    traced: HashSet<i32>,
    /// Told to let go of everything (a debugger attaches): traces nothing from then on.
    released: bool,
    /// The last core taken, sealed.
    last: Option<(OwnedFd, CoreMeta)>,
}

impl Tracer {
    /// A tracer keeping cores of at most `limit` bytes.
    pub fn new(limit: u64) -> Tracer {
        Tracer { limit, traced: HashSet::new(), released: false, last: None }
    }

    /// Traces `pid` (the program's process, just forked) and everything it will start.
    /// False if the kernel refused (Yama's `ptrace_scope` 3, say): the run has no cores.
    pub fn seize(&mut self, pid: i32) -> bool {
        let options =
            libc::PTRACE_O_TRACEFORK | libc::PTRACE_O_TRACEVFORK | libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_EXITKILL;
        let ok = sys::ptrace_plain(libc::PTRACE_SEIZE, pid, options as libc::c_long).is_ok();
        if ok {
            self.traced.insert(pid);
        }
        ok
    }

    /// The last core taken.
    pub fn take_core(&mut self) -> Option<(OwnedFd, CoreMeta)> {
        self.last.take()
    }

    /// One wait status of `pid`: a stop of a tracee is dealt with here (true); an exit
    /// only forgets the thread (false: the caller reaps as it would).
    pub fn on_wait(&mut self, pid: i32, status: i32) -> bool {
        if libc::WIFSTOPPED(status) {
            self.on_stop(pid, status);
            return true;
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            self.traced.remove(&pid);
        }
        false
    }

    fn on_stop(&mut self, tid: i32, status: i32) {
        let (sig, event) = (libc::WSTOPSIG(status), status >> 16);
        // A child traced from its birth is first seen here (or at its parent's event).
        self.traced.insert(tid);
        self.note_child(tid, status);
        let pass = if event == 0 { sig } else { 0 };
        if self.released {
            self.traced.remove(&tid);
            let _ = sys::ptrace_plain(libc::PTRACE_DETACH, tid, pass as libc::c_long);
            return;
        }
        match event {
            // Signal-delivery-stop: the signal goes on as it came, after a core if it
            // will kill the process with one.
            0 => {
                if dumps_core(sig) && fatal(tid, sig) {
                    self.capture(tid, sig);
                }
                let _ = sys::ptrace_plain(libc::PTRACE_CONT, tid, sig as libc::c_long);
            }
            // Group-stop (SIGSTOP, SIGTSTP...): stays stopped until SIGCONT, as untraced.
            PTRACE_EVENT_STOP if matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) => {
                let _ = sys::ptrace_plain(libc::PTRACE_LISTEN, tid, 0);
            }
            _ => {
                let _ = sys::ptrace_plain(libc::PTRACE_CONT, tid, 0);
            }
        }
    }

    /// The tree's call `ptrace(request, target)` (from thread `caller`) is about to run:
    /// the thread it makes a tracee of is let go first, so that the call can succeed.
    pub fn before_ptrace(&mut self, caller: u32, request: u64, target: u64) {
        let tid = match request as libc::c_uint {
            libc::PTRACE_TRACEME => caller as i32,
            libc::PTRACE_ATTACH | libc::PTRACE_SEIZE => target as i32,
            _ => return,
        };
        self.detach(tid);
    }

    /// Lets go of everything and traces nothing more (a debugger attaches).
    pub fn release_all(&mut self) {
        self.released = true;
        while let Some(&tid) = self.traced.iter().next() {
            self.detach(tid);
        }
    }

    /// Detaches from `tid` (a tracee must be stopped to be detached: it is interrupted,
    /// and whatever stop it reports is passed on).
    fn detach(&mut self, tid: i32) {
        if !self.traced.remove(&tid) || sys::ptrace_plain(libc::PTRACE_INTERRUPT, tid, 0).is_err() {
            return;
        }
        let Some(status) = wait_stop(tid) else { return };
        let (sig, event) = (libc::WSTOPSIG(status), status >> 16);
        // Its new child, if it stopped at a fork, is traced too: let go in turn by
        // `release_all`, or it stays traced (a single thread was asked for).
        self.note_child(tid, status);
        let pass = if event == 0 { sig } else { 0 };
        let _ = sys::ptrace_plain(libc::PTRACE_DETACH, tid, pass as libc::c_long);
    }

    /// A stop of `tid` at a fork, vfork or clone: the new child is a tracee from birth.
    fn note_child(&mut self, tid: i32, status: i32) {
        if matches!(status >> 16, PTRACE_EVENT_FORK | PTRACE_EVENT_VFORK | PTRACE_EVENT_CLONE) {
            if let Ok(child) = sys::ptrace_event_msg(tid) {
                self.traced.insert(child as i32);
            }
        }
    }

    /// Thread `tid` is stopped with `sig`, which will kill its process with a core: take it.
    fn capture(&mut self, tid: i32, sig: i32) {
        let Some(tgid) = status_field(tid, "Tgid:").and_then(|v| v.parse::<i32>().ok()) else { return };
        // The other threads stop first (they share the memory being read).
        let mut threads = vec![tid];
        for t in task_ids(tgid) {
            if t == tid || !self.traced.contains(&t) || sys::ptrace_plain(libc::PTRACE_INTERRUPT, t, 0).is_err() {
                continue;
            }
            if let Some(status) = wait_stop(t) {
                self.note_child(t, status);
                // Left stopped: the signal about to be delivered kills every thread.
                threads.push(t);
            }
        }
        // The memory of the last core is given back before the next is written.
        self.last = None;
        let siginfo = sys::ptrace_siginfo(tid).unwrap_or([0; 128]);
        match write_core(tgid, sig, &threads, &siginfo, self.limit) {
            Ok(core) => self.last = Some(core),
            Err(e) => log::warn!("no core dump of pid {tgid} ({sig}): {e}"),
        }
    }
}

/// Waits (bounded) for `tid`'s next stop; `None` if it exited or did not stop in time.
fn wait_stop(tid: i32) -> Option<i32> {
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        match sys::wait_raw(tid) {
            Some((_, status)) if libc::WIFSTOPPED(status) => return Some(status),
            Some(_) => return None,
            None if Instant::now() >= deadline => return None,
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// Whether `sig`, being delivered to `tid`, takes its default action (neither caught nor
/// ignored by its process; a fault's signal was already reset to it by the kernel).
fn fatal(tid: i32, sig: i32) -> bool {
    let bit = 1u64 << (sig - 1);
    let mask = |field| status_field(tid, field).and_then(|v| u64::from_str_radix(&v, 16).ok());
    match (mask("SigIgn:"), mask("SigCgt:")) {
        (Some(ign), Some(cgt)) => (ign | cgt) & bit == 0,
        _ => false,
    }
}

/// A field of `/proc/<tid>/status`, trimmed.
fn status_field(tid: i32, field: &str) -> Option<String> {
    let st = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    st.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().to_string())
}

/// Threads of process `tgid`.
fn task_ids(tgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tgid}/task")) else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// The fields of `/proc/<tid>/stat` after the name (`state` first), and the name.
fn stat(tid: i32) -> (Vec<String>, String) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{tid}/stat")) else { return (Vec::new(), String::new()) };
    // "pid (comm) state ...": the name may hold anything, so split at the last ')'.
    let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else { return (Vec::new(), String::new()) };
    let rest = s[close + 1..].split_whitespace().map(str::to_string).collect();
    (rest, s[open + 1..close].to_string())
}

/// Field `i` (0 = state) of a `stat` line as a number.
fn field(st: &[String], i: usize) -> i64 {
    st.get(i).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// How much of a mapping a core holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dump {
    /// Nothing (unreadable, a file's unchanged pages, device memory).
    None,
    /// Its first page, if it is an ELF header (for build ids).
    Header,
    /// All of it (anonymous memory, a file's private writable pages, the vDSO).
    All,
}

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    /// `PF_R | PF_W | PF_X`.
    flags: u32,
    offset: u64,
    path: String,
    dump: Dump,
    /// Not `MAP_SHARED`.
    private: bool,
}

/// Parses `/proc/<pid>/smaps` (or `maps`: the kernel's text; a malformed line is
/// skipped). A file's private mapping with anonymous pages (written: `.data`, or the
/// RELRO part of `.dynamic` that leads a debugger to the shared libraries) is dumped.
fn mappings(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if let Some(m) = out.last_mut().filter(|m| kb > 0 && m.dump == Dump::Header && m.private) {
                m.dump = Dump::All;
            }
            if let Some(m) = out.last_mut().filter(|m| kb > 0 && m.dump == Dump::None && m.private && m.flags & 4 != 0)
            {
                m.dump = Dump::All;
            }
            continue;
        }
        let mut parts = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(offset), Some(_dev), Some(_inode)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = parts.next().unwrap_or("").trim_start().to_string();
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end), Ok(offset)) =
            (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16), u64::from_str_radix(offset, 16))
        else {
            continue;
        };
        let p = perms.as_bytes();
        if p.len() < 4 || end <= start {
            continue;
        }
        let flags = (u32::from(p[0] == b'r') * 4) | (u32::from(p[1] == b'w') * 2) | u32::from(p[2] == b'x');
        let (readable, writable, shared) = (p[0] == b'r', p[1] == b'w', p[3] == b's');
        let anonymous = path.is_empty() || (path.starts_with('[') && path != "[vvar]" && path != "[vsyscall]");
        let shmem = path.starts_with("/memfd:") || path.starts_with("/dev/zero") || path.starts_with("/SYSV");
        let dump = if !readable || path == "[vvar]" || path == "[vvar_vclock]" || path == "[vsyscall]" {
            Dump::None
        } else if path == "[vdso]" || anonymous || (shared && shmem) {
            Dump::All
        } else if !shared && writable {
            // A file's private writable mapping: its written pages are anonymous now.
            Dump::All
        } else if !shared && offset == 0 {
            Dump::Header
        } else {
            Dump::None
        };
        out.push(Mapping { start, end, flags, offset, path, dump, private: !shared });
    }
    out
}

/// A thread's part of the core.
struct ThreadState {
    tid: i32,
    regs: [u64; 27],
    fpregs: Option<[u8; 512]>,
}

/// Index of `rsp` in the general registers.
const RSP: usize = 19;

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// One ELF note: name (with its NUL), type, descriptor, each padded to 4 bytes.
fn note(out: &mut Vec<u8>, name: &[u8], ty: u32, desc: &[u8]) {
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(name);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

const NT_PRSTATUS: u32 = 1;
const NT_PRFPREG: u32 = 2;
const NT_PRPSINFO: u32 = 3;
const NT_AUXV: u32 = 6;
const NT_SIGINFO: u32 = 0x5349_4749;
const NT_FILE: u32 = 0x4649_4c45;

/// `struct elf_prstatus` of x86_64 (336 bytes).
fn prstatus(t: &ThreadState, sig: i32, si_code: i32, hz: i64) -> Vec<u8> {
    let mut b = vec![0u8; 336];
    let (st, _) = stat(t.tid);
    let mask = |f| status_field(t.tid, f).and_then(|v| u64::from_str_radix(&v, 16).ok()).unwrap_or(0);
    put(&mut b, 0, &sig.to_le_bytes());
    put(&mut b, 4, &si_code.to_le_bytes());
    put(&mut b, 12, &(sig as i16).to_le_bytes());
    put(&mut b, 16, &mask("SigPnd:").to_le_bytes());
    put(&mut b, 24, &mask("SigBlk:").to_le_bytes());
    put(&mut b, 32, &t.tid.to_le_bytes());
    for (i, f) in [1usize, 2, 3].iter().enumerate() {
        put(&mut b, 36 + 4 * i, &(field(&st, *f) as i32).to_le_bytes());
    }
    // utime, stime, cutime, cstime as timevals.
    for (i, f) in [11usize, 12, 13, 14].iter().enumerate() {
        let ticks = field(&st, *f).max(0);
        put(&mut b, 48 + 16 * i, &(ticks / hz).to_le_bytes());
        put(&mut b, 56 + 16 * i, &((ticks % hz) * 1_000_000 / hz).to_le_bytes());
    }
    for (i, r) in t.regs.iter().enumerate() {
        put(&mut b, 112 + 8 * i, &r.to_le_bytes());
    }
    put(&mut b, 328, &i32::from(t.fpregs.is_some()).to_le_bytes());
    b
}

/// `struct elf_prpsinfo` of x86_64 (136 bytes).
fn prpsinfo(pid: i32) -> Vec<u8> {
    let mut b = vec![0u8; 136];
    let (st, comm) = stat(pid);
    let state = st.first().and_then(|s| s.bytes().next()).unwrap_or(b'R');
    b[0] = b"RSDTZW".iter().position(|&c| c == state).unwrap_or(0) as u8;
    b[1] = state;
    b[3] = field(&st, 16) as i8 as u8;
    put(&mut b, 8, &(field(&st, 6) as u64).to_le_bytes());
    let id = |f| {
        status_field(pid, f).and_then(|v| v.split_whitespace().next().and_then(|u| u.parse::<u32>().ok())).unwrap_or(0)
    };
    put(&mut b, 16, &id("Uid:").to_le_bytes());
    put(&mut b, 20, &id("Gid:").to_le_bytes());
    put(&mut b, 24, &pid.to_le_bytes());
    for (i, f) in [1usize, 2, 3].iter().enumerate() {
        put(&mut b, 28 + 4 * i, &(field(&st, *f) as i32).to_le_bytes());
    }
    let name = comm.as_bytes();
    put(&mut b, 40, &name[..name.len().min(15)]);
    let mut args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    args.truncate(79);
    while args.last() == Some(&0) {
        args.pop();
    }
    for c in &mut args {
        if *c == 0 {
            *c = b' ';
        }
    }
    put(&mut b, 56, &args);
    b
}

/// `NT_FILE`: the file-backed mappings (count, page size, ranges, names).
fn file_note(maps: &[Mapping]) -> Vec<u8> {
    // A memfd (an uploaded binary) has no name a debugger could open: left out.
    let files: Vec<&Mapping> =
        maps.iter().filter(|m| m.path.starts_with('/') && !m.path.starts_with("/memfd:")).collect();
    let mut b = Vec::new();
    b.extend_from_slice(&(files.len() as u64).to_le_bytes());
    b.extend_from_slice(&PAGE.to_le_bytes());
    for m in &files {
        for v in [m.start, m.end, m.offset / PAGE] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    for m in &files {
        b.extend_from_slice(m.path.trim_end_matches(" (deleted)").as_bytes());
        b.push(0);
    }
    b
}

/// Bytes of the core each mapping gets within `room`: the stacks of the threads first,
/// then the rest in address order; what does not fit is cut at a page. Also whether
/// anything was cut.
fn plan_sizes(maps: &[Mapping], wants: &[u64], stacks: &[u64], mut room: u64) -> (Vec<u64>, Vec<usize>, bool) {
    let is_stack = |m: &Mapping| stacks.iter().any(|&sp| m.start <= sp && sp < m.end);
    let mut order: Vec<usize> = (0..maps.len()).filter(|&i| is_stack(&maps[i])).collect();
    order.extend((0..maps.len()).filter(|&i| !is_stack(&maps[i])));
    let mut sizes = vec![0u64; maps.len()];
    let mut cut = false;
    for &i in &order {
        let give = wants[i].min(room / PAGE * PAGE);
        cut |= give < wants[i];
        sizes[i] = give;
        room -= give;
    }
    (sizes, order, cut)
}

/// Writes the core of process `pid` (its threads `threads` stopped, the first the one
/// dying of `sig`) into a sealed memfd of at most `limit` bytes.
fn write_core(
    pid: i32,
    sig: i32,
    threads: &[i32],
    siginfo: &[u8; 128],
    limit: u64,
) -> Result<(OwnedFd, CoreMeta), String> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1);
    let states: Vec<ThreadState> = threads
        .iter()
        .filter_map(|&tid| {
            let regs = sys::ptrace_regs(tid).ok()?;
            Some(ThreadState { tid, regs, fpregs: sys::ptrace_fpregs(tid).ok() })
        })
        .collect();
    if states.first().map(|t| t.tid) != threads.first().copied() {
        return Err("the registers of the crashing thread cannot be read".into());
    }
    let maps_text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| format!("smaps: {e}"))?;
    let maps = mappings(&maps_text);
    let si_code = i32::from_le_bytes([siginfo[8], siginfo[9], siginfo[10], siginfo[11]]);

    let mut notes = Vec::new();
    for (i, t) in states.iter().enumerate() {
        note(&mut notes, b"CORE\0", NT_PRSTATUS, &prstatus(t, sig, si_code, hz));
        if i == 0 {
            note(&mut notes, b"CORE\0", NT_PRPSINFO, &prpsinfo(pid));
            note(&mut notes, b"CORE\0", NT_SIGINFO, siginfo);
            note(&mut notes, b"CORE\0", NT_AUXV, &std::fs::read(format!("/proc/{pid}/auxv")).unwrap_or_default());
            note(&mut notes, b"CORE\0", NT_FILE, &file_note(&maps));
        }
        if let Some(fp) = &t.fpregs {
            note(&mut notes, b"CORE\0", NT_PRFPREG, fp);
        }
    }
    let phnum = maps.len() + 1;
    if phnum > 0xffff {
        return Err(format!("{} mappings are more than an ELF core holds", maps.len()));
    }
    let notes_at = 64 + 56 * phnum as u64;
    let data_at = (notes_at + notes.len() as u64).next_multiple_of(PAGE);
    if data_at > limit {
        return Err(format!("its notes alone ({data_at} bytes) are over the limit of {limit} bytes"));
    }
    // What each mapping would give: all of it, or its ELF header page.
    let wants: Vec<u64> = maps
        .iter()
        .map(|m| match m.dump {
            Dump::None => 0,
            Dump::All => m.end - m.start,
            Dump::Header => {
                let mut magic = [0u8; 4];
                let elf = sys::read_memory_into(pid, m.start, &mut magic) == 4 && magic == *b"\x7fELF";
                if elf {
                    PAGE.min(m.end - m.start)
                } else {
                    0
                }
            }
        })
        .collect();
    let stacks: Vec<u64> = states.iter().map(|t| t.regs[RSP]).collect();
    let (sizes, order, truncated) = plan_sizes(&maps, &wants, &stacks, limit - data_at);
    let mut offsets = vec![0u64; maps.len()];
    let mut at = data_at;
    for &i in &order {
        offsets[i] = at;
        at += sizes[i];
    }
    let total = at;

    let mut head = Vec::with_capacity(data_at as usize);
    // Elf64_Ehdr.
    head.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    head.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    head.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    head.extend_from_slice(&1u32.to_le_bytes());
    head.extend_from_slice(&0u64.to_le_bytes()); // entry
    head.extend_from_slice(&64u64.to_le_bytes()); // phoff
    head.extend_from_slice(&0u64.to_le_bytes()); // shoff
    head.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, phnum as u16, 0, 0, 0] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    // Program headers: the notes, then each mapping in address order.
    let phdr = |out: &mut Vec<u8>, ty: u32, flags: u32, off: u64, vaddr: u64, filesz: u64, memsz: u64, align: u64| {
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        for v in [off, vaddr, 0, filesz, memsz, align] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut head, 4, 4, notes_at, 0, notes.len() as u64, 0, 4); // PT_NOTE
    for (i, m) in maps.iter().enumerate() {
        let off = if sizes[i] == 0 { 0 } else { offsets[i] };
        phdr(&mut head, 1, m.flags, off, m.start, sizes[i], m.end - m.start, PAGE);
        // PT_LOAD
    }
    head.extend_from_slice(&notes);
    head.resize(data_at as usize, 0);

    let fd = memfd_create(c"debuglantern-core", MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)
        .map_err(|e| format!("memfd: {e}"))?;
    let mut hash = sha2::Sha256::new();
    nix::sys::uio::pwrite(&fd, &head, 0).map_err(|e| format!("write: {e}"))?;
    hash.update(&head);
    // The memory, in file order. Pages that read as zeros (or not at all) stay holes of
    // the memfd: they cost nothing.
    let mut buf = vec![0u8; 1 << 20];
    for &i in &order {
        let (mut addr, end, mut off) = (maps[i].start, maps[i].start + sizes[i], offsets[i]);
        while addr < end {
            let len = ((end - addr) as usize).min(buf.len());
            let chunk = &mut buf[..len];
            let mut got = sys::read_memory_into(pid, addr, chunk);
            // A short read stops at an unreadable page: read on past it, page by page.
            while got < len {
                let page = (len - got).min(PAGE as usize);
                let n = sys::read_memory_into(pid, addr + got as u64, &mut chunk[got..got + page]);
                if n < page {
                    chunk[got + n..got + page].fill(0);
                }
                got += page;
            }
            let mut p = 0;
            while p < len {
                let q = (p + PAGE as usize).min(len);
                if chunk[p..q].iter().any(|&b| b != 0) {
                    // Runs of non-zero pages go in one write.
                    let mut r = q;
                    while r < len {
                        let s = (r + PAGE as usize).min(len);
                        if chunk[r..s].iter().all(|&b| b == 0) {
                            break;
                        }
                        r = s;
                    }
                    write_all_at(&fd, &chunk[p..r], off + p as u64)?;
                    p = r;
                } else {
                    p = q;
                }
            }
            hash.update(&chunk[..]);
            addr += len as u64;
            off += len as u64;
        }
    }
    nix::unistd::ftruncate(&fd, total as libc::off_t).map_err(|e| format!("truncate: {e}"))?;
    let seals = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(|e| format!("seal: {e}"))?;
    let meta = CoreMeta {
        bytes: total,
        sha256: hash.finalize().into(),
        signal: sig,
        pid: pid as u32,
        comm: stat(pid).1.chars().take(15).collect(),
        threads: states.len() as u32,
        truncated,
    };
    Ok((fd, meta))
}

fn write_all_at(fd: &OwnedFd, mut data: &[u8], mut at: u64) -> Result<(), String> {
    while !data.is_empty() {
        match nix::sys::uio::pwrite(fd, data, at as libc::off_t) {
            Ok(0) => return Err("write: no room".into()),
            Ok(n) => {
                data = &data[n..];
                at += n as u64;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_are_read_and_classified() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234 /usr/bin/prog
55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 1234 /usr/bin/prog
55d0c0a03000-55d0c0a04000 rw-p 00003000 08:01 1234 /usr/bin/prog
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0    [heap]
7f0000000000-7f0000001000 ---p 00000000 00:00 0
7f0000001000-7f0000002000 rw-s 00000000 00:01 77   /memfd:shared (deleted)
7f0000002000-7f0000003000 rw-s 00000000 08:01 99   /srv/data
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0    [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0    [vvar]
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0    [vdso]
garbage line
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
";
        let m = mappings(text);
        let dumps: Vec<Dump> = m.iter().map(|m| m.dump).collect();
        use Dump::*;
        assert_eq!(dumps, [Header, None, All, All, None, All, None, All, None, All, None]);
        assert_eq!(m[0].path, "/usr/bin/prog");
        assert_eq!(m[2].flags, 6);
        assert_eq!(m[1].offset, 0x1000);
        // smaps: a file's read-only private mapping that was written (RELRO) is dumped.
        let smaps = "\
55d0c0a02000-55d0c0a03000 r--p 00002000 08:01 1234 /usr/bin/prog
Size:                  4 kB
Anonymous:             4 kB
55d0c0a04000-55d0c0a05000 r--p 00004000 08:01 1234 /usr/bin/prog
Anonymous:             0 kB
";
        let dumps: Vec<Dump> = mappings(smaps).iter().map(|m| m.dump).collect();
        assert_eq!(dumps, [All, None]);
        // Hostile or cut lines never panic.
        for cut in 0..text.len() {
            let _ = mappings(&text[..cut]);
        }
    }

    #[test]
    fn stacks_come_first_and_the_rest_is_cut_at_the_limit() {
        let m = |start: u64, end: u64| Mapping {
            start,
            end,
            flags: 6,
            offset: 0,
            path: String::new(),
            dump: Dump::All,
            private: true,
        };
        let maps = [m(0x1000, 0x9000), m(0x10000, 0x14000), m(0x20000, 0x22000)];
        let wants = [0x8000, 0x4000, 0x2000];
        // Room for the stack (0x10000..) and one more page.
        let (sizes, order, cut) = plan_sizes(&maps, &wants, &[0x13ff0], 0x5000);
        assert_eq!(order, [1, 0, 2]);
        assert_eq!(sizes, [0x1000, 0x4000, 0]);
        assert!(cut);
        let (sizes, _, cut) = plan_sizes(&maps, &wants, &[0x13ff0], 1 << 20);
        assert_eq!(sizes, wants);
        assert!(!cut);
    }

    #[test]
    fn notes_are_padded_to_four_bytes() {
        let mut out = Vec::new();
        note(&mut out, b"CORE\0", NT_AUXV, &[1, 2, 3]);
        assert_eq!(out.len(), 12 + 8 + 4);
        assert_eq!(&out[0..4], &5u32.to_le_bytes());
        assert_eq!(&out[4..8], &3u32.to_le_bytes());
        assert_eq!(&out[12..17], b"CORE\0");
    }

    #[test]
    fn core_signals_are_the_ones_signal7_names() {
        assert!(dumps_core(libc::SIGSEGV) && dumps_core(libc::SIGABRT) && dumps_core(libc::SIGQUIT));
        assert!(!dumps_core(libc::SIGKILL) && !dumps_core(libc::SIGTERM) && !dumps_core(libc::SIGPIPE));
    }
}
