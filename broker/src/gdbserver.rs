//! gdbserver inside a session: a helper forked by the spawner joins the session's
//! namespaces and forks gdbserver there, which becomes the session's uid under the
//! session's seccomp filter and runs `--once --attach - <pid>` with its stdio on a stream
//! socketpair. It never listens on TCP.

use crate::messages::{sys_err, InitMsg, SpawnError, SpawnReply};
use crate::sys;
use shared::Tube;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

/// Where gdbserver is (inside the jail root: the host's /usr, read-only).
pub const GDBSERVER: &str = "/usr/bin/gdbserver";

/// Starts `gdbserver --once --attach - <target>` inside the session of `init_pidfd`: a
/// helper joins the session's namespaces, forks gdbserver's process (so that it is in the
/// session's PID namespace, where the init reaps it), sends its pidfd back and exits.
/// gdbserver runs as the session's uid, without capabilities, under the session's seccomp
/// filter, with its stdio on a socketpair whose other end goes to the frontend. It never
/// listens on TCP.
pub fn attach(
    init_pidfd: OwnedFd,
    ns_uid: Option<u32>,
    target: u32,
    session_seccomp: &[seccompiler::BpfProgram],
) -> Result<SpawnReply, SpawnError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    if !std::path::Path::new(GDBSERVER).exists() {
        return Err(SpawnError::Refused(format!(
            "gdbserver is not installed on the rig ({GDBSERVER}); install it (apt-get install gdbserver)"
        )));
    }
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(sys_err("socketpair"))?;
    let (back_ours, back_theirs) = shared::tube::socketpair().map_err(sys_err("socketpair"))?;
    match sys::fork_into(0).map_err(sys_err("fork"))? {
        sys::Forked::Child => {
            drop(ours);
            drop(back_ours);
            let Ok(mut back) = Tube::new(back_theirs) else { sys::exit_now(1) };
            let fail = |back: &mut Tube, message: String| -> ! {
                let _ = back.send(0, InitMsg::Failed { message });
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
                Ok(sys::Forked::Child) => exec_gdbserver(theirs, ns_uid, target, session_seccomp),
                Ok(sys::Forked::Parent { pid, pidfd }) => {
                    let _ = back
                        .send(0, InitMsg::Running { ns_pid: pid.as_raw() as u32, pidfd, tty: None, debugger: None });
                    sys::exit_now(0)
                }
            }
        }
        sys::Forked::Parent { .. } => {
            drop(theirs);
            drop(back_theirs);
            let mut back = Tube::new(back_ours).map_err(|e| SpawnError::Helper(e.to_string()))?;
            let mut pfd = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&back), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(5000u16));
            match back.recv::<InitMsg>() {
                Ok(Some((_, InitMsg::Running { pidfd, .. }))) => {
                    Ok(SpawnReply::Debugging { gdb_pidfd: pidfd, sock: ours })
                }
                Ok(Some((_, InitMsg::Failed { message }))) => Err(SpawnError::Helper(message)),
                _ => Err(SpawnError::Helper("the debug helper died".into())),
            }
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
    if sys::take_identity(ns_uid).is_err() || std::env::set_current_dir("/").is_err() {
        sys::exit_now(126);
    }
    if policy::seccomp::install(seccomp).is_err() {
        sys::exit_now(126);
    }
    let target = CString::new(target.to_string()).expect("digits");
    let argv = [c"gdbserver".to_owned(), c"--once".to_owned(), c"--attach".to_owned(), c"-".to_owned(), target];
    let path = CString::new(GDBSERVER).expect("no NUL");
    let env: [CString; 0] = [];
    let _ = nix::unistd::execve(&path, &argv, &env);
    sys::exit_now(127)
}

/// gdbserver's argv and environment to launch `path` (START --debug), as
/// `gdbserver --once --wrapper W -- - PATH ARGS...` would from a shell: the program starts
/// under gdbserver, stopped at its entry with no signal to swallow, and with its own
/// exit status. gdbserver talks the remote protocol on its fds 0 and 1 and writes its
/// messages to fd 2; the program's stdin, stdout and stderr wait on fds 3, 4 and 5.
///
/// `--wrapper` runs only through a shell (gdbserver execs `$SHELL -c "exec W PATH ARGS"`,
/// quoting the arguments itself), so `SHELL` is `/bin/sh` for gdbserver. The wrapper moves
/// fds 3-5 onto the program's 0-2 (gdbserver in stdio mode gives the program /dev/null and
/// its own stderr) and, through `env`, gives the program the environment asked for: the
/// user's `SHELL` back, or none. `env` is also the one exec gdbserver expects of a wrapper.
pub fn launch_command(path: &std::ffi::CStr, args: &[CString], env: &[CString]) -> (Vec<CString>, Vec<CString>) {
    let user_shell = env.iter().find_map(|e| e.to_bytes().strip_prefix(b"SHELL="));
    let restore = match user_shell {
        Some(v) => format!("SHELL={}", shell_quote(v)),
        None => "-u SHELL".to_string(),
    };
    let wrapper = format!("<&3 >&4 2>&5 3<&- 4>&- 5>&- /usr/bin/env {restore} --");
    let mut argv: Vec<CString> = ["gdbserver", "--once", "--wrapper", &wrapper, "--", "-"]
        .iter()
        .map(|a| CString::new(*a).expect("no NUL"))
        .collect();
    argv.push(path.to_owned());
    argv.extend(args.iter().cloned());
    let mut genv: Vec<CString> = env.iter().filter(|e| !e.to_bytes().starts_with(b"SHELL=")).cloned().collect();
    genv.push(c"SHELL=/bin/sh".to_owned());
    (argv, genv)
}

/// `v` as one word of `sh`: single-quoted, each `'` as `'\''`. (A NUL cannot be in a
/// CString.)
fn shell_quote(v: &[u8]) -> String {
    let mut q = String::from("'");
    for ch in String::from_utf8_lossy(v).chars() {
        if ch == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(ch);
        }
    }
    q.push('\'');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_keeps_the_users_shell_for_the_program() {
        let env = [c"A=1".to_owned(), c"SHELL=/bin/it's".to_owned()];
        let (argv, genv) = launch_command(c"/bundle/p", &[c"a b".to_owned()], &env);
        let words: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(words[..3], ["gdbserver", "--once", "--wrapper"]);
        assert!(words[3].ends_with("/usr/bin/env SHELL='/bin/it'\\''s' --"), "{}", words[3]);
        assert_eq!(words[4..], ["--", "-", "/bundle/p", "a b"]);
        assert_eq!(genv, [c"A=1".to_owned(), c"SHELL=/bin/sh".to_owned()]);
        let (argv, _) = launch_command(c"/bundle/p", &[], &[]);
        assert!(argv[3].to_str().unwrap().ends_with("env -u SHELL --"));
    }
}
