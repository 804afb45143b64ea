//! Post-mortem core dumps (issue 19) with the real daemon over TCP, `lantern core` and the
//! real gdb: a NULL dereference in `crash_here()`, a crash in one of several threads, a
//! core bigger than `core_bytes` (cut, stacks first), `core_bytes` 0 (none), another
//! identity (`not_found`), and a program that traces its own child (strace) in a traced
//! session.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;
use tests::{bin_dir, c_program, require_root, Client, Daemon};

const CRASH: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) void crash_here(volatile int *p) { *p = 42; }
static void *idle(void *a) { (void)a; for (;;) pause(); return 0; }
static void *worker(void *a) { (void)a; usleep(100000); crash_here(0); return 0; }
int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "threads")) {
        pthread_t t[3];
        pthread_create(&t[0], 0, idle, 0); pthread_create(&t[1], 0, worker, 0); pthread_create(&t[2], 0, idle, 0);
        for (;;) pause();
    }
    if (argc > 1 && !strcmp(argv[1], "big")) {
        size_t n = 32 << 20; unsigned char *b = malloc(n);
        for (size_t i = 0; i < n; i++) b[i] = (unsigned char)((i * 2654435761u) >> 13);
        crash_here(0);
        return b[7];
    }
    crash_here(0);
    return 0;
}
"#;

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef00";

fn scratch() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("debuglantern-cores-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn authed(d: &Daemon, token: &str) -> Client {
    let mut c = d.client();
    assert_eq!(c.cmd(&format!("AUTH {token}"))["ok"], true);
    c
}

/// Runs `args` of the loaded session `id` to its end; its status.
fn crash(c: &mut Client, id: &str, opts: &str) -> proto::reply::Status {
    c.cmd(&format!("START {id} {opts}"));
    c.wait_state(id, "STOPPED", Duration::from_secs(120));
    c.status(id)
}

/// `lantern core` into a file, then gdb's backtrace of it.
fn backtrace(d: &Daemon, token: &std::path::Path, id: &str, prog: &std::path::Path, core: &std::path::Path) -> String {
    let out = Command::new(bin_dir().join("lantern"))
        .args(["--rig", &d.addr.to_string(), "--token-file", token.to_str().unwrap(), "core", id, "-o"])
        .arg(core)
        .output()
        .unwrap();
    assert!(out.status.success(), "lantern core: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-ex", "thread apply all bt"])
        .arg(prog)
        .arg(core)
        .output()
        .expect("run gdb");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn root_crashes_leave_core_dumps_that_gdb_reads_and_only_their_owner_gets() {
    if !require_root("root_crashes_leave_core_dumps_that_gdb_reads_and_only_their_owner_gets") {
        return;
    }
    let dir = scratch();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("alice {ALICE}\nbob {BOB}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let alice_file = dir.join("alice");
    std::fs::write(&alice_file, ALICE).unwrap();
    std::fs::set_permissions(&alice_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start(&["--auth-tokens", tokens.to_str().unwrap(), "--core-bytes", "64M"]);
    let bin = c_program("crash_core", CRASH, false);
    let prog = dir.join("crash_core");
    std::fs::write(&prog, &bin).unwrap();
    let mut c = authed(&d, ALICE);

    // A NULL dereference: STATUS carries the core, gdb shows the crashing frame.
    let id = c.load(&bin);
    let s = crash(&mut c, &id, "{}");
    let core = s.core.clone().unwrap_or_else(|| panic!("no core in {s:?}\n{}", d.log()));
    assert_eq!((core.signal, core.pid, core.threads, core.truncated), (11, 2, 1, false), "{core:?}");
    let receipt = c.cmd(&format!("RECEIPT {id}"));
    assert_eq!(receipt["receipt"]["core"]["sha256"], core.sha256.as_str(), "{receipt}");
    let bt = backtrace(&d, &alice_file, &id, &prog, &dir.join("core.1"));
    assert!(bt.contains("crash_here") && bt.contains("SIGSEGV"), "{bt}");

    // Another identity: the session, and so its core, does not exist for it.
    let mut bob = authed(&d, BOB);
    assert_eq!(bob.refused(&format!("CORE {id}")).error, proto::Code::NotFound);

    // A crash in one of four threads: every thread is in the core, the crashing one first.
    let id = c.load(&bin);
    let s = crash(&mut c, &id, r#"{"args":["threads"]}"#);
    let core = s.core.clone().expect("a core of the threaded crash");
    assert_eq!(core.threads, 4, "{core:?}");
    let bt = backtrace(&d, &alice_file, &id, &prog, &dir.join("core.2"));
    assert!(bt.contains("crash_here") && bt.contains("worker"), "{bt}");
    assert!(bt.matches("Thread ").count().max(bt.matches("LWP").count()) >= 4, "{bt}");

    // Bigger than core_bytes: cut at the limit, the stack kept, gdb still finds the frame.
    let id = c.load(&bin);
    let s = crash(&mut c, &id, r#"{"args":["big"],"limits":{"core_bytes":4194304}}"#);
    let core = s.core.clone().expect("a cut core");
    assert!(core.truncated && core.bytes <= 4 << 20, "{core:?}");
    let bt = backtrace(&d, &alice_file, &id, &prog, &dir.join("core.3"));
    assert!(bt.contains("crash_here"), "{bt}");
    // Asking for more than the rig keeps is refused; 0 keeps none.
    let e = c.refused(&format!(r#"START {id} {{"limits":{{"core_bytes":1099511627776}}}}"#));
    assert!(e.message.contains("core_bytes"), "{e:?}");
    let s = crash(&mut c, &id, r#"{"limits":{"core_bytes":0}}"#);
    assert!(s.summary.exit.is_some());
    // The last core stays until DELETE (the run without one does not replace it).
    assert!(s.core.is_some_and(|k| k.run == 1));
    c.cmd(&format!("DELETE {id}"));
    assert_eq!(c.refused(&format!("CORE {id}")).error, proto::Code::NotFound);

    // A traced session's program traces its own child.
    let id = c.load(&std::fs::read("/usr/bin/strace").unwrap());
    c.cmd(&format!(r#"START {id} {{"args":["-f","-e","trace=execve","/bin/true"]}}"#));
    c.wait_state(&id, "STOPPED", Duration::from_secs(60));
    let out = c.output(&id);
    assert!(out.contains("execve(\"/bin/true\"") && out.contains("exited with 0"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
