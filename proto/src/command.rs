//! The control protocol's request side (SPEC §3): one command per `\n`-terminated line
//! (a trailing `\r` is ignored), at most [`MAX_LINE`] bytes, tokens separated by spaces,
//! command names case-insensitive. This is a parser of untrusted input: it never panics,
//! and every refusal carries an error code and a message a user can act on.

use crate::code::{Code, Error};
use crate::reply::Stream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Longest accepted command line, without its `\n`.
pub const MAX_LINE: usize = 4096;
/// Most arguments a START may pass.
pub const MAX_ARGS: usize = 256;
/// Most environment variables a START may set.
pub const MAX_ENV: usize = 256;
/// Longest program name (`UPLOAD --name`).
pub const MAX_NAME: usize = 64;

fn bad(message: impl Into<String>) -> Error {
    Error::bad(message)
}

/// Optional START settings (`{"args":[...],"env":{...},"limits":{...}}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StartOpts {
    /// Arguments after `argv[0]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The whole environment; `None` means the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Per-run limits; they may only tighten the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitOpts>,
    /// List every process of the tree in the receipt (default true; `false` saves a round
    /// trip to the session's init per process exit, for fork-heavy programs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_processes: Option<bool>,
    /// The program's `argv[0]` (default: the name given at UPLOAD, else the bundle's
    /// exec path, else `program`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv0: Option<String>,
    /// With `--attach`: the client sends stdin frames (until an empty one, EOF). Without,
    /// stdin is at EOF from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// With `--attach`: run the program on a terminal of its session of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Tty>,
    /// With `--attach`: delete the session when the run ends or the client goes away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<bool>,
    /// Keep the session's `/tmp` as the last run (or a copy in) left it; else the run starts
    /// with an empty `/tmp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_tmp: Option<bool>,
    /// With `--debug`: open a debug port (default true on a network connection); `false`
    /// holds the program for `DEBUG <id> --stdio` (`lantern gdb-pipe`) alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_port: Option<bool>,
    /// What to record of what the run touches: any of `files`, `exec`, `net`, or `all`
    /// (`[]`: nothing, even where the rig observes by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<Vec<String>>,
}

/// EXEC's settings (`{"argv":["/bin/sh","-c","id"],"env":{...},"stdin":true,"tty":{...}}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecOpts {
    /// The program (a path in the session's view) and its arguments.
    pub argv: Vec<String>,
    /// The whole environment; `None` means the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// The client sends stdin frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// On a terminal of the session, of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Tty>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tty {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Per-START limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOpts {
    /// CPU seconds.
    pub cpu_seconds: Option<u64>,
    /// Address space, bytes.
    pub address_space: Option<u64>,
    /// Open files.
    pub open_files: Option<u64>,
    /// Processes.
    pub processes: Option<u64>,
    /// Size of the private /tmp, bytes.
    pub tmp_bytes: Option<u64>,
    /// Memory of the whole session, bytes.
    pub memory_bytes: Option<u64>,
    /// Wall-clock seconds of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<u64>,
    /// CPUs of the whole session (cgroup CPU bandwidth), e.g. 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<crate::units::MilliCpus>,
    /// Largest core dump kept of the run, bytes (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_bytes: Option<u64>,
}

/// The size argument of UPLOAD, already checked to be a decimal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadSize {
    /// Fits in u64.
    Bytes(u64),
    /// A decimal number too large for u64: the client means more bytes than we will read.
    Huge,
}

/// Which of a session's directories a remote path is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteRoot {
    /// `/tmp` (read and write).
    Tmp,
    /// `/bundle` (read only).
    Bundle,
}

/// A path in a session's view for GET and PUT: `/tmp/...` or `/bundle/...`, without `.`
/// or `..` components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePath {
    /// Its directory.
    pub root: RemoteRoot,
    /// The rest, relative (empty: the directory itself), cleaned of empty components.
    pub rel: String,
}

