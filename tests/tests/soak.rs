//! A bounded soak (loopback only): 100 clients doing mixed upload / start / logs / status /
//! stop / kill / delete for `SOAK_SECONDS` (default 30). Afterwards: no protocol error, no
//! descriptor growth in either half, RSS growth within a bound, and no session process,
//! stray or zombie, left. Needs root.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::{c_program, proc_status, programs, require_root, Client, Daemon};

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    proc_status(pid, "VmRSS").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Processes on the host running as a session uid (the daemon's range above its base).
fn session_processes(uid_base: u32) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Some(uid) = proc_status(pid, "Uid").and_then(|u| u.split_whitespace().next()?.parse::<u32>().ok()) else {
            continue;
        };
        if uid > uid_base && uid < uid_base + 100_000 {
            v.push((pid, proc_status(pid, "State").unwrap_or_default()));
        }
    }
    v
}

/// Any reply that is not JSON, or a refusal other than the ones races make legitimate.
fn check(v: &Value, allowed: &[&str], errors: &Mutex<Vec<String>>) {
    if v["ok"] == true {
        return;
    }
    let code = v["error"].as_str().unwrap_or("");
    if !allowed.contains(&code) {
        errors.lock().unwrap().push(v.to_string());
    }
}

#[test]
fn root_soak_hundred_mixed_clients() {
    if !require_root("root_soak_hundred_mixed_clients") {
        return;
    }
    let secs: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let uid_base = 2_000_000_000u32;
    let d = Daemon::start(&["--max-sessions", "300", "--uid-base", &uid_base.to_string(), "--stop-grace", "200ms"]);
    let (fe, br) = (d.pid(), d.broker_pid);
    // Warm up once (allocator arenas, first sessions), then take the baseline.
    let hello = c_program("hello", programs::HELLO, false);
    let sleeper = c_program("sleeper", programs::SLEEPER, false);
    {
        let mut c = d.client();
        let id = c.load(&hello);
        c.cmd(&format!("START {id}"));
        c.wait_state(&id, "STOPPED", Duration::from_secs(10));
        c.cmd(&format!("DELETE {id}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (fds0, rss0) = (fds(fe) + fds(br), rss_kib(fe) + rss_kib(br));

    // Two rounds: the first reaches the allocator's high-water mark (buffers of 100
    // connections, the event log); a leak shows as growth again in the second.
    let round1 = round(&d, secs.div_ceil(2), &hello, &sleeper);
    let rss1 = rss_kib(fe) + rss_kib(br);
    let round2 = round(&d, secs.div_ceil(2), &hello, &sleeper);
    let (fds2, rss2) = (fds(fe) + fds(br), rss_kib(fe) + rss_kib(br));
    assert!(fds2 <= fds0 + 2, "descriptors grew: {fds0} → {fds2}");
    assert!(rss1 < rss0 + 48 * 1024, "RSS grew by more than 48 MiB in the first round: {rss0} → {rss1} KiB");
    assert!(rss2 < rss1 + 4 * 1024, "RSS kept growing in the second round (a leak?): {rss1} → {rss2} KiB");
    let left = session_processes(uid_base);
    assert!(left.is_empty(), "session processes left behind (stray or zombie): {left:?}");
    eprintln!("soak: {round1} + {round2} ops in {secs} s; fds {fds0} → {fds2}; RSS {rss0} → {rss1} → {rss2} KiB");
}

/// 100 clients for `secs`; returns the number of operations, after checking there was no
/// protocol error and nothing is left loaded.
fn round(d: &Daemon, secs: u64, hello: &[u8], sleeper: &[u8]) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..100)
        .map(|i: u32| {
            let (stop, errors, ops, addr) = (stop.clone(), errors.clone(), ops.clone(), d.addr);
            let (hello, sleeper) = (hello.to_vec(), sleeper.to_vec());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut n: u32 = i;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_mul(1103515245).wrapping_add(12345);
                    let long = n.is_multiple_of(3);
                    let up = c.upload(if long { &sleeper } else { &hello });
                    check(&up, &["limit_reached"], &errors);
                    let Some(id) = up["id"].as_str().map(str::to_string) else { continue };
                    check(&c.cmd(&format!("START {id}")), &[], &errors);
                    check(&c.cmd(&format!("STATUS {id}")), &[], &errors);
                    check(&c.cmd(&format!("LOGS {id}")), &[], &errors);
                    check(&c.cmd("LIST"), &[], &errors);
                    // STOP/KILL may race with the program's own exit: invalid_state is fine.
                    let verb = if n.is_multiple_of(2) { "STOP" } else { "KILL" };
                    check(&c.cmd(&format!("{verb} {id}")), &["invalid_state"], &errors);
                    if n.is_multiple_of(5) {
                        check(&c.cmd(&format!("RECEIPT {id}")), &["invalid_state"], &errors);
                    }
                    check(&c.cmd(&format!("DELETE {id}")), &[], &errors);
                    ops.fetch_add(7, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("a client thread failed (a reply was missing or not JSON)");
    }
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "{} protocol errors, first: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert!(ops.load(Ordering::Relaxed) > 1000, "the soak did too little: {} ops", ops.load(Ordering::Relaxed));
    assert!(d.client().cmd("LIST")["sessions"].as_array().unwrap().is_empty());
    // Settle before the caller measures.
    std::thread::sleep(Duration::from_millis(500));
    ops.load(Ordering::Relaxed)
}
