//! Faults from outside (SPEC §2): `kill -9` of a gdbserver, of a session's program and of
//! its init, in the states where it matters. The rig must report what happened, leave
//! nothing behind, and keep serving. (kill -9 of the frontend, broker and spawner are in
//! fail_closed.rs.) Needs root.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};
use tests::{c_program, proc_status, programs, require_root, wait_gone, Client, Daemon};

fn wait_state(c: &mut Client, id: &str, state: &str) -> serde_json::Value {
    c.wait_state(id, state, Duration::from_secs(10))
}

/// The host pid of the gdbserver attached to `program` (its tracer).
fn tracer_of(program: i32) -> i32 {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let t: i32 = proc_status(program, "TracerPid").and_then(|v| v.parse().ok()).unwrap_or(0);
        if t > 0 {
            return t;
        }
        assert!(Instant::now() < end, "no tracer attached to {program}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ticks(c: &mut Client, id: &str) -> usize {
    c.cmd(&format!("LOGS {id}"))["data"].as_str().unwrap_or("").matches("tick").count()
}

#[test]
fn root_kill_9_of_gdbserver_returns_the_session_to_running() {
    if !require_root("root_kill_9_of_gdbserver_returns_the_session_to_running") {
        return;
    }
    if !std::path::Path::new("/usr/bin/gdbserver").exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "gdbserver missing");
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&c_program("ticker_faults", programs::TICKER, false));
    let st = c.cmd(&format!(r#"START {id} {{"args":["100000"]}}"#));
    let program = st["pid"].as_i64().unwrap() as i32;
    assert_eq!(c.cmd(&format!("DEBUG {id}"))["state"], "DEBUGGING");
    let gdbserver = tracer_of(program);
    kill(Pid::from_raw(gdbserver), Signal::SIGKILL).unwrap();
    assert!(wait_gone(gdbserver, Duration::from_secs(5)));
    wait_state(&mut c, &id, "RUNNING");
    // The program was stopped by the attach; it runs on after its debugger died.
    let before = ticks(&mut c, &id);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ticks(&mut c, &id) > before, "the program stayed stopped after its debugger died");
    assert_eq!(c.cmd(&format!("DEBUG {id}"))["state"], "DEBUGGING", "debugging again works");
    assert_eq!(c.cmd(&format!("KILL {id}"))["exit"]["signal"], 9);
}

#[test]
fn root_kill_9_of_a_sessions_program_or_init_in_each_state() {
    if !require_root("root_kill_9_of_a_sessions_program_or_init_in_each_state") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&c_program("sleeper", programs::SLEEPER, false));
    // RUNNING, kill the program: STOPPED with signal 9.
    let program = c.cmd(&format!("START {id}"))["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(program), Signal::SIGKILL).unwrap();
    let s = wait_state(&mut c, &id, "STOPPED");
    assert_eq!(s["exit"]["signal"], 9, "{s}");
    // RUNNING, kill the session's init (the program's parent): the namespace goes with it.
    let program = c.cmd(&format!("START {id}"))["pid"].as_i64().unwrap() as i32;
    let init: i32 = proc_status(program, "PPid").unwrap().parse().unwrap();
    kill(Pid::from_raw(init), Signal::SIGKILL).unwrap();
    let s = wait_state(&mut c, &id, "STOPPED");
    assert_eq!(s["exit"]["signal"], 9, "{s}");
    assert!(wait_gone(program, Duration::from_secs(5)), "the program outlived its init");
    // DEBUGGING, kill the program: STOPPED, and gdbserver is gone too.
    if std::path::Path::new("/usr/bin/gdbserver").exists() {
        let program = c.cmd(&format!("START {id}"))["pid"].as_i64().unwrap() as i32;
        assert_eq!(c.cmd(&format!("DEBUG {id}"))["state"], "DEBUGGING");
        let gdbserver = tracer_of(program);
        kill(Pid::from_raw(program), Signal::SIGKILL).unwrap();
        let s = wait_state(&mut c, &id, "STOPPED");
        assert_eq!(s["exit"]["signal"], 9, "{s}");
        assert!(wait_gone(gdbserver, Duration::from_secs(5)), "gdbserver outlived its program");
    }
    // The rig serves on, and the session runs again.
    assert_eq!(d.client().cmd("HELLO")["ok"], true);
    assert_eq!(c.cmd(&format!("START {id}"))["state"], "RUNNING");
    assert_eq!(c.cmd(&format!("KILL {id}"))["exit"]["signal"], 9);
}
