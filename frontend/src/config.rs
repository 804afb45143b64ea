//! Daemon configuration: built-in defaults, then a TOML file (`--config`), then flags.

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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

fn invalid(why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(why.into())
}

fn because<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> ConfigError {
    let what = what.into();
    move |e| ConfigError::Because { what, source: e.into() }
}

/// Command-line flags. Every setting can also come from the TOML file (same names with
/// underscores); flags win.
#[derive(Debug, Parser)]
#[command(
    name = "debuglantern",
    version,
    about = "A hardened, shared test rig: upload, run, stop and debug programs in a jail"
)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Control address (default 127.0.0.1:4444).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Most sessions loaded at once (default 64).
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// Most bytes of all loaded sessions together, e.g. 1G (default 1G).
    #[arg(long, value_parser = parse_bytes)]
    pub max_total_size: Option<u64>,
    /// Largest single upload, e.g. 512M (default 512M).
    #[arg(long, value_parser = parse_bytes)]
    pub max_upload: Option<u64>,
    /// Refused uploads up to this size are read and discarded so the connection stays
    /// usable; larger ones close it (default 1G).
    #[arg(long, value_parser = parse_bytes)]
    pub drain_limit: Option<u64>,
    /// Captured output kept per session, e.g. 1M (default 1M).
    #[arg(long, value_parser = parse_bytes)]
    pub log_buffer: Option<u64>,
    /// Most client connections at once (default 4096).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// STOP's grace period between SIGTERM and SIGKILL, e.g. 5s (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub stop_grace: Option<Duration>,
    /// Default CPU seconds per process of a run (0 = unlimited; default 0).
    #[arg(long)]
    pub cpu_seconds: Option<u64>,
    /// Default address-space limit per process, e.g. 4G (0 = unlimited; default 0).
    #[arg(long, value_parser = parse_bytes)]
    pub address_space: Option<u64>,
    /// Default open-file limit per process (default 1024).
    #[arg(long)]
    pub open_files: Option<u64>,
    /// Default process limit per session (default 512).
    #[arg(long)]
    pub processes: Option<u64>,
    /// Default size of a session's private /tmp, e.g. 64M (default 64M).
    #[arg(long, value_parser = parse_bytes)]
    pub tmp_size: Option<u64>,
    /// Default memory of a whole session (cgroup), e.g. 1G (0 = unlimited; default 1G).
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Largest core dump kept of a session's crashed process, e.g. 64M (0 = none, and
    /// nothing is traced; default 256M). Kept cores count in --max-total-size.
    #[arg(long, value_parser = parse_bytes)]
    pub core_bytes: Option<u64>,
    /// Default CPUs of a whole session (cgroup CPU bandwidth), e.g. 0.5 or 1.5 (0 =
    /// unlimited; default 1).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Default wall-clock limit of a run, e.g. 600, 90m, 8h (0 = unlimited; default 1h).
    /// The broker kills a run that reaches it (`limit_hit: "wall"`).
    #[arg(long, value_parser = parse_seconds)]
    pub wall_seconds: Option<u64>,
    /// Most entries in one bundle (default 10000).
    #[arg(long)]
    pub max_bundle_entries: Option<u64>,
    /// Most path components in one bundle entry (default 32).
    #[arg(long)]
    pub max_bundle_depth: Option<usize>,
    /// User the frontend drops to when started as root (default nobody).
    #[arg(long)]
    pub user: Option<String>,
    /// First host uid of the broker's range when started as root (the broker; sessions
    /// follow). Default 2100000000.
    #[arg(long)]
    pub uid_base: Option<u32>,
    /// TCP ports for debug listeners, LOW-HIGH (default 40000-40999).
    #[arg(long, value_parser = parse_port_range)]
    pub debug_ports: Option<(u16, u16)>,
    /// How long a debug port waits for gdb, e.g. 60s (default 60s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub debug_deadline: Option<Duration>,
    /// Refuse to start if anything of the jail cannot be had on this host.
    #[arg(long)]
    pub strict: bool,
    /// Make no cgroups: sessions get rlimits only (HELLO warns). For hosts whose cgroups
    /// belong to someone else, and to measure what cgroups cost.
    #[arg(long)]
    pub no_cgroups: bool,
    /// Accept listening on a non-loopback address without authentication: anyone who can
    /// reach it controls the rig (HELLO warns every client).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Token file: one `identity token [admin]` per line; mode 600, owned by the user
    /// starting the daemon. With it, every client must AUTH first.
    #[arg(long, value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,
    /// Also append the audit log (JSON lines; always on stderr) to this file.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Most sessions one identity may hold (default: max_sessions).
    #[arg(long)]
    pub quota_sessions: Option<usize>,
    /// Most bytes one identity may hold, e.g. 256M (default: max_total_size).
    #[arg(long, value_parser = parse_bytes)]
    pub quota_bytes: Option<u64>,
    /// Serve one client on stdin/stdout (inetd style), then stop every session and exit.
    /// Nothing is listened on and nothing is advertised.
    #[arg(long)]
    pub stdio: bool,
    /// Advertise over mDNS even when listening on loopback only.
    #[arg(long, conflicts_with = "no_mdns")]
    pub mdns: bool,
    /// Do not advertise over mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Advertise on this interface (repeatable; default: the ones the control socket
    /// listens on).
    #[arg(long = "mdns-interface", value_name = "NAME")]
    pub mdns_interfaces: Vec<String>,
    /// mDNS instance name (default "debuglantern @ <hostname>", at most 63 bytes).
    #[arg(long)]
    pub mdns_name: Option<String>,
    /// Observe what runs touch unless a START says otherwise: files, exec, net (comma
    /// separated) or all (default: nothing).
    #[arg(long, value_name = "KINDS", conflicts_with = "no_observe")]
    pub observe_default: Option<String>,
    /// Refuse START's `observe` (and observe nothing).
    #[arg(long)]
    pub no_observe: bool,
    /// Distinct files, execs and network endpoints a run's observation keeps per kind
    /// (then only counted; default 1024, at most 16384).
    #[arg(long, value_name = "N")]
    pub observe_limit: Option<u32>,
    /// Register in this unicast DNS-SD domain (RFC 6763 §11) with TSIG-signed dynamic
    /// updates (RFC 2136): `_mydebug._tcp.DOMAIN`. Needs --dns-sd-server and --dns-sd-key.
    #[arg(long, value_name = "DOMAIN")]
    pub dns_sd_domain: Option<String>,
    /// The authoritative DNS server taking the updates, HOST[:PORT] (port 53 by default).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub dns_sd_server: Option<String>,
    /// TSIG key file (as `tsig-keygen` or `keymgr -t` write it); mode 600.
    #[arg(long, value_name = "FILE")]
    pub dns_sd_key: Option<PathBuf>,
    /// DNS-SD instance name (default: the mDNS name).
    #[arg(long, value_name = "NAME")]
    pub dns_sd_name: Option<String>,
    /// How often the records are refreshed, e.g. 60s (their TTL is twice that).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub dns_sd_refresh: Option<Duration>,
    /// Path of debuglantern-broker (default: next to this binary).
    #[arg(long)]
    pub broker: Option<PathBuf>,
}

