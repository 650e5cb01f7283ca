//! Wall-clock formatting shared by every output.

use std::time::SystemTime;

/// RFC 3339 in UTC with milliseconds, as every `ts` and `since` of the JSON contract.
pub fn rfc3339(ts: SystemTime) -> String {
    humantime::format_rfc3339_millis(ts).to_string()
}
