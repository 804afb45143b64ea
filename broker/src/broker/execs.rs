//! EXEC in the broker: another process in a running session, through an exec helper the
//! spawner forks (`crate::exec`). The helper reports like an init — running (with the
//! process's pidfd and its terminal), or why it failed, then the exit status — on its
//! control socket; its pidfd says when it is gone. The broker answers the EXEC when the
//! process runs, reports `ExecExited` once, signals the process on request, and kills
//! helpers whose session is deleted (the process dies with its helper).

use super::*;
use shared::ExecSpec;

/// An EXEC with the spawner.
#[derive(Debug)]
pub(super) struct ExecCall {
    id: SessionId,
    exec: u32,
    tag: u64,
}

/// One exec'd process.
#[derive(Debug)]
struct ExecRun {
    /// The EXEC's tag while the process is not running yet.
    tag: Option<u64>,
    ctl: Tube,
    helper: OwnedFd,
    /// Pipes' far ends, handed to the frontend with `ExecStarted`.
    pipes: Option<(OwnedFd, OwnedFd, OwnedFd)>,
    /// The process's pidfd (for signals).
    program: Option<OwnedFd>,
    /// `ExecExited` was sent.
    reported: bool,
    tokens: [Token; 2],
}

/// The broker's exec'd processes.
#[derive(Debug, Default)]
pub(super) struct Execs {
    /// EXECs with the spawner, by spawner tag.
    pub(super) calls: HashMap<u64, ExecCall>,
    runs: HashMap<(SessionId, u32), ExecRun>,
    /// Control socket and helper pidfd tokens → the exec.
    pub(super) tokens: HashMap<Token, (SessionId, u32)>,
}

impl Broker {
    /// `EXEC`: the session must be running (not starting or stopping).
    pub(super) fn exec(&mut self, tag: u64, id: SessionId, spec: ExecSpec) -> Result<(), BrokerError> {
        if spec.argv.is_empty() || spec.argv.iter().chain(&spec.env).any(|a| a.contains(&0)) {
            return self.refuse(tag, Refusal::BadRequest, "argv must be non-empty; argv and env must not contain NUL");
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return self.refuse(tag, Refusal::NotFound, "no such session in the broker");
        };
        let bundle = matches!(s.image, Image::Bundle(_));
        let exec = s.next_exec;
        let Some(run) = s.run.as_ref() else {
            return self.refuse(tag, Refusal::InvalidState, "session is not running");
        };
        if run.start_tag.is_some()
            || run.term_deadline.is_some()
            || run.kill_deadline.is_some()
            || run.outcome.is_some()
        {
            return self.refuse(tag, Refusal::InvalidState, "session is starting or stopping");
        }
        let init_pidfd = match run.init_pidfd.try_clone() {
            Ok(fd) => fd,
            Err(e) => return self.refuse(tag, Refusal::Internal, format!("dup: {e}")),
        };
        let cgroup_procs = match &run.cgroup {
            Some(c) => match self.cgroups.procs(c) {
                Ok(p) => p,
                Err(e) => return self.refuse(tag, Refusal::Internal, shared::chain(&e)),
            },
            None => Vec::new(),
        };
        let call = SpawnerCall::Exec {
            init_pidfd,
            ns_uid: run.slot.map(policy::identity::IdPlan::session_ns_uid),
            pids_cgroup: run.cgroup.is_some() && self.cgroups.has_pids(),
            cgroup_procs,
            limits: run.limits,
            bundle,
            spec,
        };
        s.next_exec += 1;
        let stag = self.next_spawn;
        self.next_spawn += 1;
        self.spawner.send(stag, call).map_err(BrokerError::Spawner)?;
        self.execs.calls.insert(stag, ExecCall { id, exec, tag });
        Ok(())
    }

    /// The spawner forked the helper (or could not).
    pub(super) fn on_exec_spawned(&mut self, call: ExecCall, reply: SpawnReply) -> Result<(), BrokerError> {
        let (helper, ctl, pipes) = match reply {
            SpawnReply::Exec { helper_pidfd, ctl, stdout, stderr, stdin } => {
                (helper_pidfd, ctl, (stdout, stderr, stdin))
            }
            SpawnReply::Failed { message } => return self.refuse(call.tag, Refusal::Internal, message),
            _ => return Err(BrokerError::Spawner(TubeError::Decode("not an exec helper where one was asked".into()))),
        };
        let base = self.next_token;
        self.next_token += 2;
        let tokens = [Token(base), Token(base + 1)];
        let run = ExecRun {
            tag: Some(call.tag),
            ctl: Tube::new(ctl)?,
            helper,
            pipes: Some(pipes),
            program: None,
            reported: false,
            tokens,
        };
        self.poll.registry().register(&mut SourceFd(&run.helper.as_raw_fd()), tokens[0], Interest::READABLE)?;
        self.poll.registry().register(&mut SourceFd(&run.ctl.as_raw_fd()), tokens[1], Interest::READABLE)?;
        for t in tokens {
            self.execs.tokens.insert(t, (call.id, call.exec));
        }
        self.execs.runs.insert((call.id, call.exec), run);
        Ok(())
    }