/// The TOML file. Unknown keys are an error (a typo must not silently keep a default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    max_sessions: Option<usize>,
    max_total_size: Option<ByteSize>,
    max_upload: Option<ByteSize>,
    drain_limit: Option<ByteSize>,
    log_buffer: Option<ByteSize>,
    max_connections: Option<usize>,
    stop_grace: Option<String>,
    cpu_seconds: Option<u64>,
    address_space: Option<ByteSize>,
    open_files: Option<u64>,
    processes: Option<u64>,
    tmp_size: Option<ByteSize>,
    memory: Option<ByteSize>,
    core_bytes: Option<ByteSize>,
    cpus: Option<f64>,
    wall_seconds: Option<u64>,
    max_bundle_entries: Option<u64>,
    max_bundle_depth: Option<usize>,
    user: Option<String>,
    uid_base: Option<u32>,
    strict: Option<bool>,
    no_cgroups: Option<bool>,
    insecure_no_auth: Option<bool>,
    broker: Option<PathBuf>,
    mdns: Option<bool>,
    mdns_interfaces: Option<Vec<String>>,
    mdns_name: Option<String>,
    observe_default: Option<String>,
    no_observe: Option<bool>,
    observe_limit: Option<u32>,
    dns_sd_domain: Option<String>,
    dns_sd_server: Option<String>,
    dns_sd_key: Option<PathBuf>,
    dns_sd_name: Option<String>,
    dns_sd_refresh: Option<String>,
    auth_tokens: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    quota_sessions: Option<usize>,
    quota_bytes: Option<ByteSize>,
    /// Per-identity quotas: `[quota.alice]` with `sessions` and/or `bytes`.
    #[serde(default)]
    quota: std::collections::HashMap<String, QuotaFile>,
}

