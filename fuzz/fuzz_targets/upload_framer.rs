//! The upload framer (`proto::Framer`): a connection's bytes cut into command lines and
//! UPLOAD and PUT payloads. Whatever the bytes and however they arrive in pieces, the
//! frames are the same; a payload is exactly as long as its UPLOAD or PUT said (unless
//! the stream ends first), is never read as commands, and no line is longer than the
//! limit.
#![no_main]
use proto::{announced_payload, parse_line, split_stream, Frame, UploadSize, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the chunk sizes; the rest is the stream.
    let (head, stream) = data.split_at(data.len().min(8));
    let chunks: Vec<usize> = head.iter().map(|&b| b as usize % 64 + 1).collect();
    let whole = split_stream(stream, &[stream.len().max(1)]);
    let pieces = split_stream(stream, &chunks);
    assert_eq!(whole, pieces, "the frames depend on how the bytes arrived");
    let mut expect: Option<u64> = None;
    let mut total = 0usize;
    for (i, f) in whole.iter().enumerate() {
        match f {
            Frame::Line(l) => {
                assert!(expect.is_none(), "a line inside a payload");
                assert!(l.len() <= MAX_LINE + 1);
                total += l.len();
                // Whatever the parser makes of a line, the payload it announces is the
                // one the framer skips (a refused PUT's bytes are never read as commands).
                if let Ok(Some(c)) = parse_line(l) {
                    assert_eq!(c.payload(), announced_payload(l), "parser and framer disagree");
                }
                if let Some(UploadSize::Bytes(n)) = announced_payload(l) {
                    expect = Some(n);
                }
            }
            Frame::Payload(p) => {
                let n = expect.expect("a payload without an UPLOAD");
                assert!(p.len() as u64 <= n);
                total += p.len();
                let last = i + 1 == whole.len();
                assert!(last || p.len() as u64 == n, "a short payload before the stream's end");
                expect = Some(0);
            }
            Frame::PayloadEnd => {
                assert_eq!(expect, Some(0), "a payload ended before its size");
                expect = None;
            }
            Frame::TooLong => assert_eq!(i + 1, whole.len(), "frames after the framing was lost"),
            Frame::NeedMore => unreachable!("split_stream never returns NeedMore"),
        }
    }
    assert!(total <= stream.len());
});
