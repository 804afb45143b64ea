//! Numbers people type: byte counts with binary suffixes (`512M`, `2G`) and durations in
//! seconds (`90`, `90s`, `5m`, `2h`). The daemon's flags and `lantern --limit` read them
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

#[cfg(test)]
mod tests {
    use super::*;

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
