//! Seccomp policies, one per role, each syscall with its reason. Built once at start-up
//! (`seccompiler` → BPF) and never disabled, in any build.
//!
//! * [`frontend`]: an allow list of what the network half needs once it serves, plus a
//!   filter that kills the process outright on the calls it must never make (exec,
//!   ptrace, mount...). Anything else fails with `EPERM`.
//! * [`broker`]: the same shape for the broker once it serves: it never forks, execs,
//!   mounts or opens a socket (the spawner, forked before, creates sessions).
//! * [`session`]: a deny list (untrusted programs need the whole ordinary syscall surface).
//!   Denied calls fail with `EPERM`, so programs can report it; `clone3` fails with
//!   `ENOSYS` so that libc falls back to `clone`, whose flags the filter can see.
//!   Calls of another architecture (e.g. the 32-bit `int 0x80` ABI) kill the process.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Errors building a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules.
    #[error("building the seccomp filter: {0}")]
    Build(String),
}

/// What a session may not do at all: (syscall, why).
pub const SESSION_DENIED: &[(i64, &str)] = &[
    (libc::SYS_mount, "no mounting: the filesystem is the jail's"),
    (libc::SYS_umount2, "no unmounting the jail's mounts"),
    (libc::SYS_pivot_root, "no changing the root"),
    (libc::SYS_chroot, "no chroot (and with it the chroot+chdir(\"..\") escape)"),
    (libc::SYS_setns, "no joining other namespaces"),
    (libc::SYS_fsopen, "new mount API"),
    (libc::SYS_fsconfig, "new mount API"),
    (libc::SYS_fsmount, "new mount API"),
    (libc::SYS_fspick, "new mount API"),
    (libc::SYS_move_mount, "new mount API"),
    (libc::SYS_open_tree, "new mount API"),
    (libc::SYS_mount_setattr, "new mount API"),
    (libc::SYS_bpf, "no BPF programs or maps"),
    (libc::SYS_keyctl, "keyrings are not namespaced"),
    (libc::SYS_add_key, "keyrings are not namespaced"),
    (libc::SYS_request_key, "keyrings are not namespaced"),
    (libc::SYS_perf_event_open, "perf events leak host information and have a long CVE history"),
    (libc::SYS_userfaultfd, "a classic primitive for kernel exploits"),
    (libc::SYS_kexec_load, "no replacing the kernel"),
    (libc::SYS_kexec_file_load, "no replacing the kernel"),
    (libc::SYS_init_module, "no kernel modules"),
    (libc::SYS_finit_module, "no kernel modules"),
    (libc::SYS_delete_module, "no kernel modules"),
    (libc::SYS_swapon, "host administration"),
    (libc::SYS_swapoff, "host administration"),
    (libc::SYS_reboot, "host administration"),
    (libc::SYS_acct, "host administration"),
    (libc::SYS_quotactl, "host administration"),
    (libc::SYS_syslog, "the host's kernel log"),
    (libc::SYS_vhangup, "terminal administration"),
    (libc::SYS_open_by_handle_at, "opens files by handle, bypassing the jail's paths"),
    (libc::SYS_name_to_handle_at, "pairs with open_by_handle_at"),
    (libc::SYS_lookup_dcookie, "kernel profiling interface"),
    (libc::SYS_iopl, "raw port i/o"),
    (libc::SYS_ioperm, "raw port i/o"),
    (libc::SYS_io_uring_setup, "io_uring operations are not seen by seccomp"),
    (libc::SYS_io_uring_enter, "io_uring operations are not seen by seccomp"),
    (libc::SYS_io_uring_register, "io_uring operations are not seen by seccomp"),
];

/// Calls denied only with some flags: (syscall, argument index, flag mask, why).
pub const SESSION_DENIED_FLAGS: &[(i64, u8, u64, &str)] = &[
    (libc::SYS_unshare, 0, libc::CLONE_NEWUSER as u64, "no nested user namespaces (they grant capabilities)"),
    (libc::SYS_clone, 0, libc::CLONE_NEWUSER as u64, "no nested user namespaces (they grant capabilities)"),
];

