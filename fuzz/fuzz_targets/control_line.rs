//! The control-protocol line parser: never panics; every refusal has a code and a message.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match proto::parse_line(data) {
        Ok(_) => {}
        Err(e) => assert!(!e.message.is_empty()),
    }
});
