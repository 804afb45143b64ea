//! TSIG (RFC 8945): signing DNS UPDATE messages with a shared key and checking the
//! server's signed answer. HMAC-SHA256/384/512 (HMAC-MD5 and SHA-1 are not offered).
//! Key files as BIND's `tsig-keygen` and Knot's `keymgr -t` write them, or nsupdate's
//! one-line `ALGORITHM:NAME:SECRET`.

use crate::dns::{class, read_plain_name, rtype, Message, Name, Signed};
use hmac::{Hmac, Mac};
use std::path::Path;

/// How far our clock and the server's may differ, in seconds.
pub const FUDGE: u16 = 300;

/// Response errors TSIG itself reports (RFC 8945 §5.3).
const BADSIG: u16 = 16;
const BADKEY: u16 = 17;
const BADTIME: u16 = 18;
const BADTRUNC: u16 = 22;

/// A MAC algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// hmac-sha256.
    Sha256,
    /// hmac-sha384.
    Sha384,
    /// hmac-sha512.
    Sha512,
}

impl Algorithm {
    fn from_text(s: &str) -> Option<Algorithm> {
        match s.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(Algorithm::Sha256),
            "hmac-sha384" => Some(Algorithm::Sha384),
            "hmac-sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// Its name in TSIG records.
    pub fn name(self) -> Name {
        Name::parse(match self {
            Algorithm::Sha256 => "hmac-sha256",
            Algorithm::Sha384 => "hmac-sha384",
            Algorithm::Sha512 => "hmac-sha512",
        })
        .expect("literal name")
    }

    fn mac(self, secret: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(secret: &[u8], data: &[u8]) -> Vec<u8> {
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(secret, data),
            Algorithm::Sha384 => run::<Hmac<sha2::Sha384>>(secret, data),
            Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(secret, data),
        }
    }
}

/// A shared key.
#[derive(Clone)]
pub struct Key {
    /// Its name (the TSIG record's owner).
    pub name: Name,
    /// The algorithm.
    pub algorithm: Algorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("name", &self.name).field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl Key {
    /// A key from its parts.
    pub fn new(name: Name, algorithm: Algorithm, secret: Vec<u8>) -> Key {
        Key { name, algorithm, secret }
    }

    /// Reads a key file, refusing one that group or others may read (like ssh keys).
    pub fn load(path: &Path) -> Result<Key, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "{} holds a TSIG key but is readable by group or others (mode {:o}): run chmod 600 on it",
                path.display(),
                meta.mode() & 0o777
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Key::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses BIND's `key "NAME" { algorithm ALG; secret "BASE64"; };`, Knot's
    /// `key: - id: NAME / algorithm: ALG / secret: BASE64`, or `ALG:NAME:BASE64`.
    pub fn parse(text: &str) -> Result<Key, String> {
        let (mut name, mut alg, mut secret) = (None, None, None);
        let t = text.trim();
        if !t.contains(['{', '\n', ' ']) && t.matches(':').count() == 2 {
            let mut it = t.splitn(3, ':');
            alg = it.next().map(str::to_string);
            name = it.next().map(str::to_string);
            secret = it.next().map(str::to_string);
        } else {
            // A tolerant tokenizer for both formats: words, quoted strings, and the
            // punctuation that separates them.
            let words: Vec<String> = tokens(t);
            let mut i = 0;
            while i < words.len() {
                let w = words[i].trim_end_matches(':').to_ascii_lowercase();
                let next = words.get(i + 1).cloned();
                match w.as_str() {
                    "key" | "id" if next.as_deref().is_some_and(|n| n != "-" && !n.is_empty()) => {
                        if name.is_some() && w == "key" {
                            return Err("more than one key in the file".into());
                        }
                        name = next;
                        i += 1;
                    }
                    "algorithm" => {
                        alg = next;
                        i += 1;
                    }
                    "secret" => {
                        secret = next;
                        i += 1;
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        let name = name.ok_or("no key name")?;
        let alg = alg.ok_or("no algorithm")?;
        let algorithm = Algorithm::from_text(&alg)
            .ok_or_else(|| format!("algorithm {alg:?} is not offered (hmac-sha256, hmac-sha384, hmac-sha512)"))?;
        let secret = proto::base64::decode(secret.ok_or("no secret")?.trim()).ok_or("the secret is not base64")?;
        if secret.len() < 16 {
            return Err(format!("the secret is {} bytes: want at least 16", secret.len()));
        }
        let name = Name::parse(&name).map_err(|e| format!("key name {name:?}: {e}"))?;
        Ok(Key { name, algorithm, secret })
    }
}

fn tokens(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = t.as_bytes();
    let mut i = 0;
    let stop = |c: u8| c.is_ascii_whitespace() || matches!(c, b'{' | b'}' | b';' | b'"');
    while i < b.len() {
        if b[i] == b'#' || b[i..].starts_with(b"//") {
            // A comment runs to the end of the line.
            i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
        } else if b[i] == b'"' {
            let end = b[i + 1..].iter().position(|&c| c == b'"').map_or(b.len(), |n| i + 1 + n);
            out.push(t[i + 1..end].to_string());
            i = end + 1;
        } else if stop(b[i]) {
            i += 1;
        } else {
            let end = b[i..].iter().position(|&c| stop(c)).map_or(b.len(), |n| i + n);
            out.push(t[i..end].to_string());
            i = end;
        }
    }
    out
}

/// The TSIG variables after the message (RFC 8945 §4.3.3).
fn variables(key: &Key, time: u64, fudge: u16, error: u16, other: &[u8], out: &mut Vec<u8>) {
    key.name.write_canonical(out);
    out.extend_from_slice(&class::ANY.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    key.algorithm.name().write_canonical(out);
    out.extend_from_slice(&time.to_be_bytes()[2..]);
    out.extend_from_slice(&fudge.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(other.len() as u16).to_be_bytes());
    out.extend_from_slice(other);
}

/// Signs an encoded message in place (appends the TSIG record, counts it in ARCOUNT);
/// returns the MAC, which the answer's signature covers.
pub fn sign(wire: &mut Vec<u8>, key: &Key, time: u64) -> Vec<u8> {
    let mut data = wire.clone();
    variables(key, time, FUDGE, 0, &[], &mut data);
    let mac = key.algorithm.mac(&key.secret, &data);
    let id = [wire[0], wire[1]];
    key.name.write(wire);
    wire.extend_from_slice(&rtype::TSIG.to_be_bytes());
    wire.extend_from_slice(&class::ANY.to_be_bytes());
    wire.extend_from_slice(&0u32.to_be_bytes());
    let mut rdata = Vec::with_capacity(64 + mac.len());
    key.algorithm.name().write(&mut rdata);
    rdata.extend_from_slice(&time.to_be_bytes()[2..]);
    rdata.extend_from_slice(&FUDGE.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&mac);
    rdata.extend_from_slice(&id);
    rdata.extend_from_slice(&[0, 0, 0, 0]);
    wire.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    wire.extend_from_slice(&rdata);
    let arcount = u16::from_be_bytes([wire[10], wire[11]]) + 1;
    wire[10..12].copy_from_slice(&arcount.to_be_bytes());
    mac
}

/// The fields of a TSIG record's data.
#[derive(Debug, PartialEq, Eq)]
struct Fields {
    algorithm: Name,
    time: u64,
    fudge: u16,
    mac: Vec<u8>,
    original_id: u16,
    error: u16,
    other: Vec<u8>,
}

fn fields(s: &Signed) -> Option<Fields> {
    let d = &s.rdata;
    let (algorithm, mut p) = read_plain_name(d, 0).ok()?;
    let take = |p: &mut usize, n: usize| -> Option<&[u8]> {
        let s = d.get(*p..p.checked_add(n)?)?;
        *p += n;
        Some(s)
    };
    let u16_at = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let t = take(&mut p, 6)?;
    let time = t.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
    let fudge = u16_at(take(&mut p, 2)?);
    let mac_len = u16_at(take(&mut p, 2)?) as usize;
    let mac = take(&mut p, mac_len)?.to_vec();
    let original_id = u16_at(take(&mut p, 2)?);
    let error = u16_at(take(&mut p, 2)?);
    let other_len = u16_at(take(&mut p, 2)?) as usize;
    let other = take(&mut p, other_len)?.to_vec();
    (p == d.len()).then_some(Fields { algorithm, time, fudge, mac, original_id, error, other })
}

/// Checks the signature of an answer (`wire`, decoded as `msg`) to a request signed
/// with `request_mac`. An unsigned answer is refused: with TSIG, a forged "NOERROR"
/// would otherwise be believed.
pub fn verify(wire: &[u8], msg: &Message, key: &Key, request_mac: &[u8], now: u64) -> Result<(), String> {
    let Some(s) = &msg.signed else {
        return Err(format!("the server's answer ({}) is not signed", crate::dns::rcode::name(msg.rcode())));
    };
    let f = fields(s).ok_or("the server's TSIG record is malformed")?;
    match f.error {
        0 => {}
        BADKEY => return Err(format!("the server does not know the key {} (TSIG BADKEY)", key.name)),
        BADSIG => {
            return Err(format!(
                "the server refused the signature made with the key {} (TSIG BADSIG: is the secret right?)",
                key.name
            ))
        }
        BADTIME => return Err("the server's clock and ours differ by more than 5 minutes (TSIG BADTIME)".into()),
        BADTRUNC => return Err("the server refused a truncated MAC (TSIG BADTRUNC)".into()),
        e => return Err(format!("the server answered with TSIG error {e}")),
    }
    if !s.key.eq_ci(&key.name) || !f.algorithm.eq_ci(&key.algorithm.name()) {
        return Err(format!("the server signed with another key ({} {})", s.key, f.algorithm));
    }
    if now.abs_diff(f.time) > u64::from(f.fudge) {
        return Err(
            "the server's signature is too old or from the future (clocks differ by more than its fudge)".into()
        );
    }
    // The signed bytes: the request's MAC, the answer without its TSIG record (ARCOUNT
    // one less, the original id), then the variables.
    let mut data = Vec::with_capacity(request_mac.len() + s.start + 128);
    data.extend_from_slice(&(request_mac.len() as u16).to_be_bytes());
    data.extend_from_slice(request_mac);
    let at = data.len();
    data.extend_from_slice(&wire[..s.start]);
    data[at..at + 2].copy_from_slice(&f.original_id.to_be_bytes());
    let arcount = u16::from_be_bytes([data[at + 10], data[at + 11]]).wrapping_sub(1);
    data[at + 10..at + 12].copy_from_slice(&arcount.to_be_bytes());
    let mut vars = Vec::new();
    variables(key, f.time, f.fudge, f.error, &f.other, &mut vars);
    data.extend_from_slice(&vars);
    let want = key.algorithm.mac(&key.secret, &data);
    // Constant time is moot for a check of the server's answer, but cheap.
    let same = want.len() == f.mac.len() && want.iter().zip(&f.mac).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
    if !same {
        return Err("the server's answer carries a wrong signature (TSIG)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{RData, Record};

    fn key() -> Key {
        Key::parse(
            "key \"rig-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0IHNlY3JldCBzZWNyZXQhIQ==\";\n};\n",
        )
        .unwrap()
    }

    #[test]
    fn key_files_in_three_formats() {
        let k = key();
        assert_eq!(k.name.to_string(), "rig-update");
        assert_eq!(k.algorithm, Algorithm::Sha256);
        let knot =
            "key:\n  - id: rig-update\n    algorithm: hmac-sha512\n    secret: c2VjcmV0IHNlY3JldCBzZWNyZXQhIQ==\n";
        assert_eq!(Key::parse(knot).unwrap().algorithm, Algorithm::Sha512);
        let one = Key::parse("hmac-sha384:rig-update:c2VjcmV0IHNlY3JldCBzZWNyZXQhIQ==").unwrap();
        assert_eq!((one.name.to_string().as_str(), one.algorithm), ("rig-update", Algorithm::Sha384));
        assert!(format!("{k:?}").find("c2Vj").is_none(), "the secret is never printed");
        for (bad, why) in [
            ("hmac-md5:k:c2VjcmV0IHNlY3JldCBzZWNyZXQhIQ==", "not offered"),
            ("hmac-sha256:k:!!!", "base64"),
            ("hmac-sha256:k:c2hvcnQ=", "at least 16"),
            ("key \"k\" { algorithm hmac-sha256; };", "no secret"),
            ("", "no key name"),
            ("key \"a\" { }; key \"b\" { };", "more than one"),
        ] {
            let e = Key::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    /// The request as we sign it verifies as an answer would (the same computation run
    /// from the server's side), and any flipped byte breaks it.
    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let k = key();
        let zone = Name::parse("lab.example").unwrap();
        let rec = Record::new(zone.prepend(b"x").unwrap(), 60, RData::Txt(vec![b"a=b".to_vec()]));
        let mut request = Message::update(0x1234, zone.clone(), vec![], vec![rec]).encode();
        let request_mac = sign(&mut request, &k, 1_700_000_000);
        assert_eq!(Message::decode(&request).unwrap().signed.unwrap().key, k.name);
        // A server's answer: its own message, signed over the request MAC.
        let answer = |tamper: Option<usize>, time: u64, k: &Key| {
            let mut m = Message::update(0x1234, zone.clone(), vec![], vec![]);
            m.flags |= crate::dns::FLAG_QR;
            let mut wire = m.encode();
            let mut data = (request_mac.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&request_mac);
            data.extend_from_slice(&wire);
            variables(k, time, FUDGE, 0, &[], &mut data);
            let mac = k.algorithm.mac(&k.secret, &data);
            k.name.write(&mut wire);
            wire.extend_from_slice(&[0, 250, 0, 255, 0, 0, 0, 0]);
            let mut rd = Vec::new();
            k.algorithm.name().write(&mut rd);
            rd.extend_from_slice(&time.to_be_bytes()[2..]);
            rd.extend_from_slice(&FUDGE.to_be_bytes());
            rd.extend_from_slice(&(mac.len() as u16).to_be_bytes());
            rd.extend_from_slice(&mac);
            rd.extend_from_slice(&[0x12, 0x34, 0, 0, 0, 0]);
            wire.extend_from_slice(&(rd.len() as u16).to_be_bytes());
            wire.extend_from_slice(&rd);
            wire[11] += 1;
            if let Some(i) = tamper {
                wire[i] ^= 1;
            }
            wire
        };
        let good = answer(None, 1_700_000_010, &k);
        verify(&good, &Message::decode(&good).unwrap(), &k, &request_mac, 1_700_000_020).unwrap();
        let flipped = answer(Some(3), 1_700_000_010, &k);
        let e = verify(&flipped, &Message::decode(&flipped).unwrap(), &k, &request_mac, 1_700_000_020).unwrap_err();
        assert!(e.contains("wrong signature"), "{e}");
        let e = verify(&good, &Message::decode(&good).unwrap(), &k, &request_mac, 1_700_009_999).unwrap_err();
        assert!(e.contains("too old"), "{e}");
        let other = Key::new(k.name.clone(), Algorithm::Sha256, b"another secret of 16+ bytes".to_vec());
        let e = verify(&good, &Message::decode(&good).unwrap(), &other, &request_mac, 1_700_000_020).unwrap_err();
        assert!(e.contains("wrong signature"), "{e}");
        let unsigned = Message::update(1, zone, vec![], vec![]);
        let e = verify(&unsigned.encode(), &unsigned, &k, &request_mac, 0).unwrap_err();
        assert!(e.contains("not signed"), "{e}");
    }
}