impl RemotePath {
    /// Parses `/tmp/a/b` or `/bundle/x`.
    pub fn parse(s: &str) -> Result<RemotePath, Error> {
        if s.len() > MAX_PATH || s.chars().any(|c| c.is_control()) {
            return Err(bad(format!("path {:?} is too long or has control characters", truncate(s))));
        }
        let (root, rest) = if let Some(r) = s.strip_prefix("/tmp") {
            (RemoteRoot::Tmp, r)
        } else if let Some(r) = s.strip_prefix("/bundle") {
            (RemoteRoot::Bundle, r)
        } else {
            return Err(bad(format!("path {:?} must be in the session's /tmp or /bundle", truncate(s))));
        };
        if !rest.is_empty() && !rest.starts_with('/') {
            return Err(bad(format!("path {:?} must be in the session's /tmp or /bundle", truncate(s))));
        }
        let mut parts = Vec::new();
        for c in rest.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(bad(format!("path {:?} contains '..'", truncate(s)))),
                c => parts.push(c),
            }
        }
        Ok(RemotePath { root, rel: parts.join("/") })
    }

    /// The path as the session sees it.
    pub fn shown(&self) -> String {
        let base = match self.root {
            RemoteRoot::Tmp => "/tmp",
            RemoteRoot::Bundle => "/bundle",
        };
        if self.rel.is_empty() {
            base.to_string()
        } else {
            format!("{base}/{}", self.rel)
        }
    }
}

/// Longest remote path.
pub const MAX_PATH: usize = 4096 - 128;

/// A parsed command.
// One per command line, moved once: START's options make it large, and boxing them
// would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELLO`
    Hello,
    /// `AUTH <token>`
    Auth(String),
    /// `UPLOAD <size> [exec_path] [--name NAME]`
    Upload {
        /// Declared size.
        size: UploadSize,
        /// Bundle executable path.
        exec_path: Option<String>,
        /// The program's name (a binary's memfd and default `argv[0]`).
        name: Option<String>,
    },
    /// `START <id> [--debug] [--attach] [<json>]`
    Start {
        /// Session.
        id: Uuid,
        /// Start under gdbserver.
        debug: bool,
        /// The connection carries the run's I/O as frames ([`crate::attach`]) and owns the
        /// run: when it closes, the run is killed.
        attach: bool,
        /// Options.
        opts: StartOpts,
    },
    /// `STOP <id>`
    Stop(Uuid),
    /// `KILL <id>`
    Kill(Uuid),
    /// `DEBUG <id> [--stdio]`
    Debug {
        /// Session.
        id: Uuid,
        /// After the reply line, this connection carries the gdb remote protocol.
        stdio: bool,
    },
    /// `LIST`
    List,
    /// `STATUS <id>`
    Status(Uuid),
    /// `DELETE <id>`
    Delete(Uuid),
    /// `CORE <id>`: the session's last core dump (the reply line, then its bytes).
    Core(Uuid),
    /// `LOGS <id> [--follow] [--stream stdout|stderr]`
    Logs {
        /// Session.
        id: Uuid,
        /// Stream until the run ends.
        follow: bool,
        /// Only this stream.
        stream: Option<Stream>,
    },
    /// `RECEIPT <id> [--run N]`
    Receipt {
        /// Session.
        id: Uuid,
        /// Which run (1 = first); `None` = the last.
        run: Option<u32>,
    },
    /// `EXEC <id> <json>`: another process in the running session; the connection then
    /// carries its frames, as `START --attach`.
    Exec {
        /// Session.
        id: Uuid,
        /// What to run.
        opts: ExecOpts,
    },
    /// `GET <id> <path>`: a file's bytes, or a directory as a tar stream, from the session.
    Get {
        /// Session.
        id: Uuid,
        /// Path in the session.
        path: String,
    },
    /// `PUT <id> <path> <size> [--tar]` + `size` bytes: a file (or, with `--tar`, a tar
    /// stream extracted as a directory) into the session's `/tmp`.
    Put {
        /// Session.
        id: Uuid,
        /// Path in the session.
        path: String,
        /// Declared size.
        size: UploadSize,
        /// The bytes are a tar stream of a directory.
        tar: bool,
    },
    /// `EVENTS [<id>] [--since N]`
    Events {
        /// One session, or all.
        id: Option<Uuid>,
        /// Replay from this sequence number (kept events only); `None` = from now.
        since: Option<u64>,
    },
}

impl Command {
    /// The bytes that follow this command's line (UPLOAD's and PUT's), if any.
    pub fn payload(&self) -> Option<UploadSize> {
        match self {
            Command::Upload { size, .. } | Command::Put { size, .. } => Some(*size),
            _ => None,
        }
    }

