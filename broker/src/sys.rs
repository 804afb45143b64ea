//! Every raw system call of the broker, each behind a safe function. Nothing outside this
//! module uses `unsafe`.
#![allow(unsafe_code)]

use nix::errno::Errno;
use std::os::fd::RawFd;

/// Closes every descriptor from 3 up except those in `keep`.
pub fn close_all_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&f| f >= 3).collect();
    keep.sort_unstable();
    let mut first: u32 = 3;
    for fd in keep {
        let fd = fd as u32;
        if fd > first {
            close_range(first, fd - 1);
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    // SAFETY: closing descriptors we own; callers are about to exec or are a fresh child
    // that does not use the closed descriptors afterwards.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
}

/// Ignores `SIGCHLD` (children are reaped by the kernel) or restores its default.
pub fn set_sigchld(default: bool) {
    let handler = if default { libc::SIG_DFL } else { libc::SIG_IGN };
    // SAFETY: installing SIG_DFL or SIG_IGN is always sound.
    unsafe { libc::signal(libc::SIGCHLD, handler) };
}

/// Resets every signal to its default action and unblocks all: what a program expects at
/// exec (Rust ignores SIGPIPE, and the init blocks several).
pub fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL is always sound.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Empties the capability bounding and ambient sets and locks `SECBIT_NOROOT`, so that
/// no later exec, even as uid 0, can gain a capability. Needs `CAP_SETPCAP`: call it
/// before giving up uid 0.
pub fn lock_out_capabilities() -> Result<(), Errno> {
    for cap in 0..=63 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability ends it.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r != 0 {
            match Errno::last() {
                Errno::EINVAL => break,
                e => return Err(e),
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    Errno::result(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) })?;
    // SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED (keep-caps stays off,
    // so a setuid away from 0 clears every capability).
    let bits: libc::c_ulong = 0x1 | 0x2 | 0x20;
    // SAFETY: prctl with integer arguments.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) }).map(drop)
}

/// Clears the effective, permitted and inheritable capability sets (always allowed).
pub fn clear_capabilities() -> Result<(), Errno> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header { version: 0x2008_0522, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: a _LINUX_CAPABILITY_VERSION_3 header and the two data words capset(2) reads.
    Errno::result(unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) }).map(drop)
}

/// `getrusage(RUSAGE_CHILDREN)`: user µs, sys µs, max RSS KiB.
pub fn children_usage() -> (u64, u64, u64) {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime), ru.ru_maxrss as u64)
}

pub use shared::os::{exit_now, fork_into, fork_into_cgroup, pidfd_signal, Forked};

/// Becomes the session's identity. Order matters: the bounding set and securebits need
/// `CAP_SETPCAP`, the uid change needs `CAP_SETUID`, and the uid change itself clears the
/// remaining capabilities.
pub fn take_identity(ns_uid: Option<u32>) -> Result<(), IdentityError> {
    let step = |step: &'static str| move |source| IdentityError { step, source };
    lock_out_capabilities().map_err(step("capability bounding set"))?;
    if let Some(uid) = ns_uid {
        let (u, g) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(uid));
        nix::unistd::setgroups(&[]).map_err(step("setgroups"))?;
        nix::unistd::setresgid(g, g, g).map_err(step("setresgid"))?;
        nix::unistd::setresuid(u, u, u).map_err(step("setresuid"))?;
    }
    clear_capabilities().map_err(step("capabilities"))
}

/// A step of taking the session's identity that failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct IdentityError {
    step: &'static str,
    #[source]
    source: Errno,
}

// ---- seccomp user notification: every process exit of a session, for its receipt -------

