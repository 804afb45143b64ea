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
mod init;
mod jail;
mod spawner;
mod sys;

use std::os::fd::OwnedFd;

/// The descriptor the launcher puts the broker's socket on.
const SOCKET_FD: i32 = 3;

fn main() {
    let (session_uids, cgroups_arg, bundles) = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("debuglantern-broker: {e}");
            std::process::exit(2);
        }
    };
    // Sanitise: nothing inherited but stdio and our socket.
    sys::close_all_except(&[SOCKET_FD]);
    let sock: OwnedFd = match shared::os::adopt_fd(SOCKET_FD) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("debuglantern-broker: no socket on fd {SOCKET_FD} ({e}); this binary is started by debuglantern");
            std::process::exit(2);
        }
    };
    // The broker always runs in a user namespace of its own (the launcher makes it); refuse
    // to build a jail root anywhere else, so it can never remount the host's tree.
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) if map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"] => {}
        _ => {
            eprintln!("debuglantern-broker: not in a user namespace of its own; it is started by debuglantern");
            std::process::exit(2);
        }
    }
    // The cgroup directories are opened before the pivot: afterwards there is no /sys.
    let cgroups = match cgroup::Cgroups::open(&cgroups_arg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("debuglantern-broker: cgroups: {e}");
            std::process::exit(1);
        }
    };
    let mut warnings = match jail::enter_root(session_uids, bundles) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("debuglantern-broker: cannot build the jail root: {e}");
            std::process::exit(1);
        }
    };
    // no_new_privs and not dumpable (inherited by every session), no core dumps.
    if let Err(e) = policy::identity::harden_process().and_then(|()| policy::rlimits::apply(&policy::rlimits::daemon()))
    {
        eprintln!("debuglantern-broker: {e}");
        std::process::exit(1);
    }
    // We are PID 1 of our namespace: orphans come to us (a debug helper's gdbserver, for
    // one). The kernel reaps them if SIGCHLD is ignored; a zombie left here would keep its
    // session's namespace from ever finishing its teardown. (Our own child, the spawner,
    // is watched through its socket, not waited for.)
    sys::set_sigchld(false);
    // Fork the spawner while we are unconfined, then confine ourselves: landlock (only the
    // cgroup directories), then the seccomp allow list (no fork, exec, mount or socket).
    let confined = (|| -> Result<OwnedFd, String> {
        let session_seccomp = policy::seccomp::session();
        let spawner_seccomp = policy::seccomp::spawner();
        let spawner = spawner::start(&session_seccomp, &spawner_seccomp)?;
        let own = policy::seccomp::broker();
        if let Some(w) = policy::landlock::broker(&cgroups.dir_fds())? {
            warnings.push(w);
        }
        policy::seccomp::install(&own).map_err(|e| e.to_string())?;
        Ok(spawner)
    })();
    let spawner = match confined {
        Ok(s) => s,
        Err(e) => {
            eprintln!("debuglantern-broker: cannot confine the broker: {e}");
            std::process::exit(1);
        }
    };
    let code = match broker::Broker::new(sock, spawner, session_uids, warnings, cgroups).and_then(|b| b.run()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("debuglantern-broker: {}; every session was killed", error_chain(&e));
            1
        }
    };
    std::process::exit(code);
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

/// "outer: inner: innermost".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}