    /// The command's name, as the protocol spells it.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Hello => "HELLO",
            Command::Auth(_) => "AUTH",
            Command::Upload { .. } => "UPLOAD",
            Command::Start { .. } => "START",
            Command::Stop(_) => "STOP",
            Command::Kill(_) => "KILL",
            Command::Debug { .. } => "DEBUG",
            Command::List => "LIST",
            Command::Status(_) => "STATUS",
            Command::Delete(_) => "DELETE",
            Command::Core(_) => "CORE",
            Command::Logs { .. } => "LOGS",
            Command::Receipt { .. } => "RECEIPT",
            Command::Events { .. } => "EVENTS",
            Command::Get { .. } => "GET",
            Command::Exec { .. } => "EXEC",
            Command::Put { .. } => "PUT",
        }
    }

    /// The command line a client sends for this command (without `\n`; an UPLOAD's bytes
    /// follow it). [`parse_line`] of it gives the command back.
    pub fn to_line(&self) -> String {
        match self {
            Command::Hello => "HELLO".into(),
            Command::Auth(t) => format!("AUTH {t}"),
            Command::Upload { size, exec_path, name } => {
                let mut l = match size {
                    UploadSize::Bytes(n) => format!("UPLOAD {n}"),
                    UploadSize::Huge => "UPLOAD 99999999999999999999".into(),
                };
                if let Some(p) = exec_path {
                    l.push_str(&format!(" {p}"));
                }
                if let Some(n) = name {
                    l.push_str(&format!(" --name {n}"));
                }
                l
            }
            Command::Start { id, debug, attach, opts } => {
                let mut l = format!("START {id}");
                if *debug {
                    l.push_str(" --debug");
                }
                if *attach {
                    l.push_str(" --attach");
                }
                if *opts != StartOpts::default() {
                    l.push(' ');
                    l.push_str(&serde_json::to_string(opts).expect("plain data"));
                }
                l
            }
            Command::Stop(id) => format!("STOP {id}"),
            Command::Kill(id) => format!("KILL {id}"),
            Command::Debug { id, stdio } => format!("DEBUG {id}{}", if *stdio { " --stdio" } else { "" }),
            Command::List => "LIST".into(),
            Command::Status(id) => format!("STATUS {id}"),
            Command::Delete(id) => format!("DELETE {id}"),
            Command::Core(id) => format!("CORE {id}"),
            Command::Logs { id, follow, stream } => {
                let mut l = format!("LOGS {id}");
                if *follow {
                    l.push_str(" --follow");
                }
                if let Some(s) = stream {
                    l.push_str(&format!(" --stream {}", s.as_str()));
                }
                l
            }
            Command::Receipt { id, run } => match run {
                Some(n) => format!("RECEIPT {id} --run {n}"),
                None => format!("RECEIPT {id}"),
            },
            Command::Get { id, path } => format!("GET {id} {path}"),
            Command::Exec { id, opts } => format!("EXEC {id} {}", serde_json::to_string(opts).expect("plain data")),
            Command::Put { id, path, size, tar } => {
                let size = match size {
                    UploadSize::Bytes(n) => n.to_string(),
                    UploadSize::Huge => "99999999999999999999".into(),
                };
                format!("PUT {id} {path} {size}{}", if *tar { " --tar" } else { "" })
            }
            Command::Events { id, since } => {
                let mut l = "EVENTS".to_string();
                if let Some(id) = id {
                    l.push_str(&format!(" {id}"));
                }
                if let Some(n) = since {
                    l.push_str(&format!(" --since {n}"));
                }
                l
            }
        }
    }
}

/// The payload a command line announces (UPLOAD's and PUT's size), read even from a line
/// that [`parse_line`] refuses for another reason, so that the bytes of a refused line are
/// skipped rather than read as commands.
pub fn announced_payload(line: &[u8]) -> Option<UploadSize> {
    let line = std::str::from_utf8(line.strip_suffix(b"\r").unwrap_or(line)).ok()?;
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    let size = match words.next()?.to_ascii_uppercase().as_str() {
        "UPLOAD" => words.next()?,
        "PUT" => words.nth(2)?,
        _ => return None,
    };
    parse_size(size).ok()
}

