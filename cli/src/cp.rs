//! `lantern cp`: files and directories into and out of a session (GET and PUT). One side
//! is `ID:PATH` (a path in the session's `/tmp` or `/bundle`), the other a local path or
//! `-`. A directory travels as a tar stream; out of the session it is unpacked here with
//! the same care as the rig takes (nothing outside the destination, no path through a
//! symlink, only files, directories and relative links that stay inside).

use crate::conn::Conn;
use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use proto::reply::{Got, Put};
use proto::{Command, UploadSize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use uuid::Uuid;

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
pub enum Side {
    /// `ID:PATH`.
    Remote(Uuid, String),
    /// `-`.
    Stdio,
    /// A local path.
    Local(PathBuf),
}

/// Parses `ID:PATH`, `-` or a local path.
pub fn side(s: &str) -> Side {
    if s == "-" {
        return Side::Stdio;
    }
    if let Some((id, path)) = s.split_once(':') {
        if let Ok(id) = Uuid::parse_str(id) {
            return Side::Remote(id, path.to_string());
        }
    }
    Side::Local(PathBuf::from(s))
}

fn base_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Copies `src` to `dst`; `tar`: stdin is a tar stream to unpack in the session.
pub fn cp(c: &mut Conn, src: Side, dst: Side, tar: bool, quiet: bool) -> Result<()> {
    match (src, dst) {
        (Side::Remote(id, path), to @ (Side::Local(_) | Side::Stdio)) => download(c, id, &path, to, quiet),
        (from @ (Side::Local(_) | Side::Stdio), Side::Remote(id, path)) => upload(c, from, id, &path, tar, quiet),
        _ => bail!("one side of lantern cp is ID:PATH (a session's /tmp or /bundle), the other a local path or -"),
    }
}

/// What PUT sends: bytes made here, or a regular file streamed as it is.
enum Payload {
    Bytes(Vec<u8>),
    File(std::fs::File, u64),
}

impl Payload {
    fn len(&self) -> u64 {
        match self {
            Payload::Bytes(v) => v.len() as u64,
            Payload::File(_, n) => *n,
        }
    }
}

fn upload(c: &mut Conn, from: Side, id: Uuid, path: &str, tar: bool, quiet: bool) -> Result<()> {
    let (data, is_dir, name) = match &from {
        Side::Stdio => {
            let mut v = Vec::new();
            std::io::stdin().lock().read_to_end(&mut v).context("reading stdin")?;
            (Payload::Bytes(v), tar, String::from("stdin"))
        }
        Side::Local(p) => {
            let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if meta.is_dir() {
                let t = crate::bundle::tar(p).with_context(|| format!("archiving {}", p.display()))?;
                (Payload::Bytes(t), true, name)
            } else {
                let f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
                let m = f.metadata().with_context(|| format!("{}", p.display()))?;
                if m.is_file() {
                    (Payload::File(f, m.len()), false, name)
                } else {
                    // A fifo or a device: what it gives until its end.
                    let mut v = Vec::new();
                    (&f).read_to_end(&mut v).with_context(|| format!("reading {}", p.display()))?;
                    (Payload::Bytes(v), false, name)
                }
            }
        }
        Side::Remote(..) => unreachable!("checked by cp"),
    };
    // `ID:/tmp/in/`: into that directory, under the source's name.
    let target = if path.ends_with('/') {
        if matches!(from, Side::Stdio) {
            bail!("{path}: copying stdin needs a file name, not a directory");
        }
        format!("{path}{name}")
    } else {
        path.to_string()
    };
    c.send(&Command::Put { id, path: target, size: UploadSize::Bytes(data.len()), tar: is_dir })?;
    match data {
        Payload::Bytes(v) => c.writer.write_all(&v).context("sending to the rig")?,
        // Straight from the file to the socket (std's copy is sendfile here). A file that
        // shrinks meanwhile ends the connection short: the rig keeps nothing of it.
        Payload::File(f, len) => {
            let n = std::io::copy(&mut f.take(len), &mut c.writer).context("sending to the rig")?;
            if n < len {
                bail!("{name} shrank while it was sent ({n} of {len} bytes); nothing was copied");
            }
        }
    }
    let r: Put = c.read()?;
    for s in &r.skipped {
        eprintln!("lantern: not copied: {s}");
    }
    if !quiet {
        eprintln!("{} → {}:{} ({} bytes, {} files)", name, id, r.path, r.bytes, r.files);
    }
    Ok(())
}

/// The `size` bytes that follow a reply (CORE's), into `path` (`-`: stdout) under a
/// temporary name first, checked against `sha256` before they get their name.
pub fn receive_checked(c: &mut Conn, size: u64, sha256: &str, path: &std::path::Path) -> Result<()> {
    use sha2::Digest;
    struct Hashing<W> {
        out: W,
        hash: sha2::Sha256,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.out.write(b)?;
            self.hash.update(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.out.flush()
        }
    }
    let mut body = (&mut c.reader).take(size);
    let check = |n: u64, hash: sha2::Sha256| -> Result<()> {
        check_len(n, size)?;
        let got = hex::encode(hash.finalize());
        if got != sha256 {
            bail!("the bytes received hash to {got}, the rig said {sha256}");
        }
        Ok(())
    };
    if path.as_os_str() == "-" {
        let mut out = Hashing { out: std::io::stdout().lock(), hash: sha2::Sha256::new() };
        let n = std::io::copy(&mut body, &mut out).context("writing to stdout")?;
        out.flush()?;
        return check(n, out.hash);
    }
    let tmp = path
        .with_file_name(format!(".{}.lantern-core", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = Hashing { out: f, hash: sha2::Sha256::new() };
    let done = std::io::copy(&mut body, &mut out)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|n| check(n, out.hash));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn download(c: &mut Conn, id: Uuid, path: &str, to: Side, quiet: bool) -> Result<()> {
    let got: Got = c.call(Command::Get { id, path: path.to_string() })?;
    for s in &got.skipped {
        eprintln!("lantern: not copied: {s}");
    }
    let mut body = (&mut c.reader).take(got.size);
    let dest = match to {
        Side::Stdio => {
            let mut out = std::io::stdout().lock();
            let n = std::io::copy(&mut body, &mut out).context("writing to stdout")?;
            out.flush()?;
            return check_len(n, got.size);
        }
        Side::Local(p) => p,
        Side::Remote(..) => unreachable!("checked by cp"),
    };
    // Into an existing directory, under the remote name; else as `dest` itself.
    let dest = if dest.is_dir() { dest.join(base_name(&got.path)) } else { dest };
    match got.kind.as_str() {
        "file" => {
            let tmp = dest.with_file_name(format!(
                ".{}.lantern-cp",
                dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            ));
            let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let n = std::io::copy(&mut body, &mut f).with_context(|| format!("writing {}", tmp.display()))?;
            if let Err(e) = check_len(n, got.size) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
        }
        "dir" => {
            std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
            let root = nix::fcntl::open(&dest, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| anyhow!("opening {}: {e}", dest.display()))?;
            let root = crate::term::adopt_fd(root);
            let skipped = untar(&mut body, &root)?;
            for s in skipped {
                eprintln!("lantern: not unpacked: {s}");
            }
            // What the stream did not use (cannot happen with a well-formed rig).
            std::io::copy(&mut body, &mut std::io::sink())?;
        }
        other => bail!("the rig sent a copy of kind {other:?}"),
    }
    if !quiet {
        eprintln!("{id}:{} → {} ({} bytes)", got.path, dest.display(), got.size);
    }
    Ok(())
}

fn check_len(n: u64, want: u64) -> Result<()> {
    if n != want {
        bail!("the rig closed the connection after {n} of {want} bytes");
    }
    Ok(())
}

const BLOCK: usize = 512;

fn octal(field: &[u8]) -> Result<u64> {
    let s: String = field.iter().take_while(|&&b| b != 0 && b != b' ').map(|&b| b as char).collect();
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| anyhow!("a tar header has a bad number {s:?}"))
}

fn clean(raw: &[u8]) -> Result<Vec<String>> {
    let s = std::str::from_utf8(raw).map_err(|_| anyhow!("a name in the copy is not UTF-8"))?;
    if s.starts_with('/') || s.chars().any(|c| c.is_control()) {
        bail!("the copy holds an unsafe name {s:?}");
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => bail!("the copy holds a name with '..': {s:?}"),
            c => parts.push(c.to_string()),
        }
    }
    Ok(parts)
}

fn beneath(flags: OFlag, mode: u32) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Unpacks a tar stream beneath `root`; returns what it left out.
fn untar(r: &mut impl Read, root: &OwnedFd) -> Result<Vec<String>> {
    let mut skipped = Vec::new();
    let (mut long_name, mut long_link): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    let mut hdr = [0u8; BLOCK];
    loop {
        r.read_exact(&mut hdr).context("the copy ended inside the tar stream")?;
        if hdr.iter().all(|&b| b == 0) {
            return Ok(skipped);
        }
        let size = octal(&hdr[124..136])?;
        let kind = hdr[156];
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let mut name = long_name.take().unwrap_or_else(|| {
            let n: Vec<u8> = hdr[..100].iter().take_while(|&&b| b != 0).copied().collect();
            let prefix: Vec<u8> = hdr[345..500].iter().take_while(|&&b| b != 0).copied().collect();
            if prefix.is_empty() || &hdr[257..262] != b"ustar" {
                n
            } else {
                [prefix, b"/".to_vec(), n].concat()
            }
        });
        let link = long_link.take().unwrap_or_else(|| hdr[157..257].iter().take_while(|&&b| b != 0).copied().collect());
        match kind {
            b'L' | b'K' | b'x' => {
                if size > 1 << 20 {
                    bail!("a tar extension header of {size} bytes");
                }
                let mut v = vec![0u8; padded as usize];
                r.read_exact(&mut v)?;
                v.truncate(size as usize);
                match kind {
                    b'L' => long_name = Some(v.into_iter().take_while(|&b| b != 0).collect()),
                    b'K' => long_link = Some(v.into_iter().take_while(|&b| b != 0).collect()),
                    _ => {
                        for (k, val) in pax(&v) {
                            match k.as_slice() {
                                b"path" => long_name = Some(val),
                                b"linkpath" => long_link = Some(val),
                                _ => {}
                            }
                        }
                    }
                }
                continue;
            }
            _ => {}
        }
        if name.ends_with(b"/") {
            name.pop();
        }
        let parts = clean(&name)?;
        let mode = (octal(&hdr[100..108])? & 0o777) as u32;
        if parts.is_empty() {
            skip(r, padded)?;
            continue;
        }
        let path = parts.join("/");
        let parent = open_parent(root, &parts)?;
        let leaf = parts.last().map(String::as_str).unwrap_or_default();
        match kind {
            b'5' => {
                match nix::sys::stat::mkdirat(Some(parent.as_raw_fd()), leaf, Mode::from_bits_truncate(mode | 0o700)) {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(e) => bail!("creating {path}: {e}"),
                }
                skip(r, padded)?;
            }
            b'0' | 0 | b'7' => {
                let fd =
                    openat2(parent.as_raw_fd(), leaf, beneath(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC, mode))
                        .map_err(|e| anyhow!("creating {path}: {e} (is it a symlink?)"))?;
                let mut f = std::fs::File::from(crate::term::adopt_fd(fd));
                let n = std::io::copy(&mut r.by_ref().take(size), &mut f).with_context(|| format!("writing {path}"))?;
                if n != size {
                    bail!("the copy ended inside {path}");
                }
                skip(r, padded - size)?;
            }
            b'2' => {
                skip(r, padded)?;
                let t = String::from_utf8_lossy(&link).into_owned();
                let mut depth = parts.len() as i64 - 1;
                let inside = !t.starts_with('/')
                    && t.split('/').all(|c| {
                        match c {
                            "" | "." => {}
                            ".." => depth -= 1,
                            _ => depth += 1,
                        }
                        depth >= 0
                    });
                if !inside {
                    skipped.push(format!("{path} → {t} (a link out of the copy)"));
                    continue;
                }
                let _ = nix::unistd::unlinkat(Some(parent.as_raw_fd()), leaf, nix::unistd::UnlinkatFlags::NoRemoveDir);
                nix::unistd::symlinkat(t.as_str(), Some(parent.as_raw_fd()), leaf)
                    .map_err(|e| anyhow!("creating the link {path}: {e}"))?;
            }
            other => {
                skip(r, padded)?;
                skipped.push(format!("{path} (tar entry type {:?})", other as char));
            }
        }
    }
}

/// The parent directory of `parts` beneath `root`, made as needed, never through a symlink.
fn open_parent(root: &OwnedFd, parts: &[String]) -> Result<OwnedFd> {
    let mut dir = crate::term::adopt_fd(nix::unistd::dup(root.as_raw_fd())?);
    for name in &parts[..parts.len() - 1] {
        match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name.as_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => bail!("creating {name}: {e}"),
        }
        let fd = openat2(dir.as_raw_fd(), name.as_str(), beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0))
            .map_err(|e| anyhow!("{name}: {e} (not a directory, or a symlink)"))?;
        dir = crate::term::adopt_fd(fd);
    }
    Ok(dir)
}