/// One identity's quota in the TOML file.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    sessions: Option<usize>,
    bytes: Option<ByteSize>,
}

/// A byte count in TOML: a number or a string like "512M".
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "toml::Value")]
struct ByteSize(u64);

impl TryFrom<toml::Value> for ByteSize {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(i) if i >= 0 => Ok(ByteSize(i as u64)),
            toml::Value::String(s) => parse_bytes(&s).map(ByteSize).map_err(|e| e.to_string()),
            other => Err(format!("expected a byte count like 512M, got {other}")),
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Control address.
    pub listen: SocketAddr,
    /// Most sessions.
    pub max_sessions: usize,
    /// Byte budget of all sessions.
    pub max_total_size: u64,
    /// Largest upload.
    pub max_upload: u64,
    /// Largest refused upload we still drain.
    pub drain_limit: u64,
    /// Log ring size per session.
    pub log_buffer: usize,
    /// Most connections.
    pub max_connections: usize,
    /// STOP grace.
    pub stop_grace: Duration,
    /// Default limits of a run.
    pub limits: shared::RunLimits,
    /// Most entries in one bundle.
    pub max_bundle_entries: u64,
    /// Most path components in one bundle entry.
    pub max_bundle_depth: usize,
    /// Frontend user when root.
    pub user: String,
    /// Broker uid base when root.
    pub uid_base: u32,
    /// Debug listener ports.
    pub debug_ports: (u16, u16),
    /// How long a debug port waits for gdb.
    pub debug_deadline: Duration,
    /// Warnings are fatal.
    pub strict: bool,
    /// Make no cgroups.
    pub no_cgroups: bool,
    /// Serve a non-loopback address without authentication.
    pub insecure_no_auth: bool,
    /// Broker binary.
    pub broker: Option<PathBuf>,
    /// mDNS: `None` = off; otherwise what to advertise where.
    pub mdns: Option<discovery::Plan>,
    /// Unicast DNS-SD registration: `None` = off.
    pub dns_sd: Option<discovery::unicast::Plan>,
    /// What runs observe when START does not say (its `limit` applies to every run).
    pub observe_default: shared::observe::Observe,
    /// Whether START may ask to observe.
    pub observe_allowed: bool,
    /// Token file.
    pub auth_tokens: Option<PathBuf>,
    /// Audit log file (besides stderr).
    pub audit_log: Option<PathBuf>,
    /// Default quota of an identity: sessions, bytes.
    pub quota_default: (usize, u64),
    /// Quotas of named identities.
    pub quotas: std::collections::HashMap<String, (usize, u64)>,
    /// Serve one client on stdin/stdout.
    pub stdio: bool,
}

/// Parses `LOW-HIGH` (inclusive, LOW ≤ HIGH, not 0).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), ConfigError> {
    let (a, b) = s.split_once('-').ok_or_else(|| invalid(format!("{s:?}: want LOW-HIGH, e.g. 40000-40999")))?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| invalid(format!("{a:?} is not a port")))?,
        b.trim().parse().map_err(|_| invalid(format!("{b:?} is not a port")))?,
    );
    if a == 0 || a > b {
        return Err(invalid(format!("{s:?}: want 1 ≤ LOW ≤ HIGH")));
    }
    Ok((a, b))
}

/// Parses `123`, `64K`, `512M`, `1G`, `2T` (binary multiples; an optional trailing `B` or
/// `iB`): [`proto::units::parse_bytes`], the same as `lantern --limit`.
pub fn parse_bytes(s: &str) -> Result<u64, ConfigError> {
    proto::units::parse_bytes(s).map_err(|e| invalid(e.0))
}

/// Parses CPUs: `0.5`, `1.5`, `2` into thousandths ([`proto::units::parse_cpus`]).
pub fn parse_cpus(s: &str) -> Result<u64, ConfigError> {
    proto::units::parse_cpus(s).map_err(|e| invalid(e.0))
}

/// Parses seconds: `90`, `90s`, `5m`, `8h` ([`proto::units::parse_seconds`]).
pub fn parse_seconds(s: &str) -> Result<u64, ConfigError> {
    proto::units::parse_seconds(s).map_err(|e| invalid(e.0))
}

