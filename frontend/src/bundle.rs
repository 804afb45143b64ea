//! Safe extraction of `.tar.gz` bundles (SPEC §5). A parser and writer of untrusted input:
//! `tar` only iterates headers and data; every file is created by us, beneath the bundle's
//! directory descriptor, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` — never `tar::Archive::unpack`, which skips `..` silently,
//! strips leading `/`, leaves symlinks pointing anywhere and turns devices into files.
//!
//! Accepted: regular files, directories, and relative symlinks that stay inside the bundle.
//! Refused (the whole bundle, with a reason): absolute paths, `..`, names that are not
//! UTF-8 or contain control characters (newlines included), hard links, devices, fifos,
//! setuid/setgid files, a path through a symlink, duplicate entries, more than the
//! configured entries / bytes / depth, non-gzip or truncated data, and an `exec_path` that
//! is missing, not a regular executable file, or neither a valid ELF program nor a `#!`
//! script whose interpreter is in the session's view. The exec path may be (or go
//! through) symlinks of the bundle: they were checked to stay inside, and are followed
//! beneath the bundle only, as the session will.
//!
//! Permissions are kept except: setuid/setgid refuse the bundle, sticky is dropped, group
//! and others never get write, and what the owner may read or execute, everybody may
//! (the session runs as another uid and the bundle is read-only to it).

use crate::elf::{self, ElfInfo};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use tar::EntryType;

/// Bounds on one bundle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most entries.
    pub max_entries: u64,
    /// Most bytes of file data once extracted.
    pub max_bytes: u64,
    /// Most path components.
    pub max_depth: usize,
}

/// Why a bundle was not extracted (or not removed).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The archive is not an acceptable bundle: the reason, for the user.
    #[error("{0}")]
    Refused(String),
    /// The rig failed to write or remove it.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl From<String> for BundleError {
    fn from(why: String) -> Self {
        BundleError::Refused(why)
    }
}

fn refused(why: impl Into<String>) -> BundleError {
    BundleError::Refused(why.into())
}

pub fn io<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> BundleError {
    let what = what.into();
    move |e| BundleError::Io { what, source: e.into() }
}

/// What a bundle's exec path runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// An ELF program.
    Elf(ElfInfo),
    /// A script: its `#!` interpreter and optional argument.
    Script {
        /// Absolute path in the session's view.
        interpreter: String,
        /// The rest of the line, if any.
        arg: Option<String>,
    },
}

/// What a valid bundle holds.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// Bytes of file data written.
    pub bytes: u64,
    /// Entries extracted.
    pub entries: u64,
    /// What the executable is.
    pub program: Program,
}

const MAX_NAME: usize = 255;
const MAX_PATH: usize = 4096;

fn how(flags: OFlag, mode: u32) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Owns a descriptor nix just returned as a raw integer.
fn own(fd: std::os::fd::RawFd) -> OwnedFd {
    shared::os::adopt_fd(fd).expect("a descriptor nix just opened is open")
}

/// Checks a path from the archive (or the exec path) and returns its components.
pub fn clean_path(raw: &[u8], max_depth: usize) -> Result<Vec<String>, BundleError> {
    let s =
        std::str::from_utf8(raw).map_err(|_| format!("path {:?} is not valid UTF-8", String::from_utf8_lossy(raw)))?;
    if s.len() > MAX_PATH {
        return Err(refused(format!("path longer than {MAX_PATH} bytes")));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(refused(format!("path {s:?} contains control characters (newlines included)")));
    }
    if s.starts_with('/') {
        return Err(refused(format!("absolute path {s:?}")));
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(refused(format!("path {s:?} contains '..'"))),
            c if c.len() > MAX_NAME => return Err(refused(format!("a name in {s:?} is longer than {MAX_NAME} bytes"))),
            c => parts.push(c.to_string()),
        }
    }
    if parts.len() > max_depth {
        return Err(refused(format!("path {s:?} is deeper than {max_depth} levels")));
    }
    Ok(parts)
}

/// A symlink's target must be relative and, resolved lexically from the link's directory,
/// stay inside the bundle.
pub fn check_link(parts: &[String], target: &[u8]) -> Result<(), BundleError> {
    let t = std::str::from_utf8(target).map_err(|_| "symlink target is not valid UTF-8".to_string())?;
    if t.is_empty() || t.starts_with('/') || t.chars().any(|c| c.is_control()) {
        return Err(refused(format!("symlink {} → {t:?} must be relative", parts.join("/"))));
    }
    let mut depth = parts.len() as i64 - 1;
    for c in t.split('/') {
        match c {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err(refused(format!("symlink {} → {t:?} points outside the bundle", parts.join("/"))));
        }
    }
    Ok(())
}

