//! One control connection to a rig: command lines out (with the protocol's own codec),
//! typed replies in.

use anyhow::{bail, Context, Result};
use proto::{Code, Command};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

/// A refusal from the rig (exit 1), as opposed to a broken connection (exit 3).
#[derive(Debug)]
pub struct Refused(pub proto::Error);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.error.as_str(), self.0.message)
    }
}

impl std::error::Error for Refused {}

/// Which rig, and the token for it.
#[derive(Debug, Clone)]
pub struct Target {
    /// HOST[:PORT] or a discovered instance name.
    pub rig: String,
    /// The token, if any.
    pub token: Option<String>,
}

const NO_TOKEN_HINT: &str =
    "this rig wants a token: --token-file FILE, LANTERN_TOKEN, or token_file in ~/.config/lantern/config.toml";

/// A connection.
pub struct Conn {
    /// Reading side.
    pub reader: BufReader<TcpStream>,
    /// Writing side.
    pub writer: TcpStream,
    /// No token was given (an `unauthorized` answer then says how to give one).
    anonymous: bool,
}

impl Conn {
    /// Connects, and authenticates when a token is given.
    pub fn open(target: &Target) -> Result<Conn> {
        let addr = host_port(&target.rig);
        let s = TcpStream::connect(&addr).with_context(|| {
            format!("cannot reach the rig at {addr} (is debuglantern running there? --rig / LANTERN_RIG)")
        })?;
        let mut c = Conn::from_stream(s, target.token.is_none())?;
        if let Some(token) = &target.token {
            c.call::<proto::reply::Authed>(Command::Auth(token.clone())).context("authenticating")?;
        }
        Ok(c)
    }

    /// A connection over a stream already open (`anonymous`: no token will be given).
    pub fn from_stream(s: TcpStream, anonymous: bool) -> Result<Conn> {
        let _ = s.set_nodelay(true);
        Ok(Conn { reader: BufReader::new(s.try_clone()?), writer: s, anonymous })
    }

    /// Sends one command line.
    pub fn send(&mut self, cmd: &Command) -> Result<()> {
        self.writer.write_all(format!("{}\n", cmd.to_line()).as_bytes()).context("sending to the rig")
    }

    /// Reads one reply line.
    pub fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("reading from the rig")? == 0 {
            bail!("the rig closed the connection");
        }
        Ok(line)
    }

    /// Reads one reply as `T`; a refusal becomes a [`Refused`] error.
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<T> {
        let line = self.line()?;
        match proto::parse_reply::<T>(&line) {
            Ok(v) => Ok(v),
            Err(proto::ReplyError::Refused(mut e)) => {
                if self.anonymous && e.error == Code::Unauthorized {
                    e.message = NO_TOKEN_HINT.into();
                }
                Err(Refused(e).into())
            }
            Err(e) => Err(anyhow::Error::new(e).context("the rig broke the protocol")),
        }
    }

    /// Sends a command and reads its reply as `T`.
    pub fn call<T: DeserializeOwned>(&mut self, cmd: Command) -> Result<T> {
        self.send(&cmd)?;
        self.read()
    }
}

/// HOST[:PORT] with the default port added.
pub fn host_port(rig: &str) -> String {
    if rig.contains(':') {
        rig.to_string()
    } else {
        format!("{rig}:4444")
    }
}

/// HOST[:PORT] as given, or the address of a rig advertising that instance name (over
/// mDNS or in one of the lab's DNS-SD domains). A name that looks like a host name but
/// does not resolve is looked for as an instance name too.
pub fn resolve_rig(rig: &str, lab: &crate::lab::Lab) -> Result<String> {
    use std::net::ToSocketAddrs;
    let looks_like_host = !rig.contains(' ') && !rig.contains('@') && rig.chars().all(|c| c.is_ascii_graphic());
    if looks_like_host {
        let addr = host_port(rig);
        if rig.contains(':') || rig.parse::<std::net::IpAddr>().is_ok() || addr.to_socket_addrs().is_ok() {
            return Ok(addr);
        }
    }
    let found = lab.find()?;
    let r = found.iter().find(|r| r.instance.eq_ignore_ascii_case(rig)).ok_or_else(|| {
        let where_ = if lab.domains.is_empty() {
            "on the local network".to_string()
        } else {
            format!("on the local network or in {}", lab.domains.join(", "))
        };
        anyhow::anyhow!("no rig named {rig:?} answered {where_} (lantern discover lists them)")
    })?;
    crate::lab::address(r).ok_or_else(|| anyhow::anyhow!("rig {rig:?} advertises no address"))
}
