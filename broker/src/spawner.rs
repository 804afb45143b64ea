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

use crate::init::{self, InitPlan, Program};
use crate::sys;
use bincode::{Decode, Encode};
use nix::fcntl::OFlag;
use shared::{Message, StartSpec, Tube, TubeError, WireError};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

/// Broker → spawner: create a session.
#[derive(Debug)]
pub struct SpawnRequest {
    /// What to run.
    pub spec: StartSpec,
    /// Uid inside the broker's user namespace, or single-uid mode.
    pub ns_uid: Option<u32>,
    /// Whether a pids cgroup bounds the session (then no `RLIMIT_NPROC`).
    pub pids_cgroup: bool,
    /// What to run.
    pub image: SpawnImage,
    /// `cgroup.procs` of the session's cgroups (0 to 2).
    pub cgroup_procs: Vec<OwnedFd>,
}

/// What a session runs.
#[derive(Debug)]
pub enum SpawnImage {
    /// The sealed program image.
    Memfd(OwnedFd),
    /// A bundle: its directory in the store, and the executable relative to it.
    Bundle {
        /// Directory name in the store.
        dir: String,
        /// The executable, relative to the bundle root.
        exec_path: Vec<u8>,
    },
}

/// Broker → spawner: everything the spawner does.
#[derive(Debug)]
pub enum SpawnerCall {
    /// Create a session.
    Session(SpawnRequest),
    /// Start gdbserver inside a session, attached to its program.
    Debug {
        /// A pidfd of the session's init (names its namespaces).
        init_pidfd: OwnedFd,
        /// The session's uid inside the broker's user namespace.
        ns_uid: Option<u32>,
        /// The program's pid inside the session.
        target: u32,
    },
}

/// Encodable [`SpawnerCall`].
#[derive(Encode, Decode, Debug)]
pub enum SpawnerCallWire {
    /// See [`SpawnerCall::Session`].
    Session(SpawnRequestWire),
    /// See [`SpawnerCall::Debug`].
    Debug {
        /// Uid.
        ns_uid: Option<u32>,
        /// Target pid.
        target: u32,
    },
}

impl Message for SpawnerCall {
    type Wire = SpawnerCallWire;

    fn into_wire(self) -> (SpawnerCallWire, Vec<OwnedFd>) {
        match self {
            SpawnerCall::Session(r) => {
                let (w, fds) = r.into_wire();
                (SpawnerCallWire::Session(w), fds)
            }
            SpawnerCall::Debug { init_pidfd, ns_uid, target } => {
                (SpawnerCallWire::Debug { ns_uid, target }, vec![init_pidfd])
            }
        }
    }

    fn from_wire(w: SpawnerCallWire, fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        match w {
            SpawnerCallWire::Session(r) => Ok(SpawnerCall::Session(SpawnRequest::from_wire(r, fds)?)),
            SpawnerCallWire::Debug { ns_uid, target } => {
                let got = fds.len();
                let [init_pidfd] = <[OwnedFd; 1]>::try_from(fds).map_err(|_| WireError::FdCount {
                    kind: "debug",
                    expected: 1,
                    got,
                })?;
                Ok(SpawnerCall::Debug { init_pidfd, ns_uid, target })
            }
        }
    }
}

/// Spawner → broker.
#[derive(Debug)]
pub enum SpawnReply {
    /// The session's init runs.
    Spawned {
        /// Its pidfd.
        init_pidfd: OwnedFd,
        /// The broker's end of the init's control socket.
        ctl: OwnedFd,
        /// Read end of stdout.
        stdout: OwnedFd,
        /// Read end of stderr.
        stderr: OwnedFd,
    },
    /// gdbserver runs in the session, attached.
    Debugging {
        /// Its pidfd.
        gdb_pidfd: OwnedFd,
        /// The frontend's end of gdbserver's stdio (a stream socket).
        sock: OwnedFd,
    },
    /// Nothing was created.
    Failed {
        /// Why.
        message: String,
    },
}

/// Encodable [`SpawnRequest`].
#[derive(Encode, Decode, Debug)]
pub struct SpawnRequestWire {
    spec: StartSpec,
    ns_uid: Option<u32>,
    pids_cgroup: bool,
    /// `None`: a memfd comes as the first descriptor.
    bundle: Option<(String, Vec<u8>)>,
    cgroups: u8,
}

/// Encodable [`SpawnReply`].
#[derive(Encode, Decode, Debug)]
pub enum SpawnReplyWire {
    /// See [`SpawnReply::Spawned`].
    Spawned,
    /// See [`SpawnReply::Debugging`].
    Debugging,
    /// See [`SpawnReply::Failed`].
    Failed {
        /// Why.
        message: String,
    },
}

impl Message for SpawnRequest {
    type Wire = SpawnRequestWire;

    fn into_wire(self) -> (SpawnRequestWire, Vec<OwnedFd>) {
        let cgroups = self.cgroup_procs.len() as u8;
        let (bundle, mut fds) = match self.image {
            SpawnImage::Memfd(fd) => (None, vec![fd]),
            SpawnImage::Bundle { dir, exec_path } => (Some((dir, exec_path)), vec![]),
        };
        fds.extend(self.cgroup_procs);
        (SpawnRequestWire { spec: self.spec, ns_uid: self.ns_uid, pids_cgroup: self.pids_cgroup, bundle, cgroups }, fds)
    }

