//! `lantern`, the real binary, against the real daemon. Needs root (the daemon does).

use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tests::{bin_dir, c_program, programs, require_root, Daemon};

fn lantern(d: &Daemon, args: &[&str]) -> Output {
    Command::new(bin_dir().join("lantern"))
        .arg("--rig")
        .arg(d.addr.to_string())
        .args(args)
        .output()
        .expect("run lantern")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dl-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn root_run_exits_with_the_programs_code_and_output() {
    if !require_root("root_run_exits_with_the_programs_code_and_output") {
        return;
    }
    let d = Daemon::start(&[]);
    let dir = scratch("run");
    let prog = dir.join("hello");
    std::fs::write(&prog, c_program("hello", programs::HELLO, false)).unwrap();
    let out = lantern(&d, &["run", prog.to_str().unwrap(), "--", "one", "two words"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("hello from the rig, 3 args"), "{stdout}");
    assert!(stdout.contains("arg[2]=two words"), "{stdout}");
    // The session was deleted afterwards; --keep keeps it.
    assert!(d.client().cmd("LIST")["sessions"].as_array().unwrap().is_empty());
    let out = lantern(&d, &["run", "--keep", prog.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(d.client().cmd("LIST")["sessions"].as_array().unwrap().len(), 1);
    // A program killed by a signal: 128 + signal.
    let sleeper = dir.join("sleeper");
    std::fs::write(&sleeper, c_program("sleeper", programs::SLEEPER, false)).unwrap();
    let addr = d.addr;
    let child = std::thread::spawn(move || {
        Command::new(bin_dir().join("lantern"))
            .arg("--rig")
            .arg(addr.to_string())
            .arg("run")
            .arg(&sleeper)
            .output()
            .unwrap()
    });
    let end = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let list = d.client().cmd("LIST");
        if let Some(s) = list["sessions"].as_array().unwrap().iter().find(|s| s["state"] == "RUNNING") {
            break s["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < end, "the run never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    d.client().cmd(&format!("KILL {id}"));
    assert_eq!(child.join().unwrap().status.code(), Some(128 + 9));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_run_of_a_bundle_directory() {
    if !require_root("root_run_of_a_bundle_directory") {
        return;
    }
    let d = Daemon::start(&[]);
    let dir = scratch("bundle");
    std::fs::create_dir_all(dir.join("app/bin")).unwrap();
    std::fs::create_dir_all(dir.join("app/data")).unwrap();
    std::fs::write(dir.join("app/data/word.txt"), "lantern\n").unwrap();
    let src = r#"#include <stdio.h>
int main(void) { char w[32] = ""; FILE *f = fopen("data/word.txt", "r"); if (f) fgets(w, sizeof w, f); printf("word=%s", w); return 4; }"#;
    std::fs::write(dir.join("app/bin/app"), c_program("bundle_app", src, false)).unwrap();
    std::fs::set_permissions(dir.join("app/bin/app"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = lantern(&d, &["run", dir.join("app").to_str().unwrap(), "--exec", "bin/app"]);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "word=lantern\n");
    // A directory without --exec is a usage error with a hint.
    let out = lantern(&d, &["upload", dir.join("app").to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("--exec"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_logs_follow_json_list_receipt_trace_and_errors() {
    if !require_root("root_logs_follow_json_list_receipt_trace_and_errors") {
        return;
    }
    let d = Daemon::start(&[]);
    let dir = scratch("logs");
    let ticker = dir.join("ticker");
    std::fs::write(&ticker, c_program("ticker", programs::TICKER, false)).unwrap();
    let up = lantern(&d, &["upload", ticker.to_str().unwrap()]);
    assert!(up.status.success(), "{}", text(&up.stderr));
    let id = text(&up.stdout).trim().to_string();
    let st = lantern(&d, &["start", &id, "--", "8"]);
    assert!(st.status.success(), "{}", text(&st.stderr));
    let logs = lantern(&d, &["logs", "-f", &id]);
    assert!(logs.status.success());
    let expect: String = (0..8).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(text(&logs.stdout), expect, "logs -f must follow until the run ends");
    // --json on list parses and shows the session.
    let list = lantern(&d, &["--json", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).expect("--json list is JSON");
    assert_eq!(v["sessions"][0]["id"], id.as_str());
    assert_eq!(v["sessions"][0]["state"], "STOPPED");
    // Receipt, with a Perfetto trace.
    let trace = dir.join("trace.json");
    let r = lantern(&d, &["receipt", &id, "--trace", trace.to_str().unwrap()]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stdout).contains("exit 0"), "{}", text(&r.stdout));
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).expect("trace is JSON");
    let names: Vec<&str> = t["traceEvents"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"run 1") && names.contains(&"jail setup") && names.contains(&"program (exit 0)"),
        "{names:?}"
    );
    for e in t["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X") {
        assert!(e["ts"].as_u64().unwrap() > 0 && e["dur"].is_u64(), "{e}");
    }
    // The process tree: the program itself (session pid 2) has its own span.
    let program = t["traceEvents"].as_array().unwrap().iter().find(|e| e["cat"] == "process" && e["args"]["pid"] == 2);
    let program = program.unwrap_or_else(|| panic!("no process span for pid 2: {names:?}"));
    assert_eq!((&program["args"]["ppid"], &program["args"]["exit_code"]), (&1.into(), &0.into()), "{program}");
    let r = lantern(&d, &["--json", "receipt", &id]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["receipt"]["stdout"]["bytes"], expect.len());
    // Events the rig holds.
    let ev = lantern(&d, &["events"]);
    let ev = text(&ev.stdout);
    for e in ["uploaded", "spawned", "setup_finished", "exited"] {
        assert!(ev.contains(e), "{ev}");
    }
    // Errors: a clear message with the server's code, exit 1; rig down: exit 3.
    let out = lantern(&d, &["status", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not_found"), "{}", text(&out.stderr));
    let out = Command::new(bin_dir().join("lantern")).args(["--rig", "127.0.0.1:1", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("cannot reach the rig"), "{}", text(&out.stderr));
    // Completions.
    let out = Command::new(bin_dir().join("lantern")).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success() && text(&out.stdout).contains("lantern"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_progress_bar_shows_on_a_terminal() {
    if !require_root("root_progress_bar_shows_on_a_terminal") {
        return;
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "tmux is missing (scripts/install-deps installs it)");
        eprintln!("SKIPPED: no tmux");
        return;
    }
    let d = Daemon::start(&[]);
    let dir = scratch("bar");
    let mut big = c_program("bench_true", programs::TRUE, true);
    big.resize(400 << 20, 0);
    let file = dir.join("big");
    std::fs::write(&file, &big).unwrap();
    let session = format!("dl-bar-{}", std::process::id());
    let cmd = format!("{} --rig {} upload {}; sleep 5", bin_dir().join("lantern").display(), d.addr, file.display());
    let st = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "150", "-y", "10", &cmd])
        .status()
        .unwrap();
    assert!(st.success());
    let end = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let cap = Command::new("tmux").args(["capture-pane", "-p", "-t", &session]).output().unwrap();
        let screen = text(&cap.stdout);
        if screen.contains("uploading") && screen.contains("MiB") {
            break Ok(());
        }
        if Instant::now() > end {
            break Err(screen);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = Command::new("tmux").args(["kill-session", "-t", &session]).status();
    if let Err(screen) = shown {
        panic!("no progress bar on the terminal; the screen was:\n{screen}");
    }
    // Piped, it stays quiet: only the id.
    let out = lantern(&d, &["upload", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim().len(), 36, "{}", text(&out.stdout));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_tokens_from_a_file_the_environment_or_the_config_file() {
    if !require_root("root_tokens_from_a_file_the_environment_or_the_config_file") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("tokens");
    let server_tokens = dir.join("server-tokens");
    let alice = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
    std::fs::write(&server_tokens, format!("alice {alice}\n")).unwrap();
    std::fs::set_permissions(&server_tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start(&["--auth-tokens", server_tokens.to_str().unwrap()]);
    let rig = d.addr.to_string();
    let empty_config = dir.join("no-config");
    std::fs::create_dir_all(&empty_config).unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| -> Output {
        Command::new(bin_dir().join("lantern"))
            .env_remove("LANTERN_TOKEN")
            .env_remove("LANTERN_TOKEN_FILE")
            .env("XDG_CONFIG_HOME", &empty_config)
            .envs(env.iter().copied())
            .args(["--rig", &rig])
            .args(args)
            .output()
            .unwrap()
    };
    // No token: refused (exit 1), and told how to give one.
    let out = run(&[], &["list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("unauthorized") && text(&out.stderr).contains("--token-file"),
        "{}",
        text(&out.stderr)
    );
    // --token-file.
    let tf = dir.join("token");
    std::fs::write(&tf, format!("{alice}\n")).unwrap();
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&[], &["--token-file", tf.to_str().unwrap(), "--json", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // ... refused when others could read it.
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&[], &["--token-file", tf.to_str().unwrap(), "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("chmod 600"), "{}", text(&out.stderr));
    // LANTERN_TOKEN; a wrong one is refused.
    assert!(run(&[("LANTERN_TOKEN", alice)], &["list"]).status.success());
    let out = run(&[("LANTERN_TOKEN", "not-the-token-at-all")], &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown token"), "{}", text(&out.stderr));
    // The config file: a token for this rig in its own table.
    let cfg_home = dir.join("config");
    std::fs::create_dir_all(cfg_home.join("lantern")).unwrap();
    let cfg = cfg_home.join("lantern/config.toml");
    std::fs::write(&cfg, format!("token = \"wrong-wrong-wrong-wrong\"\n[rig.\"{rig}\"]\ntoken = \"{alice}\"\n"))
        .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let prog = dir.join("hello");
    std::fs::write(&prog, c_program("hello", programs::HELLO, false)).unwrap();
    let out = run(&[("XDG_CONFIG_HOME", cfg_home.to_str().unwrap())], &["run", prog.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hello from the rig"));
    let _ = std::fs::remove_dir_all(dir);
}
