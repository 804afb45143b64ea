//! `EVENTS [<id>] [--since N]`: subscribers pull from the daemon's event log as their
//! output buffer allows, so a slow one falls behind (and is told what it missed) instead of
//! making the daemon buffer for it. A one-session stream ends with the session's deletion.

use super::ctx::{Caller, Outcome, Shared, StreamKind};
use super::output::Pumped;
use crate::auth::Identity;
use mio::Token;
use proto::reply::{EventsEnd, Missed, Subscribed};
use std::collections::HashMap;
use uuid::Uuid;

/// Bytes of output an event line is counted as when deciding how many fit.
const LINE_ESTIMATE: usize = 512;

#[derive(Debug)]
struct Sub {
    filter: Option<Uuid>,
    next: u64,
    viewer: Identity,
}

/// The events owner.
#[derive(Debug, Default)]
pub struct Events {
    subs: HashMap<Token, Sub>,
}

impl Events {
    /// `EVENTS`: from now on, or replaying what the log still holds from `since`.
    pub fn subscribe(&mut self, sh: &mut Shared, caller: &Caller, filter: Option<Uuid>, since: Option<u64>) -> Outcome {
        if let Some(id) = filter {
            if let Err(e) = sh.sessions.visible(caller.identity.as_ref(), id) {
                return Outcome::Refuse(e);
            }
        }
        let Some(viewer) = caller.identity.clone() else { return Outcome::Nothing };
        let head = sh.events.head();
        let next = since.unwrap_or(head).min(head);
        self.subs.insert(caller.waiter.conn, Sub { filter, next, viewer });
        let reply = Subscribed { ok: proto::True, subscribed: proto::True, next_seq: next, head_seq: head };
        Outcome::Stream { reply: proto::line(&reply), kind: StreamKind::Events }
    }

    /// Connections subscribed.
    pub fn subscribers(&self) -> Vec<Token> {
        self.subs.keys().copied().collect()
    }

    /// The connection went away.
    pub fn drop_sub(&mut self, conn: Token) {
        self.subs.remove(&conn);
    }

    /// What subscriber `conn` has not seen, as far as `room` bytes of its output allow.
    pub fn pump(&mut self, sh: &Shared, conn: Token, room: usize) -> Pumped {
        let mut p = Pumped::default();
        let Some(sub) = self.subs.get_mut(&conn) else { return p };
        let b = sh.events.since(sub.next, sub.filter, &sub.viewer, room / LINE_ESTIMATE);
        if b.missed > 0 {
            proto::line_into(&mut p.bytes, &Missed { ok: proto::True, missed: b.missed });
        }
        for e in &b.events {
            proto::line_into(&mut p.bytes, e);
        }
        sub.next = b.next;
        if b.ended {
            proto::line_into(&mut p.bytes, &EventsEnd { ok: proto::True, end: proto::True, deleted: true });
            p.done = true;
            self.subs.remove(&conn);
        }
        p
    }
}
