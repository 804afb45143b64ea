//! The frontend's raw system calls, each behind a safe function.
#![allow(unsafe_code)]

use nix::errno::Errno;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

/// A new memfd for an upload of `size` bytes, named `name` (the program's name: the
/// kernel shows it in `/proc/<pid>/exe` and, since 6.14, in `comm`): close-on-exec,
/// sealable, and explicitly executable (the broker `fexecve`s it; newer kernels warn when
/// neither MFD_EXEC nor MFD_NOEXEC_SEAL is given). Its memory is allocated up front, so a
/// rig short of memory refuses the upload before any byte arrives (and the writes are
/// faster).
pub fn memfd_for_upload(size: u64, name: &str) -> Result<File, Errno> {
    const MFD_EXEC: libc::c_uint = 0x10;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: valid NUL-terminated name and flags.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_EXEC) };
    if fd < 0 && Errno::last() == Errno::EINVAL {
        // Kernels before 6.3 do not know MFD_EXEC; their memfds are executable anyway.
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: memfd_create returned a new descriptor we now own.
    let file = unsafe { File::from_raw_fd(fd) };
    if size > 0 {
        let len = i64::try_from(size).map_err(|_| Errno::EFBIG)?;
        nix::fcntl::fallocate(file.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, len)?;
    }
    Ok(file)
}

/// Seals a memfd against every change: what the broker runs is what we validated.
pub fn seal(f: &File) -> Result<(), Errno> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let seals = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(f.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).map(drop)
}

/// Raises the soft open-file limit to the hard one (1000 idle clients need fds).
pub fn raise_nofile() {
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Sets the size of the terminal whose master is `fd` (the kernel then sends SIGWINCH to
/// its foreground process group).
pub fn set_winsize(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), Errno> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const libc::winsize) }).map(drop)
}
