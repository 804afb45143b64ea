//! The control protocol and the session state machine, against the real daemon over real
//! TCP. All tests need root (the daemon builds namespaces and uid maps).

use serde_json::Value;
use std::time::{Duration, Instant};
use tests::{c_program, programs, require_root, Daemon};

#[test]
fn root_hello_reports_server_protocol_limits_and_warnings() {
    if !require_root("root_hello_reports_server_protocol_limits_and_warnings") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let h = c.cmd("HELLO");
    assert_eq!(h["ok"], true);
    assert_eq!(h["server"], "debuglantern");
    assert_eq!(h["protocol"], 1);
    assert_eq!(h["auth_required"], false);
    assert_eq!(h["limits"]["max_sessions"], 64);
    assert!(h["warnings"].is_array());
    assert!(h["version"].is_string());
    // Case-insensitive, \r ignored.
    assert_eq!(c.cmd("hello\r")["ok"], true);
}

#[test]
fn root_run_program_capture_output_and_exit_status() {
    if !require_root("root_run_program_capture_output_and_exit_status") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let bin = c_program("hello", programs::HELLO, false);
    let up = c.upload(&bin);
    assert_eq!(up["ok"], true, "{up}");
    assert_eq!(up["state"], "LOADED");
    assert_eq!(up["kind"], "binary");
    assert_eq!(up["size"], bin.len());
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bin))
    };
    assert_eq!(up["sha256"], sha);
    assert_eq!(up["elf"]["class"], "ELF64");
    assert_eq!(up["elf"]["static"], false);
    assert!(up["elf"]["interpreter"].as_str().unwrap().starts_with('/'));
    let id = up["id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok());

    let st = c.cmd(&format!(r#"START {id} {{"args":["a b","c"]}}"#));
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["state"], "RUNNING");
    assert_eq!(st["ns_pid"], 2);
    let s = c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert_eq!(s["exit"]["code"], 7);
    assert_eq!(s["runs"], 1);
    assert_eq!(s["sha256"], sha);
    let logs = c.cmd(&format!("LOGS {id}"));
    let data = logs["data"].as_str().unwrap();
    assert!(data.contains("hello from the rig, 3 args"), "{data}");
    assert!(data.contains("arg[1]=a b") && data.contains("arg[2]=c"), "{data}");
    assert!(data.contains("to stderr"), "{data}");
    assert_eq!(logs["dropped"], 0);
    assert_eq!(s["output"]["stderr_bytes"], "to stderr\n".len());

    // LIST shows it; a STOPPED session can run again.
    let list = c.cmd("LIST");
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["id"], id.as_str());
    assert_eq!(sessions[0]["exit"]["code"], 7);
    assert_eq!(c.cmd(&format!("START {id}"))["state"], "RUNNING");
    let s = c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert_eq!(s["runs"], 2);
    assert_eq!(c.cmd(&format!("DELETE {id}"))["deleted"], true);
    assert_eq!(c.cmd(&format!("STATUS {id}"))["error"], "not_found");
    assert_eq!(c.cmd("LIST")["sessions"].as_array().unwrap().len(), 0);
}

