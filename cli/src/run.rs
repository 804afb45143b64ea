//! `lantern run`: upload, `START --attach`, and the run's I/O as if it ran here — stdout
//! and stderr to their own descriptors, stdin forwarded (byte for byte, then EOF), a
//! terminal with `-t`, Ctrl-C to the remote program, its exit code as ours. The run
//! belongs to the connection: whatever ends `lantern` (a signal, `timeout`, a closed pipe,
//! kill -9) closes it, and the rig ends the run (and, without `--keep`, deletes it).

use crate::conn::{Conn, Target};
use crate::term;
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use proto::attach::{self, Kind, RigFrame};
use proto::reply::{Deleted, LogChunk, LogEnd, Started};
use proto::{Command, StartOpts, Stream, Tty};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// What `run` was asked.
#[derive(Debug)]
pub struct RunArgs {
    /// File, directory or .tar.gz.
    pub path: std::path::PathBuf,
    /// A bundle's executable.
    pub exec: Option<String>,
    /// START options (args, env, limits, argv0).
    pub opts: StartOpts,
    /// Keep the session afterwards.
    pub keep: bool,
    /// Forward stdin even from a terminal.
    pub interactive: bool,
    /// Run on a terminal.
    pub tty: bool,
    /// Print JSON lines (LOGS --follow's chunks, then the end).
    pub json: bool,
}

/// A program's name from its file name: the characters a rig accepts, others as `_`.
pub fn program_name(path: &Path) -> Option<String> {
    let base = path.file_name()?.to_string_lossy();
    let mut n: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' }).collect();
    while n.starts_with(['.', '-']) {
        n.remove(0);
    }
    n.truncate(proto::command::MAX_NAME);
    (!n.is_empty()).then_some(n)
}

/// Runs it; the program's exit status is ours.
pub fn run(place: crate::lab::Place, mut a: RunArgs) -> Result<ExitCode> {
    let stdin_tty = term::stdin_is_tty();
    if a.tty && a.interactive && !stdin_tty {
        bail!("-t -i needs a terminal on stdin (without -i, -t gives the program a terminal and no input)");
    }
    // stdin goes to the program when asked (-i) or when it is not a terminal (a file, a
    // pipe); a terminal's input goes only with -i.
    let forward = a.interactive || (!stdin_tty && !a.tty);
    let name = if std::fs::metadata(&a.path).is_ok_and(|m| m.is_file()) && a.exec.is_none() {
        program_name(&a.path)
    } else {
        None
    };
    let placed = crate::lab::upload(place, &a.path, a.exec.clone(), name)?;
    let mut c = placed.conn;
    let id = placed.loaded.id;
    a.opts.stdin = Some(forward);
    a.opts.remove = Some(!a.keep);
    if a.tty {
        let (rows, cols) = term::size();
        a.opts.tty = Some(Tty { rows, cols });
    }
    // Signals are ours from now on (blocked in every thread, taken by one).
    let signals = term::block_run_signals();
    let started: Result<Started> = c.call(Command::Start { id, debug: false, attach: true, opts: a.opts.clone() });
    if let Err(e) = started {
        if !a.keep {
            let _ = c.call::<Deleted>(Command::Delete(id));
        }
        return Err(e);
    }
    if a.keep {
        eprintln!("lantern: session {id} is kept (lantern logs / receipt / delete {id})");
    }
    let end = attached(&mut c, id, signals, a.tty && stdin_tty, a.tty, forward, a.json)?;
    exit_of(end, a.json)
}

/// The frames of an attached run or exec, after its reply line: raw mode on a terminal
/// (restored before returning), signals and stdin forwarded, output to our descriptors.
/// Returns its end.
pub fn attached(
    c: &mut Conn,
    id: uuid::Uuid,
    signals: nix::sys::signal::SigSet,
    raw: bool,
    tty: bool,
    forward: bool,
    json: bool,
) -> Result<LogEnd> {
    let writer = Arc::new(Mutex::new(c.writer.try_clone().context("cloning the connection")?));
    let raw = if raw { Some(term::raw_mode().context("setting the terminal to raw mode")?) } else { None };
    spawn_signal_thread(signals, writer.clone(), tty);
    if forward {
        spawn_stdin_thread(writer);
    }
    let end = relay_output(&mut c.reader, id, json);
    drop(raw);
    end
}

