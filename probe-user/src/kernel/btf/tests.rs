//! The BTF reader on hand-built blobs: members inside anonymous unions, bitfields, garbage.

use super::*;

/// Builds a BTF blob: strings, then types given as raw u32 words.
fn blob(strings: &[&str], types: &[u32]) -> (Vec<u8>, Vec<u32>) {
    let mut s = vec![0u8];
    let mut offs = Vec::new();
    for name in strings {
        offs.push(s.len() as u32);
        s.extend_from_slice(name.as_bytes());
        s.push(0);
    }
    let tbytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut b = Vec::new();
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.push(1);
    b.push(0);
    for w in [24u32, 0, tbytes.len() as u32, tbytes.len() as u32, s.len() as u32] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&tbytes);
    b.extend_from_slice(&s);
    (b, offs)
}

fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
    (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 }
}

#[test]
fn enum_values_keep_their_sign() {
    let names = ["e", "BIG", "NEG", "e64", "HUGE"];
    let (_, o) = blob(&names, &[]);
    let types = [
        // 1: unsigned enum e { BIG = 0x8000_0000 }
        o[0],
        info(KIND_ENUM, 1, false),
        4,
        o[1],
        0x8000_0000,
        // 2: signed enum { NEG = -1 } (kind_flag)
        0,
        info(KIND_ENUM, 1, true),
        4,
        o[2],
        u32::MAX,
        // 3: unsigned enum64 e64 { HUGE = 2^63 }: does not fit in i64
        o[3],
        info(KIND_ENUM64, 1, false),
        8,
        o[4],
        0,
        0x8000_0000,
    ];
    let (b, _) = blob(&names, &types);
    let btf = Btf::parse(&b).unwrap();
    assert_eq!(btf.enum_value("BIG"), Some(0x8000_0000));
    assert_eq!(btf.enum_value("NEG"), Some(-1));
    assert_eq!(btf.enum_value("HUGE"), None);
}

#[test]
fn finds_members_inside_anonymous_unions_and_nested_paths() {
    // strings: 1 "int", 2 "sock_common", 3 "skc_num", 4 "skc_net", 5 "possible_net_t",
    //          6 "net", 7 "flags", 8 "s"
    let names = ["u16", "sock_common", "skc_num", "skc_net", "possible_net_t", "net", "flags", "s"];
    // Offsets of the names in the string table: computed by blob(); build in two passes.
    let (_, o) = blob(&names, &[]);
    let types = [
        // 1: u16
        o[0],
        info(KIND_INT, 0, false),
        2,
        16,
        // 2: ptr to void
        0,
        info(KIND_PTR, 0, false),
        0,
        // 3: possible_net_t { void *net; } size 8
        o[4],
        info(KIND_STRUCT, 1, false),
        8,
        o[5],
        2,
        0,
        // 4: anonymous union { u16 skc_num; } size 2
        0,
        info(KIND_UNION, 1, false),
        2,
        o[2],
        1,
        0,
        // 5: struct sock_common { u32 pad (as u16 x2 skipped); anon union @ 14*8 bits;
        //    possible_net_t skc_net @ 48*8; u16 flags:3 @ 56*8 } size 64
        o[1],
        info(KIND_STRUCT, 3, true),
        64,
        0,
        4,
        14 * 8,
        o[3],
        3,
        48 * 8,
        o[6],
        1,
        (3 << 24) | (56 * 8),
        // 6: struct s {} (forward-declared kinds are skipped by name lookup)
        o[7],
        info(KIND_FWD, 0, false),
        0,
    ];
    let (b, _) = blob(&names, &types);
    let btf = Btf::parse(&b).unwrap();
    assert_eq!(btf.field("sock_common", "skc_num").unwrap(), Field { offset: 14, size: 2, bitfield: false });
    assert_eq!(btf.field("sock_common", "skc_net.net").unwrap(), Field { offset: 48, size: 8, bitfield: false });
    assert!(btf.field("sock_common", "flags").unwrap().bitfield);
    assert!(btf.field("sock_common", "nope").is_err());
    assert!(btf.field("s", "x").is_err());
}

/// Against the running kernel's BTF when it has one (every kernel conntrace supports):
/// enumerators resolve by name, and a made-up one does not.
#[test]
fn enum_values_of_the_running_kernel() {
    let Ok(btf) = Btf::from_sys_fs() else {
        eprintln!("SKIPPED enum_values_of_the_running_kernel: no /sys/kernel/btf/vmlinux");
        return;
    };
    // include/uapi/linux/in.h: IPPROTO_TCP = 6 (an anonymous enum in BTF).
    assert_eq!(btf.enum_value("IPPROTO_TCP"), Some(6));
    assert!(btf.enum_value("SKB_DROP_REASON_NETFILTER_DROP").is_some_and(|v| v > 1));
    assert_eq!(btf.enum_value("NO_SUCH_ENUMERATOR_X"), None);
}

#[test]
fn rejects_garbage() {
    assert!(Btf::parse(&[0, 1, 2]).is_err());
    assert!(Btf::parse(&[0u8; 64]).is_err());
}
