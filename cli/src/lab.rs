//! A lab of rigs: finding them (mDNS on the local link, unicast DNS-SD in the configured
//! domains), asking each its load (HELLO), and choosing one for a binary: `--rig any`,
//! `--rig 'any:arch=aarch64,domain=lab.example'`. A rig is chosen among those whose
//! `arch` matches the file's ELF machine and whose authentication we have a token for,
//! least loaded first; one that refuses with `limit_reached` passes to the next.

use crate::config::{token_for, UserConfig};
use crate::conn::{Conn, Refused, Target};
use anyhow::{anyhow, bail, Context, Result};
use discovery::Found;
use proto::reply::{Hello, Loaded};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where to look for rigs.
#[derive(Debug, Clone, Default)]
pub struct Lab {
    /// Unicast DNS-SD domains.
    pub domains: Vec<String>,
    /// The DNS server to ask (default: /etc/resolv.conf's).
    pub dns_server: Option<String>,
    /// Also browse mDNS on the local link.
    pub mdns: bool,
    /// How long mDNS listens.
    pub mdns_wait: Duration,
}

impl Lab {
    /// `--domain` flags replace the config file's `domains`; mDNS is always asked unless
    /// `only_domains` (`discover --domain`).
    pub fn new(config: &UserConfig, domains: &[String], dns_server: Option<String>, only_domains: bool) -> Lab {
        let given = !domains.is_empty();
        Lab {
            domains: if given { domains.to_vec() } else { config.domains.clone() },
            dns_server: dns_server.or_else(|| config.dns_server.clone()),
            mdns: !(only_domains && given),
            mdns_wait: Duration::from_secs(3),
        }
    }

    fn resolver(&self) -> Result<discovery::unicast::Resolver> {
        Ok(match &self.dns_server {
            Some(s) => discovery::unicast::Resolver::new(discovery::unicast::parse_server(s)?),
            None => discovery::unicast::Resolver::system()?,
        })
    }

    /// Every rig found: unicast domains (quick) and mDNS (for `mdns_wait`) side by side.
    /// A domain that cannot be browsed is said on stderr and skipped.
    pub fn find(&self) -> Result<Vec<Found>> {
        let wait = self.mdns_wait;
        let mdns = self.mdns.then(|| std::thread::spawn(move || discovery::discover(wait)));
        let mut found = Vec::new();
        if !self.domains.is_empty() {
            let res = self.resolver()?;
            for d in &self.domains {
                let name = discovery::dns::Name::parse(d).map_err(|e| anyhow!("domain {d:?}: {e}"))?;
                match discovery::unicast::browse(&res, &name) {
                    Ok(f) => found.extend(f),
                    Err(e) => eprintln!("lantern: cannot browse {d}: {:#}", anyhow::Error::new(e)),
                }
            }
        }
        if let Some(t) = mdns {
            match t.join() {
                Ok(Ok(f)) => found.extend(f),
                Ok(Err(e)) if found.is_empty() && self.domains.is_empty() => return Err(e.into()),
                Ok(Err(e)) => eprintln!("lantern: mDNS: {:#}", anyhow::Error::new(e)),
                Err(_) => bail!("the mDNS browser panicked"),
            }
        }
        Ok(dedup(found))
    }
}

/// One rig seen both by mDNS and in a domain (same host id and port) is listed once,
/// as the domain has it.
fn dedup(found: Vec<Found>) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    for f in found {
        let key = |r: &Found| (r.txt.get("hostid").cloned(), r.port, r.instance.clone());
        if let Some(i) = out.iter().position(|o| key(o) == key(&f) && o.txt.contains_key("hostid")) {
            if out[i].domain == "local" && f.domain != "local" {
                out[i] = f;
            }
            continue;
        }
        out.push(f);
    }
    out
}

/// The address to connect to (IPv4 first).
pub fn address(r: &Found) -> Option<String> {
    let ip = r.addresses.iter().find(|a| a.is_ipv4()).or(r.addresses.first())?;
    Some(std::net::SocketAddr::new(*ip, r.port).to_string())
}

