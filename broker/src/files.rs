//! A session's files helper (`GET` and `PUT`, issue 17): forked by the spawner for one
//! copy, it holds the session's kept `/tmp` and its bundle as directory descriptors,
//! becomes the session's uid (no capabilities, not dumpable, `no_new_privs`, the session's
//! seccomp filter) and answers the frontend's [`FsCall`]s on a socketpair. Every path is
//! opened beneath its root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: a
//! symlink the program planted (to `/proc/1/root`, `/bundle/..`, another session) is never
//! followed out; listings never follow symlinks at all. Writes land in the session's own
//! tmpfs, under its size limit. It never reads file contents: it hands the frontend
//! descriptors.

use crate::messages::{sys_err, SpawnError, SpawnReply};
use crate::sys;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use shared::files::{check_path, Entry, FsCall, FsReply, Kind, Root, ENTRIES_PER_REPLY};
use shared::Tube;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// Forks the helper for session `dir`: its `/tmp` (made if it has none yet, of
/// `tmp_bytes`) and, if it runs a bundle, the bundle. Returns the frontend's end.
pub fn start(
    dir: &str,
    bundle: bool,
    ns_uid: Option<u32>,
    tmp_bytes: u64,
    session_seccomp: &[seccompiler::BpfProgram],
) -> Result<SpawnReply, SpawnError> {
    crate::jail::prepare_tmp(dir, tmp_bytes.max(4096), true, false)
        .map_err(|e| SpawnError::Helper(shared::chain(&e)))?;
    let open_dir = |p: String| {
        nix::fcntl::open(p.as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .and_then(shared::os::adopt_fd)
            .map_err(sys_err("open the session's directory"))
    };
    let tmp = open_dir(policy::mounts::tmp_dir(dir))?;
    let bundle = if bundle { Some(open_dir(format!("{}/{dir}", policy::mounts::BUNDLES))?) } else { None };
    let (ours, theirs) = shared::tube::socketpair().map_err(sys_err("socketpair"))?;
    match sys::fork_into(0).map_err(sys_err("fork the files helper"))? {
        sys::Forked::Parent { .. } => Ok(SpawnReply::Files { sock: ours }),
        sys::Forked::Child => {
            drop(ours);
            let mut keep = vec![theirs.as_raw_fd(), tmp.as_raw_fd()];
            keep.extend(bundle.as_ref().map(|b| b.as_raw_fd()));
            sys::close_all_except(&keep);
            if sys::take_identity(ns_uid).is_err() || nix::sys::prctl::set_dumpable(false).is_err() {
                sys::exit_now(1);
            }
            if nix::sys::prctl::set_no_new_privs().is_err() || policy::seccomp::install(session_seccomp).is_err() {
                sys::exit_now(1);
            }
            serve(theirs, tmp, bundle)
        }
    }
}

fn serve(sock: OwnedFd, tmp: OwnedFd, bundle: Option<OwnedFd>) -> ! {
    let Ok(mut tube) = Tube::new(sock) else { sys::exit_now(1) };
    loop {
        let mut pfd = [nix::poll::PollFd::new(tube.as_fd(), nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::NONE);
        let call = match tube.recv::<FsCall>() {
            Ok(Some((tag, call))) => (tag, call),
            Ok(None) => continue,
            // The frontend is done (or broke the framing): so are we.
            Err(_) => sys::exit_now(0),
        };
        let (tag, call) = call;
        let replies = handle(&tmp, bundle.as_ref(), call);
        for r in replies {
            if tube.send(tag, r).is_err() {
                sys::exit_now(0);
            }
            // A long listing waits for room rather than fail.
            while tube.wants_write() {
                let mut pfd = [nix::poll::PollFd::new(tube.as_fd(), nix::poll::PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::NONE);
                if tube.flush().is_err() {
                    sys::exit_now(0);
                }
            }
        }
    }
}

fn error(e: nix::Error, what: impl std::fmt::Display) -> FsReply {
    FsReply::Error { errno: e as i32, message: format!("{what}: {}", e.desc()) }
}

/// Opens `path` beneath `root` (the root itself for the empty path).
fn open_beneath(root: &OwnedFd, path: &[u8], flags: OFlag, mode: u32) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let p: &[u8] = if path.is_empty() { b"." } else { path };
    openat2(root.as_raw_fd(), p, how).and_then(shared::os::adopt_fd)
}

/// The parent directory of `path` (opened beneath `root`) and the last component.
fn parent_of<'a>(root: &OwnedFd, path: &'a [u8]) -> nix::Result<(OwnedFd, &'a [u8])> {
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    };
    if name.is_empty() {
        return Err(nix::Error::EINVAL);
    }
    Ok((open_beneath(root, dir, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?, name))
}

fn entry_of(dirfd: RawFd, name: &[u8]) -> nix::Result<Entry> {
    let st = nix::sys::stat::fstatat(Some(dirfd), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => {
            let t = nix::fcntl::readlinkat(Some(dirfd), name)?;
            Kind::Symlink(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()).to_vec())
        }
        _ => Kind::Other,
    };
    Ok(Entry { name: name.to_vec(), kind, size: st.st_size as u64, mode: st.st_mode & 0o7777 })
}

