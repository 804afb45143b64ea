//! Reaching into a session as a user does it, with the real `lantern` against the real
//! daemon: `lantern cp` both ways (a 50 MiB file, a tree with links, stdin and stdout),
//! results that outlive their run (and `keep_tmp` across runs, with another session in
//! between), planted links and traversal that yield nothing of the host, copies bounded by
//! `tmp_bytes` that leave nothing behind, `lantern exec` in the session's namespaces and
//! as its uid (RUNNING and DEBUGGING, ended by KILL), and another identity that finds
//! nothing. Needs root (the daemon does).

use proto::reply::{ReceiptReply, State, Status};
use proto::Code;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tests::{bin_dir, require_root, Client, Daemon};

fn lantern(d: &Daemon) -> Command {
    let mut c = Command::new(bin_dir().join("lantern"));
    c.arg("--rig").arg(d.addr.to_string());
    c
}

/// Runs lantern with `args`; panics with its stderr unless it succeeds.
fn ok(d: &Daemon, args: &[&str]) -> Output {
    let out = lantern(d).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "lantern {args:?}: {}", text(&out.stderr));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dl-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes nobody could guess (xorshift), `n` of them.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Loads the rig's own `/bin/sh` as a session and starts it with `-c script`.
fn sh_session(c: &mut Client, script: &str, extra: &str) -> String {
    let id = c.load(&std::fs::read("/bin/sh").unwrap());
    start_sh(c, &id, script, extra);
    id
}

fn start_sh(c: &mut Client, id: &str, script: &str, extra: &str) {
    let args = serde_json::to_string(&["-c", script]).unwrap();
    c.start(id, &format!("{{\"args\":{args}{extra}}}"));
}

fn stopped(c: &mut Client, id: &str) -> Status {
    c.wait_for(id, State::Stopped, Duration::from_secs(20))
}

/// `lantern exec ID -- /bin/sh -c script`: (stdout, stderr, exit code).
fn exec_sh(d: &Daemon, id: &str, script: &str) -> (String, String, Option<i32>) {
    let out = lantern(d).args(["exec", id, "--", "/bin/sh", "-c", script]).stdin(Stdio::null()).output().unwrap();
    (text(&out.stdout), text(&out.stderr), out.status.code())
}

