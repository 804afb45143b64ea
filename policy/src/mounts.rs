//! The mount plan: what a session's filesystem is made of.
//!
//! The broker builds [`root_plan`] once, at start-up, in its own mount namespace, then
//! pivots into it: from then on the broker itself sees nothing else of the host. Each
//! session's mount namespace is a copy of the broker's (so the whole tree costs nothing
//! per START) plus the per-session mounts of [`session_plan`].

/// One entry of the jail root (paths are absolute inside the new root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Bind the host path of the same name, read-only, nosuid, nodev. Skipped if the host
    /// has no such path; recreated as a symlink if the host path is one (merged /usr).
    RoBind(&'static str),
    /// An empty directory with this mode.
    Dir(&'static str, u32),
    /// A small file we write (mode 0444).
    File(&'static str, String),
    /// A copy of the host file of the same name, if it exists (mode 0444).
    Copy(&'static str),
    /// A device node bound from the host's `/dev` (an empty file is the mount point).
    Device(&'static str),
    /// A symlink: path → target.
    Symlink(&'static str, &'static str),
}

/// Directories of the host bound read-only into every session: programs and libraries.
pub const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

/// Device nodes a session gets (bound from the host). No disks, no `/dev/mem`, no
/// `/dev/kmsg`.
pub const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"];

/// The jail root. `session_uids` is the number of session uids (for `/etc/passwd`).
pub fn root_plan(session_uids: u32) -> Vec<Entry> {
    let mut v: Vec<Entry> = SYSTEM_DIRS.iter().map(|d| Entry::RoBind(d)).collect();
    v.push(Entry::Dir("/etc", 0o755));
    v.push(Entry::File("/etc/passwd", passwd(session_uids)));
    v.push(Entry::File("/etc/group", "root:x:0:\nsession:x:1:\nnogroup:x:65534:\n".into()));
    v.push(Entry::File("/etc/hosts", "127.0.0.1 localhost debuglantern\n::1 localhost ip6-localhost\n".into()));
    v.push(Entry::File("/etc/hostname", "debuglantern\n".into()));
    v.push(Entry::File("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n".into()));
    // The dynamic loader's cache: without it, libraries in multiarch dirs are not found.
    v.push(Entry::Copy("/etc/ld.so.cache"));
    v.push(Entry::Copy("/etc/localtime"));
    v.push(Entry::Dir("/dev", 0o755));
    v.extend(DEVICES.iter().map(|d| Entry::Device(d)));
    v.push(Entry::Dir("/dev/pts", 0o755));
    v.push(Entry::Symlink("/dev/ptmx", "pts/ptmx"));
    v.push(Entry::Symlink("/dev/fd", "/proc/self/fd"));
    v.push(Entry::Symlink("/dev/stdin", "/proc/self/fd/0"));
    v.push(Entry::Symlink("/dev/stdout", "/proc/self/fd/1"));
    v.push(Entry::Symlink("/dev/stderr", "/proc/self/fd/2"));
    v.push(Entry::Symlink("/dev/shm", "/tmp"));
    v.push(Entry::Dir("/proc", 0o555));
    v.push(Entry::Dir("/tmp", 0o1777));
    // The bundle store (every session's bundle; bound by the broker, unmounted in each
    // session) and where a session's own bundle appears, read-only.
    v.push(Entry::Dir(BUNDLES, 0o755));
    v.push(Entry::Dir(BUNDLE, 0o755));
    // Where every session's /tmp lives between runs (a writable tmpfs of the broker's,
    // mounted there at start-up; unmounted in each session).
    v.push(Entry::Dir(TMPS, 0o755));
    v
}

/// Where the bundle store is bound in the jail root.
pub const BUNDLES: &str = "/bundles";
/// Where a session's own bundle appears (its working directory).
pub const BUNDLE: &str = "/bundle";
/// Where the sessions' `/tmp`s are kept in the jail root: `TMPS/<session>/tmp`, one tmpfs
/// each, from its first START (or first copy in) to DELETE.
pub const TMPS: &str = "/tmps";

/// A session's kept `/tmp` in the jail root.
pub fn tmp_dir(session_dir: &str) -> String {
    format!("{TMPS}/{session_dir}/tmp")
}

fn passwd(session_uids: u32) -> String {
    let mut s = String::from("root:x:0:0:root:/tmp:/usr/sbin/nologin\n");
    for n in 0..session_uids.min(65_536) {
        s.push_str(&format!("session{n}:x:{}:{}:debuglantern session:/tmp:/bin/sh\n", n + 1, n + 1));
    }
    s.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    s
}

/// Files of a session's `/proc` that are hidden (Docker's list, and `/proc/cmdline`): the
/// host's `/dev/null` is bound over them, read-only, so they read as empty.
pub const PROC_MASKED_FILES: &[(&str, &str)] = &[
    ("/proc/kcore", "an image of physical memory"),
    ("/proc/keys", "keys of every keyring the kernel holds"),
    ("/proc/timer_list", "timers of the whole host, with their owners"),
    ("/proc/timer_stats", "timers of the whole host, with their owners"),
    ("/proc/sched_debug", "the scheduler's state of every host process"),
    ("/proc/latency_stats", "latencies of every host process"),
    ("/proc/interrupts", "the host's interrupt counters (a side channel)"),
    ("/proc/cmdline", "the host's kernel command line"),
];

/// Directories of a session's `/proc` that are hidden under an empty read-only tmpfs.
pub const PROC_MASKED_DIRS: &[(&str, &str)] = &[
    ("/proc/acpi", "firmware tables and controls"),
    ("/proc/scsi", "the host's SCSI devices (and, on old kernels, writable controls)"),
    ("/proc/asound", "the host's sound devices"),
];

/// Parts of a session's `/proc` that stay readable but are bound read-only.
pub const PROC_READ_ONLY: &[(&str, &str)] = &[
    ("/proc/sys", "kernel tunables"),
    ("/proc/sysrq-trigger", "the magic SysRq key"),
    ("/proc/irq", "interrupt affinity"),
    ("/proc/bus", "bus devices"),
    ("/proc/fs", "filesystem controls"),
];

/// Per-session mounts, made by the session's init before it gives up root of the broker's
/// user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionMount {
    /// A fresh `/proc` of the session's own PID namespace, with [`PROC_MASKED_FILES`] and
    /// [`PROC_MASKED_DIRS`] hidden and [`PROC_READ_ONLY`] read-only.
    Proc,
    /// The session's own `/tmp`: its tmpfs kept under [`TMPS`] (made by the spawner, sized
    /// by `tmp_bytes`), bound here; every other session's is hidden.
    Tmp,
    /// A private devpts instance on `/dev/pts` (its own ptys only).
    DevPts,
}

/// The per-session mounts.
pub fn session_plan() -> Vec<SessionMount> {
    vec![SessionMount::Proc, SessionMount::Tmp, SessionMount::DevPts]
}

/// The mount options of a session's `/tmp` tmpfs of `bytes` (inodes: one per 256 bytes,
/// at least 1024).
pub fn tmp_options(bytes: u64) -> String {
    let inodes = (bytes / 256).max(1024);
    format!("mode=1777,size={bytes},nr_inodes={inodes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_no_host_secrets() {
        let plan = root_plan(4);
        for e in &plan {
            let path = match e {
                Entry::RoBind(p) | Entry::Dir(p, _) | Entry::File(p, _) | Entry::Copy(p) | Entry::Device(p) => p,
                Entry::Symlink(p, _) => p,
            };
            for secret in ["/etc/shadow", "/root", "/home", "/var", "/run", "/sys", "/boot", "/dev/mem", "/dev/kmsg"] {
                assert!(!path.starts_with(secret), "{path} exposes {secret}");
            }
        }
        assert!(plan.contains(&Entry::RoBind("/usr")));
    }

    #[test]
    fn proc_masks_cover_dockers_and_the_command_line() {
        let masked: Vec<&str> = PROC_MASKED_FILES.iter().chain(PROC_MASKED_DIRS).map(|(p, _)| *p).collect();
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/proc/sched_debug",
            "/proc/scsi",
            "/proc/acpi",
            "/proc/cmdline",
        ] {
            assert!(masked.contains(&p), "{p} is not masked");
        }
        let ro: Vec<&str> = PROC_READ_ONLY.iter().map(|(p, _)| *p).collect();
        for p in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
            assert!(ro.contains(&p), "{p} is not read-only");
        }
        assert!(PROC_MASKED_FILES
            .iter()
            .chain(PROC_MASKED_DIRS)
            .chain(PROC_READ_ONLY)
            .all(|(p, why)| p.starts_with("/proc/") && !why.is_empty()));
    }

    #[test]
    fn passwd_lists_every_session_uid() {
        let p = passwd(3);
        assert!(p.contains("session0:x:1:1:") && p.contains("session2:x:3:3:"));
        assert!(!p.contains("session3"));
    }
}
