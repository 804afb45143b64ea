//! Starts the broker: a `clone3` into new user, PID, mount, network, IPC and UTS
//! namespaces, the user namespace's maps written from here, then `fexecve` of the broker
//! binary (opened before the fork, so the broker's uid needs no right to the path), with
//! its end of the socketpair on fd 3 and an empty environment.
//!
//! The broker is PID 1 of its PID namespace, and every session lives in a namespace nested
//! inside it: if the broker dies for any reason, the kernel kills every session process.

use crate::config::Config;
use nix::unistd::{Gid, Uid};
use shared::os::{fork_into, Forked};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// A started broker.
#[derive(Debug)]
pub struct Broker {
    /// Our end of the socketpair.
    pub sock: OwnedFd,
    /// A pidfd of the broker (readable when it exits).
    pub pidfd: OwnedFd,
    /// Its pid.
    pub pid: i32,
}

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The binary is missing.
    #[error("cannot open the broker binary {path} (build it with `cargo build --workspace`, or pass --broker PATH)")]
    Binary {
        /// Where we looked.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}")]
    Sys {
        /// What.
        what: String,
        /// Errno.
        source: nix::Error,
    },
    /// User namespaces are not available.
    #[error("cannot create the broker's user namespace ({0}); debuglantern needs user namespaces (check kernel.unprivileged_userns_clone / user.max_user_namespaces, or run as root)")]
    NoUserNs(nix::Error),
    /// Writing the uid/gid maps failed.
    #[error("cannot write the broker's {file}")]
    Map {
        /// Which file.
        file: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Sys { what, source }
}

/// Where the broker binary is: `--broker`, else next to our own executable.
pub fn broker_path(cfg: &Config) -> PathBuf {
    cfg.broker.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("debuglantern-broker")))
            .unwrap_or_else(|| PathBuf::from("debuglantern-broker"))
    })
}

/// Opens the broker binary. Done first thing: the bundle store is mounted over `/tmp` in
/// our mount namespace, and the binary may live below it (a checkout in /tmp).
pub fn open_binary(cfg: &Config) -> Result<File, LaunchError> {
    let path = broker_path(cfg);
    File::open(&path).map_err(|source| LaunchError::Binary { path, source })
}

/// Starts the broker (`binary`, from [`open_binary`]) with the cgroup directories prepared
/// for it (`memory=..,pids=..`, empty for none) and the bundle store (a directory it binds
/// into its jail root). Must be called while the process is single-threaded.
pub fn spawn(cfg: &Config, binary: File, cgroups: &str, bundles: &std::path::Path) -> Result<Broker, LaunchError> {
    let (ours, theirs) = shared::tube::socketpair().map_err(sys("socketpair"))?;
    let (sync_r, sync_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let root = Uid::effective().is_root();
    let session_uids = if root { cfg.max_sessions as u32 } else { 0 };
    let mut argv = vec![
        c"debuglantern-broker".to_owned(),
        c"--session-uids".to_owned(),
        CString::new(session_uids.to_string()).expect("digits"),
        c"--bundles".to_owned(),
        CString::new(bundles.as_os_str().as_encoded_bytes())
            .map_err(|_| LaunchError::Sys { what: "bundle store path".into(), source: nix::Error::EINVAL })?,
    ];
    if !cgroups.is_empty() {
        argv.push(c"--cgroups".to_owned());
        argv.push(
            CString::new(cgroups)
                .map_err(|_| LaunchError::Sys { what: "cgroup path".into(), source: nix::Error::EINVAL })?,
        );
    }
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    match fork_into(flags) {
        Err(e @ (nix::Error::EPERM | nix::Error::EINVAL | nix::Error::ENOSPC | nix::Error::EUSERS)) => {
            Err(LaunchError::NoUserNs(e))
        }
        Err(e) => Err(LaunchError::Sys { what: "clone3 of the broker".into(), source: e }),
        Ok(Forked::Child) => {
            drop(sync_w);
            drop(ours);
            broker_child(sync_r, theirs, binary, &argv)
        }
        Ok(Forked::Parent { pid, pidfd }) => {
            drop(sync_r);
            drop(theirs);
            let maps = write_maps(pid.as_raw(), root, cfg);
            if let Err(e) = maps {
                let _ = shared::os::pidfd_signal(std::os::fd::AsFd::as_fd(&pidfd), libc::SIGKILL);
                return Err(e);
            }
            File::from(sync_w).write_all(b"1").map_err(|e| LaunchError::Map { file: "sync pipe", source: e })?;
            Ok(Broker { sock: ours, pidfd, pid: pid.as_raw() })
        }
    }
}

fn write_maps(pid: i32, root: bool, cfg: &Config) -> Result<(), LaunchError> {
    let write = |file: &'static str, text: &str| {
        std::fs::write(format!("/proc/{pid}/{file}"), text).map_err(|source| LaunchError::Map { file, source })
    };
    if root {
        let plan = policy::identity::IdPlan {
            frontend_uid: 1, // checked separately when the frontend drops
            uid_base: cfg.uid_base,
            session_slots: cfg.max_sessions as u32,
        };
        let map = plan.uid_map();
        write("uid_map", &map)?;
        write("gid_map", &map)
    } else {
        let (uid, gid) = (Uid::effective().as_raw(), Gid::effective().as_raw());
        write("setgroups", "deny")?;
        write("uid_map", &format!("0 {uid} 1\n"))?;
        write("gid_map", &format!("0 {gid} 1\n"))
    }
}

/// In the new namespaces: wait for the maps, become the namespace's root, exec the broker.
fn broker_child(sync_r: OwnedFd, sock: OwnedFd, binary: File, argv: &[CString]) -> ! {
    let fail = |msg: String| -> ! {
        eprintln!("debuglantern: starting the broker: {msg}");
        shared::os::exit_now(127)
    };
    let mut b = [0u8; 1];
    if File::from(sync_r).read_exact(&mut b).is_err() {
        fail("the launcher went away".into());
    }
    let zero_g = Gid::from_raw(0);
    let zero_u = Uid::from_raw(0);
    if let Err(e) =
        nix::unistd::setresgid(zero_g, zero_g, zero_g).and_then(|_| nix::unistd::setresuid(zero_u, zero_u, zero_u))
    {
        fail(format!("becoming root of the user namespace: {e}"));
    }
    // Own session: a Ctrl-C on the daemon's terminal must reach only the frontend.
    let _ = nix::unistd::setsid();
    // Move both out of the way first (either may sit on fd 3), then put the socket on fd 3;
    // dup2 leaves it open across exec.
    use nix::fcntl::{fcntl, FcntlArg};
    let high = |fd: &dyn AsRawFd| match fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(64)) {
        Ok(fd) => fd,
        Err(e) => fail(format!("dup: {e}")),
    };
    let (bin, sock_hi) = (high(&binary), high(&sock));
    // The broker never reads stdin or writes stdout (under --stdio they are the client's
    // stream); only stderr stays, for its messages.
    match nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
        Ok(null) => {
            if nix::unistd::dup2(null, 0).and_then(|_| nix::unistd::dup2(null, 1)).is_err() {
                fail("pointing stdin and stdout at /dev/null".into());
            }
            if null > 1 {
                let _ = nix::unistd::close(null);
            }
        }
        Err(e) => fail(format!("opening /dev/null: {e}")),
    }
    if let Err(e) = nix::unistd::dup2(sock_hi, 3) {
        fail(format!("placing the socket on fd 3: {e}"));
    }
    let env: [CString; 0] = [];
    let Err(e) = nix::unistd::fexecve(bin, argv, &env);
    fail(format!("exec: {e}"))
}
