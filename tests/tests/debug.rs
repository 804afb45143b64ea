//! Live debugging (SPEC §8) with the real `gdb` client against the real daemon. Needs root,
//! gdb and gdbserver (scripts/install-deps installs them).

use std::process::Command;
use std::time::{Duration, Instant};
use tests::{require_root, Client, Daemon};

/// A program that calls `work` every 50 ms, counting in a global.
const LOOPER: &str = r#"
#include <stdio.h>
#include <unistd.h>
int counter = 41;
int work(int i) {
    int doubled = i * 2;
    counter++;
    return doubled;
}
int main(void) { for (int i = 0; ; i++) { printf("tick %d -> %d\n", i, work(i)); fflush(stdout); usleep(50000); } }
"#;

fn tools_present() -> bool {
    let ok =
        std::path::Path::new("/usr/bin/gdbserver").exists() && Command::new("gdb").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "gdb/gdbserver missing (scripts/install-deps installs them)"
        );
        eprintln!("SKIPPED: no gdb or gdbserver");
    }
    ok
}

/// Compiles with debug information (`name` must be unique per test: tests run in parallel).
fn compile_g(name: &str, src: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("dl-debug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.c")), src).unwrap();
    let out = dir.join(name);
    assert!(Command::new("cc")
        .args(["-g", "-O0", "-o"])
        .arg(&out)
        .arg(dir.join(format!("{name}.c")))
        .status()
        .unwrap()
        .success());
    std::fs::read(out).unwrap()
}

fn gdb(args: &[&str]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "gdb", "-batch", "-nx", "-ex", "set confirm off"]);
    for a in args {
        cmd.args(["-ex", a]);
    }
    let out = cmd.output().expect("gdb");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ticks(c: &mut Client, id: &str) -> usize {
    c.cmd(&format!("LOGS {id}"))["data"].as_str().unwrap_or("").matches("tick").count()
}

