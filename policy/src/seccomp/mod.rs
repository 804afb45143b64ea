//! Seccomp policies, one per role, each syscall with its reason, compiled once at start-up
//! by [`bpf`] (a balanced search over syscall numbers) and never disabled, in any build.
//! Every filter of every role starts with the same prologue ([`bpf::prologue`]): a call of
//! another architecture (the 32-bit `int 0x80` ABI) or through the x32 ABI (`nr |
//! 0x40000000`, which shares x86_64's audit architecture and would otherwise walk around
//! every rule) kills the process.
//!
//! * [`frontend`]: an allow list of what the network half needs once it serves; the calls
//!   it must never make (exec, ptrace, mount...) kill it; anything else fails with
//!   `EPERM`. On top, the event-loop thread drops what only the mDNS thread needs
//!   ([`frontend_loop`]).
//! * [`broker`]: the same shape for the broker once it serves: it never forks, execs,
//!   mounts or opens a socket (the spawner, forked before, creates sessions).
//! * [`spawner`]: a deny list for the broker's session-building helper; it stacks under
//!   every session's filters and refuses only what sessions are refused anyway.
//! * [`session()`]: the allowlist of [`session`] (anything unlisted → `ENOSYS`), its deny
//!   list (`EPERM`) and argument rules (namespaces in `clone`, `personality`, socket
//!   families → `EAFNOSUPPORT`).
//! * [`notifier`]: turns chosen calls into user notifications for the session's init.

pub mod bpf;
pub mod session;

pub use bpf::{Action, Case, Check, Op, Rule, Table, X32_SYSCALL_BIT};
pub use seccompiler::BpfProgram;

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

const EPERM: Action = Action::Errno(libc::EPERM);

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
    (libc::SYS_ioctl, "FIONBIO, FIOCLEX, TIOCSWINSZ, SIOCGIFINDEX (argument-filtered)"),
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

