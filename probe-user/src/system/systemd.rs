//! systemd services: which unit a process runs in (its cgroup) and the `LimitNOFILE=` its unit
//! files set. /etc/security/limits.conf does not apply to services, so this is where their
//! RLIMIT_NOFILE comes from.

/// The systemd service `pid` runs in, from /proc/PID/cgroup ("0::/system.slice/nginx.service").
pub fn unit_of(pid: u32) -> Option<String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_unit(&cgroup)
}

/// The last `*.service` component of the cgroup paths in a /proc/PID/cgroup text.
pub fn parse_unit(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .rfind(|c| c.ends_with(".service"))
        .map(str::to_string)
}

/// `LimitNOFILE=` of `unit` from its unit file and drop-ins (the last assignment wins), under
/// `root` (`/` on a live system): /etc, /run, then the vendor directories.
pub fn limit_nofile_of(root: &std::path::Path, unit: &str) -> Option<String> {
    let dirs = ["etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"];
    let mut files = Vec::new();
    // The unit file: the first directory that has it.
    if let Some(f) = dirs.iter().map(|d| root.join(d).join(unit)).find(|p| p.is_file()) {
        files.push(f);
    }
    // Drop-ins of every directory, applied in name order.
    let mut dropins: Vec<std::path::PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d).join(format!("{unit}.d"))).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    dropins.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    files.extend(dropins);
    let mut value = None;
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("LimitNOFILE=") {
                value = Some(v.trim().to_string());
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_nofile_comes_from_the_unit_and_its_drop_ins() {
        let root = std::env::temp_dir().join(format!("conntrace-units-{}", std::process::id()));
        let vendor = root.join("lib/systemd/system");
        let local = root.join("etc/systemd/system/app.service.d");
        std::fs::create_dir_all(&vendor).unwrap();
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(vendor.join("app.service"), "[Service]\nExecStart=/usr/bin/app\nLimitNOFILE=1024\n").unwrap();
        assert_eq!(limit_nofile_of(&root, "app.service").as_deref(), Some("1024"));
        std::fs::write(local.join("50-limits.conf"), "[Service]\nLimitNOFILE=65536:524288\n").unwrap();
        assert_eq!(limit_nofile_of(&root, "app.service").as_deref(), Some("65536:524288"));
        assert_eq!(limit_nofile_of(&root, "other.service"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_unit_comes_from_the_cgroup() {
        assert_eq!(parse_unit("0::/system.slice/nginx.service\n").as_deref(), Some("nginx.service"));
        assert_eq!(parse_unit("0::/user.slice/user-0.slice/session-3.scope\n"), None);
        assert_eq!(
            parse_unit("12:pids:/system.slice/app.service\n0::/system.slice/app.service/worker\n").as_deref(),
            Some("app.service")
        );
        assert_eq!(parse_unit(""), None);
    }
}
