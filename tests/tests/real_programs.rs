//! Real programs nobody here wrote, under the session's allowlist: a dynamically linked C
//! program, C++ with `std::thread`, a Rust program built with the machine's rustc, the
//! statically linked busybox `sh -c`, and Python from the rig's `/usr`. Each must exit 0 (or
//! its own code) with the expected output. Needs root.

use proto::reply::{Exit, LogEnd};
use serde_json::json;
use std::process::Command;
use tests::{c_program, programs, require_root, Client, Daemon};

const EXECWRAP: &str = include_str!("../programs/execwrap.c");

/// Starts `id` with `args`, follows its output to the end; returns it and how it ended.
fn run(c: &mut Client, id: &str, args: &[&str]) -> (String, Option<Exit>) {
    c.start(id, &json!({ "args": args }).to_string());
    match c.follow(id) {
        (out, LogEnd::Ended { exit, .. }) => (out, exit),
        (_, end) => panic!("{end:?}"),
    }
}

/// Builds a program with an external compiler into a scratch directory.
fn build(name: &str, compiler: &[&str], source: &str, ext: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("dl-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.{ext}"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let st = Command::new(compiler[0]).args(&compiler[1..]).arg("-o").arg(&out).arg(&src).status().unwrap();
    assert!(st.success(), "{compiler:?} failed on {name}");
    std::fs::read(out).unwrap()
}

const CXX_THREADS: &str = r#"
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>
int main() {
    std::atomic<int> n{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < 8; i++) ts.emplace_back([&] { for (int j = 0; j < 1000; j++) n++; });
    for (auto &t : ts) t.join();
    std::printf("threads counted %d\n", n.load());
    return 0;
}
"#;

const RUST_THREADS: &str = r#"
use std::io::Write;
fn main() {
    let handles: Vec<_> = (0..4u64).map(|i| std::thread::spawn(move || (0..1000u64).map(|x| x * i).sum::<u64>())).collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let dir = std::env::temp_dir().join("rust-probe");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join("f")).unwrap().write_all(b"x").unwrap();
    let meta = std::fs::metadata(dir.join("f")).unwrap();
    println!("rust total {total} file {} cwd {}", meta.len(), std::env::current_dir().unwrap().display());
}
"#;

#[test]
fn root_real_programs_run_under_the_allowlist() {
    if !require_root("root_real_programs_run_under_the_allowlist") {
        return;
    }
    let d = Daemon::start(&[]);
    let mut c = d.client();

    // A dynamically linked C program (glibc's loader, stdio).
    let id = c.load(&c_program("hello", programs::HELLO, false));
    let (out, end) = run(&mut c, &id, &["a", "b"]);
    assert_eq!(end, Some(Exit::Code(7)), "{out}");
    assert!(out.contains("hello from the rig, 3 args") && out.contains("to stderr"), "{out}");

    // C++ with std::thread.
    let id = c.load(&build("cxx_threads", &["c++", "-O1", "-pthread"], CXX_THREADS, "cc"));
    let (out, end) = run(&mut c, &id, &[]);
    assert_eq!(end, Some(Exit::Code(0)), "{out}");
    assert!(out.contains("threads counted 8000"), "{out}");

    // Rust, with threads and files (std probes statx, clone3 → ENOSYS → clone).
    let id = c.load(&build("rust_threads", &["rustc", "-O", "--edition", "2021"], RUST_THREADS, "rs"));
    let (out, end) = run(&mut c, &id, &[]);
    assert_eq!(end, Some(Exit::Code(0)), "{out}");
    assert!(out.contains("rust total 2997000 file 1 cwd /tmp"), "{out}");

    // Programs of the rig's own /usr, started by a tiny launcher: busybox (static) and
    // Python (dynamic, many modules, threads).
    let wrap = c.load(&c_program("execwrap", EXECWRAP, false));
    let (out, end) =
        run(&mut c, &wrap, &["/bin/busybox", "sh", "-c", "echo hi from $0; echo $((6 * 7)); ls / | wc -l"]);
    assert_eq!(end, Some(Exit::Code(0)), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["hi from sh", "42"], "{out}");
    let py = "import hashlib, json, os, threading, subprocess\n\
              t = [threading.Thread(target=lambda: None) for _ in range(4)]\n\
              [x.start() for x in t]; [x.join() for x in t]\n\
              r = subprocess.run(['/bin/busybox', 'true'])\n\
              print(json.dumps({'sha': hashlib.sha256(b'rig').hexdigest()[:12], 'cpus': os.cpu_count() > 0, 'child': r.returncode}))";
    let (out, end) = run(&mut c, &wrap, &["/usr/bin/python3", "python3", "-c", py]);
    assert_eq!(end, Some(Exit::Code(0)), "{out}");
    let want = format!("{{\"sha\": \"{}\", \"cpus\": true, \"child\": 0}}", &sha256_hex(b"rig")[..12]);
    assert!(out.contains(&want), "{out} (want {want})");
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}
