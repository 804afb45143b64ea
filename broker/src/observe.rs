//! The session init's side of START `observe`: a call handed over by the seccomp listener
//! is read (its arguments from the caller's memory, with `process_vm_readv`), recorded,
//! and always let go on (the caller answers CONTINUE): observation never changes what
//! the program may do, the jail decides that.
//!
//! A listener sees a call before the kernel runs it, never its result. The result the
//! record gives is what the init finds, at that moment, with the caller's uid, mount
//! namespace and network namespace: the path's existence and access (`access(2)` as the
//! same uid), a listening socket on a loopback port, the session's only interface being
//! loopback. A program racing itself (a file created between the check and its open) can
//! make the two differ, as can the arguments themselves, read from memory the program may
//! change after the check (TOCTOU; the kernel reads them again). ARCHITECTURE.md says so.

use crate::sys::{self, Note};
use nix::errno::Errno;
use nix::unistd::AccessFlags;
use shared::observe::{Access, ExecSeen, NetOp, Recorder, MAX_ARG, MAX_ARGS, MAX_PATH};
use std::os::fd::BorrowedFd;

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

/// Records `n` (not an `exit_group`) if it is a call `rec` observes. The caller lets it
/// go on afterwards, whatever happens here.
pub fn note(rec: &mut Recorder, listener: BorrowedFd<'_>, n: &Note) {
    let (pid, a) = (n.pid, n.args);
    let time = now_us();
    let asked = rec.asked();
    match n.nr {
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open if asked.files => file(rec, listener, n, time, libc::AT_FDCWD, a[0], a[1] as i32),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_creat if asked.files => {
            file(rec, listener, n, time, libc::AT_FDCWD, a[0], libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC)
        }
        libc::SYS_openat if asked.files => file(rec, listener, n, time, a[0] as i32, a[1], a[2] as i32),
        libc::SYS_openat2 if asked.files => {
            // struct open_how { u64 flags; u64 mode; u64 resolve; }
            let how = sys::read_memory(pid, a[2], 8);
            let flags = how.get(..8).map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or_default())) as i32;
            file(rec, listener, n, time, a[0] as i32, a[1], flags)
        }
        libc::SYS_execve if asked.exec => exec(rec, listener, n, time, libc::AT_FDCWD, a[0], a[1], 0),
        libc::SYS_execveat if asked.exec => exec(rec, listener, n, time, a[0] as i32, a[1], a[2], a[4] as i32),
        libc::SYS_connect if asked.net => net(rec, listener, n, time, NetOp::Connect, a[0] as i32, a[1], a[2]),
        libc::SYS_bind if asked.net => net(rec, listener, n, time, NetOp::Bind, a[0] as i32, a[1], a[2]),
        libc::SYS_sendto if asked.net && a[4] != 0 => {
            net(rec, listener, n, time, NetOp::Sendto, a[0] as i32, a[4], a[5])
        }
        libc::SYS_sendmsg if asked.net => {
            // struct msghdr { void *msg_name; socklen_t msg_namelen; ... }
            let hdr = sys::read_memory(pid, a[1], 12);
            if hdr.len() == 12 {
                let name = u64::from_ne_bytes(hdr[..8].try_into().unwrap_or_default());
                let len = u32::from_ne_bytes(hdr[8..12].try_into().unwrap_or_default());
                if name != 0 && len != 0 {
                    net(rec, listener, n, time, NetOp::Sendmsg, a[0] as i32, name, u64::from(len));
                }
            }
        }
        _ => {}
    }
}

/// The forked process's exec of the program (or gdbserver), told by the init.
pub fn first_exec(rec: &mut Recorder, pid: u32, path: String, argv: Vec<String>) {
    let time = now_us();
    if rec.asked().exec {
        rec.exec(ExecSeen { pid, ppid: 1, path, argv, argv_truncated: false, time_us: time, error: None });
    }
}

