//! The DNS wire format (RFC 1035), as much as DNS-SD over unicast DNS (RFC 6763 §11) and
//! dynamic update (RFC 2136) need: names as lists of labels (an instance name may hold
//! dots, spaces and parentheses), messages written without compression, and messages read
//! from the network with every length checked against the bytes and compression pointers
//! followed backwards only, so that hostile input ends in an error, never a loop or panic.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Record types used here.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Pointer (DNS-SD: service type → instance).
    pub const PTR: u16 = 12;
    /// Text (DNS-SD: key=value pairs).
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service location.
    pub const SRV: u16 = 33;
    /// EDNS(0) pseudo-record.
    pub const OPT: u16 = 41;
    /// Transaction signature (RFC 8945).
    pub const TSIG: u16 = 250;
    /// Any type (queries; deletes in UPDATE).
    pub const ANY: u16 = 255;
}

/// Classes.
pub mod class {
    /// Internet.
    pub const IN: u16 = 1;
    /// UPDATE: "none" (prerequisite "not in use", delete one record).
    pub const NONE: u16 = 254;
    /// Any (TSIG; UPDATE deletes of whole sets).
    pub const ANY: u16 = 255;
}

/// Response codes.
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// Format error.
    pub const FORMERR: u8 = 1;
    /// Server failure.
    pub const SERVFAIL: u8 = 2;
    /// No such name.
    pub const NXDOMAIN: u8 = 3;
    /// Not implemented.
    pub const NOTIMP: u8 = 4;
    /// Refused.
    pub const REFUSED: u8 = 5;
    /// UPDATE: a name that should not exist does.
    pub const YXDOMAIN: u8 = 6;
    /// UPDATE: a set that should not exist does.
    pub const YXRRSET: u8 = 7;
    /// UPDATE: a set that should exist does not.
    pub const NXRRSET: u8 = 8;
    /// Not authoritative / not authorized (TSIG failures).
    pub const NOTAUTH: u8 = 9;
    /// A name outside the zone.
    pub const NOTZONE: u8 = 10;

    /// The mnemonic, for messages.
    pub fn name(code: u8) -> &'static str {
        match code {
            NOERROR => "NOERROR",
            FORMERR => "FORMERR",
            SERVFAIL => "SERVFAIL",
            NXDOMAIN => "NXDOMAIN",
            NOTIMP => "NOTIMP",
            REFUSED => "REFUSED",
            YXDOMAIN => "YXDOMAIN",
            YXRRSET => "YXRRSET",
            NXRRSET => "NXRRSET",
            NOTAUTH => "NOTAUTH",
            NOTZONE => "NOTZONE",
            _ => "an unknown code",
        }
    }
}

/// Opcodes.
pub mod opcode {
    /// A standard query.
    pub const QUERY: u8 = 0;
    /// Dynamic update.
    pub const UPDATE: u8 = 5;
}

/// Header flag: a response.
pub const FLAG_QR: u16 = 0x8000;
/// Header flag: truncated (retry over TCP).
pub const FLAG_TC: u16 = 0x0200;
/// Header flag: recursion desired.
pub const FLAG_RD: u16 = 0x0100;

/// Longest name on the wire (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;
/// Longest label.
pub const MAX_LABEL: usize = 63;

/// Why bytes are not a DNS message (or a name is not a DNS name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ends inside something.
    #[error("the message is cut short")]
    Truncated,
    /// A name is longer than 255 bytes or a label than 63.
    #[error("a name or label is too long")]
    TooLong,
    /// An empty label inside a name.
    #[error("a name has an empty label")]
    EmptyLabel,
    /// A compression pointer that does not point backwards.
    #[error("a compression pointer does not point backwards")]
    BadPointer,
    /// Label type 0x40 or 0x80 (obsolete extended labels).
    #[error("a label of an unknown kind")]
    BadLabel,
    /// A record's data does not match its type.
    #[error("a {0} record's data is malformed")]
    BadRdata(&'static str),
    /// Bytes after the last record.
    #[error("bytes after the last record")]
    Trailing,
}

/// A domain name: its labels, most specific first, without the root.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Name(Vec<Vec<u8>>);

impl Name {
    /// The root.
    pub fn root() -> Name {
        Name(Vec::new())
    }

