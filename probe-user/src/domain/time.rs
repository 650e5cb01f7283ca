//! Wall-clock formatting shared by every output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last instant humantime formats (9999-12-31T23:59:59Z).
const LAST_FORMATTED_S: u64 = 253_402_300_799;

/// RFC 3339 in UTC with milliseconds, as every `ts` and `since` of the JSON contract. Times
/// before 1970 or after 9999 (humantime panics on them) are clamped: a report's filter comes
/// from its caller, not from the clock.
pub fn rfc3339(ts: SystemTime) -> String {
    let last = UNIX_EPOCH + Duration::from_secs(LAST_FORMATTED_S);
    humantime::format_rfc3339_millis(ts.clamp(UNIX_EPOCH, last)).to_string()
}

/// HH:MM:SS (UTC) out of the RFC 3339 stamp: verdict summaries and reports name the time of
/// day, the date being the run's.
pub fn clock(t: SystemTime) -> String {
    rfc3339(t).get(11..19).unwrap_or("?").to_string()
}

/// A `ts` or `since` of the JSON contract read back (recordings, reports); `None` when it is
/// not RFC 3339 UTC ("Z" optional, fractional seconds any length).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim()).ok()
}

/// 6823 → "6,823".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_to_the_same_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(clock(t), "14:13:20");
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339(""), None);
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1 << 40)), "9999-12-31T23:59:59.000Z");
    }
}
