//! The escape suite (SPEC §6): a hostile program (tests/programs/escape.c) is uploaded
//! through the real protocol and run once per probe; each probe must fail the expected
//! way, and the rig and the other sessions must stay responsive. Needs root.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::{c_program, programs, require_root, Client, Daemon};

const ESCAPE: &str = include_str!("../programs/escape.c");

/// Runs `probe` to its end; returns (output, final LOGS --follow object).
fn run(c: &mut Client, id: &str, args: &[&str], limits: Value) -> (String, Value) {
    let opts = json!({"args": args, "limits": limits});
    let st = c.cmd(&format!("START {id} {opts}"));
    assert_eq!(st["ok"], true, "{st}");
    c.send_raw(format!("LOGS {id} --follow\n").as_bytes());
    let mut out = String::new();
    loop {
        let v = c.read();
        if v["end"] == true {
            return (out, v);
        }
        out.push_str(v["data"].as_str().unwrap_or(""));
    }
}

fn outcome(out: &str, probe: &str) -> String {
    let prefix = format!("RESULT {probe} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no result for {probe} in {out:?}"))
        .to_string()
}

fn setup() -> Option<(Daemon, Client, String)> {
    if !require_root("escape suite") {
        return None;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&c_program("escape", ESCAPE, false));
    Some((d, c, id))
}

#[test]
fn root_escape_filesystem_probes_fail() {
    let Some((_d, mut c, id)) = setup() else { return };
    for (probe, want) in [
        ("read_shadow", &["ENOENT"][..]),
        ("read_root", &["ENOENT"]),
        ("read_home", &["ENOENT"]),
        ("write_usr", &["EROFS"]),
        ("write_etc", &["EROFS", "EACCES"]),
        ("chroot_escape", &["EPERM"]),
        ("mount", &["EPERM"]),
        ("exe_rewrite", &["ETXTBSY", "EACCES", "EPERM"]),
    ] {
        let (out, _) = run(&mut c, &id, &[probe], json!({}));
        let got = outcome(&out, probe);
        assert!(want.contains(&got.as_str()), "{probe}: {got} (want one of {want:?})");
    }
}

#[test]
fn root_escape_process_and_kernel_probes_fail() {
    let Some((d, mut c, id)) = setup() else { return };
    // A bystander session that must survive every probe.
    let sleeper = c.load(&c_program("sleeper", programs::SLEEPER, false));
    let by = c.cmd(&format!("START {sleeper}"));
    let by_pid = by["pid"].as_i64().unwrap() as i32;
    let port = d.addr.port().to_string();
    for (probe, args, want) in [
        ("kill_all", vec![], &["ESRCH"][..]),
        ("kill_init", vec![], &["ESRCH", "EPERM"]),
        ("ptrace_init", vec![], &["EPERM"]),
        ("tcp_control", vec![port.as_str()], &["ENETUNREACH", "ECONNREFUSED"]),
        ("userns", vec![], &["EPERM"]),
        ("userns_clone", vec![], &["EPERM"]),
        ("clone3", vec![], &["ENOSYS"]),
        ("bpf", vec![], &["EPERM"]),
        ("keyctl", vec![], &["EPERM"]),
        ("userfaultfd", vec![], &["EPERM"]),
        ("perf", vec![], &["EPERM"]),
    ] {
        let mut a = vec![probe];
        a.extend(args.iter().copied());
        let (out, _) = run(&mut c, &id, &a, json!({}));
        let got = outcome(&out, probe);
        assert!(want.contains(&got.as_str()), "{probe}: {got} (want one of {want:?})");
    }
    // Only its own init and itself are visible.
    let (out, _) = run(&mut c, &id, &["see_pids"], json!({}));
    assert_eq!(outcome(&out, "see_pids"), "2", "{out}");
    assert!(tests::alive(by_pid), "a probe killed another session");
    // Its credentials, from inside.
    let (out, _) = run(&mut c, &id, &["status"], json!({}));
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(!out.contains("Uid:\t0\t"), "{out}");
}

