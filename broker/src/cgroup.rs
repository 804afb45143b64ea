//! Per-session cgroups, managed through directory descriptors opened before the broker
//! pivots into its jail root (the broker sees no `/sys`).
//!
//! Two shapes, chosen per controller by the launcher (`frontend::cgroup`), which hands the
//! broker one directory per place a controller lives:
//! * cgroup v1: `memory=DIR`, `pids=DIR`, `cpu=DIR`, `cpuacct=DIR` (usage only), one
//!   hierarchy each;
//! * cgroup v2: `unified=DIR`, a directory of the unified hierarchy whose
//!   `cgroup.subtree_control` enables the controllers to use (read here), with the daemon
//!   itself in a leaf beside the sessions (v2's "no internal processes").
//!
//! A hybrid host may give both (controllers on v1 stay there). Each running session gets a
//! child directory in each with its limits written before the session starts. The
//! session's init joins them itself, first thing, through `cgroup.procs` descriptors the
//! broker opened (v1 lets a task be moved only by root or its own uid; v2 checks the
//! opener's write access to the common ancestor's `cgroup.procs`, which the launcher
//! chowned to the broker). After the run, the counters say whether a limit ended it and
//! what the session used; then the directories are removed.

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use shared::{CgroupUsage, LimitHit, RunLimits};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// The CFS period the CPU limit is expressed in (100 ms, the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The delegated directories.
#[derive(Debug, Default)]
pub struct Cgroups {
    memory: Option<OwnedFd>,
    pids: Option<OwnedFd>,
    cpu: Option<OwnedFd>,
    cpuacct: Option<OwnedFd>,
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

/// One session's cgroups.
#[derive(Debug)]
pub struct SessionCgroup {
    name: String,
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
                Some(("cpuacct", p)) => c.cpuacct = Some(open_dir(p)?),
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

    fn dirs(&self) -> impl Iterator<Item = &OwnedFd> {
        self.memory
            .iter()
            .chain(self.pids.iter())
            .chain(self.cpu.iter())
            .chain(self.cpuacct.iter())
            .chain(self.unified.iter().map(|u| &u.dir))
    }

    /// Creates the session's directories and writes its limits. Returns the directories
    /// and, for the init to join them, their `cgroup.procs` opened for writing.
    pub fn create(&self, session: &str, l: &RunLimits) -> Result<(SessionCgroup, Vec<OwnedFd>), CgroupError> {
        let name = format!("session-{session}");
        let mut procs = Vec::new();
        for dir in self.dirs() {
            // A leftover of a crashed run is empty by now: remove it to reset its counters.
            let _ = nix::unistd::unlinkat(Some(dir.as_raw_fd()), name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir);
            nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name.as_str(), Mode::from_bits_truncate(0o755))
                .map_err(io("create the cgroup", name.clone()))?;
            let path = format!("{name}/cgroup.procs");
            let fd = openat(Some(dir.as_raw_fd()), path.as_str(), OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
                .and_then(shared::os::adopt_fd)
                .map_err(io("open", path))?;
            procs.push(fd);
        }
        let sc = SessionCgroup { name };
        let f = |file: &str| format!("{}/{file}", sc.name);
        let (memory, pids, cpu) = (
            if l.memory_bytes == 0 { "max".to_string() } else { l.memory_bytes.to_string() },
            if l.processes == 0 { "max".to_string() } else { l.processes.to_string() },
            cpu_quota(l.cpu_millis),
        );
        if let Some(mem) = &self.memory {
            let v = if l.memory_bytes == 0 { "-1" } else { memory.as_str() };
            write_at(mem, &f("memory.limit_in_bytes"), v)?;
            // With swap accounting, memory+swap gets the same bound (no swapping around it).
            let _ = write_at(mem, &f("memory.memsw.limit_in_bytes"), v);
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
                // No swapping around the limit (absent without swap accounting), and an OOM
                // kill takes the whole session, not one process of it.
                let _ = write_at(&u.dir, &f("memory.swap.max"), "0");
                write_at(&u.dir, &f("memory.oom.group"), "1")?;
            }
            if u.pids {
                write_at(&u.dir, &f("pids.max"), &pids)?;
            }
            if u.cpu {
                let v = cpu.map_or_else(|| format!("max {CPU_PERIOD_US}"), |(q, p)| format!("{q} {p}"));
                write_at(&u.dir, &f("cpu.max"), &v)?;
            }
        }
        Ok((sc, procs))
    }

