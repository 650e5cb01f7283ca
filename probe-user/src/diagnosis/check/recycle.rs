//! net.ipv4.tcp_tw_recycle in the sysctl configuration: Linux 4.12 removed the setting
//! (commit 4396e46187ca, "tcp: remove tcp_tw_recycle"), so a line that still sets it fails
//! every `sysctl --system` (procps: "cannot stat /proc/sys/net/ipv4/tcp_tw_recycle", exit 1,
//! a leading `-` included) and the configuration management that applies it. Before 4.12,
//! set to 1, it dropped SYNs from clients behind NAT (tcp_conn_request's per-peer timestamp
//! check).
//!
//! One `tcp_tw_recycle` item when no line sets it; otherwise one `tcp_tw_recycle_config` item
//! per line instead, so the two never disagree.

use serde_json::json;

use super::{item, Item, Level};
use crate::domain::net::{kernel_version, SysctlLine, SystemFacts};

/// The first release without the setting.
const REMOVED_IN: (u32, u32) = (4, 12);

pub(super) fn tw_recycle_items(sys: &SystemFacts) -> Vec<Item> {
    let release = sys.kernel_release.as_deref();
    let removed = release.and_then(kernel_version).map(|v| v >= REMOVED_IN);
    if sys.tw_recycle_lines.is_empty() {
        let kernel = match (release, removed) {
            (Some(r), Some(true)) => format!(" (this kernel: {r})"),
            (Some(r), Some(false)) => format!(
                "; this kernel ({r}) still has it: keep it 0, on 1 it drops connections from clients behind NAT"
            ),
            _ => String::new(),
        };
        let mut value = json!({"config_lines": 0});
        if let Some(r) = release {
            value["kernel_release"] = json!(r);
        }
        return vec![item(
            "tcp_tw_recycle",
            Level::Ok,
            value,
            None,
            format!("no sysctl configuration file sets net.ipv4.tcp_tw_recycle; the setting was removed in Linux 4.12{kernel}"),
            None,
        )];
    }
    sys.tw_recycle_lines.iter().map(|l| line_item(l, release, removed)).collect()
}

fn line_item(l: &SysctlLine, release: Option<&str>, removed: Option<bool>) -> Item {
    let at = format!("{}:{}", l.file, l.line);
    let sets = format!("{at} sets net.ipv4.tcp_tw_recycle = {}", l.value);
    let delete = format!("delete line {} of {}", l.line, l.file);
    let mut value = json!({"file": l.file, "line": l.line, "value": l.value});
    if let Some(r) = release {
        value["kernel_release"] = json!(r);
    }
    let (level, message, fix) = match (release, removed) {
        (Some(r), Some(true)) => (
            Level::Fail,
            format!(
                "{sets}: the setting was removed in Linux 4.12 (this kernel: {r}), so the line does nothing; \
                 `sysctl --system` reports an error for it and configuration management that sets it fails"
            ),
            Some(delete),
        ),
        (Some(r), Some(false)) if l.value == "0" => (
            Level::Ok,
            format!(
                "{sets} (off): harmless on this kernel ({r}), but from Linux 4.12 on, which removed the setting, \
                 `sysctl --system` reports an error for the line"
            ),
            None,
        ),
        (Some(r), Some(false)) => (
            Level::Warn,
            format!(
                "{sets}: this kernel ({r}) still has it, and on it drops SYNs from clients behind NAT (their TCP \
                 timestamps do not increase across hosts); Linux 4.12 removed it for that"
            ),
            Some(format!("{delete}, and sysctl -w net.ipv4.tcp_tw_recycle=0")),
        ),
        _ => (
            Level::Warn,
            format!(
                "{sets}; the kernel release could not be read (/proc/sys/kernel/osrelease), so whether this \
                 kernel still has the setting is unknown: Linux 4.12 removed it, and from then on `sysctl --system` \
                 reports an error for the line"
            ),
            Some(delete),
        ),
    };
    item("tcp_tw_recycle_config", level, value, None, message, fix.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(release: Option<&str>, values: &[&str]) -> SystemFacts {
        SystemFacts {
            kernel_release: release.map(str::to_string),
            tw_recycle_lines: values
                .iter()
                .enumerate()
                .map(|(i, v)| SysctlLine {
                    file: "/etc/sysctl.d/99-tuning.conf".into(),
                    line: i + 3,
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn levels(items: &[Item]) -> Vec<(&str, Level)> {
        items.iter().map(|i| (i.id.as_str(), i.status)).collect()
    }

    #[test]
    fn every_line_fails_on_a_kernel_without_the_setting() {
        let items = tw_recycle_items(&sys(Some("6.1.0-18-amd64"), &["1", "0"]));
        assert_eq!(levels(&items), [("tcp_tw_recycle_config", Level::Fail), ("tcp_tw_recycle_config", Level::Fail)]);
        let m = &items[0].message;
        assert!(m.starts_with("/etc/sysctl.d/99-tuning.conf:3 sets net.ipv4.tcp_tw_recycle = 1"), "{m}");
        assert!(m.contains("removed in Linux 4.12") && m.contains("`sysctl --system` reports an error"), "{m}");
        assert_eq!(items[1].fix.as_deref(), Some("delete line 4 of /etc/sysctl.d/99-tuning.conf"));
        assert_eq!(items[1].value["line"], 4);
        // 4.12 itself has no tcp_tw_recycle.
        assert_eq!(tw_recycle_items(&sys(Some("4.12.0"), &["1"]))[0].status, Level::Fail);
    }

    #[test]
    fn before_4_12_only_turning_it_on_warns() {
        let items = tw_recycle_items(&sys(Some("4.9.0-8-amd64"), &["1", "0"]));
        assert_eq!(levels(&items), [("tcp_tw_recycle_config", Level::Warn), ("tcp_tw_recycle_config", Level::Ok)]);
        assert!(items[0].message.contains("behind NAT"), "{}", items[0].message);
        assert!(items[0].fix.as_deref().unwrap().contains("sysctl -w net.ipv4.tcp_tw_recycle=0"));
        assert_eq!(items[1].fix, None);
    }

    #[test]
    fn an_unknown_kernel_is_said_in_words() {
        for release in [None, Some("weird")] {
            let items = tw_recycle_items(&sys(release, &["1"]));
            assert_eq!(levels(&items), [("tcp_tw_recycle_config", Level::Warn)]);
            let m = &items[0].message;
            assert!(m.contains("kernel release could not be read") && !m.contains('?'), "{m}");
        }
    }

    #[test]
    fn no_line_one_ok_item() {
        let items = tw_recycle_items(&sys(Some("6.8.0"), &[]));
        assert_eq!(levels(&items), [("tcp_tw_recycle", Level::Ok)]);
        assert!(items[0].message.contains("this kernel: 6.8.0"), "{}", items[0].message);
        let old = tw_recycle_items(&sys(Some("4.4.0"), &[]));
        assert!(old[0].message.contains("still has it"), "{}", old[0].message);
        let unknown = tw_recycle_items(&sys(None, &[]));
        assert_eq!(unknown[0].value, json!({"config_lines": 0}));
        assert!(!unknown[0].message.contains("this kernel"), "{}", unknown[0].message);
    }
}
