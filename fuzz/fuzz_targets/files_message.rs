//! The files helper's messages (`shared::files`), both ways: the helper decodes the
//! frontend's `FsCall`s, the frontend decodes the `FsReply`s of a process running as the
//! session's uid. Arbitrary bytes with 0..=MAX_FDS+1 descriptors: decoding never panics, a
//! decoded message is accepted only with the descriptor count its kind declares, and a
//! path `check_path` accepts is relative and has no `.`, `..`, empty component or NUL.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::files::{check_path, FsCall, FsCallWire, FsReply, FsReplyWire};
use shared::{decode_body, Message};
use std::os::fd::OwnedFd;

fn fds(n: usize) -> Vec<OwnedFd> {
    (0..n).map(|_| std::fs::File::open("/dev/null").unwrap().into()).collect()
}

fn check(p: &[u8]) {
    if check_path(p).is_ok() && !p.is_empty() {
        assert!(p[0] != b'/' && !p.contains(&0), "{p:?}");
        for c in p.split(|&b| b == b'/') {
            assert!(!c.is_empty() && c != b"." && c != b"..", "{p:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let n = usize::from(first >> 1) % (shared::MAX_FDS + 2);
    if first & 1 == 0 {
        let Ok(env) = decode_body::<FsCallWire>(body) else { return };
        let paths: Vec<Vec<u8>> = match &env.body {
            FsCallWire::Stat { path, .. }
            | FsCallWire::List { path, .. }
            | FsCallWire::Open { path, .. }
            | FsCallWire::Mkdir { path, .. }
            | FsCallWire::Create { path, .. }
            | FsCallWire::Remove { path } => vec![path.clone()],
            FsCallWire::Symlink { path, target } => vec![path.clone(), target.clone()],
            FsCallWire::Rename { from, to } => vec![from.clone(), to.clone()],
            FsCallWire::Space => vec![],
        };
        paths.iter().for_each(|p| check(p));
        match FsCall::from_wire(env.body, fds(n)) {
            Ok(_) => assert_eq!(n, 0),
            Err(_) => assert_ne!(n, 0),
        }
    } else {
        let Ok(env) = decode_body::<FsReplyWire>(body) else { return };
        let expected = usize::from(matches!(env.body, FsReplyWire::File { .. }));
        match FsReply::from_wire(env.body, fds(n)) {
            Ok(_) => assert_eq!(n, expected),
            Err(_) => assert_ne!(n, expected),
        }
    }
});
