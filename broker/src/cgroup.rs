//! Per-session cgroups, managed through directory descriptors opened before the broker
//! pivots into its jail root (the broker sees no `/sys`).
//!
//! Two shapes, chosen per controller by the launcher (`frontend::cgroup`), which hands the
//! broker one directory per place a controller lives:
//! * cgroup v1: `memory=DIR`, `pids=DIR`, `cpu=DIR`, one hierarchy each (CPU usage comes
//!   from the init's rusage there: joining cpuacct too would cost every START);
//! * cgroup v2: `unified=DIR`, a directory of the unified hierarchy whose
//!   `cgroup.subtree_control` enables the controllers to use (read here), with the daemon
//!   itself in a leaf beside the sessions (v2's "no internal processes").
//!
//! A hybrid host may give both (controllers on v1 stay there). Each session gets a child
//! directory in each at its LOAD (`make`: mkdir and rmdir cost a tenth of a millisecond
//! each per hierarchy, which START should not pay), its limits written before each run
//! (`arm`). The session's init is created in its v2 directory (`CLONE_INTO_CGROUP`) and
//! joins its v1 ones itself, first thing, through `cgroup.procs` descriptors the broker
//! opened (v1 lets a task be moved only by root or its own uid; v2 checks the cloner's
//! write access to the common ancestor's `cgroup.procs`, which the launcher chowned to the
//! broker). After the run, the counters' growth says whether a
//! limit ended it and what it used (`finish`); the directories go at DELETE (`remove`).

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use shared::{CgroupUsage, LimitHit, RunLimits};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

/// The CFS period the CPU limit is expressed in (100 ms, the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The delegated directories.
#[derive(Debug, Default)]
pub struct Cgroups {
    memory: Option<OwnedFd>,
    pids: Option<OwnedFd>,
    cpu: Option<OwnedFd>,
    unified: Option<Unified>,
}

/// The v2 directory and the controllers enabled for its children.
#[derive(Debug)]
struct Unified {
    dir: OwnedFd,
    memory: bool,
    pids: bool,
    cpu: bool,
}

/// One session's cgroups, from its LOAD (made off the START path) to its DELETE, reused
/// by every run: a run's counters are the difference to what they read when it began.
#[derive(Debug)]
pub struct SessionCgroup {
    name: String,
    /// Runs it has held (a v2 `memory.peak` that cannot be reset is only the first's).
    runs: u32,
    /// The cumulative counters as the current run began.
    base: Counters,
    /// This run's v2 `memory.peak` was reset (kernels since 6.12 reset it per open file:
    /// the kept descriptor).
    peak_reset: bool,
    /// The limits last written (`None`: a fresh directory), so that a run with the same
    /// limits as the last writes none.
    written: Option<(u64, u64, u64)>,
    /// Its v1 `cgroup.procs`, opened once; each run's init gets duplicates and joins.
    procs: Vec<OwnedFd>,
    /// Its v2 directory: each run's init is created in it (`CLONE_INTO_CGROUP`).
    v2_dir: Option<OwnedFd>,
    /// The counter files, opened once and read with `pread` at offset 0 (which makes
    /// the kernel render them afresh): a run's end opens nothing.
    files: CounterFiles,
}

/// Open counter files of one session's cgroups (where the host has them).
#[derive(Debug, Default)]
struct CounterFiles {
    v1_oom: Option<std::fs::File>,
    v1_peak: Option<std::fs::File>,
    v1_pids: Option<std::fs::File>,
    v1_cpu: Option<std::fs::File>,
    v2_memory: Option<std::fs::File>,
    /// Read-write where the kernel can reset it, else read-only.
    v2_peak: Option<std::fs::File>,
    v2_pids: Option<std::fs::File>,
    v2_cpu: Option<std::fs::File>,
}

/// What a run's init gets of its session's cgroups.
#[derive(Debug)]
pub struct Armed {
    /// v1 `cgroup.procs` to join (writing 0).
    pub procs: Vec<OwnedFd>,
    /// The v2 directory to be created in.
    pub v2_dir: Option<OwnedFd>,
}

