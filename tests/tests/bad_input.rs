//! Hostile and broken input over the control protocol: each gets a clear error, loses
//! nothing, and leaves the connection usable unless framing is lost. Needs root.

use std::io::Write;
use std::time::Duration;
use tests::{c_program, programs, require_root, Daemon};

#[test]
fn root_non_elf_other_arch_and_truncated_uploads_are_invalid_elf() {
    if !require_root("root_non_elf_other_arch_and_truncated_uploads_are_invalid_elf") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let r = c.upload(b"#!/bin/sh\necho not a program\n");
    assert_eq!(r["error"], "invalid_elf", "{r}");
    assert!(r["message"].as_str().unwrap().contains("not an ELF"), "{r}");
    let bin = c_program("hello", programs::HELLO, false);
    let mut arm = bin.clone();
    arm[18] = 0xb7; // EM_AARCH64
    arm[19] = 0;
    let r = c.upload(&arm);
    assert_eq!(r["error"], "invalid_elf");
    assert!(r["message"].as_str().unwrap().contains("aarch64"), "{r}");
    let r = c.upload(&bin[..bin.len() / 3]);
    assert_eq!(r["error"], "invalid_elf");
    assert!(r["message"].as_str().unwrap().contains("truncated"), "{r}");
    let r = c.upload(b"");
    assert_eq!(r["error"], "invalid_elf");
    let mut obj = bin.clone();
    obj[16] = 1; // ET_REL
    assert_eq!(c.upload(&obj)["error"], "invalid_elf");
    // Nothing was stored, and the connection still works.
    assert_eq!(c.cmd("LIST")["sessions"].as_array().unwrap().len(), 0);
    assert_eq!(c.upload(&bin)["ok"], true);
}

#[test]
fn root_bad_sizes_lines_ids_and_garbage() {
    if !require_root("root_bad_sizes_lines_ids_and_garbage") {
        return;
    }
    let d = Daemon::start(&["--max-upload", "64K", "--drain-limit", "1M"]);
    let mut c = d.client();
    assert_eq!(c.cmd("UPLOAD -1")["error"], "bad_request");
    assert_eq!(c.cmd("UPLOAD abc")["error"], "bad_request");
    assert_eq!(c.cmd("FROBNICATE")["error"], "unknown_command");
    assert_eq!(c.cmd("STATUS not-a-uuid")["error"], "bad_request");
    assert_eq!(c.cmd("STATUS 123e4567-e89b-12d3-a456-42661417400g")["error"], "bad_request");
    assert_eq!(c.cmd("STATUS 123e4567-e89b-12d3-a456-426614174000")["error"], "not_found");
    assert_eq!(c.cmd("KILL 123e4567-e89b-12d3-a456-426614174000")["error"], "not_found");
    assert_eq!(c.cmd("START 123e4567-e89b-12d3-a456-426614174000 {broken json")["error"], "bad_request");
    c.send_raw(b"\xff\xfe\x00garbage\x01\x02\n");
    assert_eq!(c.read()["error"], "bad_request");
    // Larger than --max-upload but within the drain limit: refused before storing, the
    // bytes are skipped, and the connection stays usable.
    let r = c.upload(&vec![0x7f; 100 * 1024]);
    assert_eq!(r["error"], "too_large", "{r}");
    assert_eq!(c.cmd("HELLO")["ok"], true);
    // Beyond what can be skipped: refused and closed.
    let r = c.cmd("UPLOAD 99999999999999999999");
    assert_eq!(r["error"], "too_large", "{r}");
    assert!(c.is_closed());
    let mut c = d.client();
    assert_eq!(c.cmd("UPLOAD 2000000")["error"], "too_large");
    assert!(c.is_closed());
    // An over-long line: said why, then closed.
    let mut c = d.client();
    c.send_raw(&vec![b'A'; 5000]);
    let r = c.read();
    assert_eq!(r["error"], "bad_request");
    assert!(r["message"].as_str().unwrap().contains("longer than 4096"), "{r}");
    assert!(c.is_closed());
    // The daemon is fine.
    assert_eq!(d.client().cmd("HELLO")["ok"], true);
}

