//! The spawner: a process forked by the broker before the broker confines itself, whose
//! only job is to create sessions. Seccomp filters and landlock rulesets are inherited by
//! every child and survive exec, so a confined broker could not give a session the
//! ordinary syscall surface a program needs; the spawner can, because it is forked before
//! the broker's filters exist.
//!
//! It serves one request at a time from the broker over a private SEQPACKET socketpair
//! (same framing, size limit and descriptor-count checks as the frontend/broker link),
//! and answers with the new session's init pidfd, control socket and output pipes. It
//! treats the broker as trusted-but-checked: any structurally bad message ends it, and the
//! broker, seeing the socket close, fails closed. Its children (the session inits) are
//! reaped automatically (`SIGCHLD` ignored): the broker watches them through pidfds.

use crate::gdbserver;
use crate::init::{self, InitPlan, Program};
use crate::messages::{sys_err, SpawnError, SpawnImage, SpawnReply, SpawnRequest, SpawnerCall};
use crate::sys;
use nix::fcntl::OFlag;
use shared::{Tube, TubeError};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

/// Forks the spawner. Returns the broker's end of its socket once the spawner has
/// confined itself with `own_seccomp` (a deny list that stacks under every session it
/// builds): from then on no moment exists where it runs unconfined beside the broker.
/// The child never returns.
pub fn start(
    session_seccomp: &[seccompiler::BpfProgram],
    own_seccomp: &[seccompiler::BpfProgram],
) -> Result<OwnedFd, SpawnError> {
    let (ours, theirs) = shared::tube::socketpair().map_err(sys_err("socketpair"))?;
    let (confined_r, confined_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    match sys::fork_into(0).map_err(sys_err("fork the spawner"))? {
        sys::Forked::Parent { .. } => {
            drop(confined_w);
            // One byte once its filter is installed; EOF if it died first.
            let mut b = [0u8; 1];
            match nix::unistd::read(confined_r.as_raw_fd(), &mut b) {
                Ok(1) => Ok(ours),
                _ => Err(SpawnError::Helper("the spawner could not confine itself (see the log)".into())),
            }
        }
        sys::Forked::Child => {
            drop(ours);
            drop(confined_r);
            serve(theirs, confined_w, session_seccomp, own_seccomp)
        }
    }
}

fn serve(
    sock: OwnedFd,
    confined: OwnedFd,
    session_seccomp: &[seccompiler::BpfProgram],
    own_seccomp: &[seccompiler::BpfProgram],
) -> ! {
    sys::close_all_except(&[0, 1, 2, sock.as_raw_fd(), confined.as_raw_fd()]);
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if let Err(e) = policy::seccomp::install(own_seccomp) {
        log::error!("spawner: {e}");
        sys::exit_now(1);
    }
    let _ = nix::unistd::write(&confined, b"1");
    drop(confined);
    // Inits are reaped by the kernel; the broker watches them through pidfds.
    sys::set_sigchld(false);
    let Ok(mut tube) = Tube::new(sock) else { sys::exit_now(1) };
    loop {
        let mut pfd = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&tube), nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::NONE);
        match tube.recv::<SpawnerCall>() {
            Ok(Some((tag, call))) => {
                let reply = match call {
                    SpawnerCall::Session(req) => spawn(req, session_seccomp),
                    SpawnerCall::Debug { init_pidfd, ns_uid, target } => {
                        gdbserver::attach(init_pidfd, ns_uid, target, session_seccomp)
                    }
                    SpawnerCall::Exec { init_pidfd, ns_uid, cgroup_procs, limits, pids_cgroup, bundle, spec } => {
                        let plan = crate::exec::ExecPlan {
                            init_pidfd,
                            ns_uid,
                            cgroup_procs,
                            limits,
                            pids_cgroup,
                            bundle,
                            spec,
                        };
                        crate::exec::start(plan, session_seccomp)
                    }
                    SpawnerCall::Files { dir, bundle, ns_uid, tmp_bytes } => check_dir(&dir)
                        .and_then(|()| crate::files::start(&dir, bundle, ns_uid, tmp_bytes, session_seccomp)),
                    SpawnerCall::DropTmp { dir } => check_dir(&dir)
                        .and_then(|()| crate::jail::drop_tmp(&dir).map_err(|e| SpawnError::Helper(shared::chain(&e))))
                        .map(|()| SpawnReply::Done),
                }
                .unwrap_or_else(|e| SpawnReply::Failed { message: shared::chain(&e) });
                if tube.send(tag, reply).is_err() {
                    sys::exit_now(1);
                }
            }
            Ok(None) => {}
            Err(TubeError::PeerGone) => sys::exit_now(0),
            Err(e) => {
                log::error!("spawner: {e}");
                sys::exit_now(1);
            }
        }
    }
}

