//! `debuglantern-bench`: the side-by-side benchmark of SPEC §10. Every figure is measured
//! in one run against a peer on the same machine and printed as a ratio. Loopback only,
//! bounded in count and time. Run as root (`scripts/bench`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::{c_program, programs, Client, Daemon};

const UPLOAD_MIB: usize = 256;

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("debuglantern-bench: run as root (the daemon builds namespaces and uid maps): sudo scripts/bench");
        std::process::exit(2);
    }
    let only = std::env::args().nth(1);
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    println!(
        "debuglantern benchmark — {} — {} cores",
        uname(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    if want("upload") {
        upload();
    }
    if want("start") {
        start_exit();
    }
    if want("control") {
        control_plane();
    }
    if want("bundle") {
        bundle_extraction();
    }
    if want("debug") {
        debug_latency();
        debug_launch();
    }
    if want("io") {
        program_io();
    }
    if want("cp") {
        copy_files();
    }
    if want("cgroups") {
        cgroup_cost();
    }
    if want("observe") {
        observe_cost();
    }
}

/// `argv[1]` times open+close of /etc/passwd: a file-heavy workload.
const OPENS: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1;
    for (long i = 0; i < n; i++) { int fd = open("/etc/passwd", O_RDONLY); if (fd < 0) return 1; close(fd); }
    return 0;
}"#;

/// START→exit with `opts` (JSON, or nothing), then `LOGS id --follow` until its end.
fn run_with(c: &mut Client, id: &str, opts: &str) -> f64 {
    let t = Instant::now();
    let start = if opts.is_empty() { format!("START {id}") } else { format!("START {id} {opts}") };
    c.send_raw(format!("{start}\nLOGS {id} --follow\n").as_bytes());
    let r = c.read();
    assert_eq!(r["ok"], true, "{r}");
    loop {
        let v = c.read();
        if v["end"] == true {
            assert_eq!(v["exit"]["code"], 0, "{v}");
            break;
        }
    }
    t.elapsed().as_secs_f64() * 1e3
}

/// One row of a ratio table: `v`'s median, p99 and ratio to `of`; returns the median.
fn ratio_row(label: &str, v: &mut [f64], of: f64, decimals: usize) -> f64 {
    let m = median(v);
    println!("| {label} | {m:.decimals$} | {:.decimals$} | {:.2} |", pct(v, 0.99), m / of);
    m
}

/// An observation workload's table: bare on the host, unobserved, the build before (if
/// measured), observed (files; all), strace (if measured), as ratios to unobserved.
fn observe_table(
    what: &str,
    unobserved: &mut [f64],
    host: &mut [f64],
    before: &mut [f64],
    files: &mut [f64],
    all: Option<&mut [f64]>,
    strace: &mut [f64],
) {
    let u = median(unobserved);
    println!("## Observation: {what}");
    println!("| path | median | p99 | ratio to unobserved |");
    println!("|---|---|---|---|");
    ratio_row("bare on the host", host, u, 1);
    ratio_row("debuglantern START→exit, unobserved", unobserved, u, 1);
    if !before.is_empty() {
        ratio_row("the build before (DEBUGLANTERN_BASELINE), unobserved", before, u, 1);
    }
    let f = ratio_row("debuglantern, `\"observe\":[\"files\"]`", files, u, 1);
    if let Some(all) = all {
        ratio_row("debuglantern, `\"observe\":[\"all\"]`", all, u, 1);
    }
    if !strace.is_empty() {
        let s = ratio_row("`strace -f -e trace=file,process,network -o /dev/null` on the host", strace, u, 1);
        println!();
        println!("observed (files) / strace = {:.2}", f / s);
    }
    println!();
}

