//! Resolves the kernel struct offsets the programs need from the running kernel's BTF.

use probe_common::config::{Config, OFFSET_MISSING};

use crate::kernel::btf::Btf;

/// The config, plus the fields that could not be resolved (reported in `status`).
pub struct Resolved {
    pub config: Config,
    pub missing: Vec<String>,
}

/// Stores one resolved offset into the config.
type Setter = fn(&mut Config, u32);

/// (struct, member path, where the offset goes). Bitfields are never usable: the programs read
/// whole bytes.
const FIELDS: &[(&str, &str, Setter)] = &[
    ("sock_common", "skc_daddr", |c, v| c.sk_daddr = v),
    ("sock_common", "skc_rcv_saddr", |c, v| c.sk_rcv_saddr = v),
    ("sock_common", "skc_dport", |c, v| c.sk_dport = v),
    ("sock_common", "skc_num", |c, v| c.sk_num = v),
    ("sock_common", "skc_family", |c, v| c.sk_family = v),
    ("sock_common", "skc_state", |c, v| c.sk_state = v),
    ("sock_common", "skc_net.net", |c, v| c.sk_net = v),
    ("sock_common", "skc_v6_daddr", |c, v| c.sk_v6_daddr = v),
    ("sock_common", "skc_v6_rcv_saddr", |c, v| c.sk_v6_rcv_saddr = v),
    ("sock", "sk_err", |c, v| c.sk_err = v),
    ("sock", "sk_protocol", |c, v| c.sk_protocol = v),
    ("sock", "sk_socket", |c, v| c.sk_socket = v),
    ("socket", "file", |c, v| c.socket_file = v),
    ("file", "f_flags", |c, v| c.file_f_flags = v),
    ("net", "ns.inum", |c, v| c.net_ns_inum = v),
    ("net", "ipv4.tcp_death_row.tw_refcount", |c, v| c.net_tw_refcount = v),
    ("net", "ipv4.tcp_death_row.sysctl_max_tw_buckets", |c, v| c.net_max_tw_buckets = v),
    ("task_struct", "files", |c, v| c.task_files = v),
    ("files_struct", "fdt", |c, v| c.files_fdt = v),
    ("fdtable", "fd", |c, v| c.fdt_fd = v),
    ("fdtable", "max_fds", |c, v| c.fdt_max_fds = v),
    ("file", "private_data", |c, v| c.file_private_data = v),
    ("socket", "type", |c, v| c.socket_type = v),
    ("socket", "sk", |c, v| c.socket_sk = v),
    ("sk_buff", "sk", |c, v| c.skb_sk = v),
    ("proto", "sysctl_mem", |c, v| c.proto_sysctl_mem = v),
    ("task_struct", "signal", |c, v| c.task_signal = v),
    ("signal_struct", "rlim", |c, v| c.signal_rlim = v),
    #[cfg(target_arch = "x86_64")]
    ("pt_regs", "orig_ax", |c, v| c.regs_syscall_nr = v),
    #[cfg(target_arch = "aarch64")]
    ("pt_regs", "syscallno", |c, v| c.regs_syscall_nr = v),
];

pub fn resolve(btf: Option<&Btf>, events_per_sec: u32) -> Resolved {
    let mut config = Config::missing();
    config.events_per_sec = events_per_sec;
    let mut missing = Vec::new();
    let Some(btf) = btf else {
        missing.push("all (no kernel BTF)".to_string());
        return Resolved { config, missing };
    };
    // sock_common offsets are used on `struct sock *`: that only works while it is the first
    // member (include/net/sock.h).
    let common_first = btf.field("sock", "__sk_common").map(|f| f.offset == 0).unwrap_or(false);
    for (st, path, set) in FIELDS {
        match btf.field(st, path) {
            // The programs read whole bytes: a bitfield (sk_protocol before 5.6) is unusable.
            Ok(f) if !f.bitfield && (*st != "sock_common" || common_first) => set(&mut config, f.offset),
            Ok(_) => {
                set(&mut config, OFFSET_MISSING);
                missing.push(format!("{st}.{path} (bitfield or unusable)"));
            }
            Err(_) => missing.push(format!("{st}.{path}")),
        }
    }
    match btf.enum_value("SKB_DROP_REASON_NETFILTER_DROP") {
        Some(v) => config.drop_reason_netfilter = v as u32,
        None => missing.push("enum skb_drop_reason.SKB_DROP_REASON_NETFILTER_DROP".into()),
    }
    Resolved { config, missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_btf_means_everything_missing() {
        let r = resolve(None, 7);
        assert_eq!(r.config.sk_daddr, OFFSET_MISSING);
        assert_eq!(r.config.events_per_sec, 7);
        assert_eq!(r.missing.len(), 1);
    }
}