/// `["files", "exec", "net"]` (any subset) or `["all"]`; `[]` observes nothing.
pub fn parse_observe(kinds: &[String]) -> Result<shared::observe::Observe, String> {
    let mut o = shared::observe::Observe::default();
    for k in kinds {
        match k.as_str() {
            "files" => o.files = true,
            "exec" => o.exec = true,
            "net" => o.net = true,
            "all" => (o.files, o.exec, o.net) = (true, true, true),
            other => return Err(format!("unknown kind {other:?} (files, exec, net, all)")),
        }
    }
    Ok(o)
}

/// The DNS-SD registration the flags and file ask for: the key is read (and its mode
/// checked) and the server's name resolved now, before the daemon confines itself.
fn dns_sd_plan(
    flags: &Flags,
    file: &FileConfig,
    mdns_name: Option<String>,
) -> Result<Option<discovery::unicast::Plan>, ConfigError> {
    let Some(domain) = flags.dns_sd_domain.clone().or(file.dns_sd_domain.clone()) else {
        if flags.dns_sd_server.is_some() || flags.dns_sd_key.is_some() || file.dns_sd_server.is_some() {
            return Err(invalid("--dns-sd-server and --dns-sd-key need --dns-sd-domain"));
        }
        return Ok(None);
    };
    let domain_name =
        discovery::dns::Name::parse(&domain).map_err(|e| invalid(format!("dns_sd_domain {domain:?}: {e}")))?;
    if domain_name.labels().is_empty() {
        return Err(invalid("dns_sd_domain must not be the root"));
    }
    let server = flags
        .dns_sd_server
        .clone()
        .or(file.dns_sd_server.clone())
        .ok_or_else(|| invalid("--dns-sd-domain needs --dns-sd-server HOST[:PORT]"))?;
    let server = discovery::unicast::parse_server(&server).map_err(because(format!("dns_sd_server {server:?}")))?;
    let key_path = flags
        .dns_sd_key
        .clone()
        .or(file.dns_sd_key.clone())
        .ok_or_else(|| invalid("--dns-sd-domain needs --dns-sd-key FILE (a TSIG key)"))?;
    let key = discovery::tsig::Key::load(&key_path).map_err(invalid)?;
    let refresh = match (flags.dns_sd_refresh, &file.dns_sd_refresh) {
        (Some(d), _) => d,
        (None, Some(s)) => humantime::parse_duration(s).map_err(because(format!("dns_sd_refresh {s:?}")))?,
        (None, None) => Duration::from_secs(60),
    };
    if refresh < Duration::from_secs(1) || refresh > Duration::from_secs(86_400) {
        return Err(invalid("dns_sd_refresh must be between 1s and 24h"));
    }
    let name = flags.dns_sd_name.clone().or(file.dns_sd_name.clone()).map(|n| discovery::clip(&n));
    Ok(Some(discovery::unicast::Plan {
        domain: domain_name,
        server,
        key,
        name: name.or(mdns_name).unwrap_or_else(discovery::default_name),
        refresh,
    }))
}