/// Every regular file under `dir` (links not followed) by its path relative to `dir`,
/// with its sha256; links with their targets.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                out.push((rel, "dir".into()));
                stack.push(e.path());
            } else if t.is_symlink() {
                out.push((rel, format!("-> {}", std::fs::read_link(e.path()).unwrap().display())));
            } else {
                out.push((rel, sha256(&std::fs::read(e.path()).unwrap())));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn root_cp_round_trips_a_big_file_a_tree_and_stdio() {
    if !require_root("root_cp_round_trips_a_big_file_a_tree_and_stdio") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let dir = scratch("round-trip");
    let id = sh_session(&mut c, "exec sleep 1000", "");
    c.wait_for(&id, State::Running, Duration::from_secs(10));
    // 50 MiB in (into a directory that does not exist yet) and out again, while RUNNING.
    let big = noise(50 << 20, 7);
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let out = ok(&d, &["cp", dir.join("big.bin").to_str().unwrap(), &format!("{id}:/tmp/in/")]);
    assert!(
        text(&out.stderr).contains(&format!("{}:/tmp/in/big.bin ({} bytes, 1 files)", id, big.len())),
        "{}",
        text(&out.stderr)
    );
    ok(&d, &["cp", &format!("{id}:/tmp/in/big.bin"), dir.join("back.bin").to_str().unwrap()]);
    assert_eq!(sha256(&std::fs::read(dir.join("back.bin")).unwrap()), sha256(&big));
    // The program sees the same bytes, as its own uid's file.
    let (o, e, code) = exec_sh(&d, &id, "sha256sum /tmp/in/big.bin; stat -c '%u %s' /tmp/in/big.bin; id -u");
    assert_eq!(code, Some(0), "{e}");
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines[0], format!("{}  /tmp/in/big.bin", sha256(&big)));
    assert_eq!(lines[1], format!("{} {}", lines[2], big.len()), "{o}");
    // A tree: nested directories, an empty one, a link inside it, modes kept.
    let t = dir.join("tree");
    std::fs::create_dir_all(t.join("a/b/c")).unwrap();
    std::fs::create_dir_all(t.join("empty")).unwrap();
    for (i, name) in ["top.txt", "a/one.bin", "a/b/two.bin", "a/b/c/three.xml"].iter().enumerate() {
        std::fs::write(t.join(name), noise(1000 + 70_000 * i, i as u64 + 11)).unwrap();
    }
    std::fs::write(t.join("a/run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(t.join("a/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("b/two.bin", t.join("a/link")).unwrap();
    ok(&d, &["cp", t.to_str().unwrap(), &format!("{id}:/tmp/tree")]);
    let (o, e, code) =
        exec_sh(&d, &id, "/tmp/tree/a/run.sh && readlink /tmp/tree/a/link && cat /tmp/tree/a/link | wc -c");
    assert_eq!((o.as_str(), code), ("ran\nb/two.bin\n141000\n", Some(0)), "{e}");
    ok(&d, &["cp", &format!("{id}:/tmp/tree"), dir.join("tree-back").to_str().unwrap()]);
    assert_eq!(tree(&dir.join("tree-back")), tree(&t));
    let mode = std::fs::metadata(dir.join("tree-back/a/run.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    // Into an existing local directory: under the remote name.
    ok(&d, &["cp", &format!("{id}:/tmp/tree/a/b/two.bin"), dir.to_str().unwrap()]);
    assert_eq!(std::fs::read(dir.join("two.bin")).unwrap(), std::fs::read(t.join("a/b/two.bin")).unwrap());
    // `-`: a file's bytes both ways, and a directory as a tar stream on stdout.
    let mut child = lantern(&d)
        .args(["cp", "-", &format!("{id}:/tmp/from-stdin")])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&big[..3_000_000]).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let out = ok(&d, &["cp", &format!("{id}:/tmp/from-stdin"), "-"]);
    assert_eq!(sha256(&out.stdout), sha256(&big[..3_000_000]));
    let out = ok(&d, &["cp", &format!("{id}:/tmp/tree"), "-"]);
    let mut names: Vec<String> = tar::Archive::new(&out.stdout[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert!(names.iter().any(|n| n.ends_with("a/b/c/three.xml")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("a/link")), "{names:?}");
    // A directory tar on stdin with --tar.
    let tarball =
        std::process::Command::new("tar").args(["-C", t.to_str().unwrap(), "-cf", "-", "."]).output().unwrap();
    let mut child = lantern(&d)
        .args(["cp", "--tar", "-", &format!("{id}:/tmp/untarred")])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tarball.stdout).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    ok(&d, &["cp", &format!("{id}:/tmp/untarred"), dir.join("untarred").to_str().unwrap()]);
    assert_eq!(tree(&dir.join("untarred")), tree(&t));
    // From the bundle side: read-only.
    let e = c.refused(&format!("PUT {id} /bundle/x 1"));
    assert_eq!(e.error, Code::BadRequest, "{}", e.message);
    c.send_raw(b"x");
    // Nothing of it was skipped or lost: the daemon is still fine.
    assert!(c.hello().warnings.iter().all(|w| !w.contains("cp")));
    c.cmd(&format!("KILL {id}"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_results_outlive_the_run_and_keep_tmp_keeps_them() {
    if !require_root("root_results_outlive_the_run_and_keep_tmp_keeps_them") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let dir = scratch("results");
    let script = "mkdir -p /tmp/results && echo '<testsuite tests=\"1\"/>' > /tmp/results/junit.xml \
                  && head -c 5000 /dev/zero > /tmp/results/trace.bin && id -u > /tmp/uid; exit 3";
    let id = sh_session(&mut c, script, "");
    let st = stopped(&mut c, &id);
    assert_eq!(st.summary.exit, Some(proto::reply::Exit::Code(3)));
    // STATUS: the /tmp the run left; the receipt names its files.
    let tmp = st.tmp.expect("STATUS has tmp");
    assert_eq!(tmp.size_bytes, 64 << 20);
    assert!(tmp.used_bytes >= 5000 && tmp.used_bytes < 1 << 20, "{tmp:?}");
    let r: ReceiptReply = c.call(&format!("RECEIPT {id}"));
    let mut files: Vec<(String, u64)> = r.receipt.tmp_files.iter().map(|f| (f.path.clone(), f.size)).collect();
    files.sort();
    assert_eq!(
        files,
        [
            ("/tmp/results/junit.xml".into(), 23),
            ("/tmp/results/trace.bin".into(), 5000),
            ("/tmp/uid".into(), files[2].1)
        ]
    );
    // Fetched after the program has exited.
    ok(&d, &["cp", &format!("{id}:/tmp/results"), dir.join("results").to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(dir.join("results/junit.xml")).unwrap(), "<testsuite tests=\"1\"/>\n");
    assert_eq!(std::fs::read(dir.join("results/trace.bin")).unwrap(), vec![0u8; 5000]);
    ok(&d, &["cp", &format!("{id}:/tmp/uid"), dir.join("uid").to_str().unwrap()]);
    let uid = std::fs::read_to_string(dir.join("uid")).unwrap();
    // Another session runs in between (and takes the next uid).
    let other = sh_session(&mut c, "id -u > /tmp/uid", "");
    stopped(&mut c, &other);
    ok(&d, &["cp", &format!("{other}:/tmp/uid"), dir.join("other-uid").to_str().unwrap()]);
    assert_ne!(std::fs::read_to_string(dir.join("other-uid")).unwrap(), uid);
    c.cmd(&format!("DELETE {other}"));
    // keep_tmp: the next run finds them, as the same uid (it may write to them).
    start_sh(
        &mut c,
        &id,
        "cat /tmp/results/junit.xml; id -u; echo more >> /tmp/results/junit.xml",
        ",\"keep_tmp\":true",
    );
    let st = stopped(&mut c, &id);
    assert_eq!(st.summary.exit, Some(proto::reply::Exit::Code(0)));
    assert_eq!(c.output(&id), format!("<testsuite tests=\"1\"/>\n{uid}"));
    // A START without it: an empty /tmp.
    start_sh(&mut c, &id, "ls -A /tmp | wc -l", "");
    stopped(&mut c, &id);
    assert_eq!(c.output(&id).trim(), "0");
    let e = c.refused(&format!("GET {id} /tmp/results"));
    assert_eq!(e.error, Code::NotFound, "{}", e.message);
    // keep_tmp with a larger tmp_bytes resizes it; DELETE frees it.
    start_sh(&mut c, &id, "head -c 3000000 /dev/zero > /tmp/z", "");
    stopped(&mut c, &id);
    start_sh(&mut c, &id, "df -k /tmp | tail -1", ",\"keep_tmp\":true,\"limits\":{\"tmp_bytes\":8388608}");
    let st = stopped(&mut c, &id);
    assert_eq!(st.tmp.unwrap().size_bytes, 8 << 20);
    assert!(c.output(&id).split_whitespace().nth(1) == Some("8192"), "{}", c.output(&id));
    c.cmd(&format!("DELETE {id}"));
    let e = c.refused(&format!("GET {id} /tmp/z"));
    assert_eq!(e.error, Code::NotFound);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_planted_links_and_traversal_yield_nothing_of_the_host() {
    if !require_root("root_planted_links_and_traversal_yield_nothing_of_the_host") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let dir = scratch("planted");
    let secret = std::fs::read("/etc/shadow").unwrap();
    assert!(!secret.is_empty());
    let script = "ln -s /proc/1/root/etc/shadow /tmp/x; ln -s /bundle/.. /tmp/up; ln -s /etc /tmp/etc; \
                  mkdir /tmp/loop && ln -s ../loop /tmp/loop/self && ln -s /tmp/loop /tmp/loop/abs; \
                  mkfifo /tmp/loop/fifo; mkdir /tmp/out; ln -s /proc/self/root /tmp/out/root; \
                  echo fine > /tmp/out/fine.txt; exec sleep 1000";
    let id = sh_session(&mut c, script, "");
    c.wait_for(&id, State::Running, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    // A link itself, and paths through links: refused, nothing written here.
    for p in ["/tmp/x", "/tmp/up/etc/passwd", "/tmp/etc/passwd", "/tmp/out/root/etc/shadow", "/tmp/loop/self/self/fifo"]
    {
        let dest = dir.join("one");
        let out = lantern(&d).args(["cp", &format!("{id}:{p}"), dest.to_str().unwrap()]).output().unwrap();
        assert!(!out.status.success(), "{p}: copied");
        assert!(!dest.exists(), "{p}: something was written");
        let e = c.refused(&format!("GET {id} {p}"));
        assert!(matches!(e.error, Code::BadRequest | Code::NotFound), "{p}: {e:?}");
    }
    // Traversal in the remote path.
    for p in ["/tmp/../../etc", "/tmp/../etc/passwd", "/etc/passwd", "tmp/x", "/tmp/./../tmp", "/bundle/../etc"] {
        let e = c.refused(&format!("GET {id} {p}"));
        assert_eq!(e.error, Code::BadRequest, "{p}: {e:?}");
        let out = lantern(&d).args(["cp", &format!("{id}:{p}"), dir.join("t").to_str().unwrap()]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{p}");
        assert!(text(&out.stderr).contains("bad_request"), "{p}: {}", text(&out.stderr));
    }
    // The whole /tmp: links travel as links, never followed; the fifo is skipped with a note.
    let out = ok(&d, &["cp", &format!("{id}:/tmp"), dir.join("all").to_str().unwrap()]);
    assert!(text(&out.stderr).contains("fifo"), "{}", text(&out.stderr));
    let got = tree(&dir.join("all"));
    assert!(got.contains(&("out/fine.txt".into(), sha256(b"fine\n"))), "{got:?}");
    for (p, what) in &got {
        assert!(what == "dir" || what.starts_with("-> ") || what == &sha256(b"fine\n"), "{p}: {what}");
    }
    // Links out of the destination were not made here either.
    for (p, what) in &got {
        if let Some(t) = what.strip_prefix("-> ") {
            assert!(!t.starts_with('/') && !t.contains("root"), "{p} links out: {t}");
        }
    }
    // Copying in through a planted directory link: refused, nothing lands anywhere.
    std::fs::write(dir.join("evil"), b"evil").unwrap();
    for p in ["/tmp/etc/evil", "/tmp/out/root/tmp/evil", "/tmp/up/evil", "/tmp/loop/abs/evil"] {
        let out = lantern(&d).args(["cp", dir.join("evil").to_str().unwrap(), &format!("{id}:{p}")]).output().unwrap();
        assert!(!out.status.success(), "{p}: written");
    }
    assert!(!Path::new("/etc/evil").exists());
    let (o, _, _) = exec_sh(&d, &id, "ls /etc/evil /tmp/evil /tmp/loop/evil 2>&1 | grep -c 'No such file'");
    assert_eq!(o, "3\n");
    // Onto the planted link itself: the link is replaced by the file (as mv would), the
    // file it pointed to is untouched.
    ok(&d, &["cp", dir.join("evil").to_str().unwrap(), &format!("{id}:/tmp/x")]);
    let (o, _, _) = exec_sh(&d, &id, "cat /tmp/x; readlink /tmp/x || echo ' not a link'");
    assert_eq!(o, "evil not a link\n");
    assert_eq!(std::fs::read("/etc/shadow").unwrap(), secret);
    // A tar that climbs out (`../`, absolute names, a link then a file through it).
    let file = |name: &[u8]| tests::tarball::entry(name, b'0', 0o644, b"pw", b"");
    let link = |to: &[u8]| tests::tarball::entry(b"l", b'2', 0o777, b"", to);
    let hostile = [
        vec![file(b"ok.txt"), file(b"../up.txt")],
        vec![file(b"/abs.txt")],
        vec![link(b"/etc"), file(b"l/passwd")],
        vec![link(b"../../.."), file(b"l/passwd")],
    ];
    for entries in hostile {
        let mut t = entries.concat();
        t.extend_from_slice(&[0u8; 1024]);
        let mut w = d.client();
        w.send_raw(format!("PUT {id} /tmp/h {} --tar\n", t.len()).as_bytes());
        w.send_raw(&t);
        let r = w.read();
        assert_eq!(r["error"], "bad_request", "{r}");
    }
    let (o, _, _) = exec_sh(&d, &id, "ls -A /tmp; ls /up.txt /abs.txt 2>&1 | wc -l");
    assert!(!o.contains("h\n") && !o.contains(".lantern"), "{o}");
    // Output bytes: none of the host's secret anywhere in what came back.
    for e in walk_files(&dir) {
        let b = std::fs::read(&e).unwrap();
        assert!(!b.windows(secret.len().min(32)).any(|w| w == &secret[..secret.len().min(32)]), "{}", e.display());
    }
    c.cmd(&format!("KILL {id}"));
    let _ = std::fs::remove_dir_all(dir);
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().map(Result::unwrap) {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                v.push(e.path());
            }
        }
    }
    v
}

#[test]
fn root_copies_in_are_bounded_and_leave_nothing_half_written() {
    if !require_root("root_copies_in_are_bounded_and_leave_nothing_half_written") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = sh_session(&mut c, "exec sleep 1000", ",\"limits\":{\"tmp_bytes\":1048576}");
    c.wait_for(&id, State::Running, Duration::from_secs(10));
    let ls = |d: &Daemon| exec_sh(d, &id, "ls -A /tmp").0;
    // Larger than /tmp: refused before a byte is stored, the payload drained.
    let two = noise(2 << 20, 3);
    let e = c.refused(&format!("PUT {id} /tmp/two {}", two.len()));
    assert_eq!(e.error, Code::LimitReached, "{}", e.message);
    c.send_raw(&two);
    assert_eq!(c.hello().protocol, 1);
    assert_eq!(ls(&d), "");
    // Fits the announcement but not what is left: the write stops at ENOSPC, nothing stays.
    let (_, e, code) = exec_sh(&d, &id, "head -c 600000 /dev/zero > /tmp/fill");
    assert_eq!(code, Some(0), "{e}");
    c.send_raw(format!("PUT {id} /tmp/half 700000\n").as_bytes());
    c.send_raw(&two[..700_000]);
    let r = c.read();
    assert_eq!(r["error"], "limit_reached", "{r}");
    assert_eq!(ls(&d), "fill\n");
    // A tar the same way.
    let big = tests::tarball::entry(b"a.bin", b'0', 0o644, &two[..700_000], b"");
    let mut t = big.clone();
    t.extend_from_slice(&[0u8; 1024]);
    c.send_raw(format!("PUT {id} /tmp/tree {} --tar\n", t.len()).as_bytes());
    c.send_raw(&t);
    let r = c.read();
    assert_eq!(r["error"], "limit_reached", "{r}");
    assert_eq!(ls(&d), "fill\n");
    // The program's own writes meet the same limit.
    let (_, _, code) = exec_sh(&d, &id, "head -c 700000 /dev/zero > /tmp/more");
    assert_ne!(code, Some(0));
    exec_sh(&d, &id, "rm -f /tmp/fill /tmp/more");
    // A client that disconnects mid-copy: nothing under the final name, nothing at all.
    let mut w = d.client();
    w.send_raw(format!("PUT {id} /tmp/cut 500000\n").as_bytes());
    w.send_raw(&two[..200_000]);
    std::thread::sleep(Duration::from_millis(200));
    drop(w);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ls(&d), "");
    // An existing name is not overwritten behind the program's back... but a fresh one is.
    c.send_raw(format!("PUT {id} /tmp/ok 5\nhello").as_bytes());
    assert_eq!(c.read()["ok"], true);
    assert_eq!(exec_sh(&d, &id, "cat /tmp/ok").0, "hello");
    // A file copied onto itself again and again is counted once: 5 × 400 kB into 1 MiB.
    for _ in 0..5 {
        c.send_raw(format!("PUT {id} /tmp/again 400000\n").as_bytes());
        c.send_raw(&two[..400_000]);
        let r = c.read();
        assert_eq!(r["ok"], true, "{r}");
    }
    let used = c.status(&id).tmp.expect("tmp usage").used_bytes;
    assert!((400_000..600_000).contains(&used), "{used}");
    exec_sh(&d, &id, "rm /tmp/again");
    // Bigger than the daemon takes at all: refused before any byte, like UPLOAD; beyond
    // what it would skip, the connection is closed.
    let mut w = d.client();
    let e = w.refused(&format!("PUT {id} /tmp/huge 99999999999999"));
    assert_eq!(e.error, Code::TooLarge, "{e:?}");
    assert!(w.is_closed());
    assert_eq!(ls(&d), "ok\n");
    c.cmd(&format!("KILL {id}"));
}

/// Counts host processes whose command line is exactly `argv`.
fn host_procs(argv: &[&str]) -> usize {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want))
        .count()
}

#[test]
fn root_exec_joins_the_session_and_ends_with_it() {
    if !require_root("root_exec_joins_the_session_and_ends_with_it") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = sh_session(&mut c, "id -u > /tmp/uid; exec sleep 1000", "");
    c.wait_for(&id, State::Running, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    // The session's uid and pid namespace (init, the program, the exec'd shell and ls).
    let (o, e, code) = exec_sh(&d, &id, "id -u; cat /tmp/uid; ls /proc | grep -c '^[0-9]'; cat /proc/1/comm");
    assert_eq!(code, Some(0), "{e}");
    let l: Vec<&str> = o.lines().collect();
    assert_eq!(l[0], l[1], "{o}");
    assert_ne!(l[0], "0");
    let n: u32 = l[2].parse().unwrap();
    assert!((3..=5).contains(&n), "{o}");
    // Its own stdout and stderr, apart; its exit code.
    let (o, e, code) = exec_sh(&d, &id, "echo out; echo err >&2; exit 5");
    assert_eq!((o.as_str(), e.as_str(), code), ("out\n", "err\n", Some(5)));
    // stdin with -i (and EOF at its end).
    let mut child = lantern(&d)
        .args(["exec", "-i", &id, "--", "/usr/bin/sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = noise(3 << 20, 5);
    let mut si = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || si.write_all(&input).map(|()| input));
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let input = feeder.join().unwrap().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out, format!("{}  -\n", sha256(&input)));
    // --env; a program that is not there.
    let out =
        lantern(&d).args(["exec", "--env", "WHO=lantern", &id, "--", "/bin/sh", "-c", "echo $WHO"]).output().unwrap();
    assert_eq!(text(&out.stdout), "lantern\n");
    let out = lantern(&d).args(["exec", &id, "--", "/no/such/program"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/no/such/program"), "{}", text(&out.stderr));
    // The rlimits and the seccomp filter are the session's.
    let (o, _, _) = exec_sh(&d, &id, "ulimit -n; cat /proc/self/status | grep -E '^(Seccomp|NoNewPrivs|CapEff):'");
    assert!(
        o.contains("Seccomp:\t2") && o.contains("NoNewPrivs:\t1") && o.contains("CapEff:\t0000000000000000"),
        "{o}"
    );
    // KILL ends an exec'd process with the session.
    let marker = ["/bin/sleep", "4242"];
    let mut child = lantern(&d).args(["exec", &id, "--"]).args(marker).stdout(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while host_procs(&marker) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the exec'd process never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.cmd(&format!("KILL {id}"));
    let st = child.wait().unwrap();
    assert!(!st.success());
    assert_eq!(host_procs(&marker), 0);
    stopped(&mut c, &id);
    // The receipt lists the exec'd processes that ended by themselves (the exec'd process
    // itself; what it forks is counted in the session's cgroup, not listed).
    let r: ReceiptReply = c.call(&format!("RECEIPT {id}"));
    let comms: Vec<&str> = r.receipt.processes.iter().map(|p| p.comm.as_str()).collect();
    assert!(comms.contains(&"sha256sum") && comms.contains(&"id"), "{comms:?}");
    assert!(comms.iter().filter(|c| **c == "sh").count() >= 4, "{comms:?}");
    let sums: Vec<_> = r.receipt.processes.iter().filter(|p| p.comm == "sha256sum").collect();
    assert_eq!((sums.len(), sums[0].exit_code), (1, 0));
    // A STOPPED session has nothing to exec in.
    let e = c.refused(&format!("EXEC {id} {{\"argv\":[\"/bin/true\"]}}"));
    assert_eq!(e.error, Code::InvalidState, "{}", e.message);
    // DEBUGGING: the program waits for its debugger; exec and cp work beside it.
    let dbg = c.load(&std::fs::read("/bin/sh").unwrap());
    let r = c.cmd(&format!("START {dbg} --debug"));
    assert_eq!(r["ok"], true, "{r}");
    c.wait_for(&dbg, State::Debugging, Duration::from_secs(10));
    let (o, e, code) = exec_sh(&d, &dbg, "echo in-debug > /tmp/d; cat /tmp/d; ls /proc | grep -c '^[0-9]'");
    assert_eq!(code, Some(0), "{e}");
    assert!(o.starts_with("in-debug\n"), "{o}");
    let out = ok(&d, &["cp", &format!("{dbg}:/tmp/d"), "-"]);
    assert_eq!(text(&out.stdout), "in-debug\n");
    c.cmd(&format!("KILL {dbg}"));
}

#[test]
fn root_another_identity_finds_nothing_and_the_audit_log_tells() {
    if !require_root("root_another_identity_finds_nothing_and_the_audit_log_tells") {
        return;
    }
    const ALICE: &str = "alice-token-0123456789";
    const BOB: &str = "bob-token-0123456789ab";
    let dir = scratch("identity");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("alice {ALICE}\nbob {BOB}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let audit = dir.join("audit.log");
    let d = Daemon::start(&["--auth-tokens", tokens.to_str().unwrap(), "--audit-log", audit.to_str().unwrap()]);
    let mut alice = d.client();
    assert_eq!(alice.cmd(&format!("AUTH {ALICE}"))["ok"], true);
    let id = sh_session(&mut alice, "echo secret > /tmp/s; exec sleep 1000", "");
    alice.wait_for(&id, State::Running, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let mut bob = d.client();
    assert_eq!(bob.cmd(&format!("AUTH {BOB}"))["ok"], true);
    let e = bob.refused(&format!("GET {id} /tmp/s"));
    assert_eq!(e.error, Code::NotFound);
    let e = bob.refused(&format!("PUT {id} /tmp/t 4"));
    assert_eq!(e.error, Code::NotFound);
    bob.send_raw(b"xxxx");
    let e = bob.refused(&format!("EXEC {id} {{\"argv\":[\"/bin/true\"]}}"));
    assert_eq!(e.error, Code::NotFound);
    assert_eq!(bob.hello().protocol, 1, "bob's connection survives");
    // lantern as bob says so too.
    let tf = dir.join("bob");
    std::fs::write(&tf, BOB).unwrap();
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out =
        lantern(&d).args(["--token-file", tf.to_str().unwrap(), "cp", &format!("{id}:/tmp/s"), "-"]).output().unwrap();
    assert!(!out.status.success() && out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("not_found"), "{}", text(&out.stderr));
    // Alice: a copy each way and an exec, audited.
    let af = dir.join("alice");
    std::fs::write(&af, ALICE).unwrap();
    std::fs::set_permissions(&af, std::fs::Permissions::from_mode(0o600)).unwrap();
    let a = |args: &[&str]| {
        let out = lantern(&d).arg("--token-file").arg(&af).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        out
    };
    assert_eq!(text(&a(&["cp", &format!("{id}:/tmp/s"), "-"]).stdout), "secret\n");
    std::fs::write(dir.join("in.txt"), b"twelve bytes").unwrap();
    a(&["cp", dir.join("in.txt").to_str().unwrap(), &format!("{id}:/tmp/in.txt")]);
    a(&["exec", &id, "--", "/bin/true"]);
    alice.cmd(&format!("KILL {id}"));
    let t0 = Instant::now();
    let lines = loop {
        let l: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if l.iter().filter(|v| v["audit"] == "cp").count() >= 2 || t0.elapsed() > Duration::from_secs(5) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let find = |f: &dyn Fn(&serde_json::Value) -> bool| lines.iter().find(|v| f(v)).cloned();
    let out = find(&|v| v["audit"] == "cp" && v["direction"] == "out").expect("cp out audited");
    assert_eq!(
        (out["path"].as_str(), out["bytes"].as_u64(), out["identity"].as_str()),
        (Some("/tmp/s"), Some(7), Some("alice"))
    );
    let inn = find(&|v| v["audit"] == "cp" && v["direction"] == "in").expect("cp in audited");
    assert_eq!((inn["path"].as_str(), inn["bytes"].as_u64()), (Some("/tmp/in.txt"), Some(12)));
    let ex = find(&|v| v["audit"] == "exec").expect("exec audited");
    assert_eq!((ex["program"].as_str(), ex["identity"].as_str()), (Some("/bin/true"), Some("alice")));
    let _ = std::fs::remove_dir_all(dir);
}
