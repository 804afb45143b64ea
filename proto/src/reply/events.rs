//! `EVENTS`: the subscription, the events, and the lines of the stream.

use super::{Exit, Kind, LimitHit};
use crate::{Time, True};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `EVENTS`: the subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// `true`.
    pub ok: True,
    /// `true`.
    pub subscribed: True,
    /// The first sequence number this stream sends.
    pub next_seq: u64,
    /// The next number the rig will give an event.
    pub head_seq: u64,
}

/// What happened, with its details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A session was loaded.
    Uploaded {
        /// Binary or bundle.
        kind: Kind,
        /// Bytes.
        size: u64,
        /// sha256 of the upload.
        sha256: String,
    },
    /// A run's init was created.
    Spawned {
        /// Which run.
        run: u32,
    },
    /// The run's program runs.
    SetupFinished {
        /// Which run.
        run: u32,
        /// Host pid.
        pid: Option<i32>,
        /// Pid in the session.
        ns_pid: u32,
    },
    /// The run ended.
    Exited {
        /// Which run.
        run: u32,
        /// How.
        exit: Exit,
        /// A limit that ended it.
        limit_hit: Option<LimitHit>,
        /// What it touched, when observed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        observed: Option<super::ObservedSummary>,
        /// The core dump it left (`CORE` fetches it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        core: Option<super::Core>,
    },
    /// A limit ended or capped the run.
    LimitHit {
        /// Which run.
        run: u32,
        /// Which limit.
        limit: LimitHit,
    },
    /// A START failed.
    StartFailed {
        /// Why.
        message: String,
    },
    /// The session is gone.
    Deleted {},
    /// A debugger connected.
    DebugAttached {
        /// From where.
        peer: String,
    },
    /// The debugger left.
    DebugDetached {},
    /// Nobody connected to the debug endpoint in time: the program runs on without one.
    DebugExpired {},
}

impl EventKind {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Uploaded { .. } => "uploaded",
            EventKind::Spawned { .. } => "spawned",
            EventKind::SetupFinished { .. } => "setup_finished",
            EventKind::Exited { .. } => "exited",
            EventKind::LimitHit { .. } => "limit_hit",
            EventKind::StartFailed { .. } => "start_failed",
            EventKind::Deleted {} => "deleted",
            EventKind::DebugAttached { .. } => "debug_attached",
            EventKind::DebugDetached {} => "debug_detached",
            EventKind::DebugExpired {} => "debug_expired",
        }
    }
}

/// One event of `EVENTS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `true`.
    pub ok: True,
    /// What happened.
    #[serde(flatten)]
    pub what: EventKind,
    /// Its number (monotonic).
    pub seq: u64,
    /// When.
    pub time: Time,
    /// The session.
    pub id: Uuid,
}

/// A subscriber fell behind: this many events are no longer kept for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missed {
    /// `true`.
    pub ok: True,
    /// How many.
    pub missed: u64,
}

/// The end of a one-session event stream (the session was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsEnd {
    /// `true`.
    pub ok: True,
    /// `true`.
    pub end: True,
    /// `true`.
    pub deleted: bool,
}

/// A line of `EVENTS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventLine {
    /// An event.
    Event(Event),
    /// Events lost to a slow reader.
    Missed(Missed),
    /// The end.
    End(EventsEnd),
}
