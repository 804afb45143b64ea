//! The audit log: one JSON object per line for every security-relevant event (SPEC §7,
//! issue 8) — authentication with the peer's address, uploads with size and sha256,
//! start/stop/kill/delete, debugger attach/detach, limit hits and refused requests.
//! Lines go to stderr (the journal under systemd) and, with `--audit-log FILE`, are also
//! appended to that file, which is opened before the frontend confines itself.

use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Instant, SystemTime};

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Something it needed failed.
    #[error("{what}")]
    Because {
        /// What was being done.
        what: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn because<E: Into<Box<dyn std::error::Error + Send + Sync>>>(what: impl Into<String>) -> impl FnOnce(E) -> AuditError {
    let what = what.into();
    move |e| AuditError::Because { what, source: e.into() }
}

/// Lines of the kinds anyone can cause (refusals, failed AUTHs) written at most this fast
/// on average...
const NOISE_PER_SEC: f64 = 200.0;
/// ... with bursts up to this many. Beyond that they are counted, and the count is written
/// as one `suppressed` line once lines flow again. Everything else is always written.
const NOISE_BURST: f64 = 1000.0;

/// Where audit lines go.
#[derive(Debug)]
pub struct Audit {
    file: Option<File>,
    /// The file failed once (said on stderr); it is not tried again.
    file_failed: bool,
    /// Token bucket of the noisy kinds.
    budget: f64,
    refilled: Instant,
    suppressed: u64,
}

impl Default for Audit {
    fn default() -> Self {
        Audit { file: None, file_failed: false, budget: NOISE_BURST, refilled: Instant::now(), suppressed: 0 }
    }
}

impl Audit {
    /// Opens (creates, mode 0600, appending) the optional audit file.
    pub fn open(path: Option<&Path>) -> Result<Audit, AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = match path {
            None => None,
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(p)
                    .map_err(because(format!("cannot open the audit log {}", p.display())))?,
            ),
        };
        Ok(Audit { file, ..Audit::default() })
    }

    /// The line for an event: `{"audit":EVENT,"time":...,<fields>}`.
    pub fn line(event: &str, fields: Value) -> Vec<u8> {
        let mut v = json!({"audit": event, "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string()});
        if let (Some(m), Value::Object(f)) = (v.as_object_mut(), fields) {
            m.extend(f);
        }
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Records an event of a kind anyone can cause over and over (a refusal, a failed
    /// AUTH): rate-limited, so that a flood of garbage cannot flood the log or stall the
    /// daemon on a slow stderr. What is dropped is counted and reported.
    pub fn log_noise(&mut self, event: &str, fields: Value) {
        let now = Instant::now();
        self.budget = (self.budget + now.duration_since(self.refilled).as_secs_f64() * NOISE_PER_SEC).min(NOISE_BURST);
        self.refilled = now;
        if self.budget < 1.0 {
            self.suppressed += 1;
            return;
        }
        self.budget -= 1.0;
        self.log(event, fields);
    }

    /// Records an event. Each line is written with one `write`, so lines of concurrent
    /// writers to the same file never interleave.
    pub fn log(&mut self, event: &str, fields: Value) {
        if self.suppressed > 0 {
            let n = std::mem::take(&mut self.suppressed);
            self.write(&Audit::line(
                "suppressed",
                json!({"count": n, "note": "refusals and failed AUTHs beyond 200/s were counted, not logged"}),
            ));
        }
        self.write(&Audit::line(event, fields));
    }

    fn write(&mut self, line: &[u8]) {
        let _ = std::io::stderr().write_all(line);
        if let Some(f) = self.file.as_mut().filter(|_| !self.file_failed) {
            if let Err(e) = f.write_all(line) {
                self.file_failed = true;
                log::warn!("cannot write the audit log ({e}); it goes to stderr only from now on");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_json_object_each() {
        let dir = std::env::temp_dir().join(format!("dl-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("audit.log");
        let mut a = Audit::open(Some(&p)).unwrap();
        a.log("auth_failed", json!({"peer": "10.0.0.2:5000", "note": "line\nbreak"}));
        a.log("upload", json!({"identity": "alice", "size": 3}));
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["audit"], "auth_failed");
        assert_eq!(lines[0]["note"], "line\nbreak");
        assert_eq!(lines[1]["identity"], "alice");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_flood_of_noise_is_counted_not_written() {
        let dir = std::env::temp_dir().join(format!("dl-audit-flood-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("audit.log");
        let mut a = Audit::open(Some(&p)).unwrap();
        for i in 0..5000 {
            a.log_noise("refused", json!({"i": i}));
        }
        a.log("upload", json!({}));
        let lines: Vec<Value> =
            std::fs::read_to_string(&p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let refused = lines.iter().filter(|l| l["audit"] == "refused").count();
        // The burst, plus what trickled in at 200/s while the loop ran.
        assert!((1000..5000).contains(&refused), "{refused}");
        // Each time lines flow again, what was dropped meanwhile is reported first.
        let dropped: u64 =
            lines.iter().filter(|l| l["audit"] == "suppressed").map(|l| l["count"].as_u64().unwrap()).sum();
        assert!(dropped > 0);
        assert_eq!(dropped + refused as u64, 5000);
        assert_eq!(lines.last().unwrap()["audit"], "upload");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