/// Parses one line (without its `\n`; a trailing `\r` is removed here). `Ok(None)` for an
/// empty line, which is ignored.
pub fn parse_line(line: &[u8]) -> Result<Option<Command>, Error> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(bad(format!("line longer than {MAX_LINE} bytes")));
    }
    let line = std::str::from_utf8(line).map_err(|_| bad("command line is not valid UTF-8"))?;
    if line.bytes().any(|b| b < 0x20 && b != b'\t') {
        return Err(bad("command line contains control characters"));
    }
    let trimmed = line.trim_start_matches(' ');
    if trimmed.trim().is_empty() {
        return Ok(None);
    }
    let (name, rest) = split_token(trimmed);
    let name = name.to_ascii_uppercase();
    let mut args = Args { rest };
    let cmd = match name.as_str() {
        "HELLO" => Command::Hello,
        "AUTH" => Command::Auth(args.required("token")?.to_string()),
        "UPLOAD" => {
            let size = parse_size(args.required("size")?)?;
            let (mut exec_path, mut name) = (None, None);
            while let Some(a) = args.next() {
                if a == "--name" {
                    let n = args.required("program name after --name")?;
                    check_name(n)?;
                    name = Some(n.to_string());
                } else if exec_path.is_none() && !a.starts_with("--") {
                    exec_path = Some(a.to_string());
                } else {
                    return Err(bad(format!(
                        "unexpected argument {:?}: UPLOAD <size> [exec_path] [--name NAME]",
                        truncate(a)
                    )));
                }
            }
            Command::Upload { size, exec_path, name }
        }
        "START" => {
            let id = parse_id(args.required("session id")?)?;
            let (mut debug, mut attach) = (false, false);
            let mut opts = StartOpts::default();
            while let Some(rest) = args.peek_rest() {
                if rest.starts_with('{') {
                    opts = parse_start_json(rest)?;
                    args.rest = "";
                    break;
                }
                match args.next() {
                    Some(f) if f.eq_ignore_ascii_case("--debug") => debug = true,
                    Some(f) if f.eq_ignore_ascii_case("--attach") => attach = true,
                    Some(f) => {
                        return Err(bad(format!(
                            "unexpected argument {:?}: START <id> [--debug] [--attach] [<json>]",
                            truncate(f)
                        )))
                    }
                    None => break,
                }
            }
            let attached_only = opts.stdin.is_some() || opts.tty.is_some() || opts.remove.is_some();
            if attached_only && !attach {
                return Err(bad("\"stdin\", \"tty\" and \"remove\" need START --attach"));
            }
            if attach && debug {
                return Err(bad("START --attach and --debug cannot be combined yet: START --debug, then attach gdb"));
            }
            Command::Start { id, debug, attach, opts }
        }
        "STOP" => Command::Stop(parse_id(args.required("session id")?)?),
        "KILL" => Command::Kill(parse_id(args.required("session id")?)?),
        "DEBUG" => {
            let id = parse_id(args.required("session id")?)?;
            let stdio = match args.next() {
                None => false,
                Some(f) if f.eq_ignore_ascii_case("--stdio") => true,
                Some(f) => return Err(bad(format!("unexpected argument {f:?}: DEBUG <id> [--stdio]"))),
            };
            Command::Debug { id, stdio }
        }
        "LIST" => Command::List,
        "STATUS" => Command::Status(parse_id(args.required("session id")?)?),
        "DELETE" => Command::Delete(parse_id(args.required("session id")?)?),
        "CORE" => Command::Core(parse_id(args.required("session id")?)?),
        "LOGS" => {
            let id = parse_id(args.required("session id")?)?;
            let (mut follow, mut stream) = (false, None);
            while let Some(f) = args.next() {
                if f.eq_ignore_ascii_case("--follow") || f == "-f" {
                    follow = true;
                } else if f.eq_ignore_ascii_case("--stream") {
                    stream = Some(match args.required("stream name (stdout or stderr)")? {
                        s if s.eq_ignore_ascii_case("stdout") => Stream::Stdout,
                        s if s.eq_ignore_ascii_case("stderr") => Stream::Stderr,
                        s => return Err(bad(format!("--stream {:?}: want stdout or stderr", truncate(s)))),
                    });
                } else {
                    return Err(bad(format!(
                        "unexpected argument {:?}: LOGS <id> [--follow] [--stream stdout|stderr]",
                        truncate(f)
                    )));
                }
            }
            Command::Logs { id, follow, stream }
        }
        "RECEIPT" => {
            let id = parse_id(args.required("session id")?)?;
            let run = match args.next() {
                None => None,
                Some(f) if f.eq_ignore_ascii_case("--run") => {
                    let n = args.required("run number")?;
                    Some(
                        n.parse::<u32>()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| bad(format!("run {n:?} is not a run number (1, 2, ...)")))?,
                    )
                }
                Some(f) => return Err(bad(format!("unexpected argument {f:?}: RECEIPT <id> [--run N]"))),
            };
            Command::Receipt { id, run }
        }
        "EXEC" => {
            let id = parse_id(args.required("session id")?)?;
            let json = args.peek_rest().ok_or_else(|| bad("missing EXEC options: {\"argv\":[\"/bin/sh\"]}"))?;
            args.rest = "";
            let opts: ExecOpts = serde_json::from_str(json).map_err(|e| {
                bad(format!("EXEC options are not valid JSON of the form {{\"argv\":[..],\"env\":{{..}}}}: {e}"))
            })?;
            if opts.argv.is_empty() || !opts.argv[0].starts_with('/') {
                return Err(bad(
                    "EXEC argv[0] must be the program's absolute path in the session (/bin/sh, /bundle/tool)",
                ));
            }
            if opts.argv.len() > MAX_ARGS || opts.argv.iter().any(|a| a.contains('\0')) {
                return Err(bad(format!("at most {MAX_ARGS} arguments, none with a NUL byte")));
            }
            if let Some(env) = &opts.env {
                if env.len() > MAX_ENV
                    || env.iter().any(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0'))
                {
                    return Err(bad("invalid environment (at most 256 variables, names without = or NUL)"));
                }
            }
            if opts.tty.is_some_and(|t| t.rows == 0 || t.cols == 0) {
                return Err(bad("tty rows and cols must be at least 1"));
            }
            Command::Exec { id, opts }
        }
        "GET" => {
            let id = parse_id(args.required("session id")?)?;
            let path = args.required("path (/tmp/... or /bundle/...)")?;
            RemotePath::parse(path)?;
            Command::Get { id, path: path.to_string() }
        }
        "PUT" => {
            let id = parse_id(args.required("session id")?)?;
            let path = args.required("path (/tmp/...)")?;
            if RemotePath::parse(path)?.root != RemoteRoot::Tmp {
                return Err(bad(format!("PUT {:?}: only the session's /tmp is writable", truncate(path))));
            }
            let size = parse_size(args.required("size")?)?;
            let tar = match args.next() {
                None => false,
                Some(f) if f.eq_ignore_ascii_case("--tar") => true,
                Some(f) => {
                    return Err(bad(format!("unexpected argument {:?}: PUT <id> <path> <size> [--tar]", truncate(f))))
                }
            };
            Command::Put { id, path: path.to_string(), size, tar }
        }
        "EVENTS" => {
            let (mut id, mut since) = (None, None);
            while let Some(a) = args.next() {
                if a.eq_ignore_ascii_case("--since") {
                    let n = args.required("sequence number")?;
                    since = Some(n.parse::<u64>().map_err(|_| bad(format!("--since {n:?} is not a sequence number")))?);
                } else if id.is_none() {
                    id = Some(parse_id(a)?);
                } else {
                    return Err(bad(format!("unexpected argument {a:?}: EVENTS [<id>] [--since N]")));
                }
            }
            Command::Events { id, since }
        }
        _ => {
            let shown: String = name.chars().take(32).collect();
            return Err(Error::new(
                Code::UnknownCommand,
                format!("unknown command {shown:?}; commands: HELLO AUTH UPLOAD START STOP KILL DEBUG LIST STATUS DELETE LOGS RECEIPT EVENTS GET PUT EXEC"),
            ));
        }
    };
    if let Some(extra) = args.next() {
        return Err(bad(format!("unexpected extra argument {extra:?}")));
    }
    Ok(Some(cmd))
}

