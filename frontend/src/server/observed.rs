//! A run's observation (START `observe`) as it arrives from the session's init — a sealed
//! memfd of untrusted bytes — checked, decoded with its bounds, and turned into the
//! receipt's `observed` and the `exited` event's summary.

use proto::reply::{ExecSeen, FileSeen, NetSeen, Observed, ObservedEvent, ObservedSummary, ObservedTruncated};
use proto::Time;
use shared::observe::{self, errno_name, EventKind};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

/// Reads the record: the descriptor must be a memfd sealed against writing, of at most
/// [`observe::MAX_BYTES`]; anything else is dropped with a log line.
pub fn read(fd: OwnedFd) -> Option<Observed> {
    let size = sealed_size(&fd, "observation")? as usize;
    if size > observe::MAX_BYTES {
        log::warn!("a run's observation is {size} bytes: dropped");
        return None;
    }
    let mut bytes = vec![0u8; size];
    let mut at = 0;
    while at < size {
        match nix::sys::uio::pread(&fd, &mut bytes[at..], at as i64) {
            Ok(0) | Err(_) => break,
            Ok(n) => at += n,
        }
    }
    bytes.truncate(at);
    match observe::Observed::decode(&bytes) {
        Ok(o) => Some(reply(o)),
        Err(e) => {
            log::warn!("a run's observation is malformed: {e}");
            None
        }
    }
}

/// The size of what a session's init sent in `fd` (an observation, a core dump), which
/// must be a memfd sealed against writing and shrinking: it cannot change under us.
/// `None`, with a log line, for anything else.
pub fn sealed_size(fd: &OwnedFd, what: &str) -> Option<u64> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).ok().map(SealFlag::from_bits_truncate);
    if !seals.is_some_and(|s| s.contains(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK)) {
        log::warn!("a run's {what} came in an unsealed descriptor: dropped");
        return None;
    }
    Some(nix::sys::stat::fstat(fd.as_raw_fd()).ok()?.st_size.max(0) as u64)
}

fn failures(f: &[(i32, u32)]) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for (e, n) in f {
        *m.entry(errno_name(*e)).or_insert(0) += n;
    }
    m
}

fn result(e: Option<i32>) -> String {
    e.map_or_else(|| "ok".to_string(), errno_name)
}

/// The receipt's form of a record.
pub fn reply(o: observe::Observed) -> Observed {
    let a = o.asked;
    let asked = [(a.files, "files"), (a.exec, "exec"), (a.net, "net")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, k)| k.to_string())
        .collect();
    let last_result = |n: &observe::NetSeen| -> String {
        // The result of the last call: its failure if the failures account for all calls.
        match n.failures.as_slice() {
            [(e, c)] if *c == n.count => errno_name(*e),
            _ if n.failures.is_empty() => "ok".into(),
            _ => "mixed".into(),
        }
    };
    Observed {
        asked,
        limit: a.limit,
        files: o
            .files
            .into_iter()
            .map(|f| FileSeen {
                failures: failures(&f.failures),
                path: f.path,
                resolved: f.resolved,
                read: f.read,
                write: f.write,
                create: f.create,
                exec: f.exec,
                count: f.count,
                first: Time::from_micros(f.first_us),
            })
            .collect(),
        execs: o
            .execs
            .into_iter()
            .map(|e| ExecSeen {
                pid: e.pid,
                ppid: e.ppid,
                path: e.path,
                argv: e.argv,
                argv_truncated: e.argv_truncated,
                time: Time::from_micros(e.time_us),
                result: result(e.error),
            })
            .collect(),
        net: o
            .net
            .iter()
            .map(|n| NetSeen {
                op: n.op.as_str().into(),
                family: n.family.clone(),
                address: n.address.clone(),
                port: n.port,
                count: n.count,
                first: Time::from_micros(n.first_us),
                result: last_result(n),
                failures: failures(&n.failures),
            })
            .collect(),
        truncated: ObservedTruncated {
            files: o.truncated.files,
            execs: o.truncated.execs,
            net: o.truncated.net,
            events: o.truncated.events,
        },
        events: o
            .events
            .into_iter()
            .map(|e| ObservedEvent {
                pid: e.pid,
                time: Time::from_micros(e.time_us),
                kind: match e.kind {
                    EventKind::File => "file",
                    EventKind::Exec => "exec",
                    EventKind::Net => "net",
                }
                .into(),
                what: e.what,
                error: e.error.map(errno_name),
            })
            .collect(),
    }
}

/// The `exited` event's summary.
pub fn summary(o: &Observed) -> ObservedSummary {
    let fails = |m: &BTreeMap<String, u32>| m.values().map(|&n| u64::from(n)).sum::<u64>();
    ObservedSummary {
        files: o.files.len(),
        execs: o.execs.len(),
        net: o.net.len(),
        failures: o.files.iter().map(|f| fails(&f.failures)).sum::<u64>()
            + o.net.iter().map(|n| fails(&n.failures)).sum::<u64>()
            + o.execs.iter().filter(|e| e.result != "ok").count() as u64,
        truncated: o.truncated.files + o.truncated.execs + o.truncated.net,
    }
}
