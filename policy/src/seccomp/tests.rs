//! The filters are checked by running them: a classic-BPF interpreter evaluates a stack of
//! filters the way the kernel does (the most recently installed first; a strictly more
//! restrictive action replaces the verdict), for every syscall number, for the x32 and
//! i386 ABIs, and for the argument cases the rules filter.

use super::bpf::{AUDIT_ARCH, RET_ALLOW, RET_USER_NOTIF};
use super::*;
use seccompiler::sock_filter;

/// What a stack of filters decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    Errno(u32),
    Kill,
    Notify,
}

const ARCH_I386: u32 = 0x4000_0003;

fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let ins = &prog[pc];
        pc += 1;
        let code = u32::from(ins.code);
        match code {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                let k = ins.k as usize;
                a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
            }
            c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= ins.k,
            c if c == libc::BPF_JMP | libc::BPF_JA => pc += ins.k as usize,
            c if c & 0x07 == libc::BPF_JMP => {
                let taken = match c & 0xf0 {
                    x if x == libc::BPF_JEQ => a == ins.k,
                    x if x == libc::BPF_JGT => a > ins.k,
                    x if x == libc::BPF_JGE => a >= ins.k,
                    x if x == libc::BPF_JSET => a & ins.k != 0,
                    other => panic!("jump op {other:#x}"),
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
            c if c == libc::BPF_RET | libc::BPF_K => return ins.k,
            other => panic!("instruction {other:#x} not interpreted"),
        }
    }
}

/// The kernel's combination of a filter stack (`filters` in installation order).
fn decide(filters: &[BpfProgram], arch: u32, nr: u32, args: [u64; 6]) -> Verdict {
    let mut verdict = RET_ALLOW;
    for f in filters.iter().rev() {
        let r = run(f, arch, nr, args);
        if ((r & 0xffff_0000) as i32) < ((verdict & 0xffff_0000) as i32) {
            verdict = r;
        }
    }
    match verdict & 0xffff_0000 {
        RET_ALLOW => Verdict::Allow,
        RET_USER_NOTIF => Verdict::Notify,
        0x0005_0000 => Verdict::Errno(verdict & 0xffff),
        0x8000_0000 | 0 => Verdict::Kill,
        other => panic!("action {other:#x}"),
    }
}

fn call(filters: &[BpfProgram], nr: i64, args: [u64; 6]) -> Verdict {
    decide(filters, AUDIT_ARCH, nr as u32, args)
}

const NO_ARGS: [u64; 6] = [0; 6];
const ENOSYS: Verdict = Verdict::Errno(libc::ENOSYS as u32);
const EPERM: Verdict = Verdict::Errno(libc::EPERM as u32);
const EAFNOSUPPORT: Verdict = Verdict::Errno(libc::EAFNOSUPPORT as u32);

fn every_role() -> Vec<(&'static str, Vec<BpfProgram>)> {
    vec![
        ("frontend", frontend()),
        ("frontend loop", vec![frontend_loop()]),
        ("broker", broker()),
        ("spawner", spawner()),
        ("session", [spawner(), vec![notifier(&[libc::SYS_exit_group])], session()].concat()),
        ("notifier", vec![notifier(&[libc::SYS_exit_group])]),
    ]
}

#[test]
fn every_filter_of_every_role_kills_x32_and_foreign_architectures() {
    for (role, filters) in every_role() {
        for f in &filters {
            for nr in [libc::SYS_read, libc::SYS_unshare, libc::SYS_exit_group, libc::SYS_getpid] {
                let x32 = (nr as u32) | X32_SYSCALL_BIT;
                assert_eq!(decide(std::slice::from_ref(f), AUDIT_ARCH, x32, [0x1000_0000; 6]), Verdict::Kill, "{role}");
                assert_eq!(decide(std::slice::from_ref(f), ARCH_I386, nr as u32, NO_ARGS), Verdict::Kill, "{role}");
            }
        }
    }
}

