//! `lantern`: the everyday client of a debuglantern rig. It speaks the control protocol
//! with the server's own codec (`frontend::protocol`), prints tables for people and the
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

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use frontend::protocol::{Command, LimitOpts, StartOpts, UploadSize};
use serde_json::Value;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::TcpStream;
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

/// A refusal from the rig (exit 1), as opposed to a broken connection (exit 3).
#[derive(Debug)]
struct Refused(Value);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.0["error"].as_str().unwrap_or("error");
        let msg = self.0["message"].as_str().unwrap_or("");
        write!(f, "{code}: {msg}")
    }
}

impl std::error::Error for Refused {}

/// Which rig, and the token for it.
#[derive(Debug, Clone)]
struct Target {
    rig: String,
    token: Option<String>,
}

const NO_TOKEN_HINT: &str =
    "this rig wants a token: --token-file FILE, LANTERN_TOKEN, or token_file in ~/.config/lantern/config.toml";

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// No token was given (an `unauthorized` answer then says how to give one).
    anonymous: bool,
}

impl Conn {
    fn open(target: &Target) -> Result<Conn> {
        let addr = resolve_rig(&target.rig)?;
        let s = TcpStream::connect(&addr).with_context(|| {
            format!("cannot reach the rig at {addr} (is debuglantern running there? --rig / LANTERN_RIG)")
        })?;
        let _ = s.set_nodelay(true);
        let mut c = Conn { reader: BufReader::new(s.try_clone()?), writer: s, anonymous: target.token.is_none() };
        if let Some(token) = &target.token {
            c.call(Command::Auth(token.clone())).context("authenticating")?;
        }
        Ok(c)
    }

    fn send(&mut self, cmd: &Command) -> Result<()> {
        self.writer.write_all(format!("{}\n", cmd.to_line()).as_bytes()).context("sending to the rig")
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("reading from the rig")? == 0 {
            bail!("the rig closed the connection");
        }
        serde_json::from_str(&line).with_context(|| format!("the rig's reply is not JSON: {line:?}"))
    }

    /// Reads one reply; a refusal becomes an error.
    fn ok(&mut self) -> Result<Value> {
        let mut v = self.read()?;
        if v["ok"] != true {
            if self.anonymous && v["error"] == "unauthorized" {
                v["message"] = Value::from(NO_TOKEN_HINT);
            }
            return Err(Refused(v).into());
        }
        Ok(v)
    }

