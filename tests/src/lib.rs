//! Helpers for the integration tests: start the real `debuglantern` binary on a free
//! loopback port, talk to it over real TCP, build small C programs with the system
//! compiler.
//!
//! Tests that need root call [`require_root`]: without root they are skipped with a
//! message, except under `CI=true`, where they fail loudly.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Directory holding the workspace's binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary>, or target/<profile>/<bench binary>
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Whether we can run root-only tests. Panics under CI=true when not root.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root (namespaces, uid maps), and CI=true: run the suite as root");
    }
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its control address.
    pub addr: SocketAddr,
    /// The broker's pid (host).
    pub broker_pid: i32,
    /// Everything it printed on stderr.
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `debuglantern --listen 127.0.0.1:0 ARGS` and waits until it listens.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_as(&[], args)
    }

    /// Like [`Daemon::start`], with the daemon's command line prefixed by `wrapper`
    /// (e.g. `setpriv --reuid ...` to start it rootless).
    pub fn start_as(wrapper: &[&str], args: &[&str]) -> Daemon {
        Self::start_binary(&bin_dir().join("debuglantern"), wrapper, args)
    }

    /// Like [`Daemon::start_as`], with another build's `debuglantern` (its broker beside
    /// it): the benchmark's A/B against an earlier build.
    pub fn start_binary(daemon: &std::path::Path, wrapper: &[&str], args: &[&str]) -> Daemon {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(daemon);
                c
            }
            None => Command::new(daemon),
        };
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn debuglantern (did `cargo build --workspace` run?)");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.strip_prefix("debuglantern: listening on ") {
                    if let Some(t) = tx.take() {
                        let _ = t.send(rest.to_string());
                    }
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("daemon did not start; its log:\n{}", log.lock().unwrap());
            }
        };
        // "127.0.0.1:PORT (broker pid N, uid U)"
        let addr: SocketAddr = line.split(' ').next().unwrap().parse().unwrap();
        let broker_pid = line.split("broker pid ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        Daemon { child, addr, broker_pid, log }
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the daemon to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(15)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A control connection.
#[derive(Debug)]
pub struct Client {
    /// Reader side.
    pub reader: BufReader<TcpStream>,
    /// Writer side.
    pub writer: TcpStream,
}

impl Client {
    /// Connects.
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client { reader: BufReader::new(s.try_clone().unwrap()), writer: s }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, b: &[u8]) {
        self.writer.write_all(b).expect("send");
    }

    /// Reads one JSON reply line.
    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read reply");
        assert!(n > 0, "connection closed while a reply was expected");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
    }

    /// Whether the server closed the connection (EOF within a second).
    pub fn is_closed(&mut self) -> bool {
        self.writer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }

    /// Sends one command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Value {
        self.send_raw(format!("{line}\n").as_bytes());
        self.read()
    }

    /// Uploads bytes as a single binary.
    pub fn upload(&mut self, data: &[u8]) -> Value {
        self.send_raw(format!("UPLOAD {}\n", data.len()).as_bytes());
        self.send_raw(data);
        self.read()
    }

    /// Uploads and returns the new id, asserting success.
    pub fn load(&mut self, data: &[u8]) -> String {
        let r = self.upload(data);
        assert_eq!(r["ok"], true, "upload failed: {r}");
        r["id"].as_str().unwrap().to_string()
    }

    /// Sends one command line and reads its reply as `T` (a refusal fails the test, with
    /// the rig's error).
    pub fn call<T: serde::de::DeserializeOwned>(&mut self, line: &str) -> T {
        self.send_raw(format!("{line}\n").as_bytes());
        self.read_as(line)
    }

    /// Reads one reply line as `T`.
    pub fn read_as<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> T {
        let mut l = String::new();
        let n = self.reader.read_line(&mut l).expect("read reply");
        assert!(n > 0, "connection closed while the reply to {what:?} was expected");
        proto::parse_reply::<T>(&l).unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends one command line that must be refused; the refusal.
    pub fn refused(&mut self, line: &str) -> proto::Error {
        self.send_raw(format!("{line}\n").as_bytes());
        let mut l = String::new();
        assert!(self.reader.read_line(&mut l).expect("read reply") > 0, "connection closed");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{line}: not refused ({e}): {l}"))
    }

    /// `HELLO`.
    pub fn hello(&mut self) -> proto::reply::Hello {
        self.call("HELLO")
    }

    /// `LIST`.
    pub fn list(&mut self) -> proto::reply::List {
        self.call("LIST")
    }

    /// `STATUS <id>`.
    pub fn status(&mut self, id: &str) -> proto::reply::Status {
        self.call(&format!("STATUS {id}"))
    }

    /// The output of the last run (`LOGS`), as text.
    pub fn output(&mut self, id: &str) -> String {
        self.call::<proto::reply::Logs>(&format!("LOGS {id}")).data
    }

    /// `START <id> [json]`.
    pub fn start(&mut self, id: &str, json: &str) -> proto::reply::Started {
        self.call(format!("START {id} {json}").trim_end())
    }

    /// `LOGS <id> --follow` to its end: the output and the last line.
    pub fn follow(&mut self, id: &str) -> (String, proto::reply::LogEnd) {
        self.send_raw(format!("LOGS {id} --follow\n").as_bytes());
        let mut out = String::new();
        loop {
            match self.read_as::<proto::reply::FollowLine>("LOGS --follow") {
                proto::reply::FollowLine::Chunk(c) => out.push_str(&c.data),
                proto::reply::FollowLine::End(e) => return (out, e),
            }
        }
    }

    /// Polls STATUS until the session is in `state`.
    pub fn wait_for(&mut self, id: &str, state: proto::reply::State, limit: Duration) -> proto::reply::Status {
        let end = Instant::now() + limit;
        loop {
            let s = self.status(id);
            if s.summary.state == state || Instant::now() > end {
                assert_eq!(s.summary.state, state, "session never reached {state:?}: {s:?}");
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls STATUS until the session is in `state`.
    pub fn wait_state(&mut self, id: &str, state: &str, limit: Duration) -> Value {
        let end = Instant::now() + limit;
        loop {
            let s = self.cmd(&format!("STATUS {id}"));
            if s["state"] == state || Instant::now() > end {
                assert_eq!(s["state"], state, "session never reached {state}: {s}");
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Compiles a C program (cached by name in a per-process temp dir) and returns its bytes.
pub fn c_program(name: &str, source: &str, static_link: bool) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("debuglantern-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(name);
    // Tests run in parallel threads: one compiles, the others wait; the result appears
    // atomically (rename), never half-written.
    static COMPILING: Mutex<()> = Mutex::new(());
    let _guard = COMPILING.lock().unwrap_or_else(|p| p.into_inner());
    if !out.exists() {
        std::fs::write(&src, source).unwrap();
        let tmp = dir.join(format!("{name}.tmp"));
        let mut cmd = Command::new("cc");
        cmd.arg("-O1").arg("-o").arg(&tmp).arg(&src);
        if static_link {
            cmd.arg("-static");
        }
        let st = cmd.status().expect("run cc (install gcc and libc6-dev)");
        assert!(st.success(), "compiling {name} failed");
        std::fs::rename(&tmp, &out).unwrap();
    }
    std::fs::read(&out).unwrap()
}

/// Whether a host pid is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone, at most `limit`.
pub fn wait_gone(pid: i32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// A field of `/proc/<pid>/status`.
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
}

/// Hand-made `.tar.gz` archives, including the hostile entries `tar::Builder` refuses to
/// write (`..`, absolute paths, devices, bad names).
pub mod tarball {
    use std::io::Write;

    /// One raw ustar entry: `kind` is the typeflag (`b'0'` file, `b'5'` dir, `b'2'` symlink,
    /// `b'1'` hard link, `b'3'`/`b'4'` devices, `b'6'` fifo).
    pub fn entry(path: &[u8], kind: u8, mode: u32, data: &[u8], link: &[u8]) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path);
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(mode));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, data.len() as u64);
        octal(&mut h, 136, 12, 0);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut v = h.to_vec();
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    /// A gzip-compressed tar of `entries`.
    pub fn gz(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut tar: Vec<u8> = entries.concat();
        tar.extend_from_slice(&[0u8; 1024]);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    }
}

/// Programs used by several tests.
pub mod programs {
    /// Prints a line to stdout and one to stderr, exits 7.
    pub const HELLO: &str = r#"
#include <stdio.h>
int main(int argc, char **argv) {
    printf("hello from the rig, %d args\n", argc);
    for (int i = 1; i < argc; i++) printf("arg[%d]=%s\n", i, argv[i]);
    fprintf(stderr, "to stderr\n");
    return 7;
}"#;

    /// Prints its environment, exits 0.
    pub const ENV: &str = r#"
#include <stdio.h>
extern char **environ;
int main(void) { for (char **e = environ; *e; e++) printf("%s\n", *e); return 0; }"#;

    /// Sleeps forever; prints "ready" first. With argv[1] == "ignore" it ignores SIGTERM;
    /// with "term" it exits 3 on SIGTERM.
    pub const SLEEPER: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void on_term(int s) { (void)s; _exit(3); }
int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "ignore")) signal(SIGTERM, SIG_IGN);
    if (argc > 1 && !strcmp(argv[1], "term")) signal(SIGTERM, on_term);
    printf("ready pid=%d uid=%d\n", getpid(), getuid());
    fflush(stdout);
    for (;;) pause();
}"#;

    /// Prints a numbered line every 50 ms, `argv[1]` times, then exits 0.
    pub const TICKER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 5;
    for (int i = 0; i < n; i++) { printf("tick %d\n", i); fflush(stdout); usleep(50000); }
    return 0;
}"#;

    /// Forks a child that sleeps forever (to check the whole tree is killed), prints both
    /// pids, then sleeps.
    pub const FORKER: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    pid_t c = fork();
    if (c == 0) { for (;;) pause(); }
    printf("parent=%d child=%d\n", getpid(), c);
    fflush(stdout);
    for (;;) pause();
}"#;

    /// Trivial static program for benchmarks.
    pub const TRUE: &str = "int main(void) { return 0; }";

    /// `flood N [DELAY_MS]`: waits DELAY_MS, prints N numbered lines to stdout, then
    /// "flood done" to stderr, exits 3.
    pub const FLOOD: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10;
    if (argc > 2) usleep(atoi(argv[2]) * 1000);
    for (long i = 0; i < n; i++) printf("line %ld of the flood, padded to be a little longer\n", i);
    fflush(stdout);
    fprintf(stderr, "flood done\n");
    return 3;
}"#;
}