fn errno_reason(e: nix::Error, path: &str) -> String {
    match e {
        nix::Error::EEXIST => format!("duplicate or conflicting entry {path:?}"),
        nix::Error::ELOOP | nix::Error::EXDEV => format!("entry {path:?} goes through a symlink"),
        nix::Error::ENOSPC => "the rig's bundle space is full".to_string(),
        e => format!("cannot create {path:?}: {e}"),
    }
}

/// Opens (creating as needed) the directory of `parts`, beneath `root`.
fn open_dir(root: BorrowedFd<'_>, parts: &[String]) -> Result<OwnedFd, BundleError> {
    let mut dir = own(nix::unistd::dup(root.as_raw_fd()).map_err(io("duplicate the bundle directory"))?);
    for (i, name) in parts.iter().enumerate() {
        match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name.as_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(refused(errno_reason(e, &parts[..=i].join("/")))),
        }
        let fd =
            openat2(dir.as_raw_fd(), name.as_str(), how(OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)).map_err(|e| {
                errno_reason(if e == nix::Error::ENOTDIR { nix::Error::EEXIST } else { e }, &parts[..=i].join("/"))
            })?;
        dir = own(fd);
    }
    Ok(dir)
}

fn file_mode(mode: u32) -> u32 {
    let perm = mode & 0o777 & !0o022;
    perm | ((perm & 0o400) >> 3) | ((perm & 0o400) >> 6) | ((perm & 0o100) >> 3) | ((perm & 0o100) >> 6)
}

/// Extracts `src` (gzip-compressed tar) beneath `root` and validates `exec_path`.
/// On error the caller removes whatever was written (see [`remove_tree`]).
pub fn extract(
    src: impl Read,
    root: BorrowedFd<'_>,
    exec_path: &str,
    limits: Limits,
) -> Result<Extracted, BundleError> {
    let exec_parts = clean_path(exec_path.as_bytes(), limits.max_depth).map_err(|e| format!("exec_path: {e}"))?;
    if exec_parts.is_empty() {
        return Err(refused("exec_path names the bundle root, not a program"));
    }
    let gz = flate2::read::GzDecoder::new(src);
    let mut archive = tar::Archive::new(gz);
    let entries = archive.entries().map_err(|e| gzip_reason(&e))?;
    let (mut count, mut bytes) = (0u64, 0u64);
    for entry in entries {
        let mut entry = entry.map_err(|e| gzip_reason(&e))?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            continue;
        }
        count += 1;
        if count > limits.max_entries {
            return Err(refused(format!("more than {} entries", limits.max_entries)));
        }
        let raw_path = entry.path_bytes().into_owned();
        let parts = clean_path(&raw_path, limits.max_depth)?;
        let shown = parts.join("/");
        let mode = entry.header().mode().map_err(|e| format!("entry {shown:?}: bad mode: {e}"))?;
        if mode & 0o6000 != 0 && !matches!(kind, EntryType::Directory) {
            return Err(refused(format!("{shown:?} is setuid or setgid")));
        }
        match kind {
            EntryType::Directory => {
                open_dir(root, &parts)?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let Some((name, dirs)) = parts.split_last() else {
                    return Err(refused("a file entry names the bundle root"));
                };
                let declared = entry.header().size().map_err(|e| format!("entry {shown:?}: bad size: {e}"))?;
                if bytes.saturating_add(declared) > limits.max_bytes {
                    return Err(refused(format!("bundle extracts to more than {} bytes", limits.max_bytes)));
                }
                let dir = open_dir(root, dirs)?;
                let fd = openat2(
                    dir.as_raw_fd(),
                    name.as_str(),
                    how(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY, 0o600),
                )
                .map_err(|e| errno_reason(e, &shown))?;
                let mut out = File::from(own(fd));
                // Never trust the declared size alone: count what really comes.
                let mut limited = (&mut entry).take(limits.max_bytes - bytes + 1);
                let n = std::io::copy(&mut limited, &mut out).map_err(|e| format!("{shown:?}: {}", io_reason(&e)))?;
                bytes += n;
                if bytes > limits.max_bytes {
                    return Err(refused(format!("bundle extracts to more than {} bytes", limits.max_bytes)));
                }
                out.flush().map_err(io(format!("write {shown:?}")))?;
                nix::sys::stat::fchmod(out.as_raw_fd(), Mode::from_bits_truncate(file_mode(mode)))
                    .map_err(io(format!("set the mode of {shown:?}")))?;
            }
            EntryType::Symlink => {
                let Some((name, dirs)) = parts.split_last() else {
                    return Err(refused("a symlink entry names the bundle root"));
                };
                let target =
                    entry.link_name_bytes().ok_or_else(|| format!("symlink {shown:?} has no target"))?.into_owned();
                check_link(&parts, &target)?;
                let dir = open_dir(root, dirs)?;
                nix::unistd::symlinkat(target.as_slice(), Some(dir.as_raw_fd()), name.as_str())
                    .map_err(|e| errno_reason(e, &shown))?;
            }
            EntryType::Link => return Err(refused(format!("{shown:?} is a hard link (not accepted)"))),
            EntryType::Char | EntryType::Block => return Err(refused(format!("{shown:?} is a device node"))),
            EntryType::Fifo => return Err(refused(format!("{shown:?} is a fifo"))),
            other => return Err(refused(format!("{shown:?} has unsupported type {other:?}"))),
        }
    }
    let program = check_exec(root, &exec_parts)?;
    Ok(Extracted { bytes, entries: count, program })
}

