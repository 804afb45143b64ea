//! The local debugger against a program on the rig: `lantern run --debug`, `lantern start
//! --debug --gdb` and `lantern debug --gdb`/`--vscode`.
//!
//! The program starts under gdbserver held at its entry (START --debug with no debug port
//! on the rig). The debugger runs here, with the local file's symbols, over a fresh,
//! authenticated control connection (`DEBUG <id> --stdio`): gdb through a pipe to
//! `lantern gdb-pipe` (`target remote | ...`, the token in its environment); lldb, which
//! cannot use a pipe, through a one-shot listener of ours on loopback whose first
//! connection (within 30 s) is relayed. The program's output is followed (`LOGS
//! --follow`) onto our stdout and stderr meanwhile.

use crate::conn::{Conn, Target};
use anyhow::{bail, Context, Result};
use proto::reply::{Debugging, Deleted, LogEnd, Started, State, Status};
use proto::{Command, StartOpts};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;

/// Which debugger runs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Debugger {
    /// GNU gdb.
    Gdb,
    /// LLVM lldb.
    Lldb,
}

/// How to debug.
#[derive(Debug, Clone)]
pub struct DebugArgs {
    /// The debugger.
    pub debugger: Debugger,
    /// Where to stop first.
    pub brk: String,
    /// The local copy of the program (its symbols), if there is one.
    pub file: Option<PathBuf>,
}

/// How long the debugger gets to connect to our listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// START --debug of a loaded session, then the debugger; after it, the program's end (or
/// that it runs on). Returns the program's exit status if it ended, else the debugger's.
/// `remove`: delete the session afterwards unless the program runs on.
pub fn start_and_debug(
    target: &Target,
    id: Uuid,
    mut opts: StartOpts,
    d: &DebugArgs,
    remove: bool,
) -> Result<ExitCode> {
    opts.debug_port = Some(false);
    let started: Started = Conn::open(target)?.call(Command::Start { id, debug: true, attach: false, opts })?;
    if started.state != State::Debugging {
        bail!("the rig did not hold the program for a debugger (state {})", started.state.as_str());
    }
    let out = follow_output(target, id);
    let code = run_debugger(target, id, d)?;
    // The debugger is gone: if the program ended, its output has been followed to the end.
    let mut c = Conn::open(target)?;
    let st: Status = wait_settled(&mut c, id)?;
    if st.summary.state.alive() {
        eprintln!("lantern: session {id} runs on without a debugger (lantern logs -f / kill / delete {id})");
        return Ok(code);
    }
    let _ = out.join();
    let status = st.summary.exit.map(|e| e.shell_status());
    if remove {
        let _ = c.call::<Deleted>(Command::Delete(id));
    } else {
        eprintln!("lantern: session {id} is kept (lantern logs / receipt / delete {id})");
    }
    Ok(match status {
        Some(s) => ExitCode::from(s.clamp(0, 255) as u8),
        None => code,
    })
}

