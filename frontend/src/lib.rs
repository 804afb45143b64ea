//! The frontend's library: everything of `debuglantern` except `main`, so that the parsers
//! of untrusted input can be fuzzed and tested on their own.

pub mod activation;
pub mod audit;
pub mod auth;
pub mod bundle;
pub mod cgroup;
pub mod config;
pub mod copy;
pub mod elf;
pub mod hasher;
pub mod launcher;
pub mod server;
pub mod store;
pub mod stream;
mod sys;
pub mod worker;

/// Raises the soft open-file limit to the hard one (1000 idle clients need descriptors).
pub fn raise_nofile() {
    sys::raise_nofile();
}
