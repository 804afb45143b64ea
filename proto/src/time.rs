//! Times on the wire: RFC 3339, UTC, with milliseconds (`2026-12-02T05:04:37.578Z`).

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::time::{Duration, SystemTime};

/// A point in time, serialized as RFC 3339 with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub SystemTime);

impl Time {
    /// Now.
    pub fn now() -> Time {
        Time(SystemTime::now())
    }

    /// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z), in microseconds.
    pub const MAX_MICROS: u64 = 253_402_300_799_999_000;

    /// Microseconds since the Unix epoch, at most [`Time::MAX_MICROS`] (times from a
    /// session's init are its word: a later one would not print).
    pub fn from_micros(us: u64) -> Time {
        Time(SystemTime::UNIX_EPOCH + Duration::from_micros(us.min(Self::MAX_MICROS)))
    }

    /// Microseconds since the Unix epoch (0 before it).
    pub fn micros(&self) -> u64 {
        self.0.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_rfc3339_millis(self.0).fmt(f)
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339(&s).map(Time).map_err(|e| de::Error::custom(format!("time {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_beyond_year_9999_are_clamped() {
        let j = serde_json::to_string(&Time::from_micros(u64::MAX)).unwrap();
        assert_eq!(j, "\"9999-12-31T23:59:59.999Z\"");
    }

    #[test]
    fn round_trips_with_milliseconds() {
        let t = Time::from_micros(1_764_651_877_578_000);
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, "\"2025-12-02T05:04:37.578Z\"");
        assert_eq!(serde_json::from_str::<Time>(&j).unwrap(), t);
        assert!(serde_json::from_str::<Time>("\"yesterday\"").is_err());
    }
}
