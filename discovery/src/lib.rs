//! mDNS/DNS-SD advertisement of the rig (SPEC §9): `_mydebug._tcp.local.` on the control
//! port, with TXT records (`txtvers=1` first), on the interfaces the operator chooses —
//! by default the ones the control socket listens on, and none when it listens on
//! loopback only (unless `--mdns`). A conflicting instance name is renamed ("name (2)").
//! On shutdown the service is unregistered, which sends the goodbye packets.
//!
//! `mdns-sd` runs its own thread; it is started before the frontend's seccomp filter, and
//! we wait until it answers, so that its start-up is over before the filter is in force.
//! Every command to it opens a UDP socket to wake that thread, which the event loop's
//! own filter refuses (it keeps TCP only): the withdrawal at shutdown is therefore made
//! from a small control thread of ours, started with the responder.

pub mod dns;
pub mod tsig;
pub mod unicast;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Why mDNS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
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

pub(crate) fn invalid(why: impl Into<String>) -> DiscoveryError {
    DiscoveryError::Invalid(why.into())
}

pub(crate) fn because<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> DiscoveryError {
    let what = what.into();
    move |e| DiscoveryError::Because { what, source: e.into() }
}

/// The DNS-SD service type.
pub const SERVICE: &str = "_mydebug._tcp.local.";
/// Longest instance name (a DNS label).
pub const MAX_NAME: usize = 63;

/// What to advertise, and where.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Instance name (before conflict renaming).
    pub name: String,
    /// Interfaces by name (empty: decided from the listen address).
    pub interfaces: Vec<String>,
    /// Advertise even when listening on loopback only.
    pub force: bool,
    /// Authentication required on the control port.
    pub auth_required: bool,
    /// Most sessions (TXT `max_sessions`).
    pub max_sessions: usize,
}

/// A running advertisement: the instance name, and the thread that will withdraw it.
pub struct Advertiser {
    /// The instance name in use.
    pub name: String,
    fullname: String,
    stop: std::sync::mpsc::Sender<()>,
    control: std::thread::JoinHandle<()>,
}

/// The default instance name: `debuglantern @ <hostname>`, cut to 63 bytes.
pub fn default_name() -> String {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "rig".into());
    clip(&format!("debuglantern @ {host}"))
}

