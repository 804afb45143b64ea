//! Process primitives both halves need (`clone3` with a pidfd, pidfd signals and reaping),
//! and the adoption of received descriptors. The only unsafe code of this crate; each
//! block says why it is sound.
#![allow(unsafe_code)]

use nix::errno::Errno;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Takes ownership of descriptors received through `SCM_RIGHTS`.
pub(crate) fn adopt_received(fds: &[RawFd]) -> Vec<OwnedFd> {
    fds.iter()
        .map(|&fd| {
            // SAFETY: the kernel installed `fd` into our table for this recvmsg call
            // and nothing else refers to it yet, so we are its sole owner.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect()
}

/// Takes ownership of a raw descriptor that nothing else owns: one inherited at exec (the
/// broker's socket on fd 3) or one a raw-fd API just returned. Fails if it is not open;
/// the caller adopts each descriptor exactly once.
pub fn adopt_fd(fd: RawFd) -> Result<OwnedFd, Errno> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
    // SAFETY: the descriptor is open (checked above) and, per this function's contract,
    // owned by nothing else in the process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct clone_args` of `clone3(2)`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of a fork we are on.
#[derive(Debug)]
pub enum Forked {
    /// The new process.
    Child,
    /// The caller, with the child's pid and a pidfd for it.
    Parent {
        /// The child's pid (in the caller's PID namespace).
        pid: Pid,
        /// A pidfd for the child.
        pidfd: OwnedFd,
    },
}

/// `clone3` without `CLONE_VM`: a fork into new namespaces (`ns_flags`, may be 0) that also
/// returns a pidfd, so there is no window in which the pid could be recycled.
///
/// The caller must be single-threaded: the child continues with a copy of the address
/// space, as after `fork`, and only the calling thread exists in it.
pub fn fork_into(ns_flags: libc::c_int) -> Result<Forked, Errno> {
    fork_into_cgroup(ns_flags, None)
}

/// `CLONE_INTO_CGROUP` (since Linux 5.7; cgroup v2 only).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// [`fork_into`], the child created directly in the cgroup v2 directory `cgroup` (a
/// migration afterwards would take the cgroup write lock, which waits for an RCU grace
/// period).
pub fn fork_into_cgroup(ns_flags: libc::c_int, cgroup: Option<BorrowedFd<'_>>) -> Result<Forked, Errno> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: (ns_flags as u64) | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(dir) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size we pass; without CLONE_VM the child
    // gets its own copy of memory, like fork(2). Callers are single-threaded, so no lock
    // can be held by a thread that does not exist in the child.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: Pid::from_raw(pid as i32),
            // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor we now own.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// `pidfd_send_signal(2)`.
pub fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> Result<(), Errno> {
    // SAFETY: valid descriptor, null siginfo is allowed, flags 0.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<u8>(), 0) };
    Errno::result(r).map(drop)
}

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// Not exited yet.
    Running,
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

/// Reaps the process behind `pidfd` if it has exited (`waitid(P_PIDFD, WNOHANG)`).
pub fn reap_pidfd(pidfd: BorrowedFd<'_>) -> Result<Reaped, Errno> {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    let r = unsafe {
        libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG)
    };
    Errno::result(r)?;
    // SAFETY: waitid filled `info`; si_pid is 0 when nothing was waitable yet, and
    // si_status is valid for CLD_* codes.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    Ok(match (pid, info.si_code) {
        (0, _) => Reaped::Running,
        (_, libc::CLD_EXITED) => Reaped::Code(status),
        _ => Reaped::Signal(status),
    })
}

/// `_exit(2)`: leaves a forked child without running the parent's destructors or
/// flushing its buffers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always sound to call; it does not return.
    unsafe { libc::_exit(code) }
}
