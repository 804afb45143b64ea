//! A hostile peer on the broker's socketpair. The broker is started directly, the test
//! plays the frontend. Decided policy (see broker/src/broker.rs): semantically wrong
//! requests (unknown id, wrong state, wrong descriptor *type*, an unsealed memfd) are
//! refused and the broker goes on; structurally wrong packets (undecodable bincode,
//! oversized, wrong descriptor *count*, a bad hello) make it fail closed: it kills every
//! session and exits non-zero. Needs root (sessions use namespaces).

use shared::{Message, Reply, Request, SessionId, StartSpec, Tube, MAGIC, WIRE_VERSION};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tests::{c_program, programs, require_root, wait_gone};

struct Peer {
    child: Child,
    tube: Tube,
}

fn start_broker(hello: bool) -> Peer {
    let (ours, theirs) = shared::tube::socketpair().unwrap();
    let fd = theirs.as_raw_fd();
    // The broker refuses to run outside a user namespace of its own: give it one, as the
    // launcher would (root of a fresh user, mount and PID namespace).
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child", "--"]);
    cmd.arg(tests::bin_dir().join("debuglantern-broker"));
    cmd.args(["--session-uids", "0"]);
    // SAFETY: dup2 is async-signal-safe; we only place the socket on fd 3.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(theirs);
    let mut tube = Tube::new(ours).unwrap();
    if hello {
        tube.send(1, Request::Hello { magic: MAGIC, version: WIRE_VERSION }).unwrap();
        let (tag, r) = recv(&mut tube);
        assert_eq!(tag, 1);
        assert!(matches!(r, Reply::Hello { .. }), "{r:?}");
    }
    Peer { child, tube }
}

/// The next reply, skipping `Spawned` events (they precede every `Started`).
fn recv(t: &mut Tube) -> (u64, Reply) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match t.recv::<Reply>().expect("broker link") {
            Some((0, Reply::Spawned { .. })) => continue,
            Some(m) => return m,
            None => {}
        }
        assert!(Instant::now() < end, "broker did not answer");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn exits_non_zero(p: &mut Peer) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            assert!(!st.success(), "broker exited 0 after hostile input");
            return;
        }
        assert!(Instant::now() < end, "broker survived structurally bad input");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes the bytes and descriptors of one raw packet.
type RawPacket = dyn Fn() -> (Vec<u8>, Vec<OwnedFd>);

fn sealed_memfd(data: &[u8]) -> OwnedFd {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use std::io::Write;
    let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
    let mut f = std::fs::File::from(fd);
    f.write_all(data).unwrap();
    let all = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(f.as_raw_fd(), FcntlArg::F_ADD_SEALS(all)).unwrap();
    f.into()
}

