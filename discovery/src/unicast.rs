//! DNS-SD over unicast DNS (RFC 6763 §11): browsing `_mydebug._tcp.<domain>` at a DNS
//! server (PTR → SRV + TXT + A/AAAA), and a rig keeping its own records there with
//! TSIG-signed dynamic updates (RFC 2136, RFC 8945): added at start, refreshed, deleted
//! at shutdown. No registry of our own: any authoritative server that takes updates
//! (BIND, Knot, PowerDNS) serves a lab of rigs.
//!
//! The daemon's registrar is a thread started before the frontend's seccomp filter; it
//! speaks UDP only (the frontend may not `connect`: landlock and seccomp refuse it), with
//! `sendto`/`recvfrom`, which the filter allows for the mDNS responder already.

use crate::dns::{self, class, rcode, rtype, Message, Name, RData, Record};
use crate::tsig::{self, Key};
use crate::{because, invalid, DiscoveryError, Found};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Service type label pair under a domain.
const SERVICE_LABELS: [&[u8]; 2] = [b"_mydebug", b"_tcp"];
/// Longest answer read over UDP (we offer 4096 with EDNS).
const MAX_UDP: usize = 4096;
/// Most rigs one browse resolves (a hostile zone cannot make us resolve forever).
pub const MAX_BROWSE: usize = 256;

/// `_mydebug._tcp.<domain>`.
pub fn service_name(domain: &Name) -> Result<Name, dns::WireError> {
    domain.prepend(SERVICE_LABELS[1])?.prepend(SERVICE_LABELS[0])
}

/// A 16-bit message id nobody off this host can predict (SipHash with the process's
/// random keys, which std draws from getrandom).
fn random_id() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() as u16
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Parses `HOST[:PORT]` (port 53 by default; `[v6]:port` for IPv6 with a port).
pub fn parse_server(s: &str) -> Result<SocketAddr, DiscoveryError> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let with_port = if s.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        s.to_string()
    } else {
        format!("{s}:53")
    };
    with_port
        .to_socket_addrs()
        .map_err(because(format!("DNS server {s:?}")))?
        .next()
        .ok_or_else(|| invalid(format!("DNS server {s:?} has no address")))
}

/// Talks to one DNS server.
#[derive(Debug, Clone)]
pub struct Resolver {
    /// The server.
    pub server: SocketAddr,
    /// How long one try waits.
    pub timeout: Duration,
    /// Tries over UDP.
    pub tries: u32,
    /// Retry a truncated answer over TCP (the daemon cannot: it may not connect).
    pub tcp: bool,
}

impl Resolver {
    /// A resolver for `server`.
    pub fn new(server: SocketAddr) -> Resolver {
        Resolver { server, timeout: Duration::from_millis(1000), tries: 2, tcp: true }
    }

    /// The first `nameserver` of `/etc/resolv.conf`.
    pub fn system() -> Result<Resolver, DiscoveryError> {
        let text = std::fs::read_to_string("/etc/resolv.conf").map_err(because("reading /etc/resolv.conf"))?;
        let server = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|a| a.trim().split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
            .next()
            .ok_or_else(|| invalid("/etc/resolv.conf names no nameserver (give one with --dns-server)"))?;
        Ok(Resolver::new(SocketAddr::new(server, 53)))
    }

