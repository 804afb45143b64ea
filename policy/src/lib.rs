//! What each debuglantern role may do, written down as data, with the small builders that
//! apply it. A reviewer should be able to read this crate in one sitting and know:
//!
//! * [`identity`]: which host uids each process runs as, and in which order privileges are
//!   dropped;
//! * [`rlimits`]: the resource limits of a session and of the two halves;
//! * [`mounts`]: the filesystem a session sees;
//! * [`seccomp`]: the system calls each role may make;
//! * [`landlock`]: the files each role may touch.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod identity;
pub mod landlock;
pub mod mounts;
pub mod rlimits;
pub mod seccomp;

/// Errors applying a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A system call that applies the policy failed.
    #[error("{what}")]
    Sys {
        /// What was being applied.
        what: &'static str,
        /// The errno.
        source: nix::Error,
    },
    /// After applying, the process still has something it must not have.
    #[error("privilege drop did not hold: {0}")]
    NotDropped(String),
}

pub(crate) trait Ctx<T> {
    fn ctx(self, what: &'static str) -> Result<T, PolicyError>;
}

impl<T> Ctx<T> for nix::Result<T> {
    fn ctx(self, what: &'static str) -> Result<T, PolicyError> {
        self.map_err(|source| PolicyError::Sys { what, source })
    }
}
