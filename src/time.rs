//! Instants with microsecond precision: Slack `ts` strings in, ISO 8601 out.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Microseconds in one minute, the unit of every duration the API reports.
pub const MICROS_PER_MINUTE: f64 = 60_000_000.0;
/// One hour in microseconds.
pub const HOUR: i64 = 3_600_000_000;
/// One day in microseconds.
pub const DAY: i64 = 24 * HOUR;

/// An instant as microseconds since the Unix epoch (UTC).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Micros(pub i64);

/// Why a timestamp string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not a Slack `ts` (`seconds.micro`).
    #[error("not a Slack ts: {0:?}")]
    BadTs(String),
    /// Not an ISO 8601 date or date-time.
    #[error("not a valid ISO datetime: {0}")]
    BadIso(String),
}

impl Micros {
    /// Parses a Slack `ts` such as `"1767225600.000100"` (up to six fraction digits).
    pub fn from_slack_ts(ts: &str) -> Result<Self, TimeError> {
        let bad = || TimeError::BadTs(ts.to_string());
        let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
        if secs.is_empty()
            || secs.len() > 12
            || frac.len() > 6
            || !secs.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let secs: i64 = secs.parse().map_err(|_| bad())?;
        let mut micros: i64 = 0;
        for i in 0..6 {
            let digit = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
            micros = micros * 10 + digit;
        }
        Ok(Micros(secs * 1_000_000 + micros))
    }

    /// Parses the API's ISO 8601 forms: a date (midnight UTC), a date-time without
    /// offset (taken as UTC), or a date-time with `Z` / `±hh:mm`.
    pub fn parse_iso(s: &str) -> Result<Self, TimeError> {
        let bad = || TimeError::BadIso(s.to_string());
        if let Ok(ts) = s.parse::<Timestamp>() {
            return Self::from_timestamp(ts).ok_or_else(bad);
        }
        if let Ok(dt) = s.parse::<jiff::civil::DateTime>() {
            // A bare date parses as a DateTime at midnight; neither form carries an offset.
            if s.contains('[') || s.ends_with(']') {
                return Err(bad());
            }
            let ts = dt.to_zoned(jiff::tz::TimeZone::UTC).map_err(|_| bad())?;
            return Self::from_timestamp(ts.timestamp()).ok_or_else(bad);
        }
        Err(bad())
    }

    fn from_timestamp(ts: Timestamp) -> Option<Self> {
        Some(Micros(ts.as_microsecond()))
    }

    /// The current wall-clock instant.
    pub fn now() -> Self {
        Micros(Timestamp::now().as_microsecond())
    }

    /// ISO 8601 in UTC with `Z`; six fraction digits, shown only when non-zero.
    pub fn to_iso(self) -> String {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let Ok(ts) = Timestamp::from_second(secs) else {
            return String::from("invalid");
        };
        let whole = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
        if micros == 0 {
            format!("{whole}Z")
        } else {
            format!("{whole}.{micros:06}Z")
        }
    }

    /// The signed duration `self - earlier` in minutes.
    pub fn minutes_since(self, earlier: Micros) -> f64 {
        (self.0 - earlier.0) as f64 / MICROS_PER_MINUTE
    }

    /// This instant moved by `delta` microseconds (saturating).
    pub fn plus(self, delta: i64) -> Micros {
        Micros(self.0.saturating_add(delta))
    }
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_ts_parses_to_micros() {
        assert_eq!(
            Micros::from_slack_ts("1767225600.000100").unwrap(),
            Micros(1_767_225_600_000_100)
        );
        assert_eq!(
            Micros::from_slack_ts("1767225600.5").unwrap(),
            Micros(1_767_225_600_500_000)
        );
        assert_eq!(
            Micros::from_slack_ts("1767225600").unwrap(),
            Micros(1_767_225_600_000_000)
        );
        for bad in ["", ".1", "abc", "1.2.3", "1.1234567", "-5.0", "1 .0"] {
            assert!(Micros::from_slack_ts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn iso_forms_parse() {
        let midnight = Micros(1_767_225_600_000_000);
        assert_eq!(Micros::parse_iso("2026-01-01").unwrap(), midnight);
        assert_eq!(Micros::parse_iso("2026-01-01T00:00:00").unwrap(), midnight);
        assert_eq!(Micros::parse_iso("2026-01-01T00:00:00Z").unwrap(), midnight);
        assert_eq!(
            Micros::parse_iso("2026-01-01T01:00:00+01:00").unwrap(),
            midnight
        );
        assert!(Micros::parse_iso("yesterday").is_err());
        assert!(Micros::parse_iso("2026-13-01").is_err());
        assert_eq!(midnight.to_iso(), "2026-01-01T00:00:00Z");
        assert_eq!(
            Micros(1_767_225_600_000_100).to_iso(),
            "2026-01-01T00:00:00.000100Z"
        );
    }
}