/// `SECCOMP_SET_MODE_FILTER`.
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`.
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
/// `_IOWR('!', 0, struct seccomp_notif)` (80 bytes).
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
/// `_IOWR('!', 1, struct seccomp_notif_resp)` (24 bytes).
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;

/// `struct seccomp_data`.
#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: i32,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Default)]
struct SeccompNotif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
struct SeccompNotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// Installs, on the calling thread, a filter (`policy::seccomp::observer`) that hands the
/// calls it names made by this process and its descendants to a supervisor (which answers
/// "continue", after noting them), and returns the supervisor's listener. Everything else
/// passes this filter untouched; the session's own filters decide the rest. Needs
/// `no_new_privs`.
pub fn listener_for(prog: policy::seccomp::BpfProgram) -> Result<std::os::fd::OwnedFd, Errno> {
    // seccompiler's sock_filter has the kernel's layout (u16, u8, u8, u32).
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
    // SAFETY: seccomp(2) reads `fprog`, which points at `prog`; both outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    shared::os::adopt_fd(fd as RawFd).map_err(|_| Errno::EBADF)
}

/// `SECCOMP_IOCTL_NOTIF_ID_VALID`: `_IOW('!', 2, __u64)`.
const SECCOMP_IOCTL_NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;

/// One call handed over by the listener.
#[derive(Debug, Clone, Copy)]
pub struct Note {
    /// The notification's id (for the answer).
    pub id: u64,
    /// The caller's thread id (in the session's PID namespace, which is the supervisor's).
    pub pid: u32,
    /// The call.
    pub nr: i64,
    /// Its arguments.
    pub args: [u64; 6],
}

impl Note {
    /// The exit it announces, if it is an `exit_group`.
    pub fn exit(&self) -> Option<ExitNote> {
        (self.nr == libc::SYS_exit_group).then_some(ExitNote { id: self.id, pid: self.pid, code: self.args[0] as i32 })
    }
}

/// Takes one notification from the listener (blocks if none is pending).
pub fn notify_recv(listener: std::os::fd::BorrowedFd<'_>) -> Result<Note, Errno> {
    use std::os::fd::AsRawFd;
    // The kernel wants the buffer zeroed.
    let mut n = SeccompNotif::default();
    // SAFETY: NOTIF_RECV writes one `struct seccomp_notif` into `n`, which has its layout.
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_RECV as _, &mut n as *mut SeccompNotif) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(Note { id: n.id, pid: n.pid, nr: i64::from(n.data.nr), args: n.data.args })
}

/// Whether notification `id` is still pending: its caller has not died (and its pid not
/// been reused) since it was taken. Checked after reading the caller's memory.
pub fn notify_id_valid(listener: std::os::fd::BorrowedFd<'_>, id: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: NOTIF_ID_VALID reads one u64 from the pointer.
    unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_ID_VALID as _, &id as *const u64) == 0 }
}

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS`: `_IOW('!', 4, __u64)`.
const SECCOMP_IOCTL_NOTIF_SET_FLAGS: libc::c_ulong = 0x4008_2104;
/// Wake the supervisor synchronously (Linux 6.6).
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// Asks the kernel to switch straight from a notifying process to the supervisor and
/// back (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6), which roughly halves a round
/// trip; older kernels refuse it and nothing else changes.
pub fn notify_sync_wake_up(listener: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: NOTIF_SET_FLAGS takes the flags by value.
    unsafe {
        libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SET_FLAGS as _, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) == 0
    }
}

/// Reads `len` bytes at `addr` of process `pid` (as much as is mapped).
pub fn read_memory(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let local = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len }];
    let remote = [libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: len }];
    // SAFETY: process_vm_readv writes at most `len` bytes into `buf` (the local iovec) and
    // only reads the other process's memory; the remote address is never dereferenced here.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, local.as_ptr(), 1, remote.as_ptr(), 1, 0) };
    buf.truncate(n.max(0) as usize);
    buf
}

/// Reads a NUL-terminated string at `addr` of process `pid`, at most `max` bytes (page by
/// page: a string may end just before an unmapped page). `None` if unreadable.
pub fn read_c_string(pid: u32, addr: u64, max: usize) -> Option<Vec<u8>> {
    if addr == 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        let to_page = 4096 - (at % 4096) as usize;
        let chunk = read_memory(pid, at, to_page.min(max - out.len()));
        if chunk.is_empty() {
            return if out.is_empty() { None } else { Some(out) };
        }
        if let Some(end) = chunk.iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Some(out);
        }
        at += chunk.len() as u64;
        out.extend_from_slice(&chunk);
    }
    Some(out)
}

