//! The frontend's state machines without root: the real event loop and its owners, a
//! client on a socketpair (`--stdio` style), and this test playing the broker on the other
//! end of the broker socketpair — a scripted fake that answers each request as the broker
//! would (or refuses it), and produces runs out of real pipes and a real child's pidfd.

use clap::Parser;
use frontend::config::{Config, Flags};
use frontend::server::{Clients, Security, Server};
use proto::reply::*;
use serde::de::DeserializeOwned;
use shared::{ExitStatus, Refusal, Reply, Request, Tube, Usage, MAGIC, WIRE_VERSION};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A pidfd of `child`.
fn pidfd(child: &Child) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

struct Rig {
    client: BufReader<UnixStream>,
    writer: UnixStream,
    broker: Tube,
    /// Stands for the broker process (its pidfd) and for every run's program.
    children: Vec<Child>,
    _store: std::path::PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self._store);
    }
}

impl Rig {
    fn new() -> Rig {
        let (ours, theirs) = shared::tube::socketpair().unwrap();
        let mut broker = Tube::new(theirs).unwrap();
        let broker_proc = Command::new("sleep").arg("600").spawn().unwrap();
        let (pid, bpidfd) = (broker_proc.id() as i32, pidfd(&broker_proc));
        let store =
            std::env::temp_dir().join(format!("dl-owners-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&store);
        std::fs::create_dir_all(&store).unwrap();
        let store_fd = frontend::bundle::open_root(&store).unwrap();
        let (client, server_end) = UnixStream::pair().unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::thread::spawn(move || {
            let cfg = Config::load(Flags::parse_from(["debuglantern", "--stop-grace", "1s"])).unwrap();
            let launched = frontend::launcher::Broker { sock: ours, pidfd: bpidfd, pid };
            let security = Security {
                tokens: None,
                audit: frontend::audit::Audit::default(),
                cgroups: Vec::new(),
                landlock: String::new(),
            };
            let mut s = Server::new(cfg, Clients::Stdio(server_end), launched, store_fd, security, vec![]).unwrap();
            s.start_worker().unwrap();
            let _ = s.run();
        });
        // The hello comes first.
        let (tag, req) = recv(&mut broker);
        assert!(matches!(req, Request::Hello { magic, version } if magic == MAGIC && version == WIRE_VERSION));
        broker.send(tag, Reply::Hello { magic: MAGIC, version: WIRE_VERSION, warnings: vec![] }).unwrap();
        let writer = client.try_clone().unwrap();
        Rig { client: BufReader::new(client), writer, broker, children: vec![broker_proc], _store: store }
    }

    fn send(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        assert!(self.client.read_line(&mut l).unwrap() > 0, "the daemon closed the connection");
        l
    }

    fn read<T: DeserializeOwned>(&mut self) -> T {
        let l = self.line();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))
    }

    fn refused(&mut self) -> proto::Error {
        self.read()
    }

    /// Uploads `/bin/true` (a valid ELF for this machine); the fake broker
    /// checks the memfd is sealed and accepts it.
    fn load(&mut self) -> uuid::Uuid {
        let elf = std::fs::read("/bin/true").unwrap();
        self.writer.write_all(format!("UPLOAD {}\n", elf.len()).as_bytes()).unwrap();
        self.writer.write_all(&elf).unwrap();
        let (tag, req) = recv(&mut self.broker);
        let Request::Load { id, memfd } = req else { panic!("{req:?}") };
        let seals = nix::fcntl::fcntl(memfd.as_raw_fd(), nix::fcntl::FcntlArg::F_GET_SEALS).unwrap();
        assert_eq!(seals & 0xf, 0xf, "the memfd must be sealed against every change");
        self.broker.send(tag, Reply::Loaded { id }).unwrap();
        let l: Loaded = self.read();
        assert_eq!(l.size, elf.len() as u64);
        l.id
    }

    /// Answers the next START with a run whose output is two pipes we hold; returns the
    /// write ends.
    fn run_started(&mut self) -> (shared::SessionId, std::fs::File, std::fs::File) {
        let (id, out, err, _stdin) = self.run_started_with_stdin();
        (id, out, err)
    }

    /// As [`Rig::run_started`], also returning the read end of the run's stdin.
    fn run_started_with_stdin(&mut self) -> (shared::SessionId, std::fs::File, std::fs::File, std::fs::File) {
        let (tag, req) = recv(&mut self.broker);
        let Request::Start { id, spec } = req else { panic!("{req:?}") };
        assert_eq!(spec.argv[0], b"program");
        assert!(spec.env.iter().any(|e| e.starts_with(b"PATH=")));
        self.broker.send(0, Reply::Spawned { id }).unwrap();
        let program = Command::new("sleep").arg("600").spawn().unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let (in_r, in_w) = nix::unistd::pipe().unwrap();
        let started = Reply::Started {
            id,
            ns_pid: 2,
            pidfd: pidfd(&program),
            stdout: out_r,
            stderr: Some(err_r),
            stdin: in_w,
            debug: None,
        };
        self.children.push(program);
        self.broker.send(tag, started).unwrap();
        (id, std::fs::File::from(out_w), std::fs::File::from(err_w), std::fs::File::from(in_r))
    }

