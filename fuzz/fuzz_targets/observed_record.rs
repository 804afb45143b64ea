//! What the frontend reads from a session's init (untrusted: it runs as the session's uid):
//! the observation record of a run. Never panics; what decodes stays within its bounds,
//! re-encodes to the same bytes and becomes a receipt section.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::observe::{Observed, MAX_EVENTS, MAX_LIMIT};

fuzz_target!(|data: &[u8]| {
    let Ok(o) = Observed::decode(data) else { return };
    let limit = o.asked.limit.min(MAX_LIMIT) as usize;
    assert!(o.files.len() <= limit && o.execs.len() <= limit && o.net.len() <= limit);
    assert!(o.events.len() <= MAX_EVENTS);
    assert_eq!(Observed::decode(&o.encode()).expect("what we write decodes"), o);
    let r = frontend::server::observed::reply(o);
    let s = frontend::server::observed::summary(&r);
    assert_eq!(s.files, r.files.len());
    let _ = serde_json::to_string(&r).expect("serializes");
});
