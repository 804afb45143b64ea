//! Builds the jail root of [`policy::mounts::root_plan`] and pivots the broker into it, and
//! makes a session's own mounts ([`policy::mounts::session_plan`]). Runs as root of the
//! broker's user namespace, in its own mount namespace: nothing here touches the host's
//! mount table.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{statvfs, FsFlags};
use policy::mounts::{Entry, SessionMount};
use std::path::{Path, PathBuf};

/// Where the new root is assembled (a mount point that exists on every host; the tmpfs
/// mounted on it is visible only in our mount namespace).
const STAGING: &str = "/tmp";

/// A step of building the jail root or a session's mounts that failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct JailError {
    step: String,
    #[source]
    source: std::io::Error,
}

fn err(step: impl std::fmt::Display, e: impl Into<std::io::Error>) -> JailError {
    JailError { step: step.to_string(), source: e.into() }
}

fn inside(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Flags of an existing mount that a user namespace may not clear on a bind remount.
fn locked_flags(path: &Path) -> MsFlags {
    let mut f = MsFlags::empty();
    if let Ok(st) = statvfs(path) {
        let fl = st.flags();
        for (s, m) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if fl.contains(s) {
                f |= m;
            }
        }
    }
    f
}

/// Binds `src` on `dst` read-only, nosuid (+ `extra`), keeping the flags a user namespace
/// may not clear. `recursive` also binds the mounts below `src`.
fn ro_bind(src: &Path, dst: &Path, extra: MsFlags, recursive: bool) -> Result<(), JailError> {
    let rec = if recursive { MsFlags::MS_REC } else { MsFlags::empty() };
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)
        .map_err(|e| err(format!("bind {}", src.display()), e))?;
    let flags =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | extra | locked_flags(src);
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)
        .map_err(|e| err(format!("remount {} read-only", dst.display()), e))
}

