//! What the owners share and what they hand back to the loop.
//!
//! * [`Shared`]: the state every owner may read and update — configuration, the session
//!   table, the event log, the broker link, the audit log, the tokens.
//! * [`Caller`]: who sent the command being handled.
//! * [`Outcome`]: what a handler decided for its caller's connection. Only the loop applies
//!   it: reply, park, take a payload, stream, close, hand the connection over.
//! * [`Answer`]: an outcome for a caller parked earlier (a broker reply, an exit, a
//!   delayed AUTH...), queued in [`Shared`] and applied by the loop if the caller still
//!   waits.
//! * [`Followup`]: work one owner's completion leaves for another owner; the loop passes it
//!   on (owners never call each other).

use super::broker_link::BrokerLink;
use super::io::Io;
use super::model::{EventLog, Sessions};
use crate::audit::Audit;
use crate::auth::Identity;
use crate::config::Config;
use mio::Token;
use proto::reply::{EventKind, Jail, Mdns};
use serde::Serialize;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use uuid::Uuid;

/// A parked caller: its connection and the number of the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    /// The connection.
    pub conn: Token,
    /// Which of its commands waits (a connection handles one at a time).
    pub wait: u64,
}

/// Who sent the command being handled.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its connection and this command's wait number.
    pub waiter: Waiter,
    /// Its identity (`None` before AUTH on a rig with tokens).
    pub identity: Option<Identity>,
    /// Its address (`None` for a `--stdio` client on a pipe).
    pub peer: Option<SocketAddr>,
    /// Our address it reached.
    pub local: Option<SocketAddr>,
    /// It is the `--stdio` daemon's one client.
    pub stdio_client: bool,
}

impl Caller {
    /// The address as the audit log writes it.
    pub fn peer_str(&self) -> String {
        self.peer.map_or_else(|| "stdio".to_string(), |p| p.to_string())
    }

    /// Its identity's name (empty before AUTH).
    pub fn name(&self) -> Arc<str> {
        self.identity.as_ref().map_or_else(|| Arc::from(""), |i| i.name.clone())
    }
}

/// What becomes of a connection after a command.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to say (an empty line).
    Nothing,
    /// A success reply line; then the next command.
    Reply(Vec<u8>),
    /// A refusal (audited); then the next command.
    Refuse(proto::Error),
    /// A refusal, then the connection closes: its framing is lost.
    Fatal(proto::Error),
    /// No reply yet: an [`Answer`] comes later.
    Park,
    /// The next `size` bytes are an upload's payload, stored by upload job `job`; the
    /// connection is parked when they are in.
    Payload {
        /// The hashing thread's job.
        job: u64,
        /// Bytes to come.
        size: u64,
    },
    /// A refusal, then the next `size` bytes are skipped (a refused upload's payload).
    Drain {
        /// Why.
        refusal: proto::Error,
        /// Bytes to skip.
        size: u64,
    },
    /// The identity of the connection changes (AUTH), then `then`.
    Identity {
        /// Who it is now (`None`: unauthenticated).
        identity: Option<Identity>,
        /// What follows.
        then: Box<Outcome>,
    },
    /// A reply, then the connection streams `kind` (its owner pumps it).
    Stream {
        /// The first line.
        reply: Vec<u8>,
        /// What it streams.
        kind: StreamKind,
    },
    /// A reply, then exactly `size` bytes of `data` (GET), then the next command.
    Send {
        /// The reply line.
        reply: Vec<u8>,
        /// The bytes (a memfd, read from its start).
        data: std::fs::File,
        /// How many.
        size: u64,
    },
    /// A reply, then the connection leaves the command loop: it carries the gdb remote
    /// protocol to gdbserver's stdio socket (`DEBUG --stdio`).
    Relay {
        /// The reply line, sent first.
        reply: Vec<u8>,
        /// The session.
        id: Uuid,
        /// Who debugs.
        identity: Arc<str>,
        /// gdbserver's stdio.
        sock: OwnedFd,
    },
}

impl Outcome {
    /// A success reply.
    pub fn reply<T: Serialize>(reply: &T) -> Outcome {
        Outcome::Reply(proto::line(reply))
    }
}

/// What a streaming connection streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A session's output (`LOGS --follow`).
    Follow,
    /// Events (`EVENTS`).
    Events,
}

/// An outcome for a caller parked earlier.
#[derive(Debug)]
pub struct Answer {
    /// Who.
    pub to: Waiter,
    /// What.
    pub outcome: Outcome,
}