struct Args<'a> {
    rest: &'a str,
}

impl<'a> Args<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let (tok, rest) = split_token(self.rest.trim_start_matches(' '));
        self.rest = rest;
        (!tok.is_empty()).then_some(tok)
    }

    fn peek_rest(&self) -> Option<&'a str> {
        let r = self.rest.trim_start_matches(' ');
        (!r.is_empty()).then_some(r)
    }

    fn required(&mut self, what: &str) -> Result<&'a str, Error> {
        self.next().ok_or_else(|| bad(format!("missing {what}")))
    }
}

fn split_token(s: &str) -> (&str, &str) {
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

fn parse_id(s: &str) -> Result<Uuid, Error> {
    if s.len() != 36 {
        return Err(bad(format!(
            "malformed session id {:?}: want a UUID like 123e4567-e89b-12d3-a456-426614174000",
            truncate(s)
        )));
    }
    Uuid::parse_str(s).map_err(|_| bad(format!("malformed session id {:?}", truncate(s))))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse_size(s: &str) -> Result<UploadSize, Error> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("upload size {:?} is not a decimal byte count", truncate(s))));
    }
    Ok(s.parse::<u64>().map(UploadSize::Bytes).unwrap_or(UploadSize::Huge))
}

/// A program's name (`UPLOAD --name`): one path component of letters, digits and
/// `._+-`, at most [`MAX_NAME`] bytes, not starting with `.` or `-`.
pub fn check_name(n: &str) -> Result<(), Error> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._+-".contains(c);
    if n.is_empty() || n.len() > MAX_NAME || n.starts_with(['.', '-']) || !n.chars().all(ok_char) {
        return Err(bad(format!(
            "program name {:?}: want 1 to {MAX_NAME} letters, digits or ._+- (not starting with . or -)",
            truncate(n)
        )));
    }
    Ok(())
}

