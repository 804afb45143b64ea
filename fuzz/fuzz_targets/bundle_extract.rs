//! The bundle extractor on arbitrary bytes: never panics, and never writes outside the
//! bundle's directory (checked by extracting beneath a sub-directory of a scratch
//! directory and asserting nothing appears beside it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::os::fd::AsFd;

fuzz_target!(|data: &[u8]| {
    let base = std::env::temp_dir().join(format!("dl-fuzz-bundle-{}", std::process::id()));
    let root = base.join("b");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&root).unwrap();
    let fd = frontend::bundle::open_root(&root).unwrap();
    let limits = frontend::bundle::Limits { max_entries: 64, max_bytes: 1 << 20, max_depth: 8 };
    let _ = frontend::bundle::extract(data, fd.as_fd(), "prog", limits);
    let beside: Vec<_> = std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("b")], "extraction wrote outside the bundle root");
    let _ = std::fs::remove_dir_all(&base);
});
