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
    /// Opens `memory=PATH,pids=PATH` (either may be missing; empty = none).
    pub fn open(arg: &str) -> Result<Cgroups, CgroupError> {
        let mut c = Cgroups::default();
        for part in arg.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("memory", p)) => c.memory = Some(open_dir(p)?),
                Some(("pids", p)) => c.pids = Some(open_dir(p)?),
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
    pub fn create(&self, slot: u32, l: &RunLimits) -> Result<(SessionCgroup, Vec<OwnedFd>), CgroupError> {
        let name = format!("session{slot}");
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
                log::warn!("cannot remove cgroup {}: {e} (retried at its next use)", sc.name);
            }
        }
        hit
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
    use super::counter;

    #[test]
    fn counters_are_read_by_key() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(counter(oom, "oom_kill"), 3);
        assert_eq!(counter("max 0\n", "max"), 0);
        assert_eq!(counter("", "max"), 0);
    }
}