/// The absolute path `path` names for `pid`: itself, or against its working directory or
/// the directory `dirfd` (through `/proc/<pid>`).
fn resolve(pid: u32, dirfd: i32, path: &str) -> Option<String> {
    // The caller's own /proc links: what they point at (`/proc/self/exe` → the program).
    for own in ["/proc/self/", "/proc/thread-self/"] {
        if let Some(rest) = path.strip_prefix(own) {
            let p = format!("/proc/{pid}/{rest}");
            let target = std::fs::read_link(&p).ok().map(|t| t.to_string_lossy().into_owned());
            return Some(target.filter(|t| t.starts_with('/') && !t.ends_with(" (deleted)")).unwrap_or(p));
        }
    }
    if path.starts_with('/') {
        return Some(path.to_string());
    }
    let base = if dirfd == libc::AT_FDCWD {
        std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?
    } else {
        std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).ok()?
    };
    let base = base.to_string_lossy().into_owned();
    if !base.starts_with('/') {
        return None;
    }
    Some(if path.is_empty() { base } else { format!("{}/{path}", base.trim_end_matches('/')) })
}

fn errno_of(r: nix::Result<()>) -> Option<i32> {
    r.err().map(|e| e as i32)
}

/// What an open with `flags` of `target` would meet now (see the module's note).
fn probe_open(target: &str, flags: i32) -> (Option<i32>, bool) {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{fstatat, SFlag};
    let mode = flags & libc::O_ACCMODE;
    let want = match mode {
        libc::O_WRONLY => AccessFlags::W_OK,
        libc::O_RDWR => AccessFlags::R_OK | AccessFlags::W_OK,
        _ => AccessFlags::R_OK,
    };
    // The common case, a plain read: one access(2) says it all.
    let special = libc::O_CREAT | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_PATH;
    if mode == libc::O_RDONLY && flags & special == 0 {
        return (errno_of(nix::unistd::access(target, want)), false);
    }
    let follow = if flags & libc::O_NOFOLLOW != 0 { AtFlags::AT_SYMLINK_NOFOLLOW } else { AtFlags::empty() };
    match fstatat(None, target, follow) {
        Ok(st) => {
            let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
            if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
                return (Some(libc::EEXIST), false);
            }
            if flags & libc::O_DIRECTORY != 0 && kind != SFlag::S_IFDIR {
                return (Some(libc::ENOTDIR), false);
            }
            if kind == SFlag::S_IFDIR && mode != libc::O_RDONLY {
                return (Some(libc::EISDIR), false);
            }
            if kind == SFlag::S_IFLNK && flags & libc::O_NOFOLLOW != 0 && flags & libc::O_PATH == 0 {
                return (Some(libc::ELOOP), false);
            }
            if flags & libc::O_PATH != 0 {
                return (None, false);
            }
            (errno_of(nix::unistd::access(target, want)), false)
        }
        Err(Errno::ENOENT) if flags & libc::O_CREAT != 0 => {
            let parent = match target.rfind('/') {
                Some(0) => "/",
                Some(i) => &target[..i],
                None => ".",
            };
            let e = errno_of(nix::unistd::access(parent, AccessFlags::W_OK | AccessFlags::X_OK));
            (e, e.is_none())
        }
        Err(e) => (Some(e as i32), false),
    }
}

#[allow(clippy::too_many_arguments)]
fn file(rec: &mut Recorder, listener: BorrowedFd<'_>, n: &Note, time: u64, dirfd: i32, addr: u64, flags: i32) {
    let Some(path) = sys::read_c_string(n.pid, addr, MAX_PATH * 8) else { return };
    let resolved = resolve(n.pid, dirfd, &text(path.clone()));
    if !sys::notify_id_valid(listener, n.id) {
        return;
    }
    let path = text(path);
    let target = resolved.clone().unwrap_or_else(|| path.clone());
    let (error, created) = probe_open(&target, flags);
    let mode = flags & libc::O_ACCMODE;
    let how = Access {
        read: mode == libc::O_RDONLY || mode == libc::O_RDWR,
        write: mode == libc::O_WRONLY || mode == libc::O_RDWR,
        create: created,
        exec: false,
    };
    let resolved = resolved.filter(|r| *r != path);
    rec.file(n.pid, time, path, resolved, how, error);
}

