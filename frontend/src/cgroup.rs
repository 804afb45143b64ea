//! Prepares the cgroup directories the broker will manage, before anything is confined:
//! for each controller sessions are limited by (`memory`, `pids`, `cpu`), the place it
//! lives on this host.
//!
//! * **cgroup v1** (a hierarchy per controller, as on this project's development host): a
//!   directory `debuglantern-<uid_base>-<pid>` under the daemon's own cgroup in each
//!   hierarchy, owned by the broker's host uid, which makes one child per session.
//! * **cgroup v2** (Debian 12, Ubuntu 22.04+, Fedora, RHEL 9): one directory of the unified
//!   hierarchy — the *base* — with the controllers enabled in its `cgroup.subtree_control`,
//!   the daemon moved into the leaf `base/daemon` (v2 allows no processes in a cgroup
//!   whose controllers are enabled for children) and the sessions beside it. The base is
//!   the daemon's own cgroup when the daemon is alone in it (systemd with `Delegate=yes`,
//!   `systemd-run --user -p Delegate=yes`, or a directory delegated by hand), else (root
//!   only) a new `debuglantern-<uid_base>-<pid>` at the top of the hierarchy. Its directory
//!   and `cgroup.procs` are chowned to the broker's uid: the broker creates the sessions'
//!   directories, and a session's init moves itself from `base/daemon` into its own
//!   through a descriptor the broker opened, which v2 allows the owner of the common
//!   ancestor's `cgroup.procs`.
//!
//! A hybrid host uses v1 for controllers bound there and v2 for the rest. What cannot be
//! had is a warning that names the controller and how to delegate it.

use std::path::{Path, PathBuf};

/// The broker's `--cgroups` argument, or warnings for what is missing.
#[derive(Debug, Default)]
pub struct Prepared {
    /// `memory=DIR,pids=DIR,cpu=DIR,unified=DIR` for the broker (empty: none).
    pub arg: String,
    /// What could not be had.
    pub warnings: Vec<String>,
    /// The controllers that limit sessions (`memory`, `pids`, `cpu`).
    pub controllers: Vec<String>,
}

const ROOT: &str = "/sys/fs/cgroup";

/// The controllers sessions are limited by, and what each limits.
const LIMITED: [(&str, &str); 3] = [("memory", "memory"), ("pids", "process count"), ("cpu", "CPU")];

/// This process's cgroup path in the v1 hierarchy that holds `controller`.
fn own_v1_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls.split(',').any(|c| c == controller).then(|| path.to_string())
    })
}

/// This process's cgroup in the unified hierarchy (`0::PATH`).
fn own_v2_path() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

fn is_v1_mount(dir: &Path) -> bool {
    dir.join("cgroup.procs").exists() && !dir.join("cgroup.controllers").exists()
}

/// Where the unified hierarchy is mounted: `/sys/fs/cgroup` (v2 only) or
/// `/sys/fs/cgroup/unified` (systemd's hybrid layout).
fn v2_mount() -> Option<PathBuf> {
    [Path::new(ROOT).to_path_buf(), Path::new(ROOT).join("unified")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").exists())
}

fn words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().map(str::to_string).collect()
}

/// Removes directories left by daemons that are gone (`<prefix><pid>` with a dead pid):
/// their children first, then themselves. They are empty: when a daemon dies, its
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

fn chown(p: &Path, uid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).map_err(|e| format!("chown {}: {e}", p.display()))
}

fn mkdir(p: &Path) -> Result<(), String> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", p.display())),
    }
}

fn prepare_v1(controller: &str, prefix: &str, uid: u32) -> Result<PathBuf, String> {
    let mount = Path::new(ROOT).join(controller);
    let own = own_v1_path(controller).ok_or_else(|| format!("this process is in no {controller} cgroup"))?;
    let parent = mount.join(own.trim_start_matches('/'));
    remove_stale(&parent, prefix);
    let dir = parent.join(format!("{prefix}{}", std::process::id()));
    mkdir(&dir)?;
    // The broker (host uid `uid`) creates and removes the session children, and writes
    // their limits; it needs the directory and its files.
    chown(&dir, uid)?;
    for entry in std::fs::read_dir(&dir).map_err(|e| e.to_string())?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            chown(&entry.path(), uid)?;
        }
    }
    Ok(dir)
}

/// Moves this process (all its threads) into `dir`.
fn move_self(dir: &Path) -> Result<(), String> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("cannot move the daemon into {}: {e}", dir.display()))
}

