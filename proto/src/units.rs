//! Numbers people type: byte counts with binary suffixes (`512M`, `2G`), durations in
//! seconds (`90`, `90s`, `5m`, `2h`) and fractions of CPUs (`0.5`, `1.5`). The daemon's flags and `lantern --limit` read them
//! with the same functions, so a value means the same on both sides.

/// Why a number was not understood (the message names the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

/// Parses `123`, `64K`, `512M`, `1G`, `2T` (binary multiples; an optional trailing `B` or
/// `iB`, any case).
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix("ib")).unwrap_or(t);
    let t = if t.len() > 1 { t.strip_suffix(['B', 'b']).unwrap_or(t) } else { t };
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(UnitError(format!("{s:?}: unknown unit {c:?} (use K, M, G or T)"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let num = num.trim();
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UnitError(format!("{s:?} is not a byte count like 512M")));
    }
    let n: u64 = num.parse().map_err(|_| UnitError(format!("{s:?} is too large")))?;
    n.checked_mul(mult).ok_or_else(|| UnitError(format!("{s:?} is too large")))
}

/// Parses seconds: `90`, `90s`, `5m`, `2h`, `1d`.
pub fn parse_seconds(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return Err(UnitError(format!("{s:?}: unknown unit {c:?} (use s, m, h or d)"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UnitError(format!("{s:?} is not a number of seconds like 90 or 5m")));
    }
    let n: u64 = num.parse().map_err(|_| UnitError(format!("{s:?} is too large")))?;
    n.checked_mul(mult).ok_or_else(|| UnitError(format!("{s:?} is too large")))
}

/// Parses a plain count (`64`).
pub fn parse_count(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UnitError(format!("{s:?} is not a number")));
    }
    t.parse().map_err(|_| UnitError(format!("{s:?} is too large")))
}

/// The most CPUs a limit may name (a sanity bound, far above any rig).
pub const MAX_CPUS: u64 = 4096;

/// Parses a number of CPUs (`0.5`, `1.5`, `2`; at most three decimals; `0` = none) into
/// thousandths of a CPU.
pub fn parse_cpus(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let bad = || UnitError(format!("{s:?} is not a number of CPUs (like 0.5, 1.5 or 2)"));
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 3 {
        return Err(UnitError(format!("{s:?}: CPUs take at most three decimals")));
    }
    let whole: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
    if whole > MAX_CPUS {
        return Err(UnitError(format!("{s:?} is more than {MAX_CPUS} CPUs")));
    }
    let milli: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    Ok(whole * 1000 + milli)
}

/// Thousandths of a CPU as people write them: `0.5`, `1.5`, `2`.
pub fn show_cpus(milli: u64) -> String {
    let (w, f) = (milli / 1000, milli % 1000);
    if f == 0 {
        w.to_string()
    } else {
        format!("{w}.{}", format!("{f:03}").trim_end_matches('0'))
    }
}

/// A number of CPUs in thousandths; on the wire a JSON number of CPUs (`0.5`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct MilliCpus(pub u64);

impl serde::Serialize for MilliCpus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0 as f64 / 1000.0)
    }
}

impl<'de> serde::Deserialize<'de> for MilliCpus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v < 0.0 || v > MAX_CPUS as f64 {
            return Err(serde::de::Error::custom(format!("cpus {v} is not between 0 and {MAX_CPUS}")));
        }
        let milli = (v * 1000.0).round();
        if (milli - v * 1000.0).abs() > 1e-6 {
            return Err(serde::de::Error::custom(format!("cpus {v}: at most three decimals")));
        }
        Ok(MilliCpus(milli as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus("1.5"), Ok(1500));
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert_eq!(parse_cpus(".25"), Ok(250));
        assert_eq!(parse_cpus("0.125"), Ok(125));
        assert_eq!(parse_cpus("0"), Ok(0));
        for bad in ["", ".", "-1", "1.2345", "1e3", "0x2", "one", "99999"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
        for m in [0, 1, 125, 500, 1000, 1500, 2250] {
            assert_eq!(parse_cpus(&show_cpus(m)), Ok(m), "{m}");
        }
        let v: MilliCpus = serde_json::from_str("0.5").unwrap();
        assert_eq!(v, MilliCpus(500));
        assert_eq!(serde_json::to_string(&MilliCpus(1500)).unwrap(), "1.5");
        for bad in ["-0.5", "0.0001", "1e9", "\"1\""] {
            assert!(serde_json::from_str::<MilliCpus>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("2GB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1T"), Ok(1 << 40));
        for bad in ["", "G", "-1", "1.5G", "2X", "99999999999T", "1 2"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn seconds_and_counts() {
        assert_eq!(parse_seconds("90"), Ok(90));
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert_eq!(parse_seconds("5m"), Ok(300));
        assert_eq!(parse_seconds("2h"), Ok(7200));
        for bad in ["", "m", "5x", "-5", "1.5h"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_count("64"), Ok(64));
        assert!(parse_count("64K").is_err());
    }
}