    fn exited(&mut self, id: shared::SessionId, code: i32) {
        let usage = Usage { user_us: 1500, ..Usage::default() };
        self.broker
            .send(
                0,
                Reply::Exited {
                    id,
                    status: ExitStatus::Code(code),
                    usage,
                    limit_hit: None,
                    observed: None,
                    core: None,
                },
            )
            .unwrap();
    }
}

/// The next message from the daemon to its broker.
fn recv(t: &mut Tube) -> (u64, Request) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = t.recv::<Request>().unwrap() {
            return m;
        }
        assert!(Instant::now() < end, "the daemon sent the broker nothing");
        let mut pfd = [nix::poll::PollFd::new(t.as_fd(), nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16));
    }
}

#[test]
fn a_run_goes_loaded_running_stopped_with_its_output_receipt_and_events() {
    let mut r = Rig::new();
    let h: Hello = {
        r.send("HELLO");
        r.read()
    };
    assert_eq!(h.server, "debuglantern");
    let id = r.load();
    r.send(&format!("START {id}"));
    let (sid, mut out, mut err) = r.run_started();
    let s: Started = r.read();
    assert_eq!((s.state, s.ns_pid), (State::Running, 2));
    assert!(s.pid.is_some_and(|p| p > 0), "the host pid comes from the pidfd");
    // A follower, then output on both pipes, then the end of the run.
    r.send(&format!("LOGS {id} --follow"));
    out.write_all(b"to stdout\n").unwrap();
    err.write_all(b"to stderr\n").unwrap();
    drop((out, err));
    r.exited(sid, 7);
    let mut text = String::new();
    let end = loop {
        match r.read::<FollowLine>() {
            FollowLine::Chunk(c) => text.push_str(&c.data),
            FollowLine::End(e) => break e,
        }
    };
    assert!(text.contains("to stdout\n") && text.contains("to stderr\n"), "{text:?}");
    assert!(matches!(end, LogEnd::Ended { state: State::Stopped, exit: Some(Exit::Code(7)), .. }), "{end:?}");
    // The receipt counts each stream.
    r.send(&format!("RECEIPT {id}"));
    let rc: ReceiptReply = r.read();
    assert_eq!((rc.receipt.stdout.bytes, rc.receipt.stderr.bytes), (10, 10));
    assert_eq!(rc.receipt.exit, Some(Exit::Code(7)));
    assert_eq!(rc.receipt.cpu_user_ms, 1);
    // STOP of a stopped session: refused here, the broker is not asked.
    r.send(&format!("STOP {id}"));
    assert_eq!(r.refused().error, proto::Code::InvalidState);
    // The events, in order.
    r.send("EVENTS --since 1");
    let sub: Subscribed = r.read();
    assert_eq!(sub.next_seq, 1);
    let names: Vec<&str> = (0..4)
        .map(|_| match r.read::<EventLine>() {
            EventLine::Event(e) => e.what.name(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["uploaded", "spawned", "setup_finished", "exited"]);
}

#[test]
fn refusals_of_the_broker_reach_the_client_and_leave_the_session_startable() {
    let mut r = Rig::new();
    let id = r.load();
    r.send(&format!("START {id}"));
    let (tag, req) = recv(&mut r.broker);
    assert!(matches!(req, Request::Start { .. }));
    r.broker
        .send(tag, Reply::Refused { refusal: Refusal::LimitReached, message: "every session uid is in use".into() })
        .unwrap();
    let e = r.refused();
    assert_eq!((e.error, e.message.as_str()), (proto::Code::LimitReached, "every session uid is in use"));
    r.send(&format!("STATUS {id}"));
    let s: Status = r.read();
    assert_eq!(s.summary.state, State::Loaded);
    // It starts the next time.
    r.send(&format!("START {id}"));
    let (sid, _out, _err) = r.run_started();
    let _: Started = r.read();
    // STOP: the broker accepts, the answer comes with the exit.
    r.send(&format!("STOP {id}"));
    let (tag, req) = recv(&mut r.broker);
    assert!(matches!(req, Request::Stop { grace_ms: 1000, .. }), "{req:?}");
    r.broker.send(tag, Reply::Accepted { id: sid }).unwrap();
    r.exited(sid, 143);
    let st: Stopped = r.read();
    assert_eq!(st.exit, Some(Exit::Code(143)));
}

#[test]
fn delete_of_a_running_session_ends_its_followers_and_it_is_gone() {
    let mut r = Rig::new();
    let id = r.load();
    r.send(&format!("START {id}"));
    let (sid, _out, _err) = r.run_started();
    let _: Started = r.read();
    // Commands pipelined behind one that waits for the broker are answered in order.
    r.send(&format!("DELETE {id}\nSTATUS {id}\nHELLO"));
    let (tag, req) = recv(&mut r.broker);
    assert!(matches!(req, Request::Delete { .. }));
    r.broker.send(tag, Reply::Deleted { id: sid }).unwrap();
    let d: Deleted = r.read();
    assert!(d.deleted);
    assert_eq!(r.refused().error, proto::Code::NotFound);
    let _: Hello = r.read();
    r.send("LIST");
    let l: List = r.read();
    assert!(l.sessions.is_empty());
}

#[test]
fn bad_lines_are_refused_and_an_over_long_line_closes() {
    let mut r = Rig::new();
    r.send("FROB");
    assert_eq!(r.refused().error, proto::Code::UnknownCommand);
    r.send("STATUS not-a-uuid");
    assert_eq!(r.refused().error, proto::Code::BadRequest);
    r.send(&"A".repeat(proto::MAX_LINE + 10));
    assert_eq!(r.refused().error, proto::Code::BadRequest);
    let mut rest = String::new();
    assert_eq!(r.client.read_line(&mut rest).unwrap(), 0, "the connection stays open: {rest}");
}

/// Reads one frame of an attached run.
fn frame(r: &mut impl std::io::Read) -> (u8, Vec<u8>) {
    let mut h = [0u8; proto::attach::HEADER];
    r.read_exact(&mut h).unwrap();
    assert_eq!(&h[1..4], &[0, 0, 0]);
    let mut p = vec![0u8; u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize];
    r.read_exact(&mut p).unwrap();
    (h[0], p)
}

#[test]
fn an_attached_slow_client_gets_every_byte_while_the_program_waits() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut r = Rig::new();
    let id = r.load();
    r.send(&format!("START {id} --attach {{\"stdin\":true,\"remove\":true}}"));
    let (sid, mut out, mut err, mut stdin) = r.run_started_with_stdin();
    let s: Started = r.read();
    assert_eq!(s.state, State::Running);
    // The program writes 8 MiB, far more than the daemon buffers; the client reads nothing
    // for a while: the program must wait in write, not lose bytes.
    const TOTAL: usize = 8 << 20;
    let written = std::sync::Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        for c in data.chunks(64 << 10) {
            out.write_all(c).unwrap();
            w.fetch_add(c.len(), Ordering::SeqCst);
        }
        err.write_all(b"the end\n").unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    let early = written.load(Ordering::SeqCst);
    assert!(early < TOTAL, "the program was never held back ({early} bytes written)");
    // stdin: frames in, bytes out of the pipe, then EOF.
    let mut f = Vec::new();
    proto::attach::push(&mut f, proto::attach::Kind::Stdin, b"typed input");
    proto::attach::push(&mut f, proto::attach::Kind::Stdin, b"");
    r.writer.write_all(&f).unwrap();
    let mut got_in = Vec::new();
    std::io::Read::read_to_end(&mut stdin, &mut got_in).unwrap();
    assert_eq!(got_in, b"typed input");
    // Now read it all: every byte in order, stderr apart.
    let (mut so, mut se) = (Vec::new(), Vec::new());
    while so.len() < TOTAL || se.is_empty() {
        match frame(&mut r.client) {
            (1, p) => so.extend(p),
            (2, p) => se.extend(p),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    writer.join().unwrap();
    assert!(so.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "stdout arrived damaged or out of order");
    assert_eq!(se, b"the end\n");
    r.exited(sid, 3);
    let (kind, end) = frame(&mut r.client);
    assert_eq!(kind, 3);
    let end: LogEnd = serde_json::from_slice(&end).unwrap();
    assert!(matches!(end, LogEnd::Ended { exit: Some(Exit::Code(3)), .. }), "{end:?}");
    // "remove": the session is deleted after its end; then the connection closes.
    let (tag, req) = recv(&mut r.broker);
    assert!(matches!(req, Request::Delete { .. }), "{req:?}");
    r.broker.send(tag, Reply::Deleted { id: sid }).unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut r.client, &mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn an_attached_run_is_killed_when_its_client_goes_or_breaks_the_framing() {
    let mut r = Rig::new();
    let id = r.load();
    r.send(&format!("START {id} --attach"));
    let (_sid, _out, _err) = r.run_started();
    let _: Started = r.read();
    // A frame type no client sends: the connection closes and the run is killed.
    r.writer.write_all(&[9, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let (_, req) = recv(&mut r.broker);
    assert!(matches!(req, Request::Kill { .. }), "{req:?}");
}
