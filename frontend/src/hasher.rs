//! The upload pipeline's second stage: a thread that writes upload bytes into their memfd
//! and hashes them (SHA-256), while the event loop goes on receiving. Hashing is the
//! slowest step of an upload (about 1.3 GB/s here, against 3.5 GB/s for loopback TCP);
//! done inline it both slowed uploads and held every other client back while it ran.
//!
//! Buffers circulate: the loop takes an empty one from [`Hasher::buffer`], fills it from
//! the socket, and sends it with [`Hasher::chunk`]; the thread gives it back once written
//! and hashed. With every buffer in flight, the loop stops reading that connection until
//! one comes back (it is told through the `mio::Waker`), which bounds the memory an upload
//! can hold. Chunks of one upload are handled in order; [`Hasher::end`] yields the digest.
//!
//! Like the bundle worker, the thread starts after landlock and before seccomp, and only
//! writes to memfds it is given.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// Size of one buffer.
pub const BUF_SIZE: usize = 256 * 1024;
/// Buffers in circulation (all uploads together).
const BUFFERS: usize = 16;

enum Msg {
    Begin { job: u64, memfd: File },
    Chunk { job: u64, buf: Vec<u8> },
    End { job: u64 },
    Abort { job: u64 },
}

/// What the thread finished.
#[derive(Debug)]
pub enum Done {
    /// Every byte of an upload is in its memfd: its digest (hex), or why it could not be
    /// stored.
    Hashed {
        /// The upload.
        job: u64,
        /// SHA-256 (hex) of its bytes, or the write error.
        result: Result<String, std::io::Error>,
    },
    /// A buffer is free again.
    Buffer(Vec<u8>),
}

/// The event loop's handle.
#[derive(Debug)]
pub struct Hasher {
    tx: Sender<Msg>,
    done: Receiver<Done>,
    free: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Hasher {
    /// Starts the thread and returns once it runs (see `worker::Worker::start`).
    pub fn start(waker: Arc<mio::Waker>) -> std::io::Result<Hasher> {
        let (tx, rx) = channel::<Msg>();
        let (done_tx, done) = channel::<Done>();
        let (up_tx, up) = channel::<()>();
        std::thread::Builder::new().name("uploads".into()).spawn(move || {
            let _ = up_tx.send(());
            run(rx, done_tx, waker);
        })?;
        up.recv().map_err(|_| std::io::Error::other("the upload thread died at start"))?;
        let free = (0..BUFFERS).map(|_| vec![0u8; BUF_SIZE]).collect();
        Ok(Hasher { tx, done, free })
    }

    /// A new upload into `memfd` (the thread keeps its own descriptor until the end).
    pub fn begin(&self, job: u64, memfd: File) {
        let _ = self.tx.send(Msg::Begin { job, memfd });
    }

    /// An empty buffer of [`BUF_SIZE`] bytes, if one is free.
    pub fn buffer(&mut self) -> Option<Vec<u8>> {
        self.free.pop()
    }

    /// A buffer from [`Hasher::buffer`] that was not needed after all.
    pub fn give_back(&mut self, buf: Vec<u8>) {
        self.pool(buf);
    }

    /// Keeps a buffer for the pool if it is one of its size and the pool lacks one.
    pub fn give_back_if_pooled(&mut self, buf: Vec<u8>) {
        if buf.capacity() >= BUF_SIZE {
            self.pool(buf);
        }
    }

    fn pool(&mut self, mut buf: Vec<u8>) {
        // Bytes that came from a connection's own buffer join the pool only to fill it.
        if self.free.len() < BUFFERS {
            buf.resize(BUF_SIZE, 0);
            self.free.push(buf);
        }
    }

    /// The next bytes of an upload (the buffer's length is what counts).
    pub fn chunk(&self, job: u64, buf: Vec<u8>) {
        let _ = self.tx.send(Msg::Chunk { job, buf });
    }

    /// Every byte was sent: the digest comes back as [`Done::Hashed`].
    pub fn end(&self, job: u64) {
        let _ = self.tx.send(Msg::End { job });
    }

    /// The upload is abandoned: its state is dropped, no answer comes.
    pub fn abort(&self, job: u64) {
        let _ = self.tx.send(Msg::Abort { job });
    }

    /// Finished uploads, ready now. Returned buffers go back to the pool on the way.
    pub fn results(&mut self) -> Vec<(u64, Result<String, std::io::Error>)> {
        let mut out = Vec::new();
        let ready: Vec<Done> = self.done.try_iter().collect();
        for d in ready {
            match d {
                Done::Buffer(b) => self.pool(b),
                Done::Hashed { job, result } => out.push((job, result)),
            }
        }
        out
    }
}

struct Job {
    memfd: File,
    hasher: Sha256,
    /// The first write error; the rest of the bytes are only counted.
    failed: Option<std::io::Error>,
}

fn run(rx: Receiver<Msg>, tx: Sender<Done>, waker: Arc<mio::Waker>) {
    let mut jobs: HashMap<u64, Job> = HashMap::new();
    for msg in rx {
        let done = match msg {
            Msg::Begin { job, memfd } => {
                jobs.insert(job, Job { memfd, hasher: Sha256::new(), failed: None });
                continue;
            }
            Msg::Chunk { job, buf } => {
                if let Some(j) = jobs.get_mut(&job) {
                    if j.failed.is_none() {
                        j.hasher.update(&buf);
                        if let Err(e) = j.memfd.write_all(&buf) {
                            j.failed = Some(e);
                        }
                    }
                }
                Done::Buffer(buf)
            }
            Msg::End { job } => {
                let Some(j) = jobs.remove(&job) else { continue };
                let result = match j.failed {
                    Some(e) => Err(e),
                    None => Ok(hex::encode(j.hasher.finalize())),
                };
                Done::Hashed { job, result }
            }
            Msg::Abort { job } => {
                jobs.remove(&job);
                continue;
            }
        };
        if tx.send(done).is_err() {
            return;
        }
        let _ = waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_land_in_the_memfd_and_the_digest_matches() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let mut h = Hasher::start(waker).unwrap();
        let path = std::env::temp_dir().join(format!("dl-hasher-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        h.begin(1, file.try_clone().unwrap());
        h.begin(2, File::create(path.with_extension("other")).unwrap());
        let data: Vec<u8> = (0..3 * BUF_SIZE + 17).map(|i| (i * 7 % 251) as u8).collect();
        let mut sent = 0;
        let mut bufs = 0;
        while sent < data.len() {
            let Some(mut b) = h.buffer() else {
                h.results();
                continue;
            };
            let n = (data.len() - sent).min(BUF_SIZE);
            b[..n].copy_from_slice(&data[sent..sent + n]);
            b.truncate(n);
            h.chunk(1, b);
            sent += n;
            bufs += 1;
        }
        h.abort(2);
        h.end(1);
        let result = loop {
            if let Some((job, r)) = h.results().into_iter().next() {
                assert_eq!(job, 1);
                break r.unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(bufs, 4);
        assert_eq!(result, hex::encode(Sha256::digest(&data)));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Every buffer comes home.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while h.free.len() < BUFFERS && std::time::Instant::now() < end {
            h.results();
        }
        assert_eq!(h.free.len(), BUFFERS);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("other"));
    }
}
