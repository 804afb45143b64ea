//! The audit log: one JSON object per line for every security-relevant event (SPEC §7,
//! issue 8) — authentication with the peer's address, uploads with size and sha256,
//! start/stop/kill/delete, debugger attach/detach, limit hits and refused requests.
//! Lines go to stderr (the journal under systemd) and, with `--audit-log FILE`, are also
//! appended to that file, which is opened before the frontend confines itself.

use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

/// Where audit lines go.
#[derive(Debug, Default)]
pub struct Audit {
    file: Option<File>,
    /// The file failed once (said on stderr); it is not tried again.
    file_failed: bool,
}

impl Audit {
    /// Opens (creates, mode 0600, appending) the optional audit file.
    pub fn open(path: Option<&Path>) -> Result<Audit, String> {
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
                    .map_err(|e| format!("cannot open the audit log {}: {e}", p.display()))?,
            ),
        };
        Ok(Audit { file, file_failed: false })
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

    /// Records an event. Each line is written with one `write`, so lines of concurrent
    /// writers to the same file never interleave.
    pub fn log(&mut self, event: &str, fields: Value) {
        let line = Audit::line(event, fields);
        let _ = std::io::stderr().write_all(&line);
        if let Some(f) = self.file.as_mut().filter(|_| !self.file_failed) {
            if let Err(e) = f.write_all(&line) {
                self.file_failed = true;
                eprintln!(
                    "debuglantern: warning: cannot write the audit log ({e}); it goes to stderr only from now on"
                );
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
}