fn skip(r: &mut impl Read, n: u64) -> Result<()> {
    let got = std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink())?;
    if got != n {
        bail!("the copy ended inside the tar stream");
    }
    Ok(())
}

/// PAX records: `LEN KEY=VALUE\n`.
fn pax(mut v: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(sp) = v.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&v[..sp]).ok().and_then(|s| s.parse::<usize>().ok()) else { break };
        if len <= sp + 1 || len > v.len() {
            break;
        }
        let rec = &v[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        }
        v = &v[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn sides() {
        let id = "123e4567-e89b-12d3-a456-426614174000";
        assert_eq!(side("-"), Side::Stdio);
        assert_eq!(side(&format!("{id}:/tmp/x")), Side::Remote(Uuid::parse_str(id).unwrap(), "/tmp/x".into()));
        assert_eq!(side("./a:b"), Side::Local("./a:b".into()));
    }

    #[test]
    fn unpacking_stays_inside_the_destination() {
        let src = std::env::temp_dir().join(format!("lantern-untar-src-{}", std::process::id()));
        let dst = std::env::temp_dir().join(format!("lantern-untar-dst-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::write(src.join("d/e/f.txt"), b"deep").unwrap();
        std::fs::write(src.join(format!("{}.txt", "long".repeat(40))), b"long name").unwrap();
        std::os::unix::fs::symlink("d/e/f.txt", src.join("ok-link")).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", src.join("bad-link")).unwrap();
        let t = crate::bundle::tar(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        let root: OwnedFd = std::fs::File::open(&dst).unwrap().into();
        let skipped = untar(&mut &t[..], &root).unwrap();
        assert_eq!(std::fs::read(dst.join("d/e/f.txt")).unwrap(), b"deep");
        assert_eq!(std::fs::read(dst.join(format!("{}.txt", "long".repeat(40)))).unwrap(), b"long name");
        assert_eq!(std::fs::read_link(dst.join("ok-link")).unwrap(), Path::new("d/e/f.txt"));
        assert!(!dst.join("bad-link").exists() && skipped.len() == 1, "{skipped:?}");
        // A hostile stream: '..' in a name.
        let mut evil = t[..512].to_vec();
        evil[..100].fill(0);
        evil[..9].copy_from_slice(b"../escape");
        let sum: u32 = {
            evil[148..156].fill(b' ');
            evil.iter().map(|&b| b as u32).sum()
        };
        evil[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        assert!(untar(&mut &evil[..], &root).is_err());
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dst);
    }
}