/// A process of the session about to exit.
#[derive(Debug, Clone, Copy)]
pub struct ExitNote {
    /// The notification's id (for the answer).
    pub id: u64,
    /// Its pid (in the session's PID namespace, which is the supervisor's).
    pub pid: u32,
    /// The status it passes to `exit_group`.
    pub code: i32,
}

/// Lets the notified call proceed.
pub fn exit_continue(listener: std::os::fd::BorrowedFd<'_>, id: u64) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let resp = SeccompNotifResp { id, val: 0, error: 0, flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE };
    // SAFETY: NOTIF_SEND reads one `struct seccomp_notif_resp` from `resp`.
    let r =
        unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SEND as _, &resp as *const SeccompNotifResp) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// A pidfd (always close-on-exec) for `pid` of the caller's PID namespace; nix has no
/// `pidfd_open`.
pub fn pidfd_open(pid: i32) -> Result<std::os::fd::OwnedFd, Errno> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(Errno::last());
    }
    shared::os::adopt_fd(fd as RawFd).map_err(|_| Errno::EBADF)
}

/// Ends the calling thread, which in a single-threaded process ends it, with `exit` rather
/// than `exit_group`: used where the exit listener may have no supervisor yet.
pub fn exit_thread(code: i32) -> ! {
    // SAFETY: SYS_exit ends the calling thread and does not return.
    unsafe {
        libc::syscall(libc::SYS_exit, code);
    }
    unreachable!("SYS_exit returned")
}

/// Brings the session's loopback interface up (127.0.0.1 and ::1; a new network
/// namespace starts with `lo` down). Needs `CAP_NET_ADMIN` over the namespace: the init
/// calls it while it is still root of the broker's user namespace.
pub fn loopback_up() -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write an ifreq we own; the flags are
    // the ifr_ifru union's active member for both requests.
    unsafe {
        Errno::result(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut libc::ifreq))?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        Errno::result(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req as *const libc::ifreq))?;
    }
    Ok(())
}

/// Opens a new terminal in the session's own devpts (`/dev/ptmx` → `/dev/pts/ptmx`) and
/// sets its size: the master, close-on-exec. The slave belongs to the caller's uid.
pub fn open_terminal(rows: u16, cols: u16) -> Result<std::os::fd::OwnedFd, Errno> {
    use nix::fcntl::OFlag;
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::unlockpt(&master)?;
    // SAFETY: posix_openpt returned an open descriptor that `master` owned; we take it over.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(master.into_raw_fd()) };
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const libc::winsize) })?;
    Ok(fd)
}

/// In the program's process, after `setsid`: opens the slave of `master`
/// (`TIOCGPTPEER`, no path lookup) and makes it the controlling terminal. Returns the
/// slave's descriptor.
pub fn attach_terminal(master: RawFd) -> Result<RawFd, Errno> {
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor (or -1).
    let slave = Errno::result(unsafe { libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR) })?;
    // SAFETY: TIOCSCTTY with 0 (do not steal) on a descriptor we just opened.
    Errno::result(unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) })?;
    Ok(slave)
}

/// Reads process `pid`'s memory at `addr` into `buf`; how many bytes it could (0 if none).
pub fn read_memory_into(pid: i32, addr: u64, buf: &mut [u8]) -> usize {
    let local = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
    let remote = [libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: buf.len() }];
    // SAFETY: process_vm_readv writes at most `buf.len()` bytes into `buf` and only reads
    // the other process's memory; the remote address is never dereferenced here.
    let n = unsafe { libc::process_vm_readv(pid, local.as_ptr(), 1, remote.as_ptr(), 1, 0) };
    n.max(0) as usize
}

