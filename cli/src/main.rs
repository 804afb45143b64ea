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
//! Exit codes: 0 success; 1 the rig refused (the message says why, with its error code;
//! with `--json`, the rig's error object is printed on stdout); 2 usage errors; 3 the rig
//! cannot be reached or broke the protocol, or a local file or stream failed; `run` exits
//! with the program's own code, or 128 + signal when it was killed. A closed stdout (`|
//! head`) ends `lantern` quietly, like any Unix tool.

mod bundle;
mod config;
mod conn;
mod cp;
mod debug;
mod lab;
mod ops;
mod run;
mod term;
mod trace;

use anyhow::{anyhow, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use config::{token_for, UserConfig};
use conn::{Conn, Refused, Target};
use proto::reply::{
    Debugging, Deleted, EventLine, Exit, FollowLine, List, LogEnd, Logs, ReceiptReply, Started, Status, Stopped,
    Subscribed,
};
use proto::{Command, Stream};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
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
    /// The rig: HOST[:PORT], an instance name found by `lantern discover`, or `any` (upload,
    /// run: the least loaded rig that can run the file; `any:arch=aarch64,domain=D`
    /// filters) (default 127.0.0.1:4444).
    #[arg(long, global = true, env = "LANTERN_RIG")]
    rig: Option<String>,
    /// A unicast DNS-SD domain to find rigs in (repeatable; default: `domains` in the
    /// config file). mDNS on the local link is always asked too, except by `discover`.
    #[arg(long = "domain", global = true, value_name = "DOMAIN")]
    domains: Vec<String>,
    /// The DNS server to browse domains at, HOST[:PORT] (default: /etc/resolv.conf's).
    #[arg(long, global = true, value_name = "HOST[:PORT]")]
    dns_server: Option<String>,
    /// File holding the token for the rig (else LANTERN_TOKEN, else the config file).
    #[arg(long, global = true, value_name = "FILE", env = "LANTERN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How `run --debug` and `start --debug --gdb` debug.
#[derive(Debug, clap::Args)]
struct DebugOpts {
    /// Where the debugger stops first.
    #[arg(long = "break", value_name = "SYMBOL", default_value = "main")]
    brk: String,
    /// The local debugger.
    #[arg(long, value_enum, default_value = "gdb")]
    debugger: debug::Debugger,
    /// The local copy of the program, for its symbols (run --debug: the uploaded file).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
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
        /// With --debug: run the local debugger, connected over this connection's rig (no
        /// debug port), stopped at --break.
        #[arg(long, requires = "debug")]
        gdb: bool,
        /// With --debug (and no --gdb): after printing the gdb line, wait until a debugger
        /// has come and gone, the deadline passed, or the run ended, and say which.
        #[arg(long, requires = "debug", conflicts_with = "gdb")]
        wait: bool,
        #[command(flatten)]
        dbg: DebugOpts,
        /// Environment (KEY=VALUE, repeatable); given, it is the whole environment.
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Limits of this run, e.g. cpu_seconds=5, memory_bytes=512M, wall_seconds=10m, cpus=0.5
        /// (repeatable; they may only tighten the rig's).
        #[arg(long = "limit", value_name = "NAME=N")]
        limits: Vec<String>,
        /// The program's argv[0].
        #[arg(long)]
        argv0: Option<String>,
        /// Keep the session's /tmp as the last run (or `lantern cp`) left it.
        #[arg(long)]
        keep_tmp: bool,
        /// Do not list every process of the tree in the receipt (each process exit then
        /// skips a round trip to the session's init: for fork-heavy programs).
        #[arg(long)]
        no_process_list: bool,
        /// Record what the run touches: files, exec, net (comma separated) or all; in the
        /// receipt (lantern receipt --files / --execs / --net). `none`: not even the rig's
        /// default.
        #[arg(long, value_name = "KINDS", value_parser = parse_observe)]
        observe: Option<ObserveKinds>,
        /// Arguments after the program's name.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Attach gdbserver to a running session and print the gdb line (--gdb runs it); on a
    /// DEBUGGING session whose debugger has not connected yet, print its line again.
    Debug {
        /// Session id.
        id: Uuid,
        /// Print a VS Code launch configuration (cppdbg through `lantern gdb-pipe`) instead.
        #[arg(long, conflicts_with = "gdb")]
        vscode: bool,
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
    /// The session's last core dump (a process of a run died of SIGSEGV, SIGABRT...):
    /// then `gdb ./prog FILE`.
    Core {
        /// Session id.
        id: Uuid,
        /// Where to write it (`-` for stdout; default `core.<first 8 of the id>`).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Captured output of the last run: its stdout on stdout, its stderr on stderr.
    Logs {
        /// Session id.
        id: Uuid,
        /// Follow until the run ends (every byte: the run waits for a slow reader).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only this stream.
        #[arg(long, value_parser = ["stdout", "stderr"])]
        stream: Option<String>,
    },
    /// The record of a run.
    Receipt {
        /// Session id.
        id: Uuid,
        /// Which run (default: the last).
        #[arg(long)]
        run: Option<u32>,
        /// Also write the run's timeline as a Chrome/Perfetto trace (JSON); an observed
        /// run's calls are instant events on each process's track.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
        /// The files the run touched (START --observe files).
        #[arg(long)]
        files: bool,
        /// The programs it executed (--observe exec).
        #[arg(long)]
        execs: bool,
        /// The network endpoints it tried (--observe net).
        #[arg(long)]
        net: bool,
    },
    /// Lifecycle events the rig still holds; with -f, keep following.
    Events {
        /// Only this session's.
        id: Option<Uuid>,
        /// Follow new events until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Upload and run as if here: stdout and stderr apart, stdin forwarded (when it is not
    /// a terminal, or with -i), a terminal with -t, Ctrl-C to the program, its exit code.
    /// The run ends (and the session goes) when lantern does, however it does.
    Run {
        /// File, directory or .tar.gz.
        path: PathBuf,
        /// The bundle's executable, relative to its root.
        #[arg(long)]
        exec: Option<String>,
        /// Environment (KEY=VALUE, repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Limits of this run, e.g. memory_bytes=512M, wall_seconds=10m, cpus=0.5 (repeatable).
        #[arg(long = "limit", value_name = "NAME=N")]
        limits: Vec<String>,
        /// The program's argv[0] (default: the file's name, or the bundle's exec path).
        #[arg(long)]
        argv0: Option<String>,
        /// Keep the session afterwards (its id is printed on stderr).
        #[arg(long)]
        keep: bool,
        /// Forward stdin even when it is a terminal.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Run the program on a terminal of the rig (raw mode here; resizes follow).
        #[arg(short = 't', long)]
        tty: bool,
        /// Debug it from its entry point: the local debugger, with the local file's symbols,
        /// stopped at --break (over the control connection: no debug port on the rig).
        #[arg(long, conflicts_with_all = ["tty", "interactive"])]
        debug: bool,
        #[command(flatten)]
        dbg: DebugOpts,
        /// Record what the run touches: files, exec, net (comma separated) or all; in the
        /// receipt (lantern receipt --files / --execs / --net). `none`: not even the rig's
        /// default.
        #[arg(long, value_name = "KINDS", value_parser = parse_observe)]
        observe: Option<ObserveKinds>,
        /// Arguments after the program's name.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run another program in a running session (same namespaces, uid, limits, /tmp and
    /// /bundle), as if here: `lantern exec ID -it -- /bin/sh`. Its exit code is ours.
    Exec {
        /// Session id.
        id: Uuid,
        /// Forward stdin even when it is a terminal.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// On a terminal of the session (raw mode here; resizes follow).
        #[arg(short = 't', long)]
        tty: bool,
        /// Environment (KEY=VALUE, repeatable); given, it is the whole environment.
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// The program (a path in the session: /bin/sh, /bundle/tool) and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Copy files and directories into or out of a session: `lantern cp ./in ID:/tmp/in/`,
    /// `lantern cp ID:/tmp/results ./results`, `-` for stdin or stdout. Works while the
    /// session runs and after; its /tmp stays until the next START (without --keep-tmp) or
    /// DELETE.
    Cp {
        /// Source: a local path, `-` (stdin) or ID:PATH.
        src: String,
        /// Destination: a local path, `-` (stdout) or ID:PATH (a trailing / copies into
        /// that directory).
        dst: String,
        /// stdin is a tar stream, unpacked as a directory in the session.
        #[arg(long)]
        tar: bool,
        /// Do not say what was copied.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Rigs advertised on the local network (mDNS) and, with --domain (or `domains` in
    /// the config file), in unicast DNS-SD domains.
    Discover {
        /// How long to listen to mDNS, in seconds.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
        /// With --domain: browse mDNS too.
        #[arg(long)]
        mdns: bool,
        /// Ask each rig its load (as `lantern rigs`).
        #[arg(long)]
        load: bool,
    },
    /// One line per rig found: arch, auth, sessions used / max, free bytes, reachable.
    Rigs {
        /// How long to listen to mDNS, in seconds.
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
    term::default_sigpipe();
    let cli = Cli::parse();
    let json = cli.json;
    let result = run(cli);
    term::restore();
    match result {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<Refused>() {
            Some(r) if json => {
                let _ = print_json(&r.0);
                ExitCode::from(1)
            }
            Some(_) => {
                eprintln!("lantern: {e:#}");
                ExitCode::from(1)
            }
            None => {
                eprintln!("lantern: {e:#}");
                ExitCode::from(3)
            }
        },
    }
}

/// Prints a reply as the server's JSON (one line).
pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
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
    let only_domains = matches!(cli.cmd, Cmd::Discover { mdns: false, .. });
    let mut lab = lab::Lab::new(&config, &cli.domains, cli.dns_server.clone(), only_domains);
    let any = lab::any_filters(&rig)?;
    let needs_rig =
        !matches!(cli.cmd, Cmd::Discover { .. } | Cmd::Rigs { .. } | Cmd::Completions { .. } | Cmd::GdbPipe { .. });
    if any.is_some() && needs_rig && !matches!(cli.cmd, Cmd::Upload { .. } | Cmd::Run { .. } | Cmd::Start { .. }) {
        anyhow::bail!("--rig any chooses a rig for upload and run (and finds a session's rig for start); name the rig for this command");
    }
    let token = token_for(token_file.as_deref(), &config, &rig)?;
    let resolved = if needs_rig && any.is_none() { conn::resolve_rig(&rig, &lab)? } else { rig.clone() };
    let target = Target { token, rig: resolved };
    let json = cli.json;
    if let Cmd::Discover { timeout, .. } | Cmd::Rigs { timeout } = &cli.cmd {
        lab.mdns_wait = Duration::from_secs_f64(timeout.clamp(0.1, 600.0));
    }
    // Where an upload goes: the named rig, or the best candidate for the file.
    let place = |path: &std::path::Path, exec: Option<&str>| -> Result<lab::Place> {
        match &any {
            None => Ok(lab::Place::One(target.clone())),
            Some(f) => lab::candidates(&lab, f, path, exec, &config, token_file.as_deref()).map(lab::Place::Any),
        }
    };
    match cli.cmd {
        Cmd::Rigs { .. } | Cmd::Discover { load: true, .. } => {
            let probed = lab::probe(lab.find()?, &config, token_file.as_deref())?;
            rigs_table(&probed, json)?;
        }
        Cmd::Discover { timeout, .. } => {
            let found = lab.find()?;
            if json {
                print_json(&serde_json::json!({"ok": true, "rigs": found}))?;
            } else if found.is_empty() {
                let within = if lab.mdns { format!(" within {timeout} s") } else { String::new() };
                println!("no rig answered{within}");
            } else {
                for r in &found {
                    let addrs: Vec<String> = r.addresses.iter().map(|a| a.to_string()).collect();
                    println!(
                        "{}  {}:{}  {}  {}{}",
                        r.instance,
                        r.host,
                        r.port,
                        addrs.join(","),
                        r.txt.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                        if r.domain == "local" { String::new() } else { format!("  (in {})", r.domain) }
                    );
                }
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lantern", &mut std::io::stdout());
        }
        Cmd::Upload { path, exec } => {
            let name = if exec.is_none() { run::program_name(&path) } else { None };
            let p = lab::upload(place(&path, exec.as_deref())?, &path, exec, name)?;
            if json {
                let mut v = serde_json::to_value(&p.loaded)?;
                if let (Some(c), Some(o)) = (&p.chosen, v.as_object_mut()) {
                    o.insert("rig".into(), lab::chosen_json(c));
                }
                print_json(&v)?;
            } else {
                println!("{}", p.loaded.id);
            }
        }
        Cmd::Start { id, debug, gdb, wait, dbg, env, limits, argv0, keep_tmp, no_process_list, observe, args } => {
            let target = match any {
                Some(_) => lab::holding(&lab, id, &config, token_file.as_deref())?,
                None => target,
            };
            let mut opts = ops::start_opts(args, &env, &limits)?;
            opts.list_processes = no_process_list.then_some(false);
            opts.observe = observe.map(|k| k.0);
            opts.argv0 = argv0;
            opts.keep_tmp = keep_tmp.then_some(true);
            if gdb {
                let d = debug::DebugArgs { debugger: dbg.debugger, brk: dbg.brk, file: dbg.file };
                return debug::start_and_debug(&target, id, opts, &d, false);
            }
            // Subscribed first, so that no event of this run is missed.
            let mut events = None;
            if wait {
                let mut e = Conn::open(&target)?;
                e.call::<proto::reply::Subscribed>(Command::Events { id: Some(id), since: None })?;
                events = Some(e);
            }
            let v: Started = Conn::open(&target)?.call(Command::Start { id, debug, attach: false, opts })?;
            if json {
                print_json(&v)?;
            } else if let Some(d) = &v.debug {
                println!("{} DEBUGGING (held at its entry point) pid {}; connect with:", id, pid_text(v.pid));
                println!("{}", d.gdb);
            } else if let Some(d) = &v.debug_stdio {
                println!("{} DEBUGGING (held at its entry point) pid {}; connect with:", id, pid_text(v.pid));
                println!("{}", d.gdb.replace(" RIG ", &format!(" {} ", target.rig)));
            } else {
                println!("{} RUNNING pid {} (ns pid {})", id, pid_text(v.pid), v.ns_pid);
            }
            if let Some(mut e) = events {
                std::io::stdout().flush()?;
                debug::wait_for_debugger(&mut e, id)?;
            }
        }
        Cmd::Debug { id, vscode: true, file, .. } => {
            let lantern = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lantern"));
            print_json(&debug::vscode_config(&target.rig, id, file.as_deref(), &lantern))?;
        }
        Cmd::Debug { id, gdb, file, .. } => {
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
            let token = token_for(token_file.as_deref(), &config, &rig)?;
            let target = Target { token, rig: conn::resolve_rig(&rig, &lab)? };
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
        Cmd::Core { id, output } => {
            let mut c = Conn::open(&target)?;
            let got: proto::reply::CoreGot = c.call(Command::Core(id))?;
            let path = output.unwrap_or_else(|| PathBuf::from(format!("core.{}", &id.to_string()[..8])));
            cp::receive_checked(&mut c, got.core.bytes, &got.core.sha256, &path)?;
            if json {
                print_json(&got)?;
            } else if path.as_os_str() != "-" {
                let cut = if got.core.truncated { ", cut at the session's core_bytes" } else { "" };
                eprintln!(
                    "{}: core of pid {} ({}, signal {}, {} threads, {} bytes{cut}); gdb PROGRAM {}",
                    path.display(),
                    got.core.pid,
                    got.core.comm,
                    got.core.signal,
                    got.core.threads,
                    got.core.bytes,
                    path.display()
                );
            }
        }
        Cmd::Logs { id, follow, stream } => {
            let stream = stream.map(|s| if s == "stderr" { Stream::Stderr } else { Stream::Stdout });
            let mut c = Conn::open(&target)?;
            if follow {
                term::end_when_stdout_closes();
                let end = stream_logs(&mut c, id, stream, json)?;
                if json {
                    print_json(&end)?;
                }
            } else if json {
                print_json(&c.call::<Logs>(Command::Logs { id, follow: false, stream })?)?;
            } else {
                // Each stream to its own descriptor (a snapshot of each).
                for s in stream.map_or(vec![Stream::Stdout, Stream::Stderr], |s| vec![s]) {
                    let v: Logs = c.call(Command::Logs { id, follow: false, stream: Some(s) })?;
                    write_stream(s, &v.bytes())?;
                    dropped_note(s, v.dropped);
                }
            }
        }
        Cmd::Receipt { id, run, trace, files, execs, net } => {
            let v: ReceiptReply = Conn::open(&target)?.call(Command::Receipt { id, run })?;
            if let Some(path) = trace {
                let t = trace::perfetto(&v.receipt)?;
                std::fs::write(&path, serde_json::to_vec_pretty(&t)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if json {
                print_json(&v)?;
            } else if files || execs || net {
                observed_tables(&v.receipt, files, execs, net)?;
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
                if let Some(o) = &r.observed {
                    let t = o.truncated;
                    println!(
                        "  observed   {} files, {} execs, {} endpoints{} (lantern receipt --files / --execs / --net)",
                        o.files.len(),
                        o.execs.len(),
                        o.net.len(),
                        if t.files + t.execs + t.net > 0 {
                            format!("; {} calls beyond the bound of {} per kind", t.files + t.execs + t.net, o.limit)
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        Cmd::Events { id, follow } => {
            let mut c = Conn::open(&target)?;
            let sub: Subscribed = c.call(Command::Events { id, since: Some(1) })?;
            let head = sub.head_seq;
            let mut seen = sub.next_seq;
            if follow {
                term::end_when_stdout_closes();
            }
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
        Cmd::Exec { id, interactive, tty, env, argv } => {
            let env = ops::start_opts(vec![], &env, &[])?.env;
            let opts = proto::ExecOpts { argv, env, stdin: None, tty: None };
            return run::exec(&target, id, opts, interactive, tty, json);
        }
        Cmd::Cp { src, dst, tar, quiet } => {
            let mut c = Conn::open(&target)?;
            cp::cp(&mut c, cp::side(&src), cp::side(&dst), tar, quiet)?;
        }
        // -i and -t conflict with --debug (clap refuses them together).
        Cmd::Run { path, exec, env, limits, argv0, keep, debug: true, dbg, observe, args, .. } => {
            let mut opts = ops::start_opts(args, &env, &limits)?;
            opts.argv0 = argv0;
            opts.observe = observe.map(|k| k.0);
            let name = if exec.is_none() { run::program_name(&path) } else { None };
            let file = dbg.file.or_else(|| debug::local_program(&path, exec.as_deref()));
            let placed = lab::upload(place(&path, exec.as_deref())?, &path, exec, name)?;
            let (target, id) = (placed.target, placed.loaded.id);
            drop(placed.conn);
            let d = debug::DebugArgs { debugger: dbg.debugger, brk: dbg.brk, file };
            let r = debug::start_and_debug(&target, id, opts, &d, !keep);
            if r.is_err() && !keep {
                if let Ok(mut c) = Conn::open(&target) {
                    let _ = c.call::<Deleted>(Command::Delete(id));
                }
            }
            return r;
        }
        Cmd::Run { path, exec, env, limits, argv0, keep, interactive, tty, observe, args, .. } => {
            let mut opts = ops::start_opts(args, &env, &limits)?;
            opts.argv0 = argv0;
            opts.observe = observe.map(|k| k.0);
            let where_ = place(&path, exec.as_deref())?;
            let a = run::RunArgs { path, exec, opts, keep, interactive, tty, json };
            return run::run(where_, a);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lantern receipt --files/--execs/--net`: what an observed run touched, as tables.
fn observed_tables(r: &proto::reply::Receipt, files: bool, execs: bool, net: bool) -> Result<()> {
    let Some(o) = &r.observed else {
        anyhow::bail!("run {} was not observed (lantern run/start --observe files,exec,net)", r.run);
    };
    let fails = |m: &std::collections::BTreeMap<String, u32>| {
        m.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" ")
    };
    let want = |k: &str| o.asked.iter().any(|a| a == k);
    if files {
        if !want("files") && !want("exec") {
            println!("(files were not observed)");
        }
        println!("{:<5} {:>6}  {:<48} FAILURES", "FLAGS", "CALLS", "PATH");
        for f in &o.files {
            let flags = format!(
                "{}{}{}{}",
                if f.read { 'r' } else { '-' },
                if f.write { 'w' } else { '-' },
                if f.create { 'c' } else { '-' },
                if f.exec { 'x' } else { '-' }
            );
            let path = match &f.resolved {
                Some(r) => format!("{} ({r})", f.path),
                None => f.path.clone(),
            };
            println!("{flags:<5} {:>6}  {path:<48} {}", f.count, fails(&f.failures));
        }
        if o.truncated.files > 0 {
            println!("… {} more calls on paths beyond the bound of {}", o.truncated.files, o.limit);
        }
    }
    if execs {
        if !want("exec") {
            println!("(execs were not observed)");
        }
        println!("{:>6} {:>6}  {:<12} PROGRAM AND ARGUMENTS", "PID", "PPID", "RESULT");
        for e in &o.execs {
            let args: Vec<&str> = e.argv.iter().skip(1).map(String::as_str).collect();
            let more = if e.argv_truncated { " …" } else { "" };
            println!("{:>6} {:>6}  {:<12} {} {}{more}", e.pid, e.ppid, e.result, e.path, args.join(" "));
        }
        if o.truncated.execs > 0 {
            println!("… {} more execs beyond the bound of {}", o.truncated.execs, o.limit);
        }
    }
    if net {
        if !want("net") {
            println!("(network calls were not observed)");
        }
        println!("{:<8} {:<6} {:<40} {:>6}  {:<14} FAILURES", "OP", "FAMILY", "ADDRESS", "CALLS", "RESULT");
        for n in &o.net {
            let at = if n.port != 0 || n.family != "unix" {
                if n.family == "inet6" {
                    format!("[{}]:{}", n.address, n.port)
                } else {
                    format!("{}:{}", n.address, n.port)
                }
            } else {
                n.address.clone()
            };
            println!("{:<8} {:<6} {at:<40} {:>6}  {:<14} {}", n.op, n.family, n.count, n.result, fails(&n.failures));
        }
        if o.truncated.net > 0 {
            println!("… {} more calls to endpoints beyond the bound of {}", o.truncated.net, o.limit);
        }
    }
    Ok(())
}

/// `lantern rigs`: one line per rig (or the probes as JSON).
fn rigs_table(probed: &[lab::Probed], json: bool) -> Result<()> {
    if json {
        return print_json(&serde_json::json!({"ok": true, "rigs": probed}));
    }
    if probed.is_empty() {
        println!("no rig answered");
        return Ok(());
    }
    println!("{:<28} {:<22} {:<8} {:<6} {:>9} {:>10}  FOUND IN", "RIG", "ADDRESS", "ARCH", "AUTH", "SESSIONS", "FREE");
    for p in probed {
        let t = |k: &str| p.found.txt.get(k).cloned().unwrap_or_else(|| "?".into());
        let (sessions, free) = match p.hello.as_ref().and_then(|h| h.load) {
            Some(l) => (format!("{}/{}", l.sessions, l.max_sessions), bytes_text(l.bytes_free)),
            None if p.reachable => ("?".into(), "?".into()),
            None => ("unreachable".into(), "-".into()),
        };
        println!(
            "{:<28} {:<22} {:<8} {:<6} {:>9} {:>10}  {}{}",
            p.found.instance,
            p.address.as_deref().unwrap_or("-"),
            t("arch"),
            t("auth"),
            sessions,
            free,
            if p.found.domain == "local" { "mDNS" } else { &p.found.domain },
            p.error.as_ref().map_or(String::new(), |e| format!("  ({e})"))
        );
    }
    Ok(())
}

/// `files,exec,net`, `all` or `none` (which sends `[]`: nothing, not even the rig's default).
/// The kinds `--observe` names.
#[derive(Debug, Clone)]
struct ObserveKinds(Vec<String>);

fn parse_observe(s: &str) -> Result<ObserveKinds, String> {
    let mut kinds = Vec::new();
    for k in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        match k {
            "files" | "exec" | "net" | "all" => kinds.push(k.to_string()),
            "none" => {}
            "execs" => kinds.push("exec".into()),
            other => return Err(format!("unknown kind {other:?} (files, exec, net, all, none)")),
        }
    }
    Ok(ObserveKinds(kinds))
}

fn bytes_text(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

fn pid_text(pid: Option<i32>) -> String {
    pid.map_or_else(|| "null".into(), |p| p.to_string())
}

/// Copies stdin to the rig and the rig to stdout until either side ends.
fn gdb_pipe(c: Conn) -> Result<ExitCode> {
    let early = c.reader.buffer().to_vec();
    let from_rig = c.reader.into_inner();
    debug::pipe_both(std::io::stdin(), std::io::stdout(), from_rig, c.writer, &early)?;
    Ok(ExitCode::SUCCESS)
}

fn stopped(v: Stopped, json: bool) -> Result<()> {
    if json {
        print_json(&v)
    } else {
        println!("{} STOPPED {}", v.id, exit_text(v.exit));
        Ok(())
    }
}

/// Writes bytes of `stream` to our own descriptor of it.
fn write_stream(stream: Stream, bytes: &[u8]) -> Result<()> {
    let r = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(bytes).and_then(|()| std::io::stdout().flush()),
        Stream::Stderr => std::io::stderr().lock().write_all(bytes),
    };
    r.with_context(|| format!("writing to {}", stream.as_str()))
}

/// Says on stderr that output was lost before what was printed.
fn dropped_note(stream: Stream, dropped: u64) {
    if dropped > 0 {
        eprintln!(
            "lantern: {dropped} earlier bytes of {} were dropped (nobody followed the run; the rig keeps the newest)",
            stream.as_str()
        );
    }
}

/// Streams a run's output, each stream to its own descriptor, until it ends; returns the
/// final object.
fn stream_logs(c: &mut Conn, id: Uuid, stream: Option<Stream>, json: bool) -> Result<LogEnd> {
    c.send(&Command::Logs { id, follow: true, stream })?;
    loop {
        match c.read::<FollowLine>()? {
            FollowLine::End(end) => return Ok(end),
            FollowLine::Chunk(chunk) if json => print_json(&chunk)?,
            FollowLine::Chunk(chunk) => {
                dropped_note(chunk.stream, chunk.dropped);
                write_stream(chunk.stream, &chunk.bytes())?;
            }
        }
    }
}