    /// A dotted name (`lab.example`, a trailing dot allowed). No escapes: a label with a
    /// dot in it is made with [`Name::prepend`].
    pub fn parse(dotted: &str) -> Result<Name, WireError> {
        let t = dotted.strip_suffix('.').unwrap_or(dotted);
        if t.is_empty() {
            return Ok(Name::root());
        }
        let mut n = Name::root();
        for label in t.split('.') {
            n = n.append(label.as_bytes())?;
        }
        Ok(n)
    }

    fn append(mut self, label: &[u8]) -> Result<Name, WireError> {
        self.check(label)?;
        self.0.push(label.to_vec());
        Ok(self)
    }

    fn check(&self, label: &[u8]) -> Result<(), WireError> {
        if label.is_empty() {
            return Err(WireError::EmptyLabel);
        }
        if label.len() > MAX_LABEL || self.wire_len() + label.len() + 1 > MAX_NAME {
            return Err(WireError::TooLong);
        }
        Ok(())
    }

    /// `label.self`.
    pub fn prepend(&self, label: &[u8]) -> Result<Name, WireError> {
        self.check(label)?;
        let mut labels = Vec::with_capacity(self.0.len() + 1);
        labels.push(label.to_vec());
        labels.extend(self.0.iter().cloned());
        Ok(Name(labels))
    }

    /// The labels, most specific first.
    pub fn labels(&self) -> &[Vec<u8>] {
        &self.0
    }

    /// Bytes on the wire, uncompressed.
    pub fn wire_len(&self) -> usize {
        self.0.iter().map(|l| l.len() + 1).sum::<usize>() + 1
    }

    /// Equal, ignoring ASCII case (DNS names compare so).
    pub fn eq_ci(&self, other: &Name) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// `self` is `suffix` or below it, ignoring case.
    pub fn ends_with(&self, suffix: &Name) -> bool {
        let n = suffix.0.len();
        self.0.len() >= n && self.0[self.0.len() - n..].iter().zip(&suffix.0).all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// `self` without its last `suffix.labels().len()` labels, if it ends with `suffix`.
    pub fn strip_suffix(&self, suffix: &Name) -> Option<&[Vec<u8>]> {
        self.ends_with(suffix).then(|| &self.0[..self.0.len() - suffix.0.len()])
    }

    /// Writes the name uncompressed.
    pub fn write(&self, out: &mut Vec<u8>) {
        for l in &self.0 {
            out.push(l.len() as u8);
            out.extend_from_slice(l);
        }
        out.push(0);
    }

    /// Writes the name in canonical form (lower case; RFC 4034 §6.2), as TSIG signs it.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        for l in &self.0 {
            out.push(l.len() as u8);
            out.extend(l.iter().map(u8::to_ascii_lowercase));
        }
        out.push(0);
    }
}

/// Presentation form: labels joined by dots; dots and backslashes inside a label escaped
/// (`\.`, `\\`), other bytes outside printable ASCII as `\DDD`.
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(&label_text(l))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

/// One label in presentation form (see [`Name`]'s `Display`).
pub fn label_text(l: &[u8]) -> String {
    let mut s = String::with_capacity(l.len());
    for &b in l {
        match b {
            b'.' | b'\\' => {
                s.push('\\');
                s.push(b as char);
            }
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03}")),
        }
    }
    s
}

/// A record's data, for the types read and written here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// A name.
    Ptr(Name),
    /// Service location.
    Srv {
        /// Priority.
        priority: u16,
        /// Weight.
        weight: u16,
        /// Port.
        port: u16,
        /// Host.
        target: Name,
    },
    /// Character strings.
    Txt(Vec<Vec<u8>>),
    /// Any other type, as bytes (names inside left compressed: not to be re-sent).
    Other(Vec<u8>),
    /// No data (UPDATE deletes and prerequisites).
    Empty,
}

/// A resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Owner.
    pub name: Name,
    /// Type.
    pub rtype: u16,
    /// Class.
    pub class: u16,
    /// Time to live.
    pub ttl: u32,
    /// Data.
    pub data: RData,
}

