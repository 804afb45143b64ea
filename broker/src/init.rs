//! The session's init: PID 1 of the session's PID namespace. It is a forked copy of the
//! broker (never an exec), so it runs our code, not the user's. It
//!
//! 1. keeps only the descriptors it needs, takes the session's identity and rlimits;
//! 2. forks the program (which becomes ns pid 2) and `fexecve`s the sealed memfd;
//! 3. tells the broker "running" (with a pidfd of the program) or why exec failed;
//! 4. forwards SIGTERM to every process of the session, reaps everything (orphans
//!    reparent to it), and on SIGUSR1 kills every process of the session;
//! 5. when the program has exited: kills what is left, reaps it, reports the program's
//!    status and the tree's resource use, and exits. Its exit tears the namespace down.
//!
//! Signals sent to PID 1 from inside the namespace are dropped unless PID 1 handles them;
//! init blocks them and takes them with `sigwait`, so the program cannot kill it.

use crate::sys;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use shared::{ExitStatus, Message, Tube, Usage, WireError};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

/// Messages from a session's init to the broker.
#[derive(Debug)]
pub enum InitMsg {
    /// The program was exec'd.
    Running {
        /// Its pid inside the session's namespace.
        ns_pid: u32,
        /// A pidfd for it.
        pidfd: OwnedFd,
    },
    /// Setup or exec failed; the run never started.
    Failed {
        /// What failed, for the user.
        message: String,
    },
    /// The program exited and everything was reaped.
    Exited {
        /// The program's status.
        status: ExitStatus,
        /// The whole tree's resource use.
        usage: Usage,
    },
}

/// Encodable form of [`InitMsg`].
#[derive(bincode::Encode, bincode::Decode, Debug)]
pub enum InitWire {
    /// See [`InitMsg::Running`].
    Running {
        /// Pid in the session namespace.
        ns_pid: u32,
    },
    /// See [`InitMsg::Failed`].
    Failed {
        /// Reason.
        message: String,
    },
    /// See [`InitMsg::Exited`].
    Exited {
        /// Status.
        status: ExitStatus,
        /// Usage.
        usage: Usage,
    },
}

impl Message for InitMsg {
    type Wire = InitWire;

    fn into_wire(self) -> (InitWire, Vec<OwnedFd>) {
        match self {
            InitMsg::Running { ns_pid, pidfd } => (InitWire::Running { ns_pid }, vec![pidfd]),
            InitMsg::Failed { message } => (InitWire::Failed { message }, vec![]),
            InitMsg::Exited { status, usage } => (InitWire::Exited { status, usage }, vec![]),
        }
    }

    fn from_wire(wire: InitWire, mut fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        let expected = usize::from(matches!(wire, InitWire::Running { .. }));
        if fds.len() != expected {
            return Err(WireError::FdCount { kind: "init", expected, got: fds.len() });
        }
        Ok(match wire {
            InitWire::Running { ns_pid } => InitMsg::Running { ns_pid, pidfd: fds.remove(0) },
            InitWire::Failed { message } => InitMsg::Failed { message },
            InitWire::Exited { status, usage } => InitMsg::Exited { status, usage },
        })
    }
}

/// What the program's process execs.
#[derive(Debug)]
pub enum Program {
    /// A sealed memfd (`fexecve`).
    Memfd(OwnedFd),
    /// A path inside the session's view (a bundle's executable under `/bundle`).
    Path(CString),
}

/// Everything the init needs, prepared by the broker before the fork.
pub struct InitPlan {
    /// The init's end of its control socket to the broker.
    pub ctl: OwnedFd,
    /// What to exec.
    pub program: Program,
    /// The session's bundle directory in the store, if it runs a bundle.
    pub bundle: Option<String>,
    /// Read end of an empty pipe whose write end is closed: stdin.
    pub stdin: OwnedFd,
    /// Write end of the stdout pipe.
    pub stdout: OwnedFd,
    /// Write end of the stderr pipe.
    pub stderr: OwnedFd,
    /// argv and environment.
    pub argv: Vec<CString>,
    /// Environment.
    pub env: Vec<CString>,
    /// Uid (and gid) inside the broker's user namespace; `None` in single-uid mode, where
    /// the session keeps uid 0 of that namespace but loses every capability.
    pub ns_uid: Option<u32>,
    /// Rlimits to apply.
    pub limits: Vec<policy::rlimits::Limit>,
    /// The session's own mounts.
    pub mounts: Vec<policy::mounts::SessionMount>,
    /// Seccomp filters installed in the program's process just before exec.
    pub seccomp: Vec<seccompiler::BpfProgram>,
    /// `cgroup.procs` of the session's cgroups, to join first thing.
    pub cgroup_procs: Vec<OwnedFd>,
    /// Leave the program stopped at its entry point (START --debug).
    pub debug: bool,
}

/// What the program's process needs to exec.
struct Image {
    program: Program,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    argv: Vec<CString>,
    env: Vec<CString>,
    seccomp: Vec<seccompiler::BpfProgram>,
    debug: bool,
}

/// Signals the init takes with `sigwait`.
fn init_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2] {
        s.add(sig);
    }
    s
}

