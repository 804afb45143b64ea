//! `debuglantern`: the network-facing, unprivileged half of the rig. It binds the control
//! socket, starts the broker (see `launcher`), drops its own privileges and serves the
//! control protocol (see `server`).

use anyhow::Context;
use clap::Parser;
use frontend::{config, launcher, server};
use nix::unistd::Uid;
use std::process::ExitCode;

fn main() -> ExitCode {
    shared::logger::install("debuglantern");
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // Sockets passed by systemd sit on fds 3...: take them before anything opens a file.
    let activated = frontend::activation::listen_fds().context("socket activation")?;
    let cfg = config::Config::load(config::Flags::parse())?;
    let root = Uid::effective().is_root();
    let mut warnings = Vec::new();
    let tokens = match &cfg.auth_tokens {
        Some(path) => Some(frontend::auth::Tokens::load(path)?),
        None => None,
    };
    let audit = frontend::audit::Audit::open(cfg.audit_log.as_deref())?;
    // Where clients come from: the activator's sockets, stdin/stdout, or our own listener.
    let listeners = match (&activated, cfg.stdio) {
        (Some(_), true) => anyhow::bail!("--stdio and socket activation (LISTEN_FDS) exclude each other"),
        (Some(ls), false) => ls.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>()?,
        (None, true) => Vec::new(),
        (None, false) => vec![cfg.listen],
    };
    // SPEC §3/§7: a non-loopback address needs tokens, or an explicit --insecure-no-auth.
    let mut exposed: Vec<String> = listeners.iter().filter(|a| !a.ip().is_loopback()).map(|a| a.to_string()).collect();
    if cfg.stdio {
        // inetd / systemd Accept=yes hand over a network connection as stdin.
        let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(0)
            .ok()
            .and_then(|a| frontend::stream::to_std(&a));
        exposed.extend(peer.filter(|p| !p.ip().is_loopback()).map(|p| format!("the --stdio client {p}")));
    }
    if !exposed.is_empty() && tokens.is_none() {
        let exposed = exposed.join(", ");
        if !cfg.insecure_no_auth {
            anyhow::bail!(
                "refusing to serve {exposed} without authentication: anyone who can reach it would control this rig. \
                 Give --auth-tokens FILE, listen on loopback (the default), or pass --insecure-no-auth to accept that"
            );
        }
        warnings.push(format!("--insecure-no-auth: anyone who can reach {exposed} controls this rig"));
    }
    // Resolve the frontend's user before anything starts: a typo must stop us here.
    let drop_to = if root {
        let (uid, gid) = resolve_user(&cfg.user)?;
        let plan = policy::identity::IdPlan {
            frontend_uid: uid,
            uid_base: cfg.uid_base,
            session_slots: cfg.max_sessions as u32,
        };
        plan.validate()?;
        Some((uid, gid))
    } else {
        warnings.push(
            "rootless: the frontend and the broker run as the invoking user, and sessions share one uid".to_string(),
        );
        None
    };
    if !std::path::Path::new("/usr/bin/gdbserver").exists() {
        warnings
            .push("gdbserver is not installed (/usr/bin/gdbserver): DEBUG and START --debug answer unsupported".into());
    }
    let broker_binary = launcher::open_binary(&cfg)?;
    let listeners = match activated {
        Some(ls) => ls,
        None if cfg.stdio => Vec::new(),
        None => vec![std::net::TcpListener::bind(cfg.listen).map_err(|e| {
            anyhow::anyhow!("cannot listen on {}: {e} (choose another address with --listen)", cfg.listen)
        })?],
    };
    let locals: Vec<std::net::SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    frontend::raise_nofile();
    policy::rlimits::apply(&policy::rlimits::daemon())?;
    // Cgroup directories for the broker to manage (as root anywhere; rootless only in a
    // cgroup v2 subtree delegated to us), warnings for what is missing.
    let (cgroups, controllers) = if cfg.no_cgroups {
        warnings.push("--no-cgroups: no memory, pids or CPU limits for whole sessions (rlimits still apply)".into());
        (String::new(), Vec::new())
    } else {
        let broker_uid = if root { cfg.uid_base } else { nix::unistd::getuid().as_raw() };
        let p = frontend::cgroup::prepare(cfg.uid_base, broker_uid, root);
        warnings.extend(p.warnings);
        (p.arg, p.controllers)
    };
    // The bundle store, in a mount namespace of our own (root) or a private directory.
    let bundles = frontend::store::prepare(root, drop_to, cfg.max_total_size)?;
    let broker = launcher::spawn(&cfg, broker_binary, &cgroups, &bundles.path)?;
    let broker_pid = broker.pid;
    match drop_to {
        Some((uid, gid)) => policy::identity::drop_to(uid, gid)?,
        None => policy::identity::harden_process()?,
    }
    let strict = cfg.strict;
    let (clients, bridge) = if cfg.stdio {
        let (ours, bridge) = frontend::activation::StdioBridge::prepare()?;
        (server::Clients::Stdio(ours), Some(bridge))
    } else {
        (server::Clients::Listeners(listeners), None)
    };
    let landlock = policy::landlock::describe();
    let security = server::Security { tokens, audit, cgroups: controllers, landlock };
    let mut server = server::Server::new(cfg, clients, broker, bundles.fd, security, warnings)?;
    // Confine ourselves before serving anyone: landlock (only /proc/self/fdinfo readable
    // and the bundle store writable, no TCP connect), then the threads (they inherit the
    // ruleset), then the seccomp allow list on every thread (no exec, ptrace, mount...).
    let seccomp = policy::seccomp::frontend();
    let loop_seccomp = policy::seccomp::frontend_loop();
    let store = server.store_fd().ok_or_else(|| anyhow::anyhow!("no bundle store"))?;
    if let Some(w) = policy::landlock::frontend(store).map_err(anyhow::Error::msg)? {
        server.add_warning(w);
    }
    server.start_worker()?;
    if let Some(b) = bridge {
        b.start()?;
    }
    if let Some(first) = locals.first() {
        server.start_mdns(*first);
        server.start_dns_sd(*first);
    }
    policy::seccomp::install_all_threads(&seccomp)?;
    // This thread, the event loop, gives up what only the mDNS thread needs (UDP and
    // netlink sockets, interface ioctls): per-thread filters, as firecracker does.
    policy::seccomp::install(std::slice::from_ref(&loop_seccomp))?;
    let all_warnings = server.warnings().to_vec();
    for w in &all_warnings {
        log::warn!("{w}");
    }
    if strict && !all_warnings.is_empty() {
        anyhow::bail!("--strict: refusing to start with {} warning(s)", all_warnings.len());
    }
    let serving = if locals.is_empty() {
        "one client on stdin/stdout".to_string()
    } else {
        let l: Vec<String> = locals.iter().map(|a| a.to_string()).collect();
        format!("listening on {}", l.join(", "))
    };
    log::info!("{serving} (broker pid {broker_pid}, uid {})", Uid::effective());
    server.run()?;
    log::info!("every session stopped; exiting");
    Ok(())
}

fn resolve_user(name: &str) -> anyhow::Result<(u32, u32)> {
    if let Ok(uid) = name.parse::<u32>() {
        return Ok((uid, uid));
    }
    match nix::unistd::User::from_name(name)? {
        Some(u) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        None => anyhow::bail!("no user {name:?} on this host (pass --user NAME or a numeric uid)"),
    }
}
