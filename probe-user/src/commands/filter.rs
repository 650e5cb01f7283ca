//! `--pid` and `--comm`: which processes `watch` reports.

use std::collections::BTreeSet;

/// Which processes the user asked about.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub pids: BTreeSet<u32>,
    pub comms: Vec<String>,
}

impl Filter {
    pub fn is_all(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty()
    }

    /// `comm` is compared as the kernel stores it (15 characters at most).
    pub fn matches(&self, pid: u32, comm: &str) -> bool {
        if self.is_all() || self.pids.contains(&pid) {
            return true;
        }
        self.comms.iter().any(|c| {
            let c: String = c.chars().take(15).collect();
            c == comm
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matches_pid_or_comm() {
        let all = Filter::default();
        assert!(all.matches(5, "x"));
        let f = Filter { pids: [5].into(), comms: vec!["nginx".into(), "a-very-long-process-name".into()] };
        assert!(f.matches(5, "other"));
        assert!(f.matches(6, "nginx"));
        assert!(!f.matches(6, "nginx2"));
        assert!(f.matches(7, "a-very-long-pro"));
    }
}