/// Builds the root, pivots into it, detaches the host's tree. Returns warnings for what
/// the host did not allow (e.g. no `/proc` mount).
pub fn enter_root(session_uids: u32, bundles: Option<PathBuf>) -> Result<Vec<String>, JailError> {
    let mut warnings = Vec::new();
    // Nothing we mount may propagate back to the host's namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| err("make / private", e))?;
    // The bundle store, opened in our own copy of the frontend's mount namespace before
    // anything is mounted over it (in root mode it sits on /tmp, our staging point).
    let store = match bundles {
        Some(p) => Some(
            nix::fcntl::open(
                &p,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .and_then(shared::os::adopt_fd)
            .map_err(|e| err(format!("open the bundle store {}", p.display()), e))?,
        ),
        None => None,
    };
    let root = PathBuf::from(STAGING);
    mount(
        Some("debuglantern"),
        &root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=8m,nr_inodes=4096"),
    )
    .map_err(|e| err("mount the root tmpfs", e))?;
    for entry in policy::mounts::root_plan(session_uids) {
        match entry {
            Entry::RoBind(p) => {
                let host = Path::new(p);
                let Ok(meta) = std::fs::symlink_metadata(host) else { continue };
                let dst = inside(&root, p);
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(host).map_err(|e| err(p, e))?;
                    std::os::unix::fs::symlink(target, &dst).map_err(|e| err(p, e))?;
                } else if meta.is_dir() {
                    std::fs::create_dir(&dst).map_err(|e| err(p, e))?;
                    ro_bind(host, &dst, MsFlags::MS_NODEV, true)?;
                }
            }
            Entry::Dir(p, mode) => {
                let dst = inside(&root, p);
                std::fs::create_dir(&dst).map_err(|e| err(p, e))?;
                nix::sys::stat::fchmodat(
                    None,
                    &dst,
                    Mode::from_bits_truncate(mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| err(p, e))?;
            }
            Entry::File(p, text) => write_ro(&inside(&root, p), text.as_bytes())?,
            Entry::Copy(p) => {
                if let Ok(bytes) = std::fs::read(p) {
                    write_ro(&inside(&root, p), &bytes)?;
                }
            }
            Entry::Device(p) => {
                let dst = inside(&root, p);
                std::fs::write(&dst, b"").map_err(|e| err(p, e))?;
                // Devices keep exec off and, unlike everything else, must not be nodev.
                mount(Some(p), &dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(|e| err(format!("bind {p}"), e))?;
                let flags = MsFlags::MS_REMOUNT
                    | MsFlags::MS_BIND
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NOEXEC
                    | locked_flags(Path::new(p));
                mount(None::<&str>, &dst, None::<&str>, flags, None::<&str>)
                    .map_err(|e| err(format!("remount {p}"), e))?;
            }
            Entry::Symlink(p, target) => std::os::unix::fs::symlink(target, inside(&root, p)).map_err(|e| err(p, e))?,
        }
    }
    // The bundle store, read-only for everything on this side (the frontend writes it
    // through its own mount).
    if let Some(fd) = store {
        use std::os::fd::AsRawFd;
        let src = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        // Not recursive: our staging root is mounted on top of it (both on /tmp).
        ro_bind(&src, &inside(&root, policy::mounts::BUNDLES), MsFlags::MS_NODEV, false)?;
    }
    // The sessions' kept /tmps: a tmpfs of mount points only (each /tmp is a tmpfs of its
    // own, mounted on TMPS/<id>/tmp by the spawner).
    mount(
        Some("tmps"),
        &inside(&root, policy::mounts::TMPS),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=16m,nr_inodes=262144"),
    )
    .map_err(|e| err("mount the tmpfs of the sessions' /tmp", e))?;
    // A proc of the broker's PID namespace, mounted while the host's /proc is still
    // visible (the kernel lets a user namespace mount proc only then). Sessions mount
    // their own over it.
    let proc_dir = inside(&root, "/proc");
    let pflags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = mount(Some("proc"), &proc_dir, Some("proc"), pflags, None::<&str>) {
        warnings.push(format!("cannot mount /proc for sessions ({e}): sessions run without /proc"));
    }
    // Enter it: pivot_root(".", ".") stacks the old root under the new one; detach it.
    std::env::set_current_dir(&root).map_err(|e| err("chdir to the new root", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("detach the host's root", e))?;
    std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;
    // The root itself (and /etc, /dev entries) becomes read-only.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| err("remount the root read-only", e))?;
    Ok(warnings)
}

fn write_ro(path: &Path, bytes: &[u8]) -> Result<(), JailError> {
    std::fs::write(path, bytes).map_err(|e| err(path.display(), e))?;
    nix::sys::stat::fchmodat(None, path, Mode::from_bits_truncate(0o444), nix::sys::stat::FchmodatFlags::FollowSymlink)
        .map_err(|e| err(path.display(), e))
}

/// Hides what a session's `/proc` would tell of the host (`policy::mounts`): `/dev/null`
/// over files, an empty read-only tmpfs over directories, read-only binds of the rest.
/// What this kernel does not have is skipped.
fn mask_proc() -> Result<(), JailError> {
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (path, _) in policy::mounts::PROC_MASKED_FILES {
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        // /dev/null keeps working as a device (no nodev): reads give EOF, writes EROFS.
        mount(Some("/dev/null"), *path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| err(format!("mask {path}"), e))?;
        let flags = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC
            | locked_flags(Path::new("/dev/null"));
        mount(None::<&str>, *path, None::<&str>, flags, None::<&str>)
            .map_err(|e| err(format!("mask {path} read-only"), e))?;
    }
    for (path, _) in policy::mounts::PROC_MASKED_DIRS {
        if !Path::new(path).is_dir() {
            continue;
        }
        mount(Some("masked"), *path, Some("tmpfs"), hidden | MsFlags::MS_RDONLY, Some("size=4k,nr_inodes=1,mode=0555"))
            .map_err(|e| err(format!("mask {path}"), e))?;
    }
    for (path, _) in policy::mounts::PROC_READ_ONLY {
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        ro_bind(Path::new(path), Path::new(path), hidden, true)?;
    }
    Ok(())
}

/// In the spawner: makes (or, with `keep`, keeps — and with `resize`, resizes) the tmpfs
/// that is session `dir`'s `/tmp`, under [`policy::mounts::TMPS`] of the jail root. A new
/// one replaces the old (whose files go).
pub fn prepare_tmp(dir: &str, bytes: u64, keep: bool, resize: bool) -> Result<(), JailError> {
    let tmp = PathBuf::from(policy::mounts::tmp_dir(dir));
    let parent = tmp.parent().map(Path::to_path_buf).unwrap_or_default();
    let mounted = is_mount_point(&tmp);
    let opts = policy::mounts::tmp_options(bytes);
    if keep && mounted && !resize {
        return Ok(());
    }
    if keep && mounted {
        return mount(
            None::<&str>,
            &tmp,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|e| err(format!("resize the kept /tmp to {bytes} bytes (is more than that in use?)"), e));
    }
    if mounted {
        umount2(&tmp, MntFlags::MNT_DETACH).map_err(|e| err("drop the last run's /tmp", e))?;
    }
    for d in [&parent, &tmp] {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(format!("create {}", d.display()), e)),
        }
    }
    mount(Some("tmp"), &tmp, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts.as_str()))
        .map_err(|e| err("mount the session's /tmp", e))
}

/// In the spawner: session `dir`'s `/tmp` is gone (DELETE).
pub fn drop_tmp(dir: &str) -> Result<(), JailError> {
    let tmp = PathBuf::from(policy::mounts::tmp_dir(dir));
    if is_mount_point(&tmp) {
        umount2(&tmp, MntFlags::MNT_DETACH).map_err(|e| err("unmount the session's /tmp", e))?;
    }
    for d in [tmp.as_path(), tmp.parent().unwrap_or(Path::new("/"))] {
        match std::fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("remove {}", d.display()), e)),
        }
    }
    Ok(())
}