/// The exec path: followed through the bundle's own symlinks (beneath the bundle only,
/// never a magic link), a regular executable file, an ELF program or a `#!` script.
fn check_exec(root: BorrowedFd<'_>, parts: &[String]) -> Result<Program, BundleError> {
    let path = parts.join("/");
    let follow = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_raw_fd(), path.as_str(), follow).map_err(|e| match e {
        nix::Error::ENOENT => format!("exec_path {path:?} is not in the bundle (or is a dangling symlink)"),
        nix::Error::ELOOP => format!("exec_path {path:?}: too many levels of symlinks"),
        nix::Error::EXDEV => format!("exec_path {path:?} resolves outside the bundle"),
        e => format!("exec_path {path:?}: {e}"),
    })?;
    let file = File::from(own(fd));
    let meta = file.metadata().map_err(io(format!("stat exec_path {path:?}")))?;
    if meta.is_dir() {
        return Err(refused(format!("exec_path {path:?} is a directory")));
    }
    if !meta.is_file() {
        return Err(refused(format!("exec_path {path:?} is not a regular file")));
    }
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o100 == 0 {
        return Err(refused(format!("exec_path {path:?} is not executable (mode lacks u+x)")));
    }
    let mut head = [0u8; SHEBANG_MAX];
    let n = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).map_err(io(format!("read exec_path {path:?}")))?;
    if head[..n].starts_with(b"#!") {
        let (interpreter, arg) =
            script_line(&head[..n]).map_err(|why| refused(format!("exec_path {path:?}: {why}")))?;
        check_interpreter(root, &interpreter).map_err(|why| refused(format!("exec_path {path:?}: {why}")))?;
        return Ok(Program::Script { interpreter, arg });
    }
    elf::validate(&file)
        .map(Program::Elf)
        .map_err(|why| refused(format!("exec_path {path:?}: {} (nor a #! script)", shared::chain(&why))))
}

/// The kernel reads at most this much of a script's first line (`BINPRM_BUF_SIZE`).
const SHEBANG_MAX: usize = 256;

/// A script's `#!` line: the interpreter (an absolute path) and its optional argument
/// (the rest of the line, as the kernel passes it: one argument).
pub fn script_line(head: &[u8]) -> Result<(String, Option<String>), String> {
    let rest = head.strip_prefix(b"#!").ok_or("not a #! script")?;
    let line = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => &rest[..i],
        None if head.len() < SHEBANG_MAX => rest,
        None => return Err(format!("its #! line is longer than {} bytes", SHEBANG_MAX - 1)),
    };
    let line = std::str::from_utf8(line).map_err(|_| "its #! line is not UTF-8".to_string())?;
    let line = line.trim_matches([' ', '\t', '\r']);
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("its #! line contains control characters".into());
    }
    let (interp, arg) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i..].trim_matches([' ', '\t'])),
        None => (line, ""),
    };
    if interp.is_empty() {
        return Err("its #! line names no interpreter".into());
    }
    if !interp.starts_with('/') {
        return Err(format!("its #! interpreter {interp:?} is not an absolute path"));
    }
    Ok((interp.to_string(), (!arg.is_empty()).then(|| arg.to_string())))
}

