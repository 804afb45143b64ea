//! The local terminal and signals, for `lantern run`: raw mode (restored on every way out),
//! the window size, and the signals `run` handles itself. Every raw system call of the
//! client is here, each behind a safe function.
#![allow(unsafe_code)]

use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};
use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;

/// The terminal's settings before raw mode, restored by [`restore`].
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Puts the terminal on stdin in raw mode (what a remote terminal needs: every key goes
/// to the rig, the remote side echoes). [`restore`] undoes it; so does dropping the guard.
pub fn raw_mode() -> nix::Result<RawGuard> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let saved = termios::tcgetattr(fd)?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
    termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw)?;
    Ok(RawGuard)
}

/// Restores the terminal when dropped.
#[derive(Debug)]
pub struct RawGuard;

impl Drop for RawGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the terminal's settings saved by [`raw_mode`], if any (idempotent).
pub fn restore() {
    if let Some(t) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &t);
    }
}

/// The size of the terminal on `fd` (rows, columns), if it is one.
pub fn size_of(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    use std::os::fd::AsRawFd;
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize we own.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The local terminal's size: stdout's, else stdin's, else 24×80.
pub fn size() -> (u16, u16) {
    size_of(std::io::stdout().as_fd()).or_else(|| size_of(std::io::stdin().as_fd())).unwrap_or((24, 80))
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// A closed pipe on stdout ends `lantern` quietly, as it does any Unix tool (Rust ignores
/// SIGPIPE and would report, or panic on, `EPIPE` instead).
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL is always sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// While `lantern` follows something that may stay quiet for hours (`events -f`, `logs -f`),
/// a reader of its stdout that goes away (`| head -1`) would only be noticed at the next
/// write. A thread waits for the pipe's error instead and ends the process as SIGPIPE
/// would. Nothing is done when stdout is not a pipe or socket.
pub fn end_when_stdout_closes() {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::stat::{fstat, SFlag};
    let Ok(st) = fstat(libc::STDOUT_FILENO) else { return };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFIFO && kind != SFlag::S_IFSOCK {
        return;
    }
    std::thread::spawn(|| {
        let out = std::io::stdout();
        // No events asked: poll reports only POLLERR (the reader closed) or POLLHUP.
        let mut fds = [PollFd::new(out.as_fd(), PollFlags::empty())];
        while poll(&mut fds, PollTimeout::NONE).is_err() {}
        let gone = fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP));
        if gone {
            die_of(Signal::SIGPIPE);
        }
    });
}

/// The signals `run` takes itself: blocked in every thread (call before spawning any), and
/// taken one by one with [`wait`].
pub fn block_run_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGWINCH] {
        s.add(sig);
    }
    let _ = s.thread_block();
    s
}

/// Ends the process the way `sig` would have, once the terminal is restored (the rig ends
/// the run when the connection closes).
pub fn die_of(sig: Signal) -> ! {
    restore();
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK, Some(&SigSet::all()), None);
    // SAFETY: installing SIG_DFL is always sound.
    unsafe { libc::signal(sig as libc::c_int, libc::SIG_DFL) };
    let _ = nix::sys::signal::raise(sig);
    std::process::exit(128 + sig as i32)
}

/// Owns a descriptor a nix call just returned as an integer (nix 0.29 returns `RawFd`
/// from `open`, `openat2` and `dup`).
pub fn adopt_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller passes a descriptor it just received from the kernel and nothing
    // else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
