//! `lantern`: the everyday client of a debuglantern rig. It speaks the control protocol
//! with the protocol's own types (crate `proto`), prints tables for people and the
//! server's JSON with `--json`.
//!
//! Authentication: a token from `--token-file FILE`, else `LANTERN_TOKEN`, else the config
//! file `$XDG_CONFIG_HOME/lantern/config.toml` (`~/.config/lantern/config.toml`):
//! `token = "..."` or `token_file = "..."` at the top, or per rig in `[rig."HOST:PORT"]`
//! (or `[rig."instance name"]`); the top level may also name the default `rig`. Files
//! holding a token must not be readable by group or others.
//!
//! Exit codes: 0 success; 1 the rig refused (the message says why, with its error code);
//! 2 usage errors; 3 the rig cannot be reached or broke the protocol; `run` exits with the
//! program's own code, or 128 + signal when it was killed.

mod bundle;
mod config;
mod conn;
mod trace;

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use config::{token_for, UserConfig};
use conn::{Conn, Refused, Target};
use proto::reply::{
    Debugging, Deleted, EventLine, Exit, FollowLine, List, Loaded, LogEnd, Logs, ReceiptReply, Started, Status,
    Stopped, Subscribed,
};
use proto::{Command, LimitOpts, StartOpts, UploadSize};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "lantern",
    version,
    about = "The client of debuglantern rigs: upload, run, stop and inspect programs in a jail",
    after_help = "Examples:\n  lantern run ./hello -- --verbose      upload, run, stream output, exit with its code\n  lantern upload ./app-dir --exec bin/app\n  lantern start 5d0c… --env LANG=C -- arg1 arg2\n  lantern logs -f 5d0c…\n  lantern receipt 5d0c… --trace run.json   (open in ui.perfetto.dev)\n  LANTERN_RIG=rig.lan:4444 lantern list"
)]
struct Cli {
    /// The rig: HOST[:PORT], or an instance name found by `lantern discover`
    /// (default 127.0.0.1:4444).
    #[arg(long, global = true, env = "LANTERN_RIG")]
    rig: Option<String>,
    /// File holding the token for the rig (else LANTERN_TOKEN, else the config file).
    #[arg(long, global = true, value_name = "FILE", env = "LANTERN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Upload a binary, or a bundle (a directory, tarred on the fly, or a .tar.gz) with --exec.
    Upload {
        /// File, directory or .tar.gz.
        path: PathBuf,
        /// The bundle's executable, relative to its root.
        #[arg(long)]
        exec: Option<String>,
    },
    /// Run a loaded session.
    Start {
        /// Session id.
        id: Uuid,
        /// Hold the program at its entry point with a debugger attached (prints the gdb line).
        #[arg(long)]
        debug: bool,
        /// Environment (KEY=VALUE, repeatable); given, it is the whole environment.
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Limits of this run, e.g. cpu_seconds=5 (repeatable; they only tighten).
        #[arg(long = "limit", value_name = "NAME=N")]
        limits: Vec<String>,
        /// Do not list every process of the tree in the receipt (each process exit then
        /// skips a round trip to the session's init: for fork-heavy programs).
        #[arg(long)]
        no_process_list: bool,
        /// Arguments after the program's name.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Attach gdbserver to a running session and print the gdb line (--gdb runs it).
    Debug {
        /// Session id.
        id: Uuid,
        /// Run the local gdb with that line.
        #[arg(long)]
        gdb: bool,
        /// With --gdb: read symbols from this local copy of the program instead of the rig.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Relay gdb's remote protocol over the control connection (no debug port is opened):
    /// `gdb -ex 'target remote | lantern gdb-pipe RIG ID'`.
    GdbPipe {
        /// The rig (HOST[:PORT] or a discovered instance name).
        rig: String,
        /// Session id.
        id: Uuid,
    },
    /// SIGTERM, then SIGKILL after the rig's grace period.
    Stop {
        /// Session id.
        id: Uuid,
    },
    /// SIGKILL.
    Kill {
        /// Session id.
        id: Uuid,
    },
    /// Stop if needed and free the session.
    Delete {
        /// Session id.
        id: Uuid,
    },
    /// Sessions on the rig.
    List,
    /// One session in full.
    Status {
        /// Session id.
        id: Uuid,
    },
    /// Captured output of the last run.
    Logs {
        /// Session id.
        id: Uuid,
        /// Follow until the run ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// The record of a run.
    Receipt {
        /// Session id.
        id: Uuid,
        /// Which run (default: the last).
        #[arg(long)]
        run: Option<u32>,
        /// Also write the run's timeline as a Chrome/Perfetto trace (JSON).
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
    },
    /// Lifecycle events the rig still holds; with -f, keep following.
    Events {
        /// Only this session's.
        id: Option<Uuid>,
        /// Follow new events until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Upload, start, stream the output, exit with the program's exit code.
    Run {
        /// File, directory or .tar.gz.
        path: PathBuf,
        /// The bundle's executable, relative to its root.
        #[arg(long)]
        exec: Option<String>,
        /// Environment (KEY=VALUE, repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Keep the session afterwards (default: delete it).
        #[arg(long)]
        keep: bool,
        /// Arguments after the program's name.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Rigs advertised on the local network (mDNS/DNS-SD).
    Discover {
        /// How long to listen, in seconds.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
    /// Shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let refused = e.downcast_ref::<Refused>().is_some();
            eprintln!("lantern: {e:#}");
            ExitCode::from(if refused { 1 } else { 3 })
        }
    }
}

/// Prints a reply as the server's JSON (one line).
fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn exit_text(e: Option<Exit>) -> String {
    e.map_or_else(|| "-".into(), |e| e.to_string())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = UserConfig::load()?;
    let rig = cli.rig.clone().or_else(|| config.rig.clone()).unwrap_or_else(|| "127.0.0.1:4444".into());
    let token_file = cli.token_file.clone();
    let target = Target { token: token_for(token_file.as_deref(), &config, &rig)?, rig: rig.clone() };
    let json = cli.json;
    match cli.cmd {
        Cmd::Discover { timeout } => {
            let found = discovery::discover(Duration::from_secs_f64(timeout.clamp(0.1, 600.0)))?;
            if json {
                print_json(&serde_json::json!({"ok": true, "rigs": found}))?;
            } else if found.is_empty() {
                println!("no rig answered within {timeout} s");
            } else {
                for r in &found {
                    let addrs: Vec<String> = r.addresses.iter().map(|a| a.to_string()).collect();
                    println!(
                        "{}  {}:{}  {}  {}",
                        r.instance,
                        r.host,
                        r.port,
                        addrs.join(","),
                        r.txt.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
                    );
                }
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lantern", &mut std::io::stdout());
        }
        Cmd::Upload { path, exec } => {
            let mut c = Conn::open(&target)?;
            let v = upload(&mut c, &path, exec)?;
            if json {
                print_json(&v)?;
            } else {
                println!("{}", v.id);
            }
        }
        Cmd::Start { id, debug, env, limits, no_process_list, args } => {
            let mut opts = start_opts(args, &env, &limits)?;
            opts.list_processes = no_process_list.then_some(false);
            let v: Started = Conn::open(&target)?.call(Command::Start { id, debug, opts })?;
            if json {
                print_json(&v)?;
            } else if let Some(d) = &v.debug {
                println!("{} DEBUGGING (held at its entry point) pid {}; connect with:", id, pid_text(v.pid));
                println!("{}", d.gdb);
            } else {
                println!("{} RUNNING pid {} (ns pid {})", id, pid_text(v.pid), v.ns_pid);
            }
        }
        Cmd::Debug { id, gdb, file } => {
            let v: Debugging = Conn::open(&target)?.call(Command::Debug { id, stdio: false })?;
            let d = v.debug.as_ref().ok_or_else(|| anyhow!("the rig opened no debug port"))?;
            if !gdb {
                if json {
                    print_json(&v)?;
                } else {
                    println!("{}", d.gdb);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let host = if d.host.contains(':') { format!("[{}]", d.host) } else { d.host.clone() };
            let mut cmd = std::process::Command::new("gdb");
            cmd.args(["-q", "-ex", "set confirm off"]);
            if let Some(f) = &file {
                cmd.arg(f);
            }
            cmd.args(["-ex", &format!("target remote {host}:{}", d.port)]);
            if file.is_none() {
                cmd.args(["-ex", &format!("file target:/proc/{}/exe", d.ns_pid)]);
            }
            let st = cmd.status().context("running gdb (is it installed?)")?;
            return Ok(ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8));
        }
        Cmd::GdbPipe { rig, id } => {
            let target = Target { token: token_for(token_file.as_deref(), &config, &rig)?, rig };
            let mut c = Conn::open(&target)?;
            c.call::<Debugging>(Command::Debug { id, stdio: true })?;
            return gdb_pipe(c);
        }
        Cmd::Stop { id } => stopped(Conn::open(&target)?.call(Command::Stop(id))?, json)?,
        Cmd::Kill { id } => stopped(Conn::open(&target)?.call(Command::Kill(id))?, json)?,
        Cmd::Delete { id } => {
            let v: Deleted = Conn::open(&target)?.call(Command::Delete(id))?;
            if json {
                print_json(&v)?;
            } else {
                println!("{id} deleted");
            }
        }
        Cmd::List => {
            let v: List = Conn::open(&target)?.call(Command::List)?;
            if json {
                print_json(&v)?;
            } else {
                println!("{:<36}  {:<9} {:<6} {:>10}  {:>8}  EXIT", "ID", "STATE", "KIND", "SIZE", "PID");
                for s in &v.sessions {
                    let kind = match s.kind {
                        proto::reply::Kind::Binary => "binary",
                        proto::reply::Kind::Bundle => "bundle",
                    };
                    println!(
                        "{:<36}  {:<9} {:<6} {:>10}  {:>8}  {}",
                        s.id,
                        s.state.as_str(),
                        kind,
                        s.size,
                        s.pid.map_or("-".into(), |p| p.to_string()),
                        exit_text(s.exit),
                    );
                }
            }
        }
        Cmd::Status { id } => {
            let v: Status = Conn::open(&target)?.call(Command::Status(id))?;
            if json {
                print_json(&v)?;
            } else {
                let fields = serde_json::to_value(&v)?;
                for (k, val) in fields.as_object().into_iter().flatten().filter(|(k, _)| *k != "ok") {
                    println!("{k:>10}: {}", val.as_str().map_or_else(|| val.to_string(), str::to_string));
                }
            }
        }
        Cmd::Logs { id, follow } => {
            let mut c = Conn::open(&target)?;
            if follow {
                let end = stream_logs(&mut c, id, json)?;
                if json {
                    print_json(&end)?;
                }
            } else {
                let v: Logs = c.call(Command::Logs { id, follow: false })?;
                if json {
                    print_json(&v)?;
                } else {
                    let bytes = match &v.data_base64 {
                        Some(b) => proto::base64::decode(b).unwrap_or_else(|| v.data.clone().into_bytes()),
                        None => v.data.clone().into_bytes(),
                    };
                    write_out(&bytes)?;
                }
            }
        }
        Cmd::Receipt { id, run, trace } => {
            let v: ReceiptReply = Conn::open(&target)?.call(Command::Receipt { id, run })?;
            if let Some(path) = trace {
                let t = trace::perfetto(&v.receipt)?;
                std::fs::write(&path, serde_json::to_vec_pretty(&t)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if json {
                print_json(&v)?;
            } else {
                let r = &v.receipt;
                let kind = match r.kind {
                    proto::reply::Kind::Binary => "binary",
                    proto::reply::Kind::Bundle => "bundle",
                };
                println!("session {} run {} ({kind})", r.session, r.run);
                let hit = r.limit_hit.map_or(String::new(), |l| format!(" (limit hit: {})", l.as_str()));
                println!("  exit       {}{hit}", exit_text(r.exit));
                println!("  time       {} → {} ({} ms)", r.started, r.ended, r.duration_ms);
                println!(
                    "  cpu        user {} ms, sys {} ms; max RSS {} KiB; {} processes",
                    r.cpu_user_ms, r.cpu_sys_ms, r.max_rss_kib, r.processes_spawned
                );
                println!("  stdout     {} bytes sha256 {}", r.stdout.bytes, r.stdout.sha256);
                println!("  stderr     {} bytes sha256 {}", r.stderr.bytes, r.stderr.sha256);
                println!("  binary     sha256 {}", r.sha256);
            }
        }
        Cmd::Events { id, follow } => {
            let mut c = Conn::open(&target)?;
            let sub: Subscribed = c.call(Command::Events { id, since: Some(1) })?;
            let head = sub.head_seq;
            let mut seen = sub.next_seq;
            // Without -f: what the rig holds now, then stop.
            while follow || seen < head {
                let line: EventLine = c.read()?;
                match &line {
                    EventLine::End(_) => break,
                    EventLine::Event(e) => seen = e.seq + 1,
                    EventLine::Missed(m) => seen += m.missed,
                }
                if json {
                    print_json(&line)?;
                } else {
                    match line {
                        EventLine::Missed(m) => println!("({} older events are no longer kept)", m.missed),
                        EventLine::Event(e) => println!("{:>6} {} {:<15} {}", e.seq, e.time, e.what.name(), e.id),
                        EventLine::End(_) => {}
                    }
                }
            }
        }
        Cmd::Run { path, exec, env, keep, args } => return run_program(&target, &path, exec, &env, keep, args, json),
    }
    Ok(ExitCode::SUCCESS)
}

fn pid_text(pid: Option<i32>) -> String {
    pid.map_or_else(|| "null".into(), |p| p.to_string())
}

/// Copies stdin to the rig and the rig to stdout until either side ends.
fn gdb_pipe(c: Conn) -> Result<ExitCode> {
    use std::io::Read;
    let early = c.reader.buffer().to_vec();
    let mut from_rig = c.reader.into_inner();
    let mut to_rig = c.writer;
    let mut out = std::io::stdout();
    out.write_all(&early)?;
    out.flush()?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to_rig.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_rig.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = from_rig.read(&mut buf).context("reading from the rig")?;
        if n == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

fn stopped(v: Stopped, json: bool) -> Result<()> {
    if json {
        print_json(&v)
    } else {
        println!("{} STOPPED {}", v.id, exit_text(v.exit));
        Ok(())
    }
}

fn start_opts(args: Vec<String>, env: &[String], limits: &[String]) -> Result<StartOpts> {
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
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--limit {kv:?}: want NAME=N"))?;
        let n: u64 = v.parse().with_context(|| format!("--limit {kv:?}: {v:?} is not a number"))?;
        let slot = match k {
            "cpu_seconds" => &mut l.cpu_seconds,
            "address_space" => &mut l.address_space,
            "open_files" => &mut l.open_files,
            "processes" => &mut l.processes,
            "tmp_bytes" => &mut l.tmp_bytes,
            "memory_bytes" => &mut l.memory_bytes,
            _ => bail!(
                "--limit {k:?}: one of cpu_seconds, address_space, open_files, processes, tmp_bytes, memory_bytes"
            ),
        };
        *slot = Some(n);
    }
    Ok(StartOpts { args, env, limits: (l != LimitOpts::default()).then_some(l), list_processes: None })
}

/// The bytes to upload: a file as it is, a directory as a .tar.gz made on the fly.
fn payload(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_dir() {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    bundle::tar_gz(path).with_context(|| format!("archiving {}", path.display()))
}

fn upload(c: &mut Conn, path: &Path, exec: Option<String>) -> Result<Loaded> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) && exec.is_none() {
        bail!("{} is a directory: say which program in it to run with --exec PATH", path.display());
    }
    let data = payload(path)?;
    c.send(&Command::Upload { size: UploadSize::Bytes(data.len() as u64), exec_path: exec })?;
    let bar = std::io::stdout().is_terminal().then(|| {
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

fn write_out(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// Streams a run's output to stdout until it ends; returns the final object.
fn stream_logs(c: &mut Conn, id: Uuid, json: bool) -> Result<LogEnd> {
    c.send(&Command::Logs { id, follow: true })?;
    loop {
        match c.read::<FollowLine>()? {
            FollowLine::End(end) => return Ok(end),
            FollowLine::Chunk(chunk) if json => print_json(&chunk)?,
            FollowLine::Chunk(chunk) => write_out(&chunk.bytes())?,
        }
    }
}

fn run_program(
    rig: &Target,
    path: &Path,
    exec: Option<String>,
    env: &[String],
    keep: bool,
    args: Vec<String>,
    json: bool,
) -> Result<ExitCode> {
    let mut c = Conn::open(rig)?;
    let up = upload(&mut c, path, exec)?;
    let id = up.id;
    // Ctrl-C stops the remote program (over a second connection); the stream then ends.
    ctrlc_stop(rig.clone(), id);
    c.call::<Started>(Command::Start { id, debug: false, opts: start_opts(args, env, &[])? })?;
    let end = stream_logs(&mut c, id, json)?;
    if json {
        print_json(&end)?;
    }
    if !keep {
        let _ = c.call::<Deleted>(Command::Delete(id));
    }
    let code = match end {
        LogEnd::Ended { exit: Some(e), .. } => e.shell_status(),
        _ => 1,
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// On SIGINT, sends STOP for the session over a new connection.
fn ctrlc_stop(target: Target, id: Uuid) {
    static HIT: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_int(_: libc::c_int) {
        HIT.store(true, Ordering::SeqCst);
    }
    let handler = nix::sys::signal::SigHandler::Handler(on_int);
    let action = nix::sys::signal::SigAction::new(
        handler,
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let installed = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGINT, &action) };
    if installed.is_err() {
        return;
    }
    std::thread::spawn(move || loop {
        if HIT.swap(false, Ordering::SeqCst) {
            eprintln!("lantern: stopping {id}…");
            if let Ok(mut c) = Conn::open(&target) {
                let _ = c.call::<Stopped>(Command::Stop(id));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_options() {
        let o = start_opts(vec!["a".into()], &["K=v=w".into()], &["cpu_seconds=3".into()]).unwrap();
        assert_eq!(o.env.unwrap()["K"], "v=w");
        assert_eq!(o.limits.unwrap().cpu_seconds, Some(3));
        assert!(start_opts(vec![], &["novalue".into()], &[]).is_err());
        assert!(start_opts(vec![], &[], &["bogus=1".into()]).is_err());
    }
}