/// The parent of `pid` in the session.
fn ppid(pid: u32) -> u32 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(close) = stat.rfind(')') else { return 0 };
    stat[close + 1..].split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn exec(
    rec: &mut Recorder,
    listener: BorrowedFd<'_>,
    n: &Note,
    time: u64,
    dirfd: i32,
    path_at: u64,
    argv_at: u64,
    flags: i32,
) {
    let pid = n.pid;
    let mut path = sys::read_c_string(pid, path_at, MAX_PATH * 8).map(text).unwrap_or_default();
    if path.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        // fexecve: the file behind the descriptor.
        path = std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("fd {dirfd}"));
    }
    let mut argv = Vec::new();
    let mut argv_truncated = false;
    let pointers = if argv_at == 0 { Vec::new() } else { sys::read_memory(pid, argv_at, 8 * (MAX_ARGS + 1)) };
    for p in pointers.chunks_exact(8) {
        let p = u64::from_ne_bytes(p.try_into().unwrap_or_default());
        if p == 0 {
            break;
        }
        if argv.len() == MAX_ARGS {
            argv_truncated = true;
            break;
        }
        let arg = sys::read_c_string(pid, p, MAX_ARG).map(text).unwrap_or_default();
        argv.push(shared::observe::clip(arg, MAX_ARG));
    }
    let resolved = if path.starts_with("/memfd:") { Some(path.clone()) } else { resolve(pid, dirfd, &path) };
    if !sys::notify_id_valid(listener, n.id) {
        return;
    }
    let error = match &resolved {
        Some(r) if r.starts_with("/memfd:") => None,
        Some(r) => match std::fs::metadata(r) {
            Ok(m) if m.is_dir() => Some(libc::EACCES),
            Ok(_) => errno_of(nix::unistd::access(r.as_str(), AccessFlags::X_OK)),
            Err(e) => Some(e.raw_os_error().unwrap_or(libc::ENOENT)),
        },
        None => None,
    };
    let how = Access { exec: true, ..Access::default() };
    if rec.asked().files && !path.starts_with("/memfd:") {
        rec.file(pid, time, path.clone(), resolved.clone().filter(|r| *r != path), how, error);
    }
    rec.exec(ExecSeen { pid, ppid: ppid(pid), path, argv, argv_truncated, time_us: time, error });
}

/// A socket address: family name, address, port.
fn sockaddr(b: &[u8]) -> Option<(String, String, u16)> {
    let family = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
            let ip = std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b.get(4..8)?).ok()?);
            Some(("inet".into(), ip.to_string(), port))
        }
        libc::AF_INET6 => {
            let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
            let ip = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b.get(8..24)?).ok()?);
            Some(("inet6".into(), ip.to_string(), port))
        }
        libc::AF_UNIX => {
            let p = b.get(2..).unwrap_or_default();
            let name = if p.first() == Some(&0) {
                format!("@{}", String::from_utf8_lossy(&p[1..]))
            } else {
                let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
                String::from_utf8_lossy(&p[..end]).into_owned()
            };
            Some(("unix".into(), name, 0))
        }
        f => Some((format!("af{f}"), String::new(), 0)),
    }
}

/// The inode of socket descriptor `fd` of `pid`.
fn socket_inode(pid: u32, fd: i32) -> Option<String> {
    let l = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let l = l.to_string_lossy();
    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
}