/// Makes the v2 base for `wanted` controllers; returns it, the controllers enabled for
/// its children and warnings for each wanted controller it could not enable.
fn prepare_v2(
    mount: &Path,
    wanted: &[&str],
    prefix: &str,
    uid: u32,
    root: bool,
) -> Result<(PathBuf, Vec<String>, Vec<String>), String> {
    let own = own_v2_path().ok_or("this process is in no cgroup v2 cgroup")?;
    let own_dir = mount.join(own.trim_start_matches('/'));
    let me = std::process::id().to_string();
    let alone = own != "/" && words(&own_dir.join("cgroup.procs")) == [me.clone()];
    let base = if alone {
        // Ours alone (delegated to us): the base itself. Children of an earlier daemon in
        // the same cgroup are empty by now.
        if let Ok(children) = std::fs::read_dir(&own_dir) {
            for c in children.flatten().filter(|c| c.file_name().to_string_lossy().starts_with("session")) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        own_dir
    } else if root {
        // Shared with other processes, or the root cgroup: a subtree of our own at the top.
        // The root cgroup is exempt from "no internal processes", so its controllers can
        // always be enabled for its children.
        for c in wanted {
            let _ = std::fs::write(mount.join("cgroup.subtree_control"), format!("+{c}"));
        }
        remove_stale(mount, prefix);
        let base = mount.join(format!("{prefix}{me}"));
        mkdir(&base)?;
        base
    } else {
        return Err(format!(
            "this process shares its cgroup {own} with other processes, so it cannot delegate controllers below \
             it: start the daemon in a cgroup of its own that is delegated to you (e.g. `systemd-run --user \
             --scope -p Delegate=yes debuglantern ...`, or as root: mkdir a cgroup, chown it and its cgroup.procs \
             to the user, move the daemon's shell there)"
        ));
    };
    let leaf = base.join("daemon");
    mkdir(&leaf)?;
    move_self(&leaf)?;
    let available = words(&base.join("cgroup.controllers"));
    let parent = base.parent().unwrap_or(mount).to_path_buf();
    let (mut enabled, mut warnings) = (Vec::new(), Vec::new());
    for (c, what) in LIMITED.iter().filter(|(c, _)| wanted.contains(c)) {
        if !available.iter().any(|a| a == c) {
            warnings.push(format!(
                "cgroup v2: the {c} controller is not delegated to {} (its cgroup.controllers: {}): no {what} limits \
                 for sessions; delegate it (systemd: Delegate=yes on the unit; by hand: echo +{c} > {}/cgroup.subtree_control)",
                base.display(),
                if available.is_empty() { "none".to_string() } else { available.join(" ") },
                parent.display()
            ));
            continue;
        }
        match std::fs::write(base.join("cgroup.subtree_control"), format!("+{c}")) {
            Ok(()) => enabled.push(c.to_string()),
            Err(e) => warnings.push(format!(
                "cgroup v2: cannot enable the {c} controller in {}/cgroup.subtree_control ({e}): no {what} limits for sessions",
                base.display()
            )),
        }
    }
    if root && uid != nix::unistd::getuid().as_raw() {
        chown(&base, uid)?;
        for f in ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"] {
            chown(&base.join(f), uid)?;
        }
    }
    Ok((base, enabled, warnings))
}

/// Prepares what the broker (host uid `uid`) needs: `root` says whether this process may
/// make cgroups anywhere or only in a subtree delegated to it.
pub fn prepare(uid_base: u32, uid: u32, root: bool) -> Prepared {
    let prefix = format!("debuglantern-{uid_base}-");
    let mut p = Prepared::default();
    let mut parts = Vec::new();
    let mut on_v2 = Vec::new();
    let mut rootless_v1 = Vec::new();
    let v2 = v2_mount();
    for (c, what) in LIMITED {
        if is_v1_mount(&Path::new(ROOT).join(c)) {
            if !root {
                rootless_v1.push(c);
                continue;
            }
            match prepare_v1(c, &prefix, uid) {
                Ok(dir) => {
                    parts.push(format!("{c}={}", dir.display()));
                    p.controllers.push(c.to_string());
                }
                Err(e) => p.warnings.push(format!("no cgroup v1 {c} limits for sessions ({e}); rlimits still apply")),
            }
        } else if v2.is_some() {
            on_v2.push(c);
        } else {
            p.warnings.push(format!("no cgroup {c} controller on this host: no {what} limits for sessions"));
        }
    }
    if !rootless_v1.is_empty() {
        p.warnings.push(format!(
            "rootless: no {} limits for sessions: this host has them on cgroup v1, which cannot be delegated to a user (rlimits still apply)",
            rootless_v1.join(", ")
        ));
    }
    if let (false, Some(mount)) = (on_v2.is_empty(), v2) {
        match prepare_v2(&mount, &on_v2, &prefix, uid, root) {
            Ok((base, enabled, warnings)) => {
                parts.push(format!("unified={}", base.display()));
                p.controllers.extend(enabled);
                p.warnings.extend(warnings);
            }
            Err(e) => p
                .warnings
                .push(format!("cgroup v2: no {} limits for sessions: {e} (rlimits still apply)", on_v2.join(", "))),
        }
    }
    p.arg = parts.join(",");
    p
}
