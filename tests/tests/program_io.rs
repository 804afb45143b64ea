//! A run's I/O as a user sees it through `lantern run` (the real client, the real daemon,
//! real programs nobody here wrote: busybox, coreutils, Python): every byte of output
//! for a slow reader, stdout and stderr apart, stdin byte for byte, a terminal driven by
//! tmux, loopback inside a session, a run that ends with its client however the client
//! ends, the wall-clock limit, limits that say no, argv[0] and program names, applet and
//! script bundles. Needs root (the daemon does).

use proto::reply::{LimitHit, State};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tests::{bin_dir, c_program, programs, require_root, Client, Daemon};

fn lantern(d: &Daemon) -> Command {
    let mut c = Command::new(bin_dir().join("lantern"));
    c.arg("--rig").arg(d.addr.to_string());
    c
}

/// Runs a bash pipeline with `$L` = lantern on this rig.
fn sh(d: &Daemon, script: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("L", format!("{} --rig {}", bin_dir().join("lantern").display(), d.addr))
        .stdin(Stdio::null())
        .output()
        .expect("bash")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dl-io-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn program(dir: &Path, name: &str, src: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, c_program(name, src, false)).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

/// Waits until LIST has no session (or `limit` passes); returns how long it took.
fn list_empty_within(c: &mut Client, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let l = c.list();
        if l.sessions.is_empty() {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "sessions left behind after {limit:?}: {:?}", l.sessions);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_running(c: &mut Client, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.list().sessions.iter().find(|s| s.state == State::Running) {
            return s.id.to_string();
        }
        assert!(t0.elapsed() < limit, "no run started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn root_every_byte_reaches_a_slow_reader_and_streams_stay_apart() {
    if !require_root("root_every_byte_reaches_a_slow_reader_and_streams_stay_apart") {
        return;
    }
    let d = Daemon::start(&[]);
    let dir = scratch("flood");
    let flood = program(&dir, "flood", programs::FLOOD);
    let local =
        Command::new("bash").arg("-c").arg(format!("{} 1000000 2>/dev/null | sha256sum", flood.display())).output();
    let local_sum = text(&local.unwrap().stdout);
    // A million lines (~52 MB) into a reader that sleeps first: all of them, in order.
    let out = sh(
        &d,
        &format!(
            "$L run {f} -- 1000000 2>{e} | (sleep 2; sha256sum); echo \"exit=${{PIPESTATUS[0]}}\"",
            f = flood.display(),
            e = dir.join("err").display()
        ),
    );
    let got = text(&out.stdout);
    assert!(
        got.starts_with(&local_sum),
        "slow reader got {got:?}, locally {local_sum:?}; stderr {}",
        text(&out.stderr)
    );
    assert!(got.contains("exit=3"), "{got}");
    // stderr went to its own descriptor only.
    assert_eq!(std::fs::read_to_string(dir.join("err")).unwrap(), "flood done\n");
    let out = sh(&d, &format!("$L run {} -- 1000000 2>/dev/null | wc -l", flood.display()));
    assert_eq!(text(&out.stdout).trim(), "1000000");
    let mut c = d.client();
    list_empty_within(&mut c, Duration::from_secs(1));

    // A follower of a run in progress gets every byte from when it joined; the receipt
    // counts them all.
    let up = lantern(&d).args(["upload", flood.to_str().unwrap()]).output().unwrap();
    let id = text(&up.stdout).trim().to_string();
    let st = lantern(&d).args(["start", &id, "--", "300000", "1000"]).output().unwrap();
    assert!(st.status.success(), "{}", text(&st.stderr));
    let out = sh(&d, &format!("$L logs -f {id} 2>{} | (sleep 2; wc -l)", dir.join("err2").display()));
    assert_eq!(text(&out.stdout).trim(), "300000", "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.join("err2")).unwrap(), "flood done\n");
    let r = c.cmd(&format!("RECEIPT {id}"));
    let want = Command::new(&flood).args(["300000"]).stderr(Stdio::null()).output().unwrap().stdout.len();
    assert_eq!(r["receipt"]["stdout"]["bytes"], want);
    // Following the STOPPED session with a slow reader ends, with what the buffer kept,
    // and says on stderr how much it no longer has.
    let out = sh(&d, &format!("timeout 20 $L logs -f {id} | (sleep 1; wc -c); echo \"exit=${{PIPESTATUS[0]}}\""));
    assert!(text(&out.stdout).contains("exit=0"), "{} {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("were dropped"), "{}", text(&out.stderr));
    // One stream, still on its own descriptor.
    let out = lantern(&d).args(["logs", &id, "--stream", "stderr"]).output().unwrap();
    assert_eq!((text(&out.stdout), text(&out.stderr)), (String::new(), "flood done\n".to_string()));
    let out = lantern(&d).args(["logs", &id]).output().unwrap();
    assert_eq!(text(&out.stderr).lines().last(), Some("flood done"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_stdin_arrives_byte_for_byte_then_eof() {
    if !require_root("root_stdin_arrives_byte_for_byte_then_eof") {
        return;
    }
    let d = Daemon::start(&[]);
    let dir = scratch("stdin");
    let input = dir.join("input");
    let mut f = std::fs::File::create(&input).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..100 {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        f.write_all(&block).unwrap();
    }
    drop(f);
    let local = Command::new("sha256sum").stdin(std::fs::File::open(&input).unwrap()).output().unwrap();
    let remote = sh(&d, &format!("$L run /usr/bin/sha256sum < {}", input.display()));
    assert!(remote.status.success(), "{}", text(&remote.stderr));
    assert_eq!(text(&remote.stdout), text(&local.stdout), "100 MiB through stdin");
    let sorted = sh(&d, "printf 'b\\na\\nc\\n' | $L run /usr/bin/sort");
    assert_eq!(text(&sorted.stdout), "a\nb\nc\n");
    let empty = sh(&d, "$L run /usr/bin/sha256sum < /dev/null");
    assert!(text(&empty.stdout).starts_with("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    list_empty_within(&mut d.client(), Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(dir);
}

/// What a tmux pane shows.
fn pane(session: &str) -> String {
    text(&Command::new("tmux").args(["capture-pane", "-p", "-t", session]).output().unwrap().stdout)
}

fn wait_pane(session: &str, want: &str) -> String {
    let t0 = Instant::now();
    loop {
        let p = pane(session);
        if p.contains(want) {
            return p;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "pane never showed {want:?}:\n{p}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn keys(session: &str, k: &[&str]) {
    assert!(Command::new("tmux").args(["send-keys", "-t", session]).args(k).status().unwrap().success());
}

#[test]
fn root_a_terminal_session_driven_by_tmux() {
    if !require_root("root_a_terminal_session_driven_by_tmux") {
        return;
    }
    let d = Daemon::start(&[]);
    let session = format!("dl-io-{}", std::process::id());
    let script = format!(
        "{} --rig {} run -it /bin/busybox -- sh; echo LANTERN_EXIT=$?; stty -a | grep -o -- '-\\?icanon'; sleep 60",
        bin_dir().join("lantern").display(),
        d.addr
    );
    let ok = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "100", "-y", "30", &script])
        .env("TERM", "xterm")
        .status()
        .expect("tmux (scripts/install-deps installs it)");
    assert!(ok.success());
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
        }
    }
    let _k = Kill(session.clone());
    wait_pane(&session, "~ $");
    keys(&session, &["echo tty=$(tty) size=$(stty size)", "Enter"]);
    wait_pane(&session, "tty=/dev/pts/0 size=30 100");
    // Ctrl-C reaches the remote foreground process group.
    keys(&session, &["sleep 100; echo slept", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    keys(&session, &["C-c"]);
    keys(&session, &["echo after-interrupt", "Enter"]);
    let p = wait_pane(&session, "\nafter-interrupt");
    assert!(!p.contains("\nslept"), "{p}");
    // Ctrl-Z stops the remote foreground job; the shell's job control takes it.
    keys(&session, &["sleep 200", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    keys(&session, &["C-z"]);
    wait_pane(&session, "Stopped");
    keys(&session, &["kill -9 %1; echo job-gone", "Enter"]);
    wait_pane(&session, "\njob-gone");
    // A resize follows.
    assert!(Command::new("tmux")
        .args(["resize-window", "-t", &session, "-x", "120", "-y", "40"])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(500));
    keys(&session, &["echo now=$(stty size)", "Enter"]);
    wait_pane(&session, "now=40 120");
    // The exit code passes through, and the local terminal is cooked again.
    keys(&session, &["exit 7", "Enter"]);
    wait_pane(&session, "LANTERN_EXIT=7");
    let p = wait_pane(&session, "icanon");
    let after = p.split("LANTERN_EXIT=7").nth(1).unwrap_or_default();
    let flag = after.lines().map(str::trim).find(|l| l.ends_with("icanon"));
    assert_eq!(flag, Some("icanon"), "the terminal was not restored:\n{p}");
    list_empty_within(&mut d.client(), Duration::from_secs(2));
}

#[test]
fn root_loopback_works_inside_a_session() {
    if !require_root("root_loopback_works_inside_a_session") {
        return;
    }
    let d = Daemon::start(&[]);
    let py = r#"
import socket, threading
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    s = socket.socket(fam); s.bind((host, 0)); s.listen()
    def serve():
        c, _ = s.accept(); c.sendall(c.recv(64).upper()); c.close()
    threading.Thread(target=serve).start()
    c = socket.create_connection((host, s.getsockname()[1]))
    c.sendall(b"ping " + host.encode()); print(c.recv(64).decode())
"#;
    let out = lantern(&d).args(["run", "/usr/bin/python3", "--", "-c", py]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "PING 127.0.0.1\nPING ::1\n");
}

#[test]
fn root_a_run_ends_with_its_client_however_the_client_ends() {
    if !require_root("root_a_run_ends_with_its_client_however_the_client_ends") {
        return;
    }
    let d = Daemon::start(&[]);
    let dir = scratch("client-death");
    let sleeper = program(&dir, "sleeper", programs::SLEEPER);
    let flood = program(&dir, "flood", programs::FLOOD);
    let mut c = d.client();
    // timeout(1) sends SIGTERM.
    let out = sh(&d, &format!("timeout 2 $L run {}", sleeper.display()));
    assert_eq!(out.status.code(), Some(124));
    list_empty_within(&mut c, Duration::from_secs(1));
    // SIGTERM, SIGKILL, SIGHUP of lantern itself.
    for sig in [libc::SIGTERM, libc::SIGKILL, libc::SIGHUP] {
        let mut child = lantern(&d).args(["run", sleeper.to_str().unwrap()]).stdout(Stdio::null()).spawn().unwrap();
        wait_running(&mut c, Duration::from_secs(10));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::try_from(sig).unwrap(),
        )
        .unwrap();
        let st = child.wait().unwrap();
        assert!(!st.success(), "signal {sig}");
        list_empty_within(&mut c, Duration::from_secs(1));
    }
    // A closed pipe on stdout (SIGPIPE): lantern ends quietly, so does the run.
    let out = sh(&d, &format!("$L run {} -- 100000000 | head -1; echo \"codes=${{PIPESTATUS[*]}}\"", flood.display()));
    assert!(text(&out.stdout).starts_with("line 0 of the flood"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("codes=141 0"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    list_empty_within(&mut c, Duration::from_secs(1));
    // `events -f | head -1`: the same quiet end, no panic.
    let out = sh(&d, "timeout 10 $L events -f | head -1; echo \"codes=${PIPESTATUS[*]}\"");
    assert!(text(&out.stdout).contains("codes=141 0"), "{} {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    // A full disk on stdout: a clear error, and the run ends.
    let out = sh(&d, &format!("$L run {} -- 100000000 > /dev/full", flood.display()));
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("No space left on device"), "{}", text(&out.stderr));
    list_empty_within(&mut c, Duration::from_secs(1));
    // A connection dropped by a client of the protocol: the run is killed (the session
    // stays, without "remove").
    let id = c.load(&std::fs::read(&sleeper).unwrap());
    let mut raw = d.client();
    raw.send_raw(format!("START {id} --attach\n").as_bytes());
    let _started = raw.read();
    drop(raw);
    let st = c.wait_for(&id, State::Stopped, Duration::from_secs(1));
    assert_eq!(st.summary.exit, Some(proto::reply::Exit::Signal(9)));
    c.cmd(&format!("DELETE {id}"));
    // --keep keeps the session and says which one on stderr.
    let out = lantern(&d).args(["run", "--keep", flood.to_str().unwrap(), "--", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let l = c.list();
    assert_eq!(l.sessions.len(), 1);
    assert!(text(&out.stderr).contains(&l.sessions[0].id.to_string()), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_wall_clock_limit_and_limits_that_say_no() {
    if !require_root("root_wall_clock_limit_and_limits_that_say_no") {
        return;
    }
    let d = Daemon::start(&["--wall-seconds", "3"]);
    let dir = scratch("limits");
    let sleeper = program(&dir, "sleeper", programs::SLEEPER);
    let t0 = Instant::now();
    let out =
        lantern(&d).args(["run", "--keep", "--limit", "wall_seconds=1", sleeper.to_str().unwrap()]).output().unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(text(&out.stderr).contains("wall"), "{}", text(&out.stderr));
    let mut c = d.client();
    let id = c.list().sessions[0].id.to_string();
    let st = c.status(&id);
    assert_eq!((st.limit_hit, st.limits.wall_seconds), (Some(LimitHit::Wall), Some(1)));
    c.cmd(&format!("DELETE {id}"));
    // The rig's default applies without asking.
    let t0 = Instant::now();
    let _ = lantern(&d).args(["run", sleeper.to_str().unwrap()]).output().unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(6), "{took:?}");
    // Looser than the rig: refused, naming the rig's value; sizes take suffixes.
    let out = lantern(&d).args(["run", "--limit", "memory_bytes=2G", "/bin/true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("memory_bytes=2147483648 is looser than this rig's 1073741824"),
        "{}",
        text(&out.stderr)
    );
    let out = lantern(&d)
        .args(["run", "--limit", "memory_bytes=512M", "--limit", "wall_seconds=2", "/bin/true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = lantern(&d).args(["--json", "run", "--limit", "wall_seconds=0", "/bin/true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e: proto::Error = serde_json::from_slice(&out.stdout).expect("--json prints the rig's error object");
    assert_eq!(e.error, proto::Code::BadRequest);
    list_empty_within(&mut c, Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_program_names_argv0_applet_and_script_bundles() {
    if !require_root("root_program_names_argv0_applet_and_script_bundles") {
        return;
    }
    let d = Daemon::start(&[]);
    let dir = scratch("names");
    // argv[0] is the file's name: busybox finds its applet; the memfd carries the name.
    let out =
        lantern(&d).args(["run", "/bin/busybox", "--", "sh", "-c", "echo $0; readlink /proc/$$/exe"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "sh\n/memfd:busybox (deleted)\n");
    let out = lantern(&d).args(["run", "--argv0", "echo", "/bin/busybox", "--", "chosen", "name"]).output().unwrap();
    assert_eq!(text(&out.stdout), "chosen name\n");
    // A bundle whose exec path is an applet symlink inside it.
    let bb = dir.join("bb");
    std::fs::create_dir_all(bb.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", bb.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bb.join("bin/sh")).unwrap();
    let out = lantern(&d)
        .args(["run", bb.to_str().unwrap(), "--exec", "bin/sh", "--", "-c", "echo $0 runs; exit 4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "bin/sh runs\n");
    // A Python script, its interpreter from the rig's /usr.
    let py = dir.join("py");
    std::fs::create_dir_all(&py).unwrap();
    let script = "#!/usr/bin/env python3\nimport sys\nprint('args', sys.argv[1:])\nsys.exit(5)\n";
    std::fs::write(py.join("run_tests.py"), script).unwrap();
    std::fs::set_permissions(py.join("run_tests.py"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out =
        lantern(&d).args(["run", py.to_str().unwrap(), "--exec", "run_tests.py", "--", "a", "b c"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "args ['a', 'b c']\n");
    let up = lantern(&d).args(["--json", "upload", py.to_str().unwrap(), "--exec", "run_tests.py"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    assert_eq!(
        (&v["elf"], &v["script"]["interpreter"], &v["script"]["arg"]),
        (&serde_json::Value::Null, &"/usr/bin/env".into(), &"python3".into())
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_hostile_attach_frames_end_the_run() {
    if !require_root("root_hostile_attach_frames_end_the_run") {
        return;
    }
    let d = Daemon::start(&[]);
    let dir = scratch("frames");
    let sleeper = std::fs::read(program(&dir, "sleeper", programs::SLEEPER)).unwrap();
    let mut c = d.client();
    for garbage in [
        vec![9u8, 0, 0, 0, 0, 0, 0, 0],
        vec![0, 1, 0, 0, 0, 0, 0, 0],
        vec![0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        vec![4, 0, 0, 0, 0, 0, 0, 2, 1, 1],
        vec![5, 0, 0, 0, 0, 0, 0, 1, 0],
    ] {
        let id = c.load(&sleeper);
        let mut raw = d.client();
        raw.send_raw(format!("START {id} --attach {{\"remove\":true}}\n").as_bytes());
        let _ = raw.read();
        raw.send_raw(&garbage);
        // Whatever frames were on their way, then EOF.
        raw.writer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut rest = Vec::new();
        let r = std::io::Read::read_to_end(&mut raw.reader, &mut rest);
        assert!(r.is_ok(), "{garbage:?}: the connection stays open ({r:?})");
        list_empty_within(&mut c, Duration::from_secs(1));
    }
    // Options of attached runs without --attach, and bad terminal sizes, are refused.
    let id = c.load(&sleeper);
    for opts in [r#"{"stdin":true}"#, r#"{"remove":true}"#, r#"{"tty":{"rows":24,"cols":80}}"#] {
        assert_eq!(c.refused(&format!("START {id} {opts}")).error, proto::Code::BadRequest, "{opts}");
    }
    assert_eq!(
        c.refused(&format!(r#"START {id} --attach {{"tty":{{"rows":0,"cols":80}}}}"#)).error,
        proto::Code::BadRequest
    );
    let _ = std::fs::remove_dir_all(dir);
}
