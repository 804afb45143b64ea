//! What `lantern` and the tests do with a rig's reply lines (`proto::parse_reply` into the
//! typed replies, base64 output): never panics, and whatever parses serializes again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proto::reply::*;

fn check<T: serde::de::DeserializeOwned + serde::Serialize>(line: &str) {
    if let Ok(v) = proto::parse_reply::<T>(line) {
        serde_json::to_vec(&v).expect("a parsed reply serializes");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    check::<Hello>(line);
    check::<Loaded>(line);
    check::<Started>(line);
    check::<Status>(line);
    check::<List>(line);
    check::<FollowLine>(line);
    check::<EventLine>(line);
    check::<ReceiptReply>(line);
    if let Some(bytes) = proto::base64::decode(line) {
        assert_eq!(proto::base64::decode(&proto::base64::encode(&bytes)).as_deref(), Some(&bytes[..]));
    }
});
