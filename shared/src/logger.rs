//! The daemon's own messages (not the audit log): one line each on stderr, the journal
//! under systemd — `debuglantern: <message>`, with `warning:` or `error:` before the
//! message when it is one. Installed once, first thing in `main`.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct Stderr {
    name: &'static str,
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= Level::Info
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let kind = match r.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        // One write per line, so that lines of several threads never interleave.
        let line = format!("{}: {kind}{}\n", self.name, r.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger for program `name` (`debuglantern`, `debuglantern-broker`).
pub fn install(name: &'static str) {
    let logger = Box::leak(Box::new(Stderr { name }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}
