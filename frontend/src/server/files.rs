//! `GET` and `PUT` (issue 17): copies out of and into a session's files. Each asks the
//! broker for a files helper (as the session, beneath its `/tmp` or bundle), hands it to
//! the worker thread with the job ([`crate::copy`]), and answers when the worker is done:
//! GET with its reply line and exactly the announced bytes, PUT with what was written. A
//! PUT's bytes were received first, like an upload's (size checked before a byte is
//! stored, refused bytes skipped), by the uploads owner.

use super::broker_link::{refusal_code, Owner};
use super::ctx::{Caller, Outcome, Shared, Waiter};
use super::uploads::{session_id, PutTarget};
use crate::copy::CopyError;
use crate::worker::{Done, Job, Worker};
use proto::reply::{Got, Put};
use proto::{Error, RemotePath, RemoteRoot};
use serde_json::json;
use shared::{Reply, Request};
use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug)]
enum Op {
    Get { path: RemotePath },
    Put { target: PutTarget, data: File, size: u64, sha256: String },
}

#[derive(Debug)]
struct Pending {
    to: Waiter,
    id: Uuid,
    /// For the audit log.
    who: (String, Arc<str>),
    op: Op,
}

/// The files owner.
#[derive(Debug, Default)]
pub struct Files {
    /// Waiting for a helper, by broker tag.
    helpers: HashMap<u64, Pending>,
    /// With the worker, by ticket.
    jobs: HashMap<u64, Pending>,
    next_ticket: u64,
}

fn copy_error(e: CopyError) -> Error {
    match e {
        CopyError::NotFound(m) => Error::not_found(m),
        CopyError::Refused(m) => Error::bad(m),
        CopyError::Full(m) => Error::limit(m),
        CopyError::Failed(m) => Error::internal(m),
    }
}

impl Files {
    fn ask_helper(&mut self, sh: &mut Shared, p: Pending) -> Outcome {
        let tmp_bytes = sh.sessions.get(&p.id).map_or(0, |s| s.limits.tmp_bytes);
        match sh.broker.send(Owner::Files, Request::Files { id: session_id(&p.id), tmp_bytes }) {
            Ok(tag) => {
                self.helpers.insert(tag, p);
                Outcome::Park
            }
            Err(e) => Outcome::Refuse(e),
        }
    }