#[test]
fn session_allows_exactly_its_list_and_refuses_the_rest_with_enosys() {
    let s = session();
    for (nr, why) in session::allowed() {
        assert!(!why.is_empty());
        let args = if *nr == libc::SYS_socket || *nr == libc::SYS_socketpair { [1, 1, 0, 0, 0, 0] } else { NO_ARGS };
        assert_eq!(call(&s, *nr, args), Verdict::Allow, "syscall {nr}");
    }
    for (nr, _) in session::DENIED {
        assert_eq!(call(&s, *nr, NO_ARGS), EPERM, "syscall {nr}");
    }
    for (nr, _) in session::ENOSYS {
        assert_eq!(call(&s, *nr, NO_ARGS), ENOSYS, "syscall {nr}");
    }
    // Every number the kernel may ever add, and those beyond the table: ENOSYS.
    let listed = |nr: i64| session::allowed().chain(session::DENIED).any(|(n, _)| *n == nr);
    for nr in (0..1024).filter(|n| !listed(*n)) {
        assert_eq!(call(&s, nr, NO_ARGS), ENOSYS, "unlisted syscall {nr}");
    }
    // No entry twice, and none both allowed and denied.
    let mut all: Vec<i64> = session::allowed().chain(session::DENIED).chain(session::ENOSYS).map(|(n, _)| *n).collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a syscall is listed twice");
}

#[test]
fn session_filters_arguments_where_docker_does() {
    let s = session();
    let sock = |family: i32, ty: i32, proto: i32| {
        call(&s, libc::SYS_socket, [family as u64, ty as u64, proto as u64, 0, 0, 0])
    };
    for (f, _) in session::SOCKET_FAMILIES.iter().filter(|(f, _)| *f != libc::AF_NETLINK) {
        assert_eq!(sock(*f, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0), Verdict::Allow);
    }
    assert_eq!(sock(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE), Verdict::Allow);
    for bad in [libc::AF_VSOCK, libc::AF_PACKET, libc::AF_ALG, libc::AF_BLUETOOTH, libc::AF_KEY, libc::AF_CAN, 45] {
        assert_eq!(sock(bad, libc::SOCK_STREAM, 0), EAFNOSUPPORT, "family {bad}");
    }
    for proto in [libc::NETLINK_AUDIT, libc::NETLINK_KOBJECT_UEVENT, libc::NETLINK_NETFILTER, libc::NETLINK_SOCK_DIAG] {
        assert_eq!(sock(libc::AF_NETLINK, libc::SOCK_RAW, proto), EAFNOSUPPORT, "netlink {proto}");
    }
    assert_eq!(call(&s, libc::SYS_socketpair, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]), Verdict::Allow);
    assert_eq!(call(&s, libc::SYS_socketpair, [libc::AF_VSOCK as u64, 1, 0, 0, 0, 0]), EAFNOSUPPORT);
    // clone: threads and forks yes, namespaces no.
    let thread = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as u64;
    assert_eq!(call(&s, libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), Verdict::Allow);
    assert_eq!(call(&s, libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), Verdict::Allow);
    for (flag, _) in session::NAMESPACE_FLAGS {
        assert_eq!(call(&s, libc::SYS_clone, [flag | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), EPERM, "{flag:#x}");
    }
    // personality: Docker's values only (no ADDR_NO_RANDOMIZE, no READ_IMPLIES_EXEC).
    for (p, _) in session::PERSONALITIES {
        assert_eq!(call(&s, libc::SYS_personality, [*p, 0, 0, 0, 0, 0]), Verdict::Allow);
    }
    for p in [0x0040000u64, 0x0400000, 0x0040008] {
        assert_eq!(call(&s, libc::SYS_personality, [p, 0, 0, 0, 0, 0]), EPERM, "{p:#x}");
    }
}

#[test]
fn session_is_at_least_as_strict_as_dockers_default_profile() {
    // What Docker's default profile refuses a container without added capabilities.
    let docker_refuses = [
        libc::SYS_bpf,
        libc::SYS_clone3,
        libc::SYS_fanotify_init,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fsopen,
        libc::SYS_fspick,
        libc::SYS_lookup_dcookie,
        libc::SYS_mount,
        libc::SYS_mount_setattr,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_perf_event_open,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_setdomainname,
        libc::SYS_sethostname,
        libc::SYS_setns,
        libc::SYS_syslog,
        libc::SYS_umount2,
        libc::SYS_unshare,
        libc::SYS_reboot,
        libc::SYS_chroot,
        libc::SYS_delete_module,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_acct,
        libc::SYS_kcmp,
        libc::SYS_pidfd_getfd,
        libc::SYS_process_madvise,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_vhangup,
        libc::SYS_get_mempolicy,
        libc::SYS_mbind,
        libc::SYS_set_mempolicy,
        libc::SYS_set_mempolicy_home_node,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_open_by_handle_at,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_pivot_root,
    ];
    let s = session();
    for nr in docker_refuses {
        assert_ne!(call(&s, nr, NO_ARGS), Verdict::Allow, "syscall {nr} is allowed, Docker refuses it");
    }
}