impl Record {
    /// A record of class IN.
    pub fn new(name: Name, ttl: u32, data: RData) -> Record {
        let rtype = match &data {
            RData::A(_) => rtype::A,
            RData::Aaaa(_) => rtype::AAAA,
            RData::Ptr(_) => rtype::PTR,
            RData::Srv { .. } => rtype::SRV,
            RData::Txt(_) => rtype::TXT,
            RData::Other(_) | RData::Empty => 0,
        };
        Record { name, rtype, class: class::IN, ttl, data }
    }

    fn write(&self, out: &mut Vec<u8>) {
        self.name.write(out);
        out.extend_from_slice(&self.rtype.to_be_bytes());
        out.extend_from_slice(&self.class.to_be_bytes());
        out.extend_from_slice(&self.ttl.to_be_bytes());
        let at = out.len();
        out.extend_from_slice(&[0, 0]);
        match &self.data {
            RData::A(a) => out.extend_from_slice(&a.octets()),
            RData::Aaaa(a) => out.extend_from_slice(&a.octets()),
            RData::Ptr(n) => n.write(out),
            RData::Srv { priority, weight, port, target } => {
                for v in [priority, weight, port] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                target.write(out);
            }
            RData::Txt(strings) => {
                for s in strings {
                    let s = &s[..s.len().min(255)];
                    out.push(s.len() as u8);
                    out.extend_from_slice(s);
                }
            }
            RData::Other(b) => out.extend_from_slice(b),
            RData::Empty => {}
        }
        let len = (out.len() - at - 2) as u16;
        out[at..at + 2].copy_from_slice(&len.to_be_bytes());
    }
}

/// A question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Name asked about (UPDATE: the zone).
    pub name: Name,
    /// Type.
    pub qtype: u16,
    /// Class.
    pub qclass: u16,
}

/// Where a message's TSIG record began, and what it said (see `tsig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Offset of the TSIG record in the message.
    pub start: usize,
    /// Its owner: the key's name.
    pub key: Name,
    /// Its data, uncompressed (RFC 8945 forbids compressing it).
    pub rdata: Vec<u8>,
}

/// A message. In an UPDATE, `questions` is the zone section, `answers` the
/// prerequisites and `authority` the updates (RFC 2136 §2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Id.
    pub id: u16,
    /// Flags (opcode and rcode included).
    pub flags: u16,
    /// Question (zone) section.
    pub questions: Vec<Question>,
    /// Answer (prerequisite) section.
    pub answers: Vec<Record>,
    /// Authority (update) section.
    pub authority: Vec<Record>,
    /// Additional section, without a TSIG record.
    pub additional: Vec<Record>,
    /// A TSIG record that ended the message, if any.
    pub signed: Option<Signed>,
}

impl Message {
    /// A query for `name`/`qtype`, recursion desired, with an EDNS(0) record offering
    /// 4096-byte answers.
    pub fn query(id: u16, name: Name, qtype: u16) -> Message {
        let opt = Record { name: Name::root(), rtype: rtype::OPT, class: 4096, ttl: 0, data: RData::Empty };
        Message {
            id,
            flags: FLAG_RD,
            questions: vec![Question { name, qtype, qclass: class::IN }],
            additional: vec![opt],
            ..Message::default()
        }
    }

    /// An UPDATE of `zone`.
    pub fn update(id: u16, zone: Name, prerequisites: Vec<Record>, updates: Vec<Record>) -> Message {
        Message {
            id,
            flags: u16::from(opcode::UPDATE) << 11,
            questions: vec![Question { name: zone, qtype: rtype::SOA, qclass: class::IN }],
            answers: prerequisites,
            authority: updates,
            ..Message::default()
        }
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    /// The response code (its low four bits; extended codes live in OPT and TSIG).
    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }

    /// Whether the answer was cut (retry over TCP).
    pub fn truncated(&self) -> bool {
        self.flags & FLAG_TC != 0
    }

    /// Whether it is a response.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }

