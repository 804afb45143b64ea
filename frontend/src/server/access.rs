//! Access: `AUTH` against the operator's tokens, answered at once or — for an address
//! that failed too often — later, when its slow-down allows (SPEC §7). A failed AUTH
//! leaves the connection unauthenticated, whatever it was before.

use super::ctx::{Caller, Outcome, Shared, Waiter};
use crate::auth::{Identity, Throttle, Tokens};
use proto::reply::Authed;
use proto::{Code, Error};
use serde_json::json;
use std::net::IpAddr;
use std::time::Instant;

/// An AUTH answer held back because its address failed too often.
#[derive(Debug)]
struct Delayed {
    at: Instant,
    to: Waiter,
    peer: String,
    identity: Option<Identity>,
}

/// The access owner.
#[derive(Debug)]
pub struct Access {
    tokens: Option<Tokens>,
    throttle: Throttle,
    delayed: Vec<Delayed>,
}

impl Access {
    /// With the operator's tokens (`None`: no authentication, every client is anonymous).
    pub fn new(tokens: Option<Tokens>) -> Access {
        Access { tokens, throttle: Throttle::default(), delayed: Vec::new() }
    }

    /// Whether clients must AUTH.
    pub fn required(&self) -> bool {
        self.tokens.is_some()
    }

    /// The identity of a new connection: anonymous without tokens, nobody with them.
    pub fn initial(&self) -> Option<Identity> {
        self.tokens.is_none().then(Identity::anonymous)
    }

    /// `AUTH <token>`: checked at once, in constant time; the answer goes out when the
    /// address's failures allow.
    pub fn auth(&mut self, sh: &mut Shared, caller: &Caller, token: String) -> Outcome {
        let Some(tokens) = &self.tokens else {
            return Outcome::Refuse(Error::unsupported(
                "authentication is not configured on this rig: every client on it is anonymous",
            ));
        };
        let now = Instant::now();
        let ip = caller.peer.map_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), |p| p.ip());
        let unauthenticated = |then: Outcome| Outcome::Identity { identity: None, then: Box::new(then) };
        if let Some(wait) = self.throttle.locked(ip, now) {
            // Too many failures queued for this address: no answer slot, no token check.
            sh.audit.log_noise("auth_locked", json!({"peer": caller.peer_str(), "retry_after_s": wait.as_secs() + 1}));
            let e = Error::new(
                Code::Unauthorized,
                format!("too many failed AUTH attempts from your address: try again in {} s", wait.as_secs() + 1),
            );
            return unauthenticated(Outcome::Reply(proto::line(&e)));
        }
        let found = tokens.check(token.as_bytes());
        drop(token);
        let at = self.throttle.attempt(ip, now, found.is_none());
        if at <= now {
            return self.finish(sh, caller.peer_str(), caller.peer.map(|p| p.ip()), found);
        }
        self.delayed.push(Delayed { at, to: caller.waiter, peer: caller.peer_str(), identity: found });
        unauthenticated(Outcome::Park)
    }

    fn finish(&self, sh: &mut Shared, peer: String, ip: Option<IpAddr>, found: Option<Identity>) -> Outcome {
        match found {
            Some(id) => {
                sh.audit.log("auth_ok", json!({"peer": peer, "identity": &*id.name, "admin": id.admin}));
                let reply = Outcome::reply(&Authed { ok: proto::True, identity: id.name.clone(), admin: id.admin });
                Outcome::Identity { identity: Some(id), then: Box::new(reply) }
            }
            None => {
                let failures = ip.map_or(0, |ip| self.throttle.failures(ip));
                sh.audit.log_noise("auth_failed", json!({"peer": peer, "failures": failures}));
                let e = Error::new(
                    Code::Unauthorized,
                    "unknown token (repeated failures from your address are answered ever more slowly)",
                );
                // Audited above as auth_failed, not again as a refusal.
                Outcome::Identity { identity: None, then: Box::new(Outcome::Reply(proto::line(&e))) }
            }
        }
    }

    /// When the next held answer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.delayed.iter().map(|d| d.at).min()
    }

    /// Answers the AUTHs whose delay is over.
    pub fn answer_due(&mut self, sh: &mut Shared) {
        let now = Instant::now();
        let (due, later): (Vec<Delayed>, Vec<Delayed>) =
            std::mem::take(&mut self.delayed).into_iter().partition(|d| d.at <= now);
        self.delayed = later;
        for d in due {
            let ip = d.peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
            let outcome = self.finish(sh, d.peer, ip, d.identity);
            sh.answer(d.to, outcome);
        }
    }
}