    /// `GET <id> <path>`.
    pub fn get(&mut self, sh: &mut Shared, caller: &Caller, id: Uuid, path: &str) -> Outcome {
        let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
            Ok(s) => s,
            Err(e) => return Outcome::Refuse(e),
        };
        let path = match RemotePath::parse(path) {
            Ok(p) => p,
            Err(e) => return Outcome::Refuse(e),
        };
        if path.root == RemoteRoot::Bundle && s.exec_path.is_none() {
            return Outcome::Refuse(Error::not_found("this session runs a single binary: it has no /bundle"));
        }
        let who = (caller.peer_str(), caller.name());
        self.ask_helper(sh, Pending { to: caller.waiter, id, who, op: Op::Get { path } })
    }

    /// A PUT's bytes are in (the uploads owner received them).
    pub fn put_stored(
        &mut self,
        sh: &mut Shared,
        to: Waiter,
        target: PutTarget,
        data: File,
        size: u64,
        sha256: String,
    ) {
        let id = target.id;
        if sh.sessions.get(&id).is_none_or(|s| s.deleting) {
            return sh.answer(to, Outcome::Refuse(Error::not_found(format!("no session {id}"))));
        }
        let who = target.who.clone();
        let p = Pending { to, id, who, op: Op::Put { target, data, size, sha256 } };
        if let Outcome::Refuse(e) = self.ask_helper(sh, p) {
            sh.answer(to, Outcome::Refuse(e));
        }
    }

    /// The broker's answer: a helper (hand the job to the worker) or a refusal.
    pub fn on_reply(&mut self, sh: &mut Shared, worker: Option<&Worker>, tag: u64, reply: Reply) {
        let Some(p) = self.helpers.remove(&tag) else { return };
        let sock = match reply {
            Reply::Files { sock, .. } => sock,
            Reply::Refused { refusal, message } => {
                return sh.answer(p.to, Outcome::Refuse(Error::new(refusal_code(refusal), message)));
            }
            other => {
                log::error!("unexpected broker reply {other:?} to a files helper");
                return sh.answer(p.to, Outcome::Refuse(Error::internal("unexpected answer from the broker")));
            }
        };
        let Some(worker) = worker else {
            return sh.answer(p.to, Outcome::Refuse(Error::internal("the worker is not running")));
        };
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let job = match &p.op {
            Op::Get { path } => Job::Get {
                ticket,
                helper: sock,
                root: root_of(path.root),
                rel: path.rel.clone(),
                limit: sh.cfg.max_upload,
            },
            Op::Put { target, data, size, .. } => match data.try_clone() {
                Ok(data) => {
                    Job::Put { ticket, helper: sock, rel: target.rel.clone(), data, size: *size, tar: target.tar }
                }
                Err(e) => return sh.answer(p.to, Outcome::Refuse(Error::internal(format!("dup: {e}")))),
            },
        };
        worker.submit(job);
        self.jobs.insert(ticket, p);
    }

    /// The worker finished a copy.
    pub fn on_done(&mut self, sh: &mut Shared, done: Done) {
        match done {
            Done::Got { ticket, result } => {
                let Some(p) = self.jobs.remove(&ticket) else { return };
                let Op::Get { path } = p.op else { return };
                match result {
                    Ok(g) => {
                        audit(sh, &p.who, p.id, "out", &path.shown(), g.size);
                        let reply = Got {
                            ok: proto::True,
                            id: p.id,
                            path: path.shown(),
                            kind: g.kind.to_string(),
                            size: g.size,
                            skipped: g.skipped,
                        };
                        sh.answer(p.to, Outcome::Send { reply: proto::line(&reply), data: g.data, size: g.size });
                    }
                    Err(e) => sh.answer(p.to, Outcome::Refuse(copy_error(e))),
                }
            }
            Done::Put { ticket, result } => {
                let Some(p) = self.jobs.remove(&ticket) else { return };
                let Op::Put { target, sha256, .. } = p.op else { return };
                let shown = RemotePath { root: RemoteRoot::Tmp, rel: target.rel.clone() }.shown();
                match result {
                    Ok(w) => {
                        audit(sh, &p.who, p.id, "in", &shown, w.bytes);
                        // What the session's /tmp holds now: its tmpfs's count after the
                        // rename (a replaced file no longer counts), else that much more
                        // (exact again at the next end of a run).
                        let used = sh.sessions.get_mut(&p.id).map(|s| {
                            let size = s.limits.tmp_bytes;
                            let t = s
                                .tmp
                                .get_or_insert_with(|| shared::TmpUsage { size_bytes: size, ..Default::default() });
                            t.used_bytes = w.tmp_used.unwrap_or(t.used_bytes + w.bytes);
                            t.used_bytes
                        });
                        if let Some(used) = used {
                            sh.sessions.set_tmp_held(&p.id, used);
                        }
                        let reply = Put {
                            ok: proto::True,
                            id: p.id,
                            path: shown,
                            bytes: w.bytes,
                            files: w.files,
                            sha256,
                            skipped: w.skipped,
                        };
                        sh.answer(p.to, Outcome::reply(&reply));
                    }
                    Err(e) => sh.answer(p.to, Outcome::Refuse(copy_error(e))),
                }
            }
            Done::Extracted { .. } => {}
        }
    }
}

fn root_of(r: RemoteRoot) -> shared::files::Root {
    match r {
        RemoteRoot::Tmp => shared::files::Root::Tmp,
        RemoteRoot::Bundle => shared::files::Root::Bundle,
    }
}

fn audit(sh: &mut Shared, who: &(String, Arc<str>), id: Uuid, direction: &str, path: &str, bytes: u64) {
    let owner = sh.sessions.get(&id).map(|s| s.owner.clone());
    sh.audit.log(
        "cp",
        json!({"id": id.to_string(), "owner": owner.as_deref(), "peer": who.0, "identity": &*who.1, "direction": direction, "path": path, "bytes": bytes}),
    );
}
