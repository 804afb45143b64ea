//! Prepares the cgroup directories the broker will manage (root start only): one directory
//! per controller hierarchy, nested under the daemon's own cgroup, owned by the broker's
//! host uid so that it can create one child per session and write its limits.
//!
//! Supported: cgroup v1 `memory` and `pids` hierarchies. A host whose controllers live
//! only on the v2 hierarchy is reported as a warning (v2 delegation is not implemented).

use std::path::{Path, PathBuf};

/// The broker's `--cgroups` argument, or warnings for what is missing.
#[derive(Debug, Default)]
pub struct Prepared {
    /// `memory=PATH,pids=PATH` for the broker (empty: none).
    pub arg: String,
    /// What could not be had.
    pub warnings: Vec<String>,
}

const ROOT: &str = "/sys/fs/cgroup";

/// This process's cgroup path in the v1 hierarchy that holds `controller`.
fn own_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls.split(',').any(|c| c == controller).then(|| path.to_string())
    })
}

fn is_v1_mount(dir: &Path) -> bool {
    dir.join("cgroup.procs").exists() && !dir.join("cgroup.controllers").exists()
}

/// Removes directories left by daemons that are gone (`<prefix><pid>` with a dead pid):
/// their session children first, then themselves. They are empty: when a daemon dies, its
/// broker's PID namespace dies with it.
fn remove_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(e.path()) {
            for c in children.flatten().filter(|c| c.file_type().is_ok_and(|t| t.is_dir())) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

fn prepare_one(controller: &str, prefix: &str, uid: u32) -> Result<PathBuf, String> {
    let mount = Path::new(ROOT).join(controller);
    if !is_v1_mount(&mount) {
        return Err(format!("no cgroup v1 {controller} hierarchy at {}", mount.display()));
    }
    let own = own_path(controller).ok_or_else(|| format!("this process is in no {controller} cgroup"))?;
    let parent = mount.join(own.trim_start_matches('/'));
    remove_stale(&parent, prefix);
    let dir = parent.join(format!("{prefix}{}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    // The broker (host uid `uid`) creates and removes the session children, and writes
    // their limits; it needs the directory and its files.
    let chown =
        |p: &Path| std::os::unix::fs::chown(p, Some(uid), Some(uid)).map_err(|e| format!("chown {}: {e}", p.display()));
    chown(&dir)?;
    for entry in std::fs::read_dir(&dir).map_err(|e| e.to_string())?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            chown(&entry.path())?;
        }
    }
    Ok(dir)
}

/// Creates `debuglantern-<uid_base>-<pid>` in the memory and pids hierarchies (and removes
/// those of dead daemons).
pub fn prepare(uid_base: u32) -> Prepared {
    let name = format!("debuglantern-{uid_base}-");
    let mut p = Prepared::default();
    let mut parts = Vec::new();
    for controller in ["memory", "pids"] {
        match prepare_one(controller, &name, uid_base) {
            Ok(dir) => parts.push(format!("{controller}={}", dir.display())),
            Err(e) => p.warnings.push(if Path::new(ROOT).join("cgroup.controllers").exists() {
                format!("cgroup v2 delegation is not implemented yet: no {controller} limits for sessions (rlimits still apply)")
            } else {
                format!("no cgroup {controller} limits for sessions ({e}); rlimits still apply")
            }),
        }
    }
    p.arg = parts.join(",");
    p
}
