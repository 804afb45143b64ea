//! What a session's program (and everything it forks, gdbserver included) may call: an
//! **allowlist**, at least as strict as Docker's default profile, with a reason per entry.
//!
//! * [`ALLOWED`] (plus [`ALLOWED_X86_64`]): allowed; anything else fails with `ENOSYS`, so a
//!   system call a newer kernel adds is refused until someone reviews it, and libc falls
//!   back cleanly (as it does on an older kernel).
//! * [`DENIED`]: refused with `EPERM`, on purpose, so that a program can report what was
//!   refused. Everything Docker refuses without capabilities is here, and more.
//! * Arguments are filtered where Docker filters them: `clone` may not create namespaces,
//!   `personality` takes only Docker's values, `socket` only [`SOCKET_FAMILIES`] (and
//!   netlink only [`NETLINK_PROTOCOLS`]), `socketpair` only `AF_UNIX`; other families fail
//!   with `EAFNOSUPPORT` (no `AF_VSOCK`: network namespaces do not isolate it).
//! * `clone3` fails with `ENOSYS`: its flags live in memory, which seccomp cannot read; libc
//!   falls back to `clone`, whose flags it can.
//!
//! The x32 ABI (`nr | 0x40000000`) and foreign architectures kill the process (see
//! [`super::harden`]).

/// Reasons, shared by the entries they explain.
mod why {
    pub const FILE: &str = "files and directories (confined by the jail's mounts and the session's uid)";
    pub const IO: &str = "reading and writing descriptors";
    pub const XATTR: &str = "extended attributes of files the uid may touch";
    pub const WATCH: &str = "file change notification of files it can read (inotify, fanotify marks)";
    pub const MEM: &str = "memory of its own address space (bounded by rlimits and the memory cgroup)";
    pub const PROC: &str = "processes and threads of its own tree (its own PID namespace)";
    pub const SIG: &str = "signals (within its own PID namespace and uid)";
    pub const TIME: &str = "clocks and timers (setting the clock needs a capability it lacks)";
    pub const WAIT: &str = "waiting on descriptors";
    pub const NET: &str = "sockets (families filtered; its network namespace has only loopback)";
    pub const IPC: &str = "System V and POSIX IPC (its own IPC namespace)";
    pub const IDS: &str = "its credentials (changing them needs capabilities it lacks)";
    pub const SCHED: &str = "scheduling of its own processes";
    pub const INFO: &str = "system information (namespaced, or harmless)";
    pub const LIMIT: &str = "resource limits (it may only lower them)";
    pub const AIO: &str = "asynchronous i/o (the libaio kind: every operation is on its own descriptors)";
    pub const TRACE: &str =
        "tracing its own tree: gdbserver runs inside the session (other sessions are other PID namespaces and uids)";
    pub const SELF: &str = "confining itself further (seccomp, landlock, prctl)";
    pub const ARCH: &str = "x86 thread-local storage and segment set-up";
    pub const PID_FD: &str = "pidfds of its own processes";
}

use why::*;

/// `io_pgetevents` (not in the libc crate for x86_64).
#[cfg(target_arch = "x86_64")]
const SYS_IO_PGETEVENTS: i64 = 333;

