//! Another process in a running session (`EXEC`, issue 17): a helper forked by the
//! spawner joins the session's cgroups and namespaces (as the gdbserver helper does),
//! takes its uid, rlimits and — for the process, just before exec — its seccomp filter,
//! and forks the program into the session's PID namespace, with its own stdio (pipes, or
//! a terminal of the session's devpts). The helper stays its parent outside the session,
//! reports to the broker like an init (running with a pidfd, or why it failed; then the
//! exit status), and the process dies with it (`PR_SET_PDEATHSIG`) and with the session
//! (the init kills its namespace at the end of the run).

use crate::init::{self, Image, Program};
use crate::messages::{sys_err, InitMsg, SpawnError, SpawnReply};
use crate::sys;
use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitStatus};
use shared::{ExecSpec, ExitStatus, RunLimits, Tube, Usage};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

/// What the spawner was asked.
pub struct ExecPlan {
    /// A pidfd of the session's init.
    pub init_pidfd: OwnedFd,
    /// The session's uid.
    pub ns_uid: Option<u32>,
    /// `cgroup.procs` of its cgroups.
    pub cgroup_procs: Vec<OwnedFd>,
    /// The run's limits.
    pub limits: RunLimits,
    /// A pids cgroup bounds the session.
    pub pids_cgroup: bool,
    /// The session runs a bundle.
    pub bundle: bool,
    /// What to run.
    pub spec: ExecSpec,
}

fn cstrings(v: &[Vec<u8>]) -> Result<Vec<CString>, SpawnError> {
    v.iter()
        .map(|b| CString::new(b.clone()).map_err(|_| SpawnError::Refused("argv and env must not contain NUL".into())))
        .collect()
}

