//! START `observe` (issue 20): what a run touched — files, execs, network attempts — in
//! its receipt, recorded by the session's init through the seccomp listener, with the
//! real daemon over TCP. A shell script run by busybox from a bundle (nobody here wrote
//! busybox) and a small C program do the same things; an unobserved run lists nothing; a
//! flood of distinct paths is cut at the bound with the count right and the daemon's
//! memory bounded; observation works under a debugger and without the process list.

use proto::reply::{Observed, Receipt, ReceiptReply};
use std::time::Duration;
use tests::{c_program, require_root, tarball as tar, Client, Daemon};

const TOUCHER: &str = r#"
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
static void tcp(const char *ip, int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    int r = connect(s, (struct sockaddr *)&a, sizeof a);
    printf("connect %s:%d = %d\n", ip, port, r);
    close(s);
}
int main(int argc, char **argv) {
    if (argc > 1) sleep(atoi(argv[1]));
    char buf[64];
    int fd = open("/etc/passwd", O_RDONLY);
    if (fd >= 0) { read(fd, buf, sizeof buf); close(fd); }
    fd = open("/tmp/out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) { write(fd, "x\n", 2); close(fd); }
    printf("nope=%d\n", open("/nope", O_RDONLY));
    pid_t p = fork();
    if (p == 0) { execl("/bin/true", "true", "one", "two", (char *)0); _exit(127); }
    waitpid(p, 0, 0);
    tcp("127.0.0.1", 1);
    tcp("10.0.0.1", 80);
    return 0;
}
"#;

/// Opens `n` distinct paths that do not exist.
const FLOOD_OPENS: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    char path[64];
    for (int i = 0; i < n; i++) { snprintf(path, sizeof path, "/tmp/none-%d", i); open(path, O_RDONLY); }
    return 0;
}
"#;

const SCRIPT: &str = "cat /etc/passwd > /dev/null
echo x > /tmp/out
cat /nope 2>/dev/null
/bin/true one two
nc 127.0.0.1 1 </dev/null 2>/dev/null
nc 10.0.0.1 80 </dev/null 2>/dev/null
exit 0
";

fn receipt(c: &mut Client, id: &str) -> Receipt {
    c.call::<ReceiptReply>(&format!("RECEIPT {id}")).receipt
}

fn run(c: &mut Client, id: &str, opts: &str) -> Receipt {
    c.cmd(&format!("START {id} {opts}"));
    c.wait_state(id, "STOPPED", Duration::from_secs(180));
    receipt(c, id)
}

/// Checks what both programs must have left in the record.
fn check_touched(o: &Observed, what: &str) {
    let file = |p: &str| o.files.iter().find(|f| f.path == p).unwrap_or_else(|| panic!("{what}: no {p} in {o:#?}"));
    let passwd = file("/etc/passwd");
    assert!(passwd.read && !passwd.write && !passwd.create, "{what}: {passwd:?}");
    assert!(passwd.failures.is_empty(), "{what}: {passwd:?}");
    let out = file("/tmp/out");
    assert!(out.write && out.create && !out.read, "{what}: {out:?}");
    let nope = file("/nope");
    assert_eq!(nope.failures.get("ENOENT"), Some(&1), "{what}: {nope:?}");
    assert!(!nope.read, "a failed open adds no flag: {nope:?}");
    let t = o.execs.iter().find(|e| e.path == "/bin/true").unwrap_or_else(|| panic!("{what}: no exec of /bin/true"));
    assert_eq!(t.argv[1..], ["one", "two"], "{what}: {t:?}");
    assert_eq!(t.result, "ok");
    assert!(t.ppid >= 2 && t.pid > t.ppid, "{what}: {t:?}");
    assert!(file("/bin/true").exec, "{what}: the exec counts as a file too");
    let net = |a: &str, port: u16| {
        o.net
            .iter()
            .find(|n| n.op == "connect" && n.address == a && n.port == port)
            .unwrap_or_else(|| panic!("{what}: no connect to {a}:{port}: {:#?}", o.net))
    };
    assert_eq!(net("127.0.0.1", 1).result, "ECONNREFUSED", "{what}");
    assert_eq!(net("10.0.0.1", 80).result, "ENETUNREACH", "{what}");
    assert_eq!(net("10.0.0.1", 80).family, "inet");
    assert_eq!(o.truncated.files + o.truncated.execs + o.truncated.net, 0);
    assert!(!o.events.is_empty());
}

