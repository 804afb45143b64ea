//! `debuglantern-broker`: owns sessions. Started by the frontend's launcher (clone3 into
//! new user, PID, mount, network, IPC and UTS namespaces, then exec), with its end of the
//! SEQPACKET socketpair on fd 3. It never opens a network socket and never parses tar,
//! ELF or JSON; it treats every message as hostile.
//!
//! Usage (by the launcher only): `debuglantern-broker --session-uids N`
//! (N = 0: single-uid mode, every session runs as the broker's namespace root without
//! capabilities).

mod broker;
mod cgroup;
mod core;
mod exec;
mod files;
mod gdbserver;
mod init;
mod jail;
mod messages;
mod observe;
mod spawner;
mod sys;

use std::os::fd::OwnedFd;

/// The descriptor the launcher puts the broker's socket on.
const SOCKET_FD: i32 = 3;

/// Why the broker did not start (exit 2: not started by debuglantern; 1: the host refused).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{0}")]
    Usage(String),
    #[error("no socket on fd {SOCKET_FD}; this binary is started by debuglantern")]
    NoSocket(#[source] nix::Error),
    #[error("not in a user namespace of its own; it is started by debuglantern")]
    NotInUserNs,
    #[error("cgroups")]
    Cgroups(#[from] cgroup::CgroupError),
    #[error("cannot build the jail root")]
    Jail(#[from] jail::JailError),
    #[error("cannot harden the broker")]
    Harden(#[from] policy::PolicyError),
    #[error("cannot start the spawner")]
    Spawner(#[from] messages::SpawnError),
    #[error("cannot confine the broker: {0}")]
    Landlock(String),
    #[error("cannot confine the broker")]
    Seccomp(#[from] policy::seccomp::SeccompError),
    #[error("every session was killed")]
    Serve(#[from] broker::BrokerError),
}

fn main() {
    shared::logger::install("debuglantern-broker");
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{}", shared::chain(&e));
            match e {
                StartError::Usage(_) | StartError::NoSocket(_) | StartError::NotInUserNs => 2,
                _ => 1,
            }
        }
    };
    std::process::exit(code);
}

fn run() -> Result<(), StartError> {
    let (session_uids, cgroups_arg, bundles) = parse_args(std::env::args().skip(1)).map_err(StartError::Usage)?;
    // Sanitise: nothing inherited but stdio and our socket.
    sys::close_all_except(&[SOCKET_FD]);
    let sock: OwnedFd = shared::os::adopt_fd(SOCKET_FD).map_err(StartError::NoSocket)?;
    // The broker always runs in a user namespace of its own (the launcher makes it); refuse
    // to build a jail root anywhere else, so it can never remount the host's tree.
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) if map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"] => {}
        _ => return Err(StartError::NotInUserNs),
    }
    // The cgroup directories are opened before the pivot: afterwards there is no /sys.
    let cgroups = cgroup::Cgroups::open(&cgroups_arg)?;
    let mut warnings = jail::enter_root(session_uids, bundles)?;
    // no_new_privs and not dumpable (inherited by every session), no core dumps.
    policy::identity::harden_process()?;
    policy::rlimits::apply(&policy::rlimits::daemon())?;
    // We are PID 1 of our namespace: orphans come to us (a debug helper's gdbserver, for
    // one). The kernel reaps them if SIGCHLD is ignored; a zombie left here would keep its
    // session's namespace from ever finishing its teardown. (Our own child, the spawner,
    // is watched through its socket, not waited for.)
    sys::set_sigchld(false);
    // Fork the spawner while we are unconfined, then confine ourselves: landlock (only the
    // cgroup directories), then the seccomp allow list (no fork, exec, mount or socket).
    let spawner = spawner::start(&policy::seccomp::session(), &policy::seccomp::spawner())?;
    if let Some(w) = policy::landlock::broker(&cgroups.dir_fds()).map_err(StartError::Landlock)? {
        warnings.push(w);
    }
    policy::seccomp::install(&policy::seccomp::broker())?;
    broker::Broker::new(sock, spawner, session_uids, warnings, cgroups)?.run()?;
    Ok(())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(u32, String, Option<std::path::PathBuf>), String> {
    let (mut uids, mut cgroups, mut bundles) = (None, String::new(), None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--session-uids" => {
                let v = args.next().ok_or("--session-uids needs a value")?;
                uids = Some(v.parse::<u32>().map_err(|e| format!("--session-uids {v}: {e}"))?);
            }
            "--cgroups" => cgroups = args.next().ok_or("--cgroups needs a value")?,
            "--bundles" => bundles = Some(args.next().ok_or("--bundles needs a path")?.into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((uids.ok_or("missing --session-uids")?, cgroups, bundles))
}
