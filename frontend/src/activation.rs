//! Ways the daemon gets its clients besides binding `--listen` itself: listening sockets
//! passed by systemd (or any activator speaking the `LISTEN_FDS` protocol), and one client
//! on stdin/stdout (`--stdio`, inetd style).
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// Why the sockets passed by systemd were refused.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// Not acceptable: the reason, for the operator.
    #[error("{0}")]
    Invalid(String),
    /// Something it needed failed.
    #[error("{what}")]
    Because {
        /// What was being done.
        what: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn invalid(why: impl Into<String>) -> ActivationError {
    ActivationError::Invalid(why.into())
}

fn because<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> ActivationError {
    let what = what.into();
    move |e| ActivationError::Because { what, source: e.into() }
}

/// First descriptor of the `LISTEN_FDS` protocol.
const SD_LISTEN_FDS_START: RawFd = 3;
/// More than this many passed sockets is taken as a mistake.
const MAX_PASSED: usize = 64;

/// The listening TCP sockets systemd passed, if it passed any to this process. Must run
/// first in `main`, before anything else opens a descriptor. The variables are removed
/// (nothing we start inherits them) and the sockets made close-on-exec.
pub fn listen_fds() -> Result<Option<Vec<TcpListener>>, ActivationError> {
    let (Ok(pid), Ok(n)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (e.g. our parent): not ours to take.
        return Ok(None);
    }
    let n: usize = n.trim().parse().map_err(|_| invalid(format!("LISTEN_FDS={n:?} is not a number")))?;
    if n == 0 || n > MAX_PASSED {
        return Err(invalid(format!("LISTEN_FDS={n}: want 1 to {MAX_PASSED} listening sockets")));
    }
    let mut out = Vec::with_capacity(n);
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + n as RawFd {
        // SAFETY: the activator passed fds 3..3+n open to us (checked by fstat inside
        // `check_listener` before anything relies on it); nothing else in this process
        // knows of them, as this runs first in main, so each is owned exactly once.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        check_listener(borrowed).map_err(because(format!("passed descriptor {fd}")))?;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(because(format!("passed descriptor {fd}")))?;
        // SAFETY: see above; `fd` is an open, listening TCP socket owned by nobody else.
        out.push(unsafe { TcpListener::from_raw_fd(fd) });
    }
    Ok(Some(out))
}

fn check_listener(fd: BorrowedFd<'_>) -> Result<(), ActivationError> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(because("not open"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(invalid("not a socket"));
    }
    if getsockopt(&fd, sockopt::SockType).map_err(because("SO_TYPE"))? != SockType::Stream {
        return Err(invalid("not a stream socket (use ListenStream=)"));
    }
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(because("getsockname"))?;
    if !matches!(addr.family(), Some(AddressFamily::Inet | AddressFamily::Inet6)) {
        return Err(invalid("not a TCP socket (ListenStream= must be an address:port)"));
    }
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(because("SO_ACCEPTCONN"))? {
        return Err(invalid(
            "a connected socket, not a listening one: use Accept=no in the socket unit \
             (or, for one daemon per connection, --stdio with StandardInput=socket)",
        ));
    }
    Ok(())
}

/// `--stdio`: a socketpair whose one end the server treats as its only client, while two
/// threads copy stdin into the other end and the other end to stdout. Stdin and stdout
/// may be pipes, a terminal or a socket (inetd, systemd `StandardInput=socket`). When
/// stdin ends, the client's end sees EOF; when the server closes its end, stdout is closed.
#[derive(Debug)]
pub struct StdioBridge {
    theirs: UnixStream,
    stdin: std::fs::File,
    stdout: std::fs::File,
}

impl StdioBridge {
    /// Takes stdin and stdout over (0 and 1 then point at /dev/null: nothing else may read
    /// the client's bytes or write into its stream) and returns the server's end.
    pub fn prepare() -> std::io::Result<(UnixStream, StdioBridge)> {
        let (ours, theirs) = UnixStream::pair()?;
        let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
        let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
        nix::unistd::dup2(null.as_raw_fd(), 0)?;
        nix::unistd::dup2(null.as_raw_fd(), 1)?;
        Ok((ours, StdioBridge { theirs, stdin, stdout }))
    }

    /// Starts the two copying threads. They only read, write, shut down and close
    /// descriptors they already hold, so they live within the frontend's confinement
    /// (start them after landlock, before seccomp, like the worker).
    pub fn start(self) -> std::io::Result<()> {
        let StdioBridge { theirs, stdin, stdout } = self;
        let mut to_server = theirs.try_clone()?;
        let mut from_server = theirs;
        // Each thread says when it runs: a thread still starting when the seccomp filter
        // lands would have its libc set-up calls (rseq, robust lists) refused.
        let (up, running) = std::sync::mpsc::channel::<()>();
        let up2 = up.clone();
        std::thread::Builder::new().name("stdin".into()).spawn(move || {
            let _ = up.send(());
            copy(stdin, &mut to_server);
            let _ = to_server.shutdown(std::net::Shutdown::Write);
        })?;
        std::thread::Builder::new().name("stdout".into()).spawn(move || {
            let _ = up2.send(());
            let mut out = stdout;
            copy(&mut from_server, &mut out);
            drop(out);
            let _ = from_server.shutdown(std::net::Shutdown::Both);
        })?;
        for _ in 0..2 {
            running.recv().map_err(|_| std::io::Error::other("a stdio thread died at start"))?;
        }
        Ok(())
    }
}

/// Copies until EOF or an error with plain read/write (no splice or sendfile: the seccomp
/// filter does not allow them).
fn copy(mut from: impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
