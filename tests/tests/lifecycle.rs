//! The control protocol and the session state machine, against the real daemon over real
//! TCP, read through the protocol's own reply types. All tests need root (the daemon
//! builds namespaces and uid maps).

use proto::reply::{Deleted, Exit, Kind, Loaded, LogEnd, Logs, State, Stopped};
use proto::Code;
use std::time::{Duration, Instant};
use tests::{c_program, programs, require_root, Daemon};

const TEN_S: Duration = Duration::from_secs(10);

#[test]
fn root_hello_reports_server_protocol_limits_and_warnings() {
    if !require_root("root_hello_reports_server_protocol_limits_and_warnings") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let h = c.hello();
    assert_eq!(h.server, "debuglantern");
    assert_eq!(h.protocol, 1);
    assert!(!h.auth_required);
    assert_eq!(h.limits.max_sessions, 64);
    assert!(!h.version.is_empty());
    // Case-insensitive, \r ignored.
    let _: proto::reply::Hello = c.call("hello\r");
}

#[test]
fn root_run_program_capture_output_and_exit_status() {
    if !require_root("root_run_program_capture_output_and_exit_status") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let bin = c_program("hello", programs::HELLO, false);
    c.send_raw(format!("UPLOAD {}\n", bin.len()).as_bytes());
    c.send_raw(&bin);
    let up: Loaded = c.read_as("UPLOAD");
    assert_eq!((up.state, up.kind, up.size), (State::Loaded, Kind::Binary, bin.len() as u64));
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bin))
    };
    assert_eq!(up.sha256, sha);
    let elf = up.elf.as_ref().expect("an ELF");
    assert_eq!(elf.class, "ELF64");
    assert!(!elf.is_static);
    assert!(elf.interpreter.as_deref().unwrap().starts_with('/'));
    let id = up.id.to_string();

    let st = c.start(&id, r#"{"args":["a b","c"]}"#);
    assert_eq!((st.state, st.ns_pid), (State::Running, 2));
    let s = c.wait_for(&id, State::Stopped, TEN_S);
    assert_eq!(s.summary.exit, Some(Exit::Code(7)));
    assert_eq!(s.runs, 1);
    assert_eq!(s.sha256, sha);
    let logs: Logs = c.call(&format!("LOGS {id}"));
    assert!(logs.data.contains("hello from the rig, 3 args"), "{}", logs.data);
    assert!(logs.data.contains("arg[1]=a b") && logs.data.contains("arg[2]=c"), "{}", logs.data);
    assert!(logs.data.contains("to stderr"), "{}", logs.data);
    assert_eq!(logs.dropped, 0);
    assert_eq!(s.output.stderr_bytes, "to stderr\n".len() as u64);

    // LIST shows it; a STOPPED session can run again.
    let list = c.list();
    assert_eq!(list.sessions.len(), 1);
    assert_eq!((list.sessions[0].id, list.sessions[0].exit), (up.id, Some(Exit::Code(7))));
    assert_eq!(c.start(&id, "").state, State::Running);
    assert_eq!(c.wait_for(&id, State::Stopped, TEN_S).runs, 2);
    assert!(c.call::<Deleted>(&format!("DELETE {id}")).deleted);
    assert_eq!(c.refused(&format!("STATUS {id}")).error, Code::NotFound);
    assert!(c.list().sessions.is_empty());
}

