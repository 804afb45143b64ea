//! `GET` and `PUT` on the worker thread, through a session's files helper
//! ([`shared::files`]): the helper, as the session's uid and beneath the session's `/tmp`
//! or bundle, looks at, opens and creates paths and hands over descriptors; this side moves
//! the bytes and makes or parses the tar streams (a parser of untrusted input: the client's
//! tar for PUT, the same checks as bundles). A GET is a snapshot in a memfd (a running
//! program may be writing); a PUT is written under a temporary name beside its target and
//! renamed at the end, so nothing half-written is ever visible under the final name, and
//! a failure removes it.

use shared::files::{Entry, FsCall, FsReply, Kind, Root};
use shared::{Tube, TubeError};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// Most entries a directory copy handles.
const MAX_ENTRIES: usize = 100_000;
/// Deepest directory a copy descends into.
const MAX_DEPTH: usize = 64;

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The path is not there.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be carried out as asked (a path through a symlink out, not a file
    /// or directory, exists already, a bad archive).
    #[error("{0}")]
    Refused(String),
    /// The session's `/tmp` is full (`tmp_bytes`), or the copy is larger than allowed.
    #[error("{0}")]
    Full(String),
    /// The helper or the rig failed.
    #[error("{0}")]
    Failed(String),
}

/// A blocking client of one files helper.
#[derive(Debug)]
pub struct Helper {
    tube: Tube,
    tag: u64,
}

impl Helper {
    /// Wraps the frontend's end of a helper's socketpair.
    pub fn new(sock: OwnedFd) -> Result<Helper, CopyError> {
        let tube = Tube::new(sock).map_err(|e| CopyError::Failed(format!("files helper: {e}")))?;
        Ok(Helper { tube, tag: 0 })
    }