#[test]
fn the_spawner_refuses_only_what_sessions_are_refused_and_keeps_what_it_needs() {
    let sp = spawner();
    let s = session();
    for nr in 0..1024 {
        if call(&sp, nr, NO_ARGS) != Verdict::Allow {
            assert_ne!(call(&s, nr, NO_ARGS), Verdict::Allow, "the spawner's filter narrows sessions ({nr})");
        }
    }
    for (nr, _) in
        SPAWNER_KEEPS.iter().chain([&(libc::SYS_clone3, ""), &(libc::SYS_clone, ""), &(libc::SYS_capset, "")])
    {
        assert_eq!(call(&sp, *nr, NO_ARGS), Verdict::Allow, "the spawner needs {nr}");
    }
    for nr in [libc::SYS_bpf, libc::SYS_kexec_load, libc::SYS_init_module, libc::SYS_keyctl, libc::SYS_io_uring_setup] {
        assert_eq!(call(&sp, nr, NO_ARGS), EPERM);
    }
}

#[test]
fn the_frontend_loop_keeps_tcp_and_drops_what_only_mdns_needs() {
    let base = frontend();
    let with_loop = [base.clone(), vec![frontend_loop()]].concat();
    let sock =
        |f: &[BpfProgram], family: i32, ty: i32| call(f, libc::SYS_socket, [family as u64, ty as u64, 0, 0, 0, 0]);
    let stream = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    for family in [libc::AF_INET, libc::AF_INET6] {
        assert_eq!(sock(&with_loop, family, stream), Verdict::Allow);
        assert_eq!(sock(&base, family, libc::SOCK_DGRAM), Verdict::Allow, "the mDNS thread's UDP");
        assert_eq!(sock(&with_loop, family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC), EPERM);
        assert_eq!(sock(&with_loop, family, libc::SOCK_RAW), EPERM);
    }
    assert_eq!(sock(&base, libc::AF_NETLINK, libc::SOCK_RAW), Verdict::Allow);
    assert_eq!(sock(&with_loop, libc::AF_NETLINK, libc::SOCK_RAW), EPERM);
    assert_eq!(sock(&base, libc::AF_UNIX, stream), EPERM);
    let ioctl = |f: &[BpfProgram], req: u64| call(f, libc::SYS_ioctl, [3, req, 0, 0, 0, 0]);
    assert_eq!(ioctl(&with_loop, FRONTEND_IOCTLS[0]), Verdict::Allow);
    assert_eq!(ioctl(&base, MDNS_IOCTLS[0]), Verdict::Allow);
    assert_eq!(ioctl(&with_loop, MDNS_IOCTLS[0]), EPERM);
    assert_eq!(call(&with_loop, libc::SYS_bind, NO_ARGS), Verdict::Allow, "debug ports");
    assert_eq!(call(&with_loop, libc::SYS_execve, NO_ARGS), Verdict::Kill);
    // Narrowing itself: only adding a filter to the calling thread (no TSYNC, no listener).
    let seccomp = |op: u64, flags: u64| call(&base, libc::SYS_seccomp, [op, flags, 0, 0, 0, 0]);
    assert_eq!(seccomp(u64::from(libc::SECCOMP_SET_MODE_FILTER), 0), Verdict::Allow);
    assert_eq!(seccomp(u64::from(libc::SECCOMP_SET_MODE_FILTER), 1), EPERM);
    assert_eq!(seccomp(u64::from(libc::SECCOMP_SET_MODE_FILTER), 8), EPERM);
    assert_eq!(call(&base, libc::SYS_prctl, [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0]), Verdict::Allow);
    assert_eq!(call(&base, libc::SYS_prctl, [libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0, 0]), EPERM);
}

