//! The control protocol of a debuglantern rig (SPEC §3, README's protocol reference):
//! commands and their line form ([`command`]), where lines and upload payloads begin and
//! end on a connection ([`framer`]), error codes ([`code`]), and every reply as a type
//! ([`reply`]). The daemon serializes these types, `lantern` and the tests deserialize
//! them; round-trip tests against what the daemon sent before this crate existed keep the
//! JSON on the wire what README documents.
//!
//! Plain data only: no sockets, no sandboxing, no parsers of other formats.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod attach;
pub mod base64;
pub mod code;
pub mod command;
pub mod framer;
pub mod reply;
pub mod time;
pub mod units;

pub use code::{Code, Error};
pub use command::{
    announced_payload, check_name, parse_line, Command, ExecOpts, LimitOpts, RemotePath, RemoteRoot, StartOpts, Tty,
    UploadSize, MAX_ARGS, MAX_ENV, MAX_LINE,
};
pub use framer::{split_stream, Frame, Framer};
pub use reply::Stream;
pub use time::Time;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// The `"ok": true` of every success reply: serializes as `true`, accepts only `true`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct True;

impl Serialize for True {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

impl<'de> Deserialize<'de> for True {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match bool::deserialize(d)? {
            true => Ok(True),
            false => Err(de::Error::custom("expected true")),
        }
    }
}

/// The `"ok": false` of the error reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct False;

impl Serialize for False {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(false)
    }
}

impl<'de> Deserialize<'de> for False {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match bool::deserialize(d)? {
            false => Ok(False),
            true => Err(de::Error::custom("expected false")),
        }
    }
}

/// One reply line: the JSON of `reply` and its `\n`.
pub fn line<T: Serialize>(reply: &T) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    line_into(&mut v, reply);
    v
}

/// Appends one reply line to `out`.
pub fn line_into<T: Serialize>(out: &mut Vec<u8>, reply: &T) {
    // Serializing plain data into memory cannot fail (no maps with non-string keys here).
    if serde_json::to_writer(&mut *out, reply).is_err() {
        out.extend_from_slice(br#"{"ok":false,"error":"internal","message":"reply not serializable"}"#);
    }
    out.push(b'\n');
}

/// Why a reply line could not be read as the expected type.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The rig refused the command.
    #[error(transparent)]
    Refused(#[from] Error),
    /// The line is not the reply that was expected (not JSON, or other fields).
    #[error("unexpected reply ({err}): {line}")]
    Unexpected {
        /// What did not fit.
        err: serde_json::Error,
        /// The line, cut to 200 bytes.
        line: String,
    },
}

/// Reads one reply line as `T`, or as the error reply it is instead.
pub fn parse_reply<T: for<'de> Deserialize<'de>>(line: &str) -> Result<T, ReplyError> {
    match serde_json::from_str::<T>(line) {
        Ok(v) => Ok(v),
        Err(err) => match serde_json::from_str::<Error>(line) {
            Ok(e) => Err(ReplyError::Refused(e)),
            Err(_) => Err(ReplyError::Unexpected { err, line: line.chars().take(200).collect() }),
        },
    }
}