/// A rig and what it said to HELLO.
#[derive(Debug, serde::Serialize)]
pub struct Probed {
    /// The rig as found.
    #[serde(flatten)]
    pub found: Found,
    /// Where we connected.
    pub address: Option<String>,
    /// Whether it answered.
    pub reachable: bool,
    /// Its HELLO (limits, load), when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hello: Option<Hello>,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The token to use (never printed).
    #[serde(skip)]
    pub token: Option<String>,
}

/// The token for a found rig: its instance name's, its address's, or the default.
fn token_of(r: &Found, addr: Option<&str>, config: &UserConfig, token_file: Option<&Path>) -> Result<Option<String>> {
    if let Some(t) = token_for(token_file, config, &r.instance)? {
        return Ok(Some(t));
    }
    match addr {
        Some(a) => token_for(token_file, config, a),
        None => Ok(None),
    }
}

/// Asks every rig HELLO, at the same time (at most 3 s each).
pub fn probe(found: Vec<Found>, config: &UserConfig, token_file: Option<&Path>) -> Result<Vec<Probed>> {
    let mut jobs = Vec::new();
    for f in found {
        let address = address(&f);
        let token = token_of(&f, address.as_deref(), config, token_file)?;
        jobs.push(std::thread::spawn(move || {
            let Some(addr) = address.clone() else {
                return Probed {
                    found: f,
                    address,
                    reachable: false,
                    hello: None,
                    error: Some("no address".into()),
                    token,
                };
            };
            let hello = hello(&addr, token.as_deref());
            match hello {
                Ok(h) => Probed { found: f, address, reachable: true, hello: Some(h), error: None, token },
                Err(e) => {
                    Probed { found: f, address, reachable: false, hello: None, error: Some(format!("{e:#}")), token }
                }
            }
        }));
    }
    jobs.into_iter().map(|j| j.join().map_err(|_| anyhow!("a probe panicked"))).collect()
}

fn hello(addr: &str, token: Option<&str>) -> Result<Hello> {
    let sock: std::net::SocketAddr = addr.parse().context("address")?;
    let s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .with_context(|| format!("cannot reach {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut c = Conn::from_stream(s, token.is_none())?;
    if let Some(t) = token {
        c.call::<proto::reply::Authed>(proto::Command::Auth(t.to_string())).context("authenticating")?;
    }
    c.call::<Hello>(proto::Command::Hello)
}

/// `any[:KEY=VALUE,...]`: the filters, or `None` when `rig` does not ask for any rig.
pub fn any_filters(rig: &str) -> Result<Option<BTreeMap<String, String>>> {
    let Some(rest) = rig.strip_prefix("any") else { return Ok(None) };
    let rest = match rest.strip_prefix(':') {
        Some(r) => r,
        None if rest.is_empty() => "",
        None => return Ok(None),
    };
    let mut f = BTreeMap::new();
    for part in rest.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| anyhow!("--rig any: want KEY=VALUE, not {part:?}"))?;
        let k = k.trim().to_ascii_lowercase();
        if !matches!(k.as_str(), "arch" | "auth" | "domain" | "name") {
            bail!("--rig any: unknown filter {k:?} (arch, auth, domain, name)");
        }
        f.insert(k, v.trim().to_string());
    }
    Ok(Some(f))
}

/// The architecture a rig must have to run `path` (`None`: any, e.g. a script), in the
/// names rigs advertise (Rust's `std::env::consts::ARCH`).
pub fn arch_of(path: &Path, exec: Option<&str>) -> Result<Option<String>> {
    let head = program_head(path, exec)?;
    Ok(head.as_deref().and_then(elf_arch).map(str::to_string))
}

/// The first bytes of the program to run: the file, the bundle directory's `exec`, or
/// that entry of a `.tar.gz`.
fn program_head(path: &Path, exec: Option<&str>) -> Result<Option<Vec<u8>>> {
    let read_head = |p: &Path| -> Result<Vec<u8>> {
        let mut b = vec![0u8; 64];
        let mut f = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
        let n = f.read(&mut b)?;
        b.truncate(n);
        Ok(b)
    };
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_dir() {
        let Some(e) = exec else { return Ok(None) };
        return read_head(&PathBuf::from(path).join(e)).map(Some);
    }
    let head = read_head(path)?;
    if !head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Some(head));
    }
    let Some(e) = exec else { return Ok(None) };
    let want = e.trim_start_matches("./").trim_start_matches('/');
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(path)?);
    tar_entry_head(gz, want)
}