#[test]
fn root_static_binary_and_environment() {
    if !require_root("root_static_binary_and_environment") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let bin = c_program("env_static", programs::ENV, true);
    let up = c.upload(&bin);
    assert_eq!(up["elf"]["static"], true, "{up}");
    assert_eq!(up["elf"]["interpreter"], Value::Null);
    let id = up["id"].as_str().unwrap();
    // Default environment: minimal PATH, HOME, TERM.
    c.cmd(&format!("START {id}"));
    c.wait_state(id, "STOPPED", Duration::from_secs(10));
    let out = c.cmd(&format!("LOGS {id}"))["data"].as_str().unwrap().to_string();
    let mut keys: Vec<&str> = out.lines().map(|l| l.split('=').next().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["HOME", "PATH", "TERM"], "{out}");
    // A given environment is the whole environment.
    c.cmd(&format!(r#"START {id} {{"env":{{"FOO":"bar baz"}}}}"#));
    c.wait_state(id, "STOPPED", Duration::from_secs(10));
    assert_eq!(c.cmd(&format!("LOGS {id}"))["data"], "FOO=bar baz\n");
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
        let r = c.cmd(&format!("{cmd} {id}"));
        assert_eq!(r["error"], "invalid_state", "{r}");
        assert!(r["message"].as_str().unwrap().contains("LOADED"), "{r}");
    }
    assert_eq!(c.cmd(&format!("START {id}"))["state"], "RUNNING");
    let r = c.cmd(&format!("START {id}"));
    assert_eq!(r["error"], "invalid_state");
    assert!(r["message"].as_str().unwrap().contains("RUNNING"), "{r}");
    // STOP: SIGTERM kills the default-handling program.
    let r = c.cmd(&format!("STOP {id}"));
    assert_eq!(r["state"], "STOPPED", "{r}");
    assert_eq!(r["exit"]["signal"], 15);
    assert_eq!(c.cmd(&format!("STOP {id}"))["error"], "invalid_state");
    // Restart with a SIGTERM handler: the program's own exit code is reported.
    c.cmd(&format!(r#"START {id} {{"args":["term"]}}"#));
    wait_output(&mut c, &id, "ready");
    let r = c.cmd(&format!("STOP {id}"));
    assert_eq!(r["exit"]["code"], 3, "{r}");
    // KILL.
    c.cmd(&format!("START {id}"));
    let r = c.cmd(&format!("KILL {id}"));
    assert_eq!(r["exit"]["signal"], 9, "{r}");
    // DELETE of a running session ends it.
    let st = c.cmd(&format!("START {id}"));
    let pid = st["pid"].as_i64().unwrap() as i32;
    assert!(tests::alive(pid));
    assert_eq!(c.cmd(&format!("DELETE {id}"))["deleted"], true);
    assert!(tests::wait_gone(pid, Duration::from_secs(5)), "program survived DELETE");
    assert_eq!(c.cmd(&format!("START {id}"))["error"], "not_found");
}

fn wait_output(c: &mut tests::Client, id: &str, needle: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if c.cmd(&format!("LOGS {id}"))["data"].as_str().unwrap_or("").contains(needle) {
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
    c.cmd(&format!(r#"START {id} {{"args":["ignore"]}}"#));
    wait_output(&mut c, &id, "ready");
    let t0 = Instant::now();
    c.send_raw(format!("STOP {id}\n").as_bytes());
    // While the STOP waits out its grace period, another client is served at once.
    let mut other = d.client();
    let t1 = Instant::now();
    assert_eq!(other.cmd("LIST")["ok"], true);
    let st = other.cmd(&format!("STATUS {id}"));
    assert_eq!(st["state"], "RUNNING");
    assert!(t1.elapsed() < Duration::from_secs(2), "LIST waited for the STOP: {:?}", t1.elapsed());
    let r = c.read();
    assert_eq!(r["exit"]["signal"], 9, "SIGTERM was ignored, so SIGKILL: {r}");
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
    let st = c.cmd(&format!("START {id}"));
    let parent = st["pid"].as_i64().unwrap() as i32;
    wait_output(&mut c, &id, "child=");
    // The forked child: find it among the parent's children on the host.
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap();
    let child: i32 = children.split_whitespace().next().expect("a child").parse().unwrap();
    assert!(tests::alive(child));
    let r = c.cmd(&format!("KILL {id}"));
    assert_eq!(r["state"], "STOPPED");
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
    c.cmd(&format!(r#"START {id} {{"args":["10"]}}"#));
    c.send_raw(format!("LOGS {id} --follow\nLIST\n").as_bytes());
    let mut text = String::new();
    let mut chunks = 0;
    let end = loop {
        let v = c.read();
        assert_eq!(v["ok"], true, "{v}");
        if v["end"] == true {
            break v;
        }
        chunks += 1;
        text.push_str(v["data"].as_str().unwrap());
    };
    assert_eq!(end["state"], "STOPPED");
    assert_eq!(end["exit"]["code"], 0);
    let expect: String = (0..10).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(text, expect);
    assert!(chunks > 1, "output was not streamed as it came");
    // The pipelined LIST is answered after the stream.
    assert!(c.read()["sessions"].is_array());
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
    assert_eq!(c.read()["server"], "debuglantern");
    let up = c.read();
    assert_eq!(up["state"], "LOADED", "{up}");
    assert_eq!(c.read()["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(c.read()["error"], "unknown_command");
    assert_eq!(c.read()["error"], "not_found");
    assert_eq!(c.read()["protocol"], 1);
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
                c.cmd(&format!("START {id}"));
                let s = c.wait_state(&id, "STOPPED", Duration::from_secs(20));
                assert_eq!(s["exit"]["code"], 7);
                assert_eq!(c.cmd(&format!("DELETE {id}"))["deleted"], true);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(d.client().cmd("LIST")["sessions"].as_array().unwrap().len(), 0);
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
