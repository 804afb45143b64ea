//! The broker's message decoder: arbitrary bytes with 0..=MAX_FDS+1 descriptors attached.
//! Decoding never panics; a decoded message is accepted only with exactly the descriptor
//! count its kind declares.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::{decode_body, Message, Request, RequestWire};
use std::os::fd::OwnedFd;

fuzz_target!(|data: &[u8]| {
    let Some((&nfds, body)) = data.split_first() else { return };
    let Ok(env) = decode_body::<RequestWire>(body) else { return };
    let nfds = usize::from(nfds) % (shared::MAX_FDS + 2);
    let fds: Vec<OwnedFd> = (0..nfds).map(|_| std::fs::File::open("/dev/null").unwrap().into()).collect();
    let expected = match env.body {
        RequestWire::Load { .. } => 1,
        _ => 0,
    };
    match Request::from_wire(env.body, fds) {
        Ok(_) => assert_eq!(nfds, expected),
        Err(_) => assert_ne!(nfds, expected),
    }
});