#[test]
fn root_disconnect_mid_upload_leaves_nothing() {
    if !require_root("root_disconnect_mid_upload_leaves_nothing") {
        return;
    }
    let bin = c_program("hello", programs::HELLO, false);
    let budget = bin.len() as u64 + 100;
    let d = Daemon::start(&[
        "--max-total-size",
        &budget.to_string(),
        "--max-upload",
        &budget.to_string(),
        "--max-sessions",
        "1",
    ]);
    for _ in 0..3 {
        let mut c = d.client();
        c.send_raw(format!("UPLOAD {}\n", bin.len()).as_bytes());
        c.send_raw(&bin[..bin.len() / 2]);
        c.writer.flush().unwrap();
        drop(c);
    }
    // The reservations were released: the one session the budget allows still fits.
    std::thread::sleep(Duration::from_millis(200));
    let mut c = d.client();
    assert_eq!(c.cmd("LIST")["sessions"].as_array().unwrap().len(), 0);
    let r = c.upload(&bin);
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn root_session_and_size_limits_refuse_but_keep_the_connection() {
    if !require_root("root_session_and_size_limits_refuse_but_keep_the_connection") {
        return;
    }
    let bin = c_program("hello", programs::HELLO, false);
    let d = Daemon::start(&["--max-sessions", "2"]);
    let mut c = d.client();
    let a = c.load(&bin);
    c.load(&bin);
    let r = c.upload(&bin);
    assert_eq!(r["error"], "limit_reached", "{r}");
    assert_eq!(c.cmd("LIST")["sessions"].as_array().unwrap().len(), 2);
    c.cmd(&format!("DELETE {a}"));
    assert_eq!(c.upload(&bin)["ok"], true);

    let total = bin.len() as u64 * 2 + 10;
    let d = Daemon::start(&["--max-total-size", &total.to_string(), "--max-upload", &total.to_string()]);
    let mut c = d.client();
    let a = c.load(&bin);
    c.load(&bin);
    let r = c.upload(&bin);
    assert_eq!(r["error"], "limit_reached", "{r}");
    assert!(r["message"].as_str().unwrap().contains("total"), "{r}");
    c.cmd(&format!("DELETE {a}"));
    assert_eq!(c.upload(&bin)["ok"], true, "DELETE gave the bytes back");
}

#[test]
fn root_thousand_idle_connections_do_not_starve_a_new_client() {
    if !require_root("root_thousand_idle_connections_do_not_starve_a_new_client") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut idle = Vec::new();
    for i in 0..1000 {
        let s = std::net::TcpStream::connect(d.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        idle.push(s);
    }
    // Some idle clients send half a line and stall.
    for s in idle.iter_mut().take(100) {
        s.write_all(b"LIS").unwrap();
    }
    let t = std::time::Instant::now();
    let mut c = d.client();
    assert_eq!(c.cmd("HELLO")["ok"], true);
    assert!(t.elapsed() < Duration::from_secs(2), "new client waited {:?}", t.elapsed());
    drop(idle);
}

#[test]
fn root_exec_failure_is_reported_and_session_stays_loaded() {
    if !require_root("root_exec_failure_is_reported_and_session_stays_loaded") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    // A valid dynamic ELF whose interpreter does not exist on the rig.
    let mut bin = c_program("hello", programs::HELLO, false);
    let needle = b"/lib64/ld-linux-x86-64.so.2";
    let at = bin.windows(needle.len()).position(|w| w == needle).expect("interpreter path");
    bin[at + 1..at + 6].copy_from_slice(b"nope/");
    let up = c.upload(&bin);
    assert_eq!(up["ok"], true, "{up}");
    let id = up["id"].as_str().unwrap();
    let r = c.cmd(&format!("START {id}"));
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["message"].as_str().unwrap().contains("interpreter"), "{r}");
    assert_eq!(c.cmd(&format!("STATUS {id}"))["state"], "LOADED");
}
