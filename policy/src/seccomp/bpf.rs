//! A small compiler from a policy table to classic BPF for seccomp.
//!
//! Why not seccompiler's code generator: it compares the syscall number against every
//! entry in turn. Besides running each call through that chain, the kernel builds, when a
//! filter is attached, a per-syscall cache of calls that are always allowed by *emulating
//! the filter once for every syscall number*; with a linear chain of a few hundred
//! entries that alone took 0.74 ms per attach here, at every START. This compiler emits a
//! balanced binary search over the syscall numbers (about nine comparisons to any entry),
//! and lets each entry carry its own action, so one filter per role says everything.
//! seccompiler still provides the instruction type and installs the programs.
//!
//! Every program begins with [`prologue`]: another architecture, or the x32 ABI (whose
//! numbers have bit 30 set and share x86_64's audit architecture), kills the process.

use seccompiler::sock_filter;
use std::collections::BTreeMap;

/// `SECCOMP_RET_KILL_PROCESS`.
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `SECCOMP_RET_ERRNO` (the errno goes in the low 16 bits).
pub const RET_ERRNO: u32 = 0x0005_0000;
/// `SECCOMP_RET_USER_NOTIF`.
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `SECCOMP_RET_ALLOW`.
pub const RET_ALLOW: u32 = 0x7fff_0000;
/// The x32 ABI's marker bit in the syscall number (x86_64).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The audit architecture of this build's target.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xc000_003e;
/// The audit architecture of this build's target.
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Offsets into `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

/// Longest program the kernel accepts (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// What a filter answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The call proceeds (other filters may still refuse it).
    Allow,
    /// The call fails with this errno.
    Errno(i32),
    /// The process is killed (SIGSYS).
    KillProcess,
    /// The call waits for the supervisor holding the filter's listener.
    Notify,
}

impl Action {
    fn ret(self) -> u32 {
        match self {
            Action::Allow => RET_ALLOW,
            Action::Errno(e) => RET_ERRNO | (e as u32 & 0xffff),
            Action::KillProcess => RET_KILL_PROCESS,
            Action::Notify => RET_USER_NOTIF,
        }
    }
}

/// How much of an argument is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// Its low 32 bits (an `int` argument: the kernel ignores the rest).
    Low32,
    /// All 64 bits.
    Full64,
}

/// A comparison of one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Equal to.
    Eq(u64),
    /// Not equal to.
    Ne(u64),
    /// `(arg & mask) == value`.
    MaskedEq {
        /// The bits compared.
        mask: u64,
        /// What they must be.
        value: u64,
    },
}

/// One argument comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Argument index, 0 to 5.
    pub arg: u8,
    /// How much of it.
    pub width: Width,
    /// The comparison.
    pub op: Op,
}

impl Check {
    /// The low 32 bits of argument `arg` compared with `op`.
    pub fn low(arg: u8, op: Op) -> Check {
        Check { arg, width: Width::Low32, op }
    }

    /// All 64 bits of argument `arg` compared with `op`.
    pub fn full(arg: u8, op: Op) -> Check {
        Check { arg, width: Width::Full64, op }
    }

    /// What the check says of a call's arguments (the reference semantics).
    pub fn holds(&self, args: &[u64; 6]) -> bool {
        let a = args[usize::from(self.arg)];
        let (a, cut) = match self.width {
            Width::Low32 => (a & 0xffff_ffff, 0xffff_ffffu64),
            Width::Full64 => (a, u64::MAX),
        };
        match self.op {
            Op::Eq(v) => a == v & cut,
            Op::Ne(v) => a != v & cut,
            Op::MaskedEq { mask, value } => a & mask & cut == value & cut,
        }
    }
}

/// One case of a rule: when every check holds, `then`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Checks that must all hold.
    pub all: Vec<Check>,
    /// The action then.
    pub then: Action,
}

/// What one syscall gets: the first case whose checks hold, else `otherwise`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Cases, in order.
    pub cases: Vec<Case>,
    /// The action when no case holds (or when there are none).
    pub otherwise: Action,
}

impl Rule {
    /// The same action whatever the arguments.
    pub fn always(action: Action) -> Rule {
        Rule { cases: Vec::new(), otherwise: action }
    }

    /// What the rule decides for these arguments (the reference semantics).
    pub fn decide(&self, args: &[u64; 6]) -> Action {
        self.cases.iter().find(|c| c.all.iter().all(|k| k.holds(args))).map_or(self.otherwise, |c| c.then)
    }
}

/// A whole filter: rules by syscall number, and the action for every other number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Rules by syscall number.
    pub rules: BTreeMap<u32, Rule>,
    /// Every other number.
    pub default: Option<Action>,
}

impl Table {
    /// An empty table answering `default` to every call.
    pub fn new(default: Action) -> Table {
        Table { rules: BTreeMap::new(), default: Some(default) }
    }

    /// Sets the rule of `nr` (a later call for the same number replaces it).
    pub fn set(&mut self, nr: i64, rule: Rule) -> &mut Table {
        self.rules.insert(u32::try_from(nr).expect("syscall numbers are small"), rule);
        self
    }

    /// `action` for each of `nrs`, whatever the arguments.
    pub fn set_all<'a>(&mut self, nrs: impl IntoIterator<Item = &'a (i64, &'a str)>, action: Action) -> &mut Table {
        for (nr, _) in nrs {
            self.set(*nr, Rule::always(action));
        }
        self
    }

    /// What the table decides for a native call (the reference semantics).
    pub fn decide(&self, nr: u32, args: &[u64; 6]) -> Action {
        match self.rules.get(&nr) {
            Some(r) => r.decide(args),
            None => self.default.unwrap_or(Action::KillProcess),
        }
    }

    /// The program.
    pub fn compile(&self) -> Vec<sock_filter> {
        let default = self.default.unwrap_or(Action::KillProcess).ret();
        let mut p = prologue();
        p.extend(tree(&segments(&self.rules, default)));
        assert!(p.len() <= MAX_INSNS, "filter of {} instructions is too long", p.len());
        p
    }
}

fn ld(k: u32) -> sock_filter {
    sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k }
}

fn and(k: u32) -> sock_filter {
    sock_filter { code: (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16, jt: 0, jf: 0, k }
}

fn jump(op: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code: (libc::BPF_JMP | op | libc::BPF_K) as u16, jt, jf, k }
}

fn ja(k: u32) -> sock_filter {
    sock_filter { code: (libc::BPF_JMP | libc::BPF_JA) as u16, jt: 0, jf: 0, k }
}

fn ret(k: u32) -> sock_filter {
    sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k }
}

/// The start of every program: another architecture, or the x32 ABI, kills the process.
/// It leaves the syscall number in the accumulator.
pub fn prologue() -> Vec<sock_filter> {
    vec![
        ld(DATA_ARCH),
        jump(libc::BPF_JEQ, AUDIT_ARCH, 1, 0),
        ret(RET_KILL_PROCESS),
        ld(DATA_NR),
        jump(libc::BPF_JSET, X32_SYSCALL_BIT, 0, 1),
        ret(RET_KILL_PROCESS),
    ]
}

/// "If `A op k` then `then` else `otherwise`": both end in returns, so nothing falls
/// through. A `then` longer than a conditional jump reaches goes behind a `ja`.
fn branch(op: u32, k: u32, then: Vec<sock_filter>, otherwise: Vec<sock_filter>) -> Vec<sock_filter> {
    let mut v = Vec::with_capacity(then.len() + otherwise.len() + 2);
    match u8::try_from(then.len()) {
        Ok(n) => v.push(jump(op, k, 0, n)),
        Err(_) => {
            v.push(jump(op, k, 1, 0));
            v.push(ja(then.len() as u32));
        }
    }
    v.extend(then);
    v.extend(otherwise);
    v
}

/// A run of syscall numbers from `start` up to the next segment's start, all decided the
/// same way: a constant action, or (for one number) a rule with argument checks.
#[derive(Debug)]
struct Segment<'a> {
    start: u32,
    code: Seg<'a>,
}

#[derive(Debug)]
enum Seg<'a> {
    Const(u32),
    Rule(&'a Rule),
}

/// The number line cut into segments: every number has one, neighbours with the same
/// constant action are merged (the allowed calls mostly come in runs).
fn segments(rules: &BTreeMap<u32, Rule>, default: u32) -> Vec<Segment<'_>> {
    fn add<'a>(out: &mut Vec<Segment<'a>>, start: u32, code: Seg<'a>) {
        // The default placed after the previous number, when this one follows at once.
        if out.last().is_some_and(|l| l.start == start) {
            out.pop();
        }
        if let (Some(Segment { code: Seg::Const(a), .. }), Seg::Const(b)) = (out.last(), &code) {
            if a == b {
                return;
            }
        }
        out.push(Segment { start, code });
    }
    let mut out = Vec::new();
    add(&mut out, 0, Seg::Const(default));
    for (nr, rule) in rules {
        let code = if rule.cases.is_empty() { Seg::Const(rule.otherwise.ret()) } else { Seg::Rule(rule) };
        add(&mut out, *nr, code);
        if let Some(next) = nr.checked_add(1) {
            add(&mut out, next, Seg::Const(default));
        }
    }
    out
}

/// The search over `segs` (contiguous, sorted): the accumulator holds the number.
fn tree(segs: &[Segment<'_>]) -> Vec<sock_filter> {
    if let [one] = segs {
        return match one.code {
            Seg::Const(r) => vec![ret(r)],
            Seg::Rule(rule) => body(rule),
        };
    }
    let mid = segs.len() / 2;
    let left = tree(&segs[..mid]);
    let right = tree(&segs[mid..]);
    branch(libc::BPF_JGE, segs[mid].start, right, left)
}

/// An instruction whose true or false target is "the end of this case".
#[derive(Clone, Copy)]
enum Exit {
    No,
    OnTrue,
    OnFalse,
}

/// A rule's code: its cases in order, then `otherwise`. Clobbers the accumulator (every
/// path ends in a return).
fn body(rule: &Rule) -> Vec<sock_filter> {
    let mut code = Vec::new();
    for case in &rule.cases {
        let mut ins: Vec<(sock_filter, Exit)> = Vec::new();
        for check in &case.all {
            emit_check(check, &mut ins);
        }
        ins.push((ret(case.then.ret()), Exit::No));
        // A failed check jumps past this case's return, to the next case.
        let len = ins.len();
        for (i, (f, exit)) in ins.iter_mut().enumerate() {
            let past = u8::try_from(len - i - 1).expect("a case fits a conditional jump");
            match exit {
                Exit::No => {}
                Exit::OnTrue => f.jt = past,
                Exit::OnFalse => f.jf = past,
            }
        }
        code.extend(ins.into_iter().map(|(f, _)| f));
    }
    code.push(ret(rule.otherwise.ret()));
    code
}

fn emit_check(c: &Check, ins: &mut Vec<(sock_filter, Exit)>) {
    let low = DATA_ARGS + 8 * u32::from(c.arg);
    let high = low + 4;
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let wide = c.width == Width::Full64;
    match c.op {
        Op::Eq(v) => {
            let (vl, vh) = split(v);
            if wide {
                ins.push((ld(high), Exit::No));
                ins.push((jump(libc::BPF_JEQ, vh, 0, 0), Exit::OnFalse));
            }
            ins.push((ld(low), Exit::No));
            ins.push((jump(libc::BPF_JEQ, vl, 0, 0), Exit::OnFalse));
        }
        Op::MaskedEq { mask, value } => {
            let ((ml, mh), (vl, vh)) = (split(mask), split(value));
            if wide {
                ins.push((ld(high), Exit::No));
                ins.push((and(mh), Exit::No));
                ins.push((jump(libc::BPF_JEQ, vh, 0, 0), Exit::OnFalse));
            }
            ins.push((ld(low), Exit::No));
            ins.push((and(ml), Exit::No));
            ins.push((jump(libc::BPF_JEQ, vl, 0, 0), Exit::OnFalse));
        }
        Op::Ne(v) => {
            let (vl, vh) = split(v);
            if wide {
                // Different high words: the check holds; skip the low word's test.
                ins.push((ld(high), Exit::No));
                ins.push((jump(libc::BPF_JEQ, vh, 0, 2), Exit::No));
            }
            ins.push((ld(low), Exit::No));
            ins.push((jump(libc::BPF_JEQ, vl, 0, 0), Exit::OnTrue));
        }
    }
}
