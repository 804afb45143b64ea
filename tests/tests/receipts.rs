//! Receipts and events (SPEC §9), against the real daemon. Needs root.

use serde_json::Value;
use sha2::Digest;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tests::{c_program, programs, require_root, Client, Daemon};

/// Forks 3 children that each print a line and exit; prints known output on both streams;
/// exits 5.
const FORKS: &str = r#"
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    for (int i = 0; i < 3; i++) {
        pid_t c = fork();
        if (c == 0) { printf("child %d\n", i); fflush(stdout); _exit(0); }
        waitpid(c, 0, 0);
    }
    printf("parent done\n"); fflush(stdout);
    fprintf(stderr, "an error line\n");
    return 5;
}"#;

fn sha(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

fn receipt(c: &mut Client, id: &str, run: Option<u32>) -> Value {
    let line = match run {
        Some(n) => format!("RECEIPT {id} --run {n}"),
        None => format!("RECEIPT {id}"),
    };
    let r = c.cmd(&line);
    assert_eq!(r["ok"], true, "{r}");
    r["receipt"].clone()
}

#[test]
fn root_receipt_records_exit_processes_output_and_jail() {
    if !require_root("root_receipt_records_exit_processes_output_and_jail") {
        return;
    }
    let d = Daemon::start(&["--stop-grace", "1s"]);
    let mut c = d.client();
    let id = c.load(&c_program("forks", FORKS, false));
    assert_eq!(c.cmd(&format!("RECEIPT {id}"))["error"], "invalid_state", "no run yet");
    c.cmd(&format!(r#"START {id} {{"args":["one","two"],"env":{{"TOKEN":"s3cret","LANG":"C"}}}}"#));
    c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    let r = receipt(&mut c, &id, None);
    assert_eq!(r["schema"], "debuglantern.receipt/1");
    assert_eq!(r["session"], id.as_str());
    assert_eq!(r["run"], 1);
    assert_eq!(r["exit"]["code"], 5);
    assert!(r["processes_spawned"].as_u64().unwrap() >= 4, "{r}");
    // Every process of the tree, as it ended: the three children (parent: the program,
    // status 0), then the program itself (ns pid 2, parent: the init, status 5).
    let procs = r["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 4, "{r}");
    assert_eq!(r["processes_unlisted"], 0);
    for child in &procs[..3] {
        assert_eq!((&child["ppid"], &child["exit_code"]), (&Value::from(2), &Value::from(0)), "{child}");
        // The name of a fork is its parent's (for a memfd program, the memfd's name).
        assert_eq!(child["comm"], procs[3]["comm"]);
        assert!(!child["comm"].as_str().unwrap().is_empty());
        assert!(child["pid"].as_u64().unwrap() > 2);
    }
    assert_eq!(
        (&procs[3]["pid"], &procs[3]["ppid"], &procs[3]["exit_code"]),
        (&Value::from(2), &Value::from(1), &Value::from(5))
    );
    let t = |v: &Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    for p in procs {
        assert!(t(&p["start"]) <= t(&p["end"]), "{p}");
        assert!(t(&p["end"]) <= t(&r["ended"]), "{p}");
    }
    assert_eq!(r["args"], serde_json::json!(["one", "two"]));
    let mut keys: Vec<&str> = r["env_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["LANG", "TOKEN"]);
    assert!(!r.to_string().contains("s3cret"), "a receipt must not carry environment values");
    let stdout = "child 0\nchild 1\nchild 2\nparent done\n";
    let stderr = "an error line\n";
    assert_eq!(r["stdout"]["bytes"], stdout.len());
    assert_eq!(r["stdout"]["sha256"], sha(stdout));
    assert_eq!(r["stderr"]["bytes"], stderr.len());
    assert_eq!(r["stderr"]["sha256"], sha(stderr));
    // The same bytes LOGS returned.
    let logs = c.cmd(&format!("LOGS {id}"))["data"].as_str().unwrap().to_string();
    assert_eq!(logs.len(), stdout.len() + stderr.len());
    assert!(logs.contains(stdout) && logs.contains(stderr));
    assert_eq!(r["sha256"], c.cmd(&format!("STATUS {id}"))["sha256"]);
    assert!(r["jail"]["namespaces"].as_array().unwrap().len() >= 5);
    assert!(r["limits"]["processes"].is_u64());
    assert!(r["duration_ms"].is_u64() && r["cpu_user_ms"].is_u64() && r["max_rss_kib"].as_u64().unwrap() > 0);

    // A killed run says signal 9; a limit hit says which; earlier runs stay readable.
    let sleeper = c.load(&c_program("sleeper", programs::SLEEPER, false));
    c.cmd(&format!("START {sleeper}"));
    c.cmd(&format!("KILL {sleeper}"));
    assert_eq!(receipt(&mut c, &sleeper, None)["exit"]["signal"], 9);
    let spin = c.load(&c_program("escape", include_str!("../programs/escape.c"), false));
    c.cmd(&format!(r#"START {spin} {{"args":["cpu"],"limits":{{"cpu_seconds":1}}}}"#));
    c.wait_state(&spin, "STOPPED", Duration::from_secs(10));
    assert_eq!(receipt(&mut c, &spin, None)["limit_hit"], "cpu");
    c.cmd(&format!("START {id}"));
    c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert_eq!(receipt(&mut c, &id, None)["run"], 2);
    assert_eq!(receipt(&mut c, &id, Some(1))["args"], serde_json::json!(["one", "two"]));
    // Without the process list (fork-heavy programs): none listed, still counted.
    c.cmd(&format!(r#"START {id} {{"list_processes":false}}"#));
    c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    let r = receipt(&mut c, &id, None);
    assert_eq!((&r["run"], &r["exit"]["code"]), (&Value::from(3), &Value::from(5)));
    assert_eq!(r["processes"], serde_json::json!([]));
    assert!(r["processes_spawned"].as_u64().unwrap() >= 4, "{r}");
    assert_eq!(c.cmd(&format!("RECEIPT {id} --run 9"))["error"], "not_found");
}

#[test]
fn root_event_order_holds_under_fifty_parallel_runs() {
    if !require_root("root_event_order_holds_under_fifty_parallel_runs") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut sub = d.client();
    assert_eq!(sub.cmd("EVENTS")["subscribed"], true);
    let bin = c_program("hello", programs::HELLO, false);
    let ids: Vec<String> = {
        let mut c = d.client();
        (0..50).map(|_| c.load(&bin)).collect()
    };
    let addr = d.addr;
    let threads: Vec<_> = ids
        .chunks(5)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for id in &chunk {
                    assert_eq!(c.cmd(&format!("START {id}"))["ok"], true);
                }
                for id in &chunk {
                    c.wait_state(id, "STOPPED", Duration::from_secs(30));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Collect until every run has exited.
    let mut seen: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    let mut last_seq = 0;
    let mut exited = 0;
    let end = Instant::now() + Duration::from_secs(30);
    while exited < 50 {
        assert!(Instant::now() < end, "only {exited} exits seen");
        let v = sub.read();
        assert!(v.get("missed").is_none(), "events were dropped: {v}");
        let seq = v["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "sequence numbers go backwards: {seq} after {last_seq}");
        last_seq = seq;
        let event = v["event"].as_str().unwrap().to_string();
        if event == "exited" {
            exited += 1;
        }
        seen.entry(v["id"].as_str().unwrap().to_string()).or_default().push((event, seq));
    }
    for id in &ids {
        let evs = &seen[id];
        let order: Vec<&str> = evs.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(order, ["uploaded", "spawned", "setup_finished", "exited"], "session {id}");
    }
}

#[test]
fn root_session_event_stream_ends_at_delete_and_slow_subscribers_do_not_stall() {
    if !require_root("root_session_event_stream_ends_at_delete_and_slow_subscribers_do_not_stall") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&c_program("hello", programs::HELLO, false));
    let mut one = d.client();
    assert_eq!(one.cmd(&format!("EVENTS {id}"))["ok"], true);
    // A subscriber that never reads.
    let mut lazy = d.client();
    lazy.send_raw(b"EVENTS\n");
    for _ in 0..100 {
        c.cmd(&format!("START {id}"));
        c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    }
    let t = Instant::now();
    assert_eq!(d.client().cmd("HELLO")["ok"], true);
    assert!(t.elapsed() < Duration::from_secs(1));
    c.cmd(&format!("DELETE {id}"));
    let mut events = 0;
    loop {
        let v = one.read();
        if v["end"] == true {
            assert_eq!(v["deleted"], true);
            break;
        }
        assert_eq!(v["id"], id.as_str());
        events += 1;
    }
    assert_eq!(events, 100 * 3 + 1, "100 runs × (spawned, setup_finished, exited) + deleted");
    // The connection is usable again after the stream ended.
    assert_eq!(one.cmd("HELLO")["ok"], true);
    assert_eq!(one.cmd("EVENTS 00000000-0000-0000-0000-000000000000")["error"], "not_found");
}