/// A session whose debugger just left is DEBUGGING for a moment more: wait (briefly) until
/// it is RUNNING or has ended.
fn wait_settled(c: &mut Conn, id: Uuid) -> Result<Status> {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st: Status = c.call(Command::Status(id))?;
        if st.summary.state != State::Debugging || std::time::Instant::now() > end {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Follows the run's output onto our stdout and stderr until it ends.
fn follow_output(target: &Target, id: Uuid) -> std::thread::JoinHandle<Option<LogEnd>> {
    let target = target.clone();
    std::thread::spawn(move || {
        let mut c = Conn::open(&target).ok()?;
        crate::stream_logs(&mut c, id, None, false).ok()
    })
}

/// Runs the debugger here against the session's waiting gdbserver. Returns its exit code.
pub fn run_debugger(target: &Target, id: Uuid, d: &DebugArgs) -> Result<ExitCode> {
    let file = d.file.as_deref().map(Path::to_path_buf);
    let (mut cmd, bridge) = match d.debugger {
        Debugger::Gdb => {
            // The pipe's lantern reaches the rig by its address (no second discovery) with
            // our token (the environment of a process is its user's alone).
            let rig = crate::conn::host_port(&target.rig);
            let me = std::env::current_exe().context("finding lantern's own path")?;
            let mut c = std::process::Command::new("gdb");
            c.arg("-q");
            if let Some(f) = &file {
                c.arg(f);
            }
            let pipe = format!("target remote | {} gdb-pipe {rig} {id}", shell_word(&me.to_string_lossy()));
            c.args(["-ex", &pipe, "-ex", &format!("break {}", d.brk), "-ex", "continue"]);
            if let Some(t) = &target.token {
                c.env("LANTERN_TOKEN", t);
            }
            (c, None)
        }
        Debugger::Lldb => {
            let listener = TcpListener::bind("127.0.0.1:0").context("listening on loopback for the debugger")?;
            let addr = listener.local_addr()?;
            let target = target.clone();
            let bridge = std::thread::spawn(move || bridge(listener, &target, id));
            let mut c = std::process::Command::new("lldb");
            if let Some(f) = &file {
                c.arg(f);
            }
            c.args([
                "-o",
                &format!("breakpoint set -n {}", d.brk),
                "-o",
                &format!("gdb-remote {addr}"),
                "-o",
                "continue",
            ]);
            (c, Some(bridge))
        }
    };
    let st = cmd.status().with_context(|| format!("running {:?} (is it installed?)", cmd.get_program()))?;
    if let Some(Ok(Err(e))) = bridge.map(|b| b.join()) {
        eprintln!("lantern: {e:#}");
    }
    Ok(ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8))
}

/// `w` as one word of gdb's `target remote |` command line (run by /bin/sh).
fn shell_word(w: &str) -> String {
    if w.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:".contains(&b)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// Accepts the debugger's one connection (from loopback, before the timeout) and relays it
/// over `DEBUG <id> --stdio`.
fn bridge(listener: TcpListener, target: &Target, id: Uuid) -> Result<()> {
    listener.set_nonblocking(true)?;
    let end = std::time::Instant::now() + CONNECT_TIMEOUT;
    let local = loop {
        match listener.accept() {
            Ok((s, from)) if from.ip().is_loopback() => break s,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > end {
                    bail!("the debugger did not connect within {}s", CONNECT_TIMEOUT.as_secs());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    drop(listener);
    local.set_nonblocking(false)?;
    let _ = local.set_nodelay(true);
    let mut c = Conn::open(target)?;
    let v: Debugging = c.call(Command::Debug { id, stdio: true })?;
    if !v.stdio {
        bail!("the rig did not relay the debugger over the control connection");
    }
    let early = c.reader.buffer().to_vec();
    let from_rig = c.reader.into_inner();
    relay(local, from_rig, c.writer, early)
}

/// Bytes both ways between the debugger and the rig, until either side ends.
fn relay(local: TcpStream, from_rig: TcpStream, to_rig: TcpStream, early: Vec<u8>) -> Result<()> {
    let to_debugger = local.try_clone()?;
    let end = to_debugger.try_clone()?;
    let r = pipe_both(local, to_debugger, from_rig, to_rig, &early);
    let _ = end.shutdown(std::net::Shutdown::Both);
    r
}

/// Copies `from_local` to the rig (on a thread; the rig's write side is shut at its EOF)
/// and the rig to `to_local` (after `early`, what was read with the reply line) until the
/// rig's side ends.
pub fn pipe_both(
    mut from_local: impl Read + Send + 'static,
    mut to_local: impl Write,
    mut from_rig: TcpStream,
    mut to_rig: TcpStream,
    early: &[u8],
) -> Result<()> {
    to_local.write_all(early)?;
    to_local.flush()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from_local.read(&mut buf) {
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
            return Ok(());
        }
        to_local.write_all(&buf[..n])?;
        to_local.flush()?;
    }
}

/// `lantern debug --vscode ID`: a launch configuration (VS Code's cppdbg) that debugs the
/// session through `lantern gdb-pipe` — no debug port on the rig.
pub fn vscode_config(rig: &str, id: Uuid, program: Option<&Path>, lantern: &Path) -> serde_json::Value {
    let program = program.map_or_else(|| "${workspaceFolder}/PROGRAM".to_string(), |p| p.display().to_string());
    serde_json::json!({
        "version": "0.2.0",
        "configurations": [{
            "name": format!("debuglantern {id}"),
            "type": "cppdbg",
            "request": "launch",
            "program": program,
            "cwd": "${workspaceFolder}",
            "MIMode": "gdb",
            "miDebuggerPath": "gdb",
            "miDebuggerServerAddress": format!("| {} gdb-pipe {rig} {id}", lantern.display()),
            "stopAtEntry": false,
            "setupCommands": [{"text": "-enable-pretty-printing", "ignoreFailures": true}],
        }]
    })
}

/// The local copy of an uploaded program, for its symbols: a file, or a directory
/// bundle's executable (a `.tar.gz` has none here: the debugger reads it from the rig).
pub fn local_program(path: &Path, exec: Option<&str>) -> Option<PathBuf> {
    let m = std::fs::metadata(path).ok()?;
    if m.is_file() {
        let name = path.to_string_lossy();
        let tarball = name.ends_with(".tar.gz") || name.ends_with(".tgz");
        return (!tarball || exec.is_none()).then(|| path.to_path_buf());
    }
    exec.map(|e| path.join(e)).filter(|p| p.is_file())
}

/// `lantern start --debug --wait`: after the gdb line, waits until a debugger has come and
/// gone, the deadline passed (the program then runs without one), or the run ended, and
/// says which. `events` was subscribed (to this session) before the START.
pub fn wait_for_debugger(events: &mut Conn, id: Uuid) -> Result<()> {
    use proto::reply::{EventKind, EventLine};
    loop {
        let line: EventLine = events.read()?;
        let EventLine::Event(e) = line else { continue };
        if e.id != id {
            continue;
        }
        match e.what {
            EventKind::DebugAttached { peer } => eprintln!("lantern: a debugger connected ({peer})"),
            EventKind::DebugDetached {} => {
                // The program may have ended with it: its end comes right after.
                events.writer.set_read_timeout(Some(Duration::from_secs(1)))?;
                let left = "the debugger left";
                loop {
                    match events.read::<EventLine>() {
                        Ok(EventLine::Event(e)) if e.id == id => {
                            if let EventKind::Exited { exit, .. } = e.what {
                                eprintln!("lantern: {left}; {id} ended ({exit})");
                                return Ok(());
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                eprintln!("lantern: {left}; {id} runs on");
                return Ok(());
            }
            EventKind::DebugExpired {} => {
                eprintln!("lantern: no debugger connected before the deadline; {id} runs on without one");
                return Ok(());
            }
            EventKind::Exited { exit, .. } => {
                eprintln!("lantern: {id} ended ({exit})");
                return Ok(());
            }
            EventKind::Deleted {} => bail!("session {id} was deleted"),
            _ => {}
        }
    }
}
