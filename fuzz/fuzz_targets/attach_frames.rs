//! The frames of an attached run (`proto::attach`), as the rig reads a client's and the
//! client reads the rig's: never panics, never takes more than it was given, and every
//! frame it accepts encodes back to the bytes it came from.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proto::attach::{self, ClientFrame, Kind, RigFrame};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((frame, used))) = attach::parse_client(&data[at..]) {
        assert!(used >= attach::HEADER && used <= data.len() - at);
        let mut back = Vec::new();
        match frame {
            ClientFrame::Stdin(b) => attach::push(&mut back, Kind::Stdin, b),
            ClientFrame::StdinEof => attach::push(&mut back, Kind::Stdin, b""),
            ClientFrame::Resize { rows, cols } => back = attach::resize(rows, cols),
            ClientFrame::Signal(s) => attach::push(&mut back, Kind::Signal, &[s]),
        }
        assert_eq!(back, &data[at..at + used]);
        at += used;
    }
    let mut at = 0;
    while let Ok(Some((frame, used))) = attach::parse_rig(&data[at..]) {
        assert!(used >= attach::HEADER && used <= data.len() - at);
        let (kind, payload) = match frame {
            RigFrame::Stdout(b) => (Kind::Stdout, b),
            RigFrame::Stderr(b) => (Kind::Stderr, b),
            RigFrame::End(b) => {
                let _ = serde_json::from_slice::<proto::reply::LogEnd>(b);
                (Kind::End, b)
            }
        };
        let mut back = Vec::new();
        attach::push(&mut back, kind, payload);
        assert_eq!(back, &data[at..at + used]);
        at += used;
    }
});
