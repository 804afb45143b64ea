//! The bundle store: where bundles are extracted, one directory per session.
//!
//! Started as root: a tmpfs (size = `max_total_size`) in a mount namespace of the
//! frontend's own, created before privileges are dropped, owned by the frontend's uid. It
//! belongs to the host's user namespace, so the unprivileged frontend can create files in
//! it (a tmpfs of the broker's user namespace would refuse a uid it does not map). The
//! broker receives a descriptor of it at exec and binds it into its jail root; each
//! session sees only its own bundle, read-only. Nothing of it is visible on the host, and
//! it disappears with the daemon.
//!
//! Rootless: a private directory under `$XDG_RUNTIME_DIR` (or `/tmp`).

use nix::mount::{mount, MsFlags};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The bundle store: a descriptor of its root (for the frontend), and its path (for the
/// broker, which opens it in its own copy of our mount namespace).
#[derive(Debug)]
pub struct Store {
    /// Its root directory.
    pub fd: OwnedFd,
    /// Its path.
    pub path: PathBuf,
}

/// Makes the store.
pub fn prepare(root: bool, owner: Option<(u32, u32)>, size: u64) -> Result<Store, String> {
    let dir = if root {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|e| format!("make / private: {e}"))?;
        // /tmp exists everywhere; in this namespace only, the store is mounted over it.
        let dir = PathBuf::from("/tmp");
        let opts = format!("size={size},mode=0711");
        mount(
            Some("debuglantern-bundles"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|e| format!("mount the bundle store: {e}"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| format!("chown the bundle store: {e}"))?;
        }
        dir
    } else {
        let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("debuglantern-bundles-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        dir
    };
    let fd = crate::bundle::open_root(&dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
    Ok(Store { fd, path: dir })
}
