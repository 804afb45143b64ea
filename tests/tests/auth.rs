//! Shared-rig security (SPEC §7, issue 8) against the real daemon over real TCP: tokens,
//! ownership, admin, the slow-down of wrong tokens, the audit log, per-identity quotas,
//! socket activation by a real activator (`systemd-socket-activate`) and `--stdio`.
//! Needs root (the daemon's namespaces).

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::{c_program, programs, require_root, Client, Daemon};

const ALICE: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const BOB: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const ROOT: &str = "c0ffeec0ffeec0ffeec0ffeec0ffee00";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dl-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn token_file(dir: &Path, mode: u32) -> PathBuf {
    let p = dir.join("tokens");
    std::fs::write(&p, format!("# who may use this rig\nalice {ALICE}\nbob {BOB}\nroot {ROOT} admin\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn authed(d: &Daemon, token: &str) -> Client {
    let mut c = d.client();
    let r = c.cmd(&format!("AUTH {token}"));
    assert_eq!(r["ok"], true, "{r}");
    c
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn root_tokens_ownership_admin_and_the_audit_log() {
    if !require_root("root_tokens_ownership_admin_and_the_audit_log") {
        return;
    }
    let dir = scratch("own");
    let tokens = token_file(&dir, 0o600);
    let audit = dir.join("audit.log");
    let d = Daemon::start(&["--auth-tokens", tokens.to_str().unwrap(), "--audit-log", audit.to_str().unwrap()]);
    let sleeper = c_program("sleeper", programs::SLEEPER, false);

    // Before AUTH: only HELLO and AUTH.
    let mut anon = d.client();
    let h = anon.cmd("HELLO");
    assert_eq!(h["auth_required"], true, "{h}");
    assert!(h["identity"].is_null());
    for line in ["LIST", "EVENTS", "STATUS 00000000-0000-0000-0000-000000000000"] {
        assert_eq!(anon.cmd(line)["error"], "unauthorized", "{line}");
    }
    // An unauthenticated upload is refused and its bytes skipped: the connection goes on.
    let r = anon.upload(&sleeper);
    assert_eq!(r["error"], "unauthorized", "{r}");
    assert_eq!(anon.cmd("HELLO")["ok"], true);
    assert_eq!(anon.cmd(&format!("AUTH {ALICE}x"))["error"], "unauthorized");
    assert_eq!(anon.cmd("LIST")["error"], "unauthorized");

    // alice owns what she uploads.
    let mut alice = d.client();
    let r = alice.cmd(&format!("AUTH {ALICE}"));
    assert_eq!((&r["identity"], &r["admin"]), (&Value::from("alice"), &Value::from(false)), "{r}");
    assert_eq!(alice.cmd("HELLO")["identity"]["name"], "alice");
    let up = alice.upload(&sleeper);
    let a = up["id"].as_str().unwrap().to_string();
    assert_eq!(alice.cmd(&format!("START {a}"))["state"], "RUNNING");
    assert_eq!(alice.cmd(&format!("STATUS {a}"))["owner"], "alice");

    // bob cannot see, start, stop, kill, debug, read or delete it: for him it does not exist.
    let mut bob = authed(&d, BOB);
    let mut bob_events = authed(&d, BOB);
    assert_eq!(bob_events.cmd("EVENTS")["subscribed"], true);
    for verb in ["STATUS", "START", "STOP", "KILL", "DEBUG", "DELETE", "LOGS", "RECEIPT", "EVENTS"] {
        let r = bob.cmd(&format!("{verb} {a}"));
        assert_eq!(r["error"], "not_found", "{verb}: {r}");
        assert!(r["message"].as_str().unwrap().contains("no session"), "{r}");
    }
    assert_eq!(bob.cmd("LIST")["sessions"].as_array().unwrap().len(), 0);
    // What alice does next is not in bob's event stream; his own upload is.
    assert_eq!(alice.cmd(&format!("KILL {a}"))["state"], "STOPPED");
    let b = bob.load(&sleeper);
    let ev = bob_events.read();
    assert_eq!((&ev["event"], &ev["id"]), (&Value::from("uploaded"), &Value::from(b.as_str())), "{ev}");
    assert_eq!(alice.cmd("LIST")["sessions"].as_array().unwrap().len(), 1);

    // The admin sees and manages both.
    let mut root = authed(&d, ROOT);
    let list = root.cmd("LIST");
    let owners: Vec<&str> = list["sessions"].as_array().unwrap().iter().map(|s| s["owner"].as_str().unwrap()).collect();
    assert_eq!(owners.len(), 2, "{list}");
    assert!(owners.contains(&"alice") && owners.contains(&"bob"), "{list}");
    assert_eq!(root.cmd(&format!("RECEIPT {a}"))["receipt"]["identity"], "alice");
    assert_eq!(root.cmd(&format!("START {b}"))["state"], "RUNNING");
    assert_eq!(root.cmd(&format!("STOP {b}"))["state"], "STOPPED");
    assert_eq!(root.cmd(&format!("DELETE {a}"))["deleted"], true);
    assert_eq!(alice.cmd(&format!("STATUS {a}"))["error"], "not_found");

    // A failed AUTH leaves a connection unauthenticated, even one that was in.
    assert_eq!(bob.cmd("AUTH nope-nope-nope-nope")["error"], "unauthorized");
    assert_eq!(bob.cmd("LIST")["error"], "unauthorized");

    // The audit log: one JSON object per line, for every security-relevant event.
    let lines = audit_lines(&audit);
    let find = |pred: &dyn Fn(&Value) -> bool| lines.iter().find(|l| pred(l)).cloned();
    let ok = find(&|l| l["audit"] == "auth_ok" && l["identity"] == "alice").expect("auth_ok of alice");
    assert!(ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{ok}");
    assert!(ok["time"].is_string());
    let failed = find(&|l| l["audit"] == "auth_failed").expect("auth_failed");
    assert!(failed["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{failed}");
    let upload = find(&|l| l["audit"] == "upload" && l["id"] == a.as_str()).expect("upload");
    assert_eq!(
        (&upload["identity"], &upload["sha256"], &upload["size"]),
        (&Value::from("alice"), &up["sha256"], &up["size"])
    );
    assert!(find(&|l| l["audit"] == "start" && l["id"] == a.as_str() && l["identity"] == "alice").is_some());
    assert!(find(&|l| l["audit"] == "kill" && l["id"] == a.as_str()).is_some());
    assert!(find(&|l| l["audit"] == "stop" && l["id"] == b.as_str() && l["identity"] == "root").is_some());
    let del = find(&|l| l["audit"] == "delete" && l["id"] == a.as_str()).expect("delete");
    assert_eq!((&del["identity"], &del["owner"]), (&Value::from("root"), &Value::from("alice")), "{del}");
    let refused = find(&|l| l["audit"] == "refused" && l["identity"] == "bob" && l["command"] == "DEBUG")
        .expect("bob's refused DEBUG");
    assert_eq!(refused["error"], "not_found");
    assert!(find(&|l| l["audit"] == "refused" && l["identity"].is_null() && l["error"] == "unauthorized").is_some());
    // Tokens never reach the log.
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(ALICE) && !text.contains(BOB) && !text.contains("nope-nope"), "a token leaked");
    // The same lines go to stderr (the journal).
    assert!(d.log().contains(r#""audit":"auth_ok""#));
    drop(d);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_wrong_tokens_fail_and_are_answered_ever_more_slowly() {
    if !require_root("root_wrong_tokens_fail_and_are_answered_ever_more_slowly") {
        return;
    }
    let dir = scratch("slow");
    let tokens = token_file(&dir, 0o600);
    let d = Daemon::start(&["--auth-tokens", tokens.to_str().unwrap()]);
    let mut c = d.client();
    let t0 = Instant::now();
    let mut at = Vec::new();
    for i in 0..6 {
        let r = c.cmd(&format!("AUTH wrong-token-number-{i}"));
        assert_eq!(r["error"], "unauthorized", "{r}");
        at.push(t0.elapsed());
    }
    // The first three are answered at once, then 0.5 s, 1 s, 2 s apart.
    assert!(at[2] < Duration::from_millis(400), "{at:?}");
    assert!(at[3] >= Duration::from_millis(450), "{at:?}");
    assert!(at[5] >= Duration::from_millis(3400), "{at:?}");
    // Another connection from the same address does not start afresh; the right token
    // still works, once its turn comes.
    let mut other = d.client();
    let t1 = Instant::now();
    let r = other.cmd(&format!("AUTH {ALICE}"));
    assert_eq!(r["identity"], "alice", "{r}");
    assert!(t1.elapsed() >= Duration::from_millis(3000), "answered after {:?}", t1.elapsed());
    // Meanwhile everything else is served at once.
    let t2 = Instant::now();
    assert_eq!(d.client().cmd("HELLO")["ok"], true);
    assert!(t2.elapsed() < Duration::from_millis(500));
    drop(d);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_a_token_file_others_can_read_is_refused() {
    if !require_root("root_a_token_file_others_can_read_is_refused") {
        return;
    }
    let dir = scratch("perm");
    for (mode, chown, want) in
        [(0o644, None, "chmod 600"), (0o640, None, "chmod 600"), (0o600, Some(65534), "owned by uid 65534")]
    {
        let tokens = token_file(&dir, mode);
        if let Some(uid) = chown {
            std::os::unix::fs::chown(&tokens, Some(uid), None).unwrap();
        }
        let out = Command::new(tests::bin_dir().join("debuglantern"))
            .args(["--listen", "127.0.0.1:0", "--auth-tokens", tokens.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        std::fs::remove_file(&tokens).unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_per_identity_quotas() {
    if !require_root("root_per_identity_quotas") {
        return;
    }
    let dir = scratch("quota");
    let tokens = token_file(&dir, 0o600);
    let config = dir.join("c.toml");
    std::fs::write(&config, "quota_sessions = 1\n[quota.bob]\nsessions = 10\nbytes = \"40K\"\n").unwrap();
    let d = Daemon::start(&["--auth-tokens", tokens.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    let hello = c_program("hello", programs::HELLO, false);
    let mut alice = authed(&d, ALICE);
    alice.load(&hello);
    let r = alice.upload(&hello);
    assert_eq!(r["error"], "limit_reached", "{r}");
    assert!(r["message"].as_str().unwrap().contains("quota"), "{r}");
    // The refused bytes were skipped; the connection still works.
    assert_eq!(alice.cmd("LIST")["sessions"].as_array().unwrap().len(), 1);
    // bob has a quota of his own: 10 sessions but 40 KiB.
    let mut bob = authed(&d, BOB);
    let mut held = 0u64;
    loop {
        let r = bob.upload(&hello);
        if r["ok"] == false {
            assert_eq!(r["error"], "limit_reached", "{r}");
            assert!(r["message"].as_str().unwrap().contains("40960 bytes"), "{r}");
            break;
        }
        held += hello.len() as u64;
        assert!(held <= 40960, "bob got past his byte quota");
    }
    // The admin has the default quota of one session too (quotas are per identity).
    let mut root = authed(&d, ROOT);
    root.load(&hello);
    assert_eq!(root.upload(&hello)["error"], "limit_reached");
    drop(d);
    let _ = std::fs::remove_dir_all(dir);
}

/// Lines of JSON from a child's stdout.
fn read_json(r: &mut impl BufRead) -> Value {
    let mut line = String::new();
    assert!(r.read_line(&mut line).unwrap() > 0, "stdout closed while a reply was expected");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
}

#[test]
fn root_stdio_serves_one_client_then_stops_everything() {
    if !require_root("root_stdio_serves_one_client_then_stops_everything") {
        return;
    }
    let hello = c_program("hello", programs::HELLO, false);
    let sleeper = c_program("sleeper", programs::SLEEPER, false);
    let mut child = Command::new(tests::bin_dir().join("debuglantern"))
        .arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "HELLO").unwrap();
    let h = read_json(&mut out);
    assert_eq!((&h["ok"], &h["auth_required"]), (&Value::from(true), &Value::from(false)), "{h}");
    writeln!(stdin, "UPLOAD {}", hello.len()).unwrap();
    stdin.write_all(&hello).unwrap();
    let id = read_json(&mut out)["id"].as_str().unwrap().to_string();
    writeln!(stdin, "START {id} {{\"args\":[\"x\"]}}").unwrap();
    assert_eq!(read_json(&mut out)["state"], "RUNNING");
    writeln!(stdin, "LOGS {id} --follow").unwrap();
    let mut text = String::new();
    loop {
        let v = read_json(&mut out);
        if v["end"] == true {
            assert_eq!(v["exit"]["code"], 7, "{v}");
            break;
        }
        text.push_str(v["data"].as_str().unwrap_or(""));
    }
    assert!(text.contains("hello from the rig, 2 args"), "{text}");
    // A debug port needs a network address; over stdio, DEBUG --stdio is the way.
    writeln!(stdin, "UPLOAD {}", sleeper.len()).unwrap();
    stdin.write_all(&sleeper).unwrap();
    let s = read_json(&mut out)["id"].as_str().unwrap().to_string();
    writeln!(stdin, "START {s}").unwrap();
    let started = read_json(&mut out);
    let pid = started["pid"].as_i64().unwrap() as i32;
    writeln!(stdin, "DEBUG {s}").unwrap();
    let r = read_json(&mut out);
    assert_eq!(r["error"], "unsupported", "{r}");
    assert!(r["message"].as_str().unwrap().contains("--stdio"), "{r}");
    // DEBUG --stdio: the client's own stream carries the gdb remote protocol.
    writeln!(stdin, "DEBUG {s} --stdio").unwrap();
    let r = read_json(&mut out);
    assert_eq!(r["stdio"], true, "{r}");
    stdin.write_all(b"+$?#3f").unwrap();
    stdin.flush().unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"#") || reply.len() < 3 {
        assert_eq!(std::io::Read::read(&mut out, &mut byte).unwrap(), 1, "stream ended: {reply:?}");
        reply.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("$T") || text.contains("$S"), "not a stop reply from gdbserver: {text:?}");
    // The client goes away: every session is stopped and the daemon exits 0.
    drop(stdin);
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "the --stdio daemon did not exit after its client left");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("the --stdio client is gone"), "{err}");
    assert!(!tests::alive(pid), "the session's program outlived the daemon");
}

#[test]
fn root_socket_activation_by_systemd_socket_activate() {
    if !require_root("root_socket_activation_by_systemd_socket_activate") {
        return;
    }
    let activator = Path::new("/usr/bin/systemd-socket-activate");
    if !activator.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-socket-activate is missing (scripts/install-deps installs systemd)"
        );
        eprintln!("SKIPPED: no systemd-socket-activate");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(activator)
        .args(["-l", &addr])
        .arg(tests::bin_dir().join("debuglantern"))
        // Ignored under activation: the log below must name the passed socket's address.
        .args(["--listen", "127.0.0.1:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log2.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    // The activator listens at once; the daemon starts on the first connection and
    // takes the listening socket over.
    let end = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(_) => break Client::connect(addr.parse().unwrap()),
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("activator never listened: {e}"),
        }
    };
    let h = c.cmd("HELLO");
    assert_eq!(h["ok"], true, "{h}");
    let hello = c_program("hello", programs::HELLO, false);
    let id = c.load(&hello);
    assert_eq!(c.cmd(&format!("START {id}"))["state"], "RUNNING");
    c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert!(log.lock().unwrap().contains(&format!("listening on {addr}")), "{}", log.lock().unwrap());
    // The activator exec'd the daemon: its pid is the daemon's; SIGTERM ends it cleanly.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "{st}: {}", log.lock().unwrap());
}

#[test]
fn root_a_network_address_with_tokens_needs_no_insecure_flag() {
    if !require_root("root_a_network_address_with_tokens_needs_no_insecure_flag") {
        return;
    }
    let netns_run = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/netns-run");
    assert!(netns_run.exists(), "{} is missing", netns_run.display());
    let dir = scratch("net");
    let tokens = token_file(&dir, 0o600);
    let d = tests::bin_dir().join("debuglantern");
    // In a private network namespace (loopback only), 0.0.0.0 is still "the network" to
    // the daemon: with tokens it serves (and asks for AUTH); without, only with
    // --insecure-no-auth, and then HELLO warns.
    let script = format!(
        r#"set -u
{d} --listen 0.0.0.0:4444 --no-mdns --auth-tokens {t} 2>{o}/a.log & A=$!
{d} --listen 0.0.0.0:4445 --no-mdns --insecure-no-auth 2>{o}/b.log & B=$!
sleep 2
exec 3<>/dev/tcp/127.0.0.1/4444; echo HELLO >&3; head -1 <&3 > {o}/a.json; echo LIST >&3; head -1 <&3 >> {o}/a.json; exec 3<&-
exec 4<>/dev/tcp/127.0.0.1/4445; echo HELLO >&4; head -1 <&4 > {o}/b.json; exec 4<&-
kill -TERM $A $B; wait $A $B
"#,
        t = tokens.display(),
        o = dir.display(),
        d = d.display()
    );
    let st = Command::new(&netns_run).args(["bash", "-c", &script]).status().unwrap();
    assert!(st.success(), "{st}");
    let a: Vec<Value> = std::fs::read_to_string(dir.join("a.json"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(a[0]["auth_required"], true, "{a:?}");
    assert_eq!(a[1]["error"], "unauthorized", "{a:?}");
    let b: Value = serde_json::from_str(std::fs::read_to_string(dir.join("b.json")).unwrap().trim()).unwrap();
    assert_eq!(b["auth_required"], false);
    let warned = b["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("--insecure-no-auth"));
    assert!(warned, "{b}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_shipped_systemd_units_pass_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "systemd-analyze is missing (install systemd)");
        eprintln!("SKIPPED: no systemd-analyze");
        return;
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let dir = scratch("units");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        // ExecStart must name an existing binary: point it at the one just built.
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("/usr/local/bin/debuglantern", tests::bin_dir().join("debuglantern").to_str().unwrap());
        std::fs::write(dir.join(&name), text).unwrap();
        names.push(dir.join(&name).display().to_string());
    }
    assert_eq!(names.len(), 4, "{names:?}");
    let out = Command::new(analyze).args(["verify", "--man=no"]).args(&names).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let _ = std::fs::remove_dir_all(dir);
}