    /// Sends `wire` (id `id`) and returns the answer, raw and decoded. Answers from
    /// elsewhere, with another id or to another question are ignored.
    pub fn exchange(&self, wire: &[u8], id: u16) -> Result<(Vec<u8>, Message), DiscoveryError> {
        let what = || format!("DNS server {}", self.server);
        let local: SocketAddr =
            if self.server.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal");
        let sock = UdpSocket::bind(local).map_err(because(what()))?;
        let question = Message::decode(wire).ok().and_then(|m| m.questions.first().cloned());
        let mut buf = vec![0u8; MAX_UDP];
        for _ in 0..self.tries.max(1) {
            sock.send_to(wire, self.server).map_err(because(what()))?;
            let end = Instant::now() + self.timeout;
            loop {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                sock.set_read_timeout(Some(left)).map_err(because(what()))?;
                let (n, from) = match sock.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        break
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(invalid(format!("{}: nothing answers DNS there (connection refused)", what())))
                    }
                    Err(e) => return Err(because(what())(e)),
                };
                if from != self.server {
                    continue;
                }
                let Ok(m) = Message::decode(&buf[..n]) else { continue };
                if m.id != id || !m.is_response() || m.questions.first().cloned() != question && !m.questions.is_empty()
                {
                    continue;
                }
                if m.truncated() && self.tcp {
                    return self.exchange_tcp(wire);
                }
                return Ok((buf[..n].to_vec(), m));
            }
        }
        Err(invalid(format!("{}: no answer within {:?} ({} tries)", what(), self.timeout, self.tries.max(1))))
    }

    fn exchange_tcp(&self, wire: &[u8]) -> Result<(Vec<u8>, Message), DiscoveryError> {
        let what = || format!("DNS server {} over TCP", self.server);
        let mut s = TcpStream::connect_timeout(&self.server, self.timeout).map_err(because(what()))?;
        s.set_read_timeout(Some(self.timeout * 2)).map_err(because(what()))?;
        let mut out = (wire.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(wire);
        s.write_all(&out).map_err(because(what()))?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(because(what()))?;
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut body).map_err(because(what()))?;
        let m = Message::decode(&body).map_err(because(what()))?;
        Ok((body, m))
    }

    /// Asks for `name`/`qtype`.
    pub fn query(&self, name: &Name, qtype: u16) -> Result<Message, DiscoveryError> {
        let id = random_id();
        let q = Message::query(id, name.clone(), qtype);
        Ok(self.exchange(&q.encode(), id)?.1)
    }
}

/// The records of `rtype` owned by `name` in a message's answer and additional sections.
fn owned<'a>(m: &'a Message, name: &'a Name, t: u16) -> impl Iterator<Item = &'a RData> + 'a {
    m.answers.iter().chain(&m.additional).filter(move |r| r.rtype == t && r.name.eq_ci(name)).map(|r| &r.data)
}

/// Browses `_mydebug._tcp.<domain>`: every instance with its SRV, TXT and addresses
/// (taken from the additional section when the server sends them, else asked for).
pub fn browse(res: &Resolver, domain: &Name) -> Result<Vec<Found>, DiscoveryError> {
    let svc = service_name(domain).map_err(because(format!("domain {domain}")))?;
    let m = res.query(&svc, rtype::PTR)?;
    match m.rcode() {
        rcode::NOERROR => {}
        rcode::NXDOMAIN => return Ok(vec![]),
        c => return Err(invalid(format!("browsing {svc}: the DNS server {} answered {}", res.server, rcode::name(c)))),
    }
    let mut found = Vec::new();
    for data in owned(&m, &svc, rtype::PTR).take(MAX_BROWSE) {
        let RData::Ptr(full) = data else { continue };
        let Some([label]) = full.strip_suffix(&svc) else { continue };
        if let Some(f) = resolve_instance(res, full, label, &m, domain)? {
            found.push(f);
        }
    }
    found.sort_by(|a: &Found, b: &Found| a.instance.cmp(&b.instance));
    found.dedup_by(|a, b| a.instance == b.instance);
    Ok(found)
}

