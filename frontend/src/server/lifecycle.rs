//! The session state machine (SPEC §4): `START` (also `--attach`), `STOP`, `KILL`,
//! `DELETE`, what the broker reports of a run — spawned, started (or failed), exited —
//! with the receipt of every run that ended (§9), and the end of runs whose attached client
//! went away. Each command's start and its completion are next to each other here.

use super::broker_link::{refusal_code, Owner};
use super::ctx::{Caller, Followup, Outcome, Shared, Waiter};
use super::model::{exit_reply, limits_reply, now, Session, RECEIPTS_KEPT};
use super::uploads::session_id;
use proto::reply::{Deleted, EventKind, Jail, Kind, Mark, Process, Receipt, Started, State, Stopped, StreamDigest};
use proto::{Error, StartOpts, Time};
use serde_json::json;
use shared::{Reply, Request, RunLimits, StartSpec};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use uuid::Uuid;

/// Version of the receipt schema (RECEIPT's `schema` field).
pub const RECEIPT_SCHEMA: &str = "debuglantern.receipt/2";

/// What an attached START asked for.
#[derive(Debug, Clone, Copy)]
struct AttachOpts {
    stdin: bool,
    tty: bool,
    remove: bool,
}

/// A request with the broker. `to: None`: nobody waits (a run abandoned by its client).
#[derive(Debug)]
enum Waiting {
    Start {
        caller: Box<Caller>,
        id: Uuid,
        limits: RunLimits,
        args: Vec<String>,
        env_keys: Vec<String>,
        /// START --debug: whether a debug port opens.
        debug: Option<bool>,
        attach: Option<AttachOpts>,
        keep_tmp: bool,
    },
    Stop {
        to: Option<Waiter>,
        id: Uuid,
    },
    Delete {
        to: Option<Waiter>,
        id: Uuid,
    },
}

/// The lifecycle owner.
#[derive(Debug, Default)]
pub struct Lifecycle {
    waiting: HashMap<u64, Waiting>,
    /// STOPs and KILLs waiting for their run to end, by session.
    exit_waiters: HashMap<Uuid, Vec<Waiter>>,
}

/// The host pid of a pidfd, from `/proc/self/fdinfo`.
fn host_pid(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    // -1 once the process has exited (it may already have).
    info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse().ok()).filter(|&p: &i32| p > 0)
}

fn refusal(reply: Reply) -> Error {
    match reply {
        Reply::Refused { refusal, message } => Error::new(refusal_code(refusal), message),
        other => {
            log::error!("unexpected broker reply {other:?}");
            Error::internal("unexpected answer from the broker")
        }
    }
}