#[test]
fn root_gdb_attaches_reads_breaks_steps_and_detaches() {
    if !require_root("root_gdb_attaches_reads_breaks_steps_and_detaches") || !tools_present() {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&compile_g("looper_attach", LOOPER));
    c.cmd(&format!("START {id}"));
    std::thread::sleep(Duration::from_millis(300));
    let r = c.cmd(&format!("DEBUG {id}"));
    assert_eq!(r["state"], "DEBUGGING", "{r}");
    let dbg = &r["debug"];
    assert_eq!(dbg["host"], "127.0.0.1");
    assert_eq!(dbg["ns_pid"], 2);
    assert!(dbg["pid"].as_i64().unwrap() > 0);
    let port = dbg["port"].as_u64().unwrap();
    let line = dbg["gdb"].as_str().unwrap();
    assert!(
        line.contains(&format!("target remote 127.0.0.1:{port}")) && line.contains("file target:/proc/2/exe"),
        "{line}"
    );
    // While the port waits, DEBUG shows it again (a lost line is recovered), STATUS too.
    let again = c.cmd(&format!("DEBUG {id}"));
    assert_eq!(again["debug"]["port"], port, "{again}");
    let st = c.cmd(&format!("STATUS {id}"));
    assert_eq!(st["state"], "DEBUGGING");
    assert_eq!(st["debug"]["port"], port, "{st}");
    assert_eq!(st["debug"]["launched"], false, "{st}");
    assert!(st["debug"]["deadline_ms"].as_u64().unwrap() > 0, "{st}");
    // The gdb line's commands, then a session: global, breakpoint, step, local, backtrace.
    let out = gdb(&[
        &format!("target remote 127.0.0.1:{port}"),
        "file target:/proc/2/exe",
        "print counter > 41",
        "break work",
        "continue",
        "next",
        "print doubled == i * 2",
        "bt",
        "detach",
    ]);
    assert!(out.contains("$1 = 1"), "global not read:\n{out}");
    assert!(out.contains("Breakpoint 1, work (i="), "breakpoint not hit:\n{out}");
    assert!(out.contains("$2 = 1"), "local not read:\n{out}");
    assert!(out.contains("in main ()"), "no backtrace:\n{out}");
    assert!(out.contains("detached"), "{out}");
    // After the detach the program runs on and the session is RUNNING again.
    let end = Instant::now() + Duration::from_secs(5);
    while c.cmd(&format!("STATUS {id}"))["state"] != "RUNNING" {
        assert!(Instant::now() < end, "never back to RUNNING");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = ticks(&mut c, &id);
    std::thread::sleep(Duration::from_millis(400));
    assert!(ticks(&mut c, &id) > before, "the program stopped running after the detach");
    // Events.
    let mut sub = d.client();
    let s = sub.cmd("EVENTS --since 1");
    assert_eq!(s["ok"], true);
    let mut seen = Vec::new();
    while !seen.contains(&"debug_detached".to_string()) {
        let v = sub.read();
        seen.push(v["event"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(seen, ["uploaded", "spawned", "setup_finished", "debug_attached", "debug_detached"]);
    // Debugging again works; KILL while DEBUGGING ends gdbserver and the program.
    let r = c.cmd(&format!("DEBUG {id}"));
    assert_eq!(r["state"], "DEBUGGING", "{r}");
    let k = c.cmd(&format!("KILL {id}"));
    assert_eq!(k["exit"]["signal"], 9, "{k}");
    assert_eq!(c.cmd(&format!("STATUS {id}"))["state"], "STOPPED");
}

#[test]
fn root_debug_port_deadline_and_state_rules() {
    if !require_root("root_debug_port_deadline_and_state_rules") || !tools_present() {
        return;
    }
    let d = Daemon::start(&["--debug-deadline", "1s"]);
    let mut c = d.client();
    let id = c.load(&compile_g("looper_deadline", LOOPER));
    assert_eq!(c.cmd(&format!("DEBUG {id}"))["error"], "invalid_state", "DEBUG of a LOADED session");
    c.cmd(&format!("START {id}"));
    let r = c.cmd(&format!("DEBUG {id}"));
    let port = r["debug"]["port"].as_u64().unwrap() as u16;
    std::thread::sleep(Duration::from_millis(1600));
    // Nobody connected in time: the port is gone, the session runs on.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the port outlived its deadline");
    let end = Instant::now() + Duration::from_secs(5);
    while c.cmd(&format!("STATUS {id}"))["state"] != "RUNNING" {
        assert!(Instant::now() < end, "never back to RUNNING after the deadline");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = ticks(&mut c, &id);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ticks(&mut c, &id) > before);
    // START --debug whose debugger never comes: a waiting lantern says so, and the
    // program runs on.
    let id = c.load(&compile_g("looper_wait", LOOPER));
    let out = Command::new(tests::bin_dir().join("lantern"))
        .args(["--rig", &d.addr.to_string(), "start", "--debug", "--wait", &id])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("target remote 127.0.0.1:"));
    assert!(err.contains("no debugger connected before the deadline"), "{err}");
    let end = Instant::now() + Duration::from_secs(5);
    while ticks(&mut c, &id) < 3 {
        assert!(Instant::now() < end, "the program did not run after the deadline");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn root_start_debug_holds_at_entry_and_keeps_the_exit_code() {
    if !require_root("root_start_debug_holds_at_entry_and_keeps_the_exit_code") || !tools_present() {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&compile_g("short_debug", SHORT));
    let r = c.cmd(&format!("START {id} --debug"));
    assert_eq!(r["state"], "DEBUGGING", "{r}");
    let port = r["debug"]["port"].as_u64().unwrap();
    let line = r["debug"]["gdb"].as_str().unwrap();
    // Nothing to swallow and nothing to load: `target remote` alone, as with gdbserver PROG.
    assert_eq!(line, format!("gdb -q -ex 'target remote 127.0.0.1:{port}'"));
    // Held: nothing printed yet; STATUS shows the endpoint, DEBUG shows the line again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.cmd(&format!("LOGS {id}"))["data"], "");
    let st = c.cmd(&format!("STATUS {id}"));
    assert_eq!(st["debug"]["launched"], true, "{st}");
    assert_eq!(st["debug"]["port"], port, "{st}");
    assert_eq!(st["debug"]["gdb"], line, "{st}");
    assert_eq!(c.cmd(&format!("DEBUG {id}"))["debug"]["gdb"], line);
    let out =
        gdb(&[&format!("target remote 127.0.0.1:{port}"), "break main", "continue", "next", "print v", "continue"]);
    assert!(!out.contains("SIGSTOP"), "a signal to swallow:\n{out}");
    assert!(out.contains("Reading symbols from target:/bundle/program"), "symbols not found by itself:\n{out}");
    assert!(out.contains("Breakpoint 1, main ()"), "{out}");
    assert!(out.contains("$1 = 42"), "{out}");
    assert!(out.contains("exited with code 07"), "{out}");
    let s = c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert_eq!(s["exit"]["code"], 7, "the program's own exit code: {s}");
    assert_eq!(c.cmd(&format!("LOGS {id}"))["data"], "v=42\n", "its output still reaches LOGS");
    // A crash under the debugger is the program's own signal, though gdbserver reaped it.
    let id = c.load(&compile_g("crash_debug", CRASH));
    let port = c.cmd(&format!("START {id} --debug"))["debug"]["port"].as_u64().unwrap();
    let out = gdb(&[&format!("target remote 127.0.0.1:{port}"), "continue", "bt", "continue"]);
    assert!(out.contains("SIGSEGV") && out.contains("crash_here (p=0x0)"), "{out}");
    let s = c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert_eq!(s["exit"]["signal"], 11, "{s}");
}

/// A program that computes, prints and exits 7.
const SHORT: &str = r#"
#include <stdio.h>
int answer(int x) {
    return x + 1;
}
int main(void) {
    int v = answer(41);
    printf("v=%d\n", v);
    return 7;
}
"#;

/// `add` of its two arguments, printed; exits 7.
const ADD: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int add(int a, int b) {
    return a + b;
}
int main(int argc, char **argv) {
    int a = argc > 1 ? atoi(argv[1]) : 1, b = argc > 2 ? atoi(argv[2]) : 2;
    printf("sum=%d\n", add(a, b));
    return 7;
}
"#;

/// Dereferences NULL in `crash_here`.
const CRASH: &str = r#"
#include <stdio.h>
void crash_here(int *p) {
    *p = 1;
}
int main(void) {
    puts("about to crash");
    fflush(stdout);
    crash_here(0);
    return 0;
}
"#;

/// gdb/MI as an IDE drives it (VS Code's cppdbg, CLion): the commands on stdin, the
/// records back.
fn gdb_mi(commands: &[String]) -> String {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .args(["60", "gdb", "-nx", "-q", "--interpreter=mi2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gdb");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let commands = commands.to_vec();
    // Each command after the answer to the last, as an IDE does.
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut sent = 0;
        let next = |stdin: &mut std::process::ChildStdin, sent: &mut usize| {
            if let Some(c) = commands.get(*sent) {
                let _ = writeln!(stdin, "{c}");
                *sent += 1;
            }
        };
        next(&mut stdin, &mut sent);
        while let Some(Ok(l)) = lines.next() {
            all.push_str(&l);
            all.push('\n');
            // `^running` waits for its `*stopped`; other answers go on at once.
            if l.starts_with("^done")
                || l.starts_with("^connected")
                || l.starts_with("^error")
                || l.starts_with("*stopped")
            {
                next(&mut stdin, &mut sent);
            }
        }
        all
    });
    let _ = child.wait();
    reader.join().unwrap()
}

#[test]
fn root_ides_and_lldb_see_a_clean_entry_stop() {
    if !require_root("root_ides_and_lldb_see_a_clean_entry_stop") || !tools_present() {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let prog = compile_g("add_mi", ADD);
    let local = std::env::temp_dir().join(format!("dl-debug-{}/add_mi", std::process::id()));
    // cppdbg with miDebuggerServerAddress "HOST:PORT".
    let id = c.load(&prog);
    let port = c.cmd(&format!("START {id} --debug"))["debug"]["port"].as_u64().unwrap();
    let mi = |target: String| {
        gdb_mi(&[
            "-gdb-set confirm off".into(),
            format!("-file-exec-and-symbols {}", local.display()),
            format!("-target-select remote {target}"),
            "-break-insert main".into(),
            "-exec-continue".into(),
            "-exec-continue".into(),
            "-gdb-exit".into(),
        ])
    };
    let out = mi(format!("127.0.0.1:{port}"));
    assert!(!out.contains("signal-received"), "a signal stop an IDE would show:\n{out}");
    assert!(out.contains(r#"*stopped,reason="breakpoint-hit""#) && out.contains(r#"func="main""#), "{out}");
    assert!(out.contains(r#"*stopped,reason="exited",exit-code="07""#), "{out}");
    assert_eq!(c.wait_state(&id, "STOPPED", Duration::from_secs(10))["exit"]["code"], 7);
    // The configuration `lantern debug --vscode` prints: through `lantern gdb-pipe`, with
    // no debug port on the rig.
    let id = c.load(&prog);
    let r = c.cmd(&format!(r#"START {id} --debug {{"debug_port":false,"args":["4","5"]}}"#));
    assert!(r["debug"].is_null(), "{r}");
    assert!(r["debug_stdio"]["gdb"].as_str().unwrap().contains(&format!("gdb-pipe RIG {id}")), "{r}");
    let lantern = tests::bin_dir().join("lantern");
    let vscode = Command::new(&lantern)
        .args(["--rig", &d.addr.to_string(), "debug", "--vscode", &id, "--file", local.to_str().unwrap()])
        .output()
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&vscode.stdout).expect("launch.json");
    let conf = &cfg["configurations"][0];
    assert_eq!(conf["type"], "cppdbg");
    assert_eq!(conf["program"], local.to_str().unwrap());
    let server = conf["miDebuggerServerAddress"].as_str().unwrap().to_string();
    assert_eq!(server, format!("| {} gdb-pipe {} {id}", lantern.display(), d.addr));
    let out = mi(server);
    assert!(!out.contains("signal-received"), "{out}");
    assert!(out.contains(r#"*stopped,reason="breakpoint-hit""#), "{out}");
    assert_eq!(c.wait_state(&id, "STOPPED", Duration::from_secs(10))["exit"]["code"], 7);
    assert_eq!(c.cmd(&format!("LOGS {id}"))["data"], "sum=9\n");
    // lldb's gdb-remote: one clean stop at the entry, then main, then the program's end.
    if Command::new("lldb").arg("--version").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "lldb is missing (scripts/install-deps installs it)");
        return;
    }
    let id = c.load(&prog);
    let port = c.cmd(&format!("START {id} --debug"))["debug"]["port"].as_u64().unwrap();
    let lldb = |args: &[&str]| {
        let mut cmd = Command::new("timeout");
        cmd.args(["60", "lldb", "-b"]);
        for a in args {
            cmd.args(["-o", a]);
        }
        let out = cmd.output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let out = lldb(&[
        &format!("target create {}", local.display()),
        "breakpoint set -n main",
        &format!("gdb-remote 127.0.0.1:{port}"),
        "continue",
        "bt",
        "continue",
    ]);
    assert!(!out.contains("SIGSTOP"), "{out}");
    assert!(out.contains("stop reason = breakpoint 1.1") && out.contains("`main("), "main not hit:\n{out}");
    assert_eq!(c.wait_state(&id, "STOPPED", Duration::from_secs(10))["exit"]["code"], 7);
    // And `lantern run --debug --debugger lldb`, through lantern's loopback bridge.
    let id2 = std::process::Command::new(&lantern)
        .args(["--rig", &d.addr.to_string(), "run", "--debug", "--debugger", "lldb", "--break", "add"])
        .arg(&local)
        .args(["--", "2", "3"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&id2.stdout), String::from_utf8_lossy(&id2.stderr));
    assert!(text.contains("stop reason = breakpoint 1.1") && text.contains("`add("), "{text}");
}

#[test]
fn root_a_lost_debugger_releases_the_program() {
    if !require_root("root_a_lost_debugger_releases_the_program") || !tools_present() {
        return;
    }
    // A deadline long enough for gdb to connect on a slow (emulated) machine.
    let d = Daemon::start(&["--debug-deadline", "5s"]);
    let mut c = d.client();
    let looper = compile_g("looper_lost", LOOPER);
    // gdb's own detach: the program runs on, RUNNING at once (gdbserver, which then only
    // waits for its child, is let go).
    let id = c.load(&looper);
    let port = c.cmd(&format!("START {id} --debug"))["debug"]["port"].as_u64().unwrap();
    let out = gdb(&[&format!("target remote 127.0.0.1:{port}"), "detach"]);
    assert!(out.contains("detached]"), "{out}");
    let detached = Instant::now();
    while c.cmd(&format!("STATUS {id}"))["state"] != "RUNNING" {
        assert!(detached.elapsed() < Duration::from_secs(2), "still DEBUGGING after gdb detached");
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = Instant::now() + Duration::from_secs(5);
    while ticks(&mut c, &id) < 3 {
        assert!(Instant::now() < end, "the program did not run after the detach");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The released program (not pid 2: gdbserver launched it) can be attached to later.
    let r = c.cmd(&format!("DEBUG {id}"));
    let line = r["debug"]["gdb"].as_str().unwrap().to_string();
    let port = r["debug"]["port"].as_u64().unwrap();
    let ns_pid = r["debug"]["ns_pid"].as_u64().unwrap();
    assert_ne!(ns_pid, 2, "{r}");
    assert!(line.contains(&format!("file target:/proc/{ns_pid}/exe")), "{line}");
    let out = gdb(&[
        &format!("target remote 127.0.0.1:{port}"),
        &format!("file target:/proc/{ns_pid}/exe"),
        "print counter > 41",
        "detach",
    ]);
    assert!(out.contains("$1 = 1"), "{out}");
    c.cmd(&format!("KILL {id}"));
    // gdb killed while the program runs: detached for it, RUNNING again at once.
    let id = c.load(&looper);
    let port = c.cmd(&format!("START {id} --debug"))["debug"]["port"].as_u64().unwrap();
    let mut gdb = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", &format!("target remote 127.0.0.1:{port}"), "-ex", "continue"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let st = c.cmd(&format!("STATUS {id}"));
        if st["debug"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")) && ticks(&mut c, &id) >= 3 {
            break;
        }
        assert!(Instant::now() < end, "the program never ran under gdb: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    gdb.kill().unwrap();
    let _ = gdb.wait();
    let killed = Instant::now();
    while c.cmd(&format!("STATUS {id}"))["state"] != "RUNNING" {
        assert!(killed.elapsed() < Duration::from_secs(2), "still DEBUGGING after the debugger died");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = ticks(&mut c, &id);
    std::thread::sleep(Duration::from_millis(400));
    assert!(ticks(&mut c, &id) > before, "the program did not run on after its debugger died");
    // Nobody comes before the deadline: an event says so, and the program runs.
    let mut sub = d.client();
    assert_eq!(sub.cmd("EVENTS")["ok"], true);
    let id = c.load(&looper);
    c.cmd(&format!("START {id} --debug"));
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = sub.read();
        if v["event"] == "debug_expired" && v["id"] == id.as_str() {
            break;
        }
        assert!(Instant::now() < end, "no debug_expired event");
    }
    let end = Instant::now() + Duration::from_secs(5);
    while ticks(&mut c, &id) < 3 {
        assert!(Instant::now() < end, "the program did not run after the deadline");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.cmd(&format!("STATUS {id}"))["state"], "RUNNING");
}

#[test]
fn root_extended_remote_run_restarts_the_program() {
    if !require_root("root_extended_remote_run_restarts_the_program") || !tools_present() {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&compile_g("add_ext", ADD));
    let port = c.cmd(&format!(r#"START {id} --debug {{"args":["2","3"]}}"#))["debug"]["port"].as_u64().unwrap();
    let out = gdb(&[
        &format!("target extended-remote 127.0.0.1:{port}"),
        "break add",
        "continue",
        "run",
        "kill",
        "run",
        "continue",
    ]);
    assert!(out.contains("Breakpoint 1, add (a=2, b=3)"), "{out}");
    assert_eq!(out.matches("Breakpoint 1, add (a=1, b=2)").count(), 2, "run did not restart it twice:\n{out}");
    assert!(out.contains("exited with code 07"), "{out}");
    let s = c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert_eq!(s["exit"]["code"], 7, "{s}");
    assert_eq!(s["runs"], 1, "one run of the session");
    assert_eq!(c.cmd(&format!("LOGS {id}"))["data"], "sum=3\n", "the last program's output");
}

#[test]
fn root_lantern_run_debug_stops_at_the_breakpoint() {
    if !require_root("root_lantern_run_debug_stops_at_the_breakpoint") || !tools_present() {
        return;
    }
    let d = Daemon::start(&["--debug-ports", "41010-41010"]);
    let dir = std::env::temp_dir().join(format!("dl-debug-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prog = dir.join("add");
    std::fs::write(&prog, compile_g("add_run", ADD)).unwrap();
    let lantern = tests::bin_dir().join("lantern");
    // gdb's commands from a pipe: the output is what a terminal would show.
    let mut child = Command::new(&lantern)
        .args(["--rig", &d.addr.to_string(), "run", "--debug", "--break", "add"])
        .arg(&prog)
        .args(["--", "2", "3"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"bt\nprint a + b\ncontinue\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Breakpoint 1, add (a=2, b=3)"), "{text}");
    assert!(text.contains("in main (argc=3"), "{text}");
    assert!(text.contains("$1 = 5"), "{text}");
    assert!(text.contains("sum=5"), "the program's output is shown:\n{text}");
    assert_eq!(out.status.code(), Some(7), "the program's exit code is lantern's:\n{text}");
    // No port was opened for it, and the session is gone.
    assert!(std::net::TcpStream::connect(("127.0.0.1", 41010)).is_err());
    assert_eq!(d.client().cmd("LIST")["sessions"].as_array().unwrap().len(), 0);
    // On a terminal, as a person uses it.
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "tmux is missing (scripts/install-deps installs it)");
        return;
    }
    let session = format!("dl-debug-{}", std::process::id());
    let cmd = format!(
        "{} --rig {} run --debug --break add {} -- 2 3; echo LANTERN-EXIT=$?; sleep 30",
        lantern.display(),
        d.addr,
        prog.display()
    );
    assert!(Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "150", "-y", "50", &cmd])
        .status()
        .unwrap()
        .success());
    let screen = |want: &str| -> Result<String, String> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let cap = Command::new("tmux").args(["capture-pane", "-p", "-t", &session]).output().unwrap();
            let s = String::from_utf8_lossy(&cap.stdout).into_owned();
            if s.contains(want) {
                return Ok(s);
            }
            if Instant::now() > end {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let keys = |k: &str| {
        let _ = Command::new("tmux").args(["send-keys", "-t", &session, k, "Enter"]).status();
    };
    let at_break = screen("Breakpoint 1, add (a=2, b=3)").and_then(|_| screen("(gdb)"));
    if at_break.is_ok() {
        keys("continue");
    }
    let exited = at_break.clone().and_then(|_| screen("exited with code 07"));
    if exited.is_ok() {
        keys("quit");
    }
    let done = exited.clone().and_then(|_| screen("LANTERN-EXIT=7"));
    let _ = Command::new("tmux").args(["kill-session", "-t", &session]).status();
    let _ = std::fs::remove_dir_all(&dir);
    at_break.expect("never at the breakpoint on the terminal");
    exited.expect("the program did not run to its end");
    done.expect("lantern did not exit with the program's code");
}

#[test]
fn root_gdb_pipe_needs_no_debug_port() {
    if !require_root("root_gdb_pipe_needs_no_debug_port") || !tools_present() {
        return;
    }
    let d = Daemon::start(&["--debug-ports", "41000-41000"]);
    let mut c = d.client();
    let id = c.load(&compile_g("looper_pipe", LOOPER));
    c.cmd(&format!("START {id}"));
    std::thread::sleep(Duration::from_millis(200));
    let lantern = tests::bin_dir().join("lantern");
    let out = gdb(&[
        &format!("target remote | {} gdb-pipe {} {id}", lantern.display(), d.addr),
        "file target:/proc/2/exe",
        "print counter > 41",
        "break work",
        "continue",
        "bt",
        "detach",
    ]);
    assert!(out.contains("$1 = 1") && out.contains("Breakpoint 1, work (") && out.contains("in main ()"), "{out}");
    // No port was opened for it.
    assert!(std::net::TcpStream::connect(("127.0.0.1", 41000)).is_err());
    let end = Instant::now() + Duration::from_secs(5);
    while c.cmd(&format!("STATUS {id}"))["state"] != "RUNNING" {
        assert!(Instant::now() < end, "never back to RUNNING after gdb-pipe");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn root_bundle_backtrace_has_program_and_library_symbols() {
    if !require_root("root_bundle_backtrace_has_program_and_library_symbols") || !tools_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dl-debug-bundle-{}", std::process::id()));
    let b = dir.join("b");
    std::fs::create_dir_all(b.join("bin")).unwrap();
    std::fs::create_dir_all(b.join("lib")).unwrap();
    std::fs::write(dir.join("lib.c"), "int secret(int x) {\n    int y = x * 6;\n    return y;\n}\n").unwrap();
    std::fs::write(
        dir.join("app.c"),
        "#include <stdio.h>\n#include <unistd.h>\nint secret(int);\nint main(void) {\n    for (int i = 0; ; i++) {\n        printf(\"%d\\n\", secret(i));\n        fflush(stdout);\n        usleep(50000);\n    }\n}\n",
    )
    .unwrap();
    let cc = |args: &[&str]| assert!(Command::new("cc").args(args).current_dir(&dir).status().unwrap().success());
    cc(&["-g", "-O0", "-shared", "-fPIC", "-o", "b/lib/libsecret.so", "lib.c"]);
    cc(&["-g", "-O0", "-o", "b/bin/app", "app.c", "-Lb/lib", "-lsecret", "-Wl,-rpath,$ORIGIN/../lib"]);
    let tgz = dir.join("b.tgz");
    assert!(Command::new("tar").arg("czf").arg(&tgz).arg("-C").arg(&b).arg(".").status().unwrap().success());
    let tgz = std::fs::read(tgz).unwrap();
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.send_raw(format!("UPLOAD {} bin/app\n", tgz.len()).as_bytes());
    c.send_raw(&tgz);
    let up = c.read();
    assert_eq!(up["ok"], true, "{up}");
    let id = up["id"].as_str().unwrap().to_string();
    c.cmd(&format!("START {id}"));
    std::thread::sleep(Duration::from_millis(300));
    let r = c.cmd(&format!("DEBUG {id}"));
    let port = r["debug"]["port"].as_u64().unwrap();
    let out = gdb(&[
        &format!("target remote 127.0.0.1:{port}"),
        "file target:/proc/2/exe",
        "break secret",
        "continue",
        "bt",
        "detach",
    ]);
    assert!(out.contains("secret (x=") && out.contains("lib.c"), "no symbols from the bundled library:\n{out}");
    assert!(out.contains("in main () at") && out.contains("app.c"), "no symbols from the program:\n{out}");
    // START --debug of a bundle: gdbserver launches /bundle/bin/app; `target remote` alone
    // finds the program's and the library's symbols.
    c.send_raw(format!("UPLOAD {} bin/app\n", tgz.len()).as_bytes());
    c.send_raw(&tgz);
    let id = c.read()["id"].as_str().unwrap().to_string();
    let r = c.cmd(&format!("START {id} --debug"));
    let port = r["debug"]["port"].as_u64().unwrap();
    let out = gdb(&[&format!("target remote 127.0.0.1:{port}"), "break secret", "continue", "bt", "kill"]);
    assert!(out.contains("Reading symbols from target:/bundle/bin/app"), "{out}");
    assert!(out.contains("secret (x=0) at lib.c") && out.contains("in main () at app.c"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_debug_port_refuses_other_hosts() {
    if !require_root("root_debug_port_refuses_other_hosts") || !tools_present() {
        return;
    }
    let netns_pair = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/netns-pair");
    let dir = std::env::temp_dir().join(format!("dl-debug-hosts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("looper"), compile_g("looper_hosts", LOOPER)).unwrap();
    // The client host asks for a debug port; the rig host itself (another address) tries it
    // first and must be turned away; then the client's gdb gets in.
    std::fs::write(
        dir.join("ask.py"),
        r#"
import json, socket, sys
s = socket.create_connection(("10.77.0.1", 4444)); f = s.makefile("rwb")
def cmd(line, data=None):
    f.write(line.encode() + b"\n")
    if data is not None: f.write(data)
    f.flush(); return json.loads(f.readline())
data = open(sys.argv[1] + "/looper", "rb").read()
i = cmd("UPLOAD %d" % len(data), data)["id"]
cmd("START " + i)
r = cmd("DEBUG " + i)
open(sys.argv[1] + "/port", "w").write(str(r["debug"]["port"]))
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("probe.py"),
        r#"
import socket, sys
port = int(open(sys.argv[1] + "/port").read())
s = socket.create_connection(("10.77.0.1", port)); s.settimeout(3)
try:
    s.sendall(b"$qSupported#37"); data = s.recv(100)
    print("PROBE", "CLOSED" if data == b"" else "ANSWERED %r" % data)
except (ConnectionResetError, BrokenPipeError):
    print("PROBE CLOSED")
except socket.timeout:
    print("PROBE HUNG")
"#,
    )
    .unwrap();
    let o = dir.display();
    let script = format!(
        r#"ip netns exec rig {d} --listen 10.77.0.1:4444 --insecure-no-auth --no-mdns 2>{o}/rig.log & D=$!
sleep 2
ip netns exec client python3 {o}/ask.py {o}
ip netns exec rig python3 {o}/probe.py {o} > {o}/probe.out 2>&1
ip netns exec client timeout 60 gdb -batch -nx -ex "target remote 10.77.0.1:$(cat {o}/port)" -ex 'file target:/proc/2/exe' -ex 'print counter > 41' -ex detach > {o}/gdb.out 2>&1
kill -TERM $D; wait $D
"#,
        d = tests::bin_dir().join("debuglantern").display()
    );
    assert!(Command::new(&netns_pair).args(["sh", "-c", &script]).status().unwrap().success());
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert!(
        read("probe.out").contains("PROBE CLOSED"),
        "another host got in: {} / {}",
        read("probe.out"),
        read("rig.log")
    );
    assert!(read("rig.log").contains("refused a debug connection from 10.77.0.1"), "{}", read("rig.log"));
    assert!(read("gdb.out").contains("$1 = 1"), "the client's gdb did not get in:\n{}", read("gdb.out"));
    let _ = std::fs::remove_dir_all(dir);
}