/// Lines of `/proc/net/<table>` (the session's network namespace: the init's own).
fn net_table(table: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(format!("/proc/net/{table}"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Whether `inode` is a socket of `tables`.
fn in_tables(inode: &str, tables: &[&str]) -> bool {
    tables.iter().any(|t| net_table(t).iter().any(|row| row.get(9).is_some_and(|i| i == inode)))
}

/// Sockets of `tables` on local port `port`, in state `state` (hex, e.g. `0A` LISTEN), or
/// any state.
fn on_port(tables: &[&str], port: u16, state: Option<&str>) -> bool {
    let want = format!("{port:04X}");
    tables.iter().any(|t| {
        net_table(t).iter().any(|row| {
            row.get(1).and_then(|l| l.rsplit(':').next()).is_some_and(|p| p == want)
                && state.is_none_or(|s| row.get(3).is_some_and(|st| st == s))
        })
    })
}

fn probe_net(op: NetOp, pid: u32, fd: i32, family: &str, address: &str, port: u16) -> Option<i32> {
    match family {
        "inet" | "inet6" => {
            let ip: std::net::IpAddr = address.parse().ok()?;
            let (tcp, udp): (&[&str], &[&str]) =
                if family == "inet" { (&["tcp"], &["udp"]) } else { (&["tcp6"], &["udp6"]) };
            let inode = socket_inode(pid, fd);
            let is_udp = inode.as_deref().is_some_and(|i| in_tables(i, udp));
            let local = ip.is_loopback() || ip.is_unspecified();
            match op {
                // The session's network namespace has loopback only.
                NetOp::Connect | NetOp::Sendto | NetOp::Sendmsg if !local => Some(libc::ENETUNREACH),
                NetOp::Connect if !is_udp && !on_port(tcp, port, Some("0A")) => Some(libc::ECONNREFUSED),
                NetOp::Bind if !local => Some(libc::EADDRNOTAVAIL),
                NetOp::Bind if port != 0 && u32::from(port) < unprivileged_port_start() => Some(libc::EACCES),
                NetOp::Bind if port != 0 && on_port(if is_udp { udp } else { tcp }, port, None) => {
                    Some(libc::EADDRINUSE)
                }
                _ => None,
            }
        }
        "unix" if matches!(op, NetOp::Connect | NetOp::Sendto | NetOp::Sendmsg) => {
            if let Some(name) = address.strip_prefix('@') {
                let bound = std::fs::read_to_string("/proc/net/unix")
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.split_whitespace().nth(7) == Some(&format!("@{name}")));
                (!bound).then_some(libc::ECONNREFUSED)
            } else {
                std::fs::metadata(address).err().map(|e| e.raw_os_error().unwrap_or(libc::ENOENT))
            }
        }
        _ => None,
    }
}

fn unprivileged_port_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

#[allow(clippy::too_many_arguments)]
fn net(rec: &mut Recorder, listener: BorrowedFd<'_>, n: &Note, time: u64, op: NetOp, fd: i32, addr: u64, len: u64) {
    let bytes = sys::read_memory(n.pid, addr, (len as usize).min(128));
    let Some((family, address, port)) = sockaddr(&bytes) else { return };
    if !sys::notify_id_valid(listener, n.id) {
        return;
    }
    let error = probe_net(op, n.pid, fd, &family, &address, port);
    rec.net(n.pid, time, op, family, address, port, error);
}

/// The record in a sealed memfd (it may exceed a message), for the frontend.
pub fn sealed(o: &shared::observe::Observed) -> Option<std::os::fd::OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use std::io::Write;
    let fd = memfd_create(c"debuglantern-observed", MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)
        .ok()?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&o.encode()).ok()?;
    let seals = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), FcntlArg::F_ADD_SEALS(seals)).ok()?;
    Some(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_parse_and_hostile_ones_do_not_panic() {
        let mut v4 = vec![libc::AF_INET as u8, 0, 0, 1, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sockaddr(&v4), Some(("inet".into(), "127.0.0.1".into(), 1)));
        v4[2..4].copy_from_slice(&80u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(sockaddr(&v4), Some(("inet".into(), "10.0.0.1".into(), 80)));
        let mut un = vec![libc::AF_UNIX as u8, 0];
        un.extend_from_slice(b"/run/x.sock\0junk");
        assert_eq!(sockaddr(&un), Some(("unix".into(), "/run/x.sock".into(), 0)));
        let abs = [libc::AF_UNIX as u8, 0, 0, b'n', b'm'];
        assert_eq!(sockaddr(&abs).unwrap().1, "@nm");
        for cut in 0..v4.len() {
            let _ = sockaddr(&v4[..cut]);
        }
        assert_eq!(sockaddr(&[libc::AF_INET6 as u8, 0, 0]), None);
    }

    #[test]
    fn opens_are_probed_as_the_caller_would_meet_them() {
        let dir = std::env::temp_dir().join(format!("dl-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"x").unwrap();
        let (f, d) = (f.to_str().unwrap(), dir.to_str().unwrap());
        assert_eq!(probe_open(f, libc::O_RDONLY), (None, false));
        assert_eq!(probe_open(&format!("{d}/nope"), libc::O_RDONLY), (Some(libc::ENOENT), false));
        assert_eq!(probe_open(&format!("{d}/new"), libc::O_WRONLY | libc::O_CREAT), (None, true));
        assert_eq!(probe_open(f, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL), (Some(libc::EEXIST), false));
        assert_eq!(probe_open(d, libc::O_WRONLY), (Some(libc::EISDIR), false));
        assert_eq!(probe_open(f, libc::O_RDONLY | libc::O_DIRECTORY), (Some(libc::ENOTDIR), false));
        assert_eq!(probe_open(&format!("{d}/a/b"), libc::O_WRONLY | libc::O_CREAT), (Some(libc::ENOENT), false));
        assert_eq!(resolve(std::process::id(), libc::AT_FDCWD, "/abs"), Some("/abs".into()));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(resolve(std::process::id(), libc::AT_FDCWD, "rel"), Some(format!("{}/rel", cwd.display())));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