#[test]
fn root_semantic_garbage_is_refused_and_the_broker_survives() {
    if !require_root("root_semantic_garbage_is_refused_and_the_broker_survives") {
        return;
    }
    let mut p = start_broker(true);
    // A pipe instead of a memfd.
    let (r, _w) = nix::unistd::pipe().unwrap();
    p.tube.send(2, Request::Load { id: SessionId([1; 16]), memfd: r }).unwrap();
    assert!(matches!(recv(&mut p.tube), (2, Reply::Refused { .. })));
    // A memfd without seals.
    let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
    p.tube.send(3, Request::Load { id: SessionId([1; 16]), memfd: fd }).unwrap();
    match recv(&mut p.tube) {
        (3, Reply::Refused { message, .. }) => assert!(message.contains("seal"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Unknown ids, wrong states, NUL in argv.
    p.tube.send(4, Request::Kill { id: SessionId([9; 16]) }).unwrap();
    assert!(matches!(recv(&mut p.tube), (4, Reply::Refused { .. })));
    let bin = c_program("hello", programs::HELLO, false);
    p.tube.send(5, Request::Load { id: SessionId([2; 16]), memfd: sealed_memfd(&bin) }).unwrap();
    assert!(matches!(recv(&mut p.tube), (5, Reply::Loaded { .. })));
    p.tube.send(6, Request::Stop { id: SessionId([2; 16]), grace_ms: 1 }).unwrap();
    assert!(matches!(recv(&mut p.tube), (6, Reply::Refused { .. })));
    let spec = StartSpec {
        argv: vec![b"a\0b".to_vec()],
        env: vec![],
        limits: Default::default(),
        debug: false,
        list_processes: true,
        tty: None,
        keep_tmp: false,
        observe: Default::default(),
    };
    p.tube.send(7, Request::Start { id: SessionId([2; 16]), spec }).unwrap();
    assert!(matches!(recv(&mut p.tube), (7, Reply::Refused { .. })));
    // Still alive and working: a real run.
    let spec = StartSpec {
        argv: vec![b"hello".to_vec()],
        env: vec![],
        limits: Default::default(),
        debug: false,
        list_processes: true,
        tty: None,
        keep_tmp: false,
        observe: Default::default(),
    };
    p.tube.send(8, Request::Start { id: SessionId([2; 16]), spec }).unwrap();
    // Hold the run's output pipes until it ends: closing them early would kill the
    // program with SIGPIPE when it writes (a race this test once lost under load).
    let started = recv(&mut p.tube);
    assert!(matches!(started, (8, Reply::Started { .. })));
    match recv(&mut p.tube) {
        (0, Reply::Exited { status, .. }) => assert_eq!(status, shared::ExitStatus::Code(7)),
        other => panic!("{other:?}"),
    }
    drop(started);
    assert!(p.child.try_wait().unwrap().is_none());
    let Peer { child, tube } = p;
    drop(tube);
    let mut p = Peer { child, tube: Tube::new(shared::tube::socketpair().unwrap().0).unwrap() };
    exits_non_zero(&mut p); // peer gone: fail closed
}

#[test]
fn root_structural_garbage_fails_closed_and_kills_sessions() {
    if !require_root("root_structural_garbage_fails_closed_and_kills_sessions") {
        return;
    }
    let bin = c_program("sleeper", programs::SLEEPER, false);
    let bad: Vec<(&str, Box<RawPacket>)> = vec![
        ("undecodable bytes", Box::new(|| (vec![0xff; 37], vec![]))),
        ("oversized packet", Box::new(|| (vec![0; shared::MAX_MESSAGE + 100], vec![]))),
        (
            "wrong descriptor count",
            Box::new(|| {
                let (body, _) = Request::Kill { id: SessionId([3; 16]) }.into_wire();
                let bytes =
                    bincode::encode_to_vec(shared::Envelope { tag: 9, body }, shared::bincode_config()).unwrap();
                (bytes, vec![std::fs::File::open("/dev/null").unwrap().into()])
            }),
        ),
        (
            "huge length prefix",
            Box::new(|| {
                (
                    vec![
                        9, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                        0x0f,
                    ],
                    vec![],
                )
            }),
        ),
        (
            "second hello",
            Box::new(|| {
                let (body, _) = Request::Hello { magic: MAGIC, version: WIRE_VERSION }.into_wire();
                (bincode::encode_to_vec(shared::Envelope { tag: 9, body }, shared::bincode_config()).unwrap(), vec![])
            }),
        ),
    ];
    for (what, make) in bad {
        let mut p = start_broker(true);
        p.tube.send(2, Request::Load { id: SessionId([1; 16]), memfd: sealed_memfd(&bin) }).unwrap();
        recv(&mut p.tube);
        let spec = StartSpec {
            argv: vec![b"s".to_vec(), b"ignore".to_vec()],
            env: vec![],
            limits: Default::default(),
            debug: false,
            list_processes: true,
            tty: None,
            keep_tmp: false,
            observe: Default::default(),
        };
        p.tube.send(3, Request::Start { id: SessionId([1; 16]), spec }).unwrap();
        let (_, started) = recv(&mut p.tube);
        let Reply::Started { pidfd, .. } = started else { panic!("{what}: {started:?}") };
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).unwrap();
        let pid: i32 = info.lines().find_map(|l| l.strip_prefix("Pid:")).unwrap().trim().parse().unwrap();
        assert!(tests::alive(pid));
        let (bytes, fds) = make();
        p.tube.send_raw(bytes, fds).unwrap();
        exits_non_zero(&mut p);
        assert!(wait_gone(pid, Duration::from_secs(5)), "{what}: session survived the broker failing closed");
    }
    // A bad first message instead of a hello.
    let mut p = start_broker(false);
    p.tube.send(1, Request::Kill { id: SessionId([0; 16]) }).unwrap();
    exits_non_zero(&mut p);
    let mut p = start_broker(false);
    p.tube.send(1, Request::Hello { magic: *b"NOTMAGIC", version: WIRE_VERSION }).unwrap();
    exits_non_zero(&mut p);
}
