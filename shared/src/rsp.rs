//! The gdb remote serial protocol, as far as the rig reads it (untrusted bytes: a
//! session's gdbserver runs as the session's uid and the program may make it say
//! anything): what gdbserver reports launching on its stderr, and a watch over the
//! packets relayed between a debugger and gdbserver.

use crate::ExitStatus;

/// The pids gdbserver reports launching in `log` (its stderr), in order:
/// `Process PATH created; pid = N` (also on every `run` of an extended-remote gdb).
/// Returns them and how many bytes of `log` are consumed (complete lines).
pub fn created_pids(log: &[u8]) -> (Vec<i32>, usize) {
    const MARK: &[u8] = b"created; pid = ";
    let mut pids = Vec::new();
    let mut used = 0;
    while let Some(nl) = log[used..].iter().position(|&b| b == b'\n') {
        let line = &log[used..used + nl];
        if let Some(at) = line.windows(MARK.len()).rposition(|w| w == MARK) {
            let digits = &line[at + MARK.len()..];
            let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
            if let Some(pid) = std::str::from_utf8(&digits[..end]).ok().and_then(|d| d.parse::<i32>().ok()) {
                if pid > 1 {
                    pids.push(pid);
                }
            }
        }
        used += nl + 1;
    }
    (pids, used)
}

/// A debugger's `qSupported` that lacks `swbreak+` (lldb's) with it added, checksum and
/// all, if the whole packet is in `chunk` (it is the debugger's first, sent at once).
///
/// Without `swbreak+`, gdbserver reports a software breakpoint's stop with the pc past the
/// trap instruction and leaves the step back to the debugger, as gdb does it; lldb does
/// not, so it stops at `_start+1` and cannot go on. With it, gdbserver moves the pc back
/// itself and says `swbreak` in the stop reply (a key lldb skips). gdb sends `swbreak+`
/// already: its packets pass untouched.
pub fn add_swbreak(chunk: &[u8]) -> Option<Vec<u8>> {
    const HEAD: &[u8] = b"$qSupported";
    let start = chunk.windows(HEAD.len()).position(|w| w == HEAD)?;
    let end = start + chunk[start..].iter().position(|&b| b == b'#')?;
    if chunk.len() < end + 3 || !chunk[end + 1..end + 3].iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let body = &chunk[start + 1..end];
    let features: Vec<&[u8]> = match body.strip_prefix(b"qSupported:") {
        Some(list) => list.split(|&b| b == b';').collect(),
        None if body == b"qSupported" => Vec::new(),
        None => return None,
    };
    if features.contains(&&b"swbreak+"[..]) {
        return None;
    }
    let mut new_body = body.to_vec();
    new_body.push(if features.is_empty() { b':' } else { b';' });
    new_body.extend_from_slice(b"swbreak+");
    if !features.contains(&&b"hwbreak+"[..]) {
        new_body.extend_from_slice(b";hwbreak+");
    }
    let sum = new_body.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let mut out = chunk[..start + 1].to_vec();
    out.extend_from_slice(&new_body);
    out.extend_from_slice(format!("#{sum:02x}").as_bytes());
    out.extend_from_slice(&chunk[end + 3..]);
    Some(out)
}

/// What the relayed remote protocol says about the program: whether it runs (so that a
/// detach must interrupt it first) and how it ended. In the remote protocol a raw `$`
/// always starts a packet (inside one it is escaped), so the first bytes after it name
/// the packet.
#[derive(Debug, Default)]
pub struct Watch {
    /// The last resume (`c`, `s`, `vCont;…`) has had no stop reply yet.
    pub running: bool,
    /// The start of the packet being read from each side (after its `$`), if any.
    head: [Option<Vec<u8>>; 2],
    /// A `W`/`X` stop reply not yet taken.
    pub exit: Option<ExitStatus>,
    /// The process of the last stop reply (`thread:p<pid>.<tid>`), which `D;<pid>` detaches.
    pub pid: Option<u32>,
    /// gdbserver answered `OK` (after a release: it has detached).
    pub ok: bool,
    /// The last stop reply said the program ended: nothing is left to detach.
    pub ended: bool,
    /// The debugger detached the program (`D…` answered `OK`): nothing is left to detach,
    /// and gdbserver, which after a detach only waits for its child, may go.
    pub detached: bool,
    /// A `D…` was sent and not answered yet.
    detaching: bool,
}

/// Bytes of a packet's head that say what it is (and, in a stop reply, which process).
const HEAD: usize = 256;