/// What the broker may call once it serves (it never forks: the spawner does): (syscall, why).
pub const BROKER_ALLOWED: &[(i64, &str)] = &[
    (libc::SYS_read, "cgroup counters"),
    (libc::SYS_write, "cgroup limits, stderr"),
    (libc::SYS_pread64, "cgroup counters, kept open and read afresh at offset 0"),
    (libc::SYS_pwrite64, "a session's v1 memory peak reset through its kept descriptor"),
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

/// ioctl requests every frontend thread may make: `FIONBIO`, `FIOCLEX`, and `TIOCSWINSZ`
/// (an attached client's terminal resized: the loop sets the size of the run's terminal,
/// whose master it holds).
// The request type differs between libcs (c_ulong here, c_int on musl).
#[allow(clippy::unnecessary_cast)]
pub const FRONTEND_IOCTLS: &[u64] = &[libc::FIONBIO as u64, libc::FIOCLEX as u64, libc::TIOCSWINSZ as u64];
/// ioctl requests only the mDNS responder makes (`if_nametoindex` as it re-scans interfaces).
#[allow(clippy::unnecessary_cast)]
pub const MDNS_IOCTLS: &[u64] = &[libc::SIOCGIFINDEX as u64];

/// Allowed when argument `arg` (an `int`) is one of `values`, else `otherwise`.
fn one_of(arg: u8, values: impl IntoIterator<Item = u64>, otherwise: Action) -> Rule {
    Rule {
        cases: values
            .into_iter()
            .map(|v| Case { all: vec![Check::low(arg, Op::Eq(v))], then: Action::Allow })
            .collect(),
        otherwise,
    }
}

/// The frontend's table, for every thread.
pub fn frontend_table() -> Table {
    let mut t = Table::new(EPERM);
    t.set_all(RUNTIME, Action::Allow).set_all(FRONTEND_ALLOWED, Action::Allow);
    t.set_all(FRONTEND_FATAL, Action::KillProcess);
    t.set(libc::SYS_ioctl, one_of(1, FRONTEND_IOCTLS.iter().chain(MDNS_IOCTLS).copied(), EPERM));
    // socket: only the families the frontend uses (no AF_UNIX, AF_PACKET, AF_VSOCK...).
    t.set(libc::SYS_socket, one_of(0, [libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK].map(|f| f as u64), EPERM));
    // A thread may narrow itself further ([`frontend_loop`]): seccompiler sets
    // no_new_privs (already set) and then adds a filter to the calling thread only.
    t.set(libc::SYS_prctl, one_of(0, [libc::PR_SET_NO_NEW_PRIVS as u64], EPERM));
    t.set(
        libc::SYS_seccomp,
        Rule {
            cases: vec![Case {
                all: vec![Check::low(0, Op::Eq(u64::from(libc::SECCOMP_SET_MODE_FILTER))), Check::full(1, Op::Eq(0))],
                then: Action::Allow,
            }],
            otherwise: EPERM,
        },
    );
    t
}

/// The frontend's filter, for every thread (install it with `TSYNC`); the event-loop
/// thread then adds [`frontend_loop`].
pub fn frontend() -> Vec<BpfProgram> {
    vec![frontend_table().compile()]
}

/// What the event-loop thread gives up once the mDNS responder's thread runs: netlink,
/// datagram and raw sockets, and interface ioctls. It keeps TCP sockets (debug ports).
pub fn frontend_loop_table() -> Table {
    let mut t = Table::new(Action::Allow);
    let tcp = |family: i32| Case {
        all: vec![
            Check::low(0, Op::Eq(family as u64)),
            Check::low(1, Op::MaskedEq { mask: 0xf, value: libc::SOCK_STREAM as u64 }),
        ],
        then: Action::Allow,
    };
    t.set(libc::SYS_socket, Rule { cases: vec![tcp(libc::AF_INET), tcp(libc::AF_INET6)], otherwise: EPERM });
    t.set(libc::SYS_ioctl, one_of(1, FRONTEND_IOCTLS.iter().copied(), EPERM));
    t
}

/// The event-loop thread's own filter.
pub fn frontend_loop() -> BpfProgram {
    frontend_loop_table().compile()
}

/// The broker's table.
pub fn broker_table() -> Table {
    let mut t = Table::new(EPERM);
    t.set_all(RUNTIME, Action::Allow).set_all(BROKER_ALLOWED, Action::Allow);
    t.set_all(BROKER_FATAL, Action::KillProcess);
    t
}

/// The broker's filter.
pub fn broker() -> Vec<BpfProgram> {
    vec![broker_table().compile()]
}

/// Syscalls the spawner (and the session inits and debug helpers it forks) still make,
/// although sessions are refused them: building a session needs them.
pub const SPAWNER_KEEPS: &[(i64, &str)] = &[
    (libc::SYS_mount, "the init mounts the session's /proc, /tmp, devpts and bundle"),
    (libc::SYS_umount2, "the init hides the bundle store and the other sessions' /tmp; a deleted session's /tmp goes"),
    (libc::SYS_setns, "the debug helper enters a session's namespaces"),
    (libc::SYS_unshare, "the init enters its own cgroup namespace"),
    (libc::SYS_sethostname, "the init names the session's host"),
];

/// The spawner's deny list: every call sessions are refused on purpose except
/// [`SPAWNER_KEEPS`]. It stacks under every session (inherited), so it refuses only what
/// sessions are refused anyway, with the same `EPERM`.
pub fn spawner_denied() -> impl Iterator<Item = &'static (i64, &'static str)> {
    session::DENIED.iter().filter(|(nr, _)| !SPAWNER_KEEPS.iter().any(|(k, _)| k == nr))
}

/// The spawner's table.
pub fn spawner_table() -> Table {
    let mut t = Table::new(Action::Allow);
    t.set_all(spawner_denied(), EPERM);
    t
}

/// The spawner's filter.
pub fn spawner() -> Vec<BpfProgram> {
    vec![spawner_table().compile()]
}

/// The session's table: the allowlist (anything unlisted → `ENOSYS`), the deny list
/// (`EPERM`), and the argument rules.
pub fn session_table() -> Table {
    let mut t = Table::new(Action::Errno(libc::ENOSYS));
    t.set_all(session::allowed(), Action::Allow);
    t.set_all(session::DENIED, EPERM);
    t.set_all(session::ENOSYS, Action::Errno(libc::ENOSYS));
    t.set(
        libc::SYS_clone,
        Rule {
            cases: session::NAMESPACE_FLAGS
                .iter()
                .map(|(f, _)| Case { all: vec![Check::full(0, Op::MaskedEq { mask: *f, value: *f })], then: EPERM })
                .collect(),
            otherwise: Action::Allow,
        },
    );
    t.set(libc::SYS_personality, one_of(0, session::PERSONALITIES.iter().map(|(p, _)| *p), EPERM));
    let refuse = Action::Errno(libc::EAFNOSUPPORT);
    let mut other_netlink = vec![Check::low(0, Op::Eq(libc::AF_NETLINK as u64))];
    other_netlink.extend(session::NETLINK_PROTOCOLS.iter().map(|(p, _)| Check::low(2, Op::Ne(*p as u64))));
    let mut socket = one_of(0, session::SOCKET_FAMILIES.iter().map(|(f, _)| *f as u64), refuse);
    socket.cases.insert(0, Case { all: other_netlink, then: refuse });
    t.set(libc::SYS_socket, socket);
    t.set(libc::SYS_socketpair, one_of(0, [libc::AF_UNIX as u64], refuse));
    t
}