/// Cuts a name to [`MAX_NAME`] bytes on a character boundary.
pub fn clip(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// A stable id of this host: a hash of `/etc/machine-id` (or of the hostname), so that
/// clients can tell two rigs of the same name apart without learning the machine id.
pub fn host_id() -> String {
    use sha2::Digest;
    let seed = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/var/lib/dbus/machine-id"))
        .unwrap_or_else(|_| default_name());
    let h = sha2::Sha256::digest(format!("debuglantern host id\0{}", seed.trim()).as_bytes());
    hex::encode(&h[..8])
}

/// The TXT records, `txtvers` first: what a client needs to choose a rig, nothing that
/// changes while the daemon runs (the load is asked with HELLO).
pub fn txt(auth_required: bool, max_sessions: usize) -> Vec<(String, String)> {
    let arch = if cfg!(target_arch = "x86_64") { "x86_64" } else { std::env::consts::ARCH };
    vec![
        ("txtvers".into(), "1".into()),
        ("protovers".into(), "1".into()),
        ("auth".into(), if auth_required { "token" } else { "none" }.into()),
        ("arch".into(), arch.into()),
        ("hostid".into(), host_id()),
        ("version".into(), env!("CARGO_PKG_VERSION").into()),
        ("max_sessions".into(), max_sessions.to_string()),
    ]
}

/// Whether anything is advertised for this listen address and plan.
pub fn wanted(plan: &Plan, listen: SocketAddr) -> bool {
    !plan.interfaces.is_empty() || plan.force || !listen.ip().is_loopback()
}

/// Starts advertising. Blocks for about a second to look for a conflicting name.
pub fn start(plan: &Plan, listen: SocketAddr) -> Result<Advertiser, DiscoveryError> {
    let daemon = ServiceDaemon::new().map_err(because("mDNS"))?;
    // Interfaces: the operator's, else the one(s) we listen on.
    if !plan.interfaces.is_empty() || !listen.ip().is_unspecified() {
        daemon.disable_interface(IfKind::All).map_err(because("mDNS"))?;
        if plan.interfaces.is_empty() {
            let on = if listen.ip().is_loopback() { IfKind::LoopbackV4 } else { IfKind::Addr(listen.ip()) };
            daemon.enable_interface(on).map_err(because("mDNS"))?;
        } else {
            let names: Vec<IfKind> = plan.interfaces.iter().map(|n| IfKind::Name(n.clone())).collect();
            daemon.enable_interface(names).map_err(because("mDNS"))?;
        }
    } else {
        // Listening on every address: every interface but loopback.
        daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6]).map_err(because("mDNS"))?;
    }
    // The daemon's thread runs once it answers.
    daemon
        .get_metrics()
        .map_err(because("mDNS"))?
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| invalid("mDNS: the responder did not start"))?;
    let taken = names_on_the_network(&daemon, Duration::from_millis(1200));
    let name = free_name(&plan.name, &taken);
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "rig".into());
    let host = format!("{}.local.", host.split('.').next().unwrap_or("rig"));
    let props: Vec<(String, String)> = txt(plan.auth_required, plan.max_sessions);
    let props_ref: Vec<(&str, &str)> = props.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let addrs: &[IpAddr] = &[];
    let info = ServiceInfo::new(SERVICE, &name, &host, addrs, listen.port(), &props_ref[..])
        .map_err(because("mDNS service record"))?
        .enable_addr_auto();
    let fullname = info.get_fullname().to_string();
    daemon.register(info).map_err(because("mDNS"))?;
    // The control thread holds the responder until it is told to withdraw it; it reports
    // running before we return (libc's thread set-up must be over before seccomp).
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (up_tx, up) = std::sync::mpsc::channel::<()>();
    let goodbye = fullname.clone();
    let control = std::thread::Builder::new()
        .name("mdns-control".into())
        .spawn(move || {
            let _ = up_tx.send(());
            let _ = stopped.recv();
            if let Ok(rx) = daemon.unregister(&goodbye) {
                let _ = rx.recv_timeout(Duration::from_secs(2));
            }
            if let Ok(rx) = daemon.shutdown() {
                let _ = rx.recv_timeout(Duration::from_secs(2));
            }
        })
        .map_err(because("mDNS control thread"))?;
    up.recv().map_err(|_| invalid("mDNS: the control thread died at start"))?;
    Ok(Advertiser { name, fullname, stop, control })
}

/// Instance names of our service type that answer within `wait`.
fn names_on_the_network(daemon: &ServiceDaemon, wait: Duration) -> Vec<String> {
    let Ok(rx) = daemon.browse(SERVICE) else { return vec![] };
    let end = Instant::now() + wait;
    let mut names = Vec::new();
    while let Ok(ev) = rx.recv_deadline(end) {
        match ev {
            ServiceEvent::ServiceFound(_, full) => names.push(instance_of(&full)),
            ServiceEvent::ServiceResolved(info) => names.push(instance_of(info.get_fullname())),
            _ => {}
        }
    }
    let _ = daemon.stop_browse(SERVICE);
    names
}

fn instance_of(fullname: &str) -> String {
    fullname.strip_suffix(&format!(".{SERVICE}")).unwrap_or(fullname).to_string()
}

/// `name`, or `name (2)`, `name (3)`... whichever is not taken (cut to 63 bytes).
pub fn free_name(name: &str, taken: &[String]) -> String {
    let base = clip(name);
    if !taken.contains(&base) {
        return base;
    }
    (2..)
        .map(|n| {
            let suffix = format!(" ({n})");
            format!("{}{suffix}", clip(&base[..base.len().min(MAX_NAME - suffix.len())]))
        })
        .find(|c| !taken.contains(c))
        .expect("some suffix is free")
}

