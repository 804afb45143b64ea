//! Authentication (SPEC §7): the operator's token file, constant-time token checks, and
//! the slow-down of repeated failures from one address.
//!
//! The token file has one `identity token [admin]` per line (`#` comments and blank lines
//! allowed). It is read once, at start, before privileges are dropped; it must be a
//! regular file owned by the daemon's starting user and unreadable to group and others.
//! Only SHA-256 digests of the tokens stay in memory.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
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

fn invalid(why: impl Into<String>) -> TokensError {
    TokensError::Invalid(why.into())
}

fn because<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> TokensError {
    let what = what.into();
    move |e| TokensError::Because { what, source: e.into() }
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name sessions are owned by.
    pub name: Arc<str>,
    /// Sees and manages every session.
    pub admin: bool,
}

impl Identity {
    /// The identity of every client of a rig without authentication: it sees everything,
    /// as there is nobody else.
    pub fn anonymous() -> Identity {
        Identity { name: Arc::from("anonymous"), admin: true }
    }

    /// Whether this identity may see and manage a session owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        self.admin || *self.name == *owner
    }
}

/// Shortest token accepted: a guessable token would make the slow-down pointless.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug)]
struct Entry {
    identity: Identity,
    digest: [u8; 32],
}

/// The tokens of a rig.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Compares without an early exit, so the time taken does not tell how much matched.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= std::hint::black_box(a[i] ^ b[i]);
    }
    std::hint::black_box(diff) == 0
}

