//! Resource limits, as data. A session's list is built from its [`RunLimits`]; the halves
//! get only "no core dumps".

use crate::{Ctx, PolicyError};
use nix::sys::resource::{setrlimit, Resource};
use shared::RunLimits;

/// One limit: soft and hard set to the same value, so the program cannot raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Which resource.
    pub resource: Resource,
    /// The value (soft = hard).
    pub value: u64,
    /// Why it is there.
    pub reason: &'static str,
}

/// The limits of a session process (and everything it forks: rlimits are inherited).
/// With a pids cgroup in force, the process count is left to it (it counts the whole
/// session precisely and reports when it was hit); otherwise `RLIMIT_NPROC` bounds it.
pub fn session(l: &RunLimits, pids_cgroup: bool) -> Vec<Limit> {
    let mut v = vec![Limit { resource: Resource::RLIMIT_CORE, value: 0, reason: "no core dumps of untrusted code" }];
    let mut opt = |resource, value: u64, reason| {
        if value != 0 {
            v.push(Limit { resource, value, reason });
        }
    };
    // RLIMIT_CPU: SIGXCPU at the soft limit; hard = soft + 1 so the kernel SIGKILLs a
    // program that ignores SIGXCPU one second later.
    opt(Resource::RLIMIT_CPU, l.cpu_seconds, "cpu seconds of each process");
    opt(Resource::RLIMIT_AS, l.address_space, "address space of each process");
    opt(Resource::RLIMIT_NOFILE, l.open_files, "open descriptors of each process");
    if !pids_cgroup {
        opt(Resource::RLIMIT_NPROC, l.processes, "processes of the session's uid");
    }
    v
}

/// The limits of the frontend and the broker.
pub fn daemon() -> Vec<Limit> {
    vec![Limit { resource: Resource::RLIMIT_CORE, value: 0, reason: "a core dump would spill uploads and tokens" }]
}

/// Applies limits to the calling process.
pub fn apply(limits: &[Limit]) -> Result<(), PolicyError> {
    for l in limits {
        let hard = if l.resource == Resource::RLIMIT_CPU { l.value.saturating_add(1) } else { l.value };
        setrlimit(l.resource, l.value, hard).ctx("setrlimit")?;
    }
    Ok(())
}

/// Tightens `base` with `req`: a requested limit applies only if it is stricter (a zero,
/// "unlimited", in the request never loosens a configured limit).
pub fn tighten(base: RunLimits, req: RunLimits) -> RunLimits {
    let pick = |b: u64, r: u64| match (b, r) {
        (b, 0) => b,
        (0, r) => r,
        (b, r) => b.min(r),
    };
    RunLimits {
        cpu_seconds: pick(base.cpu_seconds, req.cpu_seconds),
        address_space: pick(base.address_space, req.address_space),
        open_files: pick(base.open_files, req.open_files),
        processes: pick(base.processes, req.processes),
        tmp_bytes: pick(base.tmp_bytes, req.tmp_bytes),
        memory_bytes: pick(base.memory_bytes, req.memory_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tighten_never_loosens() {
        let base = RunLimits {
            cpu_seconds: 10,
            address_space: 0,
            open_files: 64,
            processes: 32,
            tmp_bytes: 1 << 20,
            memory_bytes: 0,
        };
        let req = RunLimits {
            cpu_seconds: 100,
            address_space: 1 << 20,
            open_files: 0,
            processes: 4,
            tmp_bytes: 1 << 30,
            memory_bytes: 5,
        };
        let t = tighten(base, req);
        assert_eq!(
            t,
            RunLimits {
                cpu_seconds: 10,
                address_space: 1 << 20,
                open_files: 64,
                processes: 4,
                tmp_bytes: 1 << 20,
                memory_bytes: 5
            }
        );
    }

    #[test]
    fn session_always_forbids_core_dumps() {
        let v = session(&RunLimits::default(), false);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].resource, Resource::RLIMIT_CORE);
    }
}
