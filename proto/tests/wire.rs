//! Every reply type parses what the daemon sent before the types existed (fixtures in
//! `tests/wire/`, captured from the real daemon), and serializes back to the same JSON.

use proto::reply::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn round_trip<T: DeserializeOwned + Serialize + std::fmt::Debug>(file: &str) -> Vec<T> {
    let text = std::fs::read_to_string(format!("{}/tests/wire/{file}.jsonl", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let typed: T = serde_json::from_str(line).unwrap_or_else(|e| panic!("{file}: {e}: {line}"));
        let back: Value = serde_json::to_value(&typed).unwrap();
        let orig: Value = serde_json::from_str(line).unwrap();
        assert_eq!(back, orig, "{file}: the typed reply does not serialize to what was sent");
        out.push(typed);
    }
    assert!(!out.is_empty(), "no fixture in {file}");
    out
}

#[test]
fn every_reply_type_parses_what_the_daemon_sends() {
    round_trip::<Hello>("hello");
    round_trip::<Authed>("authed");
    round_trip::<proto::Error>("error");
    let l = round_trip::<Loaded>("loaded");
    assert_eq!(l[0].kind, Kind::Binary);
    // START --debug answers with the debug port too.
    let s = round_trip::<Started>("started");
    assert!(s.iter().any(|s| s.debug.is_some() && s.state == State::Debugging));
    let d = round_trip::<Debugging>("debugging");
    assert!(d.iter().any(|d| d.stdio) && d.iter().any(|d| d.debug.is_some()));
    round_trip::<Stopped>("stopped");
    round_trip::<List>("list");
    let s = round_trip::<Status>("status");
    assert!(s.iter().any(|s| s.exec_path.is_some()));
    round_trip::<Deleted>("deleted");
    round_trip::<Logs>("logs");
    let chunks = round_trip::<LogChunk>("log_chunk");
    assert!(chunks.iter().any(|c| c.bytes() == b"\xff\xfeok"));
    round_trip::<LogEnd>("log_end");
    round_trip::<FollowLine>("log_chunk");
    round_trip::<FollowLine>("log_end");
    round_trip::<ReceiptReply>("receipt");
    round_trip::<Subscribed>("subscribed");
    let events = round_trip::<Event>("event");
    assert!(events.iter().any(|e| matches!(e.what, EventKind::Exited { .. })));
    round_trip::<Missed>("missed");
    round_trip::<EventsEnd>("events_end");
    for f in ["event", "missed", "events_end"] {
        round_trip::<EventLine>(f);
    }
}

#[test]
fn an_error_reply_is_told_apart_from_the_expected_one() {
    let e = proto::parse_reply::<Status>(r#"{"ok":false,"error":"not_found","message":"no session x"}"#).unwrap_err();
    assert!(matches!(e, proto::ReplyError::Refused(ref r) if r.error == proto::Code::NotFound), "{e}");
    assert!(matches!(proto::parse_reply::<Status>("{}"), Err(proto::ReplyError::Unexpected { .. })));
    assert!(matches!(proto::parse_reply::<Status>("not json"), Err(proto::ReplyError::Unexpected { .. })));
    // A success reply never passes for an error, nor the other way round.
    assert!(serde_json::from_str::<proto::Error>(r#"{"ok":true,"error":"x","message":"y"}"#).is_err());
    assert!(serde_json::from_str::<Deleted>(
        r#"{"ok":false,"id":"6011fd3e-347b-4ea1-bb2b-d2615f9871b7","deleted":true}"#
    )
    .is_err());
}
