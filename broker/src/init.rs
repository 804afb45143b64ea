//! The session's init: PID 1 of the session's PID namespace. It is a forked copy of the
//! broker (never an exec), so it runs our code, not the user's. It
//!
//! 1. keeps only the descriptors it needs, brings `lo` up, takes the session's identity
//!    and rlimits, and opens the program's terminal when it runs on one;
//! 2. forks the program (which becomes ns pid 2) and `fexecve`s the sealed memfd — or,
//!    for START --debug, copies the program to a file of its own (`/bundle/<name>`) and
//!    forks gdbserver instead (ns pid 2), which launches the program held at its entry;
//! 3. tells the broker "running" (with a pidfd of the program and the terminal's master,
//!    or gdbserver's pidfd and remote-protocol socket) or why exec failed;
//! 4. forwards SIGTERM to every process of the session, reaps everything (orphans
//!    reparent to it), on SIGUSR1 kills every process of the session, and passes the
//!    broker's signals (an attached client's Ctrl-C) to the program's process group;
//! 5. when the program has exited (and a gdbserver that launched it is gone): kills what
//!    is left, reaps it, reports the program's status and the tree's resource use, and
//!    exits. Its exit tears the namespace down.
//!
//! Signals sent to PID 1 from inside the namespace are dropped unless PID 1 handles them;
//! init blocks them and takes them from a signalfd, so the program cannot kill it.
//!
//! The program's process installs, just before exec, a seccomp filter that hands every
//! `exit_group` of the tree to the init (seccomp user notification; the listener comes
//! over a socketpair). The init notes the process (pid, parent, name, start, status) and
//! lets the exit proceed: the receipt lists every process that ended by itself.

use crate::messages::{InitCall, InitMsg};
use crate::sys;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use shared::{ExitStatus, ProcSpan, Tube, Usage};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

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
    /// The session's directory name (its bundle in the store, its kept `/tmp`).
    pub dir: String,
    /// It runs a bundle.
    pub bundle: bool,
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
    /// Launch the program under gdbserver, stopped at its entry point (START --debug).
    pub debug: bool,
    /// Hand every exit_group of the tree to the init, for the receipt's process list.
    pub list_processes: bool,
    /// What else the tree's calls the init records (START `observe`).
    pub observe: shared::observe::Observe,
    /// Run the program on a terminal of this size.
    pub tty: Option<shared::Winsize>,
    /// Keep a core dump (at most this many bytes) of a process of the tree that dies of a
    /// core-dumping signal: the tree is traced (0: not).
    pub core_bytes: u64,
}

/// What the program's process needs to exec (also an exec'd process's, `crate::exec`).
pub(crate) struct Image {
    pub(crate) program: Program,
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    pub(crate) argv: Vec<CString>,
    pub(crate) env: Vec<CString>,
    pub(crate) seccomp: Vec<seccompiler::BpfProgram>,
    /// Exec gdbserver, which launches the program (START --debug).
    pub(crate) launcher: Option<Launcher>,
    pub(crate) list_processes: bool,
    pub(crate) observe: shared::observe::Observe,
    /// Where the program's process sends the exit listener.
    pub(crate) notes: OwnedFd,
    /// The master of its terminal (its stdio then is the slave).
    pub(crate) terminal: Option<OwnedFd>,
    /// The init traces it (core dumps): it waits to be traced before exec.
    pub(crate) traced: bool,
}

/// What the process that execs gdbserver (START --debug) needs.
pub(crate) struct Launcher {
    /// gdbserver's stdio: the remote protocol.
    sock: OwnedFd,
    /// gdbserver's stderr: its messages, to the init.
    log: OwnedFd,
    argv: Vec<CString>,
    env: Vec<CString>,
}

/// A gdbserver the init started: it launched the program, which is its child, not ours.
struct Launch {
    gdbserver: Pid,
    /// gdbserver's messages (non-blocking), parsed for the pid of each program it starts.
    log: Option<OwnedFd>,
    buf: Vec<u8>,
}