    fn recv(&mut self) -> Result<FsReply, CopyError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.tube.recv::<FsReply>() {
                Ok(Some((t, r))) if t == self.tag => return Ok(r),
                Ok(Some(_)) => return Err(CopyError::Failed("the files helper answered out of turn".into())),
                Ok(None) => {}
                Err(TubeError::PeerGone) => return Err(CopyError::Failed("the files helper is gone".into())),
                Err(e) => return Err(CopyError::Failed(format!("files helper: {e}"))),
            }
            if Instant::now() > deadline {
                return Err(CopyError::Failed("the files helper did not answer within 60 s".into()));
            }
            let mut pfd = [nix::poll::PollFd::new(self.tube.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(1000u16));
        }
    }

    /// One call, one answer (an error answer becomes a [`CopyError`]).
    pub fn call(&mut self, call: FsCall) -> Result<FsReply, CopyError> {
        self.tag += 1;
        self.tube.send(self.tag, call).map_err(|e| CopyError::Failed(format!("files helper: {e}")))?;
        match self.recv()? {
            FsReply::Error { errno, message } => Err(match nix::Error::from_raw(errno) {
                nix::Error::ENOENT | nix::Error::ENOTDIR => {
                    CopyError::NotFound(format!("{message} (no such file in the session)"))
                }
                nix::Error::EXDEV | nix::Error::ELOOP => {
                    CopyError::Refused(format!("{message} (a symlink leads out of the session's /tmp or bundle)"))
                }
                nix::Error::ENOSPC | nix::Error::EDQUOT => {
                    CopyError::Full(format!("{message} (the session's /tmp is full)"))
                }
                nix::Error::EEXIST
                | nix::Error::EACCES
                | nix::Error::EPERM
                | nix::Error::EINVAL
                | nix::Error::EISDIR => CopyError::Refused(message),
                _ => CopyError::Failed(message),
            }),
            r => Ok(r),
        }
    }

    fn done(&mut self, call: FsCall) -> Result<(), CopyError> {
        match self.call(call)? {
            FsReply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn list(&mut self, root: Root, path: &str) -> Result<Vec<Entry>, CopyError> {
        self.tag += 1;
        let call = FsCall::List { root, path: path.as_bytes().to_vec() };
        self.tube.send(self.tag, call).map_err(|e| CopyError::Failed(format!("files helper: {e}")))?;
        let mut all = Vec::new();
        loop {
            match self.recv()? {
                FsReply::Entries { entries, more } => {
                    all.extend(entries);
                    if all.len() > MAX_ENTRIES {
                        return Err(CopyError::Full(format!("more than {MAX_ENTRIES} entries")));
                    }
                    if !more {
                        return Ok(all);
                    }
                }
                FsReply::Error { message, .. } => return Err(CopyError::Refused(message)),
                other => return Err(unexpected(other)),
            }
        }
    }

    fn open(&mut self, root: Root, path: &str) -> Result<(File, u64), CopyError> {
        match self.call(FsCall::Open { root, path: path.as_bytes().to_vec() })? {
            FsReply::File { size, fd } => Ok((File::from(fd), size)),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(r: FsReply) -> CopyError {
    CopyError::Failed(format!("the files helper answered {r:?}"))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Copies exactly `n` bytes from `src` to `out` (zeroes if `src` ends early: a file that
/// shrank while it was copied).
fn copy_n(src: &mut impl Read, out: &mut impl Write, n: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let mut left = n;
    let mut eof = false;
    while left > 0 {
        let want = (left as usize).min(buf.len());
        let got = if eof { 0 } else { src.read(&mut buf[..want])? };
        if got == 0 {
            eof = true;
            buf[..want].fill(0);
            out.write_all(&buf[..want])?;
            left -= want as u64;
        } else {
            out.write_all(&buf[..got])?;
            left -= got as u64;
        }
    }
    Ok(())
}

/// A GET's result: a memfd holding the bytes to send.
#[derive(Debug)]
pub struct Got {
    /// `file` or `dir`.
    pub kind: &'static str,
    /// The bytes (rewound).
    pub data: File,
    /// How many.
    pub size: u64,
    /// Entries left out, with why.
    pub skipped: Vec<String>,
}

fn memfd() -> Result<File, CopyError> {
    crate::sys::memfd_for_upload(0, "debuglantern-get").map_err(|e| CopyError::Failed(format!("memfd: {e}")))
}

/// GET: a regular file's bytes, or a directory as a tar stream (files, directories,
/// symlinks as links — never followed; other kinds skipped), at most `limit` bytes.
pub fn get(h: &mut Helper, root: Root, rel: &str, limit: u64) -> Result<Got, CopyError> {
    let st = match h.call(FsCall::Stat { root, path: rel.as_bytes().to_vec() })? {
        FsReply::Stat(e) => e,
        other => return Err(unexpected(other)),
    };
    let mut data = memfd()?;
    let mut buf = vec![0u8; 256 << 10];
    let io = |e: std::io::Error| CopyError::Failed(format!("writing the copy: {e}"));
    let (kind, skipped) = match st.kind {
        Kind::File => {
            let (mut f, size) = h.open(root, rel)?;
            if size > limit {
                return Err(CopyError::Full(format!("{size} bytes is more than a copy may hold ({limit})")));
            }
            copy_n(&mut f, &mut data, size, &mut buf).map_err(io)?;
            ("file", Vec::new())
        }
        Kind::Dir => {
            let mut b = tar::Builder::new(&mut data);
            let mut skipped = Vec::new();
            let mut total = 0u64;
            walk(h, root, rel, "", 0, &mut b, &mut skipped, &mut total, limit)?;
            b.finish().map_err(io)?;
            drop(b);
            ("dir", skipped)
        }
        _ => return Err(CopyError::Refused(format!("{rel} is not a regular file or a directory"))),
    };
    let size = data.seek(SeekFrom::End(0)).map_err(io)?;
    data.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(Got { kind, data, size, skipped })
}

#[allow(clippy::too_many_arguments)]
fn walk(
    h: &mut Helper,
    root: Root,
    dir: &str,
    in_tar: &str,
    depth: usize,
    b: &mut tar::Builder<&mut File>,
    skipped: &mut Vec<String>,
    total: &mut u64,
    limit: u64,
) -> Result<(), CopyError> {
    if depth > MAX_DEPTH {
        return Err(CopyError::Refused(format!("{dir}: deeper than {MAX_DEPTH} levels")));
    }
    let io = |e: std::io::Error| CopyError::Failed(format!("writing the copy: {e}"));
    for e in h.list(root, dir)? {
        let Ok(name) = String::from_utf8(e.name.clone()) else {
            skipped.push(format!("{}: a name that is not UTF-8", String::from_utf8_lossy(&e.name)));
            continue;
        };
        let (src, dst) = (join(dir, &name), join(in_tar, &name));
        let mut hdr = tar::Header::new_ustar();
        hdr.set_mode(e.mode & 0o777);
        hdr.set_mtime(0);
        match e.kind {
            Kind::Dir => {
                hdr.set_entry_type(tar::EntryType::Directory);
                hdr.set_size(0);
                b.append_data(&mut hdr, format!("{dst}/"), std::io::empty()).map_err(io)?;
                walk(h, root, &src, &dst, depth + 1, b, skipped, total, limit)?;
            }
            Kind::File => {
                let (mut f, size) = match h.open(root, &src) {
                    Ok(x) => x,
                    Err(CopyError::Refused(why)) => {
                        skipped.push(format!("{dst}: {why}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                *total += size;
                if *total > limit {
                    return Err(CopyError::Full(format!("more than {limit} bytes to copy")));
                }
                hdr.set_entry_type(tar::EntryType::Regular);
                hdr.set_size(size);
                let mut exact = ExactReader { f: &mut f, left: size, eof: false };
                b.append_data(&mut hdr, &dst, &mut exact).map_err(io)?;
            }
            Kind::Symlink(target) => {
                hdr.set_entry_type(tar::EntryType::Symlink);
                hdr.set_size(0);
                let target = String::from_utf8_lossy(&target).into_owned();
                b.append_link(&mut hdr, &dst, &target).map_err(io)?;
            }
            Kind::Other => skipped.push(format!("{dst}: a device, fifo or socket (not copied)")),
        }
    }
    Ok(())
}

/// Reads exactly `left` bytes of a file that may change while it is read (zeroes past a
/// premature end, nothing past `left`).
struct ExactReader<'a> {
    f: &'a mut File,
    left: u64,
    eof: bool,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.left as usize).min(out.len());
        if want == 0 {
            return Ok(0);
        }
        let got = if self.eof { 0 } else { self.f.read(&mut out[..want])? };
        let n = if got == 0 {
            self.eof = true;
            out[..want].fill(0);
            want
        } else {
            got
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// A PUT's result.
#[derive(Debug, Default)]
pub struct Put {
    /// File bytes written.
    pub bytes: u64,
    /// Files written.
    pub files: u64,
    /// Entries left out, with why.
    pub skipped: Vec<String>,
    /// Bytes the session's /tmp holds after the copy (its tmpfs's own count: a file
    /// replaced is no longer counted), when the helper could say.
    pub tmp_used: Option<u64>,
}

/// PUT: `data` (`size` bytes) as the file `rel` of `/tmp`, or with `tar` extracted as the
/// directory `rel`. Missing parents are made. Written under a temporary name and renamed
/// at the end; on any failure nothing of it stays.
pub fn put(h: &mut Helper, rel: &str, mut data: File, size: u64, tar: bool, ticket: u64) -> Result<Put, CopyError> {
    if rel.is_empty() {
        return Err(CopyError::Refused("PUT needs a path below /tmp, not /tmp itself".into()));
    }
    if let FsReply::Space { free, .. } = h.call(FsCall::Space)? {
        if size > free {
            return Err(CopyError::Full(format!("{size} bytes do not fit: the session's /tmp has {free} bytes free")));
        }
    }
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    if !parent.is_empty() {
        h.done(FsCall::Mkdir { path: parent.as_bytes().to_vec(), mode: 0o755 })?;
    }
    let temp = join(parent, &format!(".lantern-put-{ticket}-{name}"));
    data.seek(SeekFrom::Start(0)).map_err(|e| CopyError::Failed(format!("rewind: {e}")))?;
    let result = if tar { put_tree(h, &temp, &mut data) } else { put_memfd(h, &temp, &data, size) };
    let result = result.and_then(|r| {
        h.done(FsCall::Rename { from: temp.as_bytes().to_vec(), to: rel.as_bytes().to_vec() }).map(|()| r)
    });
    match result {
        Ok(mut r) => {
            if let Ok(FsReply::Space { free, total }) = h.call(FsCall::Space) {
                r.tmp_used = Some(total.saturating_sub(free));
            }
            Ok(r)
        }
        Err(e) => {
            let _ = h.call(FsCall::Remove { path: temp.as_bytes().to_vec() });
            Err(e)
        }
    }
}

fn create(h: &mut Helper, path: &str, mode: u32) -> Result<File, CopyError> {
    match h.call(FsCall::Create { path: path.as_bytes().to_vec(), mode })? {
        FsReply::File { fd, .. } => Ok(File::from(fd)),
        other => Err(unexpected(other)),
    }
}

fn write_error(path: &str, e: std::io::Error) -> CopyError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => CopyError::Full(format!("{path}: the session's /tmp is full")),
        _ => CopyError::Failed(format!("{path}: {e}")),
    }
}

fn put_file(h: &mut Helper, path: &str, src: &mut impl Read, size: u64, mode: u32) -> Result<Put, CopyError> {
    let mut f = create(h, path, mode)?;
    let mut buf = vec![0u8; 256 << 10];
    copy_n(src, &mut f, size, &mut buf).map_err(|e| write_error(path, e))?;
    Ok(Put { bytes: size, files: 1, ..Put::default() })
}

/// A whole PUT's memfd as one file: copied inside the kernel (`std::io::copy` between two
/// files is `copy_file_range`, else `sendfile`), not through a buffer of ours.
fn put_memfd(h: &mut Helper, path: &str, data: &File, size: u64) -> Result<Put, CopyError> {
    let mut f = create(h, path, 0o644)?;
    let n = std::io::copy(&mut data.take(size), &mut f).map_err(|e| write_error(path, e))?;
    if n < size {
        // The memfd is the frontend's own and holds `size` bytes; a short one is a bug.
        return Err(CopyError::Failed(format!("{path}: {n} of {size} bytes staged")));
    }
    Ok(Put { bytes: size, files: 1, ..Put::default() })
}

/// Extracts a tar stream as the new directory `top`, entry by entry through the helper.
fn put_tree(h: &mut Helper, top: &str, src: &mut File) -> Result<Put, CopyError> {
    h.done(FsCall::Mkdir { path: top.as_bytes().to_vec(), mode: 0o755 })?;
    let mut out = Put::default();
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, src));
    let bad = |e: std::io::Error| CopyError::Refused(format!("not a tar stream: {e}"));
    let mut count = 0usize;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        count += 1;
        if count > MAX_ENTRIES {
            return Err(CopyError::Refused(format!("more than {MAX_ENTRIES} entries")));
        }
        let raw = entry.path_bytes().into_owned();
        let parts = crate::bundle::clean_path(&raw, MAX_DEPTH).map_err(|e| CopyError::Refused(e.to_string()))?;
        if parts.is_empty() {
            continue; // "./" itself
        }
        let shown = parts.join("/");
        let path = join(top, &shown);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let parent = path.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
        match kind {
            tar::EntryType::Directory => h.done(FsCall::Mkdir { path: path.into_bytes(), mode: mode | 0o700 })?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                h.done(FsCall::Mkdir { path: parent.into_bytes(), mode: 0o755 })?;
                let size = entry.header().size().map_err(bad)?;
                let r = put_file(h, &path, &mut entry, size, mode)?;
                out.bytes += r.bytes;
                out.files += 1;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                crate::bundle::check_link(&parts, &target).map_err(|e| CopyError::Refused(e.to_string()))?;
                h.done(FsCall::Mkdir { path: parent.into_bytes(), mode: 0o755 })?;
                h.done(FsCall::Symlink { path: path.into_bytes(), target })?;
            }
            other => out.skipped.push(format!("{shown}: {other:?} entries are not copied")),
        }
    }
    Ok(out)
}