/// Allowed on every architecture: (syscall, why).
pub const ALLOWED: &[(i64, &str)] = &[
    (libc::SYS_read, IO),
    (libc::SYS_write, IO),
    (libc::SYS_readv, IO),
    (libc::SYS_writev, IO),
    (libc::SYS_pread64, IO),
    (libc::SYS_pwrite64, IO),
    (libc::SYS_preadv, IO),
    (libc::SYS_pwritev, IO),
    (libc::SYS_preadv2, IO),
    (libc::SYS_pwritev2, IO),
    (libc::SYS_lseek, IO),
    (libc::SYS_close, IO),
    (libc::SYS_close_range, IO),
    (libc::SYS_dup, IO),
    (libc::SYS_dup3, IO),
    (libc::SYS_fcntl, IO),
    (libc::SYS_ioctl, IO),
    (libc::SYS_flock, IO),
    (libc::SYS_fsync, IO),
    (libc::SYS_fdatasync, IO),
    (libc::SYS_sync, IO),
    (libc::SYS_syncfs, IO),
    (libc::SYS_sync_file_range, IO),
    (libc::SYS_fadvise64, IO),
    (libc::SYS_readahead, IO),
    (libc::SYS_sendfile, IO),
    (libc::SYS_splice, IO),
    (libc::SYS_tee, IO),
    (libc::SYS_vmsplice, IO),
    (libc::SYS_copy_file_range, IO),
    (libc::SYS_pipe2, IO),
    (libc::SYS_eventfd2, IO),
    (libc::SYS_memfd_create, IO),
    (libc::SYS_openat, FILE),
    (libc::SYS_openat2, FILE),
    (libc::SYS_newfstatat, FILE),
    (libc::SYS_fstat, FILE),
    (libc::SYS_statx, FILE),
    (libc::SYS_statfs, FILE),
    (libc::SYS_fstatfs, FILE),
    (libc::SYS_faccessat, FILE),
    (libc::SYS_faccessat2, FILE),
    (libc::SYS_getcwd, FILE),
    (libc::SYS_chdir, FILE),
    (libc::SYS_fchdir, FILE),
    (libc::SYS_getdents64, FILE),
    (libc::SYS_mkdirat, FILE),
    (libc::SYS_mknodat, FILE),
    (libc::SYS_unlinkat, FILE),
    (libc::SYS_renameat, FILE),
    (libc::SYS_renameat2, FILE),
    (libc::SYS_linkat, FILE),
    (libc::SYS_symlinkat, FILE),
    (libc::SYS_readlinkat, FILE),
    (libc::SYS_fchmod, FILE),
    (libc::SYS_fchmodat, FILE),
    (libc::SYS_fchmodat2, FILE),
    (libc::SYS_fchown, FILE),
    (libc::SYS_fchownat, FILE),
    (libc::SYS_truncate, FILE),
    (libc::SYS_ftruncate, FILE),
    (libc::SYS_fallocate, FILE),
    (libc::SYS_utimensat, FILE),
    (libc::SYS_umask, FILE),
    (libc::SYS_getxattr, XATTR),
    (libc::SYS_lgetxattr, XATTR),
    (libc::SYS_fgetxattr, XATTR),
    (libc::SYS_setxattr, XATTR),
    (libc::SYS_lsetxattr, XATTR),
    (libc::SYS_fsetxattr, XATTR),
    (libc::SYS_listxattr, XATTR),
    (libc::SYS_llistxattr, XATTR),
    (libc::SYS_flistxattr, XATTR),
    (libc::SYS_removexattr, XATTR),
    (libc::SYS_lremovexattr, XATTR),
    (libc::SYS_fremovexattr, XATTR),
    (libc::SYS_inotify_init1, WATCH),
    (libc::SYS_inotify_add_watch, WATCH),
    (libc::SYS_inotify_rm_watch, WATCH),
    (libc::SYS_fanotify_mark, WATCH),
    (libc::SYS_mmap, MEM),
    (libc::SYS_munmap, MEM),
    (libc::SYS_mremap, MEM),
    (libc::SYS_mprotect, MEM),
    (libc::SYS_madvise, MEM),
    (libc::SYS_brk, MEM),
    (libc::SYS_msync, MEM),
    (libc::SYS_mincore, MEM),
    (libc::SYS_mlock, MEM),
    (libc::SYS_mlock2, MEM),
    (libc::SYS_munlock, MEM),
    (libc::SYS_mlockall, MEM),
    (libc::SYS_munlockall, MEM),
    (libc::SYS_remap_file_pages, MEM),
    (libc::SYS_pkey_alloc, MEM),
    (libc::SYS_pkey_free, MEM),
    (libc::SYS_pkey_mprotect, MEM),
    (libc::SYS_membarrier, MEM),
    (libc::SYS_memfd_secret, MEM),
    (libc::SYS_process_mrelease, MEM),
    (libc::SYS_clone, PROC),
    (libc::SYS_execve, PROC),
    (libc::SYS_execveat, PROC),
    (libc::SYS_exit, PROC),
    (libc::SYS_exit_group, PROC),
    (libc::SYS_wait4, PROC),
    (libc::SYS_waitid, PROC),
    (libc::SYS_getpid, PROC),
    (libc::SYS_getppid, PROC),
    (libc::SYS_gettid, PROC),
    (libc::SYS_getpgid, PROC),
    (libc::SYS_setpgid, PROC),
    (libc::SYS_getsid, PROC),
    (libc::SYS_setsid, PROC),
    (libc::SYS_set_tid_address, PROC),
    (libc::SYS_set_robust_list, PROC),
    (libc::SYS_get_robust_list, PROC),
    (libc::SYS_rseq, PROC),
    (libc::SYS_futex, PROC),
    (libc::SYS_futex_waitv, PROC),
    (libc::SYS_restart_syscall, PROC),
    (libc::SYS_personality, PROC),
    (libc::SYS_pidfd_open, PID_FD),
    (libc::SYS_pidfd_send_signal, PID_FD),
    (libc::SYS_kill, SIG),
    (libc::SYS_tkill, SIG),
    (libc::SYS_tgkill, SIG),
    (libc::SYS_rt_sigaction, SIG),
    (libc::SYS_rt_sigprocmask, SIG),
    (libc::SYS_rt_sigreturn, SIG),
    (libc::SYS_rt_sigpending, SIG),
    (libc::SYS_rt_sigsuspend, SIG),
    (libc::SYS_rt_sigtimedwait, SIG),
    (libc::SYS_rt_sigqueueinfo, SIG),
    (libc::SYS_rt_tgsigqueueinfo, SIG),
    (libc::SYS_sigaltstack, SIG),
    (libc::SYS_signalfd4, SIG),
    (libc::SYS_clock_gettime, TIME),
    (libc::SYS_clock_getres, TIME),
    (libc::SYS_clock_nanosleep, TIME),
    (libc::SYS_clock_adjtime, TIME),
    (libc::SYS_adjtimex, TIME),
    (libc::SYS_gettimeofday, TIME),
    (libc::SYS_nanosleep, TIME),
    (libc::SYS_getitimer, TIME),
    (libc::SYS_setitimer, TIME),
    (libc::SYS_timer_create, TIME),
    (libc::SYS_timer_delete, TIME),
    (libc::SYS_timer_gettime, TIME),
    (libc::SYS_timer_settime, TIME),
    (libc::SYS_timer_getoverrun, TIME),
    (libc::SYS_timerfd_create, TIME),
    (libc::SYS_timerfd_gettime, TIME),
    (libc::SYS_timerfd_settime, TIME),
    (libc::SYS_times, TIME),
    (libc::SYS_epoll_create1, WAIT),
    (libc::SYS_epoll_ctl, WAIT),
    (libc::SYS_epoll_pwait, WAIT),
    (libc::SYS_epoll_pwait2, WAIT),
    (libc::SYS_ppoll, WAIT),
    (libc::SYS_pselect6, WAIT),
    (libc::SYS_socket, NET),
    (libc::SYS_socketpair, NET),
    (libc::SYS_bind, NET),
    (libc::SYS_listen, NET),
    (libc::SYS_accept, NET),
    (libc::SYS_accept4, NET),
    (libc::SYS_connect, NET),
    (libc::SYS_getsockname, NET),
    (libc::SYS_getpeername, NET),
    (libc::SYS_getsockopt, NET),
    (libc::SYS_setsockopt, NET),
    (libc::SYS_sendto, NET),
    (libc::SYS_recvfrom, NET),
    (libc::SYS_sendmsg, NET),
    (libc::SYS_recvmsg, NET),
    (libc::SYS_sendmmsg, NET),
    (libc::SYS_recvmmsg, NET),
    (libc::SYS_shutdown, NET),
    (libc::SYS_shmget, IPC),
    (libc::SYS_shmat, IPC),
    (libc::SYS_shmdt, IPC),
    (libc::SYS_shmctl, IPC),
    (libc::SYS_semget, IPC),
    (libc::SYS_semop, IPC),
    (libc::SYS_semtimedop, IPC),
    (libc::SYS_semctl, IPC),
    (libc::SYS_msgget, IPC),
    (libc::SYS_msgsnd, IPC),
    (libc::SYS_msgrcv, IPC),
    (libc::SYS_msgctl, IPC),
    (libc::SYS_mq_open, IPC),
    (libc::SYS_mq_unlink, IPC),
    (libc::SYS_mq_timedsend, IPC),
    (libc::SYS_mq_timedreceive, IPC),
    (libc::SYS_mq_notify, IPC),
    (libc::SYS_mq_getsetattr, IPC),
    (libc::SYS_getuid, IDS),
    (libc::SYS_geteuid, IDS),
    (libc::SYS_getgid, IDS),
    (libc::SYS_getegid, IDS),
    (libc::SYS_getresuid, IDS),
    (libc::SYS_getresgid, IDS),
    (libc::SYS_getgroups, IDS),
    (libc::SYS_setuid, IDS),
    (libc::SYS_setgid, IDS),
    (libc::SYS_setreuid, IDS),
    (libc::SYS_setregid, IDS),
    (libc::SYS_setresuid, IDS),
    (libc::SYS_setresgid, IDS),
    (libc::SYS_setfsuid, IDS),
    (libc::SYS_setfsgid, IDS),
    (libc::SYS_setgroups, IDS),
    (libc::SYS_capget, IDS),
    (libc::SYS_capset, IDS),
    (libc::SYS_sched_yield, SCHED),
    (libc::SYS_sched_getaffinity, SCHED),
    (libc::SYS_sched_setaffinity, SCHED),
    (libc::SYS_sched_getparam, SCHED),
    (libc::SYS_sched_setparam, SCHED),
    (libc::SYS_sched_getscheduler, SCHED),
    (libc::SYS_sched_setscheduler, SCHED),
    (libc::SYS_sched_getattr, SCHED),
    (libc::SYS_sched_setattr, SCHED),
    (libc::SYS_sched_get_priority_max, SCHED),
    (libc::SYS_sched_get_priority_min, SCHED),
    (libc::SYS_sched_rr_get_interval, SCHED),
    (libc::SYS_getpriority, SCHED),
    (libc::SYS_setpriority, SCHED),
    (libc::SYS_ioprio_get, SCHED),
    (libc::SYS_ioprio_set, SCHED),
    (libc::SYS_getcpu, SCHED),
    (libc::SYS_uname, INFO),
    (libc::SYS_sysinfo, INFO),
    (libc::SYS_getrandom, INFO),
    (libc::SYS_getrlimit, LIMIT),
    (libc::SYS_setrlimit, LIMIT),
    (libc::SYS_prlimit64, LIMIT),
    (libc::SYS_getrusage, LIMIT),
    (libc::SYS_io_setup, AIO),
    (libc::SYS_io_destroy, AIO),
    (libc::SYS_io_submit, AIO),
    (libc::SYS_io_cancel, AIO),
    (libc::SYS_io_getevents, AIO),
    #[cfg(target_arch = "x86_64")]
    (SYS_IO_PGETEVENTS, AIO),
    (libc::SYS_ptrace, TRACE),
    (libc::SYS_process_vm_readv, TRACE),
    (libc::SYS_process_vm_writev, TRACE),
    (libc::SYS_prctl, SELF),
    (libc::SYS_seccomp, SELF),
    (libc::SYS_landlock_create_ruleset, SELF),
    (libc::SYS_landlock_add_rule, SELF),
    (libc::SYS_landlock_restrict_self, SELF),
];