fn parse_start_json(s: &str) -> Result<StartOpts, Error> {
    let opts: StartOpts = serde_json::from_str(s).map_err(|e| {
        bad(format!("START options are not valid JSON of the form {{\"args\":[..],\"env\":{{..}}}}: {e}"))
    })?;
    if opts.args.len() > MAX_ARGS {
        return Err(bad(format!("more than {MAX_ARGS} arguments")));
    }
    if opts.args.iter().any(|a| a.contains('\0')) {
        return Err(bad("an argument contains a NUL byte"));
    }
    if let Some(a) = &opts.argv0 {
        if a.is_empty() || a.len() > MAX_LINE || a.contains('\0') {
            return Err(bad("argv0 must be non-empty and free of NUL bytes"));
        }
    }
    if let Some(t) = opts.tty {
        if t.rows == 0 || t.cols == 0 {
            return Err(bad("tty rows and cols must be at least 1"));
        }
    }
    if let Some(env) = &opts.env {
        if env.len() > MAX_ENV {
            return Err(bad(format!("more than {MAX_ENV} environment variables")));
        }
        for (k, v) in env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(bad(format!("invalid environment variable name or value {:?}", truncate(k))));
            }
        }
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "123e4567-e89b-12d3-a456-426614174000";

    fn code(line: &str) -> Code {
        parse_line(line.as_bytes()).unwrap_err().error
    }

    #[test]
    fn commands_are_case_insensitive_and_cr_is_ignored() {
        assert_eq!(parse_line(b"hello\r").unwrap(), Some(Command::Hello));
        assert_eq!(parse_line(b"LiSt").unwrap(), Some(Command::List));
        assert_eq!(parse_line(b"").unwrap(), None);
        assert_eq!(parse_line(b"   ").unwrap(), None);
    }

    #[test]
    fn upload_sizes() {
        assert_eq!(
            parse_line(b"UPLOAD 10").unwrap(),
            Some(Command::Upload { size: UploadSize::Bytes(10), exec_path: None, name: None })
        );
        assert_eq!(
            parse_line(b"UPLOAD 99999999999999999999").unwrap(),
            Some(Command::Upload { size: UploadSize::Huge, exec_path: None, name: None })
        );
        assert_eq!(code("UPLOAD -1"), Code::BadRequest);
        assert_eq!(code("UPLOAD 1e3"), Code::BadRequest);
        assert_eq!(code("UPLOAD"), Code::BadRequest);
        assert_eq!(code("UPLOAD +5"), Code::BadRequest);
    }

    #[test]
    fn start_with_json_and_flags() {
        let line = format!("start {ID} --debug {{\"args\":[\"a b\",\"c\"],\"env\":{{\"X\":\"1\"}}}}");
        let Some(Command::Start { debug, opts, .. }) = parse_line(line.as_bytes()).unwrap() else { panic!() };
        assert!(debug);
        assert_eq!(opts.args, vec!["a b", "c"]);
        assert_eq!(opts.env.unwrap()["X"], "1");
        assert_eq!(code(&format!("START {ID} {{\"args\":1}}")), Code::BadRequest);
        assert_eq!(code(&format!("START {ID} {{\"bogus\":1}}")), Code::BadRequest);
        assert_eq!(code(&format!("START {ID} {{\"env\":{{\"A=B\":\"1\"}}}}")), Code::BadRequest);
        assert_eq!(code(&format!("START {ID} --frobnicate")), Code::BadRequest);
    }

    #[test]
    fn ids_and_unknowns() {
        assert_eq!(code("STATUS 1234"), Code::BadRequest);
        assert_eq!(code("STATUS zzzzzzzz-e89b-12d3-a456-426614174000"), Code::BadRequest);
        assert_eq!(code("FROB"), Code::UnknownCommand);
        assert_eq!(code(&format!("STOP {ID} extra")), Code::BadRequest);
        assert_eq!(code(&format!("RECEIPT {ID} --run 0")), Code::BadRequest);
        assert_eq!(code(&format!("RECEIPT {ID} --run")), Code::BadRequest);
        assert_eq!(parse_line(b"events").unwrap(), Some(Command::Events { id: None, since: None }));
        assert_eq!(
            parse_line(format!("RECEIPT {ID} --run 2").as_bytes()).unwrap(),
            Some(Command::Receipt { id: Uuid::parse_str(ID).unwrap(), run: Some(2) })
        );
        assert_eq!(
            parse_line(format!("logs {ID} --follow").as_bytes()).unwrap(),
            Some(Command::Logs { id: Uuid::parse_str(ID).unwrap(), follow: true, stream: None })
        );
    }

    #[test]
    fn every_command_round_trips_through_its_line() {
        let id = Uuid::parse_str(ID).unwrap();
        let opts = StartOpts {
            args: vec!["a b".into(), "{x}".into()],
            env: Some([("K".to_string(), "v w".to_string())].into()),
            limits: Some(LimitOpts { cpu_seconds: Some(3), ..Default::default() }),
            list_processes: Some(false),
            argv0: Some("sh".into()),
            stdin: Some(true),
            tty: Some(Tty { rows: 24, cols: 80 }),
            remove: Some(true),
            keep_tmp: Some(true),
            debug_port: Some(false),
            observe: Some(vec!["files".into(), "net".into()]),
        };
        for cmd in [
            Command::Hello,
            Command::Auth("t0k3n".into()),
            Command::Upload { size: UploadSize::Bytes(12), exec_path: None, name: None },
            Command::Upload { size: UploadSize::Bytes(12), exec_path: Some("bin/app".into()), name: None },
            Command::Upload { size: UploadSize::Bytes(12), exec_path: None, name: Some("busybox".into()) },
            Command::Upload { size: UploadSize::Bytes(12), exec_path: Some("a".into()), name: Some("b-1.2".into()) },
            Command::Start { id, debug: false, attach: false, opts: StartOpts::default() },
            Command::Start { id, debug: false, attach: true, opts },
            Command::Start { id, debug: true, attach: false, opts: StartOpts::default() },
            Command::Stop(id),
            Command::Kill(id),
            Command::Debug { id, stdio: false },
            Command::Debug { id, stdio: true },
            Command::List,
            Command::Status(id),
            Command::Delete(id),
            Command::Core(id),
            Command::Logs { id, follow: true, stream: None },
            Command::Logs { id, follow: false, stream: Some(Stream::Stderr) },
            Command::Logs { id, follow: true, stream: Some(Stream::Stdout) },
            Command::Receipt { id, run: Some(3) },
            Command::Events { id: Some(id), since: Some(7) },
            Command::Get { id, path: "/tmp/results/junit.xml".into() },
            Command::Get { id, path: "/bundle".into() },
            Command::Exec {
                id,
                opts: ExecOpts {
                    argv: vec!["/bin/sh".into(), "-c".into(), "id -u".into()],
                    env: None,
                    stdin: Some(true),
                    tty: Some(Tty { rows: 24, cols: 80 }),
                },
            },
            Command::Put { id, path: "/tmp/in/x.bin".into(), size: UploadSize::Bytes(5), tar: false },
            Command::Put { id, path: "/tmp/tree".into(), size: UploadSize::Bytes(5), tar: true },
            Command::Events { id: None, since: None },
        ] {
            assert_eq!(parse_line(cmd.to_line().as_bytes()).unwrap(), Some(cmd.clone()), "{}", cmd.to_line());
        }
    }

    #[test]
    fn names_streams_and_attach_options() {
        assert_eq!(code("UPLOAD 10 --name"), Code::BadRequest);
        assert_eq!(code("UPLOAD 10 --name ../x"), Code::BadRequest);
        assert_eq!(code("UPLOAD 10 --name .hidden"), Code::BadRequest);
        assert_eq!(code("UPLOAD 10 --name a/b"), Code::BadRequest);
        assert_eq!(code(&format!("UPLOAD 10 --name {}", "x".repeat(MAX_NAME + 1))), Code::BadRequest);
        assert_eq!(code("UPLOAD 10 a b"), Code::BadRequest);
        assert_eq!(code("UPLOAD 10 --frob"), Code::BadRequest);
        assert_eq!(code(&format!("LOGS {ID} --stream stdin")), Code::BadRequest);
        assert_eq!(code(&format!("LOGS {ID} --stream")), Code::BadRequest);
        assert_eq!(code(&format!("START {ID} {{\"stdin\":true}}")), Code::BadRequest);
        assert_eq!(code(&format!("START {ID} --attach --debug")), Code::BadRequest);
        assert_eq!(code(&format!("START {ID} --attach {{\"tty\":{{\"rows\":0,\"cols\":80}}}}")), Code::BadRequest);
        assert_eq!(code(&format!("START {ID} {{\"argv0\":\"\"}}")), Code::BadRequest);
        let Some(Command::Start { attach, opts, .. }) =
            parse_line(format!("START {ID} --attach {{\"stdin\":true,\"remove\":true}}").as_bytes()).unwrap()
        else {
            panic!()
        };
        assert!(attach && opts.stdin == Some(true) && opts.remove == Some(true));
    }

    #[test]
    fn remote_paths_stay_in_tmp_or_bundle() {
        assert_eq!(
            RemotePath::parse("/tmp/a//b/./c").unwrap(),
            RemotePath { root: RemoteRoot::Tmp, rel: "a/b/c".into() }
        );
        assert_eq!(RemotePath::parse("/tmp").unwrap().rel, "");
        assert_eq!(RemotePath::parse("/bundle/x").unwrap().root, RemoteRoot::Bundle);
        for bad in ["/tmp/../../etc", "/etc/passwd", "tmp/x", "/tmpfoo", "/tmp/a\nb", "/bundle/.."] {
            assert!(RemotePath::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(code(&format!("GET {ID} /tmp/../../etc")), Code::BadRequest);
        assert_eq!(code(&format!("PUT {ID} /bundle/x 3")), Code::BadRequest);
        assert_eq!(code(&format!("PUT {ID} /tmp/x -3")), Code::BadRequest);
        assert_eq!(code(&format!("PUT {ID} /tmp/x 3 --zip")), Code::BadRequest);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(parse_line(&[0xff, 0xfe, 0x00]).unwrap_err().error, Code::BadRequest);
        assert_eq!(parse_line(b"LIST\0").unwrap_err().error, Code::BadRequest);
        assert_eq!(parse_line(&[b'A'; MAX_LINE + 1]).unwrap_err().error, Code::BadRequest);
    }

    #[test]
    fn a_refused_line_still_announces_its_payload() {
        let id = "6f1c1f5e-8a2b-4c3d-9e4f-0a1b2c3d4e5f";
        for (line, size) in [
            (format!("PUT {id} /bundle/x 5"), Some(UploadSize::Bytes(5))),
            (format!("PUT {id} /tmp/../../etc 7 --tar"), Some(UploadSize::Bytes(7))),
            ("put not-an-id /tmp/x 9 --bogus".to_string(), Some(UploadSize::Bytes(9))),
            ("UPLOAD 12 --name .hidden".into(), Some(UploadSize::Bytes(12))),
            ("UPLOAD 99999999999999999999999 x".into(), Some(UploadSize::Huge)),
            (format!("PUT {id} /tmp/x"), None),
            ("UPLOAD twelve".into(), None),
            (format!("GET {id} /tmp/x"), None),
        ] {
            assert_eq!(announced_payload(line.as_bytes()), size, "{line}");
            if let Ok(Some(c)) = parse_line(line.as_bytes()) {
                assert_eq!(c.payload(), size, "{line}");
            }
        }
        assert_eq!(announced_payload(b"PUT a b 3\r"), Some(UploadSize::Bytes(3)));
        assert_eq!(announced_payload(&[0xff, b' ', b'3']), None);
    }
}
