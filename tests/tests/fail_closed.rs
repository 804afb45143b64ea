//! SPEC §2: if either half dies, or the daemon gets SIGTERM, every session process is
//! killed and reaped and nothing is left running. Also the privileges of each process.
//! Needs root.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;
use tests::{c_program, proc_status, programs, require_root, wait_gone, Daemon};

/// Starts two sleeping sessions; returns their host pids.
fn two_sessions(d: &Daemon) -> Vec<i32> {
    let mut c = d.client();
    let bin = c_program("sleeper", programs::SLEEPER, false);
    (0..2)
        .map(|_| {
            let id = c.load(&bin);
            let r = c.cmd(&format!(r#"START {id} {{"args":["ignore"]}}"#));
            assert_eq!(r["state"], "RUNNING", "{r}");
            r["pid"].as_i64().unwrap() as i32
        })
        .collect()
}

#[test]
fn root_kill_9_of_the_frontend_kills_broker_and_sessions() {
    if !require_root("root_kill_9_of_the_frontend_kills_broker_and_sessions") {
        return;
    }
    let mut d = Daemon::start(&[]);
    let pids = two_sessions(&d);
    kill(Pid::from_raw(d.pid()), Signal::SIGKILL).unwrap();
    d.wait_exit(Duration::from_secs(5)).expect("frontend exits");
    assert!(wait_gone(d.broker_pid, Duration::from_secs(5)), "broker outlived the frontend");
    for p in pids {
        assert!(wait_gone(p, Duration::from_secs(5)), "session {p} outlived the frontend");
    }
}

#[test]
fn root_kill_9_of_the_broker_kills_sessions_and_the_daemon_exits_non_zero() {
    if !require_root("root_kill_9_of_the_broker_kills_sessions_and_the_daemon_exits_non_zero") {
        return;
    }
    let mut d = Daemon::start(&[]);
    let pids = two_sessions(&d);
    kill(Pid::from_raw(d.broker_pid), Signal::SIGKILL).unwrap();
    let st = d.wait_exit(Duration::from_secs(5)).expect("daemon exits when the broker dies");
    assert!(!st.success(), "daemon exited 0 after losing its broker");
    assert!(d.log().contains("broker"), "log says why: {}", d.log());
    for p in pids {
        assert!(wait_gone(p, Duration::from_secs(5)), "session {p} outlived the broker");
    }
}

#[test]
fn root_kill_9_of_the_spawner_fails_closed() {
    if !require_root("root_kill_9_of_the_spawner_fails_closed") {
        return;
    }
    let mut d = Daemon::start(&[]);
    let pids = two_sessions(&d);
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", d.broker_pid)).unwrap();
    let spawner: i32 = children.split_whitespace().next().expect("the broker's spawner").parse().unwrap();
    kill(Pid::from_raw(spawner), Signal::SIGKILL).unwrap();
    let st = d.wait_exit(Duration::from_secs(5)).expect("daemon exits when the spawner dies");
    assert!(!st.success());
    assert!(wait_gone(d.broker_pid, Duration::from_secs(5)));
    for p in pids {
        assert!(wait_gone(p, Duration::from_secs(5)), "session {p} outlived the spawner");
    }
}

#[test]
fn root_sigterm_stops_sessions_gracefully_and_exits_zero() {
    if !require_root("root_sigterm_stops_sessions_gracefully_and_exits_zero") {
        return;
    }
    let mut d = Daemon::start(&["--stop-grace", "1s"]);
    let pids = two_sessions(&d); // they ignore SIGTERM: SIGKILL after the grace
    kill(Pid::from_raw(d.pid()), Signal::SIGTERM).unwrap();
    let st = d.wait_exit(Duration::from_secs(10)).expect("daemon exits on SIGTERM");
    assert!(st.success(), "exit status {st:?}; log:\n{}", d.log());
    assert!(wait_gone(d.broker_pid, Duration::from_secs(2)));
    for p in pids {
        assert!(wait_gone(p, Duration::from_secs(2)), "session {p} survived SIGTERM of the daemon");
    }
}

#[test]
fn root_privileges_of_frontend_broker_and_sessions() {
    if !require_root("root_privileges_of_frontend_broker_and_sessions") {
        return;
    }
    let d = Daemon::start(&[]);
    // Frontend: nobody, no capabilities, no_new_privs, not dumpable.
    assert_eq!(proc_status(d.pid(), "Uid").unwrap(), "65534\t65534\t65534\t65534");
    assert_eq!(proc_status(d.pid(), "CapEff").unwrap(), "0000000000000000");
    assert_eq!(proc_status(d.pid(), "CapPrm").unwrap(), "0000000000000000");
    assert_eq!(proc_status(d.pid(), "NoNewPrivs").unwrap(), "1");
    assert_eq!(proc_status(d.pid(), "Seccomp").unwrap(), "2", "frontend runs without its seccomp filter");
    // The event loop (the main thread) has its own filter on top of the process's; the
    // other threads (uploads, bundles, mDNS) only the process's.
    assert_eq!(proc_status(d.pid(), "Seccomp_filters").unwrap(), "2");
    let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .filter(|t| *t != d.pid())
        .collect();
    assert!(tasks.len() >= 2, "{tasks:?}");
    for t in tasks {
        let st = std::fs::read_to_string(format!("/proc/{}/task/{t}/status", d.pid())).unwrap();
        assert!(st.contains("Seccomp:\t2") && st.contains("Seccomp_filters:\t1"), "thread {t}: {st}");
    }
    // Broker: another non-root host uid, in its own user, PID, mount and network namespaces.
    let broker_uid = proc_status(d.broker_pid, "Uid").unwrap();
    let bu: u32 = broker_uid.split_whitespace().next().unwrap().parse().unwrap();
    assert!(bu != 0 && bu != 65534, "broker uid {bu}");
    for ns in ["user", "pid", "mnt", "net", "ipc", "uts"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{}/ns/{ns}", d.broker_pid)).unwrap();
        assert_ne!(mine, its, "broker shares the host's {ns} namespace");
    }
    assert_eq!(proc_status(d.broker_pid, "NoNewPrivs").unwrap(), "1");
    assert_eq!(proc_status(d.broker_pid, "Seccomp").unwrap(), "2", "broker runs without its seccomp filter");
    assert_eq!(proc_status(d.broker_pid, "Seccomp_filters").unwrap(), "1");
    // The spawner (the broker's one child) has a filter of its own.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", d.broker_pid)).unwrap();
    let spawner: i32 = children.split_whitespace().next().expect("the broker's spawner").parse().unwrap();
    assert_eq!(proc_status(spawner, "Seccomp").unwrap(), "2", "the spawner runs without a seccomp filter");
    assert_eq!(proc_status(spawner, "Seccomp_filters").unwrap(), "1");
    // The broker's root is the jail's tmpfs, not the host's.
    let root: Vec<String> = std::fs::read_dir(format!("/proc/{}/root", d.broker_pid))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!root.iter().any(|n| n == "home" || n == "root" || n == "var"), "broker sees the host root: {root:?}");
    // Sessions: distinct non-root host uids, no capabilities, own namespaces.
    let pids = two_sessions(&d);
    let uids: Vec<String> = pids.iter().map(|p| proc_status(*p, "Uid").unwrap()).collect();
    assert_ne!(uids[0], uids[1], "two concurrent sessions share a uid");
    for (p, u) in pids.iter().zip(&uids) {
        let u: u32 = u.split_whitespace().next().unwrap().parse().unwrap();
        assert!(u != 0 && u != bu && u != 65534, "session uid {u}");
        assert_eq!(proc_status(*p, "CapEff").unwrap(), "0000000000000000");
        assert_eq!(proc_status(*p, "CapBnd").unwrap(), "0000000000000000");
        assert_eq!(proc_status(*p, "NoNewPrivs").unwrap(), "1");
        // The spawner's deny list, the exit notifier, and the session's allowlist.
        assert_eq!(proc_status(*p, "Seccomp_filters").unwrap(), "3");
        let its = std::fs::read_link(format!("/proc/{p}/ns/pid")).unwrap();
        let broker = std::fs::read_link(format!("/proc/{}/ns/pid", d.broker_pid)).unwrap();
        assert_ne!(its, broker, "session shares the broker's PID namespace");
        // The program is pid 2 of its namespace (pid 1 is the session's init).
        let nspid = proc_status(*p, "NSpid").unwrap();
        assert!(nspid.ends_with("\t2"), "NSpid {nspid}");
    }
}

#[test]
fn root_strict_refuses_to_start_with_warnings_and_rootless_warns() {
    if !require_root("root_strict_refuses_to_start_with_warnings_and_rootless_warns") {
        return;
    }
    // As root nothing is degraded on this kind of host: --strict starts.
    let d = Daemon::start(&["--strict"]);
    assert_eq!(d.client().cmd("HELLO")["warnings"].as_array().unwrap().len(), 0);
    drop(d);
    // Rootless (as nobody, via setpriv): runs, and says what it could not have.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
        .arg(tests::bin_dir().join("debuglantern"))
        .args(["--listen", "127.0.0.1:0", "--strict"])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--strict") && err.contains("rootless"), "{err}");
    // Without --strict the rootless daemon serves, with the warning in HELLO.
    let d = Daemon::start_as(&["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--"], &[]);
    let mut c = d.client();
    let h = c.cmd("HELLO");
    assert!(h["warnings"].to_string().contains("rootless"), "{h}");
    let id = c.load(&c_program("hello", programs::HELLO, false));
    c.cmd(&format!("START {id}"));
    let s = c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert_eq!(s["exit"]["code"], 7, "{s}");
    assert_eq!(proc_status(d.pid(), "Uid").unwrap(), "65534\t65534\t65534\t65534");
}
