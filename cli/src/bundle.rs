//! A directory as a `.tar.gz` bundle, made on the fly: ustar headers, with a PAX record for
//! paths and link targets longer than ustar holds. Regular files, directories and symlinks
//! (not followed) only; anything else is refused with its path. Modes are kept.

use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const BLOCK: usize = 512;

/// The tar (uncompressed) of everything below `dir` (paths relative to it): what `lantern
/// cp` sends for a directory.
pub fn tar(dir: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    for rel in entries {
        append(&mut out, dir, &rel)?;
    }
    out.write_all(&[0u8; 2 * BLOCK])?;
    Ok(out)
}

/// The gzip-compressed tar of everything below `dir` (paths relative to it).
pub fn tar_gz(dir: &Path) -> io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    for rel in entries {
        append(&mut gz, dir, &rel)?;
    }
    gz.write_all(&[0u8; 2 * BLOCK])?;
    gz.finish()
}

/// Every path below `root/rel`, parents before children, in name order.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let p = rel.join(e.file_name());
        let is_dir = e.file_type()?.is_dir();
        out.push(p.clone());
        if is_dir {
            walk(root, &p, out)?;
        }
    }
    Ok(())
}

fn append(out: &mut impl Write, root: &Path, rel: &Path) -> io::Result<()> {
    let full = root.join(rel);
    let meta = std::fs::symlink_metadata(&full)?;
    let ft = meta.file_type();
    let mut name = rel.as_os_str().as_encoded_bytes().to_vec();
    let (kind, link, data) = if ft.is_file() {
        (b'0', Vec::new(), Some(std::fs::read(&full)?))
    } else if ft.is_dir() {
        name.push(b'/');
        (b'5', Vec::new(), None)
    } else if ft.is_symlink() {
        (b'2', std::fs::read_link(&full)?.as_os_str().as_encoded_bytes().to_vec(), None)
    } else {
        return Err(io::Error::other(format!(
            "cannot bundle {}: not a regular file, directory or symlink",
            full.display()
        )));
    };
    let size = data.as_ref().map_or(0, |d| d.len() as u64);
    let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
    let mode = meta.permissions().mode() & 0o7777;
    // Long names and targets travel in a PAX extended header before the entry.
    if name.len() > 100 || link.len() > 100 {
        let mut pax = Vec::new();
        if name.len() > 100 {
            pax.extend(pax_record(b"path", &name));
        }
        if link.len() > 100 {
            pax.extend(pax_record(b"linkpath", &link));
        }
        out.write_all(&header(b"././@PaxHeader", b'x', 0o644, pax.len() as u64, mtime, b""))?;
        write_padded(out, &pax)?;
    }
    let short = |b: &[u8]| b[..b.len().min(100)].to_vec();
    out.write_all(&header(&short(&name), kind, mode, size, mtime, &short(&link)))?;
    if let Some(d) = data {
        write_padded(out, &d)?;
    }
    Ok(())
}

/// `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, itself included.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn write_padded(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    out.write_all(data)?;
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    out.write_all(&vec![0u8; pad])
}

/// A ustar header.
fn header(name: &[u8], kind: u8, mode: u32, size: u64, mtime: u64, link: &[u8]) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let octal = |h: &mut [u8; BLOCK], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}", w = len - 1);
        let s = &s.as_bytes()[s.len().saturating_sub(len - 1)..];
        h[at..at + s.len()].copy_from_slice(s);
    };
    h[..name.len()].copy_from_slice(name);
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, mtime);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for n in [1, 5, 90, 95, 96, 1000] {
            let r = pax_record(b"path", &vec![b'a'; n]);
            let len: usize =
                std::str::from_utf8(&r[..r.iter().position(|&b| b == b' ').unwrap()]).unwrap().parse().unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn gnu_tar_reads_what_we_write() {
        let dir = std::env::temp_dir().join(format!("lantern-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let long = "d".repeat(120);
        std::fs::create_dir_all(dir.join("src/bin").join(&long)).unwrap();
        std::fs::write(dir.join("src/bin/app"), b"\x7fELF...").unwrap();
        std::fs::set_permissions(dir.join("src/bin/app"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(dir.join("src/bin").join(&long).join("f"), vec![7u8; 1000]).unwrap();
        std::os::unix::fs::symlink("bin/app", dir.join("src/app")).unwrap();
        let tgz = tar_gz(&dir.join("src")).unwrap();
        std::fs::write(dir.join("b.tgz"), &tgz).unwrap();
        let out = std::process::Command::new("tar").arg("-tvzf").arg(dir.join("b.tgz")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(list.contains("-rwxr-x--- ") && list.contains("bin/app"), "{list}");
        assert!(list.contains(&format!("bin/{long}/f")), "{list}");
        assert!(list.contains("app -> bin/app"), "{list}");
        std::fs::create_dir_all(dir.join("x")).unwrap();
        let st =
            std::process::Command::new("tar").arg("-xzf").arg(dir.join("b.tgz")).arg("-C").arg(dir.join("x")).status();
        assert!(st.unwrap().success());
        assert_eq!(std::fs::read(dir.join("x/bin").join(&long).join("f")).unwrap(), vec![7u8; 1000]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