/// Our exit status from the run's end (its exit code, or 128 + its signal).
pub fn exit_of(end: LogEnd, json: bool) -> Result<ExitCode> {
    if json {
        crate::print_json(&end)?;
    }
    if let LogEnd::Ended { limit_hit: Some(l), .. } = &end {
        eprintln!("lantern: the run ended at its {} limit", l.as_str());
    }
    let code = match end {
        LogEnd::Ended { exit: Some(e), .. } => e.shell_status(),
        LogEnd::Ended { limit_hit: Some(l), .. } => bail!("the run ended at its {} limit", l.as_str()),
        LogEnd::Ended { exit: None, .. } => 1,
        LogEnd::Deleted { .. } => bail!("the session was deleted while it ran"),
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// `lantern exec ID [-i] [-t] -- PROGRAM ARGS`: another process in a running session, as
/// if run here.
pub fn exec(
    target: &Target,
    id: uuid::Uuid,
    mut opts: proto::ExecOpts,
    interactive: bool,
    tty: bool,
    json: bool,
) -> Result<ExitCode> {
    let stdin_tty = term::stdin_is_tty();
    if tty && interactive && !stdin_tty {
        bail!("-t -i needs a terminal on stdin");
    }
    let forward = interactive || (!stdin_tty && !tty);
    opts.stdin = Some(forward);
    if tty {
        let (rows, cols) = term::size();
        opts.tty = Some(Tty { rows, cols });
    }
    let mut c = Conn::open(target)?;
    let signals = term::block_run_signals();
    let _: proto::reply::Execd = c.call(Command::Exec { id, opts })?;
    let end = attached(&mut c, id, signals, tty && stdin_tty, tty, forward, json)?;
    exit_of(end, json)
}

/// Writes all of `bytes` to stdout or stderr, unbuffered.
fn write_fd(stream: Stream, bytes: &[u8]) -> Result<()> {
    let (out, err) = (std::io::stdout(), std::io::stderr());
    let fd = if stream == Stream::Stdout { out.as_fd() } else { err.as_fd() };
    let mut at = 0;
    while at < bytes.len() {
        match nix::unistd::write(fd, &bytes[at..]) {
            Ok(n) => at += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(anyhow!("writing to {}: {e}", stream.as_str())),
        }
    }
    Ok(())
}

/// Reads the rig's frames until the end frame: output to our descriptors (or as JSON
/// lines), the end returned.
fn relay_output(reader: &mut impl Read, id: uuid::Uuid, json: bool) -> Result<LogEnd> {
    let mut buf: Vec<u8> = Vec::with_capacity(attach::MAX_PAYLOAD + attach::HEADER);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let mut at = 0;
        loop {
            match attach::parse_rig(&buf[at..]).map_err(|e| anyhow!("the rig broke the protocol: {e}"))? {
                None => break,
                Some((frame, used)) => {
                    at += used;
                    let (stream, bytes) = match frame {
                        RigFrame::End(j) => {
                            return serde_json::from_slice(j).context("the rig sent an unreadable end of the run")
                        }
                        RigFrame::Stdout(b) => (Stream::Stdout, b),
                        RigFrame::Stderr(b) => (Stream::Stderr, b),
                    };
                    if json {
                        let (data, data_base64) = match std::str::from_utf8(bytes) {
                            Ok(s) => (s.to_string(), None),
                            Err(_) => (String::from_utf8_lossy(bytes).into_owned(), Some(proto::base64::encode(bytes))),
                        };
                        crate::print_json(&LogChunk { ok: proto::True, id, stream, data, dropped: 0, data_base64 })?;
                    } else {
                        write_fd(stream, bytes)?;
                    }
                }
            }
        }
        buf.drain(..at);
        let n = reader.read(&mut chunk).context("reading from the rig")?;
        if n == 0 {
            bail!("the rig closed the connection before the run ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Copies stdin to the run in stdin frames, then the EOF frame. Each read lands right
/// after room for its frame header: one write per frame, no copy.
fn spawn_stdin_thread(writer: Arc<Mutex<TcpStream>>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; attach::HEADER + (256 << 10)];
        loop {
            let n = match stdin.read(&mut buf[attach::HEADER..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // An unreadable stdin ends like an empty one.
                Err(_) => 0,
            };
            buf[..attach::HEADER].copy_from_slice(&attach::header(Kind::Stdin, n));
            let frame = &buf[..attach::HEADER + n];
            let sent = writer.lock().map(|mut w| w.write_all(frame).is_ok()).unwrap_or(false);
            if n == 0 || !sent {
                return;
            }
        }
    });
}

/// Takes the run's signals: a terminal resize goes to the rig, SIGINT and SIGQUIT go to
/// the remote program (on a terminal, Ctrl-C and Ctrl-\ are keys, sent as stdin), and
/// SIGTERM or SIGHUP end `lantern` as they would (the rig then ends the run).
fn spawn_signal_thread(signals: nix::sys::signal::SigSet, writer: Arc<Mutex<TcpStream>>, tty: bool) {
    std::thread::spawn(move || loop {
        let Ok(sig) = signals.wait() else { return };
        let frame = match sig {
            Signal::SIGWINCH if tty => {
                let (rows, cols) = term::size();
                attach::resize(rows, cols)
            }
            Signal::SIGWINCH => continue,
            Signal::SIGINT | Signal::SIGQUIT => {
                let mut f = Vec::new();
                attach::push(&mut f, Kind::Signal, &[sig as u8]);
                f
            }
            other => term::die_of(other),
        };
        if let Ok(mut w) = writer.lock() {
            let _ = w.write_all(&frame);
        }
    });
}