/// The interpreter must be where the session can see it: in the bundle (`/bundle/...`,
/// checked here) or in the rig's system directories (`/usr`, `/bin`...: their content is
/// the rig's, checked when the program runs).
fn check_interpreter(root: BorrowedFd<'_>, interp: &str) -> Result<(), String> {
    let bundle_prefix = format!("{}/", policy::mounts::BUNDLE);
    if let Some(inside) = interp.strip_prefix(&bundle_prefix) {
        let parts = clean_path(inside.as_bytes(), 64).map_err(|e| format!("its #! interpreter: {e}"))?;
        let follow = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(root.as_raw_fd(), parts.join("/").as_str(), follow)
            .map_err(|e| format!("its #! interpreter {interp:?} is not in the bundle ({e})"))?;
        let st = nix::sys::stat::fstat(fd).map_err(|e| format!("its #! interpreter {interp:?}: {e}"))?;
        let _ = nix::unistd::close(fd);
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(format!("its #! interpreter {interp:?} is not a regular file"));
        }
        return Ok(());
    }
    let system = policy::mounts::SYSTEM_DIRS.iter().any(|d| interp.strip_prefix(d).is_some_and(|r| r.starts_with('/')));
    if !system {
        return Err(format!(
            "its #! interpreter {interp:?} is outside the session's view: use one in the bundle ({}/...) or the rig's {}",
            policy::mounts::BUNDLE,
            policy::mounts::SYSTEM_DIRS.join(", ")
        ));
    }
    Ok(())
}

fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => "the rig's bundle space is full".into(),
        _ => gzip_reason(e),
    }
}