    fn from_wire(w: SpawnRequestWire, mut fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        let expected = usize::from(w.bundle.is_none()) + usize::from(w.cgroups.min(2));
        if w.cgroups > 2 || fds.len() != expected {
            return Err(WireError::FdCount { kind: "spawn", expected, got: fds.len() });
        }
        let image = match w.bundle {
            None => SpawnImage::Memfd(fds.remove(0)),
            Some((dir, exec_path)) => SpawnImage::Bundle { dir, exec_path },
        };
        Ok(SpawnRequest { spec: w.spec, ns_uid: w.ns_uid, pids_cgroup: w.pids_cgroup, image, cgroup_procs: fds })
    }
}

impl Message for SpawnReply {
    type Wire = SpawnReplyWire;

    fn into_wire(self) -> (SpawnReplyWire, Vec<OwnedFd>) {
        match self {
            SpawnReply::Spawned { init_pidfd, ctl, stdout, stderr } => {
                (SpawnReplyWire::Spawned, vec![init_pidfd, ctl, stdout, stderr])
            }
            SpawnReply::Debugging { gdb_pidfd, sock } => (SpawnReplyWire::Debugging, vec![gdb_pidfd, sock]),
            SpawnReply::Failed { message } => (SpawnReplyWire::Failed { message }, vec![]),
        }
    }

    fn from_wire(w: SpawnReplyWire, fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        match w {
            SpawnReplyWire::Spawned => {
                let got = fds.len();
                let [init_pidfd, ctl, stdout, stderr] = <[OwnedFd; 4]>::try_from(fds)
                    .map_err(|_| WireError::FdCount { kind: "spawned", expected: 4, got })?;
                Ok(SpawnReply::Spawned { init_pidfd, ctl, stdout, stderr })
            }
            SpawnReplyWire::Debugging => {
                let got = fds.len();
                let [gdb_pidfd, sock] = <[OwnedFd; 2]>::try_from(fds).map_err(|_| WireError::FdCount {
                    kind: "debugging",
                    expected: 2,
                    got,
                })?;
                Ok(SpawnReply::Debugging { gdb_pidfd, sock })
            }
            SpawnReplyWire::Failed { message } => {
                if !fds.is_empty() {
                    return Err(WireError::FdCount { kind: "spawn failed", expected: 0, got: fds.len() });
                }
                Ok(SpawnReply::Failed { message })
            }
        }
    }
}

/// Forks the spawner. Returns the broker's end of its socket; the child never returns.
/// The spawner confines itself with `own_seccomp` (a deny list that stacks under every
/// session it builds) before it reads a request.
pub fn start(
    session_seccomp: &[seccompiler::BpfProgram],
    own_seccomp: &[seccompiler::BpfProgram],
) -> Result<OwnedFd, String> {
    let (ours, theirs) = shared::tube::socketpair().map_err(|e| format!("socketpair: {e}"))?;
    match sys::fork_into(0).map_err(|e| format!("fork the spawner: {e}"))? {
        sys::Forked::Parent { .. } => Ok(ours),
        sys::Forked::Child => {
            drop(ours);
            serve(theirs, session_seccomp, own_seccomp)
        }
    }
}

fn serve(sock: OwnedFd, session_seccomp: &[seccompiler::BpfProgram], own_seccomp: &[seccompiler::BpfProgram]) -> ! {
    sys::close_all_except(&[0, 1, 2, sock.as_raw_fd()]);
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if let Err(e) = policy::seccomp::install(own_seccomp) {
        eprintln!("debuglantern-broker: spawner: {e}");
        sys::exit_now(1);
    }
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
                        debug(init_pidfd, ns_uid, target, session_seccomp)
                    }
                }
                .unwrap_or_else(|message| SpawnReply::Failed { message });
                if tube.send(tag, reply).is_err() {
                    sys::exit_now(1);
                }
            }
            Ok(None) => {}
            Err(TubeError::PeerGone) => sys::exit_now(0),
            Err(e) => {
                eprintln!("debuglantern-broker: spawner: {e}");
                sys::exit_now(1);
            }
        }
    }
}

fn to_cstrings(v: &[Vec<u8>]) -> Result<Vec<CString>, String> {
    v.iter().map(|b| CString::new(b.clone()).map_err(|_| "argv and env must not contain NUL".to_string())).collect()
}

