//! The commands that only read: `HELLO`, `LIST`, `STATUS`, `RECEIPT`.

use super::ctx::{Caller, Outcome, Shared};
use super::model::{limits_reply, RECEIPTS_KEPT};
use proto::reply::{DnsSd, Hello, IdentityInfo, Limits, List, Load, Output, ReceiptReply, State, Status, Usage};
use proto::{Error, MAX_LINE};
use uuid::Uuid;

/// `HELLO`.
pub fn hello(sh: &Shared, caller: &Caller) -> Outcome {
    let c = &sh.cfg;
    let dns_sd = c.dns_sd.as_ref().zip(sh.dns_sd.as_ref()).map(|(plan, state)| {
        let st = state.lock().map(|s| s.clone()).unwrap_or_default();
        DnsSd {
            domain: plan.domain.to_string(),
            server: plan.server.to_string(),
            instance: st.instance,
            registered: st.registered,
            error: st.error.or_else(|| (!st.tried).then(|| "the first update is under way".to_string())),
        }
    });
    Outcome::reply(&Hello {
        ok: proto::True,
        server: "debuglantern".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: 1,
        auth_required: sh.auth_required,
        identity: caller.identity.as_ref().map(|i| IdentityInfo { name: i.name.clone(), admin: i.admin }),
        limits: Limits {
            max_sessions: c.max_sessions,
            max_total_size: c.max_total_size,
            max_upload: c.max_upload,
            max_line: MAX_LINE,
            log_buffer: c.log_buffer,
            stop_grace_ms: c.stop_grace.as_millis() as u64,
            run: limits_reply(&c.limits),
        },
        warnings: {
            let mut w = sh.warnings.clone();
            if let Some(d) = dns_sd.as_ref().and_then(|d| d.error.as_ref()) {
                w.push(format!("not registered in DNS-SD: {d}"));
            }
            w
        },
        mdns: sh.mdns.clone(),
        dns_sd,
        load: Some(Load {
            sessions: sh.sessions.len(),
            running: sh.sessions.running(),
            max_sessions: c.max_sessions,
            bytes: sh.sessions.loaded_bytes,
            bytes_free: c.max_total_size.saturating_sub(sh.sessions.loaded_bytes),
        }),
        jail: sh.jail.clone(),
    })
}

/// `LIST`: the sessions this identity may see.
pub fn list(sh: &Shared, caller: &Caller) -> Outcome {
    let Some(viewer) = &caller.identity else { return Outcome::Nothing };
    let sessions = sh.sessions.visible_all(viewer).map(|s| s.summary()).collect();
    Outcome::reply(&List { ok: proto::True, sessions })
}

/// `STATUS <id>`.
pub fn status(sh: &Shared, caller: &Caller, id: Uuid) -> Outcome {
    let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
        Ok(s) => s,
        Err(e) => return Outcome::Refuse(e),
    };
    Outcome::reply(&Status {
        ok: proto::True,
        summary: s.summary(),
        sha256: s.sha256.clone(),
        exec_path: s.exec_path.clone(),
        name: s.name.clone(),
        elf: s.elf.clone(),
        script: s.script.clone(),
        ns_pid: s.ns_pid,
        runs: s.runs,
        started: s.started,
        ended: s.ended,
        limits: limits_reply(&s.limits),
        limit_hit: s.limit_hit(),
        usage: s.usage.as_ref().map(|u| Usage {
            cpu_user_ms: u.user_us / 1000,
            cpu_sys_ms: u.sys_us / 1000,
            max_rss_kib: u.max_rss_kib,
            cgroup: super::model::cgroup_figures(u.cgroup),
        }),
        output: Output {
            stdout_bytes: s.out_bytes[0],
            stderr_bytes: s.out_bytes[1],
            buffered: s.logs.len(),
            dropped: s.logs.dropped(None),
        },
        tmp: s.tmp.as_ref().map(|t| proto::reply::TmpStatus { used_bytes: t.used_bytes, size_bytes: t.size_bytes }),
        debug: s.debug.as_ref().filter(|_| s.state == State::Debugging).map(|d| d.status()),
        core: s.core().map(|c| c.info.clone()),
    })
}

