//! sysctl configuration files (sysctl.d(5)): which lines set a key, so `check` can name a
//! setting the kernel no longer has (net.ipv4.tcp_tw_recycle) by file and line.

use std::{collections::BTreeMap, path::Path};

use crate::domain::net::SysctlLine;

/// The directories `sysctl --system` (procps) and systemd-sysctl read, highest precedence
/// first: a file in one masks a file of the same name in the later ones.
const DIRS: [&str; 5] = ["etc/sysctl.d", "run/sysctl.d", "usr/local/lib/sysctl.d", "usr/lib/sysctl.d", "lib/sysctl.d"];

/// The lines of `text` that set `key` (dotted, e.g. "net.ipv4.tcp_tw_recycle"): 1-based line
/// numbers and values. Comments start with `#` or `;`; the key may use `/` separators
/// ("net/ipv4/tcp_tw_recycle"), may have spaces around `=`, and a leading `-` (set it if the
/// key exists, ignore failures otherwise).
pub fn parse_sysctl_conf(text: &str, key: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            let k = k.trim();
            let k = k.strip_prefix('-').unwrap_or(k).trim();
            (k.replace('/', ".") == key).then(|| (i + 1, v.trim().to_string()))
        })
        .collect()
}

/// The `*.conf` files `sysctl --system` applies under `root` (`/` on a live system), in the
/// order it applies them: by file name across the directories, a name taken from the first
/// directory that has it (so /lib → /usr/lib on a merged /usr counts once), then
/// /etc/sysctl.conf.
fn conf_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut by_name = BTreeMap::new();
    for dir in DIRS {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            if Path::new(&name).extension().is_some_and(|x| x == "conf") {
                by_name.entry(name).or_insert_with(|| e.path());
            }
        }
    }
    let mut files: Vec<_> = by_name.into_values().collect();
    files.push(root.join("etc/sysctl.conf"));
    files
}

/// Every line of the sysctl configuration under `root` that sets `key`.
pub fn lines_setting(root: &Path, key: &str) -> Vec<SysctlLine> {
    let mut out = Vec::new();
    for f in conf_files(root) {
        // Unreadable or absent (a mask symlinked to /dev/null reads empty): nothing set there.
        let Ok(bytes) = std::fs::read(&f) else { continue };
        for (line, value) in parse_sysctl_conf(&String::from_utf8_lossy(&bytes), key) {
            out.push(SysctlLine { file: f.display().to_string(), line, value });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "net.ipv4.tcp_tw_recycle";

    #[test]
    fn finds_every_spelling_of_the_key_and_skips_comments() {
        let text = "# net.ipv4.tcp_tw_recycle = 1\n\
                    ; net.ipv4.tcp_tw_recycle = 1\n\
                    net.ipv4.tcp_tw_reuse = 1\n\
                    net.ipv4.tcp_tw_recycle=1\n\
                    \x20 net/ipv4/tcp_tw_recycle = 0 \n\
                    -net.ipv4.tcp_tw_recycle = 1\n\
                    - net.ipv4.tcp_tw_recycle\t=\t1\n\
                    net.ipv4.tcp_tw_recycle\n\
                    net.ipv4.tcp_tw_recycled = 1\n\
                    \x20  # net.ipv4.tcp_tw_recycle = 1\n";
        let found = parse_sysctl_conf(text, KEY);
        let want: Vec<(usize, String)> = [(4, "1"), (5, "0"), (6, "1"), (7, "1")].map(|(l, v)| (l, v.into())).into();
        assert_eq!(found, want);
        assert!(parse_sysctl_conf("", KEY).is_empty());
        assert!(parse_sysctl_conf("=\n==\n-=\n", KEY).is_empty());
    }

    #[test]
    fn reads_the_files_sysctl_applies_under_a_root() {
        let root = std::env::temp_dir().join(format!("conntrace-sysctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["etc/sysctl.d", "usr/lib/sysctl.d", "lib/sysctl.d", "run/sysctl.d"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let write = |p: &str, s: &str| std::fs::write(root.join(p), s).unwrap();
        write("etc/sysctl.conf", "# defaults\nnet.ipv4.tcp_tw_recycle = 1\n");
        write("etc/sysctl.d/99-tuning.conf", "net.core.somaxconn = 4096\n-net/ipv4/tcp_tw_recycle=0\n");
        write("etc/sysctl.d/99-tuning.conf.bak", "net.ipv4.tcp_tw_recycle = 1\n");
        // Masked by /etc/sysctl.d/50-vendor.conf: never applied.
        write("usr/lib/sysctl.d/50-vendor.conf", "net.ipv4.tcp_tw_recycle = 1\n");
        write("etc/sysctl.d/50-vendor.conf", "kernel.pid_max = 65536\n");
        write("lib/sysctl.d/10-old.conf", "\n\nnet.ipv4.tcp_tw_recycle = 1\n");
        write("run/sysctl.d/20-run.conf", "net.ipv4.tcp_tw_reuse = 1\n");
        let found = lines_setting(&root, KEY);
        let r = root.display();
        let got: Vec<(String, usize, &str)> =
            found.iter().map(|l| (l.file.clone(), l.line, l.value.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (format!("{r}/lib/sysctl.d/10-old.conf"), 3, "1"),
                (format!("{r}/etc/sysctl.d/99-tuning.conf"), 2, "0"),
                (format!("{r}/etc/sysctl.conf"), 2, "1"),
            ]
        );
        assert!(lines_setting(&root.join("nowhere"), KEY).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