#[test]
fn root_observed_runs_list_files_execs_and_network_attempts() {
    if !require_root("root_observed_runs_list_files_execs_and_network_attempts") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    // The C program.
    let id = c.load(&c_program("toucher", TOUCHER, false));
    let r = run(&mut c, &id, r#"{"observe":["files","exec","net"]}"#);
    assert_eq!(r.schema, "debuglantern.receipt/2");
    assert_eq!(r.exit, Some(proto::reply::Exit::Code(0)));
    let o = r.observed.expect("observed");
    assert_eq!(o.asked, ["files", "exec", "net"]);
    check_touched(&o, "C program");
    // The program's own exec comes first, as the init ran it.
    assert_eq!((o.execs[0].pid, o.execs[0].ppid), (2, 1), "{:?}", o.execs[0]);
    let out = c.output(&id);
    assert!(out.contains("nope=-1") && out.contains("connect 127.0.0.1:1 = -1"), "{out}");
    // The same run unobserved: nothing listed; an exited event says nothing of it.
    let plain = run(&mut c, &id, "");
    assert!(plain.observed.is_none());
    assert_eq!(plain.schema, "debuglantern.receipt/2");
    // A subset: exec only.
    let only = run(&mut c, &id, r#"{"observe":["exec"]}"#).observed.unwrap();
    assert!(only.files.is_empty() && only.net.is_empty() && !only.execs.is_empty(), "{only:?}");
    // A bad kind is refused with a reason.
    let e = c.refused(&format!(r#"START {id} {{"observe":["disk"]}}"#));
    assert!(e.message.contains("\"disk\""), "{e:?}");

    // A shell script run by busybox from a bundle.
    let busybox = std::fs::read("/bin/busybox").expect("busybox (scripts/install-deps installs busybox-static)");
    let tgz = tar::gz(&[
        tar::entry(b"bin/busybox", b'0', 0o755, &busybox, b""),
        tar::entry(b"touch.sh", b'0', 0o755, format!("#!/bundle/bin/busybox sh\n{SCRIPT}").as_bytes(), b""),
    ]);
    c.send_raw(format!("UPLOAD {} touch.sh\n", tgz.len()).as_bytes());
    c.send_raw(&tgz);
    let up = c.read();
    assert_eq!(up["ok"], true, "{up}");
    let sid = up["id"].as_str().unwrap().to_string();
    let mut events = d.client();
    events.cmd(&format!("EVENTS {sid}"));
    let r = run(&mut c, &sid, r#"{"observe":["all"]}"#);
    assert_eq!(r.exit, Some(proto::reply::Exit::Code(0)), "{}", c.output(&sid));
    let o = r.observed.expect("observed");
    check_touched(&o, "busybox script");
    assert!(
        o.files.iter().any(|f| f.path == "/bundle/touch.sh" && f.read),
        "the script itself is read: {:#?}",
        o.files
    );
    // The exited event carries a summary.
    let summary = loop {
        let e = events.read();
        if e["event"] == "exited" {
            break e["observed"].clone();
        }
    };
    assert!(summary["files"].as_u64().unwrap() >= 4 && summary["failures"].as_u64().unwrap() >= 3, "{summary}");

    // lantern renders tables.
    let lantern = tests::bin_dir().join("lantern");
    let table = std::process::Command::new(&lantern)
        .args(["--rig", &d.addr.to_string(), "receipt", &sid, "--files", "--execs", "--net"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.lines().any(|l| l.starts_with("----") && l.contains("/nope") && l.contains("ENOENT×1")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("-wc-") && l.contains("/tmp/out")), "{table}");
    assert!(table.lines().any(|l| l.contains("ENETUNREACH") && l.contains("10.0.0.1:80")), "{table}");
    let trace = std::env::temp_dir().join(format!("dl-observe-{}.json", std::process::id()));
    let st = std::process::Command::new(&lantern)
        .args(["--rig", &d.addr.to_string(), "receipt", &sid, "--trace", trace.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let instants: Vec<&serde_json::Value> =
        t["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "i" && e["cat"] == "net").collect();
    assert!(instants.iter().any(|e| e["name"].as_str().unwrap().contains("10.0.0.1:80 → ENETUNREACH")), "{instants:?}");
    let _ = std::fs::remove_file(trace);
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: i32) -> u64 {
    tests::proc_status(pid, "VmRSS").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn root_a_flood_of_paths_is_cut_at_the_bound_and_memory_stays_bounded() {
    if !require_root("root_a_flood_of_paths_is_cut_at_the_bound_and_memory_stays_bounded") {
        return;
    }
    let d = Daemon::start(&["--observe-limit", "500"]);
    let mut c = d.client();
    let id = c.load(&c_program("flood_opens", FLOOD_OPENS, false));
    let before = (rss_kib(d.pid()), rss_kib(d.broker_pid));
    // In scripts/vm-test's software-emulated guest a round trip costs ~50× more: fewer paths.
    let n: u64 = if std::env::var_os("DL_EXPECT_V2").is_some() { 20_000 } else { 100_000 };
    let r = run(&mut c, &id, &format!(r#"{{"args":["{n}"],"observe":["files"],"limits":{{"wall_seconds":600}}}}"#));
    let o = r.observed.expect("observed");
    let flood: Vec<_> = o.files.iter().filter(|f| f.path.starts_with("/tmp/none-")).collect();
    assert_eq!(o.files.len(), 500, "the bound");
    // Every open is accounted for: kept (with its count) or counted as truncated.
    let kept: u64 = flood.iter().map(|f| u64::from(f.count)).sum();
    assert_eq!(kept + o.truncated.files, n, "{:?}", o.truncated);
    assert!(flood.iter().all(|f| f.failures.get("ENOENT") == Some(&1)));
    assert_eq!(o.events.len(), shared::observe::MAX_EVENTS);
    assert!(o.truncated.events > n - 5000);
    let after = (rss_kib(d.pid()), rss_kib(d.broker_pid));
    assert!(after.0 < before.0 + 16 * 1024, "the frontend grew from {} to {} KiB", before.0, after.0);
    assert!(after.1 < before.1 + 4 * 1024, "the broker grew from {} to {} KiB", before.1, after.1);
    // The receipt stays well under the record's limit.
    let size = serde_json::to_vec(&o).unwrap().len();
    assert!(size < 2 << 20, "{size} bytes");
}

#[test]
fn root_observation_works_under_a_debugger_and_without_the_process_list() {
    if !require_root("root_observation_works_under_a_debugger_and_without_the_process_list") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&c_program("toucher_dbg", TOUCHER, false));
    // Without the process list.
    let r = run(&mut c, &id, r#"{"observe":["all"],"list_processes":false}"#);
    assert!(r.processes.is_empty());
    check_touched(&r.observed.expect("observed"), "no process list");
    // START --debug: gdbserver launches it; gdb continues it to its end.
    let started = c.cmd(&format!(r#"START {id} --debug {{"observe":["all"]}}"#));
    assert_eq!(started["state"], "DEBUGGING", "{started}");
    let port = started["debug"]["port"].as_u64().unwrap();
    let gdb = std::process::Command::new("gdb")
        .args(["-q", "-batch", "-nx", "-ex", &format!("target remote 127.0.0.1:{port}"), "-ex", "continue"])
        .output()
        .expect("gdb");
    let st = c.wait_state(&id, "STOPPED", Duration::from_secs(60));
    assert_eq!(
        st["exit"]["code"],
        0,
        "{st}\n{}{}",
        String::from_utf8_lossy(&gdb.stdout),
        String::from_utf8_lossy(&gdb.stderr)
    );
    let o = receipt(&mut c, &id).observed.expect("observed under gdbserver");
    check_touched(&o, "under gdbserver");
    assert!(o.execs[0].path.ends_with("gdbserver"), "{:?}", o.execs[0]);
    // DEBUG: gdbserver attaches to the observed program while it sleeps.
    c.cmd(&format!(r#"START {id} {{"args":["2"],"observe":["all"]}}"#));
    std::thread::sleep(Duration::from_millis(300));
    let dbg = c.cmd(&format!("DEBUG {id}"));
    let port = dbg["debug"]["port"].as_u64().unwrap_or_else(|| panic!("{dbg}"));
    let gdb = std::process::Command::new("gdb")
        .args(["-q", "-batch", "-nx", "-ex", &format!("target remote 127.0.0.1:{port}"), "-ex", "continue"])
        .output()
        .expect("gdb");
    let st = c.wait_state(&id, "STOPPED", Duration::from_secs(60));
    assert_eq!(st["exit"]["code"], 0, "{st}\n{}", String::from_utf8_lossy(&gdb.stdout));
    check_touched(&receipt(&mut c, &id).observed.expect("observed with gdbserver attached"), "DEBUG attached");
    // A rig that refuses observation says so; one that observes by default does without asking.
    let no = Daemon::start(&["--no-observe"]);
    let mut c = no.client();
    let id = c.load(&c_program("toucher_no", TOUCHER, false));
    let e = c.refused(&format!(r#"START {id} {{"observe":["files"]}}"#));
    assert_eq!(e.error, proto::Code::Unsupported, "{e:?}");
    let by_default = Daemon::start(&["--observe-default", "net"]);
    let mut c = by_default.client();
    let id = c.load(&c_program("toucher_default", TOUCHER, false));
    let o = run(&mut c, &id, "").observed.expect("observed by default");
    assert!(o.files.is_empty() && o.net.len() == 2, "{o:?}");
    assert!(run(&mut c, &id, r#"{"observe":[]}"#).observed.is_none(), "[] turns the default off");
}
