//! Landlock rulesets, best-effort but checked: the returned status is reported, and a
//! ruleset the kernel does not enforce is a warning (a refusal under `--strict`).

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, ABI,
};
use std::os::fd::BorrowedFd;

/// The newest ABI we know; older kernels enforce what they can (reported).
const ABI_WANTED: ABI = ABI::V5;

/// What the frontend may read once it serves: its own `/proc/self/fdinfo` (host pids of
/// sessions come from pidfd fdinfo). Besides, it may create, write and remove files
/// beneath the bundle store ([`frontend`]'s argument) — nothing else anywhere, no exec.
/// TCP `connect` is refused too: the frontend never connects out.
pub const FRONTEND_READ_BENEATH: &[&str] = &["/proc/self/fdinfo"];

/// The newest landlock ABI this kernel has (0: none), probed with rulesets that are created
/// and dropped, never applied.
pub fn kernel_abi() -> u8 {
    // Each ABI's first new access right, newest first: the first the kernel takes as a hard
    // requirement names its ABI.
    let supported = |r: Result<Ruleset, landlock::RulesetError>| r.and_then(|r| r.create()).is_ok();
    let strict = || Ruleset::default().set_compatibility(CompatLevel::HardRequirement);
    if supported(strict().handle_access(AccessFs::IoctlDev)) {
        5
    } else if supported(strict().handle_access(AccessNet::ConnectTcp)) {
        4
    } else if supported(strict().handle_access(AccessFs::Truncate)) {
        3
    } else if supported(strict().handle_access(AccessFs::Refer)) {
        2
    } else if supported(strict().handle_access(AccessFs::Execute)) {
        1
    } else {
        0
    }
}

/// What each landlock ABI newer than 2 adds that our rulesets ask for, and the layer that
/// enforces it for both halves on a kernel without it.
const NEWER_ABI_RULES: [(u8, &str); 3] = [
    (3, "truncate by path (truncate is not in either half's seccomp allow list)"),
    (4, "TCP connect (not in the frontend's seccomp allow list; the broker may open no socket and has an empty network namespace)"),
    (5, "ioctls on devices (the frontend's seccomp allows four ioctl requests by number, the broker none)"),
];

/// How landlock confines the halves on this kernel, for HELLO's jail description.
pub fn describe() -> String {
    let abi = kernel_abi();
    match abi {
        0 => "not available on this kernel: the halves have their uids, namespaces and seccomp only".into(),
        1 => "ABI 1: filesystem rules without cross-directory renames (HELLO warns)".into(),
        _ => {
            let missing: Vec<&str> = NEWER_ABI_RULES.iter().filter(|(v, _)| abi < *v).map(|(_, what)| *what).collect();
            if missing.is_empty() {
                format!("ABI {abi}: every rule enforced")
            } else {
                format!("ABI {abi}: filesystem rules enforced; seccomp enforces instead: {}", missing.join("; "))
            }
        }
    }
}

fn verdict(status: RulesetStatus, who: &str) -> Option<String> {
    match status {
        RulesetStatus::FullyEnforced => None,
        // From ABI 2 on, what an older kernel lacks is enforced by seccomp (describe()).
        RulesetStatus::PartiallyEnforced if kernel_abi() >= 2 => None,
        RulesetStatus::PartiallyEnforced => Some(format!(
            "landlock is only partly enforced by this kernel (ABI {}): the {who} may rename files across directories it can write",
            kernel_abi()
        )),
        RulesetStatus::NotEnforced => {
            Some(format!("landlock is not available on this kernel: the {who} has no filesystem confinement beyond its uid"))
        }
    }
}

/// The broker's ruleset: no filesystem access at all except creating, removing, reading
/// and writing beneath its delegated cgroup directories (given as open descriptors: the
/// broker has pivoted and sees no `/sys`); no TCP.
pub fn broker(cgroup_dirs: &[BorrowedFd<'_>]) -> Result<Option<String>, String> {
    let cg = AccessFs::MakeDir | AccessFs::RemoveDir | AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::ReadDir;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_WANTED)))
        .and_then(|r| r.create())
        .map_err(|e| format!("landlock: {e}"))?;
    for dir in cgroup_dirs {
        ruleset = ruleset.add_rule(PathBeneath::new(*dir, cg)).map_err(|e| format!("landlock: {e}"))?;
    }
    let status = ruleset.restrict_self().map_err(|e| format!("landlock: {e}"))?;
    Ok(verdict(status.ruleset, "broker"))
}

/// Applies the frontend's ruleset to the calling process. Returns a warning when the
/// kernel enforces it only partly or not at all.
pub fn frontend(bundle_store: BorrowedFd<'_>) -> Result<Option<String>, String> {
    let store = AccessFs::MakeDir
        | AccessFs::MakeReg
        | AccessFs::MakeSym
        | AccessFs::WriteFile
        | AccessFs::ReadFile
        | AccessFs::ReadDir
        | AccessFs::RemoveDir
        | AccessFs::RemoveFile;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(AccessNet::ConnectTcp))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(FRONTEND_READ_BENEATH, AccessFs::from_read(ABI_WANTED))))
        .and_then(|r| r.add_rule(PathBeneath::new(bundle_store, store)))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("landlock: {e}"))?;
    Ok(verdict(status.ruleset, "frontend"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_abi_is_probed_without_confining_the_caller() {
        let abi = super::kernel_abi();
        eprintln!("landlock ABI {abi}: {}", super::describe());
        assert!(abi <= 5);
        // Still free: this process can read anything after the probe.
        assert!(std::fs::read("/proc/self/status").is_ok());
    }
}
