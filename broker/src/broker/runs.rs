//! What the broker hears of runs: the init's messages, the program's and gdbserver's
//! exits, the end of a run (reaped, reported, its cgroup read and removed), and the
//! deadlines of STOP's grace, the kill safety, an attached debugger and the wall clock.

use super::*;

impl Broker {
    /// The program exited (it may still be a zombie its debugger holds).
    pub(super) fn on_program_exit(&mut self, t: Token) {
        let Some(id) = self.program_tokens.remove(&t) else { return };
        let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) else { return };
        if let Some((_, fd)) = run.program.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        // A connected gdb learns the exit from gdbserver, then lets it go; a gdbserver still
        // waiting for gdb would hold the dead program (a traced zombie) until the debug
        // port's deadline. Give the first kind a moment, then end it either way.
        if run.debugger.is_some() {
            run.debugger_deadline = Some(Instant::now() + DEBUGGER_GRACE);
        }
    }

    /// gdbserver exited: gdb detached or went away.
    pub(super) fn on_debugger_exit(&mut self, t: Token) -> Result<(), BrokerError> {
        let Some(id) = self.debug_tokens.remove(&t) else { return Ok(()) };
        if let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) {
            if let Some((_, fd)) = run.debugger.take() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
            // A program held at its entry (START --debug) and never resumed runs on.
            let _ = sys::pidfd_signal(run.init_pidfd.as_fd(), libc::SIGUSR2);
        }
        self.tube.send(0, Reply::DebugEnded { id })?;
        Ok(())
    }

    pub(super) fn on_run_event(&mut self, token: Token) -> Result<(), BrokerError> {
        let Some(&id) = self.tokens.get(&token) else { return Ok(()) };
        let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) else { return Ok(()) };
        // Read whatever the init said (a hostile or dead init only ends its own run).
        let mut replies = Vec::new();
        let mut program_watch = None;
        let mut launched = None;
        let mut released = None;
        loop {
            match run.ctl.recv::<InitMsg>() {
                Ok(Some((_, InitMsg::Running { ns_pid, pidfd, tty, debugger }))) => {
                    run.ns_pid = ns_pid;
                    let debug = match debugger {
                        // gdbserver launched the program: it is the program's parent and
                        // reports its exit to gdb; the session lasts while it does.
                        Some(d) => {
                            launched = Some(d.pidfd);
                            Some(d.sock)
                        }
                        None => {
                            if let Ok(watch) = pidfd.try_clone() {
                                program_watch = Some(watch);
                            }
                            None
                        }
                    };
                    let pipes = (run.stdout.take(), run.stderr.take(), run.stdin.take());
                    let Some(tag) = run.start_tag.take() else { continue };
                    let started = match (tty, pipes) {
                        // On a terminal, its master carries both directions; the pipes
                        // (unused by the program) close here.
                        (Some(master), _) => match master.try_clone() {
                            Ok(input) => {
                                Reply::Started { id, ns_pid, pidfd, stdout: master, stderr: None, stdin: input, debug }
                            }
                            Err(e) => Reply::Refused { refusal: Refusal::Internal, message: format!("dup: {e}") },
                        },
                        (None, (Some(stdout), Some(stderr), Some(stdin))) => {
                            Reply::Started { id, ns_pid, pidfd, stdout, stderr: Some(stderr), stdin, debug }
                        }
                        (None, _) => {
                            Reply::Refused { refusal: Refusal::Internal, message: "the run's pipes are gone".into() }
                        }
                    };
                    if matches!(started, Reply::Refused { .. }) {
                        request_kill(run);
                        run.failed = true;
                    }
                    replies.push((tag, started));
                }
                Ok(Some((_, m @ (InitMsg::Failed { .. } | InitMsg::NotExecuted { .. })))) => {
                    run.failed = true;
                    if let (Some(tag), Some(refused)) = (run.start_tag.take(), m.refusal()) {
                        replies.push((tag, refused));
                    }
                }
                Ok(Some((_, InitMsg::Exited { status, usage, observed, core }))) => {
                    run.outcome = Some((status, usage, observed, core))
                }
                Ok(Some((_, InitMsg::Released))) => {
                    run.traced = false;
                    released = run.release_tag.take();
                }
                Ok(None) => break,
                Err(_) => break,
            }
        }
        if let Some(gdb) = launched {
            self.adopt_debugger(id, gdb)?;
        }
        if let Some(watch) = program_watch {
            let t = Token(self.next_token);
            self.next_token += 1;
            self.poll.registry().register(&mut SourceFd(&watch.as_raw_fd()), t, Interest::READABLE)?;
            self.program_tokens.insert(t, id);
            if let Some(run) = self.sessions.get_mut(&id).and_then(|s| s.run.as_mut()) {
                run.program = Some((t, watch));
            }
        }
        for (tag, reply) in replies {
            self.tube.send(tag, reply)?;
        }
        if let Some(tag) = released {
            self.ask_debugger(tag, id)?;
        }
        self.try_finish(id)
    }

    /// If the run's init has exited, reap it and report.
    pub(super) fn try_finish(&mut self, id: SessionId) -> Result<(), BrokerError> {
        let Some(session) = self.sessions.get_mut(&id) else { return Ok(()) };
        let Some(run) = session.run.as_mut() else { return Ok(()) };
        // The spawner's kernel-side reaping means we cannot waitid: a readable pidfd says
        // the init has exited.
        if !exited(&run.init_pidfd) {
            return Ok(());
        }
        // Drain what the init sent just before it exited.
        while let Ok(Some((_, msg))) = run.ctl.recv::<InitMsg>() {
            if let InitMsg::Exited { status, usage, observed, core } = msg {
                run.outcome = Some((status, usage, observed, core));
            }
        }
        let run = session.run.take().expect("checked above");
        let delete_tag = session.delete_tag.take();
        let _ = self.poll.registry().deregister(&mut SourceFd(&run.init_pidfd.as_raw_fd()));
        let _ = self.poll.registry().deregister(&mut SourceFd(&run.ctl.as_raw_fd()));
        self.tokens.retain(|_, v| *v != id);
        for (t, fd) in run.debugger.iter().chain(run.program.iter()) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
            self.debug_tokens.remove(t);
            self.program_tokens.remove(t);
        }
        if let Some(tag) = run.release_tag {
            self.tube
                .send(tag, Reply::Refused { refusal: Refusal::InvalidState, message: "the session ended".into() })?;
        }
        if let Some(tag) = run.start_tag {
            // Never started: the init failed before saying "running" or said why.
            self.tube.send(
                tag,
                Reply::Refused { refusal: Refusal::Internal, message: "the session's init died during setup".into() },
            )?;
        } else if !run.failed {
            // If the init vanished without a report it was SIGKILLed by us (kill safety).
            // (Or, with cgroup v2's memory.oom.group, by the kernel: the counters say so.)
            let (status, mut usage, observed, core) =
                run.outcome.unwrap_or((ExitStatus::Signal(libc::SIGKILL), Usage::default(), None, None));
            let (cgroup_hit, cgroup_usage) = match run.cgroup {
                Some(mut c) => {
                    let (hit, mut u) = self.cgroups.finish(&mut c);
                    self.give_back_cgroup(id, c);
                    // v1 (no cgroup counter): the whole tree's CPU time, from the init.
                    u.cpu_usage_usec = u.cpu_usage_usec.or(Some(usage.user_us + usage.sys_us));
                    (hit, Some(u))
                }
                None => (None, None),
            };
            usage.cgroup = cgroup_usage;
            let limit_hit = cgroup_hit.or(run.wall_hit.then_some(shared::LimitHit::Wall));
            // The init is ours but runs as the session's uid: a core without its
            // description (or the other way round) is dropped, not passed on.
            let core = core.filter(|_| usage.core.is_some());
            if core.is_none() {
                usage.core = None;
            }
            self.tube.send(0, Reply::Exited { id, status, usage, limit_hit, observed, core })?;
            return self.after_finish(id, delete_tag);
        }
        if let Some(mut c) = run.cgroup {
            self.cgroups.finish(&mut c);
            self.give_back_cgroup(id, c);
        }
        self.after_finish(id, delete_tag)
    }

    /// What follows the end of a run: a pending DELETE completes.
    pub(super) fn after_finish(&mut self, id: SessionId, delete_tag: Option<u64>) -> Result<(), BrokerError> {
        if let Some(tag) = delete_tag {
            self.forget(id)?;
            self.tube.send(tag, Reply::Deleted { id })?;
        }
        Ok(())
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|s| s.run.as_ref())
            .flat_map(|r| [r.term_deadline, r.kill_deadline, r.debugger_deadline, r.wall_deadline])
            .flatten()
            .min()
    }

    pub(super) fn fire_deadlines(&mut self) {
        let now = Instant::now();
        for run in self.sessions.values_mut().filter_map(|s| s.run.as_mut()) {
            if run.term_deadline.is_some_and(|d| d <= now) {
                request_kill(run);
            }
            if run.wall_deadline.is_some_and(|d| d <= now) {
                run.wall_deadline = None;
                run.wall_hit = true;
                request_kill(run);
            }
            if run.debugger_deadline.is_some_and(|d| d <= now) {
                if let Some((_, gdb)) = &run.debugger {
                    let _ = sys::pidfd_signal(gdb.as_fd(), libc::SIGKILL);
                }
                run.debugger_deadline = None;
            }
            if run.kill_deadline.is_some_and(|d| d <= now) {
                let _ = sys::pidfd_signal(run.init_pidfd.as_fd(), libc::SIGKILL);
                run.kill_deadline = None;
            }
        }
    }

    /// Fail closed: SIGKILL every init (each takes its namespace with it) and reap them.
    pub(super) fn kill_everything(&mut self) {
        for run in self.sessions.values().filter_map(|s| s.run.as_ref()) {
            let _ = sys::pidfd_signal(run.init_pidfd.as_fd(), libc::SIGKILL);
        }
        for run in self.sessions.values().filter_map(|s| s.run.as_ref()) {
            let mut pfd = [nix::poll::PollFd::new(run.init_pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(5000u16));
        }
    }
}

/// Whether the process behind a pidfd has exited (its pidfd polls readable).
pub(super) fn exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = [nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Asks the init to SIGKILL its whole namespace (it then reports the status and usage);
/// if it has not exited within [`KILL_SAFETY`], it is SIGKILLed itself.
pub(super) fn request_kill(run: &mut Run) {
    run.term_deadline = None;
    if run.kill_deadline.is_none() {
        let _ = sys::pidfd_signal(run.init_pidfd.as_fd(), libc::SIGUSR1);
        run.kill_deadline = Some(Instant::now() + KILL_SAFETY);
    }
}