/// How long gdbserver gets to launch the program.
const LAUNCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Signals the init takes (from a signalfd).
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
        dir,
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
        list_processes,
        observe,
        tty,
        core_bytes,
    } = plan;
    let (notes_r, notes) = match nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    ) {
        Ok(p) => p,
        Err(_) => sys::exit_now(123),
    };
    let mut image = Image {
        program,
        stdin,
        stdout,
        stderr,
        argv,
        env,
        seccomp,
        launcher: None,
        list_processes,
        observe,
        notes,
        terminal: None,
        traced: core_bytes > 0 && !debug,
    };
    let mut ctl = match Tube::new(ctl) {
        Ok(t) => t,
        Err(_) => sys::exit_now(120),
    };
    let fail = |ctl: &mut Tube, message: String| -> ! {
        let _ = ctl.send(0, InitMsg::Failed { message });
        sys::exit_now(121)
    };
    // Join the session's cgroups before anything else is allocated, then make them the
    // root of a cgroup namespace of its own: /proc/self/cgroup then reads "/" and tells
    // nothing of the host's layout, the daemon's pid or the uid range.
    if let Err(e) = crate::cgroup::join(cgroup_procs) {
        fail(&mut ctl, shared::chain(&e));
    }
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP) {
        fail(&mut ctl, format!("cannot enter a cgroup namespace of its own: {e}"));
    }
    // If the broker dies, so do we (and with us the namespace).
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        fail(&mut ctl, "cannot set the parent-death signal".into());
    }
    let _ = nix::unistd::sethostname("debuglantern");
    if let Err(e) = sys::loopback_up() {
        fail(&mut ctl, format!("cannot bring the session's loopback interface up: {e}"));
    }
    if let Err(e) = crate::jail::session_mounts(&mounts, &dir, bundle) {
        fail(&mut ctl, shared::chain(&e));
    }
    if debug {
        if tty.is_some() {
            fail(&mut ctl, "START --debug runs the program without a terminal".into());
        }
        if !std::path::Path::new(crate::gdbserver::GDBSERVER).exists() {
            fail(
                &mut ctl,
                format!(
                    "gdbserver is not installed on the rig ({}); install it (apt-get install gdbserver)",
                    crate::gdbserver::GDBSERVER
                ),
            );
        }
        // gdbserver launches the program from a real path that the debugger can read back.
        if let Program::Memfd(fd) = &image.program {
            let argv0 = image.argv.first().map_or(&b""[..], |a| a.as_bytes());
            match crate::jail::stage_program(fd, argv0) {
                Ok(path) => image.program = Program::Path(path),
                Err(e) => fail(&mut ctl, shared::chain(&e)),
            }
        }
    }
    if let Err(e) = sys::take_identity(ns_uid) {
        fail(&mut ctl, format!("cannot drop to the session identity: {}", shared::chain(&e)));
    }
    if let Err(e) = policy::rlimits::apply(&limits) {
        fail(&mut ctl, format!("cannot apply limits: {e}"));
    }
    // Opened as the session's uid: the slave is its own.
    if let Some(ws) = tty {
        match sys::open_terminal(ws.rows, ws.cols) {
            Ok(master) => image.terminal = Some(master),
            Err(e) => fail(&mut ctl, format!("cannot open a terminal in the session: {e}")),
        }
    }

    let (err_r, err_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(&mut ctl, format!("pipe: {e}")),
    };
    // START --debug: gdbserver's socket (our end goes to the frontend) and its messages.
    let mut launched = None;
    if let (true, Program::Path(path)) = (debug, &image.program) {
        let (ours, theirs) = match nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(p) => p,
            Err(e) => fail(&mut ctl, format!("socketpair: {e}")),
        };
        let (log_r, log_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK) {
            Ok(p) => p,
            Err(e) => fail(&mut ctl, format!("pipe: {e}")),
        };
        let args = image.argv.get(1..).unwrap_or_default();
        let (argv, env) = crate::gdbserver::launch_command(path, args, &image.env);
        image.launcher = Some(Launcher { sock: theirs, log: log_w, argv, env });
        launched = Some((ours, log_r));
    }
    let (child, pidfd) = match sys::fork_into(0) {
        Err(e) => fail(&mut ctl, format!("cannot fork the program: {e}")),
        Ok(sys::Forked::Child) => exec_program(&image, err_w),
        Ok(sys::Forked::Parent { pid, pidfd }) => (pid, pidfd),
    };
    drop(err_w);
    let terminal = image.terminal.take();
    // The first exec of the forked process is ours (the program, or gdbserver): it cannot
    // be read back (the process is not dumpable until it has exec'd), so it is told here.
    let first_exec = {
        let (path, argv) = match (&image.launcher, &image.program) {
            (Some(l), _) => (crate::gdbserver::GDBSERVER.to_string(), &l.argv),
            (None, Program::Path(p)) => (p.to_string_lossy().into_owned(), &image.argv),
            (None, Program::Memfd(fd)) => (
                std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .map(|p| p.to_string_lossy().trim_end_matches(" (deleted)").to_string())
                    .unwrap_or_else(|_| "memfd".into()),
                &image.argv,
            ),
        };
        let argv = argv.iter().take(shared::observe::MAX_ARGS).map(|a| a.to_string_lossy().into_owned()).collect();
        (child.as_raw() as u32, path, argv)
    };
    let traced = image.traced;
    drop(image);
    let _ = nix::fcntl::fcntl(notes_r.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
    // The program's process sends its listener before exec (nothing if the kernel refused
    // one: the run then has no process list or observation, and nothing else changes).
    // Its own exec may be observed: the listener is served while the exec is awaited. A
    // traced process waits, after that message, until the init has seized it.
    let mut tree = Tree::new(None, list_processes, observe);
    tree.first_exec = Some(first_exec);
    if traced {
        tree.tracer = Some(crate::core::Tracer::new(core_bytes));
        tree.seize = Some(child);
    }
    if let Some(what) = await_exec(&err_r, &notes_r, &mut tree) {
        let _ = waitpid(child, None);
        fail(&mut ctl, what);
    }
    drop(err_r);
    tree.take_listener(&notes_r);
    drop(notes_r);
    let (program, pidfd, debugger, launch) = match launched {
        None => (child, pidfd, None, None),
        Some((sock, log)) => {
            // `child` is gdbserver; the program is the child it reports launching.
            let mut launch = Launch { gdbserver: child, log: Some(log), buf: Vec::new() };
            let program = match launch.wait_created(&mut tree) {
                Ok(pid) => pid,
                Err(why) => {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    fail(&mut ctl, format!("gdbserver could not launch the program: {why}"));
                }
            };
            let program_pidfd = match sys::pidfd_open(program.as_raw()) {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = kill(child, Signal::SIGKILL);
                    fail(&mut ctl, format!("pidfd of the program: {e}"));
                }
            };
            tree.watch(program);
            (program, program_pidfd, Some(crate::messages::Launched { pidfd, sock }), Some(launch))
        }
    };
    let running = InitMsg::Running { ns_pid: program.as_raw() as u32, pidfd, tty: terminal, debugger };
    if ctl.send(0, running).is_err() {
        sys::exit_now(122);
    }
    supervise(program, &mut ctl, tree, launch)
}

