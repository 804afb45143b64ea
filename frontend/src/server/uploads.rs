//! Uploads (SPEC §3, §5): `UPLOAD <size> [exec_path] [--name NAME]`. The size, the quotas and the
//! rig's budgets are checked before a byte is stored, and reserved for the upload; a
//! refused upload's bytes are skipped. The bytes go into a memfd allocated up front,
//! written and hashed by the `uploads` thread while the loop receives; then a binary is
//! sealed, validated and handed to the broker, a bundle extracted by the `bundles` thread
//! first. The broker's `Loaded` completes it: the session exists.

use super::broker_link::{refusal_code, Owner};
use super::ctx::{Caller, Followup, Outcome, Shared, Waiter};
use super::model::{NewSession, Session};
use crate::hasher::Hasher;
use crate::worker::{Done, Job, Worker};
use mio::Token;
use proto::reply::{Elf, EventKind, Kind, Loaded, Script, State};
use proto::{Code, Error, UploadSize};
use serde_json::json;
use shared::{Reply, Request, SessionId};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use uuid::Uuid;

/// Sessions and bytes promised to uploads in progress.
#[derive(Debug, Default, Clone, Copy)]
struct Reserved {
    sessions: usize,
    bytes: u64,
}

/// An upload whose bytes are arriving or being hashed.
#[derive(Debug)]
struct InFlight {
    owner: Arc<str>,
    peer: String,
    memfd: File,
    size: u64,
    /// A bundle's executable path; `None` for a single binary.
    exec_path: Option<String>,
    /// The program's name.
    name: Option<String>,
    /// A PUT's bytes (for the files owner), not a new session.
    put: Option<PutTarget>,
    /// Who waits, once the last byte is in.
    to: Option<Waiter>,
}

/// Where a PUT's bytes go.
#[derive(Debug, Clone)]
pub struct PutTarget {
    /// The session.
    pub id: Uuid,
    /// Path beneath its `/tmp`.
    pub rel: String,
    /// A tar stream of a directory.
    pub tar: bool,
    /// Who sends it (for the audit log): address and identity.
    pub who: (String, Arc<str>),
}

/// An upload with the broker (or the bundle worker), waiting to become a session.
#[derive(Debug)]
struct Loading {
    to: Waiter,
    owner: Arc<str>,
    peer: String,
    /// Bytes reserved (a bundle's: extracted).
    size: u64,
    sha256: String,
    elf: Option<Elf>,
    script: Option<Script>,
    id: Uuid,
    exec_path: Option<String>,
    name: Option<String>,
}

/// The upload owner.
#[derive(Debug, Default)]
pub struct Uploads {
    hasher: Option<Hasher>,
    worker: Option<Worker>,
    reserved: Reserved,
    reserved_by: HashMap<Arc<str>, Reserved>,
    jobs: HashMap<u64, InFlight>,
    next_job: u64,
    /// Bundles with the worker, by ticket.
    extracting: HashMap<u64, Loading>,
    next_ticket: u64,
    /// Uploads with the broker, by tag.
    loading: HashMap<u64, Loading>,
    /// Connections that found no free upload buffer.
    starved: Vec<Token>,
}

/// The broker's id of a session.
pub fn session_id(id: &Uuid) -> SessionId {
    SessionId(*id.as_bytes())
}

impl Uploads {
    /// Starts the hashing thread and, with the bundle store, the bundle worker (after
    /// landlock, before seccomp: see `hasher` and `worker`).
    pub fn start_threads(&mut self, store: OwnedFd, waker: Arc<mio::Waker>) -> std::io::Result<()> {
        self.hasher = Some(Hasher::start(waker.clone())?);
        self.worker = Some(Worker::start(store, waker)?);
        Ok(())
    }

