//! Who runs as whom, and the order privileges are dropped in.
//!
//! Started as root:
//!
//! | process | host uid | how |
//! |---|---|---|
//! | frontend | `frontend_uid` (default 65534, `nobody`) | [`drop_to`] after binding its sockets and starting the broker |
//! | broker | `uid_base` | uid 0 of its own user namespace, whose map is [`IdPlan::uid_map`] |
//! | session slot *n* | `uid_base + 1 + n` | uid `1 + n` inside the broker's user namespace |
//!
//! Started as an ordinary user ("rootless"), the broker's user namespace can map only the
//! caller's own uid, so every session shares it; that is reported as a warning.

use crate::{Ctx, PolicyError};
use nix::unistd::{Gid, Uid};

/// Default first host uid of the broker's range. High, below 2^31 (some tools treat uids
/// as signed), and away from `/etc/subuid` ranges that start at 100000.
pub const DEFAULT_UID_BASE: u32 = 2_100_000_000;
/// Default uid of the frontend when started as root: `nobody`.
pub const DEFAULT_FRONTEND_UID: u32 = 65534;

/// Why an identity plan is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// A half would be host root.
    #[error("neither half may run as host root")]
    Root,
    /// The range runs past the last uid.
    #[error("uid range {0}+{1} overflows")]
    Overflow(u32, u32),
    /// The frontend's uid is one of the broker's.
    #[error("frontend uid {frontend} lies inside the broker's range {base}..={end}")]
    Overlap {
        /// The frontend's uid.
        frontend: u32,
        /// The range's first uid.
        base: u32,
        /// Its last.
        end: u64,
    },
}

/// The identities of one daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPlan {
    /// Host uid (and gid) the frontend drops to.
    pub frontend_uid: u32,
    /// First host uid (and gid) of the broker's range: the broker itself.
    pub uid_base: u32,
    /// How many session uids follow the broker's in the range.
    pub session_slots: u32,
}

impl IdPlan {
    /// The `uid_map` (and `gid_map`) of the broker's user namespace, written by the root
    /// launcher: ns 0 is the broker, ns 1.. are the session slots.
    pub fn uid_map(&self) -> String {
        format!("0 {} 1\n1 {} {}\n", self.uid_base, self.uid_base + 1, self.session_slots)
    }

    /// Checks the plan keeps the halves and the sessions apart.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.frontend_uid == 0 || self.uid_base == 0 {
            return Err(PlanError::Root);
        }
        let end = u64::from(self.uid_base) + u64::from(self.session_slots);
        if end >= u64::from(u32::MAX) {
            return Err(PlanError::Overflow(self.uid_base, self.session_slots));
        }
        if (u64::from(self.uid_base)..=end).contains(&u64::from(self.frontend_uid)) {
            return Err(PlanError::Overlap { frontend: self.frontend_uid, base: self.uid_base, end });
        }
        Ok(())
    }

    /// Uid inside the broker's user namespace of session slot `slot` (root launch only).
    pub fn session_ns_uid(slot: u32) -> u32 {
        1 + slot
    }
}

/// Irrevocably becomes `uid`/`gid` with no supplementary groups and no capabilities, sets
/// `no_new_privs` and makes the process non-dumpable (no core dumps, no ptrace by peers of
/// the same uid). Order: groups, gid, uid (a uid change first would forbid the others),
/// then the checks.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), PolicyError> {
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setgroups(&[]).ctx("setgroups")?;
    nix::unistd::setresgid(gid, gid, gid).ctx("setresgid")?;
    nix::unistd::setresuid(uid, uid, uid).ctx("setresuid")?;
    harden_process()?;
    verify_dropped(uid.as_raw())
}

/// `no_new_privs` and not dumpable: for every role, whatever its uid.
pub fn harden_process() -> Result<(), PolicyError> {
    nix::sys::prctl::set_no_new_privs().ctx("prctl(PR_SET_NO_NEW_PRIVS)")?;
    nix::sys::prctl::set_dumpable(false).ctx("prctl(PR_SET_DUMPABLE)")?;
    Ok(())
}

/// Reads `/proc/self/status` and checks uid, capabilities and `NoNewPrivs`.
pub fn verify_dropped(uid: u32) -> Result<(), PolicyError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| PolicyError::NotDropped(format!("cannot read /proc/self/status: {e}")))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .ok_or_else(|| PolicyError::NotDropped(format!("no {name} in /proc/self/status")))
    };
    let uids = field("Uid:")?;
    if uids.split_whitespace().any(|u| u != uid.to_string()) {
        return Err(PolicyError::NotDropped(format!("uids are {uids}, want {uid}")));
    }
    for cap in ["CapEff:", "CapPrm:", "CapAmb:"] {
        let v = field(cap)?;
        if v.trim_start_matches('0').is_empty() {
            continue;
        }
        return Err(PolicyError::NotDropped(format!("{cap} {v}")));
    }
    if field("NoNewPrivs:")? != "1" {
        return Err(PolicyError::NotDropped("no_new_privs is not set".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_map_has_broker_then_sessions() {
        let p = IdPlan { frontend_uid: 65534, uid_base: 1000, session_slots: 64 };
        assert_eq!(p.uid_map(), "0 1000 1\n1 1001 64\n");
        p.validate().unwrap();
    }

    #[test]
    fn overlapping_or_root_plans_refused() {
        assert!(IdPlan { frontend_uid: 1010, uid_base: 1000, session_slots: 64 }.validate().is_err());
        assert!(IdPlan { frontend_uid: 0, uid_base: 1000, session_slots: 64 }.validate().is_err());
        assert!(IdPlan { frontend_uid: 5, uid_base: 0, session_slots: 64 }.validate().is_err());
        assert!(IdPlan { frontend_uid: 5, uid_base: u32::MAX - 3, session_slots: 64 }.validate().is_err());
    }
}