impl Launch {
    /// Reads gdbserver's messages until it says which pid the program has, serving the
    /// exit listener meanwhile (a process of the tree blocked in `exit_group` waits for us).
    fn wait_created(&mut self, tree: &mut Tree) -> Result<Pid, String> {
        use std::os::fd::AsFd;
        let deadline = std::time::Instant::now() + LAUNCH_TIMEOUT;
        loop {
            if let Some(pid) = self.read() {
                return Ok(pid);
            }
            if self.log.is_none() {
                let said = String::from_utf8_lossy(&self.buf);
                let said = said.trim();
                return Err(if said.is_empty() { "it exited".into() } else { said.chars().take(1000).collect() });
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(format!("it did not report the program within {}s", LAUNCH_TIMEOUT.as_secs()));
            }
            let Some(log) = &self.log else { continue };
            let mut fds = vec![nix::poll::PollFd::new(log.as_fd(), nix::poll::PollFlags::POLLIN)];
            if let Some(l) = &tree.listener {
                fds.push(nix::poll::PollFd::new(l.as_fd(), nix::poll::PollFlags::POLLIN));
            }
            let ms = left.as_millis().min(1000) as u16;
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            tree.serve(0);
        }
    }

    /// Reads what gdbserver wrote; returns the last program pid it reported, if any. At
    /// EOF (gdbserver is gone) the log closes.
    fn read(&mut self) -> Option<Pid> {
        let mut latest = None;
        let mut chunk = [0u8; 4096];
        while let Some(log) = &self.log {
            match nix::unistd::read(log.as_raw_fd(), &mut chunk) {
                Ok(0) => self.log = None,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    let (pids, used) = shared::rsp::created_pids(&self.buf);
                    if let Some(&pid) = pids.last() {
                        latest = Some(Pid::from_raw(pid));
                    }
                    // Whole lines are done with; a line never ends only if gdbserver
                    // babbles: keep a bounded tail.
                    let drop_to = if self.buf.len() - used > 4096 { self.buf.len() - 1024 } else { used };
                    if latest.is_some() || self.buf.len() > 4096 {
                        self.buf.drain(..drop_to);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        latest
    }
}

/// Waits for the program's exec (see [`exec_report`]), taking its listener from `notes_r`
/// as soon as it comes and serving it meanwhile: an observed `execve` of the program
/// itself waits for us.
fn await_exec(err_r: &OwnedFd, notes_r: &OwnedFd, tree: &mut Tree) -> Option<String> {
    use std::os::fd::AsFd;
    loop {
        let mut fds = vec![nix::poll::PollFd::new(err_r.as_fd(), nix::poll::PollFlags::POLLIN)];
        match (&tree.listener, tree.noted) {
            (Some(l), _) => fds.push(nix::poll::PollFd::new(l.as_fd(), nix::poll::PollFlags::POLLIN)),
            (None, false) => fds.push(nix::poll::PollFd::new(notes_r.as_fd(), nix::poll::PollFlags::POLLIN)),
            (None, true) => {}
        }
        if let Err(e) = nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            if e == nix::errno::Errno::EINTR {
                continue;
            }
            return exec_report(err_r);
        }
        let ready =
            |i: usize, fds: &[nix::poll::PollFd]| !fds[i].revents().unwrap_or(nix::poll::PollFlags::empty()).is_empty();
        let (exec_done, second) = (ready(0, &fds), fds.len() > 1 && ready(1, &fds));
        drop(fds);
        if second {
            if tree.listener.is_none() {
                tree.take_listener(notes_r);
            } else {
                tree.serve(0);
            }
        }
        if exec_done {
            return exec_report(err_r);
        }
    }
}

/// Why the program's process did not exec, if it reported a failure on `err_r` (whose
/// write end closes at a successful exec).
pub(crate) fn exec_report(err_r: &OwnedFd) -> Option<String> {
    let mut report = [0u8; 5];
    let Ok(5) = nix::unistd::read(err_r.as_raw_fd(), &mut report) else { return None };
    let e = nix::errno::Errno::from_raw(i32::from_ne_bytes([report[1], report[2], report[3], report[4]]));
    Some(match ExecStage::from(report[0]) {
        ExecStage::Stdio => format!("cannot set up the program's stdio: {e}"),
        ExecStage::Seccomp => format!("cannot install the session's seccomp filter: {e}"),
        ExecStage::Exec => {
            let hint = match e {
                nix::errno::Errno::ENOENT => {
                    " (it, its ELF interpreter, or the #! interpreter of a script, is missing on the rig)"
                }
                nix::errno::Errno::EACCES => " (not executable)",
                _ => "",
            };
            format!("cannot execute the program: {e}{hint}")
        }
    })
}

/// Which step of [`exec_program`] failed (first byte of its report).
pub(crate) enum ExecStage {
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
pub(crate) fn exec_program(plan: &Image, err_w: OwnedFd) -> ! {
    sys::reset_signals();
    let _ = nix::unistd::setsid();
    // Our own two descriptors first go above those stdio is placed on (0-5 under
    // gdbserver), where a placement cannot clobber them: `notes` on the highest one the
    // limit allows (see the listener below), the error pipe above 5.
    let notes = highest_fd(&plan.notes).unwrap_or(plan.notes.as_raw_fd());
    let err_w = match nix::fcntl::fcntl(err_w.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(6)) {
        Ok(fd) if fd != notes => shared::os::adopt_fd(fd).unwrap_or(err_w),
        _ => err_w,
    };
    let report = |stage: u8, e: nix::errno::Errno| -> ! {
        let mut b = [stage, 0, 0, 0, 0];
        b[1..].copy_from_slice(&(e as i32).to_ne_bytes());
        let _ = nix::unistd::write(&err_w, &b);
        // Not exit_group: the exit listener may be installed with nobody answering yet.
        sys::exit_thread(127)
    };
    match &plan.terminal {
        Some(master) => {
            // The terminal is stdin, stdout, stderr and the controlling terminal (we are a
            // session leader since setsid above).
            let slave = sys::attach_terminal(master.as_raw_fd()).unwrap_or_else(|e| report(0, e));
            for to in 0..3 {
                if let Err(e) = nix::unistd::dup2(slave, to) {
                    report(0, e);
                }
            }
        }
        None => {
            let (stdin, stdout, stderr) = (plan.stdin.as_raw_fd(), plan.stdout.as_raw_fd(), plan.stderr.as_raw_fd());
            let placed = match &plan.launcher {
                None => place(&[stdin, stdout, stderr]),
                // gdbserver: the protocol on 0 and 1, its messages on 2, the program's
                // stdio on 3-5 (its wrapper moves them to 0-2).
                Some(l) => {
                    let (sock, log) = (l.sock.as_raw_fd(), l.log.as_raw_fd());
                    place(&[sock, sock, log, stdin, stdout, stderr])
                }
            };
            if let Err(e) = placed {
                report(0, e);
            }
        }
    }
    let mut keep = vec![err_w.as_raw_fd(), notes];
    if let Program::Memfd(fd) = &plan.program {
        keep.push(fd.as_raw_fd());
    }
    if plan.launcher.is_some() {
        keep.extend([3, 4, 5]);
    }
    sys::close_all_except(&keep);
    // Every exit_group of the tree goes by the init from now on (under gdbserver always:
    // it is how the init learns the exit status of a program that is not its child), and
    // the calls START `observe` asks for.
    let exits = plan.list_processes || plan.launcher.is_some();
    let listen = exits || plan.observe.any() || plan.traced;
    // The listener goes to the init with a sendmsg that the filter itself may observe
    // (net): that one call, on the descriptor `notes` was moved to, is left out — the
    // highest the limit allows, which closes at exec and which a program rarely reaches.
    let filter = || policy::seccomp::observer(exits, &plan.observe, Some(notes as u64), plan.traced);
    let listener = listen.then(|| sys::listener_for(filter())).and_then(Result::ok);
    if listener.is_some() || plan.traced {
        // Traced (core dumps): the init may trace us only once we are dumpable (the
        // broker is not, and we are its copy until exec); nothing else is in the session
        // yet. We wait for its word that it has: our program's first instruction is then
        // traced, and so is every thread and child it makes.
        if plan.traced {
            let _ = nix::sys::prctl::set_dumpable(true);
        }
        let fds: Vec<std::os::fd::RawFd> = listener.iter().map(|l| l.as_raw_fd()).collect();
        let rights = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let cmsg = if fds.is_empty() { &rights[..0] } else { &rights[..] };
        let iov = [std::io::IoSlice::new(b"L")];
        let _ = nix::sys::socket::sendmsg::<()>(notes, &iov, cmsg, nix::sys::socket::MsgFlags::empty(), None);
        if plan.traced {
            let mut go = [0u8; 1];
            let _ = nix::unistd::read(notes, &mut go);
        }
    }
    // `notes` and the listener are close-on-exec: the program gets neither.
    if policy::seccomp::install(&plan.seccomp).is_err() {
        report(1, nix::errno::Errno::last());
    }
    let Err(e) = match (&plan.launcher, &plan.program) {
        (Some(l), _) => {
            let gdbserver = CString::new(crate::gdbserver::GDBSERVER).expect("no NUL");
            nix::unistd::execve(&gdbserver, &l.argv, &l.env)
        }
        (None, Program::Memfd(fd)) => nix::unistd::fexecve(fd.as_raw_fd(), &plan.argv, &plan.env),
        (None, Program::Path(path)) => nix::unistd::execve(path, &plan.argv, &plan.env),
    };
    report(2, e)
}

/// `fd` copied (close-on-exec) onto the highest descriptor `RLIMIT_NOFILE` allows.
fn highest_fd(fd: &OwnedFd) -> Option<std::os::fd::RawFd> {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let top = i32::try_from(soft.min(1 << 20)).ok()?.checked_sub(1)?;
    let got = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(top)).ok()?;
    (got == top).then_some(got)
}

/// Puts `from[i]` on descriptor `i` (close-on-exec cleared), whatever numbers the sources
/// have: each is first copied above every target, so that no placement clobbers a source.
fn place(from: &[std::os::fd::RawFd]) -> Result<(), nix::errno::Errno> {
    use nix::fcntl::{fcntl, FcntlArg};
    let floor = from.len() as i32 + 3;
    let mut high = Vec::with_capacity(from.len());
    for &fd in from {
        high.push(fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(floor.max(fd)))?);
    }
    for (to, &fd) in high.iter().enumerate() {
        nix::unistd::dup2(fd, to as i32)?;
    }
    for fd in high {
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// The note the program's process sent (`None`: none yet), with the exit listener if
/// it has one.
fn receive_note(sock: &OwnedFd) -> Option<Option<OwnedFd>> {
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    if msg.bytes == 0 {
        return None;
    }
    let fd = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
    });
    Some(fd.and_then(|fd| shared::os::adopt_fd(fd).ok()))
}

/// The processes that ended, as the exit listener told them.
struct Tree {
    listener: Option<OwnedFd>,
    /// Note every process (the receipt's list); else only the watched one.
    list: bool,
    spans: Vec<ProcSpan>,
    dropped: u32,
    /// Clock ticks per second of `/proc/<pid>/stat` start times.
    hz: u64,
    /// A program that is not our child (gdbserver launched it), and the status it passed
    /// to `exit_group`, once it did.
    watched: Option<(Pid, Option<i32>)>,
    /// What the run touched, when observed.
    recorder: Option<shared::observe::Recorder>,
    /// The forked process's own exec, until it is seen: (pid, path, argv).
    first_exec: Option<(u32, String, Vec<String>)>,
    /// The program's process sent its note (with or without a listener).
    noted: bool,
    /// Core dumps: the tracing of the tree.
    tracer: Option<crate::core::Tracer>,
    /// The process to seize when its note comes (it waits for us then).
    seize: Option<Pid>,
}

impl Tree {
    fn new(listener: Option<OwnedFd>, list: bool, observe: shared::observe::Observe) -> Tree {
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
        let recorder = observe.any().then(|| shared::observe::Recorder::new(observe));
        Tree {
            listener,
            list,
            spans: Vec::new(),
            dropped: 0,
            hz,
            watched: None,
            recorder,
            first_exec: None,
            noted: false,
            tracer: None,
            seize: None,
        }
    }