impl std::fmt::Debug for Advertiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertiser").field("fullname", &self.fullname).finish()
    }
}

impl Advertiser {
    /// Withdraws the service (goodbye packets) and stops the responder, from the control
    /// thread; returns when that is done (at most about 4 s).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.control.join();
    }
}

/// A rig found on the network.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    /// Instance name.
    pub instance: String,
    /// Host name it advertises.
    pub host: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Control port.
    pub port: u16,
    /// TXT records.
    pub txt: BTreeMap<String, String>,
    /// Where it was found: `local` (mDNS) or the unicast DNS-SD domain.
    pub domain: String,
}

/// Browses for rigs for `wait` (for `lantern discover`).
pub fn discover(wait: Duration) -> Result<Vec<Found>, DiscoveryError> {
    let daemon = ServiceDaemon::new().map_err(because("mDNS"))?;
    let _ = daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6]);
    let rx = daemon.browse(SERVICE).map_err(because("mDNS"))?;
    let end = Instant::now() + wait;
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    while let Ok(ev) = rx.recv_deadline(end) {
        match ev {
            ServiceEvent::ServiceResolved(info) => {
                let instance = instance_of(info.get_fullname());
                let mut addresses: Vec<IpAddr> = info.get_addresses().iter().copied().collect();
                addresses.sort();
                let txt =
                    info.get_properties().iter().map(|p| (p.key().to_string(), p.val_str().to_string())).collect();
                found.insert(
                    instance.clone(),
                    Found {
                        instance,
                        host: info.get_hostname().to_string(),
                        addresses,
                        port: info.get_port(),
                        txt,
                        domain: "local".into(),
                    },
                );
            }
            ServiceEvent::ServiceRemoved(_, full) => {
                found.remove(&instance_of(&full));
            }
            _ => {}
        }
    }
    if let Ok(rx) = daemon.shutdown() {
        let _ = rx.recv_timeout(Duration::from_secs(1));
    }
    Ok(found.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_clipped_and_conflicts_renamed() {
        let long = "x".repeat(100);
        assert_eq!(clip(&long).len(), 63);
        assert_eq!(clip(&"é".repeat(40)).len(), 62, "cut on a character boundary");
        assert_eq!(free_name("rig", &[]), "rig");
        assert_eq!(free_name("rig", &["rig".into()]), "rig (2)");
        assert_eq!(free_name("rig", &["rig".into(), "rig (2)".into()]), "rig (3)");
        let n = free_name(&long, &[clip(&long)]);
        assert!(n.len() <= 63 && n.ends_with(" (2)"), "{n}");
    }

    #[test]
    fn txt_starts_with_txtvers_and_is_small() {
        let t = txt(false, 64);
        assert_eq!(t[0], ("txtvers".to_string(), "1".to_string()));
        assert!(t.iter().any(|(k, v)| k == "auth" && v == "none"));
        assert_eq!(host_id(), host_id(), "stable");
        assert!(t.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>() < 200);
    }

    #[test]
    fn loopback_only_advertises_nothing_unless_forced() {
        let plan = Plan { name: "x".into(), interfaces: vec![], force: false, auth_required: false, max_sessions: 64 };
        assert!(!wanted(&plan, "127.0.0.1:4444".parse().unwrap()));
        assert!(wanted(&plan, "10.0.0.1:4444".parse().unwrap()));
        assert!(wanted(&Plan { force: true, ..plan.clone() }, "127.0.0.1:4444".parse().unwrap()));
        assert!(wanted(&Plan { interfaces: vec!["eth0".into()], ..plan }, "127.0.0.1:4444".parse().unwrap()));
    }
}
