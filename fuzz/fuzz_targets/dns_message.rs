//! What a rig and `lantern` read from DNS servers (untrusted: anyone on the path may
//! answer): messages with compression, the TSIG check of an answer, and TSIG key files.
//! Never panics; a message that decodes re-encodes to one that decodes the same (names
//! uncompressed), and no forged answer passes the TSIG check.
#![no_main]
use discovery::dns::{Message, RData};
use discovery::tsig::{self, Algorithm, Key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Key::parse(text);
    }
    let Ok(m) = Message::decode(data) else { return };
    // Records of types we do not interpret keep their bytes, which may hold compressed
    // names: only the interpreted ones must round-trip.
    let plain = m.answers.iter().chain(&m.authority).chain(&m.additional).all(|r| !matches!(r.data, RData::Other(_)));
    if plain && m.signed.is_none() {
        let again = Message::decode(&m.encode()).expect("what we write decodes");
        assert_eq!(again, m);
    }
    let key = Key::new(discovery::dns::Name::parse("k").unwrap(), Algorithm::Sha256, vec![7; 32]);
    assert!(tsig::verify(data, &m, &key, &[1; 32], 0).is_err(), "a forged signature passed");
});