    /// Takes the listener the program's process sent on `notes_r`, if it has not yet.
    /// An observed run hands over many calls: each then wakes us synchronously where the
    /// kernel can.
    fn take_listener(&mut self, notes_r: &OwnedFd) {
        use std::os::fd::AsFd;
        if self.noted {
            return;
        }
        let Some(listener) = receive_note(notes_r) else { return };
        self.noted = true;
        self.listener = listener;
        if let (Some(l), Some(_)) = (&self.listener, &self.recorder) {
            sys::notify_sync_wake_up(l.as_fd());
        }
        // A traced process waits for this word (it goes on even if it cannot be traced:
        // the run then has no cores).
        if let (Some(t), Some(pid)) = (&mut self.tracer, self.seize.take()) {
            if !t.seize(pid.as_raw()) {
                log::warn!("cannot trace the program for core dumps: {}", nix::errno::Errno::last());
                self.tracer = None;
            }
            let _ = nix::unistd::write(notes_r, b"G");
        }
    }

    /// The next change of a process of the tree that is not a tracee's stop (those the
    /// tracer deals with here): its pid and raw wait status.
    fn reap(&mut self) -> Option<(i32, i32)> {
        while let Some((pid, status)) = sys::wait_raw(-1) {
            let dealt = match &mut self.tracer {
                Some(t) => t.on_wait(pid, status),
                None => libc::WIFSTOPPED(status),
            };
            if !dealt {
                return Some((pid, status));
            }
        }
        None
    }