/// What any Rust program of ours needs to run at all (allocator, locks, signals, time,
/// panics, exit): part of every role's allow list.
pub const RUNTIME: &[(i64, &str)] = &[
    (libc::SYS_mmap, "allocator"),
    (libc::SYS_munmap, "allocator"),
    (libc::SYS_mremap, "allocator"),
    (libc::SYS_mprotect, "allocator"),
    (libc::SYS_madvise, "allocator"),
    (libc::SYS_brk, "allocator"),
    (libc::SYS_futex, "std locks"),
    (libc::SYS_rt_sigprocmask, "signal mask"),
    (libc::SYS_rt_sigreturn, "signal return"),
    (libc::SYS_rt_sigaction, "std panics restore handlers"),
    (libc::SYS_sigaltstack, "std stack-overflow guard"),
    (libc::SYS_getpid, "abort on panic"),
    (libc::SYS_gettid, "abort on panic"),
    (libc::SYS_tgkill, "abort on panic"),
    (libc::SYS_restart_syscall, "restarted calls"),
    (libc::SYS_exit, "threads end"),
    (libc::SYS_exit_group, "the process ends"),
    (libc::SYS_clock_gettime, "timestamps and deadlines"),
    (libc::SYS_nanosleep, "std sleep"),
    (libc::SYS_clock_nanosleep, "std sleep"),
    (libc::SYS_sched_yield, "std spin loops"),
    (libc::SYS_getrandom, "hash map seeds, session ids"),
];

/// What the frontend may call once it serves: (syscall, why).
pub const FRONTEND_ALLOWED: &[(i64, &str)] = &[
    (libc::SYS_read, "sockets, log pipes, signalfd"),
    (libc::SYS_write, "sockets, memfds, stderr"),
    (libc::SYS_readv, "std i/o"),
    (libc::SYS_writev, "std i/o"),
    (libc::SYS_pread64, "ELF validation reads the memfd at offsets"),
    (libc::SYS_close, "descriptors"),
    (libc::SYS_fstat, "memfd size"),
    (libc::SYS_newfstatat, "memfd size"),
    (libc::SYS_statx, "memfd size"),
    (libc::SYS_lseek, "std i/o"),
    (libc::SYS_signalfd4, "SIGTERM/SIGINT in the event loop"),
    (libc::SYS_ioctl, "FIONBIO, FIOCLEX, SIOCGIFINDEX (argument-filtered)"),
    (libc::SYS_fcntl, "non-blocking mode, seals"),
    (libc::SYS_epoll_create1, "event loop"),
    (libc::SYS_epoll_ctl, "event loop"),
    (libc::SYS_epoll_wait, "event loop"),
    (libc::SYS_epoll_pwait, "event loop"),
    (libc::SYS_epoll_pwait2, "event loop"),
    (libc::SYS_poll, "waits in hello and shutdown"),
    (libc::SYS_ppoll, "waits in hello and shutdown"),
    (libc::SYS_accept4, "control clients"),
    (libc::SYS_accept, "control clients"),
    (libc::SYS_recvfrom, "sockets"),
    (libc::SYS_sendto, "sockets"),
    (libc::SYS_recvmsg, "broker messages with descriptors"),
    (libc::SYS_sendmsg, "broker messages with descriptors"),
    (libc::SYS_shutdown, "closing clients"),
    (libc::SYS_setsockopt, "TCP_NODELAY; mDNS multicast membership"),
    (libc::SYS_bind, "debug ports; mDNS sockets (the responder re-scans interfaces)"),
    (libc::SYS_listen, "debug ports"),
    (libc::SYS_socket, "mDNS: UDP and netlink sockets only (argument-filtered)"),
    (libc::SYS_getsockopt, "socket errors"),
    (libc::SYS_getsockname, "local addresses"),
    (libc::SYS_getpeername, "peer addresses"),
    (libc::SYS_memfd_create, "uploads"),
    (libc::SYS_fallocate, "uploads are allocated up front"),
    (libc::SYS_ftruncate, "uploads"),
    (libc::SYS_openat, "/proc/self/fdinfo and the bundle store only (landlock)"),
    (libc::SYS_openat2, "bundle extraction beneath the store (RESOLVE_BENEATH)"),
    (libc::SYS_mkdirat, "bundle extraction"),
    (libc::SYS_symlinkat, "bundle extraction (inside-pointing symlinks)"),
    (libc::SYS_fchmod, "bundle extraction (file modes)"),
    (libc::SYS_unlinkat, "removing bundles"),
    (libc::SYS_getdents64, "removing bundles"),
    (libc::SYS_dup, "bundle extraction"),
    (libc::SYS_clock_getres, "timestamps"),
    (libc::SYS_gettimeofday, "timestamps"),
    (libc::SYS_geteuid, "log line"),
    (libc::SYS_getuid, "std"),
    (libc::SYS_waitid, "reap the broker"),
    (libc::SYS_pidfd_send_signal, "kill the broker on a failed start"),
];