/// Allowed on x86_64 only: the older calls other architectures never had.
#[cfg(target_arch = "x86_64")]
pub const ALLOWED_X86_64: &[(i64, &str)] = &[
    (libc::SYS_open, FILE),
    (libc::SYS_creat, FILE),
    (libc::SYS_stat, FILE),
    (libc::SYS_lstat, FILE),
    (libc::SYS_access, FILE),
    (libc::SYS_getdents, FILE),
    (libc::SYS_mkdir, FILE),
    (libc::SYS_rmdir, FILE),
    (libc::SYS_mknod, FILE),
    (libc::SYS_unlink, FILE),
    (libc::SYS_rename, FILE),
    (libc::SYS_link, FILE),
    (libc::SYS_symlink, FILE),
    (libc::SYS_readlink, FILE),
    (libc::SYS_chmod, FILE),
    (libc::SYS_chown, FILE),
    (libc::SYS_lchown, FILE),
    (libc::SYS_utime, FILE),
    (libc::SYS_utimes, FILE),
    (libc::SYS_futimesat, FILE),
    (libc::SYS_dup2, IO),
    (libc::SYS_pipe, IO),
    (libc::SYS_eventfd, IO),
    (libc::SYS_inotify_init, WATCH),
    (libc::SYS_fork, PROC),
    (libc::SYS_vfork, PROC),
    (libc::SYS_getpgrp, PROC),
    (libc::SYS_pause, SIG),
    (libc::SYS_signalfd, SIG),
    (libc::SYS_alarm, TIME),
    (libc::SYS_time, TIME),
    (libc::SYS_poll, WAIT),
    (libc::SYS_select, WAIT),
    (libc::SYS_epoll_create, WAIT),
    (libc::SYS_epoll_wait, WAIT),
    (libc::SYS_epoll_ctl_old, WAIT),
    (libc::SYS_epoll_wait_old, WAIT),
    (libc::SYS_arch_prctl, ARCH),
    (libc::SYS_modify_ldt, ARCH),
    (libc::SYS_set_thread_area, ARCH),
    (libc::SYS_get_thread_area, ARCH),
];