fn valid_identity(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

impl Tokens {
    /// Reads and checks the operator's token file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(because(format!("cannot open the token file {shown}")))?;
        let meta = file.metadata().map_err(because(shown.to_string()))?;
        if !meta.is_file() {
            return Err(invalid(format!("the token file {shown} is not a regular file")));
        }
        let me = nix::unistd::Uid::effective().as_raw();
        if meta.uid() != me {
            return Err(invalid(format!(
                "the token file {shown} is owned by uid {}, not by the daemon's user (uid {me}): \
                 chown it, so that nobody else can change who may use this rig",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(invalid(format!(
                "the token file {shown} is readable or writable by group or others (mode {:o}): run chmod 600 on it",
                meta.mode() & 0o7777
            )));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &file, &mut text)
            .map_err(because(format!("cannot read the token file {shown} (it must be UTF-8 text)")))?;
        Tokens::parse(&text).map_err(because(shown.to_string()))
    }

    /// Parses `identity token [admin]` lines.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut admin_of: HashMap<String, bool> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (name, token, admin) = match words[..] {
                [name, token] => (name, token, false),
                [name, token, "admin"] => (name, token, true),
                [_, _, other] => {
                    return Err(invalid(format!("line {n}: unknown flag {other:?} (the only flag is admin)")))
                }
                _ => return Err(invalid(format!("line {n}: want `identity token [admin]`"))),
            };
            if !valid_identity(name) {
                return Err(invalid(format!("line {n}: identity {name:?} must be 1-64 of A-Z a-z 0-9 . _ - @")));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(invalid(format!(
                    "line {n}: the token of {name} is shorter than {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
                )));
            }
            if let Some(&was) = admin_of.get(name) {
                if was != admin {
                    return Err(invalid(format!("line {n}: {name} is admin on one line and not on another")));
                }
            }
            admin_of.insert(name.to_string(), admin);
            let d = digest(token.as_bytes());
            if entries.iter().any(|e| e.digest == d) {
                return Err(invalid(format!("line {n}: this token is given twice; every token must be unique")));
            }
            entries.push(Entry { identity: Identity { name: Arc::from(name), admin }, digest: d });
        }
        if entries.is_empty() {
            return Err(invalid("no tokens: every line is empty or a comment; nobody could use this rig"));
        }
        Ok(Tokens { entries })
    }

    /// The identity a token stands for. Every entry is compared, in constant time each.
    pub fn check(&self, token: &[u8]) -> Option<Identity> {
        let d = digest(token);
        let mut found = None;
        for e in &self.entries {
            if ct_eq(&e.digest, &d) {
                found = Some(&e.identity);
            }
        }
        found.cloned()
    }

    /// How many tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true for a loaded file.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Failures up to this many in a row are answered at once (typos happen).
const FREE_FAILURES: u32 = 2;
/// The first delay after the free failures; it doubles with every further failure.
const FIRST_DELAY: Duration = Duration::from_millis(500);
/// The longest delay.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// An address is forgiven after this long without a failure.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at once.
const MAX_TRACKED: usize = 8192;
/// An address whose next answer is further away than this gets no answer slot at all:
/// its AUTH is refused at once, without looking at the token. Parallel guessing cannot
/// grow the queue of held answers beyond this.
const MAX_BACKLOG: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Penalty {
    failures: u32,
    /// No AUTH from this address is answered before this.
    next: Instant,
    last_failure: Instant,
}

/// Slows down repeated AUTH failures per source address (an IPv6 /64 counts as one
/// address). Every AUTH from an address gets a slot; a failure pushes the next slot back,
/// by a delay that doubles, so parallel connections do not help a guesser either.
#[derive(Debug, Default)]
pub struct Throttle {
    by_addr: HashMap<IpAddr, Penalty>,
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

fn delay_after(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    (FIRST_DELAY * (1u32 << doublings)).min(MAX_DELAY)
}

impl Throttle {
    /// How long an address is locked out, if it is: its AUTH is then refused at once,
    /// without an answer slot and without checking the token.
    pub fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let p = self.by_addr.get(&key(ip)).filter(|p| now.duration_since(p.last_failure) < FORGET_AFTER)?;
        let wait = p.next.saturating_duration_since(now);
        (wait > MAX_BACKLOG).then(|| wait - MAX_BACKLOG)
    }

    /// When an AUTH from `ip` that arrives `now` may be answered; `failed` says whether it
    /// failed (a failure delays the address's next answers). Call [`Throttle::locked`]
    /// first: a locked address's token must not even be checked.
    pub fn attempt(&mut self, ip: IpAddr, now: Instant, failed: bool) -> Instant {
        let k = key(ip);
        let p = self.by_addr.get(&k).copied().filter(|p| now.duration_since(p.last_failure) < FORGET_AFTER);
        let slot = p.map_or(now, |p| p.next.max(now));
        if failed {
            if !self.by_addr.contains_key(&k) && self.by_addr.len() >= MAX_TRACKED {
                self.evict(now);
            }
            let failures = p.map_or(0, |p| p.failures) + 1;
            self.by_addr.insert(k, Penalty { failures, next: slot + delay_after(failures), last_failure: now });
        }
        slot
    }

    /// Makes room: forgets forgiven addresses, or else the one that failed longest ago.
    fn evict(&mut self, now: Instant) {
        self.by_addr.retain(|_, p| now.duration_since(p.last_failure) < FORGET_AFTER);
        if self.by_addr.len() >= MAX_TRACKED {
            if let Some(oldest) = self.by_addr.iter().min_by_key(|(_, p)| p.last_failure).map(|(k, _)| *k) {
                self.by_addr.remove(&oldest);
            }
        }
    }

    /// Failures remembered for an address.
    pub fn failures(&self, ip: IpAddr) -> u32 {
        self.by_addr.get(&key(ip)).map_or(0, |p| p.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "alice 0123456789abcdef0123456789abcdef\nbob   fedcba9876543210fedcba9876543210\n# ops\nroot  ffffffffffffffffffffffffffffffff admin\n";

    #[test]
    fn tokens_map_to_identities() {
        let t = Tokens::parse(A).unwrap();
        assert_eq!(t.len(), 3);
        let a = t.check(b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!((&*a.name, a.admin), ("alice", false));
        assert!(t.check(b"ffffffffffffffffffffffffffffffff").unwrap().admin);
        assert!(t.check(b"0123456789abcdef0123456789abcdeF").is_none());
        assert!(t.check(b"").is_none());
        assert!(t.check(b"0123456789abcdef0123456789abcdef0").is_none());
        assert!(a.may_see("alice") && !a.may_see("bob"));
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        for (text, want) in [
            ("", "no tokens"),
            ("# only a comment\n\n", "no tokens"),
            ("alice\n", "line 1"),
            ("alice short\n", "shorter than"),
            ("al ice 0123456789abcdef0123456789abcdef\n", "unknown flag"),
            ("a/b 0123456789abcdef0123456789abcdef\n", "identity"),
            ("a 0123456789abcdef0123456789abcdef\nb 0123456789abcdef0123456789abcdef\n", "twice"),
            ("a 0123456789abcdef0123456789abcdef admin\na 1123456789abcdef0123456789abcdef\n", "admin on one line"),
            ("a 0123456789abcdef0123456789abcdef root\n", "unknown flag"),
        ] {
            let e = Tokens::parse(text).unwrap_err();
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn loose_permissions_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dl-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tokens");
        std::fs::write(&p, A).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Tokens::load(&p).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Tokens::load(&p).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Tokens::load(&p).unwrap().len(), 3);
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(Tokens::load(&link).is_err(), "a symlink is not followed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failures_slow_down_an_address_and_not_others() {
        let mut th = Throttle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        // The first answers come at once (typos happen).
        assert_eq!(th.attempt(ip, t0, true), t0);
        assert_eq!(th.attempt(ip, t0, true), t0);
        assert_eq!(th.attempt(ip, t0, true), t0);
        // Then 0.5 s, 1 s, 2 s ... even when the attempts come at once.
        assert_eq!(th.attempt(ip, t0, true), t0 + Duration::from_millis(500));
        assert_eq!(th.attempt(ip, t0, true), t0 + Duration::from_millis(1500));
        assert_eq!(th.attempt(ip, t0, false), t0 + Duration::from_millis(3500));
        assert_eq!(th.attempt(other, t0, true), t0);
        // The cap.
        for _ in 0..20 {
            th.attempt(ip, t0, true);
        }
        let a = th.attempt(ip, t0, false);
        let b = th.attempt(ip, t0, true);
        let c = th.attempt(ip, t0, false);
        assert_eq!(a, b);
        assert_eq!(c - b, MAX_DELAY);
        // Far behind: locked out, no slot (and the token is not looked at).
        assert!(th.locked(ip, t0).is_some());
        assert!(th.locked(other, t0).is_none());
        let second = Duration::from_secs(1);
        assert_eq!(th.locked(ip, c - MAX_BACKLOG - second), Some(second));
        assert_eq!(th.locked(ip, c - MAX_BACKLOG + second), None);
        // Forgiven after a quiet while.
        let later = t0 + FORGET_AFTER + Duration::from_secs(600);
        assert_eq!(th.attempt(ip, later, false), later);
    }

    #[test]
    fn an_ipv6_64_is_one_address_and_the_table_is_bounded() {
        let mut th = Throttle::default();
        let t0 = Instant::now();
        for i in 0..4u16 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
            th.attempt(ip, t0, true);
        }
        assert_eq!(th.failures("2001:db8:0:1::99".parse().unwrap()), 4);
        for i in 0..(MAX_TRACKED as u32 + 100) {
            th.attempt(IpAddr::V4(i.into()), t0, true);
        }
        assert!(th.by_addr.len() <= MAX_TRACKED);
    }
}
