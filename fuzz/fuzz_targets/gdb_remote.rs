//! What the rig reads of a session's gdbserver (untrusted: it runs as the session's uid):
//! the pids it reports launching, and the packet watch over both directions of a relay,
//! fed in arbitrary chunks. Never panics; what it concludes is always well-formed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::rsp::{add_swbreak, created_pids, Watch};

fuzz_target!(|data: &[u8]| {
    if let Some(fixed) = add_swbreak(data) {
        assert!(fixed.len() > data.len());
        assert!(add_swbreak(&fixed).is_none(), "rewritten twice");
    }
    let (pids, used) = created_pids(data);
    assert!(used <= data.len());
    assert!(pids.iter().all(|&p| p > 1));
    // The first byte picks chunk sizes; even bytes of it go to the client side.
    let Some((&how, rest)) = data.split_first() else { return };
    let mut w = Watch::default();
    let size = usize::from(how % 17) + 1;
    for (i, chunk) in rest.chunks(size).enumerate() {
        if (usize::from(how) + i) % 2 == 0 {
            w.saw_client(chunk);
        } else {
            w.saw_gdbserver(chunk);
        }
        if let Some(shared::ExitStatus::Code(c)) = w.exit {
            assert!((0..=255).contains(&c));
        }
    }
    let bytes = w.release_bytes(Some(5));
    // A well-formed packet: `$body#xx` with the right checksum.
    let text = String::from_utf8(bytes).expect("ascii");
    let start = text.find('$').expect("a packet");
    let hash = text.rfind('#').expect("a checksum");
    let body = &text[start + 1..hash];
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    assert_eq!(&text[hash + 1..hash + 3], format!("{sum:02x}"));
});