/// Forks the helper; returns its pidfd, the broker's end of its control socket and the
/// far ends of the process's pipes.
pub fn start(plan: ExecPlan, session_seccomp: &[seccompiler::BpfProgram]) -> Result<SpawnReply, SpawnError> {
    let argv = cstrings(&plan.spec.argv)?;
    let env = cstrings(&plan.spec.env)?;
    let Some(path) = argv.first().cloned() else { return Err(SpawnError::Refused("argv must not be empty".into())) };
    if !path.as_bytes().starts_with(b"/") {
        return Err(SpawnError::Refused("the program must be an absolute path in the session's view".into()));
    }
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    for p in [&out_r, &err_r, &in_w] {
        let _ = nix::fcntl::fcntl(p.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
    let (ctl_parent, ctl_child) = shared::tube::socketpair().map_err(sys_err("socketpair"))?;
    match sys::fork_into(0).map_err(sys_err("fork the exec helper"))? {
        sys::Forked::Parent { pidfd, .. } => {
            Ok(SpawnReply::Exec { helper_pidfd: pidfd, ctl: ctl_parent, stdout: out_r, stderr: err_r, stdin: in_w })
        }
        sys::Forked::Child => {
            drop((ctl_parent, out_r, err_r, in_w));
            let mut keep = vec![ctl_child.as_raw_fd(), plan.init_pidfd.as_raw_fd(), out_w.as_raw_fd()];
            keep.extend([err_w.as_raw_fd(), in_r.as_raw_fd()]);
            keep.extend(plan.cgroup_procs.iter().map(|f| f.as_raw_fd()));
            sys::close_all_except(&keep);
            let Ok(mut ctl) = Tube::new(ctl_child) else { sys::exit_now(1) };
            let image = Image {
                program: Program::Path(path),
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
                argv,
                env,
                seccomp: session_seccomp.to_vec(),
                launcher: None,
                list_processes: false,
                observe: Default::default(),
                notes: match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
                    Ok((r, _w)) => r,
                    Err(_) => sys::exit_now(1),
                },
                terminal: None,
                traced: false,
            };
            helper(plan, image, &mut ctl)
        }
    }
}

fn helper(plan: ExecPlan, mut image: Image, ctl: &mut Tube) -> ! {
    let fail = |ctl: &mut Tube, message: String| -> ! {
        let _ = ctl.send(0, InitMsg::Failed { message });
        sys::exit_now(1)
    };
    let program = plan.spec.argv.first().map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default();
    // The spawner lets the kernel reap its children; this helper waits for its own.
    sys::set_sigchld(true);
    // The session's cgroups first (cgroup v1 moves a task for root or its own uid only),
    // then its namespaces; its cgroup namespace last, so /proc/self/cgroup reads "/".
    if let Err(e) = crate::cgroup::join(plan.cgroup_procs) {
        fail(ctl, shared::chain(&e));
    }
    use nix::sched::CloneFlags as F;
    let ns =
        F::CLONE_NEWNS | F::CLONE_NEWPID | F::CLONE_NEWNET | F::CLONE_NEWIPC | F::CLONE_NEWUTS | F::CLONE_NEWCGROUP;
    if let Err(e) = nix::sched::setns(&plan.init_pidfd, ns) {
        fail(ctl, format!("cannot enter the session's namespaces (has its run ended?): {e}"));
    }
    drop(plan.init_pidfd);
    let cwd = if plan.bundle { policy::mounts::BUNDLE } else { "/tmp" };
    if let Err(e) = std::env::set_current_dir(cwd) {
        fail(ctl, format!("chdir {cwd}: {e}"));
    }
    if let Err(e) = sys::take_identity(plan.ns_uid) {
        fail(ctl, format!("cannot drop to the session identity: {}", shared::chain(&e)));
    }
    if let Err(e) = policy::rlimits::apply(&policy::rlimits::session(&plan.limits, plan.pids_cgroup)) {
        fail(ctl, format!("cannot apply limits: {e}"));
    }
    if let Some(ws) = plan.spec.tty {
        match sys::open_terminal(ws.rows, ws.cols) {
            Ok(master) => image.terminal = Some(master),
            Err(e) => fail(ctl, format!("cannot open a terminal in the session: {e}")),
        }
    }
    let (rep_r, rep_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(ctl, format!("pipe: {e}")),
    };
    let (pid_r, pid_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(ctl, format!("pipe: {e}")),
    };
    let (child, pidfd) = match sys::fork_into(0) {
        Err(e) => fail(ctl, format!("cannot fork the program: {e}")),
        Ok(sys::Forked::Child) => {
            // The process goes with its helper (the broker kills the helper to end it).
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            // Its pid as the session sees it, for the receipt and for signals.
            let _ = nix::unistd::write(&pid_w, &nix::unistd::getpid().as_raw().to_ne_bytes());
            drop((pid_r, pid_w, rep_r));
            init::exec_program(&image, rep_w)
        }
        Ok(sys::Forked::Parent { pid, pidfd }) => (pid, pidfd),
    };
    drop((rep_w, pid_w));
    let terminal = image.terminal.take();
    drop(image);
    let mut b = [0u8; 4];
    let ns_pid = match nix::unistd::read(pid_r.as_raw_fd(), &mut b) {
        Ok(4) => i32::from_ne_bytes(b) as u32,
        _ => 0,
    };
    if let Some(what) = init::exec_report(&rep_r) {
        let _ = waitpid(child, None);
        let message = format!("{program}: {what}");
        let _ = ctl.send(0, InitMsg::NotExecuted { message });
        sys::exit_now(1);
    }
    if ctl.send(0, InitMsg::Running { ns_pid, pidfd, tty: terminal, debugger: None }).is_err() {
        sys::exit_now(1);
    }
    let status = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => break ExitStatus::Code(c),
            Ok(WaitStatus::Signaled(_, s, _)) => break ExitStatus::Signal(s as i32),
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(_) => break ExitStatus::Signal(libc::SIGKILL),
        }
    };
    let _ = ctl.send(0, InitMsg::Exited { status, usage: Usage::default(), observed: None, core: None });
    sys::exit_now(0)
}