/// Whether `p` is a mount point (its device differs from its parent's).
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Some(Ok(b))) = (std::fs::metadata(p), p.parent().map(std::fs::metadata)) else { return false };
    a.dev() != b.dev()
}

/// In a session's init, still root of the broker's user namespace: the session's own
/// `/proc`, `/tmp` (its kept tmpfs, from `TMPS/<dir>/tmp`) and `/dev/pts`; its bundle (if
/// it runs one) read-only on `/bundle`, and no other session's bundle or `/tmp` visible.
/// The working directory is the bundle, else `/tmp`.
pub fn session_mounts(plan: &[SessionMount], dir: &str, bundle: bool) -> Result<(), JailError> {
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for m in plan {
        match m {
            SessionMount::Proc => {
                if Path::new("/proc/self").exists() {
                    mount(Some("proc"), "/proc", Some("proc"), base | MsFlags::MS_NOEXEC, None::<&str>)
                        .map_err(|e| err("mount the session's /proc", e))?;
                    mask_proc()?;
                }
            }
            SessionMount::Tmp => {
                let src = policy::mounts::tmp_dir(dir);
                mount(Some(src.as_str()), "/tmp", None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(|e| err("bind the session's /tmp", e))?;
            }
            SessionMount::DevPts => {
                // Not nodev: it holds nothing but the session's own terminals, which must
                // open (as runc mounts it: nosuid, noexec).
                mount(
                    Some("devpts"),
                    "/dev/pts",
                    Some("devpts"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("newinstance,ptmxmode=0666,mode=620"),
                )
                .map_err(|e| err("mount the session's /dev/pts", e))?;
            }
        }
    }
    let (store, own) = (policy::mounts::BUNDLES, policy::mounts::BUNDLE);
    if bundle {
        let src = PathBuf::from(store).join(dir);
        // A bundle is executable (that is its point), never setuid, never a device.
        ro_bind(&src, Path::new(own), MsFlags::MS_NODEV, false)?;
    }
    for (hidden, what) in [(store, "hide the bundle store"), (policy::mounts::TMPS, "hide the sessions' /tmps")] {
        match umount2(hidden, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(e) => return Err(err(what, e)),
        }
    }
    let cwd = if bundle { own } else { "/tmp" };
    std::env::set_current_dir(cwd).map_err(|e| err(format!("chdir {cwd}"), e))
}

/// START --debug of an uploaded binary: in the session's init, still root of the broker's
/// user namespace, copies the sealed memfd to a file of a tmpfs of its own on `/bundle`
/// (read-only, nosuid, nodev once written; its pages are charged to the session's
/// cgroup), so that gdbserver launches it from a real path that a debugger can read back
/// (`target remote` finds the symbols through the exec-file the stub reports). The file is
/// named after `argv0`'s last component. Returns its path.
pub fn stage_program(memfd: &std::os::fd::OwnedFd, argv0: &[u8]) -> Result<std::ffi::CString, JailError> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let size = nix::sys::stat::fstat(memfd.as_raw_fd()).map_err(|e| err("stat the program", e))?.st_size.max(0) as u64;
    let name = staged_name(argv0);
    let own = policy::mounts::BUNDLE;
    let room = format!("size={},nr_inodes=8,mode=0755", size.saturating_add(64 * 1024));
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), own, Some("tmpfs"), flags, Some(room.as_str()))
        .map_err(|e| err(format!("mount a tmpfs on {own} for the program"), e))?;
    let path = format!("{own}/{name}");
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o555)
        .open(&path)
        .map_err(|e| err(format!("create {path}"), e))?;
    // Explicit offsets: the memfd's own file offset is shared and stays untouched.
    let src = std::fs::File::from(memfd.try_clone().map_err(|e| err("dup the program", e))?);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = src.read_at(&mut buf, at).map_err(|e| err("read the program", e))?;
        if n == 0 {
            break;
        }
        (&out).write_all(&buf[..n]).map_err(|e| err(format!("copy the program to {path}"), e))?;
        at += n as u64;
    }
    drop(out);
    mount(
        None::<&str>,
        own,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
        None::<&str>,
    )
    .map_err(|e| err(format!("make {own} read-only"), e))?;
    std::ffi::CString::new(path.clone())
        .map_err(|_| err(format!("program path {path}"), std::io::ErrorKind::InvalidInput))
}

/// The staged program's file name: `argv0`'s last component if it is a plain name, else
/// `program`.
fn staged_name(argv0: &[u8]) -> String {
    let last = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
    match std::str::from_utf8(last) {
        Ok(n) if !n.is_empty() && n != "." && n != ".." && n.len() <= 255 && !n.contains('\0') => n.to_string(),
        _ => "program".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::staged_name;

    #[test]
    fn staged_names_are_plain() {
        assert_eq!(staged_name(b"./build/prog"), "prog");
        assert_eq!(staged_name(b"prog"), "prog");
        for bad in [&b""[..], b"a/", b"..", b".", b"/", b"\xff\xfe", &[b'x'; 300]] {
            assert_eq!(staged_name(bad), "program", "{bad:?}");
        }
    }
}