/// The session's filter.
pub fn session() -> Vec<BpfProgram> {
    vec![session_table().compile()]
}

/// A filter that hands each of `nrs` to a supervisor as a seccomp user notification and
/// allows everything else (the session's own filter decides the rest). The caller
/// installs it with `SECCOMP_FILTER_FLAG_NEW_LISTENER`.
pub fn notifier(nrs: &[i64]) -> BpfProgram {
    let mut t = Table::new(Action::Allow);
    for nr in nrs {
        t.set(*nr, Rule::always(Action::Notify));
    }
    t.compile()
}

/// The calls observed for each kind (START `observe`), besides `exit_group`.
pub const OBSERVED_FILES: &[i64] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_creat,
    libc::SYS_openat,
    libc::SYS_openat2,
];
/// Execs.
pub const OBSERVED_EXEC: &[i64] = &[libc::SYS_execve, libc::SYS_execveat];
/// Network calls that name an address (sendto only when it passes one; sendmsg's address
/// is in memory the filter cannot read, so every sendmsg is handed over).
pub const OBSERVED_NET: &[i64] = &[libc::SYS_connect, libc::SYS_bind, libc::SYS_sendmsg];

/// [`notifier`] for `exit_group` (when `exits`) and what `observe` asks: a call that is
/// not asked for is never handed over, so it costs nothing. `sendmsg` on descriptor
/// `quiet` is never handed over (the one that carries the listener to its supervisor).
/// With `ptrace` (the init traces the tree for core dumps), the `ptrace` calls that make
/// a tracee are handed over too.
pub fn observer(exits: bool, observe: &shared::observe::Observe, quiet: Option<u64>, ptrace: bool) -> BpfProgram {
    let mut t = Table::new(Action::Allow);
    if exits {
        t.set(libc::SYS_exit_group, Rule::always(Action::Notify));
    }
    if ptrace {
        // The init traces the tree for core dumps: it lets go of a thread before the
        // tree's own debugger traces it (TRACEME, ATTACH, SEIZE; the rest pass).
        let asks = |req: u32| Case { all: vec![Check::low(0, Op::Eq(u64::from(req)))], then: Action::Notify };
        t.set(
            libc::SYS_ptrace,
            Rule {
                cases: vec![asks(libc::PTRACE_TRACEME), asks(libc::PTRACE_ATTACH), asks(libc::PTRACE_SEIZE)],
                otherwise: Action::Allow,
            },
        );
    }
    let kinds = [(observe.files, OBSERVED_FILES), (observe.exec, OBSERVED_EXEC), (observe.net, OBSERVED_NET)];
    for (_, nrs) in kinds.iter().filter(|(on, _)| *on) {
        for nr in *nrs {
            t.set(*nr, Rule::always(Action::Notify));
        }
    }
    if let (true, Some(fd)) = (observe.net, quiet) {
        t.set(
            libc::SYS_sendmsg,
            Rule {
                cases: vec![Case { all: vec![Check::low(0, Op::Eq(fd))], then: Action::Allow }],
                otherwise: Action::Notify,
            },
        );
    }
    if observe.net {
        // sendto(fd, buf, len, flags, dest_addr, addrlen): only with an address.
        t.set(
            libc::SYS_sendto,
            Rule {
                cases: vec![Case { all: vec![Check::full(4, Op::Ne(0))], then: Action::Notify }],
                otherwise: Action::Allow,
            },
        );
    }
    t.compile()
}

/// Installs filters on every thread of the process at once (`SECCOMP_FILTER_FLAG_TSYNC`).
pub fn install_all_threads(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter_all_threads(f).map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

/// Installs filters on the calling thread (needs `no_new_privs`, which every role has).
pub fn install(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
