//! The broker's loop without root: this test plays the frontend on one socketpair and the
//! spawner (and each run's init) on the other; a run's "init" is a real child process
//! (`sleep`), so that the broker's pidfds, signals and exits are real.

use super::*;
use crate::messages::SpawnReply;
use shared::{ExitStatus, LimitHit, Message, RunLimits, StartSpec, Usage};
use std::os::fd::FromRawFd;
use std::process::{Child, Command};

fn pidfd(child: &Child) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn memfd(sealed: bool) -> OwnedFd {
    // SAFETY: a NUL-terminated name and flags; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"image".as_ptr(), libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::unistd::write(&fd, b"\x7fELF").unwrap();
    if sealed {
        let all = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(all)).unwrap();
    }
    fd
}

fn recv<M: Message + std::fmt::Debug>(t: &mut Tube) -> (u64, M) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = t.recv::<M>().unwrap() {
            return m;
        }
        assert!(Instant::now() < end, "nothing came");
        let mut pfd = [nix::poll::PollFd::new(t.as_fd(), nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16));
    }
}

struct Harness {
    frontend: Tube,
    spawner: Tube,
    broker: Option<std::thread::JoinHandle<Result<(), BrokerError>>>,
    children: Vec<Child>,
    /// Each run's init end of its control socket.
    inits: Vec<Tube>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const ID: SessionId = SessionId([7; 16]);

fn spec() -> StartSpec {
    StartSpec {
        argv: vec![b"program".to_vec()],
        env: vec![b"PATH=/bin".to_vec()],
        limits: RunLimits::default(),
        debug: false,
        list_processes: true,
        tty: None,
        keep_tmp: false,
        observe: Default::default(),
    }
}

impl Harness {
    /// The spawner's next call; a deleted session's DropTmp is answered on the way.
    fn spawner_call(&mut self) -> (u64, SpawnerCall) {
        loop {
            match recv::<SpawnerCall>(&mut self.spawner) {
                (t, SpawnerCall::DropTmp { .. }) => self.spawner.send(t, SpawnReply::Done).unwrap(),
                other => return other,
            }
        }
    }

    fn new() -> Harness {
        let (f_ours, f_theirs) = shared::tube::socketpair().unwrap();
        let (s_ours, s_theirs) = shared::tube::socketpair().unwrap();
        let broker = std::thread::spawn(move || {
            Broker::new(f_theirs, s_ours, 0, vec!["a host warning".into()], crate::cgroup::Cgroups::default())?.run()
        });
        let mut frontend = Tube::new(f_ours).unwrap();
        frontend.send(1, Request::Hello { magic: MAGIC, version: WIRE_VERSION }).unwrap();
        let (tag, reply) = recv::<Reply>(&mut frontend);
        let Reply::Hello { warnings, .. } = reply else { panic!("{reply:?}") };
        assert_eq!(tag, 1);
        assert!(warnings.iter().any(|w| w == "a host warning") && warnings.iter().any(|w| w.contains("one uid")));
        Harness {
            frontend,
            spawner: Tube::new(s_theirs).unwrap(),
            broker: Some(broker),
            children: vec![],
            inits: vec![],
        }
    }

    fn ask(&mut self, tag: u64, req: Request) -> Reply {
        self.frontend.send(tag, req).unwrap();
        let (t, reply) = recv::<Reply>(&mut self.frontend);
        assert_eq!(t, tag, "{reply:?}");
        reply
    }

    fn load(&mut self) {
        assert!(matches!(self.ask(2, Request::Load { id: ID, memfd: memfd(true) }), Reply::Loaded { id: ID }));
    }

    /// START: the fake spawner builds the run (a `sleep` as its init), the fake init says
    /// "running"; returns the index of the run's init tube.
    fn start(&mut self, tag: u64) -> usize {
        self.start_with(tag, spec(), None).0
    }