fn handle(tmp: &OwnedFd, bundle: Option<&OwnedFd>, call: FsCall) -> Vec<FsReply> {
    let root_of = |r: Root| match r {
        Root::Tmp => Some(tmp),
        Root::Bundle => bundle,
    };
    let path = match &call {
        FsCall::Stat { path, .. }
        | FsCall::List { path, .. }
        | FsCall::Open { path, .. }
        | FsCall::Mkdir { path, .. }
        | FsCall::Create { path, .. }
        | FsCall::Symlink { path, .. }
        | FsCall::Remove { path } => path.clone(),
        FsCall::Rename { from, .. } => from.clone(),
        FsCall::Space => Vec::new(),
    };
    if let Err(why) = check_path(&path) {
        return vec![FsReply::Error { errno: libc::EINVAL, message: why.into() }];
    }
    let shown = String::from_utf8_lossy(&path).into_owned();
    match call {
        FsCall::Stat { root, path } => {
            let Some(root) = root_of(root) else { return vec![no_bundle()] };
            // The path itself, a final symlink followed beneath the root only.
            let st = open_beneath(root, &path, OFlag::O_PATH, 0).and_then(|fd| nix::sys::stat::fstat(fd.as_raw_fd()));
            match st {
                Ok(st) => {
                    let kind = match st.st_mode & libc::S_IFMT {
                        libc::S_IFREG => Kind::File,
                        libc::S_IFDIR => Kind::Dir,
                        _ => Kind::Other,
                    };
                    vec![FsReply::Stat(Entry {
                        name: Vec::new(),
                        kind,
                        size: st.st_size as u64,
                        mode: st.st_mode & 0o7777,
                    })]
                }
                Err(e) => vec![error(e, shown)],
            }
        }
        FsCall::List { root, path } => {
            let Some(root) = root_of(root) else { return vec![no_bundle()] };
            let dir = match open_beneath(root, &path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0) {
                Ok(d) => d,
                Err(e) => return vec![error(e, shown)],
            };
            // The Dir owns the descriptor from here (and closes it if it fails).
            let mut d = match nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(dir)) {
                Ok(d) => d,
                Err(e) => return vec![error(e, shown)],
            };
            let dfd = d.as_raw_fd();
            let mut names = Vec::new();
            for ent in d.iter().flatten() {
                let n = ent.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            let mut entries: Vec<Entry> = names.iter().filter_map(|n| entry_of(dfd, n).ok()).collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let mut out = Vec::new();
            let mut chunks = entries.chunks(ENTRIES_PER_REPLY).peekable();
            if chunks.peek().is_none() {
                out.push(FsReply::Entries { entries: vec![], more: false });
            }
            while let Some(c) = chunks.next() {
                out.push(FsReply::Entries { entries: c.to_vec(), more: chunks.peek().is_some() });
            }
            out
        }
        FsCall::Open { root, path } => {
            let Some(root) = root_of(root) else { return vec![no_bundle()] };
            match open_beneath(root, &path, OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK, 0) {
                Ok(fd) => match nix::sys::stat::fstat(fd.as_raw_fd()) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                        vec![FsReply::File { size: st.st_size as u64, fd }]
                    }
                    Ok(_) => {
                        vec![FsReply::Error { errno: libc::EINVAL, message: format!("{shown} is not a regular file") }]
                    }
                    Err(e) => vec![error(e, shown)],
                },
                Err(e) => vec![error(e, shown)],
            }
        }
        FsCall::Mkdir { path, mode } => {
            // Each missing component, beneath /tmp.
            let mut at = 0;
            loop {
                let end = path[at..].iter().position(|&b| b == b'/').map_or(path.len(), |i| at + i);
                let (parent, name) = match parent_of(tmp, &path[..end]) {
                    Ok(p) => p,
                    Err(e) => return vec![error(e, shown)],
                };
                match nix::sys::stat::mkdirat(Some(parent.as_raw_fd()), name, Mode::from_bits_truncate(mode & 0o777)) {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(e) => return vec![error(e, shown)],
                }
                if end == path.len() {
                    break;
                }
                at = end + 1;
            }
            // It must be a directory now (not a file or symlink of the same name).
            match open_beneath(tmp, &path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW, 0) {
                Ok(_) => vec![FsReply::Done],
                Err(e) => vec![error(e, format!("{shown} is not a directory"))],
            }
        }
        FsCall::Create { path, mode } => {
            match open_beneath(
                tmp,
                &path,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                mode & 0o777,
            ) {
                Ok(fd) => vec![FsReply::File { size: 0, fd }],
                Err(e) => vec![error(e, shown)],
            }
        }
        FsCall::Symlink { path, target } => match parent_of(tmp, &path) {
            Ok((parent, name)) => match nix::unistd::symlinkat(target.as_slice(), Some(parent.as_raw_fd()), name) {
                Ok(()) => vec![FsReply::Done],
                Err(e) => vec![error(e, shown)],
            },
            Err(e) => vec![error(e, shown)],
        },
        FsCall::Rename { from, to } => {
            if let Err(why) = check_path(&to) {
                return vec![FsReply::Error { errno: libc::EINVAL, message: why.into() }];
            }
            let (a, b) = match (parent_of(tmp, &from), parent_of(tmp, &to)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => return vec![error(e, shown)],
            };
            match nix::fcntl::renameat(Some(a.0.as_raw_fd()), a.1, Some(b.0.as_raw_fd()), b.1) {
                Ok(()) => vec![FsReply::Done],
                Err(e) => vec![error(e, String::from_utf8_lossy(&to))],
            }
        }
        FsCall::Remove { path } => match parent_of(tmp, &path) {
            Ok((parent, name)) => match remove_tree(parent.as_raw_fd(), name, 0) {
                Ok(()) => vec![FsReply::Done],
                Err(e) => vec![error(e, shown)],
            },
            Err(e) => vec![error(e, shown)],
        },
        FsCall::Space => match nix::sys::statvfs::fstatvfs(tmp) {
            Ok(st) => {
                let b = st.fragment_size();
                vec![FsReply::Space { free: st.blocks_available() * b, total: st.blocks() * b }]
            }
            Err(e) => vec![error(e, "/tmp")],
        },
    }
}

fn no_bundle() -> FsReply {
    FsReply::Error { errno: libc::ENOENT, message: "this session runs no bundle: /bundle is empty".into() }
}

/// Removes `name` in `dirfd`, recursively, never following a symlink (depth-bounded).
fn remove_tree(dirfd: RawFd, name: &[u8], depth: usize) -> nix::Result<()> {
    if depth > 256 {
        return Err(nix::Error::ELOOP);
    }
    match nix::unistd::unlinkat(Some(dirfd), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::Error::ENOENT) => return Ok(()),
        Err(nix::Error::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(dirfd, name, how)?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let sub = d.as_raw_fd();
    let names: Vec<Vec<u8>> =
        d.iter().flatten().map(|e| e.file_name().to_bytes().to_vec()).filter(|n| n != b"." && n != b"..").collect();
    for n in names {
        remove_tree(sub, &n, depth + 1)?;
    }
    drop(d);
    nix::unistd::unlinkat(Some(dirfd), name, nix::unistd::UnlinkatFlags::RemoveDir)
}