impl Lifecycle {
    /// `START <id> [--debug] [--attach] [<json>]`.
    pub fn start(
        &mut self,
        sh: &mut Shared,
        caller: &Caller,
        id: Uuid,
        debug: bool,
        attach: bool,
        opts: StartOpts,
    ) -> Outcome {
        let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
            Ok(s) => s,
            Err(e) => return Outcome::Refuse(e),
        };
        if s.busy || s.state.alive() {
            return Outcome::Refuse(Error::invalid_state(format!("session is {}; STOP it first", s.state.as_str())));
        }
        // argv[0]: as asked, else the program's name, else the bundle's exec path.
        let argv0 = opts.argv0.clone().or_else(|| s.name.clone()).or_else(|| s.exec_path.clone());
        let mut argv = vec![argv0.unwrap_or_else(|| "program".into()).into_bytes()];
        argv.extend(opts.args.iter().map(|a| a.as_bytes().to_vec()));
        let env: Vec<(String, String)> = match opts.env {
            Some(env) => env.into_iter().collect(),
            None => [("PATH", "/usr/local/bin:/usr/bin:/bin"), ("HOME", "/tmp"), ("TERM", "dumb")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let env_keys: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
        let env: Vec<Vec<u8>> = env.into_iter().map(|(k, v)| format!("{k}={v}").into_bytes()).collect();
        let req = opts.limits.unwrap_or_default();
        let asked = [
            req.cpu_seconds,
            req.address_space,
            req.open_files,
            req.processes,
            req.tmp_bytes,
            req.memory_bytes,
            req.wall_seconds,
            req.cpus.map(|c| c.0),
        ];
        let limits = match policy::rlimits::tighten(sh.cfg.limits, asked) {
            Ok(l) => l,
            Err(e) => return Outcome::Refuse(Error::bad(e.to_string())),
        };
        let mut limits = limits;
        if let Some(asked) = req.core_bytes {
            let rig = sh.cfg.limits.core_bytes;
            if asked > rig {
                return Outcome::Refuse(Error::bad(format!(
                    "limit core_bytes={asked} is looser than this rig's {rig} (0 keeps no core dump)"
                )));
            }
            limits.core_bytes = asked;
        }
        if limits.tmp_bytes != 0 && limits.tmp_bytes < 4096 {
            return Outcome::Refuse(Error::bad("limit tmp_bytes must be at least 4096"));
        }
        let list_processes = opts.list_processes.unwrap_or(true);
        let tty = opts.tty.map(|t| shared::Winsize { rows: t.rows, cols: t.cols });
        let keep_tmp = opts.keep_tmp.unwrap_or(false);
        let debug_port = opts.debug_port.unwrap_or(true);
        let observe = match &opts.observe {
            None => sh.cfg.observe_default,
            Some(kinds) if kinds.is_empty() => Default::default(),
            Some(_) if !sh.cfg.observe_allowed => {
                return Outcome::Refuse(Error::new(
                    proto::Code::Unsupported,
                    "this rig does not observe runs (--no-observe)",
                ))
            }
            Some(kinds) => match crate::config::parse_observe(kinds) {
                Ok(o) => o,
                Err(e) => return Outcome::Refuse(Error::bad(format!("observe: {e}"))),
            },
        };
        let observe = shared::observe::Observe { limit: sh.cfg.observe_default.limit, ..observe };
        let spec = StartSpec { argv, env, limits, debug, list_processes, tty, keep_tmp, observe };
        let attach = attach.then_some(AttachOpts {
            stdin: opts.stdin.unwrap_or(false),
            tty: tty.is_some(),
            remove: opts.remove.unwrap_or(false),
        });
        let tag = match sh.broker.send(Owner::Lifecycle, Request::Start { id: session_id(&id), spec }) {
            Ok(t) => t,
            Err(e) => return Outcome::Refuse(e),
        };
        if let Some(s) = sh.sessions.get_mut(&id) {
            s.busy = true;
        }
        sh.audit_session(caller, "start", id);
        let args = opts.args;
        // With --debug: whether a debug port opens (else DEBUG --stdio alone connects).
        let debug = debug.then(|| debug_port && caller.local.is_some() && caller.peer.is_some());
        self.waiting.insert(
            tag,
            Waiting::Start { caller: Box::new(caller.clone()), id, limits, args, env_keys, debug, attach, keep_tmp },
        );
        Outcome::Park
    }

    /// The attached client of `id`'s run went away (or its run ended, with `remove`): the
    /// run is killed, and with `remove` the session deleted. Nobody waits for the answer.
    /// `why` goes to the audit log.
    pub fn abandon(&mut self, sh: &mut Shared, id: Uuid, remove: bool, why: &str) {
        let Some(s) = sh.sessions.get(&id) else { return };
        if s.deleting || (!remove && !s.state.alive()) || (s.busy && !s.state.alive()) {
            return;
        }
        let req = if remove { Request::Delete { id: session_id(&id) } } else { Request::Kill { id: session_id(&id) } };
        let Ok(tag) = sh.broker.send(Owner::Lifecycle, req) else { return };
        let owner = s.owner.clone();
        sh.audit.log(
            if remove { "abandoned_delete" } else { "abandoned_kill" },
            json!({"id": id.to_string(), "owner": &*owner, "reason": why}),
        );
        if remove {
            if let Some(s) = sh.sessions.get_mut(&id) {
                s.deleting = true;
            }
            sh.sessions.touch(id);
            self.waiting.insert(tag, Waiting::Delete { to: None, id });
        } else {
            self.waiting.insert(tag, Waiting::Stop { to: None, id });
        }
    }

    /// `STOP <id>` (SIGTERM, SIGKILL after the grace) or `KILL <id>`: answered when the
    /// run has ended.
    pub fn stop(&mut self, sh: &mut Shared, caller: &Caller, id: Uuid, kill: bool) -> Outcome {
        let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
            Ok(s) => s,
            Err(e) => return Outcome::Refuse(e),
        };
        if !s.state.alive() {
            return Outcome::Refuse(Error::invalid_state(format!("session is {}, not RUNNING", s.state.as_str())));
        }
        let req = if kill {
            Request::Kill { id: session_id(&id) }
        } else {
            Request::Stop { id: session_id(&id), grace_ms: sh.cfg.stop_grace.as_millis() as u64 }
        };
        let tag = match sh.broker.send(Owner::Lifecycle, req) {
            Ok(t) => t,
            Err(e) => return Outcome::Refuse(e),
        };
        sh.audit_session(caller, if kill { "kill" } else { "stop" }, id);
        self.waiting.insert(tag, Waiting::Stop { to: Some(caller.waiter), id });
        self.exit_waiters.entry(id).or_default().push(caller.waiter);
        Outcome::Park
    }

