//! Property tests: every parser of kernel or /proc input returns an error (or nothing) on
//! arbitrary bytes, never panics. The kernel is not an adversary, but a newer kernel, a
//! truncated read or a foreign file must not take conntrace down. The same holds for the reader
//! of recordings, whose files come from disks that fill and processes that get killed, and for
//! `conntrace report` on a recording of another version or a hand-edited one.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use serde_json::Value;

use crate::{kernel::btf::Btf, kernel::tpformat, system::facts, system::netdiag, system::procinfo};

/// `bytes` written to a file of their own, then read as a recording.
fn read_as_recording(bytes: &[u8]) -> crate::record::ReadOutcome {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("conntrace-proptest-{}-{n}.ndjson.gz", std::process::id()));
    std::fs::write(&path, bytes).expect("temp file");
    let out = crate::record::read_paths(std::slice::from_ref(&path));
    let _ = std::fs::remove_file(&path);
    out
}

/// A finished recording segment: a header and 40 sample lines.
fn recording() -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut text =
        String::from("{\"type\":\"header\",\"ts\":\"2026-09-21T14:13:20.000Z\",\"format\":1,\"segment\":1}\n");
    for i in 0..40 {
        text.push_str(&format!(
            "{{\"type\":\"sample\",\"pid\":{i},\"comm\":\"nginx\",\"connect_attempts\":{}}}\n",
            i * 7
        ));
    }
    enc.write_all(text.as_bytes()).expect("in memory");
    enc.finish().expect("in memory")
}

/// A BTF header (magic, version, flags, hdr_len 24) over a random type and string section, so
/// the type walker runs instead of failing at the magic.
fn btf_blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xeb9f_u16.to_le_bytes());
    b.extend_from_slice(&[1, 0]);
    for v in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(types);
    b.extend_from_slice(strings);
    b
}

/// Names in the string section of generated BTF: "" at 0, "s" at 1, "a" at 3, "b" at 5.
const BTF_STRINGS: &[u8] = b"\0s\0a\0b\0";

/// One well-formed BTF type record of a kind the reader walks (int, ptr, array, struct,
/// union, enum, typedef, enum64) whose ids, offsets, sizes and counts are arbitrary: cycles,
/// huge arrays and offsets that overflow when added up all come out.
fn btf_type() -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![Just(1u32), Just(2), Just(3), Just(4), Just(5), Just(6), Just(8), Just(19)];
    let name = prop_oneof![Just(0u32), Just(1), Just(3), Just(5)];
    let id = prop_oneof![0u32..8, any::<u32>()];
    let member = (prop_oneof![Just(0u32), Just(3), Just(5)], id.clone(), any::<u32>());
    (kind, name, any::<bool>(), id, proptest::collection::vec(member, 0..3), (0u32..8, any::<u32>())).prop_map(
        |(kind, name, kflag, size_or_type, members, (elem, nelems))| {
            let vlen = match kind {
                4 | 5 | 6 | 19 => members.len() as u32,
                _ => 0,
            };
            let mut words = vec![name, (kflag as u32) << 31 | kind << 24 | vlen, size_or_type];
            match kind {
                1 => words.push(32),
                3 => words.extend([elem, 1, nelems]),
                4 | 5 => members.iter().for_each(|(n, t, off)| words.extend([*n, *t, *off])),
                6 => members.iter().for_each(|(n, _, v)| words.extend([*n, *v])),
                19 => members.iter().for_each(|(n, lo, hi)| words.extend([*n, *lo, *hi])),
                _ => {}
            }
            words.iter().flat_map(|w| w.to_le_bytes()).collect()
        },
    )
}

/// A netlink message: a type conntrace handles, or any, over a short or long payload.
fn netlink_message() -> impl Strategy<Value = Vec<u8>> {
    let ty = prop_oneof![Just(2u16), Just(3), Just(20), any::<u16>()];
    let payload =
        prop_oneof![proptest::collection::vec(any::<u8>(), 0..8), proptest::collection::vec(any::<u8>(), 0..200)];
    (ty, payload, 0u32..3).prop_map(|(ty, payload, extra)| {
        // The header's length covers the payload, or claims a little more than is there.
        let len = 16 + payload.len() as u32 + extra;
        let mut buf = Vec::new();
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&payload);
        buf
    })
}

