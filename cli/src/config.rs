//! The user's configuration (`$XDG_CONFIG_HOME/lantern/config.toml`) and where the token
//! comes from: `--token-file`, else `LANTERN_TOKEN`, else that file (per rig, then at the
//! top). Files holding a token must not be readable by group or others (like ssh keys).

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// The user's `lantern` configuration file.
#[derive(Debug, Default)]
pub struct UserConfig {
    path: Option<PathBuf>,
    pub rig: Option<String>,
    /// Unicast DNS-SD domains browsed for rigs (`domains = ["lab.example"]`).
    pub domains: Vec<String>,
    /// The DNS server asked for them (`dns_server = "10.0.0.53"`; default: resolv.conf's).
    pub dns_server: Option<String>,
    table: toml::Table,
}

impl UserConfig {
    fn path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("lantern").join("config.toml"))
    }

    pub fn load() -> Result<UserConfig> {
        let Some(path) = UserConfig::path().filter(|p| p.exists()) else { return Ok(UserConfig::default()) };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
        for key in table.keys() {
            if !matches!(key.as_str(), "rig" | "token" | "token_file" | "domains" | "dns_server") {
                bail!(
                    "{}: unknown key {key:?} (known: rig, token, token_file, domains, dns_server, [rig.\"NAME\"])",
                    path.display()
                );
            }
        }
        let rig = match table.get("rig") {
            None | Some(toml::Value::Table(_)) => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(other) => bail!("{}: rig must be a string or a table, not {other}", path.display()),
        };
        let domains = match table.get("domains") {
            None => vec![],
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| anyhow!("{}: domains must be a list of strings", path.display()))?,
            Some(other) => bail!("{}: domains must be a list of strings, not {other}", path.display()),
        };
        let dns_server = match table.get("dns_server") {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(other) => bail!("{}: dns_server must be a string, not {other}", path.display()),
        };
        Ok(UserConfig { path: Some(path), rig, domains, dns_server, table })
    }

    /// The token for `rig`: from its own `[rig."NAME"]` table, else from the top level.
    fn token(&self, rig: &str) -> Result<Option<String>> {
        let Some(path) = &self.path else { return Ok(None) };
        let per_rig =
            self.table.get("rig").and_then(|r| r.as_table()).and_then(|t| t.get(rig)).and_then(|v| v.as_table());
        for scope in per_rig.into_iter().chain(std::iter::once(&self.table)) {
            if let Some(t) = scope.get("token") {
                let t = t.as_str().ok_or_else(|| anyhow!("{}: token must be a string", path.display()))?;
                private(path)?;
                return Ok(Some(t.to_string()));
            }
            if let Some(f) = scope.get("token_file") {
                let f = f.as_str().ok_or_else(|| anyhow!("{}: token_file must be a string", path.display()))?;
                let f = match (f.strip_prefix("~/"), std::env::var_os("HOME")) {
                    (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
                    _ => PathBuf::from(f),
                };
                return read_token_file(&f).map(Some);
            }
        }
        Ok(None)
    }
}

/// Refuses a file holding a token that others can read (like ssh with private keys).
fn private(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} holds a token but is readable by group or others (mode {:o}): run chmod 600 on it",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

fn read_token_file(path: &Path) -> Result<String> {
    private(path)?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!("{}: want one token on its own (no spaces)", path.display());
    }
    Ok(token.to_string())
}

/// --token-file, else LANTERN_TOKEN, else the config file.
pub fn token_for(token_file: Option<&Path>, config: &UserConfig, rig: &str) -> Result<Option<String>> {
    if let Some(f) = token_file {
        return read_token_file(f).map(Some);
    }
    if let Some(t) = std::env::var("LANTERN_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    config.token(rig)
}
