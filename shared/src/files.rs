//! Messages between the frontend and a session's files helper (`GET`, `PUT`): a process
//! the spawner forks as the session's uid, without capabilities, under the session's
//! seccomp filter, holding only the session's `/tmp` (and its bundle, read-only) as
//! directory descriptors. The frontend asks it to look at, open, create, rename and remove
//! paths beneath one of them; it answers with facts and descriptors and never parses file
//! contents — the frontend writes and reads the bytes through the descriptors, and parses
//! the tar streams. Same framing as every other socketpair: one bincode body per
//! SEQPACKET packet, descriptors by `SCM_RIGHTS`, counts checked per kind.

use crate::wire::{Message, WireError};
use bincode::{Decode, Encode};
use std::os::fd::OwnedFd;

/// Which directory a path is beneath.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// The session's `/tmp` (read and write).
    Tmp,
    /// The session's bundle, `/bundle` (read only).
    Bundle,
}

/// What a directory entry is.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink, with its target (never followed by a listing).
    Symlink(Vec<u8>),
    /// A device, fifo or socket: never copied.
    Other,
}

/// One entry.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name (one component; empty for the path itself in [`FsReply::Stat`]).
    pub name: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Its size (files).
    pub size: u64,
    /// Its permission bits.
    pub mode: u32,
}

/// Most entries one [`FsReply::Entries`] carries (a listing comes in several).
pub const ENTRIES_PER_REPLY: usize = 128;

/// Frontend → files helper. Paths are relative to their root, `/`-separated, without
/// `.`, `..` or empty components (checked again by the helper).
#[derive(Debug)]
pub enum FsCall {
    /// What is at `path` (a final symlink is followed only beneath the root).
    Stat {
        /// Root.
        root: Root,
        /// Path.
        path: Vec<u8>,
    },
    /// The entries of the directory at `path`.
    List {
        /// Root.
        root: Root,
        /// Path.
        path: Vec<u8>,
    },
    /// Opens the regular file at `path` for reading.
    Open {
        /// Root.
        root: Root,
        /// Path.
        path: Vec<u8>,
    },
    /// Creates the directory `path` under `/tmp` (and its missing parents).
    Mkdir {
        /// Path.
        path: Vec<u8>,
        /// Mode.
        mode: u32,
    },
    /// Creates the new file `path` under `/tmp` for writing (it must not exist).
    Create {
        /// Path.
        path: Vec<u8>,
        /// Mode.
        mode: u32,
    },
    /// Creates the symlink `path` → `target` under `/tmp`.
    Symlink {
        /// Path.
        path: Vec<u8>,
        /// Target (relative, checked by the frontend to stay inside what is copied).
        target: Vec<u8>,
    },
    /// Renames `from` to `to` under `/tmp`; a file replaces a file, a directory needs `to`
    /// to be absent.
    Rename {
        /// From.
        from: Vec<u8>,
        /// To.
        to: Vec<u8>,
    },
    /// Removes `path` under `/tmp`, recursively, never following a symlink.
    Remove {
        /// Path.
        path: Vec<u8>,
    },
    /// Free and total bytes of `/tmp`.
    Space,
}

/// Files helper → frontend.
#[derive(Debug)]
pub enum FsReply {
    /// [`FsCall::Stat`].
    Stat(Entry),
    /// Part of a [`FsCall::List`]; `more`: further parts follow.
    Entries {
        /// Entries.
        entries: Vec<Entry>,
        /// More follow.
        more: bool,
    },
    /// An open file ([`FsCall::Open`], [`FsCall::Create`]) and its size.
    File {
        /// Its size when opened.
        size: u64,
        /// The descriptor.
        fd: OwnedFd,
    },
    /// [`FsCall::Space`].
    Space {
        /// Free bytes.
        free: u64,
        /// Total bytes.
        total: u64,
    },
    /// Done (Mkdir, Symlink, Rename, Remove).
    Done,
    /// Refused or failed.
    Error {
        /// The errno.
        errno: i32,
        /// What failed, for the user.
        message: String,
    },
}

/// Encodable [`FsCall`].
#[allow(missing_docs)]
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq)]
pub enum FsCallWire {
    Stat { root: Root, path: Vec<u8> },
    List { root: Root, path: Vec<u8> },
    Open { root: Root, path: Vec<u8> },
    Mkdir { path: Vec<u8>, mode: u32 },
    Create { path: Vec<u8>, mode: u32 },
    Symlink { path: Vec<u8>, target: Vec<u8> },
    Rename { from: Vec<u8>, to: Vec<u8> },
    Remove { path: Vec<u8> },
    Space,
}

/// Encodable [`FsReply`].
#[allow(missing_docs)]
#[derive(Encode, Decode, Debug, Clone, PartialEq, Eq)]
pub enum FsReplyWire {
    Stat(Entry),
    Entries { entries: Vec<Entry>, more: bool },
    File { size: u64 },
    Space { free: u64, total: u64 },
    Done,
    Error { errno: i32, message: String },
}