/// The first 64 bytes of entry `want` of a tar stream (ustar names with prefixes).
fn tar_entry_head(mut r: impl Read, want: &str) -> Result<Option<Vec<u8>>> {
    let mut block = [0u8; 512];
    let mut long_name: Option<String> = None;
    loop {
        if r.read_exact(&mut block).is_err() || block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let field = |a: usize, b: usize| {
            let f = &block[a..b];
            String::from_utf8_lossy(&f[..f.iter().position(|&c| c == 0).unwrap_or(f.len())]).into_owned()
        };
        let size_text = field(124, 136);
        let size = u64::from_str_radix(size_text.trim(), 8).unwrap_or(0);
        let (kind, prefix, name) = (block[156], field(345, 500), field(0, 100));
        let mut name = match long_name.take() {
            Some(n) => n,
            None if prefix.is_empty() => name,
            None => format!("{prefix}/{name}"),
        };
        let padded = size.div_ceil(512) * 512;
        let mut body = (&mut r).take(padded);
        if kind == b'L' || kind == b'x' {
            let mut data = Vec::new();
            body.read_to_end(&mut data)?;
            data.truncate(size as usize);
            if kind == b'L' {
                long_name = Some(String::from_utf8_lossy(&data).trim_end_matches('\0').to_string());
            } else if let Some(p) = pax_path(&data) {
                long_name = Some(p);
            }
            continue;
        }
        name = name.trim_start_matches("./").to_string();
        if name == want && matches!(kind, b'0' | 0) {
            let mut head = vec![0u8; 64.min(size as usize)];
            body.read_exact(&mut head)?;
            return Ok(Some(head));
        }
        std::io::copy(&mut body, &mut std::io::sink())?;
    }
}

fn pax_path(data: &[u8]) -> Option<String> {
    String::from_utf8_lossy(data).lines().find_map(|l| l.split_once(" path=").map(|(_, p)| p.to_string()))
}

/// An ELF header's machine, as rigs name architectures.
pub fn elf_arch(head: &[u8]) -> Option<&'static str> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let class64 = head[4] == 2;
    let machine =
        if head[5] == 2 { u16::from_be_bytes([head[18], head[19]]) } else { u16::from_le_bytes([head[18], head[19]]) };
    Some(match (machine, class64) {
        (62, _) => "x86_64",
        (3, _) => "x86",
        (183, _) => "aarch64",
        (40, _) => "arm",
        (243, true) => "riscv64",
        (243, false) => "riscv32",
        (21, _) => "powerpc64",
        (20, _) => "powerpc",
        (22, _) => "s390x",
        (258, _) => "loongarch64",
        (8, true) => "mips64",
        (8, false) => "mips",
        (2, _) | (43, _) => "sparc64",
        _ => "unknown",
    })
}