impl Watch {
    /// Bytes the debugger sent to gdbserver.
    pub fn saw_client(&mut self, bytes: &[u8]) {
        for head in Self::heads(&mut self.head[0], bytes) {
            let resumes = matches!(head.first(), Some(b'c' | b'C' | b's' | b'S'))
                || (head.starts_with(b"vCont;") && !head.starts_with(b"vCont;t"));
            if resumes {
                self.running = true;
            }
            // A detach or kill naming another process (`D;6`: a child the program forked,
            // which gdb lets go) leaves the program as it is.
            let other = self.names_other(&head);
            if head.first() == Some(&b'D') && !other {
                self.detaching = true;
            }
            // A kill (`k`, `vKill;pid`) ends the program: nothing is left to detach.
            if head == b"k" || (head.starts_with(b"vKill") && !other) {
                self.running = false;
                self.ended = true;
            }
        }
    }

    /// Whether a `D;pid` or `vKill;pid` packet names a process other than the program
    /// (the one of the last stop reply).
    fn names_other(&self, head: &[u8]) -> bool {
        let Some(at) = head.iter().position(|&b| b == b';') else { return false };
        if !(head.starts_with(b"D;") || head.starts_with(b"vKill;")) {
            return false;
        }
        let hex: Vec<u8> = head[at + 1..].iter().copied().take_while(u8::is_ascii_hexdigit).collect();
        let named = std::str::from_utf8(&hex).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
        matches!((named, self.pid), (Some(n), Some(p)) if n != p)
    }

    /// Bytes gdbserver sent to the debugger.
    pub fn saw_gdbserver(&mut self, bytes: &[u8]) {
        for head in Self::heads(&mut self.head[1], bytes) {
            match head.first() {
                Some(b'T' | b'S') if head.len() >= 3 && head[1..3].iter().all(u8::is_ascii_hexdigit) => {
                    self.running = false;
                    self.ended = false;
                    if let Some(pid) = stop_pid(&head) {
                        self.pid = Some(pid);
                    }
                    // A program stopped again (or launched anew) has not ended.
                    self.exit = None;
                }
                Some(b'O') if head == b"OK" => {
                    self.ok = true;
                    self.detached |= std::mem::take(&mut self.detaching);
                }
                Some(b'E') => self.detaching = false,
                Some(kind @ (b'W' | b'X')) => {
                    // `WAA` / `XAA`: two hex digits (then `;process:…` or the end).
                    let hex: Vec<u8> = head[1..].iter().copied().take_while(u8::is_ascii_hexdigit).collect();
                    if !(1..=2).contains(&hex.len()) {
                        continue;
                    }
                    let Ok(v) = i32::from_str_radix(std::str::from_utf8(&hex).unwrap_or(""), 16) else { continue };
                    self.running = false;
                    self.ended = true;
                    self.exit = Some(if *kind == b'W' { ExitStatus::Code(v & 0xff) } else { ExitStatus::Signal(v) });
                }
                _ => {}
            }
        }
    }

    /// The heads of the packets that complete in `bytes` (or reach [`HEAD`] bytes).
    fn heads(cur: &mut Option<Vec<u8>>, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut done = Vec::new();
        for &b in bytes {
            if b == b'$' {
                *cur = Some(Vec::with_capacity(HEAD));
                continue;
            }
            let Some(h) = cur.as_mut() else { continue };
            if b == b'#' || h.len() == HEAD {
                done.push(std::mem::take(h));
                *cur = None;
            } else {
                h.push(b);
            }
        }
        done
    }

    /// What detaches gdbserver from the program when no debugger is left: an interrupt
    /// if the program runs (and an ack for its stop reply), then `D` and an ack for the
    /// answer. Stray acks are skipped by gdbserver, in either ack mode.
    ///
    /// `D;<pid>`: gdbserver in multiprocess mode (as gdb and lldb use it) refuses a bare
    /// `D`, and outside it ignores the pid. `pid` is the program's, if no stop reply named
    /// one.
    pub fn release_bytes(&self, pid: Option<u32>) -> Vec<u8> {
        let mut b = Vec::new();
        if self.running {
            b.extend_from_slice(b"\x03+");
        } else {
            b.push(b'+');
        }
        let body = match self.pid.or(pid) {
            Some(pid) => format!("D;{pid:x}"),
            None => "D".to_string(),
        };
        let sum = body.bytes().fold(0u8, |a, c| a.wrapping_add(c));
        b.extend_from_slice(format!("${body}#{sum:02x}+").as_bytes());
        b
    }
}

