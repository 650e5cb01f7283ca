//! Wall-clock formatting shared by every output.

use std::time::SystemTime;

/// RFC 3339 in UTC with milliseconds, as every `ts` and `since` of the JSON contract.
pub fn rfc3339(ts: SystemTime) -> String {
    humantime::format_rfc3339_millis(ts).to_string()
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