/// No legacy calls elsewhere.
#[cfg(not(target_arch = "x86_64"))]
pub const ALLOWED_X86_64: &[(i64, &str)] = &[];

/// Refused with `EPERM` on purpose: (syscall, why).
pub const DENIED: &[(i64, &str)] = &[
    (libc::SYS_mount, "no mounting: the filesystem is the jail's"),
    (libc::SYS_umount2, "no unmounting the jail's mounts (they hide the host)"),
    (libc::SYS_pivot_root, "no changing the root"),
    (libc::SYS_chroot, "no chroot (and with it the chroot+chdir(\"..\") escape)"),
    (libc::SYS_setns, "no joining other namespaces"),
    (libc::SYS_unshare, "no new namespaces (a user namespace grants capabilities)"),
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
    (libc::SYS_fanotify_init, "fanotify watches whole mounts and filesystems"),
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
    (libc::SYS_quotactl_fd, "host administration"),
    (libc::SYS_sethostname, "the session's hostname is the rig's to set"),
    (libc::SYS_setdomainname, "the session's domain name is the rig's to set"),
    (libc::SYS_settimeofday, "the clock is the host's"),
    (libc::SYS_clock_settime, "the clock is the host's"),
    (libc::SYS_syslog, "the host's kernel log"),
    (libc::SYS_vhangup, "terminal administration"),
    (libc::SYS_open_by_handle_at, "opens files by handle, bypassing the jail's paths"),
    (libc::SYS_name_to_handle_at, "pairs with open_by_handle_at"),
    (libc::SYS_lookup_dcookie, "kernel profiling interface"),
    (libc::SYS_kcmp, "compares kernel objects of other processes (Docker needs CAP_SYS_PTRACE for it)"),
    (libc::SYS_pidfd_getfd, "takes descriptors out of other processes (Docker needs CAP_SYS_PTRACE for it)"),
    (libc::SYS_process_madvise, "acts on other processes' memory (Docker needs CAP_SYS_PTRACE for it)"),
    (libc::SYS_mbind, "NUMA policy is the host's"),
    (libc::SYS_set_mempolicy, "NUMA policy is the host's"),
    (libc::SYS_get_mempolicy, "NUMA policy is the host's"),
    (libc::SYS_set_mempolicy_home_node, "NUMA policy is the host's"),
    (libc::SYS_migrate_pages, "NUMA policy is the host's"),
    (libc::SYS_move_pages, "NUMA policy is the host's"),
    (libc::SYS_io_uring_setup, "io_uring operations are not seen by seccomp"),
    (libc::SYS_io_uring_enter, "io_uring operations are not seen by seccomp"),
    (libc::SYS_io_uring_register, "io_uring operations are not seen by seccomp"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "raw port i/o"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "raw port i/o"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_uselib, "obsolete library loading"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ustat, "obsolete filesystem statistics"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_sysfs, "obsolete filesystem type enumeration"),
];