/// What the frontend must never do: the process is killed on the spot.
pub const FRONTEND_FATAL: &[(i64, &str)] = &[
    (libc::SYS_execve, "a compromised frontend must not become another program"),
    (libc::SYS_execveat, "a compromised frontend must not become another program"),
    (libc::SYS_ptrace, "no tracing the broker or sessions"),
    (libc::SYS_process_vm_readv, "no reading other processes"),
    (libc::SYS_process_vm_writev, "no writing other processes"),
    (libc::SYS_mount, "no mounting"),
    (libc::SYS_umount2, "no unmounting"),
    (libc::SYS_pivot_root, "no changing the root"),
    (libc::SYS_chroot, "no changing the root"),
    (libc::SYS_setns, "no entering namespaces"),
    (libc::SYS_unshare, "no new namespaces"),
    (libc::SYS_bpf, "no BPF"),
    (libc::SYS_init_module, "no kernel modules"),
    (libc::SYS_finit_module, "no kernel modules"),
];

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(not(target_arch = "aarch64"))]
    return TargetArch::x86_64;
}

fn build(rules: BTreeMap<i64, Vec<SeccompRule>>, on_match: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let f = SeccompFilter::new(rules, SeccompAction::Allow, on_match, arch())
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    f.try_into().map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))
}

fn table(list: &[(i64, &str)]) -> BTreeMap<i64, Vec<SeccompRule>> {
    list.iter().map(|(nr, _)| (*nr, vec![])).collect()
}

/// A role's allow list plus [`RUNTIME`].
fn with_runtime(list: &[(i64, &str)]) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut t = table(RUNTIME);
    t.extend(table(list));
    t
}

/// What the broker may call once it serves (it never forks: the spawner does): (syscall, why).
pub const BROKER_ALLOWED: &[(i64, &str)] = &[
    (libc::SYS_read, "cgroup counters"),
    (libc::SYS_write, "cgroup limits, stderr"),
    (libc::SYS_close, "descriptors"),
    (libc::SYS_recvmsg, "frontend, spawner and init messages with descriptors"),
    (libc::SYS_sendmsg, "frontend, spawner and init messages with descriptors"),
    (libc::SYS_epoll_create1, "event loop"),
    (libc::SYS_epoll_ctl, "event loop"),
    (libc::SYS_epoll_wait, "event loop"),
    (libc::SYS_epoll_pwait, "event loop"),
    (libc::SYS_epoll_pwait2, "event loop"),
    (libc::SYS_poll, "has an init exited (pidfd), hello"),
    (libc::SYS_ppoll, "has an init exited (pidfd), hello"),
    (libc::SYS_pidfd_send_signal, "STOP, KILL, fail closed"),
    (libc::SYS_fcntl, "non-blocking mode, seals check, dup of memfds"),
    (libc::SYS_openat, "cgroup files, beneath the delegated directories only (landlock)"),
    (libc::SYS_mkdirat, "session cgroups"),
    (libc::SYS_unlinkat, "session cgroups"),
];

/// What the broker must never do once it serves: the process is killed on the spot.
pub const BROKER_FATAL: &[(i64, &str)] = &[
    (libc::SYS_execve, "the broker never becomes another program"),
    (libc::SYS_execveat, "the broker never becomes another program"),
    (libc::SYS_clone, "the broker never forks (the spawner does)"),
    (libc::SYS_clone3, "the broker never forks (the spawner does)"),
    (libc::SYS_fork, "the broker never forks (the spawner does)"),
    (libc::SYS_vfork, "the broker never forks (the spawner does)"),
    (libc::SYS_ptrace, "no tracing sessions"),
    (libc::SYS_process_vm_readv, "no reading sessions' memory"),
    (libc::SYS_process_vm_writev, "no writing sessions' memory"),
    (libc::SYS_mount, "the jail root is built before serving"),
    (libc::SYS_umount2, "the jail root is built before serving"),
    (libc::SYS_pivot_root, "the jail root is built before serving"),
    (libc::SYS_setns, "no entering namespaces"),
    (libc::SYS_unshare, "no new namespaces"),
    (libc::SYS_socket, "the broker never opens a socket"),
    (libc::SYS_connect, "no network"),
    (libc::SYS_bind, "no network"),
    (libc::SYS_listen, "no network"),
    (libc::SYS_bpf, "no BPF"),
    (libc::SYS_init_module, "no kernel modules"),
    (libc::SYS_finit_module, "no kernel modules"),
];