    /// `UPLOAD <size> [exec_path] [--name NAME]`.
    pub fn upload(
        &mut self,
        sh: &mut Shared,
        caller: &Caller,
        size: UploadSize,
        exec_path: Option<String>,
        name: Option<String>,
    ) -> Outcome {
        let cfg = &sh.cfg;
        let size = match size {
            UploadSize::Bytes(n) if n <= cfg.drain_limit || n <= cfg.max_upload => n,
            _ => {
                return Outcome::Fatal(Error::new(
                    Code::TooLarge,
                    format!(
                        "upload larger than {} bytes; closing the connection as its bytes cannot be skipped",
                        cfg.drain_limit.max(cfg.max_upload)
                    ),
                ))
            }
        };
        let Some(owner) = caller.identity.as_ref().map(|i| i.name.clone()) else { return Outcome::Nothing };
        if let Some(refusal) = self.refusal(sh, &owner, size, exec_path.as_deref()) {
            // Refused before storing a byte; the bytes are read and dropped.
            return Outcome::Drain { refusal, size };
        }
        // A binary's memfd is named after the program: /proc/<pid>/exe, gdb and (on newer
        // kernels) comm show it.
        let memfd_name = match (&exec_path, &name) {
            (None, Some(n)) => n.as_str(),
            _ => "debuglantern-upload",
        };
        let memfd = match crate::sys::memfd_for_upload(size, memfd_name) {
            Ok(f) => f,
            // Out of memory for it: refuse before storing a byte, skip the bytes.
            Err(e) => {
                return Outcome::Drain {
                    refusal: Error::limit(format!("the rig cannot hold {size} more bytes now: {e}")),
                    size,
                }
            }
        };
        let (true, Ok(thread_copy)) = (self.hasher.is_some(), memfd.try_clone()) else {
            return Outcome::Drain { refusal: Error::internal("cannot store the upload now"), size };
        };
        self.reserve(&owner, size);
        self.next_job += 1;
        let job = self.next_job;
        if let Some(h) = &self.hasher {
            h.begin(job, thread_copy);
        }
        self.jobs.insert(
            job,
            InFlight { owner, peer: caller.peer_str(), memfd, size, exec_path, name, put: None, to: None },
        );
        Outcome::Payload { job, size }
    }

    /// `PUT <id> <path> <size> [--tar]`: the bytes are received (and hashed) like an
    /// upload's, into a memfd reserved in the rig's budget, then handed to the files owner.
    /// A refusal before the bytes skips them.
    pub fn put(&mut self, sh: &mut Shared, caller: &Caller, size: UploadSize, target: PutTarget) -> Outcome {
        let cfg = &sh.cfg;
        let size = match size {
            UploadSize::Bytes(n) if n <= cfg.drain_limit || n <= cfg.max_upload => n,
            _ => {
                return Outcome::Fatal(Error::new(
                    Code::TooLarge,
                    format!(
                        "PUT larger than {} bytes; closing the connection as its bytes cannot be skipped",
                        cfg.drain_limit.max(cfg.max_upload)
                    ),
                ))
            }
        };
        let Some(owner) = caller.identity.as_ref().map(|i| i.name.clone()) else { return Outcome::Nothing };
        let refusal = match sh.sessions.visible(caller.identity.as_ref(), target.id) {
            Err(e) => Some(e),
            Ok(_) if size > cfg.max_upload => Some(Error::new(
                Code::TooLarge,
                format!("PUT of {size} bytes exceeds the limit of {} bytes", cfg.max_upload),
            )),
            Ok(s) => {
                let room = s.limits.tmp_bytes.saturating_sub(s.tmp.as_ref().map_or(0, |t| t.used_bytes));
                let in_use = sh.sessions.loaded_bytes + self.reserved.bytes;
                if size > room {
                    Some(Error::limit(format!(
                        "{size} bytes do not fit in the session's /tmp ({room} of its {} bytes free)",
                        s.limits.tmp_bytes
                    )))
                } else if in_use + size > cfg.max_total_size {
                    Some(Error::limit(format!(
                        "storing {size} more bytes would exceed the rig's total of {} bytes; DELETE sessions first",
                        cfg.max_total_size
                    )))
                } else {
                    None
                }
            }
        };
        if let Some(refusal) = refusal {
            return Outcome::Drain { refusal, size };
        }
        let memfd = match crate::sys::memfd_for_upload(size, "debuglantern-put") {
            Ok(f) => f,
            Err(e) => {
                return Outcome::Drain {
                    refusal: Error::limit(format!("the rig cannot hold {size} more bytes now: {e}")),
                    size,
                }
            }
        };
        let (true, Ok(thread_copy)) = (self.hasher.is_some(), memfd.try_clone()) else {
            return Outcome::Drain { refusal: Error::internal("cannot store the bytes now"), size };
        };
        self.reserve(&owner, size);
        self.reserved.sessions -= 1;
        if let Some(r) = self.reserved_by.get_mut(&owner) {
            r.sessions -= 1;
        }
        self.next_job += 1;
        let job = self.next_job;
        if let Some(h) = &self.hasher {
            h.begin(job, thread_copy);
        }
        let f = InFlight {
            owner,
            peer: caller.peer_str(),
            memfd,
            size,
            exec_path: None,
            name: None,
            put: Some(target),
            to: None,
        };
        self.jobs.insert(job, f);
        Outcome::Payload { job, size }
    }

