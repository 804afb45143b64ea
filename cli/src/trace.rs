//! A receipt as a Chrome/Perfetto trace (JSON object format): the run, its setup, the
//! program and the debugger's attach windows as spans, limit hits as instants, and a track
//! per session pid with each process from its start to its exit.

use anyhow::{bail, Result};
use proto::reply::Receipt;
use serde_json::{json, Value};
use std::collections::HashMap;

fn exit_text(e: Option<proto::reply::Exit>) -> String {
    e.map_or_else(|| "-".into(), |e| e.to_string())
}

/// The trace of a run.
pub fn perfetto(r: &Receipt) -> Result<Value> {
    let mut at = HashMap::new();
    let mut debug_windows = Vec::new();
    let mut attached = None;
    for m in &r.timeline {
        let us = m.time.micros();
        match m.event.as_str() {
            "debug_attached" => attached = Some(us),
            "debug_detached" => debug_windows.extend(attached.take().map(|a| (a, us))),
            _ => {}
        }
        at.insert(m.event.as_str(), us);
    }
    let get = |k: &str| at.get(k).copied();
    let (Some(spawned), Some(exited)) = (get("spawned"), get("exited")) else {
        bail!("the receipt has no timeline (a run of an older rig?)");
    };
    let ready = get("setup_finished").unwrap_or(spawned);
    let span = |name: &str, ts: u64, end: u64, tid: u64| json!({"name": name, "cat": "run", "ph": "X", "ts": ts, "dur": end.saturating_sub(ts), "pid": 1, "tid": tid, "args": {"session": r.session, "run": r.run}});
    let mut events = vec![
        json!({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": format!("session {}", r.session)}}),
        span(&format!("run {}", r.run), spawned, exited, 1),
        span("jail setup", spawned, ready, 2),
        span(&format!("program ({})", exit_text(r.exit)), ready, exited, 2),
    ];
    // A debugger still attached when the run ended: its window ends with the run.
    debug_windows.extend(attached.map(|a| (a, exited)));
    for (a, b) in debug_windows {
        events.push(span("debugger attached", a, b, 3));
    }
    if let Some(t) = get("limit_hit") {
        let limit = r.limit_hit.map_or("", |l| l.as_str());
        events.push(json!({"name": format!("limit hit: {limit}"), "ph": "i", "s": "p", "ts": t, "pid": 1, "tid": 2}));
    }
    // The kernel keeps start times in clock ticks (10 ms), so a start is clamped into the run.
    if !r.processes.is_empty() {
        events.push(
            json!({"name": "process_name", "ph": "M", "pid": 2, "args": {"name": "process tree (session pids)"}}),
        );
    }
    for p in &r.processes {
        let end = p.end.micros().min(exited);
        let start = p.start.micros().clamp(spawned, end);
        events.push(json!({"name": "thread_name", "ph": "M", "pid": 2, "tid": p.pid, "args": {"name": format!("pid {} ({})", p.pid, p.comm)}}));
        events.push(json!({
            "name": format!("{} (exit {})", p.comm, p.exit_code), "cat": "process", "ph": "X", "ts": start,
            "dur": end - start, "pid": 2, "tid": p.pid,
            "args": {"pid": p.pid, "ppid": p.ppid, "exit_code": p.exit_code},
        }));
    }
    // Observed calls: instant events on the track of the process that made them (a
    // process that was not listed gets a track of its own).
    if let Some(o) = &r.observed {
        let listed: std::collections::HashSet<u32> = r.processes.iter().map(|p| p.pid).collect();
        if r.processes.is_empty() && !o.events.is_empty() {
            events.push(
                json!({"name": "process_name", "ph": "M", "pid": 2, "args": {"name": "process tree (session pids)"}}),
            );
        }
        let mut named: std::collections::HashSet<u32> = listed.clone();
        for e in &o.events {
            if named.insert(e.pid) {
                events.push(json!({"name": "thread_name", "ph": "M", "pid": 2, "tid": e.pid, "args": {"name": format!("pid {}", e.pid)}}));
            }
            let name = match &e.error {
                Some(err) => format!("{} → {err}", e.what),
                None => e.what.clone(),
            };
            events.push(json!({
                "name": name, "cat": e.kind, "ph": "i", "s": "t", "ts": e.time.micros().clamp(spawned, exited),
                "pid": 2, "tid": e.pid, "args": {"kind": e.kind, "what": e.what, "error": e.error},
            }));
        }
    }
    Ok(json!({"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"receipt": r}}))
}