/// The cumulative counters a run's figures are the difference of.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    oom_kills: u64,
    pids_max: u64,
    usage_usec: u64,
    throttled_usec: u64,
}

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The launcher's `--cgroups` argument is malformed.
    #[error("bad --cgroups part {0:?}")]
    Arg(String),
    /// A file or directory could not be made, opened or written.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// To which path.
        path: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: impl Into<String>) -> impl FnOnce(nix::Error) -> CgroupError {
    let path = path.into();
    move |e| CgroupError::Io { what, path, source: e.into() }
}

fn open_dir(path: &str) -> Result<OwnedFd, CgroupError> {
    nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .and_then(shared::os::adopt_fd)
        .map_err(io("open", path))
}

impl Cgroups {
    /// Opens `memory=DIR,pids=DIR,cpu=DIR,unified=DIR` (any may be missing; empty = none).
    pub fn open(arg: &str) -> Result<Cgroups, CgroupError> {
        let mut c = Cgroups::default();
        for part in arg.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("memory", p)) => c.memory = Some(open_dir(p)?),
                Some(("pids", p)) => c.pids = Some(open_dir(p)?),
                Some(("cpu", p)) => c.cpu = Some(open_dir(p)?),
                Some(("unified", p)) => {
                    let dir = open_dir(p)?;
                    let enabled = read_at(&dir, "cgroup.subtree_control");
                    let on = |c: &str| enabled.split_whitespace().any(|e| e == c);
                    c.unified = Some(Unified { memory: on("memory"), pids: on("pids"), cpu: on("cpu"), dir });
                }
                _ => return Err(CgroupError::Arg(part.to_string())),
            }
        }
        Ok(c)
    }

    /// The delegated directories (for the broker's landlock ruleset).
    pub fn dir_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.dirs().map(|d| d.as_fd()).collect()
    }

    /// Whether the pids controller is available.
    pub fn has_pids(&self) -> bool {
        self.pids.is_some() || self.unified.as_ref().is_some_and(|u| u.pids)
    }

    /// Whether any directory is available.
    pub fn any(&self) -> bool {
        self.dirs().next().is_some()
    }

    /// The v1 hierarchies' directories.
    fn v1_dirs(&self) -> impl Iterator<Item = &OwnedFd> {
        self.memory.iter().chain(self.pids.iter()).chain(self.cpu.iter())
    }

    fn dirs(&self) -> impl Iterator<Item = &OwnedFd> {
        self.v1_dirs().chain(self.unified.iter().map(|u| &u.dir))
    }

    /// Makes the session's directories (at LOAD).
    pub fn make(&self, session: &str) -> Result<SessionCgroup, CgroupError> {
        let name = format!("session-{session}");
        for dir in self.dirs() {
            mkdir_fresh(dir, &name)?;
        }
        let mut sc = SessionCgroup {
            name,
            runs: 0,
            base: Counters::default(),
            peak_reset: false,
            written: None,
            procs: vec![],
            v2_dir: None,
            files: CounterFiles::default(),
        };
        sc.procs = self.v1_procs(&sc)?;
        if let Some(u) = &self.unified {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let fd = openat(Some(u.dir.as_raw_fd()), sc.name.as_str(), flags, Mode::empty())
                .and_then(shared::os::adopt_fd)
                .map_err(io("open", sc.name.clone()))?;
            sc.v2_dir = Some(fd);
        }
        self.open_counters(&mut sc);
        Ok(sc)
    }

    fn open_counters(&self, sc: &mut SessionCgroup) {
        let open = |dir: &Option<OwnedFd>, file: &str, flags: OFlag| {
            let dir = dir.as_ref()?;
            let path = format!("{}/{file}", sc.name);
            openat(Some(dir.as_raw_fd()), path.as_str(), flags | OFlag::O_CLOEXEC, Mode::empty())
                .and_then(shared::os::adopt_fd)
                .ok()
                .map(std::fs::File::from)
        };
        let unified = self.unified.as_ref().and_then(|u| u.dir.try_clone().ok());
        let (v2_mem, v2_pids) = match &self.unified {
            Some(u) => (u.memory, u.pids),
            None => (false, false),
        };
        let f = &mut sc.files;
        f.v1_oom = open(&self.memory, "memory.oom_control", OFlag::O_RDONLY);
        f.v1_peak = open(&self.memory, "memory.max_usage_in_bytes", OFlag::O_RDWR);
        f.v1_pids = open(&self.pids, "pids.events", OFlag::O_RDONLY);
        f.v1_cpu = open(&self.cpu, "cpu.stat", OFlag::O_RDONLY);
        f.v2_memory = if v2_mem { open(&unified, "memory.events", OFlag::O_RDONLY) } else { None };
        f.v2_peak = match v2_mem {
            true => {
                open(&unified, "memory.peak", OFlag::O_RDWR).or_else(|| open(&unified, "memory.peak", OFlag::O_RDONLY))
            }
            false => None,
        };
        f.v2_pids = if v2_pids { open(&unified, "pids.events", OFlag::O_RDONLY) } else { None };
        f.v2_cpu = open(&unified, "cpu.stat", OFlag::O_RDONLY);
    }

    /// Before a run: writes its limits (unless the last run had the same), resets what can
    /// be reset, and returns what the init needs to be in the session's cgroups.
    pub fn arm(&self, sc: &mut SessionCgroup, l: &RunLimits) -> Result<Armed, CgroupError> {
        let name = sc.name.clone();
        let f = |file: &str| format!("{name}/{file}");
        // An older kernel's memory.peak cannot be reset: it is the cgroup's whole life,
        // which is only the first run's (remaking the directory per run would cost every
        // START more than the rest of the cgroup work together).
        sc.peak_reset =
            sc.files.v2_peak.as_ref().is_some_and(|p| std::os::unix::fs::FileExt::write_at(p, b"reset\n", 0).is_ok());
        let (memory, pids, cpu) = (
            if l.memory_bytes == 0 { "max".to_string() } else { l.memory_bytes.to_string() },
            if l.processes == 0 { "max".to_string() } else { l.processes.to_string() },
            cpu_quota(l.cpu_millis),
        );
        if let Some(p) = &sc.files.v1_peak {
            // A fresh peak for this run.
            let _ = std::os::unix::fs::FileExt::write_at(p, b"0", 0);
        }
        let want = (l.memory_bytes, l.processes, l.cpu_millis);
        if sc.written == Some(want) {
            sc.runs += 1;
            return self.armed(sc);
        }
        let fresh = sc.written.is_none();
        if let Some(mem) = &self.memory {
            let v = if l.memory_bytes == 0 { "-1" } else { memory.as_str() };
            // With swap accounting, memory+swap gets the same bound (no swapping around it).
            // The kernel keeps memory ≤ memory+swap at every write: raised from an earlier
            // run's bound, memsw must go first; lowered, memory must.
            let memsw = f("memory.memsw.limit_in_bytes");
            let _ = write_at(mem, &memsw, v);
            write_at(mem, &f("memory.limit_in_bytes"), v)?;
            let _ = write_at(mem, &memsw, v);
        }
        if let Some(p) = &self.pids {
            write_at(p, &f("pids.max"), &pids)?;
        }
        if let Some(c) = &self.cpu {
            let (quota, period) = cpu.map_or((-1i64, CPU_PERIOD_US), |(q, p)| (q as i64, p));
            write_at(c, &f("cpu.cfs_period_us"), &period.to_string())?;
            write_at(c, &f("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(u) = &self.unified {
            if u.memory {
                write_at(&u.dir, &f("memory.max"), &memory)?;
                if fresh {
                    // No swapping around the limit (absent without swap accounting), and an
                    // OOM kill takes the whole session, not one process of it.
                    let _ = write_at(&u.dir, &f("memory.swap.max"), "0");
                    write_at(&u.dir, &f("memory.oom.group"), "1")?;
                }
            }
            if u.pids {
                write_at(&u.dir, &f("pids.max"), &pids)?;
            }
            if u.cpu {
                let v = cpu.map_or_else(|| format!("max {CPU_PERIOD_US}"), |(q, p)| format!("{q} {p}"));
                write_at(&u.dir, &f("cpu.max"), &v)?;
            }
        }
        sc.written = Some(want);
        sc.runs += 1;
        self.armed(sc)
    }

    /// What a run's init needs: the v1 `cgroup.procs` to join, the v2 directory to be
    /// created in.
    fn armed(&self, sc: &SessionCgroup) -> Result<Armed, CgroupError> {
        let v2_dir = match &sc.v2_dir {
            Some(d) => {
                Some(d.try_clone().map_err(|source| CgroupError::Io { what: "dup", path: sc.name.clone(), source })?)
            }
            None => None,
        };
        Ok(Armed { procs: dup_all(&sc.procs)?, v2_dir })
    }

    /// The v1 hierarchies' `cgroup.procs` of a session.
    fn v1_procs(&self, sc: &SessionCgroup) -> Result<Vec<OwnedFd>, CgroupError> {
        open_procs(self.v1_dirs(), sc)
    }

    /// The `cgroup.procs` of a running session's cgroups again, for another process to
    /// join them (EXEC).
    pub fn procs(&self, sc: &SessionCgroup) -> Result<Vec<OwnedFd>, CgroupError> {
        open_procs(self.dirs(), sc)
    }

    /// The cumulative counters of the session's cgroups.
    fn counters(&self, sc: &SessionCgroup) -> Counters {
        let f = &sc.files;
        let mut c = Counters::default();
        c.oom_kills += counter(&pread(&f.v1_oom), "oom_kill");
        c.pids_max += counter(&pread(&f.v1_pids), "max");
        // v1 counts in nanoseconds.
        c.throttled_usec = counter(&pread(&f.v1_cpu), "throttled_time") / 1000;
        let events = pread(&f.v2_memory);
        c.oom_kills += counter(&events, "oom_kill").max(counter(&events, "oom_group_kill"));
        c.pids_max += counter(&pread(&f.v2_pids), "max");
        // cpu.stat's usage is there with or without the cpu controller.
        if f.v2_cpu.is_some() {
            let stat = pread(&f.v2_cpu);
            c.usage_usec = counter(&stat, "usage_usec");
            c.throttled_usec = counter(&stat, "throttled_usec");
        }
        c
    }

    /// After the run: which limit, if any, ended it or stopped it from growing (from the
    /// kernel's event counters, never guessed from an exit signal), and what it used. The
    /// directories stay for the session's next run.
    pub fn finish(&self, sc: &mut SessionCgroup) -> (Option<LimitHit>, CgroupUsage) {
        // The counters do not move while no run is in the cgroup: this run's end is the next
        // one's start.
        let now = self.counters(sc);
        let base = std::mem::replace(&mut sc.base, now);
        let mut usage = CgroupUsage::default();
        if sc.files.v1_peak.is_some() {
            usage.memory_peak_bytes = pread(&sc.files.v1_peak).trim().parse().ok();
        }
        if sc.files.v2_peak.is_some() {
            // Read at offset 0 of the descriptor the reset was written to: its own peak.
            let own = sc.peak_reset || sc.runs == 1;
            usage.memory_peak_bytes = if own { pread(&sc.files.v2_peak).trim().parse().ok() } else { None };
        }
        if self.cpu.is_some() || self.unified.as_ref().is_some_and(|u| u.cpu) {
            usage.cpu_throttled_usec = Some(now.throttled_usec.saturating_sub(base.throttled_usec));
        }
        if self.unified.is_some() {
            usage.cpu_usage_usec = Some(now.usage_usec.saturating_sub(base.usage_usec));
        }
        let hit = if now.oom_kills > base.oom_kills {
            Some(LimitHit::Memory)
        } else if now.pids_max > base.pids_max {
            Some(LimitHit::Pids)
        } else {
            None
        };
        (hit, usage)
    }

    /// The session is deleted: its directories go (empty: its runs are over).
    pub fn remove(&self, sc: SessionCgroup) {
        for dir in self.dirs() {
            if let Err(e) =
                nix::unistd::unlinkat(Some(dir.as_raw_fd()), sc.name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir)
            {
                log::warn!("cannot remove cgroup {}: {e}", sc.name);
            }
        }
    }
}

/// `cgroup.procs` of the session's directory beneath each of `dirs`, opened for writing.
fn open_procs<'a>(dirs: impl Iterator<Item = &'a OwnedFd>, sc: &SessionCgroup) -> Result<Vec<OwnedFd>, CgroupError> {
    let path = format!("{}/cgroup.procs", sc.name);
    dirs.map(|dir| {
        openat(Some(dir.as_raw_fd()), path.as_str(), OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
            .and_then(shared::os::adopt_fd)
            .map_err(io("open", path.clone()))
    })
    .collect()
}

/// A counter file's current text (empty where there is none).
fn pread(f: &Option<std::fs::File>) -> String {
    let Some(f) = f else { return String::new() };
    let mut buf = [0u8; 4096];
    match std::os::unix::fs::FileExt::read_at(f, &mut buf, 0) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

fn dup_all(fds: &[OwnedFd]) -> Result<Vec<OwnedFd>, CgroupError> {
    fds.iter()
        .map(|f| f.try_clone().map_err(|source| CgroupError::Io { what: "dup", path: "cgroup.procs".into(), source }))
        .collect()
}

/// Makes `name` beneath `dir`; a leftover of the same name (a crashed daemon's, empty by
/// now) is removed first, so its counters start from zero.
fn mkdir_fresh(dir: &OwnedFd, name: &str) -> Result<(), CgroupError> {
    let mkdir = || nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755));
    match mkdir() {
        Err(nix::Error::EEXIST) => {
            let _ = nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, nix::unistd::UnlinkatFlags::RemoveDir);
            mkdir().map_err(io("create the cgroup", name))
        }
        r => r.map_err(io("create the cgroup", name)),
    }
}