    /// Watch `pid`'s exit (a new program gdbserver launched: it replaces the last one).
    fn watch(&mut self, pid: Pid) {
        self.watched = Some((pid, None));
    }

    /// What the watched program passed to `exit_group`, if it has.
    fn watched_code(&self) -> Option<i32> {
        self.watched.and_then(|(_, code)| code)
    }

    /// Whether `tid` (a thread calling `exit_group`) belongs to the watched program.
    fn is_watched(&self, tid: u32) -> bool {
        let Some((pid, _)) = self.watched else { return false };
        if tid == pid.as_raw() as u32 {
            return true;
        }
        // Another thread of it: its thread group says so.
        std::fs::read_to_string(format!("/proc/{tid}/status")).ok().is_some_and(|st| {
            st.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse::<i32>().ok())
                == Some(pid.as_raw())
        })
    }

    /// Answers every pending exit notification (waiting up to `timeout_ms` for the first).
    /// A process blocked in `exit_group` waits for this, so nothing may delay it long.
    fn serve(&mut self, timeout_ms: u16) {
        use std::os::fd::AsFd;
        let mut timeout = timeout_ms;
        // An observed program's calls come in bursts: after one, the next is waited for a
        // moment here rather than through the whole supervision loop, for at most a
        // bounded stretch (signals and the broker are still heard within ~20 ms).
        let burst_end = std::time::Instant::now() + std::time::Duration::from_millis(20);
        let mut observed = false;
        while let Some(l) = &self.listener {
            if observed && std::time::Instant::now() >= burst_end {
                return;
            }
            let mut pfd = [nix::poll::PollFd::new(l.as_fd(), nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(timeout)) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let ev = pfd[0].revents().unwrap_or(nix::poll::PollFlags::empty());
            if ev.contains(nix::poll::PollFlags::POLLIN) {
                match sys::notify_recv(l.as_fd()) {
                    Ok(call) if call.nr == libc::SYS_ptrace => {
                        // The tree's own debugger: the thread it traces is let go first.
                        if let Some(t) = &mut self.tracer {
                            t.before_ptrace(call.pid, call.args[0], call.args[1]);
                        }
                        let _ = sys::exit_continue(l.as_fd(), call.id);
                    }
                    Ok(call) if call.exit().is_none() => {
                        // An observed call: noted, then always let go on.
                        let ours = matches!(call.nr, libc::SYS_execve | libc::SYS_execveat)
                            && self.first_exec.as_ref().is_some_and(|(pid, ..)| *pid == call.pid);
                        match (&mut self.recorder, ours) {
                            (Some(r), true) => {
                                let (pid, path, argv) = self.first_exec.take().expect("checked");
                                crate::observe::first_exec(r, pid, path, argv);
                            }
                            (Some(r), false) => crate::observe::note(r, l.as_fd(), &call),
                            (None, _) => {}
                        }
                        let _ = sys::exit_continue(l.as_fd(), call.id);
                        observed = true;
                    }
                    Ok(call) => {
                        let Some(note) = call.exit() else { continue };
                        // Noted first (the process is still there to be read), then let go.
                        let span = self.list.then(|| self.describe(note));
                        if self.is_watched(note.pid) {
                            if let Some((_, code)) = &mut self.watched {
                                *code = Some(note.code & 0xff);
                            }
                        }
                        let _ = sys::exit_continue(l.as_fd(), note.id);
                        if let Some(span) = span {
                            self.record(span);
                        }
                    }
                    // The process died in between (SIGKILL), or a signal interrupted us.
                    Err(nix::errno::Errno::ENOENT | nix::errno::Errno::EINTR) => {}
                    // Anything else would repeat forever: give the listener up. The kernel
                    // then fails the notifications and every exit goes on by itself.
                    Err(_) => self.listener = None,
                }
            } else if ev.intersects(nix::poll::PollFlags::POLLHUP | nix::poll::PollFlags::POLLERR) {
                // No process under the filter is left.
                self.listener = None;
            }
            timeout = u16::from(observed);
        }
    }

    fn describe(&self, note: sys::ExitNote) -> ProcSpan {
        let now = std::time::SystemTime::now();
        let now_us = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let mut span =
            ProcSpan { pid: note.pid, ppid: 0, comm: String::new(), start_us: now_us, end_us: now_us, code: note.code };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", note.pid)) else { return span };
        // "pid (comm) state ppid ... starttime(22nd field) ...": comm may hold anything,
        // so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return span };
        span.comm = stat[open + 1..close].chars().take(15).collect();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        span.ppid = rest.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let start_ticks: u64 = rest.get(19).and_then(|v| v.parse().ok()).unwrap_or(0);
        if let Ok(boot) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
            let boot_us = boot.tv_sec() as u64 * 1_000_000 + boot.tv_nsec() as u64 / 1000;
            let start_boot_us = start_ticks.saturating_mul(1_000_000) / self.hz;
            span.start_us = now_us.saturating_sub(boot_us.saturating_sub(start_boot_us));
        }
        span
    }