fn resolve_instance(
    res: &Resolver,
    full: &Name,
    label: &[u8],
    first: &Message,
    domain: &Name,
) -> Result<Option<Found>, DiscoveryError> {
    let asked;
    let srv_msg = if owned(first, full, rtype::SRV).next().is_some() {
        first
    } else {
        asked = res.query(full, rtype::SRV)?;
        &asked
    };
    let Some(RData::Srv { port, target, .. }) = owned(srv_msg, full, rtype::SRV).next().cloned() else {
        return Ok(None);
    };
    let txt_asked;
    let txt_msg = if owned(srv_msg, full, rtype::TXT).next().is_some() {
        srv_msg
    } else {
        txt_asked = res.query(full, rtype::TXT)?;
        &txt_asked
    };
    let txt = match owned(txt_msg, full, rtype::TXT).next() {
        Some(RData::Txt(s)) => dns::txt_pairs(s).into_iter().collect(),
        _ => Default::default(),
    };
    let mut addresses: Vec<IpAddr> = Vec::new();
    let pick = |m: &Message, out: &mut Vec<IpAddr>| {
        for d in owned(m, &target, rtype::A).chain(owned(m, &target, rtype::AAAA)) {
            match d {
                RData::A(a) => out.push(IpAddr::V4(*a)),
                RData::Aaaa(a) => out.push(IpAddr::V6(*a)),
                _ => {}
            }
        }
    };
    pick(srv_msg, &mut addresses);
    if addresses.is_empty() {
        for t in [rtype::A, rtype::AAAA] {
            pick(&res.query(&target, t)?, &mut addresses);
        }
    }
    addresses.sort();
    addresses.dedup();
    Ok(Some(Found {
        instance: String::from_utf8_lossy(label).into_owned(),
        host: format!("{target}."),
        addresses,
        port,
        txt,
        domain: domain.to_string(),
    }))
}

/// What the daemon registers, and where.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The domain browsed (`lab.example`).
    pub domain: Name,
    /// The authoritative server taking updates.
    pub server: SocketAddr,
    /// The TSIG key.
    pub key: Key,
    /// Instance name (before conflict renaming).
    pub name: String,
    /// How often the records are refreshed (their TTL is twice that).
    pub refresh: Duration,
}

/// What the registrar has done, for HELLO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The instance name registered (after renaming).
    pub instance: Option<String>,
    /// Whether the records are in place as of the last update.
    pub registered: bool,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Whether an attempt has been made yet.
    pub tried: bool,
}

/// A running registration: the thread that keeps it, and its state.
#[derive(Debug)]
pub struct Registrar {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    state: Arc<Mutex<State>>,
}

