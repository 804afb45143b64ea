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

pub use shared::os::{exit_now, fork_into, pidfd_signal, Forked};