fn gzip_reason(e: &std::io::Error) -> String {
    let m = e.to_string();
    if m.contains("invalid gzip header") {
        "not gzip data (upload a .tar.gz)".into()
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof || m.contains("unexpected end") {
        "truncated archive".into()
    } else {
        format!("malformed archive: {m}")
    }
}

/// Removes `name` beneath `parent`, recursively, never following symlinks.
pub fn remove_tree(parent: BorrowedFd<'_>, name: &str) -> Result<(), BundleError> {
    let fd = match openat2(parent.as_raw_fd(), name, how(OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)) {
        Ok(fd) => own(fd),
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(nix::Error::ENOTDIR | nix::Error::ELOOP) => {
            return nix::unistd::unlinkat(Some(parent.as_raw_fd()), name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(io(format!("remove {name}")))
        }
        Err(e) => return Err(io(format!("open {name}"))(e)),
    };
    let mut dir = nix::dir::Dir::from_fd(nix::unistd::dup(fd.as_raw_fd()).map_err(io(format!("open {name}")))?)
        .map_err(io(format!("read {name}")))?;
    let names: Vec<(String, bool)> = dir
        .iter()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str().ok()?.to_string();
            (n != "." && n != "..").then(|| (n, e.file_type() == Some(nix::dir::Type::Directory)))
        })
        .collect();
    for (n, is_dir) in names {
        if is_dir {
            remove_tree(fd.as_fd(), &n)?;
        } else {
            nix::unistd::unlinkat(Some(fd.as_raw_fd()), n.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(io(format!("remove {n}")))?;
        }
    }
    nix::unistd::unlinkat(Some(parent.as_raw_fd()), name, nix::unistd::UnlinkatFlags::RemoveDir)
        .map_err(io(format!("remove {name}")))
}

/// Opens a directory descriptor for a path (setup only).
pub fn open_root(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    let f = File::open(path)?;
    if !f.metadata()?.is_dir() {
        return Err(std::io::ErrorKind::NotADirectory.into());
    }
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::tests::tarball::{entry, gz};
    use std::path::PathBuf;

    /// A small real program of this machine.
    fn prog() -> Vec<u8> {
        std::fs::read("/usr/bin/true").or_else(|_| std::fs::read("/proc/self/exe")).unwrap()
    }

    const LIMITS: Limits = Limits { max_entries: 100, max_bytes: 256 << 20, max_depth: 16 };

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn run(archive: &[u8], exec: &str, limits: Limits) -> (Result<Extracted, BundleError>, Dir) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dl-bundle-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let root = open_root(&dir.join("b")).unwrap();
        let r = extract(archive, root.as_fd(), exec, limits);
        if r.is_err() {
            let parent = open_root(&dir).unwrap();
            remove_tree(parent.as_fd(), "b").unwrap();
            assert!(!dir.join("b").exists(), "a refused bundle left files behind");
        }
        (r, Dir(dir))
    }

    fn refused(archive: &[u8], exec: &str, want: &str) {
        let (r, _d) = run(archive, exec, LIMITS);
        let BundleError::Refused(err) = r.expect_err("hostile bundle accepted") else {
            panic!("a hostile bundle must be refused, not fail to be stored");
        };
        assert!(err.contains(want), "{err:?} does not say {want:?}");
    }

    #[test]
    fn a_good_bundle_extracts_with_safe_modes() {
        let a = gz(&[
            entry(b"bin/", b'5', 0o700, b"", b""),
            entry(b"bin/prog", b'0', 0o700, &prog(), b""),
            entry(b"./lib/data.txt", b'0', 0o666, b"hello", b""),
            entry(b"lib/prog-link", b'2', 0o777, b"", b"../bin/prog"),
            entry(b"lib/sticky", b'0', 0o1644, b"x", b""),
        ]);
        let (r, d) = run(&a, "bin/prog", LIMITS);
        let x = r.unwrap();
        assert_eq!(x.entries, 5);
        assert_eq!(std::fs::read(d.0.join("b/lib/data.txt")).unwrap(), b"hello");
        let mode = |p: &str| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::symlink_metadata(d.0.join(p)).unwrap().permissions())
                & 0o7777
        };
        assert_eq!(mode("b/bin/prog"), 0o755, "owner rwx becomes readable/executable by all, writable by none else");
        assert_eq!(mode("b/lib/data.txt"), 0o644, "group/other write dropped");
        assert_eq!(mode("b/lib/sticky"), 0o644, "sticky dropped");
        assert_eq!(std::fs::read_link(d.0.join("b/lib/prog-link")).unwrap(), PathBuf::from("../bin/prog"));
    }

    #[test]
    fn hostile_paths_are_refused() {
        let p = prog();
        let ok = entry(b"prog", b'0', 0o755, &p, b"");
        refused(&gz(&[entry(b"../evil", b'0', 0o644, b"x", b""), ok.clone()]), "prog", "..");
        refused(&gz(&[entry(b"a/../../evil", b'0', 0o644, b"x", b""), ok.clone()]), "prog", "..");
        refused(&gz(&[entry(b"/etc/evil", b'0', 0o644, b"x", b""), ok.clone()]), "prog", "absolute");
        refused(&gz(&[entry(b"new\nline", b'0', 0o644, b"x", b""), ok.clone()]), "prog", "control");
        refused(&gz(&[entry(b"bad\xff\xfe", b'0', 0o644, b"x", b""), ok.clone()]), "prog", "UTF-8");
        let deep = "d/".repeat(20) + "f";
        refused(&gz(&[entry(deep.as_bytes(), b'0', 0o644, b"x", b""), ok.clone()]), "prog", "deeper");
        refused(&gz(&[ok.clone(), entry(b"prog", b'0', 0o644, b"again", b"")]), "prog", "duplicate");
    }

    #[test]
    fn links_devices_fifos_and_setuid_are_refused() {
        let p = prog();
        let ok = entry(b"prog", b'0', 0o755, &p, b"");
        refused(&gz(&[entry(b"out", b'2', 0o777, b"", b"../../etc"), ok.clone()]), "prog", "outside");
        refused(&gz(&[entry(b"abs", b'2', 0o777, b"", b"/etc/passwd"), ok.clone()]), "prog", "relative");
        // An inside-pointing symlink, then a file written through it.
        refused(
            &gz(&[
                entry(b"sub/", b'5', 0o755, b"", b""),
                entry(b"via", b'2', 0o777, b"", b"sub"),
                entry(b"via/f", b'0', 0o644, b"x", b""),
                ok.clone(),
            ]),
            "prog",
            "symlink",
        );
        refused(&gz(&[entry(b"hard", b'1', 0o644, b"", b"/etc/shadow"), ok.clone()]), "prog", "hard link");
        refused(&gz(&[entry(b"dev", b'3', 0o644, b"", b""), ok.clone()]), "prog", "device");
        refused(&gz(&[entry(b"blk", b'4', 0o644, b"", b""), ok.clone()]), "prog", "device");
        refused(&gz(&[entry(b"fifo", b'6', 0o644, b"", b""), ok.clone()]), "prog", "fifo");
        refused(&gz(&[entry(b"suid", b'0', 0o4755, &p, b"")]), "suid", "setuid");
        refused(&gz(&[entry(b"sgid", b'0', 0o2755, &p, b"")]), "sgid", "setuid or setgid");
    }

    #[test]
    fn bombs_and_broken_archives_are_refused() {
        let p = prog();
        let ok = entry(b"prog", b'0', 0o755, &p, b"");
        // 64 MiB of zeros compresses to ~64 KiB: refused at the limit, quickly.
        let bomb = gz(&[entry(b"zeros", b'0', 0o644, &vec![0u8; 64 << 20], b"")]);
        assert!(bomb.len() < 1 << 20);
        let t = std::time::Instant::now();
        let (r, _d) = run(&bomb, "prog", Limits { max_bytes: 8 << 20, ..LIMITS });
        assert!(r.unwrap_err().to_string().contains("more than"));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        let many: Vec<Vec<u8>> = (0..200).map(|i| entry(format!("f{i}").as_bytes(), b'0', 0o644, b"", b"")).collect();
        refused(&gz(&many), "f0", "entries");
        refused(b"not gzip at all", "prog", "not gzip");
        let good = gz(std::slice::from_ref(&ok));
        refused(&good[..good.len() / 2], "prog", "truncated");
    }

    #[test]
    fn exec_path_must_be_a_regular_executable_elf() {
        let p = prog();
        let a = gz(&[
            entry(b"dir/", b'5', 0o755, b"", b""),
            entry(b"prog", b'0', 0o755, &p, b""),
            entry(b"link", b'2', 0o777, b"", b"prog"),
            entry(b"script", b'0', 0o755, b"#!/bin/sh\necho\n", b""),
            entry(b"noexec", b'0', 0o644, &p, b""),
        ]);
        refused(&a, "missing", "not in the bundle");
        refused(&a, "dir", "directory");
        refused(&a, "noexec", "not executable");
        refused(&a, "../prog", "..");
        refused(&a, "", "bundle root");
        let (r, _d) = run(&a, "./prog", LIMITS);
        assert!(matches!(r, Ok(Extracted { program: Program::Elf(_), .. })), "{r:?}");
        // A symlink of the bundle to its program (busybox applets) is followed.
        let (r, _d) = run(&a, "link", LIMITS);
        assert!(matches!(r, Ok(Extracted { program: Program::Elf(_), .. })), "{r:?}");
        let (r, _d) = run(&a, "script", LIMITS);
        assert_eq!(r.unwrap().program, Program::Script { interpreter: "/bin/sh".into(), arg: None });
    }

    #[test]
    fn scripts_need_an_interpreter_in_the_sessions_view() {
        let p = prog();
        let script = |line: &[u8]| entry(b"run", b'0', 0o755, line, b"");
        let ok = |line: &[u8], want: (&str, Option<&str>)| {
            let (r, _d) = run(
                &gz(&[entry(b"bin/", b'5', 0o755, b"", b""), entry(b"bin/py", b'0', 0o755, &p, b""), script(line)]),
                "run",
                LIMITS,
            );
            let want = Program::Script { interpreter: want.0.into(), arg: want.1.map(str::to_string) };
            assert_eq!(r.unwrap().program, want, "{}", String::from_utf8_lossy(line));
        };
        ok(b"#!/usr/bin/env python3\nprint(1)\n", ("/usr/bin/env", Some("python3")));
        ok(b"#! /bin/sh -e \r\n", ("/bin/sh", Some("-e")));
        ok(b"#!/bundle/bin/py", ("/bundle/bin/py", None));
        refused(&gz(&[script(b"#!python3\n")]), "run", "not an absolute path");
        refused(&gz(&[script(b"#!/opt/python/bin/python3\n")]), "run", "outside the session's view");
        refused(&gz(&[script(b"#!/bundle/nope\n")]), "run", "not in the bundle");
        refused(&gz(&[script(b"#!/bundle/../etc/x\n")]), "run", "..");
        refused(&gz(&[script(b"#!\n")]), "run", "names no interpreter");
        refused(&gz(&[script(&[b"#!/bin/sh ".as_slice(), &[b'x'; 300]].concat())]), "run", "longer than 255");
        refused(&gz(&[script(b"#!/bin/\xff\n")]), "run", "not UTF-8");
        refused(&gz(&[entry(b"dangling", b'2', 0o777, b"", b"nowhere")]), "dangling", "not in the bundle");
        refused(&gz(&[entry(b"a", b'2', 0o777, b"", b"b"), entry(b"b", b'2', 0o777, b"", b"a")]), "a", "symlinks");
    }
}