#[test]
fn halves_filters_build_and_never_allow_what_they_kill() {
    assert_eq!(frontend().len(), 1);
    assert_eq!(broker().len(), 1);
    for (allowed, fatal) in [(FRONTEND_ALLOWED, FRONTEND_FATAL), (BROKER_ALLOWED, BROKER_FATAL)] {
        for (nr, _) in fatal {
            assert!(!allowed.iter().chain(RUNTIME).any(|(a, _)| a == nr), "syscall {nr} both allowed and fatal");
        }
        for (nr, _) in allowed {
            assert!(!RUNTIME.iter().any(|(a, _)| a == nr), "syscall {nr} listed in a role and in RUNTIME");
        }
    }
    let b = broker();
    assert_eq!(call(&b, libc::SYS_fork, NO_ARGS), Verdict::Kill);
    assert_eq!(call(&b, libc::SYS_read, NO_ARGS), Verdict::Allow);
    assert_eq!(call(&b, libc::SYS_getdents64, NO_ARGS), EPERM);
}

/// A small deterministic generator (xorshift) for the randomized comparison.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn value(&mut self) -> u64 {
        // Values that collide often, in both halves of the word.
        match self.below(4) {
            0 => self.below(4),
            1 => self.below(4) << 32 | self.below(4),
            2 => u64::MAX - self.below(3),
            _ => self.next(),
        }
    }
    fn action(&mut self) -> Action {
        match self.below(4) {
            0 => Action::Allow,
            1 => Action::Errno(1 + self.below(100) as i32),
            2 => Action::KillProcess,
            _ => Action::Notify,
        }
    }
}

#[test]
fn compiled_programs_decide_exactly_what_their_tables_say() {
    // Random tables (up to 600 rules, up to 5 cases of up to 4 checks), compiled, then run
    // by the interpreter against random calls: the program and the table must agree.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let mut t = Table::new(rng.action());
        let big = round % 10 == 0;
        let rules = rng.below(if big { 600 } else { 40 });
        for _ in 0..rules {
            let nr = rng.below(700) as i64;
            let cases = (0..rng.below(if big { 2 } else { 6 }))
                .map(|_| Case {
                    all: (0..rng.below(5))
                        .map(|_| {
                            let arg = rng.below(6) as u8;
                            let op = match rng.below(3) {
                                0 => Op::Eq(rng.value()),
                                1 => Op::Ne(rng.value()),
                                _ => Op::MaskedEq { mask: rng.value(), value: rng.value() },
                            };
                            if rng.below(2) == 0 {
                                Check::low(arg, op)
                            } else {
                                Check::full(arg, op)
                            }
                        })
                        .collect(),
                    then: rng.action(),
                })
                .collect();
            t.set(nr, Rule { cases, otherwise: rng.action() });
        }
        let prog = t.compile();
        for _ in 0..400 {
            let nr = if rng.below(2) == 0 {
                *t.rules.keys().nth(rng.below(t.rules.len().max(1) as u64) as usize).unwrap_or(&0)
            } else {
                rng.below(800) as u32
            };
            let args = [rng.value(), rng.value(), rng.value(), rng.value(), rng.value(), rng.value()];
            let want = match t.decide(nr, &args) {
                Action::Allow => Verdict::Allow,
                Action::Errno(e) => Verdict::Errno(e as u32),
                Action::KillProcess => Verdict::Kill,
                Action::Notify => Verdict::Notify,
            };
            let got = decide(std::slice::from_ref(&prog), AUDIT_ARCH, nr, args);
            assert_eq!(got, want, "round {round}, syscall {nr}, args {args:x?}");
        }
    }
}