/// The pid of a stop reply's `thread:p<pid>.<tid>`.
fn stop_pid(head: &[u8]) -> Option<u32> {
    const MARK: &[u8] = b"thread:p";
    let at = head.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let hex: Vec<u8> = head[at..].iter().copied().take_while(u8::is_ascii_hexdigit).collect();
    u32::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok().filter(|&p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExitStatus;

    #[test]
    fn the_watch_follows_resumes_stops_and_exits_across_chunks() {
        let mut w = Watch::default();
        w.saw_client(b"+$vCont;c:p1.-1#xx");
        assert!(w.running);
        assert_eq!(w.release_bytes(None), b"\x03+$D#44+");
        assert_eq!(w.release_bytes(Some(5)), b"\x03+$D;5#b4+");
        w.saw_gdbserver(b"+$T0");
        assert!(w.running, "a head not complete yet");
        w.saw_gdbserver(b"5thread:p1a.1a;#aa");
        assert!(!w.running);
        assert_eq!(w.release_bytes(Some(5)), b"+$D;1a#11+", "the stop reply's pid wins");
        w.saw_client(b"$c#63");
        w.saw_gdbserver(b"$X0b;process:1#00");
        assert_eq!(w.exit, Some(ExitStatus::Signal(11)));
        w.saw_gdbserver(b"$W03#00");
        assert_eq!(w.exit, Some(ExitStatus::Code(3)));
        // A new stop (extended-remote `run`) means the program lives again.
        w.saw_gdbserver(b"$T05#00");
        assert_eq!(w.exit, None);
        // vCont? (a query) and qSupported resume nothing; memory is not a stop reply.
        w.saw_client(b"$vCont?#49$qSupported:multiprocess+#00");
        assert!(!w.running);
        w.saw_gdbserver(b"$57#00$Tzz#00");
        assert_eq!(w.exit, None);
        assert!(!w.running);
        assert!(!w.ended);
        w.saw_client(b"$vKill;1a#00");
        assert!(w.ended, "a killed program is not detached");
        // A detach answered with an error detached nothing; one answered OK did.
        let mut w = Watch::default();
        w.saw_client(b"$D#44");
        w.saw_gdbserver(b"$E01#a6$OK#9a");
        assert!(!w.detached);
        w.saw_client(b"$D;5#b4");
        w.saw_gdbserver(b"$OK#9a");
        assert!(w.detached);
        // gdb letting a forked child go (or killing it) leaves the program (pid 5) alone.
        let mut w = Watch::default();
        w.saw_gdbserver(b"$T05thread:p5.5;#00");
        w.saw_client(b"$D;6#00");
        w.saw_gdbserver(b"$OK#9a");
        assert!(!w.detached, "the child's detach is not the program's");
        w.saw_client(b"$vKill;6#00");
        assert!(!w.ended);
        w.saw_client(b"$D;5#b4");
        w.saw_gdbserver(b"$OK#9a");
        assert!(w.detached);
    }

    #[test]
    fn lldbs_qsupported_gains_swbreak_and_gdbs_passes() {
        let lldb = b"+$qSupported:xmlRegisters=i386,arm,mips,arc;multiprocess+;fork-events+;vfork-events+#2e";
        let out = add_swbreak(lldb).expect("rewritten");
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with(
            "+$qSupported:xmlRegisters=i386,arm,mips,arc;multiprocess+;fork-events+;vfork-events+;swbreak+;hwbreak+#"
        ));
        let (body, sum) = text[2..].split_once('#').unwrap();
        assert_eq!(u8::from_str_radix(sum, 16).unwrap(), body.bytes().fold(0u8, |a, b| a.wrapping_add(b)));
        assert_eq!(add_swbreak(b"$qSupported#37").unwrap(), b"$qSupported:swbreak+;hwbreak+#d5".to_vec());
        // gdb's, a split packet, another packet, a bad checksum: untouched.
        assert_eq!(add_swbreak(b"$qSupported:multiprocess+;swbreak+;hwbreak+#00"), None);
        assert_eq!(add_swbreak(b"$qSupported:multiprocess+"), None);
        assert_eq!(add_swbreak(b"$qSupportedX#00"), None);
        assert_eq!(add_swbreak(b"$qSupported:a#z"), None);
        assert_eq!(add_swbreak(b"$g#67"), None);
    }

    #[test]
    fn hostile_packets_do_not_confuse_the_watch() {
        let mut w = Watch::default();
        w.saw_gdbserver(b"$W#00$Wzz#00$X#00$WFFFFFFFFFFFF#00");
        assert_eq!(w.exit, None);
        let long = vec![b'a'; 1 << 20];
        w.saw_client(&long);
        w.saw_gdbserver(&long);
        assert!(!w.running);
    }

    #[test]
    fn created_pids_come_from_whole_lines() {
        let log = b"Process /bundle/x created; pid = 3\nRemote debugging using stdio\nProcess /b created; pid = 1";
        let (pids, used) = created_pids(log);
        assert_eq!(pids, [3]);
        assert_eq!(&log[used..], b"Process /b created; pid = 1");
        // A path that itself says "created; pid = 9" does not fool it: the last mark counts.
        let (pids, _) = created_pids(b"Process /created; pid = 9 created; pid = 12\n");
        assert_eq!(pids, [12]);
        for junk in [&b"created; pid = \n"[..], b"created; pid = 1\n", b"created; pid = 99999999999999\n", b"\xff\n"] {
            assert!(created_pids(junk).0.is_empty());
        }
    }
}