    fn call(&mut self, cmd: Command) -> Result<Value> {
        self.send(&cmd)?;
        self.ok()
    }
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

fn run(cli: Cli) -> Result<ExitCode> {
    let config = UserConfig::load()?;
    let rig = cli.rig.clone().or_else(|| config.rig.clone()).unwrap_or_else(|| "127.0.0.1:4444".into());
    let token_file = cli.token_file.clone();
    let target = Target { token: token_for(token_file.as_deref(), &config, &rig)?, rig: rig.clone() };
    let json = cli.json;
    let print = |v: &Value| println!("{v}");
    match cli.cmd {
        Cmd::Discover { timeout } => {
            let found = frontend::discovery::discover(Duration::from_secs_f64(timeout.clamp(0.1, 600.0)))
                .map_err(|e| anyhow!(e))?;
            if json {
                println!("{}", serde_json::json!({"ok": true, "rigs": found}));
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
                print(&v);
            } else {
                println!("{}", v["id"].as_str().unwrap_or(""));
            }
        }
        Cmd::Start { id, debug, env, limits, no_process_list, args } => {
            let mut opts = start_opts(args, &env, &limits)?;
            opts.list_processes = no_process_list.then_some(false);
            let v = Conn::open(&target)?.call(Command::Start { id, debug, opts })?;
            if json {
                print(&v);
            } else if debug {
                println!("{} DEBUGGING (held at its entry point) pid {}; connect with:", id, v["pid"]);
                println!("{}", v["debug"]["gdb"].as_str().unwrap_or(""));
            } else {
                println!("{} RUNNING pid {} (ns pid {})", id, v["pid"], v["ns_pid"]);
            }
        }
        Cmd::Debug { id, gdb, file } => {
            let v = Conn::open(&target)?.call(Command::Debug { id, stdio: false })?;
            let d = &v["debug"];
            if !gdb {
                if json {
                    print(&v);
                } else {
                    println!("{}", d["gdb"].as_str().unwrap_or(""));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let host = d["host"].as_str().unwrap_or("127.0.0.1");
            let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
            let mut cmd = std::process::Command::new("gdb");
            cmd.args(["-q", "-ex", "set confirm off"]);
            if let Some(f) = &file {
                cmd.arg(f);
            }
            cmd.args(["-ex", &format!("target remote {host}:{}", d["port"])]);
            if file.is_none() {
                cmd.args(["-ex", &format!("file target:/proc/{}/exe", d["ns_pid"])]);
            }
            let st = cmd.status().context("running gdb (is it installed?)")?;
            return Ok(ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8));
        }
        Cmd::GdbPipe { rig, id } => {
            let target = Target { token: token_for(token_file.as_deref(), &config, &rig)?, rig };
            let mut c = Conn::open(&target)?;
            c.call(Command::Debug { id, stdio: true })?;
            return gdb_pipe(c);
        }
        Cmd::Stop { id } => stopped(Conn::open(&target)?.call(Command::Stop(id))?, json),
        Cmd::Kill { id } => stopped(Conn::open(&target)?.call(Command::Kill(id))?, json),
        Cmd::Delete { id } => {
            let v = Conn::open(&target)?.call(Command::Delete(id))?;
            if json {
                print(&v);
            } else {
                println!("{id} deleted");
            }
        }
        Cmd::List => {
            let v = Conn::open(&target)?.call(Command::List)?;
            if json {
                print(&v);
            } else {
                println!("{:<36}  {:<9} {:<6} {:>10}  {:>8}  EXIT", "ID", "STATE", "KIND", "SIZE", "PID");
                for s in v["sessions"].as_array().into_iter().flatten() {
                    println!(
                        "{:<36}  {:<9} {:<6} {:>10}  {:>8}  {}",
                        s["id"].as_str().unwrap_or(""),
                        s["state"].as_str().unwrap_or(""),
                        s["kind"].as_str().unwrap_or(""),
                        s["size"],
                        s["pid"].as_i64().map_or("-".into(), |p| p.to_string()),
                        exit_text(&s["exit"]),
                    );
                }
            }
        }
        Cmd::Status { id } => {
            let v = Conn::open(&target)?.call(Command::Status(id))?;
            if json {
                print(&v);
            } else {
                for (k, val) in v.as_object().into_iter().flatten().filter(|(k, _)| *k != "ok") {
                    println!(
                        "{k:>10}: {}",
                        if val.is_string() { val.as_str().unwrap_or("").to_string() } else { val.to_string() }
                    );
                }
            }
        }
        Cmd::Logs { id, follow } => {
            let mut c = Conn::open(&target)?;
            if follow {
                let end = stream_logs(&mut c, id, json)?;
                if json {
                    print(&end);
                }
            } else {
                let v = c.call(Command::Logs { id, follow: false })?;
                if json {
                    print(&v);
                } else {
                    write_output(&v)?;
                }
            }
        }
        Cmd::Receipt { id, run, trace } => {
            let v = Conn::open(&target)?.call(Command::Receipt { id, run })?;
            if let Some(path) = trace {
                let t = perfetto_trace(&v["receipt"])?;
                std::fs::write(&path, serde_json::to_vec_pretty(&t)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if json {
                print(&v);
            } else {
                let r = &v["receipt"];
                println!(
                    "session {} run {} ({})",
                    r["session"].as_str().unwrap_or(""),
                    r["run"],
                    r["kind"].as_str().unwrap_or("")
                );
                println!(
                    "  exit       {}{}",
                    exit_text(&r["exit"]),
                    r["limit_hit"].as_str().map_or(String::new(), |l| format!(" (limit hit: {l})"))
                );
                println!(
                    "  time       {} → {} ({} ms)",
                    r["started"].as_str().unwrap_or(""),
                    r["ended"].as_str().unwrap_or(""),
                    r["duration_ms"]
                );
                println!(
                    "  cpu        user {} ms, sys {} ms; max RSS {} KiB; {} processes",
                    r["cpu_user_ms"], r["cpu_sys_ms"], r["max_rss_kib"], r["processes_spawned"]
                );
                println!(
                    "  stdout     {} bytes sha256 {}",
                    r["stdout"]["bytes"],
                    r["stdout"]["sha256"].as_str().unwrap_or("")
                );
                println!(
                    "  stderr     {} bytes sha256 {}",
                    r["stderr"]["bytes"],
                    r["stderr"]["sha256"].as_str().unwrap_or("")
                );
                println!("  binary     sha256 {}", r["sha256"].as_str().unwrap_or(""));
            }
        }
        Cmd::Events { id, follow } => {
            let mut c = Conn::open(&target)?;
            let sub = c.call(Command::Events { id, since: Some(1) })?;
            let head = sub["head_seq"].as_u64().unwrap_or(1);
            let mut seen = sub["next_seq"].as_u64().unwrap_or(1);
            // Without -f: what the rig holds now, then stop.
            while follow || seen < head {
                let v = c.read()?;
                if v["end"] == true {
                    break;
                }
                if let Some(s) = v["seq"].as_u64() {
                    seen = s + 1;
                } else if let Some(m) = v["missed"].as_u64() {
                    seen += m;
                }
                if json {
                    print(&v);
                } else if let Some(m) = v["missed"].as_u64() {
                    println!("({m} older events are no longer kept)");
                } else {
                    println!(
                        "{:>6} {} {:<15} {}",
                        v["seq"],
                        v["time"].as_str().unwrap_or(""),
                        v["event"].as_str().unwrap_or(""),
                        v["id"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Cmd::Run { path, exec, env, keep, args } => return run_program(&target, &path, exec, &env, keep, args, json),
    }
    Ok(ExitCode::SUCCESS)
}

/// HOST[:PORT] as given, or the address of a rig advertising that instance name.
fn resolve_rig(rig: &str) -> Result<String> {
    let looks_like_host = !rig.contains(' ') && !rig.contains('@') && rig.chars().all(|c| c.is_ascii_graphic());
    if looks_like_host {
        return Ok(if rig.contains(':') { rig.to_string() } else { format!("{rig}:4444") });
    }
    let found = frontend::discovery::discover(Duration::from_secs(3)).map_err(|e| anyhow!(e))?;
    let r = found
        .iter()
        .find(|r| r.instance.eq_ignore_ascii_case(rig))
        .ok_or_else(|| anyhow!("no rig named {rig:?} answered on the local network (lantern discover lists them)"))?;
    let ip = r
        .addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(r.addresses.first())
        .ok_or_else(|| anyhow!("rig {rig:?} advertises no address"))?;
    Ok(std::net::SocketAddr::new(*ip, r.port).to_string())
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

fn stopped(v: Value, json: bool) {
    if json {
        println!("{v}");
    } else {
        println!("{} STOPPED {}", v["id"].as_str().unwrap_or(""), exit_text(&v["exit"]));
    }
}

fn exit_text(e: &Value) -> String {
    if let Some(c) = e["code"].as_i64() {
        format!("exit {c}")
    } else if let Some(s) = e["signal"].as_i64() {
        format!("signal {s}")
    } else {
        "-".into()
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
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", path).with_context(|| format!("archiving {}", path.display()))?;
    Ok(tar.into_inner()?.finish()?)
}

fn upload(c: &mut Conn, path: &Path, exec: Option<String>) -> Result<Value> {
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
    c.ok()
}

fn write_output(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match v["data_base64"].as_str() {
        Some(b64) => out.write_all(&base64_decode(b64))?,
        None => out.write_all(v["data"].as_str().unwrap_or("").as_bytes())?,
    }
    out.flush()?;
    Ok(())
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for ch in bytes.chunks(4) {
        let n = ch.iter().enumerate().fold(0u32, |n, (i, &c)| n | (u32::from(val(c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..ch.len().max(1)]);
    }
    out
}

/// Streams a run's output to stdout until it ends; returns the final object.
fn stream_logs(c: &mut Conn, id: Uuid, json: bool) -> Result<Value> {
    c.send(&Command::Logs { id, follow: true })?;
    loop {
        let v = c.ok()?;
        if v["end"] == true {
            return Ok(v);
        }
        if json {
            println!("{v}");
        } else {
            write_output(&v)?;
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
    let id: Uuid =
        up["id"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("the rig gave no session id"))?;
    // Ctrl-C stops the remote program (over a second connection); the stream then ends.
    ctrlc_stop(rig.clone(), id);
    c.call(Command::Start { id, debug: false, opts: start_opts(args, env, &[])? })?;
    let end = stream_logs(&mut c, id, json)?;
    if json {
        println!("{end}");
    }
    if !keep {
        let _ = c.call(Command::Delete(id));
    }
    let e = &end["exit"];
    let code = match (e["code"].as_i64(), e["signal"].as_i64()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
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
                let _ = c.call(Command::Stop(id));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    });
}

/// A Chrome/Perfetto trace (JSON object format) of a run's timeline: the run, its setup,
/// the program and the debugger's attach windows as spans, limit hits as instants.
fn perfetto_trace(r: &Value) -> Result<Value> {
    let mut at = std::collections::HashMap::new();
    let mut debug_windows = Vec::new();
    let mut attached = None;
    for e in r["timeline"].as_array().into_iter().flatten() {
        let t = humantime::parse_rfc3339(e["time"].as_str().unwrap_or("")).context("bad time in the receipt")?;
        let us = t.duration_since(std::time::UNIX_EPOCH)?.as_micros() as u64;
        let event = e["event"].as_str().unwrap_or("");
        match event {
            "debug_attached" => attached = Some(us),
            "debug_detached" => debug_windows.extend(attached.take().map(|a| (a, us))),
            _ => {}
        }
        at.insert(event.to_string(), us);
    }
    let get = |k: &str| at.get(k).copied();
    let (Some(spawned), Some(exited)) = (get("spawned"), get("exited")) else {
        bail!("the receipt has no timeline (a run of an older rig?)");
    };
    let ready = get("setup_finished").unwrap_or(spawned);
    let span = |name: &str, ts: u64, end: u64, tid: u64| serde_json::json!({"name": name, "cat": "run", "ph": "X", "ts": ts, "dur": end.saturating_sub(ts), "pid": 1, "tid": tid, "args": {"session": r["session"], "run": r["run"]}});
    let mut events = vec![
        serde_json::json!({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": format!("session {}", r["session"].as_str().unwrap_or(""))}}),
        span(&format!("run {}", r["run"]), spawned, exited, 1),
        span("jail setup", spawned, ready, 2),
        span(&format!("program ({})", exit_text(&r["exit"])), ready, exited, 2),
    ];
    // A debugger still attached when the run ended: its window ends with the run.
    debug_windows.extend(attached.map(|a| (a, exited)));
    for (a, b) in debug_windows {
        events.push(span("debugger attached", a, b, 3));
    }
    if let Some(t) = get("limit_hit") {
        events.push(serde_json::json!({"name": format!("limit hit: {}", r["limit_hit"].as_str().unwrap_or("")), "ph": "i", "s": "p", "ts": t, "pid": 1, "tid": 2}));
    }
    // The process tree: a track per session pid, a span from its start to its exit_group.
    // The kernel keeps start times in clock ticks (10 ms), so a start is clamped into the run.
    let procs = r["processes"].as_array().cloned().unwrap_or_default();
    if !procs.is_empty() {
        events.push(serde_json::json!({"name": "process_name", "ph": "M", "pid": 2, "args": {"name": "process tree (session pids)"}}));
    }
    for p in &procs {
        let when = |k: &str| -> Result<u64> {
            let t = humantime::parse_rfc3339(p[k].as_str().unwrap_or("")).context("bad time in the receipt")?;
            Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_micros() as u64)
        };
        let (pid, end) = (p["pid"].as_u64().unwrap_or(0), when("end")?.min(exited));
        let start = when("start")?.clamp(spawned, end);
        let comm = p["comm"].as_str().unwrap_or("?");
        events.push(serde_json::json!({"name": "thread_name", "ph": "M", "pid": 2, "tid": pid, "args": {"name": format!("pid {pid} ({comm})")}}));
        events.push(serde_json::json!({
            "name": format!("{comm} (exit {})", p["exit_code"]), "cat": "process", "ph": "X", "ts": start,
            "dur": end - start, "pid": 2, "tid": pid,
            "args": {"pid": pid, "ppid": p["ppid"], "exit_code": p["exit_code"]},
        }));
    }
    Ok(serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"receipt": r}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_with_the_server() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"\xff\x00\x10binary"] {
            let (_, b64) = frontend::session::output_json(&[data, &b"\xff"[..]].concat());
            assert_eq!(base64_decode(b64.unwrap().as_str().unwrap()), [data, &b"\xff"[..]].concat());
        }
    }

    #[test]
    fn start_options() {
        let o = start_opts(vec!["a".into()], &["K=v=w".into()], &["cpu_seconds=3".into()]).unwrap();
        assert_eq!(o.env.unwrap()["K"], "v=w");
        assert_eq!(o.limits.unwrap().cpu_seconds, Some(3));
        assert!(start_opts(vec![], &["novalue".into()], &[]).is_err());
        assert!(start_opts(vec![], &[], &["bogus=1".into()]).is_err());
    }
}

/// The user's `lantern` configuration file.
#[derive(Debug, Default)]
struct UserConfig {
    path: Option<PathBuf>,
    rig: Option<String>,
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

    fn load() -> Result<UserConfig> {
        let Some(path) = UserConfig::path().filter(|p| p.exists()) else { return Ok(UserConfig::default()) };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
        for key in table.keys() {
            if !matches!(key.as_str(), "rig" | "token" | "token_file") {
                bail!("{}: unknown key {key:?} (known: rig, token, token_file, [rig.\"NAME\"])", path.display());
            }
        }
        let rig = match table.get("rig") {
            None | Some(toml::Value::Table(_)) => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(other) => bail!("{}: rig must be a string or a table, not {other}", path.display()),
        };
        Ok(UserConfig { path: Some(path), rig, table })
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
fn token_for(token_file: Option<&Path>, config: &UserConfig, rig: &str) -> Result<Option<String>> {
    if let Some(f) = token_file {
        return read_token_file(f).map(Some);
    }
    if let Some(t) = std::env::var("LANTERN_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    config.token(rig)
}
