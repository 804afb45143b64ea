//! The types that cross the frontend/broker socketpair, and the SEQPACKET "tube" that
//! carries them with file descriptors attached (`SCM_RIGHTS`).
//!
//! Nothing heavy lives here: the broker links this crate, and the broker's dependency tree
//! must stay free of parsers of untrusted formats.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod files;
pub mod logger;
pub mod observe;
pub mod os;
pub mod rsp;
pub mod tube;
pub mod wire;

pub use tube::{Tube, TubeError};

/// An error and its sources, as one line: "outer: inner: innermost".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}
pub use wire::*;