/// The rigs `--rig any...` may use for `path`, best first, each with its target.
pub fn candidates(
    lab: &Lab,
    filters: &BTreeMap<String, String>,
    path: &Path,
    exec: Option<&str>,
    config: &UserConfig,
    token_file: Option<&Path>,
) -> Result<Vec<(Probed, Target)>> {
    let arch = match filters.get("arch") {
        Some(a) => Some(a.clone()),
        None => arch_of(path, exec)?,
    };
    let size = std::fs::metadata(path).map(|m| if m.is_file() { m.len() } else { 0 }).unwrap_or(0);
    let found = lab.find()?;
    if found.is_empty() {
        let places = if lab.domains.is_empty() {
            "the local network".to_string()
        } else {
            format!("the local network and {}", lab.domains.join(", "))
        };
        bail!("--rig any: no rig answered on {places} (lantern discover lists them)");
    }
    let all_arches: Vec<String> = {
        let mut a: Vec<String> =
            found.iter().map(|f| f.txt.get("arch").cloned().unwrap_or_else(|| "?".into())).collect();
        a.sort();
        a.dedup();
        a
    };
    let fits = |f: &Found| {
        arch.as_ref().is_none_or(|a| f.txt.get("arch") == Some(a))
            && filters.get("auth").is_none_or(|v| f.txt.get("auth") == Some(v))
            && filters
                .get("domain")
                .is_none_or(|v| f.domain.trim_end_matches('.').eq_ignore_ascii_case(v.trim_end_matches('.')))
            && filters.get("name").is_none_or(|v| f.instance.eq_ignore_ascii_case(v))
    };
    let (matching, _): (Vec<Found>, Vec<Found>) = found.into_iter().partition(|f| fits(f));
    if matching.is_empty() {
        if !filters.is_empty() {
            let f: Vec<String> = filters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            bail!("--rig any: no rig found matches {}; the rigs found have: {}", f.join(","), all_arches.join(", "));
        }
        let what = arch.as_deref().unwrap_or("any architecture");
        bail!(
            "--rig any: no rig found can run {} ({what}); the rigs found have: {}",
            path.display(),
            all_arches.join(", ")
        );
    }
    let mut probed = probe(matching, config, token_file)?;
    let mut why_not = Vec::new();
    probed.retain(|p| {
        let name = &p.found.instance;
        let Some(h) = &p.hello else {
            why_not.push(format!("{name}: {}", p.error.as_deref().unwrap_or("unreachable")));
            return false;
        };
        if h.auth_required && p.token.is_none() {
            why_not.push(format!("{name}: wants a token and we have none for it"));
            return false;
        }
        if let Some(l) = h.load {
            if l.sessions >= l.max_sessions {
                why_not.push(format!("{name}: full ({} of {} sessions)", l.sessions, l.max_sessions));
                return false;
            }
            if l.bytes_free < size {
                why_not.push(format!("{name}: {} bytes free, the file has {size}", l.bytes_free));
                return false;
            }
        }
        if h.limits.max_upload < size {
            why_not.push(format!("{name}: takes uploads of at most {} bytes", h.limits.max_upload));
            return false;
        }
        true
    });
    if probed.is_empty() {
        bail!("--rig any: no rig that can run {} has room: {}", path.display(), why_not.join("; "));
    }
    probed.sort_by(|a, b| load_key(a).partial_cmp(&load_key(b)).unwrap_or(std::cmp::Ordering::Equal));
    Ok(probed
        .into_iter()
        .map(|p| {
            let t = Target { rig: p.address.clone().unwrap_or_default(), token: p.token.clone() };
            (p, t)
        })
        .collect())
}

/// Least loaded first: the share of sessions used, then of running ones, then free bytes.
fn load_key(p: &Probed) -> (f64, f64, f64) {
    match p.hello.as_ref().and_then(|h| h.load) {
        Some(l) => {
            let max = l.max_sessions.max(1) as f64;
            (l.sessions as f64 / max, l.running as f64 / max, -(l.bytes_free as f64))
        }
        None => (1.0, 1.0, 0.0),
    }
}

/// Says which rig was chosen (stderr).
pub fn say_chosen(p: &Probed) {
    let load = p.hello.as_ref().and_then(|h| h.load);
    eprintln!(
        "lantern: rig {:?} at {} ({}){}",
        p.found.instance,
        p.address.as_deref().unwrap_or("?"),
        if p.found.domain == "local" { "mDNS".to_string() } else { p.found.domain.clone() },
        load.map_or(String::new(), |l| format!(": {} of {} sessions loaded", l.sessions, l.max_sessions))
    );
}

/// Where a command goes: one named rig, or the best of several.
#[derive(Debug)]
pub enum Place {
    /// The rig named by `--rig`.
    One(Target),
    /// `--rig any`: candidates, best first.
    Any(Vec<(Probed, Target)>),
}

/// The rig that took the upload, its connection, and its reply.
pub struct Placed {
    /// The rig.
    pub target: Target,
    /// The connection the upload went over.
    pub conn: Conn,
    /// UPLOAD's reply.
    pub loaded: Loaded,
    /// The rig, when chosen by `--rig any`.
    pub chosen: Option<Probed>,
}