    /// Starts a run of `spec`; `tty`: the init reports this terminal master. Returns the
    /// run's index and the broker's Started.
    fn start_with(&mut self, tag: u64, spec: StartSpec, tty: Option<OwnedFd>) -> (usize, Reply) {
        self.frontend.send(tag, Request::Start { id: ID, spec }).unwrap();
        let (stag, call) = self.spawner_call();
        let SpawnerCall::Session(req) = call else { panic!("{call:?}") };
        assert!(matches!(req.image, SpawnImage::Memfd(_)));
        assert_eq!((req.ns_uid, req.cgroup_procs.len()), (None, 0), "single-uid mode, no cgroups");
        let init = Command::new("sleep").arg("600").spawn().unwrap();
        let (ctl_broker, ctl_init) = shared::tube::socketpair().unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let (_in_r, in_w) = nix::unistd::pipe().unwrap();
        drop((out_w, err_w));
        let reply = SpawnReply::Spawned {
            init_pidfd: pidfd(&init),
            ctl: ctl_broker,
            stdout: out_r,
            stderr: err_r,
            stdin: in_w,
        };
        self.spawner.send(stag, reply).unwrap();
        assert!(matches!(recv::<Reply>(&mut self.frontend), (0, Reply::Spawned { id: ID })));
        let mut ctl = Tube::new(ctl_init).unwrap();
        ctl.send(0, InitMsg::Running { ns_pid: 2, pidfd: pidfd(&init), tty, debugger: None }).unwrap();
        self.children.push(init);
        let (t, reply) = recv::<Reply>(&mut self.frontend);
        assert_eq!(t, tag);
        assert!(matches!(reply, Reply::Started { id: ID, ns_pid: 2, .. }), "{reply:?}");
        self.inits.push(ctl);
        (self.inits.len() - 1, reply)
    }
}

#[test]
fn a_run_starts_reports_and_ends_with_the_inits_status() {
    let mut h = Harness::new();
    h.load();
    let run = h.start(3);
    // The init reports the tree's end; the kill makes it (the sleep) exit.
    let usage = Usage { user_us: 5, sys_us: 6, max_rss_kib: 7, processes: 3, ..Usage::default() };
    h.inits[run]
        .send(0, InitMsg::Exited { status: ExitStatus::Signal(9), usage: usage.clone(), observed: None, core: None })
        .unwrap();
    assert!(matches!(h.ask(4, Request::Kill { id: ID }), Reply::Accepted { id: ID }));
    let (t, reply) = recv::<Reply>(&mut h.frontend);
    assert_eq!(t, 0);
    let Reply::Exited { id, status, usage: got, limit_hit, .. } = reply else { panic!("{reply:?}") };
    assert_eq!((id, status, got, limit_hit), (ID, ExitStatus::Signal(9), usage, None::<LimitHit>));
    // It can run again, and DELETE of a running session kills it first.
    h.start(5);
    h.frontend.send(6, Request::Delete { id: ID }).unwrap();
    let (t, reply) = recv::<Reply>(&mut h.frontend);
    // The init vanished without a report: the run counts as killed.
    assert_eq!(t, 0, "the run's end comes before the deletion: {reply:?}");
    assert!(matches!(reply, Reply::Exited { status: ExitStatus::Signal(9), .. }), "{reply:?}");
    assert!(matches!(recv::<Reply>(&mut h.frontend), (6, Reply::Deleted { id: ID })));
    assert!(matches!(h.ask(7, Request::Kill { id: ID }), Reply::Refused { refusal: Refusal::NotFound, .. }));
}

#[test]
fn semantic_garbage_is_refused_and_the_broker_goes_on() {
    let mut h = Harness::new();
    let refusal = |r: Reply| match r {
        Reply::Refused { refusal, .. } => refusal,
        other => panic!("{other:?}"),
    };
    assert_eq!(refusal(h.ask(2, Request::Start { id: ID, spec: spec() })), Refusal::NotFound);
    assert_eq!(refusal(h.ask(3, Request::Load { id: ID, memfd: memfd(false) })), Refusal::BadRequest);
    let exec = b"../escape".to_vec();
    assert_eq!(refusal(h.ask(4, Request::LoadBundle { id: ID, exec_path: exec })), Refusal::BadRequest);
    h.load();
    assert_eq!(refusal(h.ask(5, Request::Load { id: ID, memfd: memfd(true) })), Refusal::InvalidState);
    assert_eq!(refusal(h.ask(6, Request::Stop { id: ID, grace_ms: 10 })), Refusal::InvalidState);
    let mut bad = spec();
    bad.argv[0] = b"pro\0gram".to_vec();
    assert_eq!(refusal(h.ask(7, Request::Start { id: ID, spec: bad })), Refusal::BadRequest);
    // The spawner fails: the START is refused with its reason, nothing stays.
    h.frontend.send(8, Request::Start { id: ID, spec: spec() }).unwrap();
    let (stag, _) = recv::<SpawnerCall>(&mut h.spawner);
    h.spawner.send(stag, SpawnReply::Failed { message: "cannot create the session's namespaces".into() }).unwrap();
    let (t, reply) = recv::<Reply>(&mut h.frontend);
    assert_eq!(t, 8);
    assert!(
        matches!(reply, Reply::Refused { refusal: Refusal::Internal, ref message } if message.contains("namespaces"))
    );
    // And then a run works.
    h.start(9);
}

#[test]
fn structural_garbage_from_the_frontend_fails_closed() {
    let mut h = Harness::new();
    h.load();
    h.start(3);
    h.frontend.send_raw(vec![0xff; 40], vec![]).unwrap();
    let result = h.broker.take().unwrap().join().unwrap();
    assert!(matches!(result, Err(BrokerError::Link(_))), "{result:?}");
    // Every run was killed on the way out.
    let init = &mut h.children[0];
    let end = Instant::now() + Duration::from_secs(5);
    while init.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "a run's init outlived the broker");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_wall_clock_limit_kills_the_run_and_says_so() {
    let mut h = Harness::new();
    h.load();
    let mut s = spec();
    s.limits.wall_seconds = 1;
    let t0 = Instant::now();
    h.start_with(3, s, None);
    // The broker asks the init to kill everything (SIGUSR1: our stand-in init dies of it).
    let (t, reply) = recv::<Reply>(&mut h.frontend);
    assert_eq!(t, 0);
    let Reply::Exited { limit_hit, .. } = reply else { panic!("{reply:?}") };
    assert_eq!(limit_hit, Some(LimitHit::Wall));
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn signals_go_to_the_init_and_a_terminal_carries_both_directions() {
    let mut h = Harness::new();
    h.load();
    let master = crate::sys::open_terminal(24, 80).unwrap();
    let (run, started) = h.start_with(3, spec(), Some(master));
    let Reply::Started { stderr, .. } = started else { panic!() };
    assert!(stderr.is_none(), "on a terminal, stderr is the terminal");
    assert!(matches!(h.ask(4, Request::Signal { id: ID, exec: None, sig: 2 }), Reply::Accepted { id: ID }));
    let (_, call) = recv::<InitCall>(&mut h.inits[run]);
    assert_eq!(call, InitCall::Signal(2));
    assert!(matches!(
        h.ask(5, Request::Signal { id: ID, exec: None, sig: 0 }),
        Reply::Refused { refusal: Refusal::BadRequest, .. }
    ));
    assert!(matches!(
        h.ask(6, Request::Signal { id: ID, exec: None, sig: 65 }),
        Reply::Refused { refusal: Refusal::BadRequest, .. }
    ));
}