impl Registrar {
    /// The state now.
    pub fn state(&self) -> State {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A handle to the state, for readers elsewhere.
    pub fn state_handle(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    /// Deletes the records (like mDNS goodbye) and stops; at most a few seconds.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// The records of one registration.
struct Records {
    plan: Plan,
    /// `_mydebug._tcp.<domain>`.
    svc: Name,
    res: Resolver,
    zone: Option<Name>,
    port: u16,
    host: Name,
    address: IpAddr,
    txt: Vec<Vec<u8>>,
    hostid: String,
}

/// Starts registering the rig listening on `listen` with `txt`; returns at once, the
/// thread makes the first update. Call before seccomp (it picks its source address now).
pub fn register(plan: Plan, listen: SocketAddr, txt: Vec<(String, String)>) -> Result<Registrar, DiscoveryError> {
    let address = if listen.ip().is_unspecified() {
        // The address the server would see us from: the route towards it (no packet sent).
        let any: SocketAddr =
            if plan.server.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal");
        let s = UdpSocket::bind(any).map_err(because("DNS-SD: a socket"))?;
        s.connect(plan.server).map_err(because(format!("DNS-SD: no route to the DNS server {}", plan.server)))?;
        s.local_addr().map_err(because("DNS-SD"))?.ip()
    } else {
        listen.ip()
    };
    let hostname =
        nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "rig".into());
    let host_label: String = format!("{}-{}", hostname.split('.').next().unwrap_or("rig"), listen.port())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .take(dns::MAX_LABEL)
        .collect();
    let host = plan.domain.prepend(host_label.as_bytes()).map_err(because("DNS-SD host name"))?;
    let svc = service_name(&plan.domain).map_err(because("DNS-SD service name"))?;
    let hostid = txt.iter().find(|(k, _)| k == "hostid").map(|(_, v)| v.clone()).unwrap_or_default();
    let mut res = Resolver::new(plan.server);
    res.tcp = false;
    let mut recs =
        Records { plan, svc, res, zone: None, port: listen.port(), host, address, txt: dns::txt_strings(&txt), hostid };
    let state = Arc::new(Mutex::new(State::default()));
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (up_tx, up) = std::sync::mpsc::channel::<()>();
    let shared = state.clone();
    let thread = std::thread::Builder::new()
        .name("dns-sd".into())
        .spawn(move || {
            let _ = up_tx.send(());
            recs.keep(&shared, &stopped);
        })
        .map_err(because("DNS-SD thread"))?;
    up.recv().map_err(|_| invalid("DNS-SD: the thread died at start"))?;
    Ok(Registrar { stop, thread, state })
}

impl Records {
    fn ttl(&self) -> u32 {
        (self.plan.refresh.as_secs() * 2).clamp(10, 86_400) as u32
    }

    fn instance(&self, name: &str) -> Result<Name, String> {
        self.svc.prepend(name.as_bytes()).map_err(|e| format!("instance name {name:?}: {e}"))
    }

    /// Registers, refreshes every `refresh` (retrying sooner after a failure), and
    /// deletes the records when told to stop.
    fn keep(&mut self, state: &Mutex<State>, stopped: &std::sync::mpsc::Receiver<()>) {
        let mut name: Option<String> = None;
        let mut backoff = Duration::from_secs(2);
        let mut said: Option<String> = None;
        loop {
            let result = match &name {
                Some(n) => self.refresh(n).and_then(|kept| match kept {
                    true => Ok(n.clone()),
                    false => self.register_new(),
                }),
                None => self.register_new(),
            };
            let wait = match result {
                Ok(n) => {
                    if name.as_ref() != Some(&n) {
                        log::info!("registered {n:?} in DNS-SD domain {} at {}", self.plan.domain, self.plan.server);
                    }
                    name = Some(n.clone());
                    backoff = Duration::from_secs(2);
                    said = None;
                    if let Ok(mut s) = state.lock() {
                        *s = State { instance: Some(n), registered: true, error: None, tried: true };
                    }
                    self.plan.refresh
                }
                Err(e) => {
                    if said.as_ref() != Some(&e) {
                        log::warn!(
                            "DNS-SD registration in {} at {}: {e} (retrying)",
                            self.plan.domain,
                            self.plan.server
                        );
                        said = Some(e.clone());
                    }
                    if let Ok(mut s) = state.lock() {
                        s.registered = false;
                        s.error = Some(e);
                        s.tried = true;
                    }
                    let w = backoff.min(self.plan.refresh);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    w
                }
            };
            match stopped.recv_timeout(wait) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                _ => break,
            }
        }
        if let Some(n) = name {
            match self.withdraw(&n) {
                Ok(()) => log::info!("withdrew {n:?} from DNS-SD domain {}", self.plan.domain),
                Err(e) => log::warn!("DNS-SD: could not withdraw {n:?} from {}: {e}", self.plan.domain),
            }
        }
    }

    /// The zone holding the domain: the owner of the SOA the server answers with.
    fn zone(&mut self) -> Result<Name, String> {
        if let Some(z) = &self.zone {
            return Ok(z.clone());
        }
        let m = self.res.query(&self.plan.domain, rtype::SOA).map_err(|e| shared::chain(&e))?;
        let soa = m.answers.iter().chain(&m.authority).find(|r| r.rtype == rtype::SOA).map(|r| r.name.clone());
        let z = soa.filter(|z| self.plan.domain.ends_with(z)).ok_or_else(|| {
            format!(
                "the DNS server {} does not serve {} (no SOA in its answer, {})",
                self.plan.server,
                self.plan.domain,
                rcode::name(m.rcode())
            )
        })?;
        self.zone = Some(z.clone());
        Ok(z)
    }

    /// Sends a signed UPDATE; returns the response code once the answer's signature
    /// checks out.
    fn update(&mut self, prerequisites: Vec<Record>, updates: Vec<Record>) -> Result<u8, String> {
        let zone = self.zone()?;
        let id = random_id();
        let mut wire = Message::update(id, zone, prerequisites, updates).encode();
        let mac = tsig::sign(&mut wire, &self.plan.key, unix_now());
        let (raw, answer) = self.res.exchange(&wire, id).map_err(|e| shared::chain(&e))?;
        tsig::verify(&raw, &answer, &self.plan.key, &mac, unix_now())?;
        Ok(answer.rcode())
    }

    fn adds(&self, inst: &Name) -> Vec<Record> {
        let ttl = self.ttl();
        let addr = match self.address {
            IpAddr::V4(a) => RData::A(a),
            IpAddr::V6(a) => RData::Aaaa(a),
        };
        vec![
            delete_set(&self.host, rtype::A),
            delete_set(&self.host, rtype::AAAA),
            Record::new(self.host.clone(), ttl, addr),
            delete_set(inst, rtype::SRV),
            Record::new(
                inst.clone(),
                ttl,
                RData::Srv { priority: 0, weight: 0, port: self.port, target: self.host.clone() },
            ),
            Record::new(inst.clone(), ttl, RData::Txt(self.txt.clone())),
            Record::new(self.svc.clone(), ttl, RData::Ptr(inst.clone())),
        ]
    }

    /// Our TXT set exists exactly as we wrote it (the records are still ours).
    fn ours(&self, inst: &Name) -> Record {
        Record { ttl: 0, ..Record::new(inst.clone(), 0, RData::Txt(self.txt.clone())) }
    }

    /// Registers under the first free name: `name`, `name (2)`... A name held by records
    /// of this very rig (same host id and port: a crash left them) is taken back.
    fn register_new(&mut self) -> Result<String, String> {
        for n in 1..=20 {
            let name = if n == 1 {
                self.plan.name.clone()
            } else {
                let suffix = format!(" ({n})");
                format!(
                    "{}{suffix}",
                    crate::clip(&self.plan.name[..self.plan.name.len().min(crate::MAX_NAME - suffix.len())])
                )
            };
            let name = crate::clip(&name);
            let inst = self.instance(&name)?;
            let not_in_use =
                Record { name: inst.clone(), rtype: rtype::ANY, class: class::NONE, ttl: 0, data: RData::Empty };
            let adds = self.adds(&inst);
            match self.update(vec![not_in_use], adds.clone())? {
                rcode::NOERROR => return Ok(name),
                rcode::YXDOMAIN if self.stale_ours(&inst) => {
                    let mut all = vec![delete_set(&inst, rtype::TXT)];
                    all.extend(adds);
                    return match self.update(vec![], all)? {
                        rcode::NOERROR => Ok(name),
                        c => Err(update_refused(c)),
                    };
                }
                rcode::YXDOMAIN => continue,
                c => return Err(update_refused(c)),
            }
        }
        Err(format!("the names {:?} to {:?} (20) are all taken", self.plan.name, format!("{} (20)", self.plan.name)))
    }

    /// Whether `inst` holds this rig's own records (same host id and port).
    fn stale_ours(&self, inst: &Name) -> bool {
        let Ok(m) = self.res.query(inst, rtype::TXT) else { return false };
        let same_host = owned(&m, inst, rtype::TXT).any(|d| match d {
            RData::Txt(s) => dns::txt_pairs(s).iter().any(|(k, v)| k == "hostid" && *v == self.hostid),
            _ => false,
        });
        let Ok(m) = self.res.query(inst, rtype::SRV) else { return false };
        let same_port = owned(&m, inst, rtype::SRV).any(|d| matches!(d, RData::Srv { port, .. } if *port == self.port));
        same_host && same_port
    }

    /// Refreshes; `false` when our records are gone (re-register).
    fn refresh(&mut self, name: &str) -> Result<bool, String> {
        let inst = self.instance(name)?;
        let adds = self.adds(&inst);
        match self.update(vec![self.ours(&inst)], adds)? {
            rcode::NOERROR => Ok(true),
            rcode::NXRRSET | rcode::NXDOMAIN => Ok(false),
            c => Err(update_refused(c)),
        }
    }

    /// Deletes our records (if they are still ours).
    fn withdraw(&mut self, name: &str) -> Result<(), String> {
        let inst = self.instance(name)?;
        let svc = self.svc.clone();
        let deletes = vec![
            Record { class: class::NONE, ttl: 0, ..Record::new(svc, 0, RData::Ptr(inst.clone())) },
            delete_set(&inst, rtype::SRV),
            delete_set(&inst, rtype::TXT),
            delete_set(&self.host, rtype::A),
            delete_set(&self.host, rtype::AAAA),
        ];
        match self.update(vec![self.ours(&inst)], deletes)? {
            rcode::NOERROR | rcode::NXRRSET | rcode::NXDOMAIN => Ok(()),
            c => Err(update_refused(c)),
        }
    }
}

/// An UPDATE entry deleting the set `t` at `name` (by type, never ANY: a server's policy
/// may then allow exactly the types a rig writes).
fn delete_set(name: &Name, t: u16) -> Record {
    Record { name: name.clone(), rtype: t, class: class::ANY, ttl: 0, data: RData::Empty }
}

fn update_refused(code: u8) -> String {
    match code {
        rcode::REFUSED => {
            "the DNS server refused the update (REFUSED: does its zone allow updates with this key?)".into()
        }
        rcode::NOTAUTH => "the DNS server is not authoritative for the zone or refused the key (NOTAUTH)".into(),
        rcode::NOTZONE => "a record is outside the zone (NOTZONE)".into(),
        c => format!("the DNS server answered the update with {}", rcode::name(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_with_and_without_ports() {
        assert_eq!(parse_server("10.77.0.1").unwrap(), "10.77.0.1:53".parse().unwrap());
        assert_eq!(parse_server("10.77.0.1:5353").unwrap(), "10.77.0.1:5353".parse().unwrap());
        assert_eq!(parse_server("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert_eq!(parse_server("[::1]:54").unwrap(), "[::1]:54".parse().unwrap());
        assert_eq!(parse_server("localhost:55").unwrap().port(), 55);
    }

    #[test]
    fn the_service_name_is_under_the_domain() {
        let d = Name::parse("lab.example").unwrap();
        assert_eq!(service_name(&d).unwrap().to_string(), "_mydebug._tcp.lab.example");
    }

    /// A server that answers every query with a pointer to a loop of names and a flood
    /// of PTRs: browse stays bounded and errors out cleanly.
    #[test]
    fn a_hostile_server_is_bounded() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..4 {
                let Ok((n, from)) = server.recv_from(&mut buf) else { return };
                let q = Message::decode(&buf[..n]).unwrap();
                let svc = q.questions[0].name.clone();
                let mut m = Message { id: q.id, flags: dns::FLAG_QR, questions: q.questions, ..Message::default() };
                // PTRs to names that are not one label under the service: ignored.
                for i in 0..50u8 {
                    m.answers.push(Record::new(svc.clone(), 1, RData::Ptr(Name::parse(&format!("x{i}.y.z")).unwrap())));
                }
                let _ = server.send_to(&m.encode(), from);
            }
        });
        let mut r = Resolver::new(addr);
        r.timeout = Duration::from_millis(300);
        let found = browse(&r, &Name::parse("lab.example").unwrap()).unwrap();
        assert!(found.is_empty());
        drop(t);
        // Nothing listening: a clear error, quickly.
        let dead = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut r = Resolver::new(dead);
        r.timeout = Duration::from_millis(200);
        let e = shared::chain(&browse(&r, &Name::parse("lab.example").unwrap()).unwrap_err());
        assert!(e.contains("refused") || e.contains("no answer"), "{e}");
    }
}