    /// The message on the wire, uncompressed and unsigned (`signed` is not written: TSIG
    /// is appended by `tsig::sign`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        for n in [self.questions.len(), self.answers.len(), self.authority.len(), self.additional.len()] {
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        for q in &self.questions {
            q.name.write(&mut out);
            out.extend_from_slice(&q.qtype.to_be_bytes());
            out.extend_from_slice(&q.qclass.to_be_bytes());
        }
        for r in self.answers.iter().chain(&self.authority).chain(&self.additional) {
            r.write(&mut out);
        }
        out
    }

    /// Reads a message. A TSIG record is accepted only as the very last record.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader { msg: bytes, pos: 0 };
        let id = r.u16()?;
        let flags = r.u16()?;
        let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
        let mut m = Message { id, flags, ..Message::default() };
        for _ in 0..counts[0] {
            let name = r.name()?;
            m.questions.push(Question { name, qtype: r.u16()?, qclass: r.u16()? });
        }
        let total = counts[1] as usize + counts[2] as usize + counts[3] as usize;
        for i in 0..total {
            let start = r.pos;
            let (rec, raw) = r.record()?;
            if rec.rtype == rtype::TSIG {
                if i + 1 != total || rec.class != class::ANY {
                    return Err(WireError::BadRdata("TSIG"));
                }
                m.signed = Some(Signed { start, key: rec.name, rdata: raw.to_vec() });
                continue;
            }
            if i < counts[1] as usize {
                m.answers.push(rec);
            } else if i < counts[1] as usize + counts[2] as usize {
                m.authority.push(rec);
            } else {
                m.additional.push(rec);
            }
        }
        if r.pos != bytes.len() {
            return Err(WireError::Trailing);
        }
        Ok(m)
    }
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.msg.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A name at the current position (compression pointers followed).
    fn name(&mut self) -> Result<Name, WireError> {
        let (name, next) = read_name(self.msg, self.pos)?;
        self.pos = next;
        Ok(name)
    }

    fn record(&mut self) -> Result<(Record, &'a [u8]), WireError> {
        let name = self.name()?;
        let (rtype, class, ttl) = (self.u16()?, self.u16()?, self.u32()?);
        let len = self.u16()? as usize;
        let start = self.pos;
        let raw = self.take(len)?;
        let end = self.pos;
        let data = match rtype {
            _ if len == 0 => RData::Empty,
            rtype::A => RData::A(Ipv4Addr::from(<[u8; 4]>::try_from(raw).map_err(|_| WireError::BadRdata("A"))?)),
            rtype::AAAA => {
                RData::Aaaa(Ipv6Addr::from(<[u8; 16]>::try_from(raw).map_err(|_| WireError::BadRdata("AAAA"))?))
            }
            rtype::PTR => {
                let (n, next) = read_name(&self.msg[..end], start)?;
                if next != end {
                    return Err(WireError::BadRdata("PTR"));
                }
                RData::Ptr(n)
            }
            rtype::SRV => {
                if len < 7 {
                    return Err(WireError::BadRdata("SRV"));
                }
                let v = |i: usize| u16::from_be_bytes([raw[i], raw[i + 1]]);
                let (target, next) = read_name(&self.msg[..end], start + 6)?;
                if next != end {
                    return Err(WireError::BadRdata("SRV"));
                }
                RData::Srv { priority: v(0), weight: v(2), port: v(4), target }
            }
            rtype::TXT => {
                let mut strings = Vec::new();
                let mut i = 0;
                while i < raw.len() {
                    let n = raw[i] as usize;
                    let s = raw.get(i + 1..i + 1 + n).ok_or(WireError::BadRdata("TXT"))?;
                    strings.push(s.to_vec());
                    i += 1 + n;
                }
                RData::Txt(strings)
            }
            _ => RData::Other(raw.to_vec()),
        };
        Ok((Record { name, rtype, class, ttl, data }, raw))
    }
}

/// Reads the name at `pos` of `msg`; returns it and where the bytes after it begin.
/// Pointers must point strictly before the pointer itself, which bounds the walk.
fn read_name(msg: &[u8], mut pos: usize) -> Result<(Name, usize), WireError> {
    let mut labels: Vec<Vec<u8>> = Vec::new();
    let mut wire = 1usize;
    let mut after: Option<usize> = None;
    loop {
        let len = *msg.get(pos).ok_or(WireError::Truncated)? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((Name(labels), after.unwrap_or(pos + 1)));
            }
            0x00 => {
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(WireError::Truncated)?;
                wire += len + 1;
                if wire > MAX_NAME {
                    return Err(WireError::TooLong);
                }
                labels.push(label.to_vec());
                pos += 1 + len;
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(WireError::Truncated)? as usize;
                let target = ((len & 0x3f) << 8) | low;
                if target >= pos {
                    return Err(WireError::BadPointer);
                }
                after.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(WireError::BadLabel),
        }
    }
}

