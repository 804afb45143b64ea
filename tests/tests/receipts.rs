//! Receipts and events (SPEC §9), against the real daemon, read through the protocol's
//! reply types. Needs root.

use proto::reply::{EventKind, EventLine, Exit, LimitHit, Receipt, ReceiptReply, State, Subscribed};
use proto::Code;
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

fn receipt(c: &mut Client, id: &str, run: Option<u32>) -> Receipt {
    let line = match run {
        Some(n) => format!("RECEIPT {id} --run {n}"),
        None => format!("RECEIPT {id}"),
    };
    c.call::<ReceiptReply>(&line).receipt
}

const TEN_S: Duration = Duration::from_secs(10);

#[test]
fn root_receipt_records_exit_processes_output_and_jail() {
    if !require_root("root_receipt_records_exit_processes_output_and_jail") {
        return;
    }
    let d = Daemon::start(&["--stop-grace", "1s"]);
    let mut c = d.client();
    let id = c.load(&c_program("forks", FORKS, false));
    assert_eq!(c.refused(&format!("RECEIPT {id}")).error, Code::InvalidState, "no run yet");
    c.start(&id, r#"{"args":["one","two"],"env":{"TOKEN":"s3cret","LANG":"C"}}"#);
    c.wait_for(&id, State::Stopped, TEN_S);
    let r = receipt(&mut c, &id, None);
    assert_eq!(r.schema, "debuglantern.receipt/2");
    assert_eq!((r.session.to_string(), r.run, r.exit), (id.clone(), 1, Some(Exit::Code(5))));
    assert!(r.processes_spawned >= 4, "{r:?}");
    // Every process of the tree, as it ended: the three children (parent: the program,
    // status 0), then the program itself (ns pid 2, parent: the init, status 5).
    let procs = &r.processes;
    assert_eq!(procs.len(), 4, "{r:?}");
    assert_eq!(r.processes_unlisted, 0);
    for child in &procs[..3] {
        assert_eq!((child.ppid, child.exit_code), (2, 0), "{child:?}");
        // The name of a fork is its parent's (for a memfd program, the memfd's name).
        assert_eq!(child.comm, procs[3].comm);
        assert!(!child.comm.is_empty());
        assert!(child.pid > 2);
    }
    assert_eq!((procs[3].pid, procs[3].ppid, procs[3].exit_code), (2, 1, 5));
    for p in procs {
        assert!(p.start <= p.end && p.end <= r.ended, "{p:?}");
    }
    assert_eq!(r.args, ["one", "two"]);
    let mut keys = r.env_keys.clone();
    keys.sort();
    assert_eq!(keys, ["LANG", "TOKEN"]);
    assert!(!serde_json::to_string(&r).unwrap().contains("s3cret"), "a receipt must not carry environment values");
    let stdout = "child 0\nchild 1\nchild 2\nparent done\n";
    let stderr = "an error line\n";
    assert_eq!((r.stdout.bytes, r.stdout.sha256.as_str()), (stdout.len() as u64, sha(stdout).as_str()));
    assert_eq!((r.stderr.bytes, r.stderr.sha256.as_str()), (stderr.len() as u64, sha(stderr).as_str()));
    // The same bytes LOGS returned.
    let logs = c.output(&id);
    assert_eq!(logs.len(), stdout.len() + stderr.len());
    assert!(logs.contains(stdout) && logs.contains(stderr));
    assert_eq!(r.sha256, c.status(&id).sha256);
    assert!(r.jail.namespaces.len() >= 5);
    assert!(r.limits.processes.is_some());
    assert!(r.max_rss_kib > 0);

    // A killed run says signal 9; a limit hit says which; earlier runs stay readable.
    let sleeper = c.load(&c_program("sleeper", programs::SLEEPER, false));
    c.start(&sleeper, "");
    c.cmd(&format!("KILL {sleeper}"));
    assert_eq!(receipt(&mut c, &sleeper, None).exit, Some(Exit::Signal(9)));
    let spin = c.load(&c_program("escape", include_str!("../programs/escape.c"), false));
    c.start(&spin, r#"{"args":["cpu"],"limits":{"cpu_seconds":1}}"#);
    c.wait_for(&spin, State::Stopped, TEN_S);
    assert_eq!(receipt(&mut c, &spin, None).limit_hit, Some(LimitHit::Cpu));
    c.start(&id, "");
    c.wait_for(&id, State::Stopped, TEN_S);
    assert_eq!(receipt(&mut c, &id, None).run, 2);
    assert_eq!(receipt(&mut c, &id, Some(1)).args, ["one", "two"]);
    // Without the process list (fork-heavy programs): none listed, still counted.
    c.start(&id, r#"{"list_processes":false}"#);
    c.wait_for(&id, State::Stopped, TEN_S);
    let r = receipt(&mut c, &id, None);
    assert_eq!((r.run, r.exit), (3, Some(Exit::Code(5))));
    assert!(r.processes.is_empty());
    assert!(r.processes_spawned >= 4, "{r:?}");
    assert_eq!(c.refused(&format!("RECEIPT {id} --run 9")).error, Code::NotFound);
}

#[test]
fn root_event_order_holds_under_fifty_parallel_runs() {
    if !require_root("root_event_order_holds_under_fifty_parallel_runs") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut sub = d.client();
    let _: Subscribed = sub.call("EVENTS");
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
                    c.start(id, "");
                }
                for id in &chunk {
                    c.wait_for(id, State::Stopped, Duration::from_secs(30));
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
        let EventLine::Event(e) = sub.read_as::<EventLine>("EVENTS") else { panic!("events were dropped") };
        assert!(e.seq > last_seq, "sequence numbers go backwards: {} after {last_seq}", e.seq);
        last_seq = e.seq;
        if matches!(e.what, EventKind::Exited { .. }) {
            exited += 1;
        }
        seen.entry(e.id.to_string()).or_default().push((e.what.name().to_string(), e.seq));
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
    let _: Subscribed = one.call(&format!("EVENTS {id}"));
    // A subscriber that never reads.
    let mut lazy = d.client();
    lazy.send_raw(b"EVENTS\n");
    for _ in 0..100 {
        c.start(&id, "");
        c.wait_for(&id, State::Stopped, TEN_S);
    }
    let t = Instant::now();
    d.client().hello();
    assert!(t.elapsed() < Duration::from_secs(1));
    c.cmd(&format!("DELETE {id}"));
    let mut events = 0;
    loop {
        match one.read_as::<EventLine>("EVENTS") {
            EventLine::End(end) => {
                assert!(end.deleted);
                break;
            }
            EventLine::Event(e) => assert_eq!(e.id.to_string(), id),
            EventLine::Missed(m) => panic!("{m:?}"),
        }
        events += 1;
    }
    assert_eq!(events, 100 * 3 + 1, "100 runs × (spawned, setup_finished, exited) + deleted");
    // The connection is usable again after the stream ended.
    one.hello();
    assert_eq!(one.refused("EVENTS 00000000-0000-0000-0000-000000000000").error, Code::NotFound);
}