/// A sysctl.d line: a prefix (comment, `-`, spaces), a key (the wanted one with `.` or `/`,
/// another, a near miss), a separator, a value; and the value the parser should find there.
fn sysctl_line() -> impl Strategy<Value = (String, Option<String>)> {
    let prefix = prop_oneof![Just(""), Just("  "), Just("-"), Just("- "), Just("#"), Just(";"), Just(" # ")];
    let key = prop_oneof![
        Just("net.ipv4.tcp_tw_recycle"),
        Just("net/ipv4/tcp_tw_recycle"),
        Just("net.ipv4.tcp_tw_reuse"),
        Just("net.ipv4.tcp_tw_recycled"),
    ];
    let sep = prop_oneof![Just("="), Just(" = "), Just("\t=\t"), Just(" ")];
    (prefix, key, sep, "[0-9a-z]{0,3}").prop_map(|(prefix, key, sep, value)| {
        let line = format!("{prefix}{key}{sep}{value}");
        let comment = prefix.trim_start().starts_with('#') || prefix.trim_start().starts_with(';');
        let hit = !comment && key.replace('/', ".") == "net.ipv4.tcp_tw_recycle" && sep.contains('=');
        (line, hit.then_some(value))
    })
}

/// Field names of the records (and a few others), so generated records hit the readers' fields.
fn record_field() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "ts",
        "pid",
        "comm",
        "interval_s",
        "emfile",
        "enfile",
        "port_assign_failures",
        "connect_errors",
        "bind_errors",
        "time_wait_created",
        "listen_drops",
        "open_fds",
        "nofile_limit",
        "suppressed",
        "kind",
        "daddr",
        "dport",
        "cause",
        "state",
        "since",
        "failures",
        "destination",
        "listener",
        "summary",
        "evidence",
        "fix",
        "duration_s",
        "resolution",
        "limits",
        "signals",
        "mode",
        "hostname",
        "kernel",
        "attach_mode",
        "in_use",
        "usable",
        "established",
        "EADDRNOTAVAIL",
    ]);
    prop_oneof![4 => known.prop_map(str::to_string), 1 => "[a-z_]{1,8}"]
}

/// Times within two minutes, so records of one case overlap and merge.
fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
}

