//! Landlock rulesets, best-effort but checked: the returned status is reported, and a
//! ruleset the kernel does not enforce is a warning (a refusal under `--strict`).

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};
use std::os::fd::BorrowedFd;

/// The newest ABI we know; older kernels enforce what they can (reported).
const ABI_WANTED: ABI = ABI::V5;

/// What the frontend may read once it serves: its own `/proc/self/fdinfo` (host pids of
/// sessions come from pidfd fdinfo). Besides, it may create, write and remove files
/// beneath the bundle store ([`frontend`]'s argument) — nothing else anywhere, no exec.
/// TCP `connect` is refused too: the frontend never connects out.
pub const FRONTEND_READ_BENEATH: &[&str] = &["/proc/self/fdinfo"];

fn verdict(status: RulesetStatus, who: &str) -> Option<String> {
    match status {
        RulesetStatus::FullyEnforced => None,
        RulesetStatus::PartiallyEnforced => Some(format!(
            "landlock is only partly enforced by this kernel (older ABI): the {who}'s filesystem confinement is incomplete"
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