    fn record(&mut self, span: ProcSpan) {
        if self.spans.len() < shared::MAX_SPANS {
            self.spans.push(span);
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }
}

/// What the run left in `/tmp` (every process is dead: nothing changes it now): its use,
/// and its regular files, depth first, as many as a message holds. As the session's uid,
/// never following a symlink.
fn tmp_usage() -> shared::TmpUsage {
    let mut u = shared::TmpUsage::default();
    if let Ok(st) = nix::sys::statvfs::statvfs("/tmp") {
        let bsize = st.fragment_size();
        u.size_bytes = st.blocks() * bsize;
        u.used_bytes = st.blocks().saturating_sub(st.blocks_free()) * bsize;
    }
    let mut stack = vec![std::path::PathBuf::from("/tmp")];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            seen += 1;
            // A bound on the walk itself, whatever the program left.
            if seen > 100_000 {
                return u;
            }
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                if u.files.len() < shared::MAX_TMP_FILES {
                    let mut path = e.path().to_string_lossy().into_owned();
                    if path.len() > shared::MAX_TMP_PATH {
                        let mut cut = shared::MAX_TMP_PATH;
                        while !path.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        path.truncate(cut);
                    }
                    u.files.push(shared::TmpFile { path, size: e.metadata().map_or(0, |m| m.len()) });
                } else {
                    u.unlisted = u.unlisted.saturating_add(1);
                }
            }
        }
    }
    u
}