/// A CPU limit in thousandths of a CPU as (quota, period) in microseconds, `None` for no
/// limit. The kernel wants a quota of at least 1 ms: tiny limits get a longer period.
fn cpu_quota(milli: u64) -> Option<(u64, u64)> {
    if milli == 0 {
        return None;
    }
    let quota = milli * CPU_PERIOD_US / 1000;
    if quota >= 1000 {
        Some((quota, CPU_PERIOD_US))
    } else {
        Some((milli * 1000, 1_000_000))
    }
}

fn write_at(dir: &OwnedFd, path: &str, value: &str) -> Result<(), CgroupError> {
    let fd = openat(Some(dir.as_raw_fd()), path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
        .and_then(shared::os::adopt_fd)
        .map_err(io("open", path))?;
    std::fs::File::from(fd).write_all(value.as_bytes()).map_err(|source| CgroupError::Io {
        what: "write a limit to",
        path: path.into(),
        source,
    })
}

fn read_at(dir: &OwnedFd, path: &str) -> String {
    let Ok(fd) = openat(Some(dir.as_raw_fd()), path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) else {
        return String::new();
    };
    let Ok(fd) = shared::os::adopt_fd(fd) else { return String::new() };
    pread(&Some(std::fs::File::from(fd)))
}

/// `key N` in a flat-keyed cgroup file.
fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key)).then(|| it.next()?.parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// The init joins its cgroups: writing 0 to `cgroup.procs` moves the writer.
pub fn join(procs: Vec<OwnedFd>) -> Result<(), CgroupError> {
    for fd in procs {
        std::fs::File::from(fd).write_all(b"0\n").map_err(|source| CgroupError::Io {
            what: "join",
            path: "the session's cgroup".into(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{counter, cpu_quota};

    #[test]
    fn counters_are_read_by_key() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(counter(oom, "oom_kill"), 3);
        assert_eq!(counter("max 0\n", "max"), 0);
        assert_eq!(counter("", "max"), 0);
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(counter(events, "oom_group_kill"), 1);
        assert_eq!(counter(events, "oom"), 1);
    }

    #[test]
    fn cpu_limits_become_quota_and_period() {
        assert_eq!(cpu_quota(0), None);
        assert_eq!(cpu_quota(500), Some((50_000, 100_000)));
        assert_eq!(cpu_quota(1500), Some((150_000, 100_000)));
        assert_eq!(cpu_quota(10), Some((1_000, 100_000)));
        // Below 1 ms per 100 ms the period grows instead.
        assert_eq!(cpu_quota(5), Some((5_000, 1_000_000)));
        assert_eq!(cpu_quota(1), Some((1_000, 1_000_000)));
    }
}