/// `CORE <id>`: the session's last core dump, its bytes after the reply line.
pub fn core(sh: &mut Shared, caller: &Caller, id: Uuid) -> Outcome {
    let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
        Ok(s) => s,
        Err(e) => return Outcome::Refuse(e),
    };
    let Some(core) = s.core() else {
        let why = match s.limits.core_bytes {
            0 => "its runs keep no core dump (core_bytes 0)",
            _ => "no process of its runs died of a core-dumping signal (or the core did not fit the rig's budget)",
        };
        return Outcome::Refuse(Error::not_found(format!("session {id} has no core dump: {why}")));
    };
    let data = match core.file.try_clone() {
        Ok(f) => f,
        Err(e) => return Outcome::Refuse(Error::internal(format!("dup: {e}"))),
    };
    let info = core.info.clone();
    let owner = s.owner.clone();
    sh.audit.log(
        "core",
        serde_json::json!({"identity": caller.name().as_ref(), "peer": caller.peer_str(), "id": id.to_string(),
            "owner": &*owner, "bytes": info.bytes}),
    );
    let size = info.bytes;
    Outcome::Send { reply: proto::line(&proto::reply::CoreGot { ok: proto::True, id, core: info }), data, size }
}

/// `RECEIPT <id> [--run N]`.
pub fn receipt(sh: &Shared, caller: &Caller, id: Uuid, run: Option<u32>) -> Outcome {
    let s = match sh.sessions.visible(caller.identity.as_ref(), id) {
        Ok(s) => s,
        Err(e) => return Outcome::Refuse(e),
    };
    let found = match run {
        None => s.receipts.back(),
        Some(n) => s.receipts.iter().find(|r| r.run == n),
    };
    match (found, run) {
        (Some(r), _) => Outcome::reply(&ReceiptReply { ok: proto::True, receipt: r.clone() }),
        (None, None) => Outcome::Refuse(Error::invalid_state(format!(
            "session is {} and has no finished run yet",
            s.state.as_str()
        ))),
        (None, Some(n)) => Outcome::Refuse(Error::not_found(format!(
            "no receipt for run {n}: the session has finished {} runs and keeps the last {RECEIPTS_KEPT}",
            s.receipts.len()
        ))),
    }
}

/// What confines a session, as HELLO and receipts report it: from the policy, with the
/// session uid (`distinct per session` or `shared (rootless)`) and the cgroup controllers
/// the host gave.
pub fn jail(uid: &str, cgroups: Vec<String>, landlock: String) -> proto::reply::Jail {
    use policy::seccomp::session as s;
    use proto::reply::{Jail, JailProc, JailSeccomp};
    let families = s::SOCKET_FAMILIES
        .iter()
        .map(|(f, _)| match *f {
            libc::AF_UNIX => "unix".to_string(),
            libc::AF_INET => "inet".to_string(),
            libc::AF_INET6 => "inet6".to_string(),
            libc::AF_NETLINK => "netlink (route only)".to_string(),
            other => format!("family {other}"),
        })
        .collect();
    let paths = |l: &[(&str, &str)]| l.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>();
    let mut masked = paths(policy::mounts::PROC_MASKED_FILES);
    masked.extend(paths(policy::mounts::PROC_MASKED_DIRS));
    let strs = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Jail {
        namespaces: strs(&["user", "pid", "mount", "network", "ipc", "uts", "cgroup"]),
        root: "tmpfs with read-only system binds, own /proc, /tmp, /dev/pts; no /sys".into(),
        uid: uid.into(),
        capabilities: "none".into(),
        no_new_privs: true,
        seccomp: JailSeccomp {
            mode: "allowlist".into(),
            allowed: s::allowed().count(),
            default: "ENOSYS".into(),
            denied: s::DENIED.len(),
            denied_errno: "EPERM".into(),
            socket_families: families,
            other_families: "EAFNOSUPPORT".into(),
            clone_namespaces: "EPERM".into(),
            x32_abi: "killed".into(),
            foreign_arch: "killed".into(),
        },
        proc: JailProc { masked, read_only: paths(policy::mounts::PROC_READ_ONLY) },
        cgroup_namespace: true,
        cgroups,
        rlimits: strs(&["cpu", "address_space", "open_files", "processes", "core"]),
        spawner_seccomp: format!(
            "deny list of {} calls, stacked under every session",
            policy::seccomp::spawner_denied().count()
        ),
        frontend_seccomp:
            "allow list; the event loop thread also refuses UDP, raw and netlink sockets and interface ioctls".into(),
        landlock,
    }
}