/// A `ptrace` request that passes no buffer (`SEIZE`, `INTERRUPT`, `CONT`, `DETACH`,
/// `LISTEN`): `data` is a number (options, a signal), never an address.
pub fn ptrace_plain(request: libc::c_uint, tid: i32, data: libc::c_long) -> Result<(), Errno> {
    debug_assert!(matches!(
        request,
        libc::PTRACE_SEIZE | libc::PTRACE_INTERRUPT | libc::PTRACE_CONT | libc::PTRACE_DETACH | libc::PTRACE_LISTEN
    ));
    // SAFETY: for these requests the kernel reads `data` as a number and writes no memory
    // of ours; `addr` is unused (0).
    let r = unsafe { libc::ptrace(request, tid, 0 as libc::c_long, data) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `PTRACE_GETEVENTMSG`: a new child's pid after a fork/clone event stop.
pub fn ptrace_event_msg(tid: i32) -> Result<u64, Errno> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: the kernel writes one `unsigned long` at the address given, `msg`'s.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETEVENTMSG, tid, 0 as libc::c_long, &mut msg as *mut libc::c_ulong) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(msg as u64)
}

/// `ptrace(request, tid, 0, buf)` for a request that writes one `T` at `buf`.
///
/// # Safety
/// `request` must be one that writes exactly `size_of::<T>()` bytes at its data address
/// (each caller checks the kernel's struct against `T`'s size at compile time).
unsafe fn ptrace_get<T>(request: libc::c_uint, tid: i32, buf: &mut T) -> Result<(), Errno> {
    // SAFETY: by the caller's promise, the kernel writes one `T` at `buf`, which is one.
    let r = unsafe { libc::ptrace(request, tid, 0 as libc::c_long, buf as *mut T) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// A stopped tracee's general registers (`PTRACE_GETREGS`), in `user_regs_struct` order,
/// which is the order of an ELF core's `elf_gregset_t` on x86_64.
#[cfg(target_arch = "x86_64")]
pub fn ptrace_regs(tid: i32) -> Result<[u64; 27], Errno> {
    const _: () = assert!(std::mem::size_of::<libc::user_regs_struct>() == 27 * 8);
    let mut regs = [0u64; 27];
    // SAFETY: GETREGS writes one `user_regs_struct`, 27 u64 (checked above).
    unsafe { ptrace_get(libc::PTRACE_GETREGS, tid, &mut regs) }?;
    Ok(regs)
}

/// General registers: only x86_64 cores are written.
#[cfg(not(target_arch = "x86_64"))]
pub fn ptrace_regs(_tid: i32) -> Result<[u64; 27], Errno> {
    Err(Errno::ENOSYS)
}

/// Floating-point registers: only x86_64 cores are written.
#[cfg(not(target_arch = "x86_64"))]
pub fn ptrace_fpregs(_tid: i32) -> Result<[u8; 512], Errno> {
    Err(Errno::ENOSYS)
}

/// A stopped tracee's floating-point registers (`PTRACE_GETFPREGS`: the 512-byte
/// `user_fpregs_struct`, an ELF core's `NT_PRFPREG`).
#[cfg(target_arch = "x86_64")]
pub fn ptrace_fpregs(tid: i32) -> Result<[u8; 512], Errno> {
    const _: () = assert!(std::mem::size_of::<libc::user_fpregs_struct>() == 512);
    let mut regs = [0u8; 512];
    // SAFETY: GETFPREGS writes one `user_fpregs_struct`, 512 bytes (checked above).
    unsafe { ptrace_get(libc::PTRACE_GETFPREGS, tid, &mut regs) }?;
    Ok(regs)
}

/// The `siginfo_t` (128 bytes) of the signal a tracee is stopped for (`PTRACE_GETSIGINFO`).
pub fn ptrace_siginfo(tid: i32) -> Result<[u8; 128], Errno> {
    const _: () = assert!(std::mem::size_of::<libc::siginfo_t>() == 128);
    let mut info = [0u8; 128];
    // SAFETY: GETSIGINFO writes one `siginfo_t`, 128 bytes (checked above).
    unsafe { ptrace_get(libc::PTRACE_GETSIGINFO, tid, &mut info) }?;
    Ok(info)
}

/// `waitpid(pid, …, WNOHANG | __WALL)` (every thread and tracee): the pid and raw status
/// of one change, if one is ready. Raw, because a tracee may stop for a real-time signal,
/// which `nix`'s status decoding refuses.
pub fn wait_raw(pid: i32) -> Option<(i32, i32)> {
    let flags = libc::__WALL | libc::WNOHANG;
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one int, `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r > 0 {
            return Some((r, status));
        }
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return None;
    }
}