/// START `observe` (issue 20): 100,000 open+close in a session unobserved, observed
/// (files; all), the same binary under `strace -f -e trace=file,process,network` on the
/// host, and bare on the host; and what observation adds to a trivial START→exit. With
/// DEBUGLANTERN_BASELINE, the build before runs the unobserved rows too (an unobserved
/// run must pay nothing).
fn observe_cost() {
    const N: usize = 7;
    const OPENS_N: &str = "100000";
    let bin = c_program("bench_opens", OPENS, false);
    let dir = std::env::temp_dir().join(format!("debuglantern-bench-observe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("opens");
    std::fs::write(&local, &bin).unwrap();
    std::fs::set_permissions(&local, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&bin);
    let tiny = c.load(&c_program("bench_true_obs", programs::TRUE, true));
    let mut base = baseline().map(|dir| {
        let bd = Daemon::start_binary(&dir.join("debuglantern"), &[], &[]);
        let mut bc = bd.client();
        let (bid, btiny) = (bc.load(&bin), bc.load(&c_program("bench_true_obs", programs::TRUE, true)));
        (bd, bc, bid, btiny)
    });
    let strace = which("strace");
    let plain = format!(r#"{{"args":["{OPENS_N}"]}}"#);
    let files = format!(r#"{{"args":["{OPENS_N}"],"observe":["files"]}}"#);
    let all = format!(r#"{{"args":["{OPENS_N}"],"observe":["all"]}}"#);
    let timed = |cmd: &mut Command| {
        let t = Instant::now();
        let st = cmd.status().unwrap();
        assert!(st.success());
        t.elapsed().as_secs_f64() * 1e3
    };
    let traced = |s: &std::path::Path| {
        let mut c = Command::new(s);
        c.args(["-f", "-e", "trace=file,process,network", "-o", "/dev/null"]);
        c
    };
    run_with(&mut c, &id, &files);
    let (mut host, mut st, mut un, mut fi, mut al, mut bun) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..N {
        host.push(timed(Command::new(&local).arg(OPENS_N)));
        if let Some(s) = &strace {
            st.push(timed(traced(s).arg(&local).arg(OPENS_N)));
        }
        un.push(run_with(&mut c, &id, &plain));
        fi.push(run_with(&mut c, &id, &files));
        al.push(run_with(&mut c, &id, &all));
        if let Some((_, bc, bid, _)) = base.as_mut() {
            bun.push(run_with(bc, bid, &plain));
        }
    }
    observe_table(
        &format!("{OPENS_N} open+close ({N} runs each, interleaved; ms)"),
        &mut un,
        &mut host,
        &mut bun,
        &mut fi,
        Some(&mut al),
        &mut st,
    );
    if strace.is_none() {
        println!("(strace is not installed: apt-get install strace)");
        println!();
    }
    // A file-heavy shell pipeline nobody here wrote: busybox find | head | xargs cat.
    const PIPELINE: &str =
        "find /usr -type f -perm -o=r -print0 | /usr/bin/head -z -n 20000 | xargs -0 cat > /dev/null";
    if std::path::Path::new("/bin/busybox").exists() {
        let bb = c.load(&std::fs::read("/bin/busybox").unwrap());
        let args = |observe: &str| {
            serde_json::json!({"argv0": "sh", "args": ["-c", PIPELINE], "observe": [observe]})
                .to_string()
                .replace(r#"["none"]"#, "[]")
        };
        let (plain, files) = (args("none"), args("files"));
        run_with(&mut c, &bb, &files);
        let (mut host, mut st, mut un, mut fi) = (vec![], vec![], vec![], vec![]);
        for _ in 0..5 {
            host.push(timed(Command::new("/bin/busybox").args(["sh", "-c", PIPELINE])));
            if let Some(s) = &strace {
                st.push(timed(traced(s).args(["/bin/busybox", "sh", "-c", PIPELINE])));
            }
            un.push(run_with(&mut c, &bb, &plain));
            fi.push(run_with(&mut c, &bb, &files));
        }
        observe_table(
            &format!("`{PIPELINE}` (busybox; 5 runs each, interleaved; ms)"),
            &mut un,
            &mut host,
            &mut [],
            &mut fi,
            None,
            &mut st,
        );
    }
    // A trivial START→exit: what asking costs when the program makes no observed call.
    const M: usize = 100;
    let (mut t0, mut t1, mut tb) = (vec![], vec![], vec![]);
    for _ in 0..5 {
        run_with(&mut c, &tiny, "");
    }
    for _ in 0..M {
        t0.push(run_with(&mut c, &tiny, ""));
        t1.push(run_with(&mut c, &tiny, r#"{"observe":["all"]}"#));
        if let Some((_, bc, _, btiny)) = base.as_mut() {
            tb.push(run_with(bc, btiny, ""));
        }
    }
    let m0 = median(&mut t0);
    println!("## Observation of a trivial static binary ({M} START→exit each, interleaved; ms)");
    println!("| path | median | p99 | ratio |");
    println!("|---|---|---|---|");
    ratio_row("unobserved", &mut t0, m0, 3);
    ratio_row("`\"observe\":[\"all\"]`", &mut t1, m0, 3);
    if !tb.is_empty() {
        ratio_row("the build before, unobserved", &mut tb, m0, 3);
    }
    println!();
    let _ = std::fs::remove_dir_all(dir);
}

/// Writes `argv[1]` MiB of zeroes to stdout.
const SPEW: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    static char b[1 << 20];
    long n = argc > 1 ? atol(argv[1]) : 1;
    for (long i = 0; i < n; i++)
        for (size_t off = 0; off < sizeof b;) { ssize_t w = write(1, b + off, sizeof b - off); if (w <= 0) return 1; off += w; }
    return 0;
}"#;

/// Reads stdin to its end, discarding; exits 0 if it got `argv[1]` MiB.
const SINK: &str = r#"
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    static char b[1 << 20];
    long want = (argc > 1 ? atol(argv[1]) : 1) << 20, got = 0;
    ssize_t r;
    while ((r = read(0, b, sizeof b)) > 0) got += r;
    return got == want ? 0 : 1;
}"#;

/// `lantern run` of a program writing 1 GiB into `wc -c`, and of one reading 1 GiB of
/// stdin, against the same pipelines run locally.
fn program_io() {
    const MIB: u64 = 1024;
    const RUNS: usize = 5;
    let dir = std::env::temp_dir().join(format!("dl-bench-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (spew, sink) = (dir.join("spew"), dir.join("sink"));
    for (p, src) in [(&spew, SPEW), (&sink, SINK)] {
        std::fs::write(p, c_program(p.file_name().unwrap().to_str().unwrap(), src, false)).unwrap();
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let d = Daemon::start(&[]);
    let lantern = format!("{} --rig {}", tests::bin_dir().join("lantern").display(), d.addr);
    let time = |script: String, check: &dyn Fn(&[u8])| -> f64 {
        let t = Instant::now();
        let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        check(&out.stdout);
        MIB as f64 / secs
    };
    let counted = |out: &[u8]| assert_eq!(String::from_utf8_lossy(out).trim(), (MIB << 20).to_string(), "lossless");
    let nothing = |_: &[u8]| {};
    let (mut lo, mut ro, mut li, mut ri) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        lo.push(time(format!("{} {MIB} | wc -c", spew.display()), &counted));
        ro.push(time(format!("{lantern} run {} -- {MIB} | wc -c", spew.display()), &counted));
        li.push(time(format!("head -c {}M /dev/zero | {} {MIB}", MIB, sink.display()), &nothing));
        ri.push(time(format!("head -c {}M /dev/zero | {lantern} run {} -- {MIB}", MIB, sink.display()), &nothing));
    }
    let (lo, ro, li, ri) = (median(&mut lo), median(&mut ro), median(&mut li), median(&mut ri));
    println!("## Program I/O: 1 GiB through `lantern run` vs a local pipe (median of {RUNS}, whole command)");
    println!("| path | MiB/s | ratio |");
    println!("|---|---|---|");
    println!("| local: `spew 1024 \\| wc -c` | {lo:.0} | 1.00 |");
    println!("| `lantern run spew -- 1024 \\| wc -c` (every byte counted) | {ro:.0} | {:.2} |", ro / lo);
    println!("| local: `head -c 1G /dev/zero \\| sink` | {li:.0} | 1.00 |");
    println!("| `head -c 1G /dev/zero \\| lantern run sink` (sink checks the count) | {ri:.0} | {:.2} |", ri / li);
    println!();
    let _ = std::fs::remove_dir_all(dir);
}

/// What the session cgroups cost a START: START→exit on a daemon that makes them and on
/// one started with `--no-cgroups`, interleaved run for run in the same process.
/// `DL_BENCH_WITH="--cpus 0 ..."` gives the cgroup daemon more flags (which limit costs
/// what).
fn cgroup_cost() {
    const N: usize = 400;
    let bin = c_program("bench_true", programs::TRUE, true);
    let extra = std::env::var("DL_BENCH_WITH").unwrap_or_default();
    let with = Daemon::start(&extra.split_whitespace().collect::<Vec<_>>());
    let without = Daemon::start(&["--no-cgroups"]);
    let controllers = with.client().call::<serde_json::Value>("HELLO")["jail"]["cgroups"].clone();
    let (mut a, mut b) = (with.client(), without.client());
    let (ia, ib) = (a.load(&bin), b.load(&bin));
    for _ in 0..10 {
        run_once(&mut a, &ia);
        run_once(&mut b, &ib);
    }
    let (mut ta, mut tb, mut diff) = (Vec::with_capacity(N), Vec::with_capacity(N), Vec::with_capacity(N));
    for i in 0..N {
        // Alternate which goes first, so neither always follows the other's exit.
        let (x, y) = if i % 2 == 0 {
            let x = run_once(&mut a, &ia);
            (x, run_once(&mut b, &ib))
        } else {
            let y = run_once(&mut b, &ib);
            (run_once(&mut a, &ia), y)
        };
        ta.push(x);
        tb.push(y);
        diff.push(x - y);
    }
    let (ma, mb) = (median(&mut ta), median(&mut tb));
    println!("## What session cgroups cost a START ({N} START→exit each, interleaved; ms)");
    println!("| daemon | median | p99 | ratio |");
    println!("|---|---|---|---|");
    println!("| `--no-cgroups` (rlimits only) | {mb:.3} | {:.3} | 1.00 |", pct(&mut tb, 0.99));
    println!(
        "| cgroups {controllers} (limits, join, counters; made at LOAD, removed at DELETE) | {ma:.3} | {:.3} | {:.2} |",
        pct(&mut ta, 0.99),
        ma / mb
    );
    println!(
        "cgroup work per START: {:.3} ms (median of the {N} paired differences; {:.3} ms between the medians)",
        median(&mut diff),
        ma - mb
    );
    println!();
}

/// Copies `from` into a new `to` over one loopback TCP connection (a reader thread writing
/// the file, this thread sending it): what `socat`/`nc` between two shells would do.
fn raw_copy(from: &std::path::Path, to: &std::path::Path) -> u64 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let to = to.to_path_buf();
    let rx = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut f = std::fs::File::create(&to).unwrap();
        std::io::copy(&mut s, &mut f).unwrap()
    });
    let mut s = TcpStream::connect(addr).unwrap();
    std::io::copy(&mut std::fs::File::open(from).unwrap(), &mut s).unwrap();
    drop(s);
    rx.join().unwrap()
}

/// `lantern cp` of a 256 MiB file into a session's /tmp and back out, against the same
/// bytes copied file to file over raw loopback TCP. Both ends in tmpfs, whole commands.
/// With DEBUGLANTERN_BASELINE, that build's daemon and lantern too, interleaved.
fn copy_files() {
    const RUNS: usize = 5;
    let dir = std::path::Path::new("/dev/shm").join(format!("dl-bench-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, raw_dst, back) = (dir.join("big.bin"), dir.join("raw.bin"), dir.join("back.bin"));
    let mut data = vec![0u8; UPLOAD_MIB << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&src, &data).unwrap();
    drop(data);
    let args = ["--tmp-size", "300M", "--max-upload", "300M", "--max-total-size", "2G"];
    let mut builds = vec![("this", Daemon::start(&args), tests::bin_dir())];
    if let Some(dir) = baseline() {
        builds.push(("the build before", Daemon::start_binary(&dir.join("debuglantern"), &[], &args), dir));
    }
    // A fresh session per copy (builds before 2026-12-02 counted a replaced file twice).
    let session = |d: &Daemon| {
        let mut c = d.client();
        let id = c.load(&c_program("bench_true", programs::TRUE, true));
        c.start(&id, "{}");
        c.wait_for(&id, proto::reply::State::Stopped, Duration::from_secs(20));
        id
    };
    let mib = UPLOAD_MIB as f64;
    let timed = |bin: &std::path::Path, rig: &str, args: &[&str]| -> f64 {
        let t = Instant::now();
        let out = Command::new(bin.join("lantern")).arg("--rig").arg(rig).args(args).output().unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(out.status.success(), "lantern {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        mib / secs
    };
    let mut raw = Vec::new();
    let mut rows: Vec<(Vec<f64>, Vec<f64>)> = builds.iter().map(|_| (Vec::new(), Vec::new())).collect();
    for _ in 0..RUNS {
        let t = Instant::now();
        assert_eq!(raw_copy(&src, &raw_dst), (UPLOAD_MIB << 20) as u64);
        raw.push(mib / t.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&raw_dst);
        for ((_, d, bin), (cin, cout)) in builds.iter().zip(rows.iter_mut()) {
            let id = session(d);
            let (rig, remote) = (d.addr.to_string(), format!("{id}:/tmp/big.bin"));
            cin.push(timed(bin, &rig, &["cp", src.to_str().unwrap(), &remote]));
            let _ = std::fs::remove_file(&back);
            cout.push(timed(bin, &rig, &["cp", &remote, back.to_str().unwrap()]));
            assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap(), "the copy came back changed");
            d.client().cmd(&format!("DELETE {id}"));
        }
    }
    let raw = median(&mut raw);
    println!("## Copy of a {UPLOAD_MIB} MiB file into and out of a session's /tmp (median of {RUNS}, whole command, tmpfs both ends)");
    println!("| path | build | MiB/s | ratio |");
    println!("|---|---|---|---|");
    println!("| file → raw loopback TCP → file | | {raw:.0} | 1.00 |");
    for ((label, ..), (cin, cout)) in builds.iter().zip(rows.iter_mut()) {
        let (cin, cout) = (median(cin), median(cout));
        println!("| `lantern cp FILE ID:/tmp/big.bin` (files helper as the session's uid, tmp_bytes) | {label} | {cin:.0} | {:.2} |", cin / raw);
        println!(
            "| `lantern cp ID:/tmp/big.bin FILE` (memfd snapshot, then the socket) | {label} | {cout:.0} | {:.2} |",
            cout / raw
        );
    }
    println!();
    let _ = std::fs::remove_dir_all(dir);
}

fn uname() -> String {
    let u = nix::sys::utsname::uname().unwrap();
    format!("{} {} {}", u.sysname().to_string_lossy(), u.release().to_string_lossy(), u.machine().to_string_lossy())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Sends `data` in 1 MiB writes.
fn push(s: &mut TcpStream, data: &[u8]) {
    for chunk in data.chunks(1 << 20) {
        s.write_all(chunk).unwrap();
    }
}

fn upload() {
    // A valid static ELF padded to 256 MiB (bytes past the segments are allowed).
    let mut img = c_program("bench_true", programs::TRUE, true);
    img.resize(UPLOAD_MIB << 20, 0);
    let mib = img.len() as f64 / (1 << 20) as f64;

    // Peer: raw loopback TCP into a sink that discards (like `> /dev/null`).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                let mut total = 0usize;
                while total < UPLOAD_MIB << 20 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
                let _ = s.write_all(b"done\n");
            });
        }
    });
    let d = Daemon::start(&["--max-upload", "300M", "--max-total-size", "1G"]);
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        push(&mut s, &img);
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        raw.push(mib / t.elapsed().as_secs_f64());

        let mut c = d.client();
        let t = Instant::now();
        c.send_raw(format!("UPLOAD {}\n", img.len()).as_bytes());
        push(&mut c.writer, &img);
        let r = c.read();
        ours.push(mib / t.elapsed().as_secs_f64());
        assert_eq!(r["ok"], true, "{r}");
        c.cmd(&format!("DELETE {}", r["id"].as_str().unwrap()));
    }
    let (raw, ours) = (median(&mut raw), median(&mut ours));
    println!("## Upload of a {UPLOAD_MIB} MiB binary (median of 3)");
    println!("| path | MiB/s | ratio |");
    println!("|---|---|---|");
    println!("| raw loopback TCP into a discarding reader | {raw:.0} | 1.00 |");
    println!(
        "| debuglantern UPLOAD (memfd + sha256 + seal + ELF check + broker handoff) | {ours:.0} | {:.2} |",
        ours / raw
    );
    println!();
}

/// START→exit as a client sees it: `START id` then `LOGS id --follow` until its end.
fn run_once(c: &mut Client, id: &str) -> f64 {
    run_with(c, id, "")
}

fn start_exit() {
    const N: usize = 200;
    let bin = c_program("bench_true", programs::TRUE, true);
    let dir = std::env::temp_dir().join(format!("debuglantern-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("true_static");
    std::fs::write(&path, &bin).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let mut bare: Vec<f64> = (0..N)
        .map(|_| {
            let t = Instant::now();
            assert!(Command::new(&path).status().unwrap().success());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let bwrap = which("bwrap").map(|bw| {
        (0..N)
            .map(|_| {
                let t = Instant::now();
                // The same filesystem our jail gives: read-only system dirs, a fresh /proc,
                // a minimal /dev, a private /tmp, the program.
                let mut cmd = Command::new(&bw);
                cmd.args(["--unshare-all", "--die-with-parent", "--new-session"]);
                for dir in ["/usr", "/bin", "/sbin", "/lib", "/lib64"] {
                    cmd.args(["--ro-bind-try", dir, dir]);
                }
                cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind"]);
                let st = cmd.arg(&path).args(["/prog", "/prog"]).status().unwrap();
                assert!(st.success(), "bwrap failed");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect::<Vec<f64>>()
    });
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&bin);
    // The build before (DEBUGLANTERN_BASELINE, see scripts/bench-ab), interleaved run for
    // run with this one so that both see the same machine.
    let mut base = baseline().map(|dir| {
        let bd = Daemon::start_binary(&dir.join("debuglantern"), &[], &[]);
        let mut bc = bd.client();
        let bid = bc.load(&bin);
        (bd, bc, bid)
    });
    for _ in 0..10 {
        run_once(&mut c, &id);
    }
    let mut ours = Vec::with_capacity(N);
    let mut theirs = Vec::with_capacity(N);
    for _ in 0..N {
        ours.push(run_once(&mut c, &id));
        if let Some((_, bc, bid)) = base.as_mut() {
            theirs.push(run_once(bc, bid));
        }
    }
    let b = median(&mut bare);
    println!("## START→exit of a trivial static binary ({N} runs each; ms)");
    println!("| path | median | p99 | ratio (median) |");
    println!("|---|---|---|---|");
    println!("| bare fork+exec+wait (std::process::Command) | {b:.3} | {:.3} | 1.00 |", pct(&mut bare, 0.99));
    if let Some(mut bw) = bwrap {
        let m = median(&mut bw);
        println!(
            "| bwrap --unshare-all --die-with-parent --new-session, ro system dirs, proc, dev, tmpfs /tmp | {m:.3} | {:.3} | {:.2} |",
            pct(&mut bw, 0.99),
            m / b
        );
    } else {
        println!("| bwrap | (not installed: apt-get install bubblewrap) | | |");
    }
    let o = median(&mut ours);
    println!(
        "| debuglantern START→exit over TCP (full jail: namespaces, jail root, proc/tmp/devpts mounts, own uid, cgroups, rlimits, seccomp, memfd exec) | {o:.3} | {:.3} | {:.2} |",
        pct(&mut ours, 0.99),
        o / b
    );
    if !theirs.is_empty() {
        let t = median(&mut theirs);
        println!(
            "| the build before (DEBUGLANTERN_BASELINE), same runs interleaved | {t:.3} | {:.3} | {:.2} |",
            pct(&mut theirs, 0.99),
            t / b
        );
        println!();
        println!("A/B: this build / the build before = {:.3} (median START→exit)", o / t);
    }
    println!();
    let _ = std::fs::remove_dir_all(dir);
}

/// The directory of an earlier build's binaries, for A/B rows (`DEBUGLANTERN_BASELINE`).
fn baseline() -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(std::env::var_os("DEBUGLANTERN_BASELINE")?);
    assert!(dir.join("debuglantern").exists(), "DEBUGLANTERN_BASELINE={} has no debuglantern", dir.display());
    Some(dir)
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(name)).find(|p| p.exists())
}

fn rss_kib(pid: i32) -> u64 {
    tests::proc_status(pid, "VmRSS").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// One row of the control-plane load: `clients` connections sending `what` for 3 s.
/// The client reads each reply line and checks only its head (`{"ok":true`), so that its
/// own work stays small beside the daemon's on a 2-core machine.
fn control_row(addr: std::net::SocketAddr, ids: &[String], what: &'static str, clients: usize) -> (f64, f64, f64) {
    use std::io::BufRead;
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let ids = Arc::new(ids.to_vec());
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, lat, ids) = (stop.clone(), lat.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut mine = Vec::new();
                let mut k = i;
                let mut line = String::new();
                while !stop.load(Ordering::Relaxed) {
                    let cmd = match what {
                        "HELLO" => "HELLO\n".to_string(),
                        "LIST" => "LIST\n".to_string(),
                        _ => format!("STATUS {}\n", ids[k % ids.len()]),
                    };
                    k += 7;
                    let t = Instant::now();
                    c.send_raw(cmd.as_bytes());
                    line.clear();
                    c.reader.read_line(&mut line).unwrap();
                    mine.push(t.elapsed().as_secs_f64() * 1e3);
                    assert!(line.starts_with("{\"ok\":true"), "{}", &line[..line.len().min(200)]);
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let mut l = lat.lock().unwrap().clone();
    (l.len() as f64 / 3.0, pct(&mut l, 0.5), pct(&mut l, 0.99))
}

fn control_plane() {
    const SESSIONS: usize = 1000;
    let bin = c_program("hello", programs::HELLO, false);
    let args = ["--max-sessions", "1000", "--max-total-size", "1G"];
    let d = Daemon::start(&args);
    let before = rss_kib(d.pid()) + rss_kib(d.broker_pid);
    let load = |d: &Daemon| -> Vec<String> {
        let mut c = d.client();
        (0..SESSIONS).map(|_| c.load(&bin)).collect()
    };
    let ids = load(&d);
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(d.pid()) + rss_kib(d.broker_pid);
    // The build before, loaded the same way; its rows alternate with ours.
    let base = baseline().map(|dir| {
        let bd = Daemon::start_binary(&dir.join("debuglantern"), &[], &args);
        let bids = load(&bd);
        (bd, bids)
    });
    println!("## Control plane with {SESSIONS} sessions loaded (3 s per row, loopback)");
    println!("| request | clients | build | requests/s | p50 ms | p99 ms | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for (what, clients) in [("STATUS <id>", 100), ("LIST", 10), ("HELLO", 100)] {
        let (rps, p50, p99) = control_row(d.addr, &ids, what, clients);
        let shown = if what == "LIST" { "LIST (all 1000)" } else { what };
        let theirs = base.as_ref().map(|(bd, bids)| control_row(bd.addr, bids, what, clients));
        let ratio = theirs.map_or(String::new(), |(b, _, _)| format!("{:.2}", rps / b));
        println!("| {shown} | {clients} | this | {rps:.0} | {p50:.3} | {p99:.3} | {ratio} |");
        if let Some((b, b50, b99)) = theirs {
            println!("| {shown} | {clients} | before | {b:.0} | {b50:.3} | {b99:.3} | 1.00 |");
        }
    }
    println!();
    println!("## Daemon memory per loaded session (beyond the binary's own {} bytes)", bin.len());
    println!(
        "frontend+broker RSS: {before} KiB empty, {after} KiB with {SESSIONS} sessions → {:.1} KiB per session (the binary itself lives in its memfd, not in either RSS)",
        (after.saturating_sub(before)) as f64 / SESSIONS as f64
    );
    println!();
}

/// 100 MiB of 4 KiB files (half pseudo-random, half text, so gzip has real work), in
/// directories of 256, plus the program.
fn make_bundle(dir: &std::path::Path) -> (std::path::PathBuf, u64, usize) {
    let src = dir.join("src");
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let (mut total, mut files) = (0u64, 0usize);
    while total < 100 << 20 {
        let d = src.join(format!("d{}", files / 256));
        if files % 256 == 0 {
            std::fs::create_dir_all(&d).unwrap();
        }
        let mut data = Vec::with_capacity(4096);
        while data.len() < 2048 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            data.extend_from_slice(&seed.to_le_bytes());
        }
        while data.len() < 4096 {
            data.extend_from_slice(b"the quick brown fox jumps over the lazy dog ");
        }
        data.truncate(4096);
        std::fs::write(d.join(format!("f{files}")), &data).unwrap();
        total += data.len() as u64;
        files += 1;
    }
    std::fs::write(src.join("prog"), c_program("bench_true", programs::TRUE, true)).unwrap();
    std::fs::set_permissions(src.join("prog"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tgz = dir.join("bundle.tar.gz");
    let st = Command::new("tar").arg("czf").arg(&tgz).arg("-C").arg(&src).arg(".").status().unwrap();
    assert!(st.success());
    (tgz, total, files)
}

fn bundle_extraction() {
    let dir = std::env::temp_dir().join(format!("debuglantern-bench-bundle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (tgz, total, files) = make_bundle(&dir);
    let archive = std::fs::read(&tgz).unwrap();
    let mib = total as f64 / (1 << 20) as f64;
    // Peer: GNU tar into a tmpfs (/dev/shm).
    let mut peer = Vec::new();
    for i in 0..3 {
        let out = std::path::PathBuf::from(format!("/dev/shm/debuglantern-bench-{}-{i}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let t = Instant::now();
        assert!(Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(&out).status().unwrap().success());
        peer.push(mib / t.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&out);
    }
    let d = Daemon::start(&["--max-total-size", "1G", "--max-bundle-entries", "100000"]);
    let mut ours = Vec::new();
    for _ in 0..3 {
        let mut c = d.client();
        let t = Instant::now();
        c.send_raw(format!("UPLOAD {} prog\n", archive.len()).as_bytes());
        push(&mut c.writer, &archive);
        let r = c.read();
        ours.push(mib / t.elapsed().as_secs_f64());
        assert_eq!(r["ok"], true, "{r}");
        c.cmd(&format!("DELETE {}", r["id"].as_str().unwrap()));
    }
    let (p, o) = (median(&mut peer), median(&mut ours));
    println!(
        "## Bundle extraction: {mib:.0} MiB in {files} files, {:.1} MiB compressed (median of 3)",
        archive.len() as f64 / (1 << 20) as f64
    );
    println!("| path | MiB/s extracted | ratio |");
    println!("|---|---|---|");
    println!("| GNU tar xzf into a tmpfs | {p:.0} | 1.00 |");
    println!("| debuglantern UPLOAD of the bundle → LOADED (transfer, sha256, checked extraction with openat2, exec check) | {o:.0} | {:.2} |", o / p);
    println!();
    let _ = std::fs::remove_dir_all(dir);
}

/// One gdb remote-protocol exchange: sends `$data#cs`, returns the reply packet's data
/// (acks are skipped and given).
fn rsp<S: Read + Write>(io: &mut S, data: &str) -> String {
    let cs = data.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    io.write_all(format!("${data}#{cs:02x}").as_bytes()).unwrap();
    io.flush().unwrap();
    let mut byte = [0u8; 1];
    let mut packet = Vec::new();
    let mut inside = false;
    let mut tail = 0;
    loop {
        io.read_exact(&mut byte).expect("gdbserver closed the connection");
        match (inside, byte[0]) {
            (false, b'$') => inside = true,
            (false, _) => {}
            (true, b'#') if tail == 0 => tail = 1,
            (true, _) if tail > 0 => {
                tail += 1;
                if tail == 3 {
                    break;
                }
            }
            (true, b) => packet.push(b),
        }
    }
    io.write_all(b"+").unwrap();
    io.flush().unwrap();
    String::from_utf8_lossy(&packet).into_owned()
}

/// qSupported, the stop reason, then `g` (what gdb's `info registers` asks), then detach.
fn first_registers<S: Read + Write>(io: &mut S) {
    rsp(io, "qSupported:multiprocess+;swbreak+;hwbreak+");
    rsp(io, "?");
    let regs = rsp(io, "g");
    assert!(regs.len() > 100, "no registers: {regs}");
    rsp(io, "D");
}

/// `gdbserver --once ARGS` started by hand on the host, its stdio the protocol.
fn gdbserver_by_hand(args: &[&str]) -> (std::process::Child, Pipes) {
    let mut g = Command::new("/usr/bin/gdbserver")
        .arg("--once")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let io = Pipes(g.stdout.take().unwrap(), g.stdin.take().unwrap());
    (g, io)
}

struct Pipes(std::process::ChildStdout, std::process::ChildStdin);
impl Read for Pipes {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for Pipes {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.1.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.1.flush()
    }
}

fn debug_latency() {
    const N: usize = 20;
    if !std::path::Path::new("/usr/bin/gdbserver").exists() {
        println!("## DEBUG → first registers: gdbserver is not installed (apt-get install gdbserver)\n");
        return;
    }
    let looper = c_program("bench_looper", "#include <unistd.h>\nint main(void) { for (;;) usleep(10000); }", false);
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&looper);
    let pid = c.cmd(&format!("START {id}"))["pid"].as_i64().unwrap();
    let wait_running = |c: &mut Client| {
        let end = Instant::now() + Duration::from_secs(10);
        while c.cmd(&format!("STATUS {id}"))["state"] != "RUNNING" {
            assert!(Instant::now() < end, "never back to RUNNING");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut ours = Vec::new();
    let mut peer = Vec::new();
    for _ in 0..N {
        // debuglantern: DEBUG over the control connection, connect to the port, talk.
        let t = Instant::now();
        let r = c.cmd(&format!("DEBUG {id}"));
        let port = r["debug"]["port"].as_u64().expect("a debug port") as u16;
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        first_registers(&mut s);
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        drop(s);
        wait_running(&mut c);
        // Peer: gdbserver started by hand (as root, on the host) on the same process, over
        // its stdio (its TCP mode would listen on every interface).
        let t = Instant::now();
        let (mut g, mut io) = gdbserver_by_hand(&["--attach", "-", &pid.to_string()]);
        first_registers(&mut io);
        peer.push(t.elapsed().as_secs_f64() * 1e3);
        drop(io);
        let _ = g.wait();
    }
    ratio_table(
        &format!("DEBUG → debugger connected and first registers read ({N} runs each; ms)"),
        ("gdbserver --attach started by hand on the host, over its stdio", &mut peer),
        (
            "debuglantern DEBUG (gdbserver in the session's namespaces as its uid) + TCP connect to the debug port",
            &mut ours,
        ),
        2,
    );
}

/// A table of two latency series: the peer's median and p99, ours, and their ratio.
fn ratio_table(title: &str, peer: (&str, &mut [f64]), ours: (&str, &mut [f64]), decimals: usize) {
    let p = median(peer.1);
    println!("## {title}");
    println!("| path | median | p99 | ratio (median) |");
    println!("|---|---|---|---|");
    ratio_row(peer.0, peer.1, p, decimals);
    ratio_row(ours.0, ours.1, p, decimals);
    println!();
}

/// START --debug → the entry stop reported to a connected client, and `lantern run
/// --debug` → gdb at the breakpoint, each against gdbserver launching the program by hand.
fn debug_launch() {
    const N: usize = 20;
    if !std::path::Path::new("/usr/bin/gdbserver").exists() || Command::new("gdb").arg("--version").output().is_err() {
        println!("## START --debug: gdb or gdbserver is not installed\n");
        return;
    }
    let dir = std::env::temp_dir().join(format!("debuglantern-bench-debug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = "#include <stdio.h>\nint add(int a, int b) { return a + b; }\nint main(void) { printf(\"%d\\n\", add(2, 3)); return 0; }\n";
    std::fs::write(dir.join("add.c"), src).unwrap();
    let prog = dir.join("add");
    assert!(Command::new("cc").args(["-g", "-O0", "-o"]).arg(&prog).arg(dir.join("add.c")).status().unwrap().success());
    let bytes = std::fs::read(&prog).unwrap();
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let id = c.load(&bytes);
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for _ in 0..N {
        // debuglantern: START --debug, connect to the port, ask for the stop.
        let t = Instant::now();
        let r = c.cmd(&format!("START {id} --debug"));
        let port = r["debug"]["port"].as_u64().expect("a debug port") as u16;
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        let pid = entry_stop(&mut s);
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        // gdbserver in multiprocess mode detaches `D;pid` only.
        rsp(&mut s, &format!("D;{pid}"));
        drop(s);
        c.wait_state(&id, "STOPPED", Duration::from_secs(10));
        // Peer: gdbserver launching the program by hand, over its stdio.
        let t = Instant::now();
        let (mut g, mut io) = gdbserver_by_hand(&["-", prog.to_str().unwrap()]);
        let pid = entry_stop(&mut io);
        peer.push(t.elapsed().as_secs_f64() * 1e3);
        rsp(&mut io, &format!("D;{pid}"));
        drop(io);
        let _ = g.wait();
    }
    ratio_table(
        &format!("START --debug → entry stop reported to a connected client ({N} runs each; ms)"),
        ("`gdbserver --once - PROG` started by hand on the host, over its stdio", &mut peer),
        (
            "debuglantern START --debug (full jail; program copied to /bundle; gdbserver launches it) + TCP connect to the debug port",
            &mut ours,
        ),
        2,
    );
    // The whole command, from nothing to gdb at the breakpoint (then `kill`, `quit`).
    const M: usize = 10;
    let lantern = tests::bin_dir().join("lantern");
    let at_break = |cmd: &mut Command| -> f64 {
        let t = Instant::now();
        let out = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut ch| {
                ch.stdin.take().unwrap().write_all(b"kill\nquit\n")?;
                ch.wait_with_output()
            })
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Breakpoint 1, add"),
            "never at the breakpoint: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        secs * 1e3
    };
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for _ in 0..M {
        ours.push(at_break(
            Command::new(&lantern).args(["--rig", &d.addr.to_string(), "run", "--debug", "--break", "add"]).arg(&prog),
        ));
        peer.push(at_break(Command::new("gdb").args(["-q"]).arg(&prog).args([
            "-ex",
            &format!("target remote | /usr/bin/gdbserver --once - {}", prog.display()),
            "-ex",
            "break add",
            "-ex",
            "continue",
        ])));
    }
    ratio_table(
        &format!("`lantern run --debug --break add` → gdb at the breakpoint, then kill and quit ({M} runs each; ms)"),
        ("gdb with `target remote \\| gdbserver --once - PROG` on the host", &mut peer),
        ("`lantern run --debug` (upload, START --debug, gdb here over DEBUG --stdio, session deleted)", &mut ours),
        0,
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// qSupported and the stop reason: what a debugger asks first. Returns the stopped
/// process's pid (hex, as `D;pid` wants it).
fn entry_stop<S: Read + Write>(io: &mut S) -> String {
    rsp(io, "qSupported:multiprocess+;swbreak+;hwbreak+");
    let stop = rsp(io, "?");
    assert!(stop.starts_with('T') || stop.starts_with('S'), "not a stop: {stop}");
    let at = stop.find("thread:p").expect("a multiprocess stop reply") + "thread:p".len();
    stop[at..].chars().take_while(char::is_ascii_hexdigit).collect()
}