/// Creates one session: pipes, the init's control socket, then `clone3` into new PID,
/// mount, network, IPC and UTS namespaces; the child becomes the session's init.
fn spawn(req: SpawnRequest, session_seccomp: &[seccompiler::BpfProgram]) -> Result<SpawnReply, String> {
    let argv = to_cstrings(&req.spec.argv)?;
    let env = to_cstrings(&req.spec.env)?;
    if argv.is_empty() {
        return Err("argv must not be empty".into());
    }
    let err = |what: &str, e: nix::Error| format!("{what}: {e}");
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| err("pipe", e))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| err("pipe", e))?;
    let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| err("pipe", e))?;
    drop(in_w);
    let (ctl_parent, ctl_child) = shared::tube::socketpair().map_err(|e| err("socketpair", e))?;
    let (program, bundle) = match req.image {
        SpawnImage::Memfd(fd) => (Program::Memfd(fd), None),
        SpawnImage::Bundle { dir, exec_path } => {
            // Directory names come from session ids; the path was checked by the broker.
            if dir.len() != 36 || !dir.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                return Err("bad bundle directory name".into());
            }
            let mut path = policy::mounts::BUNDLE.as_bytes().to_vec();
            path.push(b'/');
            path.extend_from_slice(&exec_path);
            let path = CString::new(path).map_err(|_| "exec path contains NUL".to_string())?;
            (Program::Path(path), Some(dir))
        }
    };
    let plan = InitPlan {
        ctl: ctl_child,
        program,
        bundle,
        stdin: in_r,
        stdout: out_w,
        stderr: err_w,
        argv,
        env,
        ns_uid: req.ns_uid,
        limits: policy::rlimits::session(&req.spec.limits, req.pids_cgroup),
        mounts: policy::mounts::session_plan(req.spec.limits.tmp_bytes.max(4096)),
        seccomp: session_seccomp.to_vec(),
        cgroup_procs: req.cgroup_procs,
        debug: req.spec.debug,
        list_processes: req.spec.list_processes,
    };
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    match sys::fork_into(flags) {
        Err(e) => Err(format!("cannot create the session's namespaces: {e}")),
        Ok(sys::Forked::Child) => init::run(plan),
        Ok(sys::Forked::Parent { pidfd, .. }) => {
            Ok(SpawnReply::Spawned { init_pidfd: pidfd, ctl: ctl_parent, stdout: out_r, stderr: err_r })
        }
    }
}

/// Where gdbserver is (inside the jail root: the host's /usr, read-only).
pub const GDBSERVER: &str = "/usr/bin/gdbserver";

/// Starts `gdbserver --once --attach - <target>` inside the session of `init_pidfd`: a
/// helper joins the session's namespaces, forks gdbserver's process (so that it is in the
/// session's PID namespace, where the init reaps it), sends its pidfd back and exits.
/// gdbserver runs as the session's uid, without capabilities, under the session's seccomp
/// filter, with its stdio on a socketpair whose other end goes to the frontend. It never
/// listens on TCP.
fn debug(
    init_pidfd: OwnedFd,
    ns_uid: Option<u32>,
    target: u32,
    session_seccomp: &[seccompiler::BpfProgram],
) -> Result<SpawnReply, String> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    if !std::path::Path::new(GDBSERVER).exists() {
        return Err(format!(
            "gdbserver is not installed on the rig ({GDBSERVER}); install it (apt-get install gdbserver)"
        ));
    }
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| format!("socketpair: {e}"))?;
    let (back_ours, back_theirs) = shared::tube::socketpair().map_err(|e| format!("socketpair: {e}"))?;
    match sys::fork_into(0).map_err(|e| format!("fork: {e}"))? {
        sys::Forked::Child => {
            drop(ours);
            drop(back_ours);
            let Ok(mut back) = Tube::new(back_theirs) else { sys::exit_now(1) };
            let fail = |back: &mut Tube, message: String| -> ! {
                let _ = back.send(0, init::InitMsg::Failed { message });
                sys::exit_now(1)
            };
            let ns = nix::sched::CloneFlags::CLONE_NEWNS
                | nix::sched::CloneFlags::CLONE_NEWPID
                | nix::sched::CloneFlags::CLONE_NEWNET
                | nix::sched::CloneFlags::CLONE_NEWIPC
                | nix::sched::CloneFlags::CLONE_NEWUTS;
            if let Err(e) = nix::sched::setns(&init_pidfd, ns) {
                fail(&mut back, format!("cannot enter the session's namespaces: {e}"));
            }
            drop(init_pidfd);
            match sys::fork_into(0) {
                Err(e) => fail(&mut back, format!("fork gdbserver: {e}")),
                Ok(sys::Forked::Child) => init::exec_gdbserver(theirs, ns_uid, target, session_seccomp),
                Ok(sys::Forked::Parent { pid, pidfd }) => {
                    let _ = back.send(0, init::InitMsg::Running { ns_pid: pid.as_raw() as u32, pidfd });
                    sys::exit_now(0)
                }
            }
        }
        sys::Forked::Parent { .. } => {
            drop(theirs);
            drop(back_theirs);
            let mut back = Tube::new(back_ours).map_err(|e| e.to_string())?;
            let mut pfd = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&back), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(5000u16));
            match back.recv::<init::InitMsg>() {
                Ok(Some((_, init::InitMsg::Running { pidfd, .. }))) => {
                    Ok(SpawnReply::Debugging { gdb_pidfd: pidfd, sock: ours })
                }
                Ok(Some((_, init::InitMsg::Failed { message }))) => Err(message),
                _ => Err("the debug helper died".into()),
            }
        }
    }
}