    /// The helper said something, or is gone.
    pub(super) fn on_exec_event(&mut self, t: Token) -> Result<(), BrokerError> {
        let Some(&(id, exec)) = self.execs.tokens.get(&t) else { return Ok(()) };
        let Some(run) = self.execs.runs.get_mut(&(id, exec)) else { return Ok(()) };
        let mut out = Vec::new();
        while let Ok(Some((_, msg))) = run.ctl.recv::<InitMsg>() {
            match msg {
                InitMsg::Running { ns_pid, pidfd, tty, .. } => {
                    run.program = Some(pidfd);
                    let (Some(tag), Some((stdout, stderr, stdin))) = (run.tag.take(), run.pipes.take()) else {
                        continue;
                    };
                    let reply = match tty {
                        Some(master) => match master.try_clone() {
                            Ok(input) => {
                                Reply::ExecStarted { id, exec, ns_pid, stdout: master, stderr: None, stdin: input }
                            }
                            Err(e) => Reply::Refused { refusal: Refusal::Internal, message: format!("dup: {e}") },
                        },
                        None => Reply::ExecStarted { id, exec, ns_pid, stdout, stderr: Some(stderr), stdin },
                    };
                    out.push((tag, reply));
                }
                m @ (InitMsg::Failed { .. } | InitMsg::NotExecuted { .. }) => {
                    if let (Some(tag), Some(refused)) = (run.tag.take(), m.refusal()) {
                        out.push((tag, refused));
                    }
                    run.reported = true;
                }
                // An exec helper traces nothing.
                InitMsg::Released => {}
                InitMsg::Exited { status, .. } => {
                    if !run.reported {
                        run.reported = true;
                        out.push((0, Reply::ExecExited { id, exec, status }));
                    }
                }
            }
        }
        if run::exited(&run.helper) {
            if let Some(tag) = run.tag.take() {
                out.push((tag, Reply::Refused { refusal: Refusal::Internal, message: "the exec helper died".into() }));
            } else if !run.reported {
                run.reported = true;
                out.push((0, Reply::ExecExited { id, exec, status: ExitStatus::Signal(libc::SIGKILL) }));
            }
            self.forget_exec(id, exec);
        }
        for (tag, r) in out {
            self.tube.send(tag, r)?;
        }
        Ok(())
    }

    fn forget_exec(&mut self, id: SessionId, exec: u32) {
        if let Some(run) = self.execs.runs.remove(&(id, exec)) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&run.helper.as_raw_fd()));
            let _ = self.poll.registry().deregister(&mut SourceFd(&run.ctl.as_raw_fd()));
            for t in run.tokens {
                self.execs.tokens.remove(&t);
            }
        }
    }

    /// A signal for an exec'd process.
    pub(super) fn exec_signal(&mut self, tag: u64, id: SessionId, exec: u32, sig: i32) -> Result<(), BrokerError> {
        if !(1..=64).contains(&sig) {
            return self.refuse(tag, Refusal::BadRequest, format!("{sig} is not a signal number"));
        }
        match self.execs.runs.get(&(id, exec)).and_then(|r| r.program.as_ref()) {
            Some(p) => {
                let _ = sys::pidfd_signal(p.as_fd(), sig);
                self.tube.send(tag, Reply::Accepted { id })?;
                Ok(())
            }
            None => self.refuse(tag, Refusal::InvalidState, "no such exec'd process running"),
        }
    }

    /// Kills the helpers (and so the processes) of session `id`'s execs.
    pub(super) fn kill_execs(&mut self, id: SessionId) {
        for ((sid, _), run) in &self.execs.runs {
            if *sid == id {
                let _ = sys::pidfd_signal(run.helper.as_fd(), libc::SIGKILL);
            }
        }
    }
}

use super::runs as run;