    /// Why an upload of `size` bytes by `owner` is refused, if it is.
    fn refusal(&self, sh: &Shared, owner: &Arc<str>, size: u64, exec_path: Option<&str>) -> Option<Error> {
        let cfg = &sh.cfg;
        if let Some(p) = exec_path {
            match crate::bundle::clean_path(p.as_bytes(), cfg.max_bundle_depth) {
                Err(e) => return Some(Error::new(Code::InvalidBundle, format!("exec_path: {e}"))),
                Ok(parts) if parts.is_empty() => {
                    return Some(Error::new(Code::InvalidBundle, "exec_path names the bundle root, not a program"))
                }
                Ok(_) => {}
            }
        }
        if size > cfg.max_upload {
            return Some(Error::new(
                Code::TooLarge,
                format!("upload of {size} bytes exceeds the limit of {} bytes", cfg.max_upload),
            ));
        }
        let (max_sessions, max_bytes) = cfg.quota(owner);
        let r = self.reserved_by.get(owner).copied().unwrap_or_default();
        let (held, held_bytes) = sh.sessions.held_by(owner);
        let (sessions, bytes) = (held + r.sessions, held_bytes + r.bytes);
        if sessions >= max_sessions {
            return Some(Error::limit(format!(
                "{owner} holds {sessions} sessions, its quota on this rig is {max_sessions}; DELETE one first"
            )));
        }
        if bytes + size > max_bytes {
            return Some(Error::limit(format!(
                "{owner} holds {bytes} bytes; {size} more would exceed its quota of {max_bytes} bytes; DELETE sessions first"
            )));
        }
        if sh.sessions.len() + self.reserved.sessions >= cfg.max_sessions {
            return Some(Error::limit(format!(
                "the rig holds its maximum of {} sessions; DELETE one first",
                cfg.max_sessions
            )));
        }
        let in_use = sh.sessions.loaded_bytes + self.reserved.bytes;
        if in_use + size > cfg.max_total_size {
            return Some(Error::limit(format!(
                "storing {size} more bytes would exceed the rig's total of {} bytes ({in_use} in use); DELETE sessions first",
                cfg.max_total_size
            )));
        }
        None
    }

    fn reserve(&mut self, owner: &Arc<str>, size: u64) {
        self.reserved.sessions += 1;
        self.reserved.bytes += size;
        let r = self.reserved_by.entry(owner.clone()).or_default();
        r.sessions += 1;
        r.bytes += size;
    }

    fn release(&mut self, owner: &Arc<str>, size: u64) {
        self.release_counted(owner, size, 1);
    }

    /// Gives back `size` bytes and `sessions` sessions reserved by `owner` (a PUT holds
    /// bytes only).
    fn release_counted(&mut self, owner: &Arc<str>, size: u64, sessions: usize) {
        self.reserved.sessions -= sessions;
        self.reserved.bytes -= size;
        if let Some(r) = self.reserved_by.get_mut(owner) {
            r.sessions -= sessions;
            r.bytes -= size;
            if r.sessions == 0 && r.bytes == 0 {
                self.reserved_by.remove(owner);
            }
        }
    }

    /// A buffer to read payload bytes into, if one is free; otherwise `conn` is driven
    /// again when one comes back.
    pub fn buffer(&mut self, conn: Token) -> Option<Vec<u8>> {
        let b = self.hasher.as_mut().and_then(Hasher::buffer);
        if b.is_none() && !self.starved.contains(&conn) {
            self.starved.push(conn);
        }
        b
    }

    /// Payload bytes of `job` (a buffer from [`Uploads::buffer`], or bytes already read).
    pub fn chunk(&mut self, job: u64, data: Vec<u8>) {
        if let Some(h) = self.hasher.as_mut() {
            if data.is_empty() {
                h.give_back_if_pooled(data);
            } else {
                h.chunk(job, data);
            }
        }
    }