/// Asserts the rig answers at once and a bystander session is still there.
fn rig_responsive(d: &Daemon, bystander: &str) {
    let t = Instant::now();
    let mut other = d.client();
    assert_eq!(other.cmd("HELLO")["ok"], true);
    assert_eq!(other.cmd(&format!("STATUS {bystander}"))["state"], "RUNNING");
    assert!(t.elapsed() < Duration::from_secs(2), "rig slow: {:?}", t.elapsed());
}

#[test]
fn root_escape_resource_bombs_are_contained() {
    let Some((d, mut c, id)) = setup() else { return };
    let sleeper = c.load(&c_program("sleeper", programs::SLEEPER, false));
    c.cmd(&format!("START {sleeper}"));

    let (out, end) = run(&mut c, &id, &["fork_bomb"], json!({"processes": 64}));
    assert_eq!(outcome(&out, "fork_bomb"), "EAGAIN", "{out}");
    let forked: u32 = out.lines().find_map(|l| l.strip_prefix("forked ")).unwrap().parse().unwrap();
    assert!(forked < 64, "forked {forked}");
    assert_eq!(end["exit"]["code"], 0);
    rig_responsive(&d, &sleeper);

    let (out, _) = run(&mut c, &id, &["mem_bomb"], json!({"address_space": 256u64 << 20}));
    assert_eq!(outcome(&out, "mem_bomb"), "ENOMEM", "{out}");
    rig_responsive(&d, &sleeper);

    let (out, _) = run(&mut c, &id, &["fd_bomb"], json!({"open_files": 64}));
    assert_eq!(outcome(&out, "fd_bomb"), "EMFILE", "{out}");
    let opened: u32 = out.lines().find_map(|l| l.strip_prefix("opened ")).unwrap().parse().unwrap();
    assert!(opened <= 64, "opened {opened}");

    let (out, _) = run(&mut c, &id, &["fill_tmp"], json!({"tmp_bytes": 1u64 << 20}));
    assert_eq!(outcome(&out, "fill_tmp"), "ENOSPC", "{out}");
    let wrote: u64 = out.lines().find_map(|l| l.strip_prefix("wrote ")).unwrap().parse().unwrap();
    assert!(wrote <= 1 << 20, "wrote {wrote}");
    rig_responsive(&d, &sleeper);

    let (_, end) = run(&mut c, &id, &["cpu"], json!({"cpu_seconds": 1}));
    assert_eq!(end["exit"]["signal"], libc::SIGXCPU, "{end}");
    assert_eq!(c.cmd(&format!("STATUS {id}"))["limit_hit"], "cpu");
    rig_responsive(&d, &sleeper);

    // Cgroup limits, where the host has them: a memory bomb without an address-space
    // limit is OOM-killed inside its own cgroup, a fork bomb stops at the pids limit.
    let hello = c.cmd("HELLO");
    if hello["warnings"].to_string().contains("cgroup") {
        eprintln!("no cgroups on this host: {}", hello["warnings"]);
    } else {
        let (_, end) = run(&mut c, &id, &["mem_bomb"], json!({"memory_bytes": 64u64 << 20}));
        assert_eq!(end["exit"]["signal"], 9, "{end}");
        assert_eq!(c.cmd(&format!("STATUS {id}"))["limit_hit"], "memory");
        rig_responsive(&d, &sleeper);
        let (out, _) = run(&mut c, &id, &["fork_bomb"], json!({"processes": 32}));
        assert_eq!(outcome(&out, "fork_bomb"), "EAGAIN", "{out}");
        assert_eq!(c.cmd(&format!("STATUS {id}"))["limit_hit"], "pids");
        rig_responsive(&d, &sleeper);
    }

    // Per-START limits only tighten: asking for more than the daemon allows is ignored.
    let (out, _) = run(&mut c, &id, &["fork_bomb"], json!({"processes": 1_000_000, "open_files": 1_000_000}));
    assert_eq!(outcome(&out, "fork_bomb"), "EAGAIN", "{out}");
    let st = c.cmd(&format!("STATUS {id}"));
    assert_eq!(st["limits"]["processes"], 512, "{st}");
    assert_eq!(st["limits"]["open_files"], 1024, "{st}");
    let forked: u32 = out.lines().find_map(|l| l.strip_prefix("forked ")).unwrap().parse().unwrap();
    assert!(forked < 512, "forked {forked}");
    rig_responsive(&d, &sleeper);
}