/// Runs the init. Never returns.
pub fn run(plan: InitPlan) -> ! {
    // The spawner ignores SIGCHLD; we reap our own tree, so restore the default. Then block
    // our signals: a STOP may arrive at any moment after clone3.
    sys::set_sigchld(true);
    let _ = init_signals().thread_block();
    let mut keep = vec![plan.ctl.as_raw_fd(), plan.stdin.as_raw_fd(), plan.stdout.as_raw_fd(), plan.stderr.as_raw_fd()];
    keep.extend(plan.cgroup_procs.iter().map(|f| f.as_raw_fd()));
    if let Program::Memfd(fd) = &plan.program {
        keep.push(fd.as_raw_fd());
    }
    sys::close_all_except(&keep);
    let InitPlan {
        ctl,
        program,
        bundle,
        stdin,
        stdout,
        stderr,
        argv,
        env,
        ns_uid,
        limits,
        mounts,
        seccomp,
        cgroup_procs,
        debug,
    } = plan;
    let image = Image { program, stdin, stdout, stderr, argv, env, seccomp, debug };
    let mut ctl = match Tube::new(ctl) {
        Ok(t) => t,
        Err(_) => sys::exit_now(120),
    };
    let fail = |ctl: &mut Tube, message: String| -> ! {
        let _ = ctl.send(0, InitMsg::Failed { message });
        sys::exit_now(121)
    };
    // Join the session's cgroups before anything else is allocated.
    if let Err(e) = crate::cgroup::join(cgroup_procs) {
        fail(&mut ctl, e);
    }
    // If the broker dies, so do we (and with us the namespace).
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        fail(&mut ctl, "cannot set the parent-death signal".into());
    }
    let _ = nix::unistd::sethostname("debuglantern");
    if let Err(e) = crate::jail::session_mounts(&mounts, bundle.as_deref()) {
        fail(&mut ctl, e);
    }
    if let Err(e) = take_identity(ns_uid) {
        fail(&mut ctl, format!("cannot drop to the session identity: {e}"));
    }
    if let Err(e) = policy::rlimits::apply(&limits) {
        fail(&mut ctl, format!("cannot apply limits: {e}"));
    }

    let (err_r, err_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(&mut ctl, format!("pipe: {e}")),
    };
    let (child, pidfd) = match sys::fork_into(0) {
        Err(e) => fail(&mut ctl, format!("cannot fork the program: {e}")),
        Ok(sys::Forked::Child) => exec_program(&image, err_w),
        Ok(sys::Forked::Parent { pid, pidfd }) => (pid, pidfd),
    };
    drop(err_w);
    drop(image);
    let mut report = [0u8; 5];
    if let Ok(5) = nix::unistd::read(err_r.as_raw_fd(), &mut report) {
        let e = nix::errno::Errno::from_raw(i32::from_ne_bytes([report[1], report[2], report[3], report[4]]));
        let _ = waitpid(child, None);
        let what = match ExecStage::from(report[0]) {
            ExecStage::Stdio => format!("cannot set up the program's stdio: {e}"),
            ExecStage::Seccomp => format!("cannot install the session's seccomp filter: {e}"),
            ExecStage::Exec => {
                let hint = match e {
                    nix::errno::Errno::ENOENT => " (its ELF interpreter is missing on the rig)",
                    nix::errno::Errno::EACCES => " (not executable)",
                    _ => "",
                };
                format!("cannot execute the program: {e}{hint}")
            }
        };
        fail(&mut ctl, what);
    }
    drop(err_r);
    if debug {
        // The program traced itself before exec: it is in its exec stop now, at the entry
        // point of the new image. Hand it over stopped (group stop), untraced, to whoever
        // attaches; we stay its parent, so its exit status is still ours to report.
        match waitpid(child, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => {
                if let Err(e) = nix::sys::ptrace::detach(child, Some(Signal::SIGSTOP)) {
                    let _ = kill(child, Signal::SIGKILL);
                    fail(&mut ctl, format!("cannot hold the program at its entry point: {e}"));
                }
            }
            other => {
                let _ = kill(child, Signal::SIGKILL);
                fail(&mut ctl, format!("the program did not stop at its entry point ({other:?})"));
            }
        }
    }
    if ctl.send(0, InitMsg::Running { ns_pid: child.as_raw() as u32, pidfd }).is_err() {
        sys::exit_now(122);
    }
    supervise(child, &mut ctl)
}

/// Becomes the session's identity. Order matters: the bounding set and securebits need
/// `CAP_SETPCAP`, the uid change needs `CAP_SETUID`, and the uid change itself clears the
/// remaining capabilities.
fn take_identity(ns_uid: Option<u32>) -> Result<(), String> {
    sys::lock_out_capabilities().map_err(|e| format!("capability bounding set: {e}"))?;
    if let Some(uid) = ns_uid {
        let (u, g) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(uid));
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setresgid(g, g, g).map_err(|e| format!("setresgid: {e}"))?;
        nix::unistd::setresuid(u, u, u).map_err(|e| format!("setresuid: {e}"))?;
    }
    sys::clear_capabilities().map_err(|e| format!("capabilities: {e}"))
}

