//! The frontend's one worker thread: extracting bundles and removing them, and the
//! copies of GET and PUT ([`crate::copy`]) take time proportional to the bytes, so they
//! happen here and the event loop stays responsive. The worker touches nothing but the
//! bundle store (through its directory descriptor), the memfds and the files helpers'
//! sockets it is given; results come back through a channel and a `mio::Waker`.
//!
//! It is started after landlock is applied (it inherits the ruleset) and before the
//! seccomp filter, which is installed on every thread at once.

use crate::bundle::{self, BundleError, Extracted, Limits};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// Work for the worker.
#[derive(Debug)]
pub enum Job {
    /// Extract a `.tar.gz` (in a memfd) into a new directory `dir` of the store.
    Extract {
        /// Correlates the answer.
        ticket: u64,
        /// The archive.
        archive: File,
        /// New directory in the store.
        dir: String,
        /// The executable, relative to the bundle root.
        exec_path: String,
        /// Bounds.
        limits: Limits,
    },
    /// Remove directory `dir` of the store and everything in it.
    Remove {
        /// The directory.
        dir: String,
    },
    /// GET through a files helper.
    Get {
        /// Correlates the answer.
        ticket: u64,
        /// The helper's socket.
        helper: OwnedFd,
        /// Which directory.
        root: shared::files::Root,
        /// Path beneath it.
        rel: String,
        /// Most bytes the copy may hold.
        limit: u64,
    },
    /// PUT through a files helper.
    Put {
        /// Correlates the answer.
        ticket: u64,
        /// The helper's socket.
        helper: OwnedFd,
        /// Path beneath `/tmp`.
        rel: String,
        /// The bytes (a memfd).
        data: File,
        /// How many.
        size: u64,
        /// A tar stream to extract.
        tar: bool,
    },
}

/// What the worker did.
#[derive(Debug)]
pub enum Done {
    /// An extraction ended (on error, nothing of it is left in the store).
    Extracted {
        /// The job's ticket.
        ticket: u64,
        /// The bundle, or why it was refused.
        result: Result<Extracted, BundleError>,
    },
    /// A GET's copy is ready.
    Got {
        /// The job's ticket.
        ticket: u64,
        /// The bytes to send, or why not.
        result: Result<crate::copy::Got, crate::copy::CopyError>,
    },
    /// A PUT is done.
    Put {
        /// The job's ticket.
        ticket: u64,
        /// What was written, or why not.
        result: Result<crate::copy::Put, crate::copy::CopyError>,
    },
}

/// The event loop's handle on the worker.
#[derive(Debug)]
pub struct Worker {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

impl Worker {
    /// Starts the thread, and returns once it runs: the C library registers a new thread
    /// (`rseq`, robust lists...) on the thread itself, and that must be over before the
    /// seccomp filter, which does not allow those calls, is installed.
    pub fn start(store: OwnedFd, waker: Arc<mio::Waker>) -> std::io::Result<Worker> {
        let (jobs, rx) = channel::<Job>();
        let (tx, done) = channel::<Done>();
        let (up_tx, up) = channel::<()>();
        std::thread::Builder::new().name("bundles".into()).spawn(move || {
            let _ = up_tx.send(());
            for job in rx {
                match job {
                    Job::Extract { ticket, archive, dir, exec_path, limits } => {
                        let result = extract(&store, archive, &dir, &exec_path, limits);
                        if result.is_err() {
                            if let Err(e) = bundle::remove_tree(store.as_fd(), &dir) {
                                log::error!("cleaning up refused bundle {dir}: {}", shared::chain(&e));
                            }
                        }
                        if tx.send(Done::Extracted { ticket, result }).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                    Job::Remove { dir } => {
                        if let Err(e) = bundle::remove_tree(store.as_fd(), &dir) {
                            log::error!("removing bundle {dir}: {}", shared::chain(&e));
                        }
                    }
                    Job::Get { ticket, helper, root, rel, limit } => {
                        let result = crate::copy::Helper::new(helper)
                            .and_then(|mut h| crate::copy::get(&mut h, root, &rel, limit));
                        if tx.send(Done::Got { ticket, result }).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                    Job::Put { ticket, helper, rel, data, size, tar } => {
                        let result = crate::copy::Helper::new(helper)
                            .and_then(|mut h| crate::copy::put(&mut h, &rel, data, size, tar, ticket));
                        if tx.send(Done::Put { ticket, result }).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                }
            }
        })?;
        up.recv().map_err(|_| std::io::Error::other("the bundle worker died at start"))?;
        Ok(Worker { jobs, done })
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) {
        // The worker only stops when this handle is dropped.
        let _ = self.jobs.send(job);
    }

    /// Results ready now.
    pub fn results(&self) -> impl Iterator<Item = Done> + '_ {
        self.done.try_iter()
    }
}

fn extract(
    store: &OwnedFd,
    mut archive: File,
    dir: &str,
    exec_path: &str,
    limits: Limits,
) -> Result<Extracted, BundleError> {
    archive.seek(SeekFrom::Start(0)).map_err(bundle::io("rewind the upload"))?;
    nix::sys::stat::mkdirat(Some(store.as_raw_fd()), dir, nix::sys::stat::Mode::from_bits_truncate(0o755))
        .map_err(bundle::io("create the bundle directory"))?;
    let root = nix::fcntl::openat(
        Some(store.as_raw_fd()),
        dir,
        nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .and_then(shared::os::adopt_fd)
    .map_err(bundle::io("open the bundle directory"))?;
    bundle::extract(std::io::BufReader::with_capacity(1 << 20, archive), root.as_fd(), exec_path, limits)
}