/// A name in a TSIG record's data at `pos` (uncompressed there: RFC 8945 §4.2), and the
/// position after it.
pub fn read_plain_name(data: &[u8], pos: usize) -> Result<(Name, usize), WireError> {
    let mut labels = Vec::new();
    let mut p = pos;
    loop {
        let len = *data.get(p).ok_or(WireError::Truncated)? as usize;
        if len == 0 {
            return Ok((Name(labels), p + 1));
        }
        if len > MAX_LABEL {
            return Err(WireError::BadLabel);
        }
        labels.push(data.get(p + 1..p + 1 + len).ok_or(WireError::Truncated)?.to_vec());
        p += 1 + len;
        if p - pos + 1 > MAX_NAME {
            return Err(WireError::TooLong);
        }
    }
}

/// The TXT strings of `key=value` pairs.
pub fn txt_strings(pairs: &[(String, String)]) -> Vec<Vec<u8>> {
    pairs.iter().map(|(k, v)| format!("{k}={v}").into_bytes()).collect()
}

/// `key=value` pairs of TXT strings (a string without `=` is a key with an empty value;
/// the first occurrence of a key wins, as RFC 6763 §6.4 says).
pub fn txt_pairs(strings: &[Vec<u8>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for s in strings {
        let s = String::from_utf8_lossy(s);
        let (k, v) = s.split_once('=').unwrap_or((&s, ""));
        if k.is_empty() || out.iter().any(|(have, _)| have.eq_ignore_ascii_case(k)) {
            continue;
        }
        out.push((k.to_string(), v.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn names_are_labels_and_print_escaped() {
        let svc = n("_mydebug._tcp.lab.example.");
        let inst = svc.prepend(b"twin rig (2).v1").unwrap();
        assert_eq!(inst.labels().len(), 5);
        assert_eq!(inst.to_string(), "twin rig (2)\\.v1._mydebug._tcp.lab.example");
        assert!(inst.ends_with(&n("LAB.example")));
        assert_eq!(inst.strip_suffix(&svc).unwrap(), &[b"twin rig (2).v1".to_vec()]);
        assert!(n("a.B").eq_ci(&n("A.b")));
        assert_eq!(Name::parse("a..b"), Err(WireError::EmptyLabel));
        assert_eq!(Name::parse(&"x".repeat(64)), Err(WireError::TooLong));
        let long = vec!["x".repeat(63); 4].join(".");
        assert_eq!(Name::parse(&long), Err(WireError::TooLong), "256 bytes on the wire");
        assert_eq!(Name::root().to_string(), ".");
    }

    #[test]
    fn messages_round_trip() {
        let name = n("i._mydebug._tcp.lab.example");
        let m = Message {
            id: 7,
            flags: FLAG_QR,
            questions: vec![Question { name: name.clone(), qtype: rtype::ANY, qclass: class::IN }],
            answers: vec![
                Record::new(name.clone(), 60, RData::Srv { priority: 0, weight: 0, port: 4444, target: n("h.lab") }),
                Record::new(name.clone(), 60, RData::Txt(vec![b"txtvers=1".to_vec(), b"".to_vec()])),
                Record::new(n("h.lab"), 60, RData::A(Ipv4Addr::new(10, 77, 0, 1))),
                Record::new(n("h.lab"), 60, RData::Aaaa(Ipv6Addr::LOCALHOST)),
                Record::new(n("_mydebug._tcp.lab"), 60, RData::Ptr(name.clone())),
            ],
            authority: vec![Record {
                name: name.clone(),
                rtype: rtype::ANY,
                class: class::ANY,
                ttl: 0,
                data: RData::Empty,
            }],
            additional: vec![Record { name: n("x"), rtype: 99, class: 1, ttl: 5, data: RData::Other(vec![1, 2, 3]) }],
            signed: None,
        };
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    /// A response as a real server writes it, with compression pointers.
    #[test]
    fn compressed_names_are_followed() {
        let mut b = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        n("_mydebug._tcp.lab.example").write(&mut b); // at 12
        b.extend_from_slice(&[0, 12, 0, 1]);
        b.extend_from_slice(&[0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 60]);
        let rdata = [&[3u8, b'r', b'i', b'g'][..], &[0xc0, 12]].concat();
        b.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        b.extend_from_slice(&rdata);
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.rcode(), rcode::NOERROR);
        assert_eq!(m.answers[0].name, n("_mydebug._tcp.lab.example"));
        assert_eq!(m.answers[0].data, RData::Ptr(n("rig._mydebug._tcp.lab.example")));
    }

    #[test]
    fn hostile_messages_are_errors() {
        // A pointer to itself, and one forwards.
        let mut b = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(Message::decode(&b), Err(WireError::BadPointer));
        b[13] = 14;
        assert_eq!(Message::decode(&b), Err(WireError::BadPointer));
        // A pointer to a pointer to a label (both backwards) is fine.
        let mut ok = vec![0, 1, 0x81, 0x80, 0, 3, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1];
        ok.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0xc0, 19, 0, 1, 0, 1]);
        assert_eq!(Message::decode(&ok).unwrap().questions[2].name, n("a"));
        // Counts beyond the bytes, a cut header, an extended label, trailing bytes.
        assert_eq!(Message::decode(&[0, 1, 0x81, 0x80, 0xff, 0xff, 0, 0, 0, 0, 0, 0]), Err(WireError::Truncated));
        assert_eq!(Message::decode(&[0, 1, 0x81]), Err(WireError::Truncated));
        assert_eq!(
            Message::decode(&[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 1, 0, 1]),
            Err(WireError::BadLabel)
        );
        assert_eq!(Message::decode(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]), Err(WireError::Trailing));
        // A name of more than 255 bytes made of pointers to long labels.
        let mut big = vec![0, 1, 0x81, 0x80, 0, 2, 0, 0, 0, 0, 0, 0];
        let l = "y".repeat(63);
        big.push(63);
        big.extend_from_slice(l.as_bytes());
        big.extend_from_slice(&[0, 0, 1, 0, 1]);
        for _ in 0..4 {
            big.push(63);
            big.extend_from_slice(l.as_bytes());
        }
        big.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(Message::decode(&big), Err(WireError::TooLong));
        // Record data of the wrong size, a TXT string running past its record, a TSIG
        // record that is not last.
        let rec = |t: u16, data: &[u8]| {
            let mut b = vec![0, 1, 0x81, 0x80, 0, 0, 0, 2, 0, 0, 0, 0];
            for _ in 0..2 {
                b.extend_from_slice(&[0]);
                b.extend_from_slice(&t.to_be_bytes());
                b.extend_from_slice(&[0, 255, 0, 0, 0, 0]);
                b.extend_from_slice(&(data.len() as u16).to_be_bytes());
                b.extend_from_slice(data);
            }
            b
        };
        assert_eq!(Message::decode(&rec(rtype::A, &[1, 2, 3])), Err(WireError::BadRdata("A")));
        assert_eq!(Message::decode(&rec(rtype::TXT, &[5, b'a'])), Err(WireError::BadRdata("TXT")));
        assert_eq!(
            Message::decode(&rec(rtype::SRV, &[0, 0, 0, 0, 0, 1, 1, b'a', 0, 9])),
            Err(WireError::BadRdata("SRV"))
        );
        assert_eq!(Message::decode(&rec(rtype::TSIG, &[0])), Err(WireError::BadRdata("TSIG")));
        // A PTR whose name runs out of its record into the next one.
        assert!(Message::decode(&rec(rtype::PTR, &[3, b'a'])).is_err());
    }

    #[test]
    fn txt_pairs_follow_rfc_6763() {
        let s = vec![b"txtvers=1".to_vec(), b"flag".to_vec(), b"TXTVERS=2".to_vec(), b"=x".to_vec(), b"a=b=c".to_vec()];
        let p = txt_pairs(&s);
        assert_eq!(p, vec![("txtvers".into(), "1".into()), ("flag".into(), "".into()), ("a".into(), "b=c".into())]);
        assert_eq!(txt_strings(&p[..1]), vec![b"txtvers=1".to_vec()]);
    }
}