    /// `DELETE <id>`: kills the run if any, then the session is gone.
    pub fn delete(&mut self, sh: &mut Shared, caller: &Caller, id: Uuid) -> Outcome {
        let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
            Ok(s) => s,
            Err(e) => return Outcome::Refuse(e),
        };
        if s.busy && !s.state.alive() {
            return Outcome::Refuse(Error::invalid_state("session is starting; try again"));
        }
        let tag = match sh.broker.send(Owner::Lifecycle, Request::Delete { id: session_id(&id) }) {
            Ok(t) => t,
            Err(e) => return Outcome::Refuse(e),
        };
        if let Some(s) = sh.sessions.get_mut(&id) {
            s.deleting = true;
        }
        sh.audit_session(caller, "delete", id);
        self.waiting.insert(tag, Waiting::Delete { to: Some(caller.waiter), id });
        // Followers of the session end their stream.
        sh.sessions.touch(id);
        Outcome::Park
    }

    /// The broker's answer to a request of ours.
    pub fn on_reply(&mut self, sh: &mut Shared, tag: u64, reply: Reply) {
        let Some(w) = self.waiting.remove(&tag) else { return };
        match w {
            Waiting::Start { caller, id, limits, args, env_keys, debug, attach, keep_tmp } => match reply {
                Reply::Started { ns_pid, pidfd, stdout, stderr, stdin, debug: gdb, .. } => {
                    let pid = host_pid(&pidfd);
                    drop(pidfd);
                    let Some(s) = sh.sessions.get_mut(&id) else { return };
                    s.busy = false;
                    s.state = State::Running;
                    s.pid = pid;
                    s.ns_pid = Some(ns_pid);
                    s.exit = None;
                    s.usage = None;
                    s.cgroup_hit = None;
                    s.limits = limits;
                    s.runs += 1;
                    s.started = Some(now());
                    s.ended = None;
                    s.logs.clear();
                    s.out_bytes = [0, 0];
                    s.out_hash = Default::default();
                    s.run_args = args;
                    s.run_env_keys = env_keys;
                    s.pipes_open = if stderr.is_some() { 2 } else { 1 };
                    if !keep_tmp {
                        // The last run's /tmp is gone: the run starts with an empty one.
                        s.tmp = None;
                    }
                    s.exec_processes.clear();
                    let run = s.runs;
                    if !keep_tmp {
                        sh.sessions.set_tmp_held(&id, 0);
                    }
                    sh.emit(id, EventKind::SetupFinished { run, pid, ns_pid });
                    let r = Started {
                        ok: proto::True,
                        id,
                        state: State::Running,
                        debug: None,
                        debug_stdio: None,
                        pid,
                        ns_pid,
                    };
                    if let Some(a) = attach {
                        // The consumer and stdin are in place before the first byte is read.
                        let (stdin, tty, remove) = (a.stdin, a.tty, a.remove);
                        sh.follow_up(Followup::Attach {
                            to: caller.waiter,
                            id,
                            reply: proto::line(&r),
                            stdin,
                            tty,
                            remove,
                        });
                    }
                    sh.follow_up(Followup::Pipes { id, stdout, stderr, stdin });
                    if attach.is_some() {
                        // Answered by the follow-up.
                    } else if let (Some(port), Some(sock)) = (debug, gdb) {
                        // gdbserver launched it, held at its entry: the debug endpoint opens,
                        // then START is answered.
                        sh.follow_up(Followup::DebugStarted { caller: *caller, id, sock, port, started: r });
                    } else {
                        sh.answer(caller.waiter, Outcome::reply(&r));
                    }
                }
                other => {
                    if let Some(s) = sh.sessions.get_mut(&id) {
                        s.busy = false;
                    }
                    let e = refusal(other);
                    sh.emit(id, EventKind::StartFailed { message: e.message.clone() });
                    sh.answer(caller.waiter, Outcome::Refuse(e));
                    if attach.is_some_and(|a| a.remove) {
                        self.abandon(sh, id, true, "its attached START failed");
                    }
                }
            },
            Waiting::Stop { to, id } => match reply {
                // The answer comes when the run has ended.
                Reply::Accepted { .. } => {}
                other => {
                    // Usually a race with the run's own exit, whose event came first.
                    let Some(to) = to else { return };
                    if let Some(w) = self.exit_waiters.get_mut(&id) {
                        w.retain(|w| *w != to);
                    }
                    let state = sh.sessions.get(&id).map(|s| s.state.as_str()).unwrap_or("gone");
                    let e = refusal(other);
                    sh.answer(to, Outcome::Refuse(Error::invalid_state(format!("session is {state}: {}", e.message))));
                }
            },
            Waiting::Delete { to, id } => match reply {
                Reply::Deleted { .. } => {
                    sh.emit(id, EventKind::Deleted {});
                    let bundle = sh.sessions.remove(&id).is_some_and(|s| s.kind == Kind::Bundle);
                    for w in self.exit_waiters.remove(&id).unwrap_or_default() {
                        sh.answer(w, Outcome::Refuse(Error::not_found("the session was deleted")));
                    }
                    sh.follow_up(Followup::Deleted { id, bundle });
                    if let Some(to) = to {
                        sh.answer(to, Outcome::reply(&Deleted { ok: proto::True, id, deleted: true }));
                    }
                    sh.sessions.touch(id);
                }
                other => {
                    if let Some(s) = sh.sessions.get_mut(&id) {
                        s.deleting = false;
                    }
                    let e = refusal(other);
                    log::error!("the broker refused to delete {id}: {}", e.message);
                    if let Some(to) = to {
                        let e = Error::internal(format!("the broker refused to delete: {}", e.message));
                        sh.answer(to, Outcome::Refuse(e));
                    }
                }
            },
        }
    }

    /// The broker created a run's init.
    pub fn on_spawned(&mut self, sh: &mut Shared, id: Uuid) {
        let run = sh.sessions.get(&id).map_or(0, |s| s.runs + 1);
        sh.emit(id, EventKind::Spawned { run });
    }

    /// A run ended, everything of it reaped (its pipes were drained first): the state, the
    /// receipt, the STOPs and KILLs waiting for it, the events.
    pub fn on_exited(
        &mut self,
        sh: &mut Shared,
        id: Uuid,
        status: shared::ExitStatus,
        usage: shared::Usage,
        limit_hit: Option<shared::LimitHit>,
        (observed, core): (Option<proto::reply::Observed>, Option<std::os::fd::OwnedFd>),
    ) {
        sh.sessions.set_tmp_held(&id, usage.tmp.used_bytes);
        let core = self.keep_core(sh, id, usage.core.as_deref(), core);
        let Some(s) = sh.sessions.get_mut(&id) else { return };
        s.state = State::Stopped;
        s.exit = Some(exit_reply(status));
        s.tmp = Some(usage.tmp.clone());
        s.usage = Some(usage);
        s.cgroup_hit = limit_hit;
        s.ended = Some(now());
        // The receipt is written now: its timeline ends here (the events follow below).
        let t = now();
        if s.limit_hit().is_some() {
            s.timeline.push(("limit_hit", t));
        }
        s.timeline.push(("exited", t));
        let summary = observed.as_ref().map(super::observed::summary);
        let mut receipt = receipt(s, &sh.jail, &sh.warnings);
        receipt.observed = observed;
        receipt.core = core.clone();
        if s.receipts.len() == RECEIPTS_KEPT {
            s.receipts.pop_front();
        }
        s.receipts.push_back(receipt);
        let (run, hit, owner, exit) = (s.runs, s.limit_hit(), s.owner.clone(), exit_reply(status));
        let stopped = Stopped { ok: proto::True, id, state: State::Stopped, exit: Some(exit), limit_hit: hit };
        for w in self.exit_waiters.remove(&id).unwrap_or_default() {
            sh.answer(w, Outcome::reply(&stopped));
        }
        sh.sessions.touch(id);
        if let Some(limit) = hit {
            sh.audit.log("limit_hit", json!({"id": id.to_string(), "owner": &*owner, "run": run, "limit": limit}));
            sh.emit(id, EventKind::LimitHit { run, limit });
        }
        sh.emit(id, EventKind::Exited { run, exit, limit_hit: hit, observed: summary, core });
    }

    /// The core dump a run's init sent (a sealed memfd of the size it says, within the
    /// run's `core_bytes`), kept for the session if the rig's budget has room for it.
    fn keep_core(
        &mut self,
        sh: &mut Shared,
        id: Uuid,
        meta: Option<&shared::CoreMeta>,
        fd: Option<std::os::fd::OwnedFd>,
    ) -> Option<proto::reply::Core> {
        let (meta, fd) = (meta?, fd?);
        let s = sh.sessions.get(&id)?;
        let (run, limit, owner) = (s.runs, s.limits.core_bytes, s.owner.clone());
        let size = super::observed::sealed_size(&fd, "core dump")?;
        if size != meta.bytes || size > limit {
            log::warn!("session {id}: a core dump of {size} bytes (said {}, limit {limit}): dropped", meta.bytes);
            return None;
        }
        let info = proto::reply::Core {
            bytes: size,
            sha256: hex::encode(meta.sha256),
            signal: meta.signal,
            pid: meta.pid,
            comm: meta.comm.chars().take(16).collect(),
            threads: meta.threads,
            truncated: meta.truncated,
            run,
        };
        let kept = super::model::KeptCore { file: std::fs::File::from(fd), info: info.clone() };
        if sh.sessions.keep_core(&id, kept, sh.cfg.max_total_size).is_err() {
            let why = format!("the rig's --max-total-size has no room for a core of {size} bytes");
            log::warn!("session {id}: {why}: dropped");
            sh.audit.log("core_dropped", json!({"id": id.to_string(), "owner": &*owner, "run": run, "why": why}));
            return None;
        }
        Some(info)
    }
}