/// Refused with `ENOSYS` on purpose (not merely unlisted): (syscall, why).
pub const ENOSYS: &[(i64, &str)] =
    &[(libc::SYS_clone3, "its flags are in memory seccomp cannot read: libc falls back to clone")];

/// Socket families a session may open: (family, why).
pub const SOCKET_FAMILIES: &[(i32, &str)] = &[
    (libc::AF_UNIX, "local sockets between its own processes"),
    (libc::AF_INET, "TCP/UDP over its own loopback"),
    (libc::AF_INET6, "TCP/UDP over its own loopback"),
    (libc::AF_NETLINK, "route queries of its own network namespace (getaddrinfo, if_nameindex)"),
];

/// Netlink protocols a session may open.
pub const NETLINK_PROTOCOLS: &[(i32, &str)] = &[(libc::NETLINK_ROUTE, "addresses and links of its own namespace")];

/// `personality` values a session may set (Docker's): (value, why).
pub const PERSONALITIES: &[(u64, &str)] = &[
    (0x0, "PER_LINUX"),
    (0x8, "PER_LINUX32"),
    (0x20000, "UNAME26"),
    (0x20008, "PER_LINUX32 | UNAME26"),
    (0xffff_ffff, "query the current persona"),
];

/// `clone` flags that would create a namespace: refused with `EPERM`.
pub const NAMESPACE_FLAGS: &[(u64, &str)] = &[
    (libc::CLONE_NEWUSER as u64, "a user namespace grants capabilities"),
    (libc::CLONE_NEWNS as u64, "mount namespace"),
    (libc::CLONE_NEWPID as u64, "PID namespace"),
    (libc::CLONE_NEWNET as u64, "network namespace"),
    (libc::CLONE_NEWIPC as u64, "IPC namespace"),
    (libc::CLONE_NEWUTS as u64, "UTS namespace"),
    (libc::CLONE_NEWCGROUP as u64, "cgroup namespace"),
];

/// Every allowed syscall.
pub fn allowed() -> impl Iterator<Item = &'static (i64, &'static str)> {
    ALLOWED.iter().chain(ALLOWED_X86_64)
}
