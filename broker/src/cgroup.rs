//! Per-session cgroups (v1 `memory` and `pids`), managed through directory descriptors
//! opened before the broker pivots into its jail root (the broker sees no `/sys`).
//!
//! Each running session gets a child directory per controller with its limits written
//! before the session starts. The session's init joins them itself, first thing, while it
//! still has the broker's uid (cgroup v1 lets a task be moved only by root or its own
//! uid). After the run, the counters say whether a limit ended it; then the directories
//! are removed.

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use shared::{LimitHit, RunLimits};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// The delegated directories.
#[derive(Debug, Default)]
pub struct Cgroups {
    memory: Option<OwnedFd>,
    pids: Option<OwnedFd>,
}

/// One session's cgroups.
#[derive(Debug)]
pub struct SessionCgroup {
    name: String,
}

fn open_dir(path: &str) -> Result<OwnedFd, String> {
    let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("open {path}: {e}"))?;
    shared::os::adopt_fd(fd).map_err(|e| format!("open {path}: {e}"))
}

impl Cgroups {
    /// Opens `memory=PATH,pids=PATH` (either may be missing; empty = none).
    pub fn open(arg: &str) -> Result<Cgroups, String> {
        let mut c = Cgroups::default();
        for part in arg.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("memory", p)) => c.memory = Some(open_dir(p)?),
                Some(("pids", p)) => c.pids = Some(open_dir(p)?),
                _ => return Err(format!("bad --cgroups part {part:?}")),
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
        self.pids.is_some()
    }

    /// Whether any controller is available.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.pids.is_some()
    }

    fn dirs(&self) -> impl Iterator<Item = &OwnedFd> {
        self.memory.iter().chain(self.pids.iter())
    }

    /// Creates the session's directories and writes its limits. Returns the directories
    /// and, for the init to join them, their `cgroup.procs` opened for writing.
    pub fn create(&self, slot: u32, l: &RunLimits) -> Result<(SessionCgroup, Vec<OwnedFd>), String> {
        let name = format!("session{slot}");
        let mut procs = Vec::new();
        for dir in self.dirs() {
            // A leftover of a crashed run is empty by now: remove it to reset its counters.
            let _ = nix::unistd::unlinkat(Some(dir.as_raw_fd()), name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir);
            nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name.as_str(), Mode::from_bits_truncate(0o755))
                .map_err(|e| format!("mkdir cgroup {name}: {e}"))?;
            let fd = openat(
                Some(dir.as_raw_fd()),
                format!("{name}/cgroup.procs").as_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("open {name}/cgroup.procs: {e}"))?;
            procs.push(shared::os::adopt_fd(fd).map_err(|e| e.to_string())?);
        }
        let sc = SessionCgroup { name };
        if let Some(mem) = &self.memory {
            let v = if l.memory_bytes == 0 { "-1".to_string() } else { l.memory_bytes.to_string() };
            write_at(mem, &format!("{}/memory.limit_in_bytes", sc.name), &v)?;
            // With swap accounting, memory+swap gets the same bound (no swapping around it).
            let _ = write_at(mem, &format!("{}/memory.memsw.limit_in_bytes", sc.name), &v);
        }
        if let Some(pids) = &self.pids {
            let v = if l.processes == 0 { "max".to_string() } else { l.processes.to_string() };
            write_at(pids, &format!("{}/pids.max", sc.name), &v)?;
        }
        Ok((sc, procs))
    }

    /// After the run: which limit, if any, ended it or stopped it from growing; then the
    /// directories go.
    pub fn finish(&self, sc: SessionCgroup) -> Option<LimitHit> {
        let mut hit = None;
        if let Some(mem) = &self.memory {
            let oom = read_at(mem, &format!("{}/memory.oom_control", sc.name));
            if counter(&oom, "oom_kill") > 0 {
                hit = Some(LimitHit::Memory);
            }
        }
        if hit.is_none() {
            if let Some(pids) = &self.pids {
                if counter(&read_at(pids, &format!("{}/pids.events", sc.name)), "max") > 0 {
                    hit = Some(LimitHit::Pids);
                }
            }
        }
        for dir in self.dirs() {
            if let Err(e) =
                nix::unistd::unlinkat(Some(dir.as_raw_fd()), sc.name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir)
            {
                eprintln!("debuglantern-broker: cannot remove cgroup {}: {e} (retried at its next use)", sc.name);
            }
        }
        hit
    }
}

fn write_at(dir: &OwnedFd, path: &str, value: &str) -> Result<(), String> {
    let fd = openat(Some(dir.as_raw_fd()), path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("open {path}: {e}"))?;
    let mut f = std::fs::File::from(shared::os::adopt_fd(fd).map_err(|e| e.to_string())?);
    f.write_all(value.as_bytes()).map_err(|e| format!("write {value} to {path}: {e}"))
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
pub fn join(procs: Vec<OwnedFd>) -> Result<(), String> {
    for fd in procs {
        std::fs::File::from(fd).write_all(b"0\n").map_err(|e| format!("join the session's cgroup: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::counter;

    #[test]
    fn counters_are_read_by_key() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(counter(oom, "oom_kill"), 3);
        assert_eq!(counter("max 0\n", "max"), 0);
        assert_eq!(counter("", "max"), 0);
    }
}