/// The receipt of the run that just ended (called once, when it has ended and its output
/// is drained).
fn receipt(s: &Session, jail: &Jail, warnings: &[String]) -> Receipt {
    use sha2::Digest;
    let started = s.started.unwrap_or(s.created);
    let ended = s.ended.unwrap_or_else(now);
    let duration = ended.0.duration_since(started.0).unwrap_or_default();
    let usage = s.usage.clone().unwrap_or_default();
    let digest =
        |i: usize| StreamDigest { bytes: s.out_bytes[i], sha256: hex::encode(s.out_hash[i].clone().finalize()) };
    Receipt {
        schema: RECEIPT_SCHEMA.into(),
        session: s.id,
        run: s.runs,
        kind: s.kind,
        sha256: s.sha256.clone(),
        exec_path: s.exec_path.clone(),
        args: s.run_args.clone(),
        env_keys: s.run_env_keys.clone(),
        identity: s.owner.clone(),
        started,
        ended,
        duration_ms: duration.as_millis() as u64,
        exit: s.exit,
        limit_hit: s.limit_hit(),
        cpu_user_ms: usage.user_us / 1000,
        cpu_sys_ms: usage.sys_us / 1000,
        max_rss_kib: usage.max_rss_kib,
        cgroup: super::model::cgroup_figures(usage.cgroup),
        processes_spawned: usage.processes,
        // Every process that ended with exit_group, in the order they ended.
        processes: s
            .exec_processes
            .iter()
            .cloned()
            .chain(usage.tree.iter().map(|p| Process {
                pid: p.pid,
                ppid: p.ppid,
                comm: p.comm.clone(),
                start: Time::from_micros(p.start_us),
                end: Time::from_micros(p.end_us),
                exit_code: p.code,
            }))
            .collect(),
        processes_unlisted: usage.tree_dropped,
        tmp_files: usage
            .tmp
            .files
            .iter()
            .map(|f| proto::reply::TmpFile { path: f.path.clone(), size: f.size })
            .collect(),
        tmp_files_unlisted: usage.tmp.unlisted,
        stdout: digest(0),
        stderr: digest(1),
        jail: jail.clone(),
        limits: limits_reply(&s.limits),
        warnings: warnings.to_vec(),
        timeline: s.timeline.iter().map(|(e, t)| Mark { event: e.to_string(), time: *t }).collect(),
        observed: None,
        core: None,
    }
}