fn none(kind: &'static str, fds: Vec<OwnedFd>) -> Result<(), WireError> {
    if fds.is_empty() {
        Ok(())
    } else {
        Err(WireError::FdCount { kind, expected: 0, got: fds.len() })
    }
}

impl Message for FsCall {
    type Wire = FsCallWire;

    fn into_wire(self) -> (FsCallWire, Vec<OwnedFd>) {
        let w = match self {
            FsCall::Stat { root, path } => FsCallWire::Stat { root, path },
            FsCall::List { root, path } => FsCallWire::List { root, path },
            FsCall::Open { root, path } => FsCallWire::Open { root, path },
            FsCall::Mkdir { path, mode } => FsCallWire::Mkdir { path, mode },
            FsCall::Create { path, mode } => FsCallWire::Create { path, mode },
            FsCall::Symlink { path, target } => FsCallWire::Symlink { path, target },
            FsCall::Rename { from, to } => FsCallWire::Rename { from, to },
            FsCall::Remove { path } => FsCallWire::Remove { path },
            FsCall::Space => FsCallWire::Space,
        };
        (w, vec![])
    }

    fn from_wire(w: FsCallWire, fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        none("files call", fds)?;
        Ok(match w {
            FsCallWire::Stat { root, path } => FsCall::Stat { root, path },
            FsCallWire::List { root, path } => FsCall::List { root, path },
            FsCallWire::Open { root, path } => FsCall::Open { root, path },
            FsCallWire::Mkdir { path, mode } => FsCall::Mkdir { path, mode },
            FsCallWire::Create { path, mode } => FsCall::Create { path, mode },
            FsCallWire::Symlink { path, target } => FsCall::Symlink { path, target },
            FsCallWire::Rename { from, to } => FsCall::Rename { from, to },
            FsCallWire::Remove { path } => FsCall::Remove { path },
            FsCallWire::Space => FsCall::Space,
        })
    }
}

impl Message for FsReply {
    type Wire = FsReplyWire;

    fn into_wire(self) -> (FsReplyWire, Vec<OwnedFd>) {
        match self {
            FsReply::Stat(e) => (FsReplyWire::Stat(e), vec![]),
            FsReply::Entries { entries, more } => (FsReplyWire::Entries { entries, more }, vec![]),
            FsReply::File { size, fd } => (FsReplyWire::File { size }, vec![fd]),
            FsReply::Space { free, total } => (FsReplyWire::Space { free, total }, vec![]),
            FsReply::Done => (FsReplyWire::Done, vec![]),
            FsReply::Error { errno, message } => (FsReplyWire::Error { errno, message }, vec![]),
        }
    }

    fn from_wire(w: FsReplyWire, mut fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        if let FsReplyWire::File { size } = w {
            if fds.len() != 1 {
                return Err(WireError::FdCount { kind: "file", expected: 1, got: fds.len() });
            }
            return Ok(FsReply::File { size, fd: fds.remove(0) });
        }
        none("files reply", fds)?;
        Ok(match w {
            FsReplyWire::Stat(e) => FsReply::Stat(e),
            FsReplyWire::Entries { entries, more } => FsReply::Entries { entries, more },
            FsReplyWire::Space { free, total } => FsReply::Space { free, total },
            FsReplyWire::Done => FsReply::Done,
            FsReplyWire::Error { errno, message } => FsReply::Error { errno, message },
            FsReplyWire::File { .. } => unreachable!("handled above"),
        })
    }
}

/// Checks a relative path as both sides require: non-empty components, no `.` or `..`,
/// no NUL, at most 4096 bytes, not absolute. The empty path is the root itself.
pub fn check_path(p: &[u8]) -> Result<(), &'static str> {
    if p.len() > 4096 {
        return Err("path longer than 4096 bytes");
    }
    if p.contains(&0) {
        return Err("path contains NUL");
    }
    if p.is_empty() {
        return Ok(());
    }
    if p.starts_with(b"/") {
        return Err("path must be relative to its root");
    }
    if p.split(|&b| b == b'/').any(|c| c.is_empty() || c == b"." || c == b"..") {
        return Err("path has an empty, '.' or '..' component");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(check_path(b"").is_ok());
        assert!(check_path(b"a/b.c").is_ok());
        for bad in [&b"/etc"[..], b"a/../b", b"..", b"a//b", b"a/./b", b"a\0b", b"a/"] {
            assert!(check_path(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_file_reply_needs_its_descriptor() {
        assert!(FsReply::from_wire(FsReplyWire::File { size: 1 }, vec![]).is_err());
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(FsReply::from_wire(FsReplyWire::Done, vec![fd]).is_err());
    }
}