/// Waits for signals (and exit notifications) until the program has exited, then cleans
/// the namespace and reports.
///
/// With a gdbserver that launched the program (`launch`), the session lasts as long as
/// gdbserver does (an extended-remote gdb may `run` the program again: each new pid it
/// reports is the program from then on). The program's status is then what it passed to
/// `exit_group` (the exit listener), or its real one if gdbserver left first (it is
/// reparented to us and reaped here); a program gdbserver reaped after a signal reports
/// SIGKILL here, and the frontend takes the real one from gdbserver's stop reply.
fn supervise(mut program: Pid, ctl: &mut Tube, mut tree: Tree, mut launch: Option<Launch>) -> ! {
    use std::os::fd::AsFd;
    let signals = match nix::sys::signalfd::SignalFd::with_flags(
        &init_signals(),
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    ) {
        Ok(s) => s,
        Err(_) => sys::exit_now(124),
    };
    let mut status = None;
    loop {
        // A program gdbserver launched anew (extended-remote `run`) is the program now.
        if let Some(pid) = launch.as_mut().and_then(Launch::read) {
            program = pid;
            status = None;
            tree.watch(pid);
        }
        // Reap everything that is ready (tracees' stops are the tracer's); remember the
        // program's status.
        while let Some((pid, raw)) = tree.reap() {
            let pid = Pid::from_raw(pid);
            if launch.as_ref().is_some_and(|l| l.gdbserver == pid) {
                launch = None;
            }
            if pid == program {
                if libc::WIFEXITED(raw) {
                    status = Some(ExitStatus::Code(libc::WEXITSTATUS(raw)));
                } else if libc::WIFSIGNALED(raw) {
                    status = Some(ExitStatus::Signal(libc::WTERMSIG(raw)));
                }
            }
        }
        if launch.is_some() {
            // gdbserver holds the session, whatever the program did.
            status = None;
        } else if status.is_none() && tree.watched.is_some() && kill(program, None).is_err() {
            // gdbserver is gone and so is the program it reaped.
            status = Some(tree.watched_code().map_or(ExitStatus::Signal(libc::SIGKILL), ExitStatus::Code));
        }
        if let Some(status) = status {
            // The program is gone: nothing else of the session may outlive it. Whatever is
            // left gets a moment to end by itself first (an attached gdbserver reports the
            // exit to gdb, then leaves), then everything is killed.
            let grace = std::time::Instant::now() + std::time::Duration::from_millis(500);
            while kill(Pid::from_raw(-1), None).is_ok() && std::time::Instant::now() < grace {
                while tree.reap().is_some() {}
                tree.serve(5);
                if tree.listener.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
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
            let tmp = tmp_usage();
            let observed = tree.recorder.take().and_then(|r| crate::observe::sealed(&r.finish()));
            let (core, core_meta) = tree.tracer.as_mut().and_then(crate::core::Tracer::take_core).unzip();
            let usage = Usage {
                user_us,
                sys_us,
                max_rss_kib,
                processes,
                tree: tree.spans,
                tree_dropped: tree.dropped,
                tmp,
                cgroup: None,
                core: core_meta.map(Box::new),
            };
            let _ = ctl.send(0, InitMsg::Exited { status, usage, observed, core });
            sys::exit_now(0);
        }
        // Sleep until a signal, a call of the broker or an exit notification.
        {
            let mut fds = vec![
                nix::poll::PollFd::new(signals.as_fd(), nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(ctl.as_fd(), nix::poll::PollFlags::POLLIN),
            ];
            if let Some(l) = &tree.listener {
                fds.push(nix::poll::PollFd::new(l.as_fd(), nix::poll::PollFlags::POLLIN));
            }
            if let Some(log) = launch.as_ref().and_then(|l| l.log.as_ref()) {
                fds.push(nix::poll::PollFd::new(log.as_fd(), nix::poll::PollFlags::POLLIN));
            }
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE);
        }
        tree.serve(0);
        // The broker's calls; a broken link is the broker's death, which SIGKILLs us.
        while let Ok(Some((_, call))) = ctl.recv::<InitCall>() {
            match call {
                InitCall::Signal(sig) => {
                    if let Ok(sig) = Signal::try_from(sig) {
                        // The program's process group (it called setsid: its pgid is its
                        // pid); if it left it, the program itself.
                        if kill(Pid::from_raw(-program.as_raw()), sig).is_err() {
                            let _ = kill(program, sig);
                        }
                    }
                }
                InitCall::Release => {
                    if let Some(t) = &mut tree.tracer {
                        t.release_all();
                    }
                    let _ = ctl.send(0, InitMsg::Released);
                }
            }
        }
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
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
}