/// Session directory names come from session ids (lowercase hyphenated UUIDs).
fn check_dir(dir: &str) -> Result<(), SpawnError> {
    if dir.len() != 36 || !dir.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(SpawnError::Refused("bad session directory name".into()));
    }
    Ok(())
}

/// Size of a session's stdio pipes.
const PIPE_BYTES: i32 = 1 << 20;

fn to_cstrings(v: &[Vec<u8>]) -> Result<Vec<CString>, SpawnError> {
    v.iter()
        .map(|b| CString::new(b.clone()).map_err(|_| SpawnError::Refused("argv and env must not contain NUL".into())))
        .collect()
}

/// Creates one session: pipes, the init's control socket, then `clone3` into new PID,
/// mount, network, IPC and UTS namespaces; the child becomes the session's init.
fn spawn(req: SpawnRequest, session_seccomp: &[seccompiler::BpfProgram]) -> Result<SpawnReply, SpawnError> {
    let argv = to_cstrings(&req.spec.argv)?;
    let env = to_cstrings(&req.spec.env)?;
    if argv.is_empty() {
        return Err(SpawnError::Refused("argv must not be empty".into()));
    }
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    // Larger pipes: fewer wake-ups per megabyte on both sides (best effort: the kernel caps
    // them at fs.pipe-max-size).
    for p in [&out_r, &err_r, &in_w] {
        let _ = nix::fcntl::fcntl(p.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
    }
    let (ctl_parent, ctl_child) = shared::tube::socketpair().map_err(sys_err("socketpair"))?;
    check_dir(&req.dir)?;
    let (program, bundle) = match req.image {
        SpawnImage::Memfd(fd) => (Program::Memfd(fd), false),
        SpawnImage::Bundle { exec_path } => {
            // The path was checked by the broker.
            let mut path = policy::mounts::BUNDLE.as_bytes().to_vec();
            path.push(b'/');
            path.extend_from_slice(&exec_path);
            let path = CString::new(path).map_err(|_| SpawnError::Refused("exec path contains NUL".into()))?;
            (Program::Path(path), true)
        }
    };
    // The session's /tmp: kept from the last run, or new (the old one's files go).
    crate::jail::prepare_tmp(&req.dir, req.spec.limits.tmp_bytes.max(4096), req.spec.keep_tmp, true)
        .map_err(|e| SpawnError::Helper(shared::chain(&e)))?;
    let plan = InitPlan {
        ctl: ctl_child,
        program,
        dir: req.dir,
        bundle,
        stdin: in_r,
        stdout: out_w,
        stderr: err_w,
        argv,
        env,
        ns_uid: req.ns_uid,
        limits: policy::rlimits::session(&req.spec.limits, req.pids_cgroup),
        mounts: policy::mounts::session_plan(),
        seccomp: session_seccomp.to_vec(),
        cgroup_procs: req.cgroup_procs,
        debug: req.spec.debug,
        list_processes: req.spec.list_processes,
        observe: req.spec.observe,
        tty: req.spec.tty,
        core_bytes: req.spec.limits.core_bytes,
    };
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    let into = req.into_cgroup;
    match sys::fork_into_cgroup(flags, into.as_ref().map(std::os::fd::AsFd::as_fd)) {
        Err(e) => Err(SpawnError::Sys { what: "cannot create the session's namespaces", source: e }),
        Ok(sys::Forked::Child) => init::run(plan),
        Ok(sys::Forked::Parent { pidfd, .. }) => {
            Ok(SpawnReply::Spawned { init_pidfd: pidfd, ctl: ctl_parent, stdout: out_r, stderr: err_r, stdin: in_w })
        }
    }
}
