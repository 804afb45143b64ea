//! What confines a session, as HELLO and receipts describe it.

use serde::{Deserialize, Serialize};

/// What confines a session (HELLO, receipts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jail {
    /// Namespaces of its own.
    pub namespaces: Vec<String>,
    /// Its filesystem.
    pub root: String,
    /// Distinct per session, or shared (rootless).
    pub uid: String,
    /// Capabilities it has.
    pub capabilities: String,
    /// `no_new_privs`.
    pub no_new_privs: bool,
    /// Its seccomp filter.
    pub seccomp: JailSeccomp,
    /// What of `/proc` is hidden or read-only.
    pub proc: JailProc,
    /// A cgroup namespace of its own.
    pub cgroup_namespace: bool,
    /// Cgroup controllers limiting it.
    pub cgroups: Vec<String>,
    /// Rlimits applied.
    pub rlimits: Vec<String>,
    /// The spawner's filter, which stacks under every session.
    pub spawner_seccomp: String,
    /// The frontend's filters.
    pub frontend_seccomp: String,
    /// How landlock confines the frontend and the broker on this kernel, and which layer
    /// enforces what an older landlock cannot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub landlock: String,
}

/// The session's seccomp filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSeccomp {
    /// `allowlist`.
    pub mode: String,
    /// Calls allowed.
    pub allowed: usize,
    /// What anything else gets.
    pub default: String,
    /// Calls refused on purpose.
    pub denied: usize,
    /// What they get.
    pub denied_errno: String,
    /// Socket families allowed.
    pub socket_families: Vec<String>,
    /// What other families get.
    pub other_families: String,
    /// What `clone` with a namespace flag gets.
    pub clone_namespaces: String,
    /// What a call through the x32 ABI gets.
    pub x32_abi: String,
    /// What a call of another architecture gets.
    pub foreign_arch: String,
}

/// The session's `/proc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailProc {
    /// Hidden (read as empty).
    pub masked: Vec<String>,
    /// Read-only.
    pub read_only: Vec<String>,
}