#[test]
fn every_path_to_a_syscall_is_short() {
    // The kernel emulates a filter for every syscall number when it is attached: with a
    // balanced search that costs a few instructions per number.
    let s = session_table().compile();
    assert!(s.len() < 1500, "{}", s.len());
    let steps = |nr: u32| {
        let (mut pc, mut n, mut a) = (0usize, 0, 0u32);
        loop {
            let ins = &s[pc];
            n += 1;
            pc += 1;
            let code = u32::from(ins.code);
            if code == libc::BPF_RET | libc::BPF_K {
                return n;
            }
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                if ins.k >= 16 {
                    // An argument: the kernel's emulation stops here (not a constant action).
                    return n;
                }
                a = if ins.k == 4 { AUDIT_ARCH } else { nr };
            } else if code == libc::BPF_JMP | libc::BPF_JA {
                pc += ins.k as usize;
            } else {
                let taken = match code & 0xf0 {
                    x if x == libc::BPF_JEQ => a == ins.k,
                    x if x == libc::BPF_JGE => a >= ins.k,
                    x if x == libc::BPF_JSET => a & ins.k != 0,
                    _ => a > ins.k,
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
        }
    };
    let worst = (0..460).map(steps).max().unwrap();
    assert!(worst <= 24, "the longest path is {worst} instructions");
}

#[test]
fn the_notifier_notifies_only_what_it_was_given() {
    let calls = [libc::SYS_exit_group, libc::SYS_openat, libc::SYS_connect];
    let f = vec![notifier(&calls)];
    for nr in 0..512 {
        let want = if calls.contains(&nr) { Verdict::Notify } else { Verdict::Allow };
        assert_eq!(call(&f, nr, NO_ARGS), want, "syscall {nr}");
    }
    // Under the session's filters a refused call never reaches the supervisor.
    let stack = [vec![notifier(&calls)], session()].concat();
    assert_eq!(call(&stack, libc::SYS_bpf, NO_ARGS), EPERM);
    assert_eq!(call(&stack, libc::SYS_openat, NO_ARGS), Verdict::Notify);
}

#[test]
fn the_observer_notifies_only_what_is_asked() {
    use shared::observe::Observe;
    let none = observer(false, &Observe::default(), None, false);
    let exits = observer(true, &Observe::default(), None, false);
    let files = observer(false, &Observe { files: true, ..Observe::default() }, None, false);
    let net = observer(false, &Observe { net: true, ..Observe::default() }, Some(1023), false);
    let traced = observer(false, &Observe::default(), None, true);
    for nr in 0..512 {
        assert_eq!(call(std::slice::from_ref(&none), nr, NO_ARGS), Verdict::Allow, "unobserved syscall {nr}");
        let want = if nr == libc::SYS_exit_group { Verdict::Notify } else { Verdict::Allow };
        assert_eq!(call(std::slice::from_ref(&exits), nr, NO_ARGS), want, "exits: syscall {nr}");
        let want = if OBSERVED_FILES.contains(&nr) { Verdict::Notify } else { Verdict::Allow };
        assert_eq!(call(std::slice::from_ref(&files), nr, NO_ARGS), want, "files: syscall {nr}");
    }
    assert_eq!(call(std::slice::from_ref(&files), libc::SYS_execve, NO_ARGS), Verdict::Allow);
    assert_eq!(call(std::slice::from_ref(&net), libc::SYS_connect, NO_ARGS), Verdict::Notify);
    // sendto without an address (a connected socket) is not handed over; with one it is.
    assert_eq!(call(std::slice::from_ref(&net), libc::SYS_sendto, NO_ARGS), Verdict::Allow);
    assert_eq!(call(std::slice::from_ref(&net), libc::SYS_sendto, [3, 0x1000, 5, 0, 0x2000, 16]), Verdict::Notify);
    // The descriptor that carries the listener is left out, no other.
    assert_eq!(call(std::slice::from_ref(&net), libc::SYS_sendmsg, [1023, 0, 0, 0, 0, 0]), Verdict::Allow);
    assert_eq!(call(std::slice::from_ref(&net), libc::SYS_sendmsg, [3, 0, 0, 0, 0, 0]), Verdict::Notify);
    // A traced tree (core dumps) hands over the ptrace calls that make a tracee, only.
    let ptrace = |req: u32| call(std::slice::from_ref(&traced), libc::SYS_ptrace, [u64::from(req), 7, 0, 0, 0, 0]);
    for req in [libc::PTRACE_TRACEME, libc::PTRACE_ATTACH, libc::PTRACE_SEIZE] {
        assert_eq!(ptrace(req), Verdict::Notify, "ptrace request {req}");
    }
    for req in [libc::PTRACE_CONT, libc::PTRACE_PEEKDATA, libc::PTRACE_DETACH, libc::PTRACE_INTERRUPT] {
        assert_eq!(ptrace(req), Verdict::Allow, "ptrace request {req}");
    }
    assert_eq!(call(std::slice::from_ref(&none), libc::SYS_ptrace, NO_ARGS), Verdict::Allow);
}