/// Work a completion leaves for another owner.
#[derive(Debug)]
pub enum Followup {
    /// A START --attach succeeded: if its connection still waits, it gets the reply and
    /// carries the run's frames from now on (consumer and stdin registered before the
    /// pipes are read); if it is gone, the run is abandoned.
    Attach {
        /// The START's connection and wait.
        to: Waiter,
        /// The session.
        id: Uuid,
        /// The START reply line.
        reply: Vec<u8>,
        /// The client sends stdin.
        stdin: bool,
        /// The run is on a terminal.
        tty: bool,
        /// Delete the session when the run ends or the client goes.
        remove: bool,
    },
    /// A run started: its output pipes go to the output owner, its stdin to the attach
    /// owner (which closes it unless an attached client sends stdin).
    Pipes {
        /// The session.
        id: Uuid,
        /// Read end of stdout (a terminal's master).
        stdout: OwnedFd,
        /// Read end of stderr (none on a terminal).
        stderr: Option<OwnedFd>,
        /// Write end of stdin (the terminal's master).
        stdin: OwnedFd,
    },
    /// A run started held at its entry (START --debug): attach the debugger and answer
    /// the START with the run and the debug port.
    DebugStarted {
        /// Who started it.
        caller: Caller,
        /// The session.
        id: Uuid,
        /// The stdio of the gdbserver that launched the program.
        sock: OwnedFd,
        /// Open a debug port (else wait for `DEBUG <id> --stdio`).
        port: bool,
        /// The START answer, to which the debug endpoint is added.
        started: proto::reply::Started,
    },
    /// An EXEC's process runs: if its connection still waits, it gets the reply and
    /// carries the process's frames (output relayed by the execs owner, input by the
    /// attach owner); if it is gone, the process is killed.
    ExecAttach {
        /// The EXEC's connection and wait.
        to: Waiter,
        /// The session.
        id: Uuid,
        /// The exec's number.
        exec: u32,
        /// Its pid in the session.
        ns_pid: u32,
        /// The reply line.
        reply: Vec<u8>,
        /// Read end of its stdout (a terminal's master).
        stdout: OwnedFd,
        /// Read end of its stderr.
        stderr: Option<OwnedFd>,
        /// Write end of its stdin.
        stdin: OwnedFd,
        /// The client sends stdin.
        wants_stdin: bool,
        /// On a terminal.
        tty: bool,
        /// Its command name, for the receipt.
        comm: String,
    },
    /// A PUT's bytes are stored and hashed: the files owner writes them into the session.
    Put {
        /// Who waits.
        to: Waiter,
        /// Where they go.
        target: super::uploads::PutTarget,
        /// The bytes (a memfd).
        data: std::fs::File,
        /// How many.
        size: u64,
        /// Their sha256.
        sha256: String,
    },
    /// A session is gone: every owner drops what it held for it.
    Deleted {
        /// The session.
        id: Uuid,
        /// It was a bundle: its files go.
        bundle: bool,
    },
}

/// What every owner may read and update.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub cfg: Config,
    /// Every session.
    pub sessions: Sessions,
    /// The event log.
    pub events: EventLog,
    /// The broker.
    pub broker: BrokerLink,
    /// The audit log.
    pub audit: Audit,
    /// Tokens and their sources.
    pub io: Io,
    /// What confines sessions (HELLO, receipts).
    pub jail: Jail,
    /// The daemon's warnings.
    pub warnings: Vec<String>,
    /// The mDNS advertisement.
    pub mdns: Option<Mdns>,
    /// The unicast DNS-SD registrar's state (written by its thread).
    pub dns_sd: Option<std::sync::Arc<std::sync::Mutex<discovery::unicast::State>>>,
    /// Whether clients must AUTH.
    pub auth_required: bool,
    answers: Vec<Answer>,
    followups: Vec<Followup>,
}

impl Shared {
    /// The shared state of a new loop.
    pub fn new(cfg: Config, broker: BrokerLink, audit: Audit, io: Io, warnings: Vec<String>) -> Shared {
        Shared {
            cfg,
            sessions: Sessions::default(),
            events: EventLog::new(super::model::EVENTS_KEPT),
            broker,
            audit,
            io,
            jail: Jail::default(),
            warnings,
            mdns: None,
            dns_sd: None,
            auth_required: false,
            answers: Vec::new(),
            followups: Vec::new(),
        }
    }

    /// Queues an outcome for a parked caller.
    pub fn answer(&mut self, to: Waiter, outcome: Outcome) {
        self.answers.push(Answer { to, outcome });
    }

    /// Queues work for another owner.
    pub fn follow_up(&mut self, f: Followup) {
        self.followups.push(f);
    }

    /// The queued answers (for the loop).
    pub fn take_answers(&mut self) -> Vec<Answer> {
        std::mem::take(&mut self.answers)
    }

    /// The queued follow-ups (for the loop).
    pub fn take_followups(&mut self) -> Vec<Followup> {
        std::mem::take(&mut self.followups)
    }

    /// Records an event of session `id` in the event log (subscribers are woken by the
    /// loop); run events also go into the session's timeline (a run starts at `spawned`;
    /// `exited` and `limit_hit` are put there before the receipt is written).
    pub fn emit(&mut self, id: Uuid, what: EventKind) {
        let owner = match self.sessions.get_mut(&id) {
            Some(s) => {
                let name = what.name();
                if name == "spawned" {
                    s.timeline.clear();
                }
                if matches!(name, "spawned" | "setup_finished" | "debug_attached" | "debug_detached") {
                    s.timeline.push((name, super::model::now()));
                }
                s.owner.clone()
            }
            None => Arc::from(""),
        };
        self.events.push(id, owner, what);
    }

    /// Audits an action of `caller` on session `id`: who, from where, on whose session.
    pub fn audit_session(&mut self, caller: &Caller, event: &str, id: Uuid) {
        let owner = self.sessions.get(&id).map(|s| s.owner.clone());
        self.audit.log(
            event,
            serde_json::json!({"id": id.to_string(), "owner": owner.as_deref(), "peer": caller.peer_str(), "identity": caller.identity.as_ref().map(|i| &*i.name)}),
        );
    }
}