#[test]
fn root_static_binary_and_environment() {
    if !require_root("root_static_binary_and_environment") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let bin = c_program("env_static", programs::ENV, true);
    c.send_raw(format!("UPLOAD {}\n", bin.len()).as_bytes());
    c.send_raw(&bin);
    let up: Loaded = c.read_as("UPLOAD");
    let elf = up.elf.as_ref().expect("an ELF");
    assert!(elf.is_static && elf.interpreter.is_none(), "{up:?}");
    let id = up.id.to_string();
    // Default environment: minimal PATH, HOME, TERM.
    c.start(&id, "");
    c.wait_for(&id, State::Stopped, TEN_S);
    let out = c.output(&id);
    let mut keys: Vec<&str> = out.lines().map(|l| l.split('=').next().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["HOME", "PATH", "TERM"], "{out}");
    // A given environment is the whole environment.
    c.start(&id, r#"{"env":{"FOO":"bar baz"}}"#);
    c.wait_for(&id, State::Stopped, TEN_S);
    assert_eq!(c.output(&id), "FOO=bar baz\n");
}

#[test]
fn root_state_machine_is_exact() {
    if !require_root("root_state_machine_is_exact") {
        return;
    }
    let d = Daemon::start(&["--stop-grace", "1s"]);
    let mut c = d.client();
    let id = c.load(&c_program("sleeper", programs::SLEEPER, false));
    // LOADED: STOP/KILL are invalid and name the state.
    for cmd in ["STOP", "KILL"] {
        let e = c.refused(&format!("{cmd} {id}"));
        assert_eq!(e.error, Code::InvalidState, "{e}");
        assert!(e.message.contains("LOADED"), "{e}");
    }
    assert_eq!(c.start(&id, "").state, State::Running);
    let e = c.refused(&format!("START {id}"));
    assert_eq!(e.error, Code::InvalidState);
    assert!(e.message.contains("RUNNING"), "{e}");
    // STOP: SIGTERM kills the default-handling program.
    let r: Stopped = c.call(&format!("STOP {id}"));
    assert_eq!((r.state, r.exit), (State::Stopped, Some(Exit::Signal(15))));
    assert_eq!(c.refused(&format!("STOP {id}")).error, Code::InvalidState);
    // Restart with a SIGTERM handler: the program's own exit code is reported.
    c.start(&id, r#"{"args":["term"]}"#);
    wait_output(&mut c, &id, "ready");
    assert_eq!(c.call::<Stopped>(&format!("STOP {id}")).exit, Some(Exit::Code(3)));
    // KILL.
    c.start(&id, "");
    assert_eq!(c.call::<Stopped>(&format!("KILL {id}")).exit, Some(Exit::Signal(9)));
    // DELETE of a running session ends it.
    let pid = c.start(&id, "").pid.unwrap();
    assert!(tests::alive(pid));
    assert!(c.call::<Deleted>(&format!("DELETE {id}")).deleted);
    assert!(tests::wait_gone(pid, Duration::from_secs(5)), "program survived DELETE");
    assert_eq!(c.refused(&format!("START {id}")).error, Code::NotFound);
}

fn wait_output(c: &mut tests::Client, id: &str, needle: &str) {
    let end = Instant::now() + TEN_S;
    while Instant::now() < end {
        if c.output(id).contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {needle:?} in the output of {id}");
}

#[test]
fn root_stop_grace_never_blocks_other_clients() {
    if !require_root("root_stop_grace_never_blocks_other_clients") {
        return;
    }
    let d = Daemon::start(&["--stop-grace", "3s"]);
    let mut c = d.client();
    let id = c.load(&c_program("sleeper", programs::SLEEPER, false));
    c.start(&id, r#"{"args":["ignore"]}"#);
    wait_output(&mut c, &id, "ready");
    let t0 = Instant::now();
    c.send_raw(format!("STOP {id}\n").as_bytes());
    // While the STOP waits out its grace period, another client is served at once.
    let mut other = d.client();
    let t1 = Instant::now();
    other.list();
    assert_eq!(other.status(&id).summary.state, State::Running);
    assert!(t1.elapsed() < Duration::from_secs(2), "LIST waited for the STOP: {:?}", t1.elapsed());
    let r: Stopped = c.read_as("STOP");
    assert_eq!(r.exit, Some(Exit::Signal(9)), "SIGTERM was ignored, so SIGKILL");
    assert!(t0.elapsed() >= Duration::from_millis(2900), "grace not honoured: {:?}", t0.elapsed());
}

#[test]
fn root_whole_process_tree_is_killed() {
    if !require_root("root_whole_process_tree_is_killed") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&c_program("forker", programs::FORKER, false));
    let parent = c.start(&id, "").pid.unwrap();
    wait_output(&mut c, &id, "child=");
    // The forked child: find it among the parent's children on the host.
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap();
    let child: i32 = children.split_whitespace().next().expect("a child").parse().unwrap();
    assert!(tests::alive(child));
    assert_eq!(c.call::<Stopped>(&format!("KILL {id}")).state, State::Stopped);
    assert!(tests::wait_gone(parent, Duration::from_secs(5)));
    assert!(tests::wait_gone(child, Duration::from_secs(5)), "a forked child outlived KILL");
}

#[test]
fn root_logs_follow_streams_until_exit() {
    if !require_root("root_logs_follow_streams_until_exit") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&c_program("ticker", programs::TICKER, false));
    c.start(&id, r#"{"args":["10"]}"#);
    c.send_raw(format!("LOGS {id} --follow\nLIST\n").as_bytes());
    let mut text = String::new();
    let mut chunks = 0;
    let end = loop {
        match c.read_as::<proto::reply::FollowLine>("LOGS --follow") {
            proto::reply::FollowLine::Chunk(ch) => {
                chunks += 1;
                text.push_str(&ch.data);
            }
            proto::reply::FollowLine::End(e) => break e,
        }
    };
    assert!(matches!(end, LogEnd::Ended { state: State::Stopped, exit: Some(Exit::Code(0)), .. }), "{end:?}");
    let expect: String = (0..10).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(text, expect);
    assert!(chunks > 1, "output was not streamed as it came");
    // The pipelined LIST is answered after the stream.
    let _: proto::reply::List = c.read_as("LIST");
}

#[test]
fn root_pipelined_commands_answer_in_order() {
    if !require_root("root_pipelined_commands_answer_in_order") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let bin = c_program("hello", programs::HELLO, false);
    // One write: an upload, its bytes, and commands after it, including a slow START.
    let mut batch = format!("HELLO\nUPLOAD {}\n", bin.len()).into_bytes();
    batch.extend_from_slice(&bin);
    batch.extend_from_slice(b"LIST\nFROB\n\nSTATUS 00000000-0000-0000-0000-000000000000\nhello\n");
    c.send_raw(&batch);
    assert_eq!(c.read_as::<proto::reply::Hello>("HELLO").server, "debuglantern");
    assert_eq!(c.read_as::<Loaded>("UPLOAD").state, State::Loaded);
    assert_eq!(c.read_as::<proto::reply::List>("LIST").sessions.len(), 1);
    // The refusals, as they are on the wire.
    assert_eq!(c.read()["error"], "unknown_command");
    assert_eq!(c.read()["error"], "not_found");
    assert_eq!(c.read_as::<proto::reply::Hello>("hello").protocol, 1);
}

#[test]
fn root_many_concurrent_clients() {
    if !require_root("root_many_concurrent_clients") {
        return;
    }
    let d = Daemon::start(&[]);
    let bin = c_program("hello", programs::HELLO, false);
    let addr = d.addr;
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let bin = bin.clone();
            std::thread::spawn(move || {
                let mut c = tests::Client::connect(addr);
                let id = c.load(&bin);
                c.start(&id, "");
                let s = c.wait_for(&id, State::Stopped, Duration::from_secs(20));
                assert_eq!(s.summary.exit, Some(Exit::Code(7)));
                assert!(c.call::<Deleted>(&format!("DELETE {id}")).deleted);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(d.client().list().sessions.is_empty());
}

#[test]
fn root_daemon_installed_under_tmp_still_starts() {
    if !require_root("root_daemon_installed_under_tmp_still_starts") {
        return;
    }
    // The bundle store is mounted over /tmp in the frontend's namespace: binaries that live
    // below /tmp (a checkout there) must be opened before that.
    let dir = std::path::Path::new("/tmp").join(format!("dl-under-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for b in ["debuglantern", "debuglantern-broker"] {
        std::fs::copy(tests::bin_dir().join(b), dir.join(b)).unwrap();
    }
    let mut child = std::process::Command::new(dir.join("debuglantern"))
        .args(["--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(line.contains("listening on"), "{line}");
}

#[test]
fn root_non_loopback_listening_needs_an_explicit_insecure_flag() {
    if !require_root("root_non_loopback_listening_needs_an_explicit_insecure_flag") {
        return;
    }
    // Refused before anything is bound (so no socket is ever opened on 0.0.0.0 here).
    let out = std::process::Command::new(tests::bin_dir().join("debuglantern"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without authentication") && err.contains("--insecure-no-auth"), "{err}");
}