/// Uploads to the rig, or to the first candidate that takes it: a `limit_reached`
/// refusal or an unreachable rig passes to the next.
pub fn upload(place: Place, path: &Path, exec: Option<String>, name: Option<String>) -> Result<Placed> {
    match place {
        Place::One(target) => {
            let mut conn = Conn::open(&target)?;
            let loaded = crate::ops::upload(&mut conn, path, exec, name)?;
            Ok(Placed { target, conn, loaded, chosen: None })
        }
        Place::Any(list) => {
            let n = list.len();
            let mut last: Option<anyhow::Error> = None;
            for (i, (p, target)) in list.into_iter().enumerate() {
                let mut conn = match Conn::open(&target) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("lantern: rig {:?}: {e:#}; trying the next", p.found.instance);
                        last = Some(e);
                        continue;
                    }
                };
                match crate::ops::upload(&mut conn, path, exec.clone(), name.clone()) {
                    Ok(loaded) => {
                        say_chosen(&p);
                        return Ok(Placed { target, conn, loaded, chosen: Some(p) });
                    }
                    Err(e) if is_limit(&e) && i + 1 < n => {
                        eprintln!("lantern: rig {:?} refused: {e:#}; trying the next", p.found.instance);
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or_else(|| anyhow!("--rig any: no rig took the upload")))
        }
    }
}

fn is_limit(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>().is_some_and(|r| r.0.error == proto::Code::LimitReached)
}

/// With `--rig any`, the rig that holds session `id` (asked with STATUS).
pub fn holding(lab: &Lab, id: uuid::Uuid, config: &UserConfig, token_file: Option<&Path>) -> Result<Target> {
    let found = lab.find()?;
    let probed = probe(found, config, token_file)?;
    for p in probed.into_iter().filter(|p| p.reachable) {
        let t = Target { rig: p.address.clone().unwrap_or_default(), token: p.token.clone() };
        let Ok(mut c) = Conn::open(&t) else { continue };
        if c.call::<proto::reply::Status>(proto::Command::Status(id)).is_ok() {
            say_chosen(&p);
            return Ok(t);
        }
    }
    bail!("--rig any: no rig found holds session {id}")
}

/// The chosen rig, for `--json` output.
pub fn chosen_json(p: &Probed) -> serde_json::Value {
    serde_json::json!({
        "instance": p.found.instance,
        "address": p.address,
        "domain": p.found.domain,
        "arch": p.found.txt.get("arch"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        assert_eq!(any_filters("rig.lan:4444").unwrap(), None);
        assert_eq!(any_filters("anything").unwrap(), None);
        assert_eq!(any_filters("any").unwrap(), Some(BTreeMap::new()));
        let f = any_filters("any:arch=aarch64, domain=lab.example").unwrap().unwrap();
        assert_eq!(f.get("arch").map(String::as_str), Some("aarch64"));
        assert_eq!(f.get("domain").map(String::as_str), Some("lab.example"));
        assert!(any_filters("any:colour=red").is_err());
        assert!(any_filters("any:arch").is_err());
    }

    #[test]
    fn elf_machines_are_named_as_rigs_name_them() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_arch(&exe[..64]), Some(std::env::consts::ARCH));
        let mut h = exe[..64].to_vec();
        h[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(elf_arch(&h), Some("aarch64"));
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn a_tar_entry_is_found_by_name() {
        let dir = std::env::temp_dir().join(format!("lantern-lab-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/app"), b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\xb7\0rest").unwrap();
        std::fs::write(dir.join("README"), b"hello").unwrap();
        let tgz = dir.join("b.tar.gz");
        std::fs::write(&tgz, crate::bundle::tar_gz(&dir.join("bin")).unwrap()).unwrap();
        assert_eq!(arch_of(&tgz, Some("app")).unwrap().as_deref(), Some("aarch64"));
        assert_eq!(arch_of(&tgz, Some("missing")).unwrap(), None);
        assert_eq!(arch_of(&dir, Some("bin/app")).unwrap().as_deref(), Some("aarch64"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_rig_seen_twice_is_listed_once_from_its_domain() {
        let f = |domain: &str| Found {
            instance: "r".into(),
            host: "h".into(),
            addresses: vec![],
            port: 1,
            txt: [("hostid".to_string(), "x".to_string())].into_iter().collect(),
            domain: domain.into(),
        };
        let d = dedup(vec![f("local"), f("lab.example")]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].domain, "lab.example");
    }
}