    /// The client went away mid-upload: nothing of it stays.
    pub fn abort(&mut self, job: u64) {
        if let Some(j) = self.jobs.remove(&job) {
            if let Some(h) = &self.hasher {
                h.abort(job);
            }
            self.release_counted(&j.owner, j.size, usize::from(j.put.is_none()));
        }
    }

    /// The last byte of `job` is in: wait for the thread to have stored and hashed it all.
    pub fn payload_end(&mut self, to: Waiter, job: u64) -> Outcome {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.to = Some(to);
            if let Some(h) = &self.hasher {
                h.end(job);
            }
        }
        Outcome::Park
    }

    /// Connections that waited for a free buffer.
    pub fn take_starved(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.starved)
    }

    /// The worker, for the files owner's copies.
    pub fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// The helper threads finished something; returns the worker's results that are not
    /// this owner's (GET and PUT copies).
    pub fn on_wake(&mut self, sh: &mut Shared) -> Vec<Done> {
        let done = self.hasher.as_mut().map(Hasher::results).unwrap_or_default();
        for (job, result) in done {
            let Some(j) = self.jobs.remove(&job) else { continue };
            // A client that left after its last byte still gets its session; only its
            // answer is lost.
            let to = j.to.unwrap_or(Waiter { conn: Token(usize::MAX), wait: 0 });
            if let Some(target) = j.put.clone() {
                self.release_counted(&j.owner, j.size, 0);
                match result {
                    Ok(sha256) => sh.follow_up(Followup::Put { to, target, data: j.memfd, size: j.size, sha256 }),
                    Err(e) => sh.answer(to, Outcome::Refuse(Error::internal(format!("cannot store the bytes: {e}")))),
                }
                continue;
            }
            match result {
                Ok(sha256) => self.stored(sh, to, j, sha256),
                Err(e) => {
                    self.release(&j.owner, j.size);
                    let e = Error::internal(format!("cannot store the upload on the rig: {e}"));
                    log::error!("{}", e.message);
                    sh.answer(to, Outcome::Refuse(e));
                }
            }
        }
        let results: Vec<Done> = self.worker.as_ref().map(|w| w.results().collect()).unwrap_or_default();
        let mut others = Vec::new();
        for d in results {
            let Done::Extracted { ticket, result } = d else {
                others.push(d);
                continue;
            };
            let Some(mut x) = self.extracting.remove(&ticket) else { continue };
            match result {
                Err(why) => {
                    self.release(&x.owner, x.size);
                    let e = match why {
                        crate::bundle::BundleError::Refused(why) => Error::new(Code::InvalidBundle, why),
                        io => Error::internal(format!("cannot store the bundle: {}", shared::chain(&io))),
                    };
                    sh.answer(x.to, Outcome::Refuse(e));
                }
                Ok(b) => {
                    // The reservation now holds the extracted bytes instead of the archive.
                    self.reserved.bytes = self.reserved.bytes - x.size + b.bytes;
                    if let Some(r) = self.reserved_by.get_mut(&x.owner) {
                        r.bytes = r.bytes - x.size + b.bytes;
                    }
                    x.size = b.bytes;
                    match b.program {
                        crate::bundle::Program::Elf(e) => x.elf = Some(e.into()),
                        crate::bundle::Program::Script { interpreter, arg } => {
                            x.script = Some(Script { interpreter, arg })
                        }
                    }
                    let exec = x.exec_path.clone().unwrap_or_default().into_bytes();
                    match sh.broker.send(Owner::Uploads, Request::LoadBundle { id: session_id(&x.id), exec_path: exec })
                    {
                        Ok(tag) => {
                            self.loading.insert(tag, x);
                        }
                        Err(e) => {
                            self.release(&x.owner, x.size);
                            self.remove_bundle(x.id);
                            sh.answer(x.to, Outcome::Refuse(e));
                        }
                    }
                }
            }
        }
        others
    }

    /// Every byte of an upload is stored and hashed: a bundle goes to the worker, a binary
    /// is sealed, validated and handed to the broker.
    fn stored(&mut self, sh: &mut Shared, to: Waiter, j: InFlight, sha256: String) {
        let InFlight { owner, peer, memfd, size, exec_path, name, .. } = j;
        let id = Uuid::new_v4();
        if let Some(exec) = exec_path {
            let Some(worker) = &self.worker else {
                self.release(&owner, size);
                return sh.answer(to, Outcome::Refuse(Error::internal("the bundle worker is not running")));
            };
            // Everything the budget has left, counting this upload's own reservation.
            let free = sh.cfg.max_total_size.saturating_sub(sh.sessions.loaded_bytes + self.reserved.bytes - size);
            let limits = crate::bundle::Limits {
                max_entries: sh.cfg.max_bundle_entries,
                max_bytes: free,
                max_depth: sh.cfg.max_bundle_depth,
            };
            self.next_ticket += 1;
            let ticket = self.next_ticket;
            worker.submit(Job::Extract {
                ticket,
                archive: memfd,
                dir: session_id(&id).dir_name(),
                exec_path: exec.clone(),
                limits,
            });
            let l = Loading { to, owner, peer, size, sha256, elf: None, script: None, id, exec_path: Some(exec), name };
            self.extracting.insert(ticket, l);
            return;
        }
        if let Err(e) = crate::sys::seal(&memfd) {
            self.release(&owner, size);
            return sh.answer(to, Outcome::Refuse(Error::internal(format!("cannot seal the upload: {e}"))));
        }
        let elf = match crate::elf::validate(&memfd) {
            Ok(i) => i.into(),
            Err(why) => {
                self.release(&owner, size);
                return sh.answer(to, Outcome::Refuse(Error::new(Code::InvalidElf, shared::chain(&why))));
            }
        };
        match sh.broker.send(Owner::Uploads, Request::Load { id: session_id(&id), memfd: memfd.into() }) {
            Ok(tag) => {
                let l =
                    Loading { to, owner, peer, size, sha256, elf: Some(elf), script: None, id, exec_path: None, name };
                self.loading.insert(tag, l);
            }
            Err(e) => {
                self.release(&owner, size);
                sh.answer(to, Outcome::Refuse(e));
            }
        }
    }

    /// The broker's answer to a `Load` or `LoadBundle`.
    pub fn on_reply(&mut self, sh: &mut Shared, tag: u64, reply: Reply) {
        let Some(l) = self.loading.remove(&tag) else { return };
        self.release(&l.owner, l.size);
        match reply {
            Reply::Loaded { .. } => {
                let kind = if l.exec_path.is_some() { Kind::Bundle } else { Kind::Binary };
                let kind_name = if l.exec_path.is_some() { "bundle" } else { "binary" };
                sh.audit.log(
                    "upload",
                    json!({"peer": l.peer, "identity": &*l.owner, "id": l.id.to_string(), "kind": kind_name, "size": l.size, "sha256": l.sha256}),
                );
                let reply = Loaded {
                    ok: proto::True,
                    id: l.id,
                    state: State::Loaded,
                    kind,
                    size: l.size,
                    sha256: l.sha256.clone(),
                    elf: l.elf.clone(),
                    script: l.script.clone(),
                    name: l.name.clone(),
                };
                let new = NewSession {
                    id: l.id,
                    owner: l.owner,
                    kind,
                    exec_path: l.exec_path,
                    size: l.size,
                    sha256: l.sha256.clone(),
                    elf: l.elf,
                    script: l.script,
                    name: l.name,
                };
                let session = Session::loaded(new, sh.cfg.limits, sh.cfg.log_buffer);
                sh.sessions.insert(session);
                sh.answer(l.to, Outcome::reply(&reply));
                sh.emit(l.id, EventKind::Uploaded { kind, size: l.size, sha256: l.sha256 });
            }
            Reply::Refused { refusal, message } => {
                if l.exec_path.is_some() {
                    self.remove_bundle(l.id);
                }
                let e = Error::new(refusal_code(refusal), format!("the broker refused the upload: {message}"));
                sh.answer(l.to, Outcome::Refuse(e));
            }
            other => {
                log::error!("unexpected broker reply {other:?} to a load");
                sh.answer(l.to, Outcome::Refuse(Error::internal("unexpected answer from the broker")));
            }
        }
    }

    /// Removes a bundle's files from the store (on the worker).
    pub fn remove_bundle(&self, id: Uuid) {
        if let Some(w) = &self.worker {
            w.submit(Job::Remove { dir: session_id(&id).dir_name() });
        }
    }
}
