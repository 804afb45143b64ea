//! Landlock rulesets, best-effort but checked: the returned status is reported, and a
//! ruleset the kernel does not enforce is a warning (a refusal under `--strict`).

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
};

/// The newest ABI we know; older kernels enforce what they can (reported).
const ABI_WANTED: ABI = ABI::V5;

/// What the frontend may touch on the filesystem once it serves: reading its own
/// `/proc/self/fdinfo` (host pids of sessions come from pidfd fdinfo). Nothing else — no
/// reads, writes or execs anywhere. TCP `connect` is refused too: the frontend never
/// connects out.
pub const FRONTEND_READ_BENEATH: &[&str] = &["/proc/self/fdinfo"];

/// Applies the frontend's ruleset to the calling process. Returns a warning when the
/// kernel enforces it only partly or not at all.
pub fn frontend() -> Result<Option<String>, String> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(AccessNet::ConnectTcp))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(FRONTEND_READ_BENEATH, AccessFs::from_read(ABI_WANTED))))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("landlock: {e}"))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => None,
        RulesetStatus::PartiallyEnforced => {
            Some("landlock is only partly enforced by this kernel (older ABI): the frontend's filesystem confinement is incomplete".into())
        }
        RulesetStatus::NotEnforced => {
            Some("landlock is not available on this kernel: the frontend has no filesystem confinement beyond its uid".into())
        }
    })
}