/// Any JSON value, with valid stamps and verdict states among the strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..100).prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..120).prop_map(|s| Value::from(crate::domain::time::rfc3339(at(s)))),
        prop::sample::select(vec!["active", "warning", "resolved", "fd_limit", "10.0.0.5", ""]).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(record_field(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A record: a `type` of the contract (or another), usually a valid `ts` and `pid`, and random
/// fields; now and then not an object at all.
fn report_record() -> impl Strategy<Value = Value> {
    let ty = prop::sample::select(vec!["header", "status", "sample", "event", "verdict", "bpf_stats"]);
    let ts = proptest::option::weighted(0.9, (0u64..120).prop_map(|s| crate::domain::time::rfc3339(at(s))));
    let pid = proptest::option::weighted(0.9, 0u32..4);
    let fields = proptest::collection::btree_map(record_field(), json_value(), 0..12);
    let record = (ty, ts, pid, fields).prop_map(|(ty, ts, pid, fields)| {
        let mut o: serde_json::Map<String, Value> = fields.into_iter().collect();
        o.insert("type".into(), Value::from(ty));
        if let Some(ts) = ts {
            o.insert("ts".into(), Value::from(ts));
        }
        if let Some(pid) = pid {
            o.insert("pid".into(), Value::from(pid));
        }
        Value::Object(o)
    });
    prop_oneof![9 => record, 1 => json_value()]
}

proptest! {
    #[test]
    fn report_of_random_records(
        records in proptest::collection::vec(report_record(), 0..24),
        since in proptest::option::of(0u64..120),
        until in proptest::option::of(0u64..120),
        pid in proptest::option::of(0u32..4),
    ) {
        use crate::report::{self, Filter, ReportBuilder};
        let mut b = ReportBuilder::new(Filter { since: since.map(at), until: until.map(at), pid });
        for r in &records {
            b.add(r);
        }
        let r = b.finish();
        let _ = report::to_text(&r);
        prop_assert_eq!(&report::to_json(&r)["type"], "report");
        let html = report::to_html(&r);
        prop_assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
    }

    #[test]
    fn btf_of_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Btf::parse(&bytes);
    }

    #[test]
    fn btf_of_random_types(types in proptest::collection::vec(btf_type(), 1..8)) {
        let blob = btf_blob(&types.concat(), BTF_STRINGS);
        if let Ok(btf) = Btf::parse(&blob) {
            for name in ["s", "a", "b"] {
                let _ = btf.field(name, "a");
                let _ = btf.field(name, "a.b");
                let _ = btf.field(name, "b.a.b");
                let _ = btf.enum_value(name);
                let _ = btf.function_arity(name);
            }
        }
    }

    #[test]
    fn netlink_of_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        let _ = netdiag::parse_messages(&bytes, &mut out);
        let _ = netdiag::parse_msg(&bytes);
    }

    #[test]
    fn netlink_messages_with_random_payloads(msgs in proptest::collection::vec(netlink_message(), 1..4)) {
        let mut out = Vec::new();
        let _ = netdiag::parse_messages(&msgs.concat(), &mut out);
    }

    #[test]
    fn sysctl_conf_of_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // What lines_setting does with a file's bytes.
        let text = String::from_utf8_lossy(&bytes);
        for (line, _) in crate::system::sysctl_conf::parse_sysctl_conf(&text, "net.ipv4.tcp_tw_recycle") {
            prop_assert!(line >= 1 && line <= text.lines().count());
        }
        let _ = crate::domain::net::kernel_version(&text);
    }

    #[test]
    fn sysctl_conf_of_generated_lines(lines in proptest::collection::vec(sysctl_line(), 0..8)) {
        // Found exactly where the line is no comment, names the key (either separator) and has
        // an `=`; the value comes back trimmed.
        let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
        let found = crate::system::sysctl_conf::parse_sysctl_conf(&text, "net.ipv4.tcp_tw_recycle");
        let want: Vec<(usize, String)> =
            lines.iter().enumerate().filter_map(|(i, (_, v))| Some((i + 1, v.clone()?))).collect();
        prop_assert_eq!(found, want);
    }

    #[test]
    fn text_parsers_of_random_text(s in "\\PC{0,200}", lines in proptest::collection::vec("[a-zA-Z_:0-9 \\t;]{0,40}", 0..8)) {
        let joined = lines.join("\n");
        for t in [s.as_str(), joined.as_str()] {
            let _ = tpformat::parse(t);
            let _ = procinfo::parse_nofile(t);
            let _ = procinfo::parse_cap_eff(t);
            let _ = procinfo::parse_fd_table_size(t);
            let _ = facts::parse_ct_stat(t);
            let _ = facts::parse_port_range(t);
            let _ = facts::parse_reserved(t);
            let _ = facts::parse_file_nr(t);
            let _ = facts::parse_netstat(t, "TcpExt:");
            let _ = facts::parse_sockstat(t);
            let _ = facts::parse_triple(t);
            let _ = crate::system::systemd::parse_unit(t);
            let _ = crate::system::sysctl_conf::parse_sysctl_conf(t, "net.ipv4.tcp_tw_recycle");
            let _ = crate::domain::net::kernel_version(t);
        }
    }

    #[test]
    fn recording_of_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), gzip_magic in any::<bool>()) {
        // Behind a gzip magic and header the bytes reach the inflater; without, the first check.
        let mut file = if gzip_magic { vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3] } else { Vec::new() };
        file.extend_from_slice(&bytes);
        let out = read_as_recording(&file);
        prop_assert_eq!((out.files_read, out.files_failed, out.lines.len()), (0, 1, 0));
        prop_assert!(out.warnings.len() == 1 && out.warnings[0].contains("not a conntrace recording"));
    }

    #[test]
    fn recording_damaged_anywhere(flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
                                  cut in any::<prop::sample::Index>()) {
        // A segment with bytes changed and its end cut off: read as far as it goes, or refused.
        let mut file = recording();
        for (at, x) in flips {
            let i = at.index(file.len());
            file[i] ^= x;
        }
        file.truncate(cut.index(file.len() + 1));
        let out = read_as_recording(&file);
        prop_assert_eq!(out.files_read + out.files_failed, 1);
    }
}
