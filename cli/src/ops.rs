//! What several commands do: uploading a file or a bundle, and building START's options.

use crate::conn::Conn;
use anyhow::{anyhow, bail, Context, Result};
use proto::reply::Loaded;
use proto::{Command, LimitOpts, StartOpts, UploadSize};
use std::io::{IsTerminal, Write};
use std::path::Path;

/// How a limit's value is read.
type Parser = fn(&str) -> Result<u64, proto::units::UnitError>;

/// START options from the command line: arguments, `--env K=V`, `--limit NAME=N` (sizes
/// take the rig's suffixes, `2G`; seconds `90`, `5m`).
pub fn start_opts(args: Vec<String>, env: &[String], limits: &[String]) -> Result<StartOpts> {
    let env = if env.is_empty() {
        None
    } else {
        let mut m = std::collections::BTreeMap::new();
        for kv in env {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--env {kv:?}: want KEY=VALUE"))?;
            m.insert(k.to_string(), v.to_string());
        }
        Some(m)
    };
    let mut l = LimitOpts::default();
    for kv in limits {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--limit {kv:?}: want NAME=VALUE"))?;
        let (slot, parse): (&mut Option<u64>, Parser) = match k {
            "cpu_seconds" => (&mut l.cpu_seconds, proto::units::parse_seconds),
            "wall_seconds" => (&mut l.wall_seconds, proto::units::parse_seconds),
            "address_space" => (&mut l.address_space, proto::units::parse_bytes),
            "tmp_bytes" => (&mut l.tmp_bytes, proto::units::parse_bytes),
            "memory_bytes" => (&mut l.memory_bytes, proto::units::parse_bytes),
            "open_files" => (&mut l.open_files, proto::units::parse_count),
            "processes" => (&mut l.processes, proto::units::parse_count),
            "core_bytes" => (&mut l.core_bytes, proto::units::parse_bytes),
            "cpus" => {
                let m = proto::units::parse_cpus(v).map_err(|e| anyhow!("--limit {kv:?}: {e}"))?;
                l.cpus = Some(proto::units::MilliCpus(m));
                continue;
            }
            _ => bail!(
                "--limit {k:?}: one of cpu_seconds, wall_seconds, address_space, tmp_bytes, memory_bytes, open_files, processes, cpus, core_bytes"
            ),
        };
        *slot = Some(parse(v).map_err(|e| anyhow!("--limit {kv:?}: {e}"))?);
    }
    Ok(StartOpts { args, env, limits: (l != LimitOpts::default()).then_some(l), ..Default::default() })
}

/// The bytes to upload: a file as it is, a directory as a .tar.gz made on the fly.
fn payload(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_dir() {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    crate::bundle::tar_gz(path).with_context(|| format!("archiving {}", path.display()))
}

/// Uploads a file or a bundle (a progress bar on a terminal).
pub fn upload(c: &mut Conn, path: &Path, exec: Option<String>, name: Option<String>) -> Result<Loaded> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) && exec.is_none() {
        bail!("{} is a directory: say which program in it to run with --exec PATH", path.display());
    }
    let data = payload(path)?;
    c.send(&Command::Upload { size: UploadSize::Bytes(data.len() as u64), exec_path: exec, name })?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(data.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        b
    });
    for chunk in data.chunks(256 << 10) {
        c.writer.write_all(chunk).context("sending the upload")?;
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    c.read()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_options() {
        let o = start_opts(
            vec!["a".into()],
            &["K=v=w".into()],
            &["cpu_seconds=3".into(), "memory_bytes=2G".into(), "wall_seconds=5m".into()],
        )
        .unwrap();
        assert_eq!(o.env.unwrap()["K"], "v=w");
        let l = o.limits.unwrap();
        assert_eq!((l.cpu_seconds, l.memory_bytes, l.wall_seconds), (Some(3), Some(2 << 30), Some(300)));
        assert!(start_opts(vec![], &["novalue".into()], &[]).is_err());
        assert!(start_opts(vec![], &[], &["bogus=1".into()]).is_err());
        assert!(start_opts(vec![], &[], &["open_files=2G".into()]).is_err());
        assert!(start_opts(vec![], &[], &["memory_bytes=lots".into()]).is_err());
    }
}