/// An allow list (`allowed` → allow, anything else → `EPERM`) stacked under a filter that
/// kills the process on `fatal`.
fn allow_list(
    allowed: BTreeMap<i64, Vec<SeccompRule>>,
    fatal: &[(i64, &str)],
) -> Result<Vec<BpfProgram>, SeccompError> {
    let fatal = build(table(fatal), SeccompAction::KillProcess)?;
    let f = SeccompFilter::new(allowed, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch())
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    let allow: BpfProgram = f.try_into().map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))?;
    Ok(vec![fatal, allow])
}

/// The broker's filters (install all of them, in order).
pub fn broker() -> Result<Vec<BpfProgram>, SeccompError> {
    allow_list(with_runtime(BROKER_ALLOWED), BROKER_FATAL)
}

/// The frontend's filters (install all of them, in order).
pub fn frontend() -> Result<Vec<BpfProgram>, SeccompError> {
    let mut allowed = with_runtime(FRONTEND_ALLOWED);
    // ioctl: only FIONBIO, FIOCLEX and SIOCGIFINDEX (if_nametoindex, for mDNS).
    let mut ioctl = Vec::new();
    for req in [libc::FIONBIO, libc::FIOCLEX, libc::SIOCGIFINDEX as _] {
        // The ioctl request type differs between libcs (c_ulong here, c_int on musl).
        #[allow(clippy::unnecessary_cast)]
        let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req as u64)
            .map_err(|e| SeccompError::Build(e.to_string()))?;
        ioctl.push(SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(e.to_string()))?);
    }
    allowed.insert(libc::SYS_ioctl, ioctl);
    // socket: only the families the mDNS responder uses (no AF_UNIX, AF_PACKET, ...).
    let mut socket = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK] {
        let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, family as u64)
            .map_err(|e| SeccompError::Build(e.to_string()))?;
        socket.push(SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(e.to_string()))?);
    }
    allowed.insert(libc::SYS_socket, socket);
    allow_list(allowed, FRONTEND_FATAL)
}

/// The session's filters (install all of them, in order).
pub fn session() -> Result<Vec<BpfProgram>, SeccompError> {
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = SESSION_DENIED.iter().map(|(nr, _)| (*nr, vec![])).collect();
    for (nr, arg, mask, _) in SESSION_DENIED_FLAGS {
        let cond = SeccompCondition::new(*arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*mask), *mask)
            .map_err(|e| SeccompError::Build(e.to_string()))?;
        let rule = SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(e.to_string()))?;
        deny.entry(*nr).or_default().push(rule);
    }
    let eperm = build(deny, SeccompAction::Errno(libc::EPERM as u32))?;
    // clone3 passes its flags in memory, which seccomp cannot read.
    let clone3 = build(BTreeMap::from([(libc::SYS_clone3, vec![])]), SeccompAction::Errno(libc::ENOSYS as u32))?;
    Ok(vec![eperm, clone3])
}

/// Installs filters on every thread of the process at once (`SECCOMP_FILTER_FLAG_TSYNC`).
pub fn install_all_threads(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter_all_threads(f).map_err(|e| SeccompError::Build(format!("installing: {e}")))?;
    }
    Ok(())
}

/// Installs filters on the calling thread (needs `no_new_privs`, which every role has).
pub fn install(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| SeccompError::Build(format!("installing: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_filters_build_and_never_allow_what_they_kill() {
        assert_eq!(frontend().unwrap().len(), 2);
        assert_eq!(broker().unwrap().len(), 2);
        for (allowed, fatal) in [(FRONTEND_ALLOWED, FRONTEND_FATAL), (BROKER_ALLOWED, BROKER_FATAL)] {
            for (nr, _) in fatal {
                assert!(!allowed.iter().chain(RUNTIME).any(|(a, _)| a == nr), "syscall {nr} both allowed and fatal");
            }
            for (nr, _) in allowed {
                assert!(!RUNTIME.iter().any(|(a, _)| a == nr), "syscall {nr} listed in a role and in RUNTIME");
            }
        }
    }

    #[test]
    fn session_filters_build_and_name_every_reason() {
        let f = session().unwrap();
        assert_eq!(f.len(), 2);
        assert!(SESSION_DENIED.iter().all(|(_, why)| !why.is_empty()));
        // No syscall listed twice.
        let mut nrs: Vec<i64> = SESSION_DENIED.iter().map(|(n, _)| *n).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), SESSION_DENIED.len());
    }
}