/// Which step of [`exec_program`] failed (first byte of its report).
enum ExecStage {
    Stdio,
    Seccomp,
    Exec,
}

impl From<u8> for ExecStage {
    fn from(b: u8) -> Self {
        match b {
            0 => ExecStage::Stdio,
            1 => ExecStage::Seccomp,
            _ => ExecStage::Exec,
        }
    }
}

/// In the program's process (ns pid 2): set up stdio, install the seccomp filter (last,
/// so that nothing of ours runs under it but exec) and exec. Never returns.
fn exec_program(plan: &Image, err_w: OwnedFd) -> ! {
    sys::reset_signals();
    let _ = nix::unistd::setsid();
    let report = |stage: u8, e: nix::errno::Errno| -> ! {
        let mut b = [stage, 0, 0, 0, 0];
        b[1..].copy_from_slice(&(e as i32).to_ne_bytes());
        let _ = nix::unistd::write(&err_w, &b);
        sys::exit_now(127)
    };
    for (from, to) in [(&plan.stdin, 0), (&plan.stdout, 1), (&plan.stderr, 2)] {
        if let Err(e) = nix::unistd::dup2(from.as_raw_fd(), to) {
            report(0, e);
        }
    }
    let mut keep = vec![err_w.as_raw_fd()];
    if let Program::Memfd(fd) = &plan.program {
        keep.push(fd.as_raw_fd());
    }
    sys::close_all_except(&keep);
    if plan.debug && nix::sys::ptrace::traceme().is_err() {
        report(1, nix::errno::Errno::last());
    }
    if policy::seccomp::install(&plan.seccomp).is_err() {
        report(1, nix::errno::Errno::last());
    }
    let Err(e) = match &plan.program {
        Program::Memfd(fd) => nix::unistd::fexecve(fd.as_raw_fd(), &plan.argv, &plan.env),
        Program::Path(path) => nix::unistd::execve(path, &plan.argv, &plan.env),
    };
    report(2, e)
}

/// Waits for signals until the program has exited, then cleans the namespace and reports.
fn supervise(program: Pid, ctl: &mut Tube) -> ! {
    let signals = init_signals();
    let mut status = None;
    loop {
        // Reap everything that is ready; remember the program's status.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == program => status = Some(ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == program => {
                    status = Some(ExitStatus::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Some(status) = status {
            // The program is gone: nothing else of the session may outlive it. Whatever is
            // left gets a moment to end by itself first (an attached gdbserver reports the
            // exit to gdb, then leaves), then everything is killed.
            let grace = std::time::Instant::now() + std::time::Duration::from_millis(500);
            while kill(Pid::from_raw(-1), None).is_ok() && std::time::Instant::now() < grace {
                while let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
                    waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG))
                {}
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            while waitpid(Pid::from_raw(-1), None).is_ok() {}
            let (user_us, sys_us, max_rss_kib) = sys::children_usage();
            // Pids of a fresh namespace count up from 1 (us): the last one handed out says
            // how many processes the run created.
            let processes = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(0, |last| last.saturating_sub(1));
            let usage = Usage { user_us, sys_us, max_rss_kib, processes };
            let _ = ctl.send(0, InitMsg::Exited { status, usage });
            sys::exit_now(0);
        }
        match signals.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) => {
                let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            }
            Ok(Signal::SIGUSR1) => {
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            }
            Ok(Signal::SIGUSR2) => {
                // The debugger went away: a program it never resumed must not stay stopped.
                let _ = kill(program, Signal::SIGCONT);
            }
            _ => {}
        }
    }
}

/// In a session's namespaces, still root of the broker's user namespace: become the
/// session's identity and exec gdbserver attached to `target`, its stdio on `sock`, its
/// stderr to /dev/null. Never returns.
pub fn exec_gdbserver(sock: OwnedFd, ns_uid: Option<u32>, target: u32, seccomp: &[seccompiler::BpfProgram]) -> ! {
    sys::reset_signals();
    let _ = nix::unistd::setsid();
    let null = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty());
    let placed = nix::unistd::dup2(sock.as_raw_fd(), 0).and_then(|_| nix::unistd::dup2(sock.as_raw_fd(), 1));
    if placed.is_err() {
        sys::exit_now(126);
    }
    if let Ok(fd) = null {
        let _ = nix::unistd::dup2(fd, 2);
    }
    sys::close_all_except(&[]);
    if take_identity(ns_uid).is_err() || std::env::set_current_dir("/").is_err() {
        sys::exit_now(126);
    }
    if policy::seccomp::install(seccomp).is_err() {
        sys::exit_now(126);
    }
    let target = CString::new(target.to_string()).expect("digits");
    let argv = [c"gdbserver".to_owned(), c"--once".to_owned(), c"--attach".to_owned(), c"-".to_owned(), target];
    let path = CString::new(crate::spawner::GDBSERVER).expect("no NUL");
    let env: [CString; 0] = [];
    let _ = nix::unistd::execve(&path, &argv, &env);
    sys::exit_now(127)
}
