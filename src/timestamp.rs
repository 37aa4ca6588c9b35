//! ISO-8601 UTC timestamps with microseconds and a `Z` suffix, fixed width, so that string order is
//! time order: `2026-11-25T10:00:00.123456Z`.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// The last microsecond this process handed out, so that two calls never return the same instant
/// and the clock never appears to go backwards within one process.
static LAST_MICROS: AtomicI64 = AtomicI64::new(0);

/// A point in time as stored: ISO-8601 UTC text. Ours are fixed width with microseconds
/// (`2026-11-25T10:00:00.123456Z`), so text order is time order. Text read from storage is kept
/// exactly as stored (items written by other servers may use milliseconds), because DynamoDB sorts
/// and pages by the stored text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(String);

impl Timestamp {
    /// The current time, strictly later than any earlier `now()` of this process.
    pub fn now() -> Self {
        Self::from_micros(now_micros())
    }

    /// Microseconds since the Unix epoch, in our fixed-width form.
    pub fn from_micros(micros: i64) -> Self {
        Timestamp(format_micros(micros))
    }

    /// Any RFC 3339 text, rewritten into our fixed-width form; `None` when it is not a time.
    pub fn parse(value: &str) -> Option<Self> {
        parse_micros(value).map(Self::from_micros)
    }

    /// Text as a store holds it, kept as it is.
    pub fn stored(value: String) -> Self {
        Timestamp(value)
    }

    /// Microseconds since the epoch; `None` when stored text is not a time.
    pub fn micros(&self) -> Option<i64> {
        parse_micros(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Timestamp {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Timestamp> for String {
    fn from(t: Timestamp) -> String {
        t.0
    }
}

impl From<&Timestamp> for String {
    fn from(t: &Timestamp) -> String {
        t.0.clone()
    }
}

impl PartialEq<str> for Timestamp {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Timestamp {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Formats microseconds since the Unix epoch.
pub fn format_micros(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses any RFC 3339 timestamp into microseconds since the epoch.
pub fn parse_micros(value: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(value).ok().map(|t| t.with_timezone(&Utc).timestamp_micros())
}

/// Rewrites any RFC 3339 timestamp into our fixed-width form (for `before=` parameters).
pub fn normalize(value: &str) -> Option<String> {
    parse_micros(value).map(format_micros)
}

/// The current time in microseconds, strictly greater than any earlier result of this function.
pub fn now_micros() -> i64 {
    let wall = Utc::now().timestamp_micros();
    let mut last = LAST_MICROS.load(Ordering::Relaxed);
    loop {
        let next = wall.max(last + 1);
        match LAST_MICROS.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The current time, formatted.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// `count` strictly increasing timestamps, all later than `after` (when given) and than now.
pub fn allocate(after: Option<&Timestamp>, count: usize) -> Vec<Timestamp> {
    let floor = after.and_then(Timestamp::micros).map_or(i64::MIN, |m| m + 1);
    let start = now_micros().max(floor);
    (0..count as i64).map(|i| Timestamp::from_micros(start + i)).collect()
}

/// Seconds since the epoch.
pub fn epoch_seconds() -> i64 {
    Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_and_ordered() {
        let a = Timestamp::from_micros(0);
        assert_eq!(a, "1970-01-01T00:00:00.000000Z");
        let b = now();
        assert_eq!(a.len(), b.len());
        let c = now();
        assert!(b < c, "{b} < {c}");
    }

    #[test]
    fn allocate_is_after_the_given_time_even_in_the_future() {
        let future = Timestamp::parse("2999-01-01T00:00:00Z").unwrap();
        let got = allocate(Some(&future), 3);
        assert_eq!(got[0], "2999-01-01T00:00:00.000001Z");
        assert!(got[0] < got[1] && got[1] < got[2]);
    }

    #[test]
    fn normalize_pads_coarse_timestamps() {
        assert_eq!(normalize("2026-11-25T10:00:00Z").as_deref(), Some("2026-11-25T10:00:00.000000Z"));
        assert_eq!(normalize("2026-11-25T11:00:00.5+01:00").as_deref(), Some("2026-11-25T10:00:00.500000Z"));
        assert_eq!(normalize("yesterday"), None);
    }
}
