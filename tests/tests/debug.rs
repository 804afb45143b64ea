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
    assert_eq!(c.cmd(&format!("DEBUG {id}"))["error"], "invalid_state", "a second DEBUG while debugging");
    assert_eq!(c.cmd(&format!("STATUS {id}"))["state"], "DEBUGGING");
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
}

#[test]
fn root_start_debug_holds_at_entry_and_keeps_the_exit_code() {
    if !require_root("root_start_debug_holds_at_entry_and_keeps_the_exit_code") || !tools_present() {
        return;
    }
    let src = r#"
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
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&compile_g("short_debug", src));
    let r = c.cmd(&format!("START {id} --debug"));
    assert_eq!(r["state"], "DEBUGGING", "{r}");
    assert_eq!(r["ns_pid"], 2);
    let port = r["debug"]["port"].as_u64().unwrap();
    let line = r["debug"]["gdb"].as_str().unwrap();
    assert!(line.contains("handle SIGSTOP nostop noprint nopass"), "{line}");
    // Held: nothing printed yet.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.cmd(&format!("LOGS {id}"))["data"], "");
    let out = gdb(&[
        "handle SIGSTOP nostop noprint nopass",
        &format!("target remote 127.0.0.1:{port}"),
        "file target:/proc/2/exe",
        "break main",
        "continue",
        "next",
        "print v",
        "continue",
    ]);
    assert!(out.contains("Breakpoint 1, main ()"), "{out}");
    assert!(out.contains("$1 = 42"), "{out}");
    assert!(out.contains("exited with code 07"), "{out}");
    let s = c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert_eq!(s["exit"]["code"], 7, "the program's own exit code: {s}");
    assert_eq!(c.cmd(&format!("LOGS {id}"))["data"], "v=42\n", "its output still reaches LOGS");
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
