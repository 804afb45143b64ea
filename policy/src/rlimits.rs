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

/// The per-run limits, in the order of [`RunLimits`]' fields and of [`tighten`]'s
/// `asked`: the names the protocol gives them.
pub const NAMES: [&str; 8] =
    ["cpu_seconds", "address_space", "open_files", "processes", "tmp_bytes", "memory_bytes", "wall_seconds", "cpus"];

/// A START asked for a limit looser than the rig's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limit {name}={} is looser than this rig's {}{}; a START may only tighten limits", show(name, *asked), show(name, *rig), if *asked == 0 { " (0 means none)" } else { "" })]
pub struct Looser {
    /// Which limit.
    pub name: &'static str,
    /// What was asked (0: none).
    pub asked: u64,
    /// The rig's value.
    pub rig: u64,
}

/// A limit's value as the protocol writes it (`cpus` in CPUs, not thousandths).
fn show(name: &str, v: u64) -> String {
    if name != "cpus" {
        return v.to_string();
    }
    let (w, f) = (v / 1000, v % 1000);
    if f == 0 {
        w.to_string()
    } else {
        format!("{w}.{}", format!("{f:03}").trim_end_matches('0'))
    }
}

fn fields(l: &RunLimits) -> [u64; 8] {
    [
        l.cpu_seconds,
        l.address_space,
        l.open_files,
        l.processes,
        l.tmp_bytes,
        l.memory_bytes,
        l.wall_seconds,
        l.cpu_millis,
    ]
}

/// The limits of a run: the rig's `base`, with each limit a START asked for (`asked`, in
/// [`NAMES`] order) in its place. A limit may only tighten: asking for more than the rig's
/// value, or for none (0) where the rig has one, is refused, never clamped.
pub fn tighten(base: RunLimits, asked: [Option<u64>; 8]) -> Result<RunLimits, Looser> {
    let mut v = fields(&base);
    for (i, a) in asked.into_iter().enumerate() {
        let Some(a) = a else { continue };
        let rig = v[i];
        if rig != 0 && (a == 0 || a > rig) {
            return Err(Looser { name: NAMES[i], asked: a, rig });
        }
        v[i] = a;
    }
    let [cpu_seconds, address_space, open_files, processes, tmp_bytes, memory_bytes, wall_seconds, cpu_millis] = v;
    Ok(RunLimits {
        cpu_seconds,
        address_space,
        open_files,
        processes,
        tmp_bytes,
        memory_bytes,
        wall_seconds,
        cpu_millis,
        // Not a limit of the jail's: the frontend checks it (0 there means none).
        core_bytes: base.core_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_only_tighten_and_looser_ones_are_refused() {
        let base = RunLimits {
            cpu_seconds: 10,
            address_space: 0,
            open_files: 64,
            processes: 32,
            tmp_bytes: 1 << 20,
            memory_bytes: 0,
            wall_seconds: 3600,
            cpu_millis: 1000,
            core_bytes: 0,
        };
        let t = tighten(base, [Some(5), Some(1 << 20), None, Some(4), Some(1 << 20), Some(0), Some(60), Some(500)])
            .unwrap();
        assert_eq!(
            t,
            RunLimits {
                cpu_seconds: 5,
                address_space: 1 << 20,
                open_files: 64,
                processes: 4,
                tmp_bytes: 1 << 20,
                memory_bytes: 0,
                wall_seconds: 60,
                cpu_millis: 500,
                core_bytes: 0,
            }
        );
        assert_eq!(tighten(base, [None; 8]).unwrap(), base);
        let e = tighten(base, [None, None, None, None, None, None, None, Some(1500)]).unwrap_err();
        assert!(e.to_string().contains("cpus=1.5 is looser than this rig's 1;"), "{e}");
        let e = tighten(base, [Some(11), None, None, None, None, None, None, None]).unwrap_err();
        assert_eq!(e, Looser { name: "cpu_seconds", asked: 11, rig: 10 });
        assert!(e.to_string().contains("rig's 10"), "{e}");
        let e = tighten(base, [None, None, None, None, None, None, Some(0), None]).unwrap_err();
        assert_eq!(e.name, "wall_seconds");
        assert!(e.to_string().contains("0 means none"));
    }

    #[test]
    fn session_always_forbids_core_dumps() {
        let v = session(&RunLimits::default(), false);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].resource, Resource::RLIMIT_CORE);
    }
}