    /// The `cgroup.procs` of a running session's cgroups again, for another process to
    /// join them (EXEC).
    pub fn procs(&self, sc: &SessionCgroup) -> Result<Vec<OwnedFd>, CgroupError> {
        let path = format!("{}/cgroup.procs", sc.name);
        self.dirs()
            .map(|dir| {
                openat(Some(dir.as_raw_fd()), path.as_str(), OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
                    .and_then(shared::os::adopt_fd)
                    .map_err(io("open", path.clone()))
            })
            .collect()
    }

    /// After the run: which limit, if any, ended it or stopped it from growing (from the
    /// kernel's event counters, never guessed from an exit signal), and what the session
    /// used; then the directories go.
    pub fn finish(&self, sc: SessionCgroup) -> (Option<LimitHit>, CgroupUsage) {
        let f = |file: &str| format!("{}/{file}", sc.name);
        let (mut memory_hit, mut pids_hit) = (false, false);
        let mut usage = CgroupUsage::default();
        if let Some(mem) = &self.memory {
            memory_hit |= counter(&read_at(mem, &f("memory.oom_control")), "oom_kill") > 0;
            usage.memory_peak_bytes = read_at(mem, &f("memory.max_usage_in_bytes")).trim().parse().ok();
        }
        if let Some(p) = &self.pids {
            pids_hit |= counter(&read_at(p, &f("pids.events")), "max") > 0;
        }
        if let Some(c) = &self.cpu {
            // v1 counts in nanoseconds.
            let stat = read_at(c, &f("cpu.stat"));
            usage.cpu_throttled_usec = stat.contains("throttled_time").then(|| counter(&stat, "throttled_time") / 1000);
        }
        // Where cpu and cpuacct share a hierarchy, the launcher names it once, as cpu.
        if let Some(c) = self.cpuacct.as_ref().or(self.cpu.as_ref()) {
            usage.cpu_usage_usec = read_at(c, &f("cpuacct.usage")).trim().parse::<u64>().ok().map(|ns| ns / 1000);
        }
        if let Some(u) = &self.unified {
            if u.memory {
                let events = read_at(&u.dir, &f("memory.events"));
                memory_hit |= counter(&events, "oom_kill") > 0 || counter(&events, "oom_group_kill") > 0;
                usage.memory_peak_bytes = read_at(&u.dir, &f("memory.peak")).trim().parse().ok();
            }
            if u.pids {
                pids_hit |= counter(&read_at(&u.dir, &f("pids.events")), "max") > 0;
            }
            // cpu.stat's usage is there with or without the cpu controller.
            let stat = read_at(&u.dir, &f("cpu.stat"));
            if stat.contains("usage_usec") {
                usage.cpu_usage_usec = Some(counter(&stat, "usage_usec"));
            }
            if stat.contains("throttled_usec") {
                usage.cpu_throttled_usec = Some(counter(&stat, "throttled_usec"));
            }
        }
        for dir in self.dirs() {
            if let Err(e) =
                nix::unistd::unlinkat(Some(dir.as_raw_fd()), sc.name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir)
            {
                log::warn!("cannot remove cgroup {}: {e} (retried at its next use)", sc.name);
            }
        }
        let hit = if memory_hit {
            Some(LimitHit::Memory)
        } else if pids_hit {
            Some(LimitHit::Pids)
        } else {
            None
        };
        (hit, usage)
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
    let mut s = String::new();
    let _ = std::fs::File::from(fd).read_to_string(&mut s);
    s
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
