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

/// Why the bundle store could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Something it needed failed.
    #[error("{what}")]
    Because {
        /// What was being done.
        what: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn because<E: Into<Box<dyn std::error::Error + Send + Sync>>>(what: impl Into<String>) -> impl FnOnce(E) -> StoreError {
    let what = what.into();
    move |e| StoreError::Because { what, source: e.into() }
}

/// The bundle store: a descriptor of its root (for the frontend), and its path (for the
/// broker, which opens it in its own copy of our mount namespace).
#[derive(Debug)]
pub struct Store {
    /// Its root directory.
    pub fd: OwnedFd,
    /// Its path.
    pub path: PathBuf,
}

const PREFIX: &str = "debuglantern-bundles-";

/// Removes the stores of our uid's daemons that are gone (killed daemons cannot clean up).
fn remove_stale(base: &std::path::Path) {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let (Ok(entries), Ok(parent)) = (std::fs::read_dir(base), crate::bundle::open_root(base)) else { return };
    let me = nix::unistd::Uid::effective().as_raw();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|p| p.parse::<u32>().ok()) else { continue };
        let ours = std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = crate::bundle::remove_tree(parent.as_fd(), &name);
        }
    }
}

/// Makes the store.
pub fn prepare(root: bool, owner: Option<(u32, u32)>, size: u64) -> Result<Store, StoreError> {
    let dir = if root {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(because("unshare(CLONE_NEWNS)"))?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(because("make / private"))?;
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
        .map_err(because("mount the bundle store"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(because("chown the bundle store"))?;
        }
        dir
    } else {
        let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        remove_stale(&base);
        let dir = base.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(because(format!("create {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .map_err(because(format!("chmod {}", dir.display())))?;
        dir
    };
    let fd = crate::bundle::open_root(&dir).map_err(because(format!("open {}", dir.display())))?;
    Ok(Store { fd, path: dir })
}