impl Config {
    /// Merges defaults, the file named by `--config` and the flags.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(because(format!("cannot read {}", path.display())))?;
                toml::from_str::<FileConfig>(&text).map_err(because(format!("{}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let grace = match (flags.stop_grace, &file.stop_grace) {
            (Some(d), _) => d,
            (None, Some(s)) => humantime::parse_duration(s).map_err(because(format!("stop_grace {s:?}")))?,
            (None, None) => Duration::from_secs(5),
        };
        let quota_default = (
            flags.quota_sessions.or(file.quota_sessions).unwrap_or(usize::MAX),
            flags.quota_bytes.or(file.quota_bytes.map(|b| b.0)).unwrap_or(u64::MAX),
        );
        let quotas = file
            .quota
            .iter()
            .map(|(name, q)| {
                (name.clone(), (q.sessions.unwrap_or(quota_default.0), q.bytes.map_or(quota_default.1, |b| b.0)))
            })
            .collect();
        let auth_tokens = flags.auth_tokens.clone().or_else(|| file.auth_tokens.clone());
        let max_sessions = flags.max_sessions.or(file.max_sessions).unwrap_or(64);
        let mdns_name = flags.mdns_name.clone().or(file.mdns_name.clone()).map(|n| discovery::clip(&n));
        let dns_sd = dns_sd_plan(&flags, &file, mdns_name.clone())?;
        let observe_allowed = !(flags.no_observe || file.no_observe.unwrap_or(false));
        let observe_limit = flags.observe_limit.or(file.observe_limit).unwrap_or(shared::observe::DEFAULT_LIMIT);
        if observe_limit == 0 || observe_limit > shared::observe::MAX_LIMIT {
            return Err(invalid(format!(
                "observe_limit {observe_limit} must be in 1..={}",
                shared::observe::MAX_LIMIT
            )));
        }
        let mut observe_default = match flags.observe_default.clone().or(file.observe_default.clone()) {
            Some(list) if observe_allowed => {
                let kinds: Vec<String> =
                    list.split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
                parse_observe(&kinds).map_err(|e| invalid(format!("observe_default: {e}")))?
            }
            Some(_) => return Err(invalid("observe_default and no_observe contradict each other")),
            None => shared::observe::Observe::default(),
        };
        observe_default.limit = observe_limit;
        let c = Config {
            observe_default,
            observe_allowed,
            dns_sd: dns_sd.filter(|_| !flags.stdio),
            auth_tokens: auth_tokens.clone(),
            audit_log: flags.audit_log.or(file.audit_log),
            quota_default,
            quotas,
            stdio: flags.stdio,
            listen: flags.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:4444".parse().expect("literal")),
            max_sessions,
            max_total_size: flags.max_total_size.or(file.max_total_size.map(|b| b.0)).unwrap_or(1 << 30),
            max_upload: flags.max_upload.or(file.max_upload.map(|b| b.0)).unwrap_or(512 << 20),
            drain_limit: flags.drain_limit.or(file.drain_limit.map(|b| b.0)).unwrap_or(1 << 30),
            log_buffer: flags.log_buffer.or(file.log_buffer.map(|b| b.0)).unwrap_or(1 << 20) as usize,
            max_connections: flags.max_connections.or(file.max_connections).unwrap_or(4096),
            stop_grace: grace,
            limits: shared::RunLimits {
                cpu_seconds: flags.cpu_seconds.or(file.cpu_seconds).unwrap_or(0),
                address_space: flags.address_space.or(file.address_space.map(|b| b.0)).unwrap_or(0),
                open_files: flags.open_files.or(file.open_files).unwrap_or(1024),
                processes: flags.processes.or(file.processes).unwrap_or(512),
                tmp_bytes: flags.tmp_size.or(file.tmp_size.map(|b| b.0)).unwrap_or(64 << 20),
                memory_bytes: flags.memory.or(file.memory.map(|b| b.0)).unwrap_or(1 << 30),
                wall_seconds: flags.wall_seconds.or(file.wall_seconds).unwrap_or(3600),
                core_bytes: flags.core_bytes.or(file.core_bytes.map(|b| b.0)).unwrap_or(256 << 20),
                cpu_millis: match (flags.cpus, file.cpus) {
                    (Some(m), _) => m,
                    (None, Some(c)) => parse_cpus(&c.to_string())?,
                    (None, None) => 1000,
                },
            },
            max_bundle_entries: flags.max_bundle_entries.or(file.max_bundle_entries).unwrap_or(10_000),
            max_bundle_depth: flags.max_bundle_depth.or(file.max_bundle_depth).unwrap_or(32),
            user: flags.user.or(file.user).unwrap_or_else(|| "nobody".into()),
            uid_base: flags.uid_base.or(file.uid_base).unwrap_or(policy::identity::DEFAULT_UID_BASE),
            debug_ports: flags.debug_ports.unwrap_or((40000, 40999)),
            debug_deadline: flags.debug_deadline.unwrap_or(Duration::from_secs(60)),
            strict: flags.strict || file.strict.unwrap_or(false),
            no_cgroups: flags.no_cgroups || file.no_cgroups.unwrap_or(false),
            insecure_no_auth: flags.insecure_no_auth || file.insecure_no_auth.unwrap_or(false),
            broker: flags.broker.or(file.broker),
            mdns: {
                let on = !flags.no_mdns && file.mdns != Some(false);
                let interfaces = if flags.mdns_interfaces.is_empty() {
                    file.mdns_interfaces.unwrap_or_default()
                } else {
                    flags.mdns_interfaces
                };
                (on && !flags.stdio).then(|| discovery::Plan {
                    name: mdns_name.unwrap_or_else(discovery::default_name),
                    interfaces,
                    force: flags.mdns || file.mdns == Some(true),
                    auth_required: auth_tokens.is_some(),
                    max_sessions,
                })
            },
        };
        if c.max_sessions == 0 || c.max_sessions > 65_000 {
            return Err(invalid(format!("max_sessions {} must be in 1..=65000", c.max_sessions)));
        }
        if c.limits.tmp_bytes < 4096 {
            return Err(invalid("tmp_size must be at least 4K"));
        }
        if c.log_buffer < 4096 {
            return Err(invalid("log_buffer must be at least 4K"));
        }
        if c.max_upload > c.max_total_size {
            return Err(invalid(format!(
                "max_upload ({}) exceeds max_total_size ({}): no upload that large could ever be stored",
                c.max_upload, c.max_total_size
            )));
        }
        Ok(c)
    }

    /// The quota of an identity: most sessions, most bytes.
    pub fn quota(&self, identity: &str) -> (usize, u64) {
        self.quotas.get(identity).copied().unwrap_or(self.quota_default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("dl-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "max_sessions = 7\nmax_upload = \"1M\"\nstop_grace = \"2s\"\n").unwrap();
        let flags = Flags::parse_from(["debuglantern", "--config", path.to_str().unwrap(), "--max-sessions", "9"]);
        let c = Config::load(flags).unwrap();
        assert_eq!(c.max_sessions, 9);
        assert_eq!(c.max_upload, 1 << 20);
        assert_eq!(c.stop_grace, Duration::from_secs(2));
        std::fs::write(
            &path,
            "quota_sessions = 3\n[quota.alice]\nsessions = 10\nbytes = \"1M\"\n[quota.bob]\nbytes = 4096\n",
        )
        .unwrap();
        let c = Config::load(Flags::parse_from(["debuglantern", "--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(c.quota("alice"), (10, 1 << 20));
        assert_eq!(c.quota("bob"), (3, 4096));
        assert_eq!(c.quota("carol"), (3, u64::MAX));
        std::fs::write(&path, "[quota.alice]\nsesions = 1\n").unwrap();
        assert!(Config::load(Flags::parse_from(["debuglantern", "--config", path.to_str().unwrap()])).is_err());
        std::fs::write(&path, "max_sesions = 7\n").unwrap();
        let err = Config::load(Flags::parse_from(["debuglantern", "--config", path.to_str().unwrap()])).unwrap_err();
        let err = shared::chain(&err);
        assert!(err.contains("max_sesions"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dns_sd_needs_a_server_and_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dl-config-dnssd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k.key");
        std::fs::write(&key, "hmac-sha256:rig-update:c2VjcmV0IHNlY3JldCBzZWNyZXQhIQ==\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let k = key.to_str().unwrap();
        let load = |args: &[&str]| {
            let mut all = vec!["debuglantern"];
            all.extend_from_slice(args);
            Config::load(Flags::parse_from(all)).map_err(|e| shared::chain(&e))
        };
        let c =
            load(&["--dns-sd-domain", "lab.example", "--dns-sd-server", "127.0.0.1:5300", "--dns-sd-key", k]).unwrap();
        let plan = c.dns_sd.unwrap();
        assert_eq!((plan.domain.to_string().as_str(), plan.server.port()), ("lab.example", 5300));
        assert_eq!(plan.refresh, Duration::from_secs(60));
        let e = load(&["--dns-sd-domain", "lab.example", "--dns-sd-key", k]).unwrap_err();
        assert!(e.contains("--dns-sd-server"), "{e}");
        let e = load(&["--dns-sd-server", "127.0.0.1", "--dns-sd-key", k]).unwrap_err();
        assert!(e.contains("need --dns-sd-domain"), "{e}");
        let e = load(&["--dns-sd-domain", "a..b", "--dns-sd-server", "127.0.0.1", "--dns-sd-key", k]).unwrap_err();
        assert!(e.contains("empty label"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e =
            load(&["--dns-sd-domain", "lab.example", "--dns-sd-server", "127.0.0.1", "--dns-sd-key", k]).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        // --stdio serves one client and registers nothing.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(&["--stdio", "--dns-sd-domain", "lab.example", "--dns-sd-server", "127.0.0.1", "--dns-sd-key", k]);
        assert!(c.unwrap().dns_sd.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
