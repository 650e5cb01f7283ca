//! sock_diag bytecode (INET_DIAG_REQ_BYTECODE) that keeps only the sockets holding an
//! ephemeral port: local port inside the namespace's range and not a listener's (an accepted
//! socket has its listener's port). The kernel runs it before it fills a reply for a socket
//! (inet_diag_bc_sk), so a server's inbound connections cost the dump its walk only.
//!
//! Semantics (net/ipv4/inet_diag.c): inet_diag_bc_run tests the socket with each op, then
//! skips `yes` or `no` bytes; the socket is kept when the jumps end exactly at the end of the
//! program, dropped when one jumps past it. inet_diag_bc_audit accepts a program whose `yes`
//! jumps chain exactly to its end and whose `no` jumps land on that chain or past the end.
//! Only S_GE/S_LE are used (every kernel has them; S_EQ is newer).

/// struct inet_diag_bc_op codes (include/uapi/linux/inet_diag.h).
const S_GE: u8 = 2;
const S_LE: u8 = 3;
/// One port comparison: the op, then an op whose `no` holds the port.
const OP: usize = 8;
/// Listener ports excluded by the kernel; beyond them the caller filters (each costs two
/// comparisons per socket walked).
pub const MAX_EXCLUDED: usize = 32;

fn op(code: u8, no: usize, port: u16) -> [u8; OP] {
    let no = (no as u16).to_ne_bytes();
    let p = port.to_ne_bytes();
    [code, OP as u8, no[0], no[1], 0, 0, p[0], p[1]]
}

/// The program keeping sockets with a local port in `range` and not in `excluded` (the
/// first `MAX_EXCLUDED` of them).
pub fn ephemeral_ports(range: (u16, u16), excluded: &[u16]) -> Vec<u8> {
    let excluded: Vec<u16> =
        excluded.iter().copied().filter(|p| (range.0..=range.1).contains(p)).take(MAX_EXCLUDED).collect();
    let ops = 2 * excluded.len() + 2;
    let mut bc = Vec::with_capacity(ops * OP);
    // The `no` jump that drops the socket: past the end from the op about to be written.
    let drop = |bc: &Vec<u8>| ops * OP - bc.len() + 4;
    for &p in &excluded {
        // sport < p: skip the second test; sport >= p + 1: go on; else sport == p: drop.
        bc.extend(op(S_GE, 2 * OP, p));
        match p.checked_add(1) {
            Some(next) => bc.extend(op(S_GE, drop(&bc), next)),
            None => bc.extend(op(S_LE, drop(&bc), p - 1)),
        }
    }
    bc.extend(op(S_GE, drop(&bc), range.0));
    bc.extend(op(S_LE, drop(&bc), range.1));
    bc
}

/// inet_diag_bc_run for the ops above, for the tests.
#[cfg(test)]
fn keeps(bc: &[u8], sport: u16) -> bool {
    let mut len = bc.len() as i64;
    let mut at = 0usize;
    while len > 0 {
        let o = &bc[at..];
        let port = u16::from_ne_bytes([o[6], o[7]]);
        let yes = match o[0] {
            S_GE => sport >= port,
            S_LE => sport <= port,
            c => panic!("op {c}"),
        };
        let j = if yes { o[1] as usize } else { u16::from_ne_bytes([o[2], o[3]]) as usize };
        len -= j as i64;
        at += j;
    }
    len == 0
}

/// inet_diag_bc_audit and valid_cc for the ops above, for the tests.
#[cfg(test)]
fn audit(bc: &[u8]) -> bool {
    let valid_cc = |cc: usize| {
        let (mut len, mut at) = (bc.len() as i64, 0usize);
        while len >= 0 {
            if cc as i64 > len {
                return false;
            }
            if cc as i64 == len {
                return true;
            }
            let yes = bc[at + 1] as i64;
            if yes < 4 || yes & 3 != 0 {
                return false;
            }
            len -= yes;
            at += yes as usize;
        }
        false
    };
    let (mut len, mut at) = (bc.len() as i64, 0usize);
    while len > 0 {
        if len < 2 * OP as i64 - OP as i64 {
            return false;
        }
        let (yes, no) = (bc[at + 1] as i64, u16::from_ne_bytes([bc[at + 2], bc[at + 3]]) as i64);
        let min = OP as i64;
        if no < min || no > len + 4 || no & 3 != 0 || (no < len && !valid_cc((len - no) as usize)) {
            return false;
        }
        if yes < min || yes > len + 4 || yes & 3 != 0 {
            return false;
        }
        at += yes as usize;
        len -= yes;
    }
    len == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_the_range_less_the_listeners() {
        let bc = ephemeral_ports((32768, 60999), &[40000, 50000, 80]);
        assert!(audit(&bc));
        assert_eq!(bc.len(), 6 * OP, "the listener on port 80 is outside the range: no test for it");
        for (port, kept) in [
            (32767, false),
            (32768, true),
            (39999, true),
            (40000, false),
            (40001, true),
            (50000, false),
            (60999, true),
            (61000, false),
            (80, false),
        ] {
            assert_eq!(keeps(&bc, port), kept, "port {port}");
        }
    }

    #[test]
    fn the_last_port_can_be_excluded() {
        let bc = ephemeral_ports((1024, 65535), &[65535]);
        assert!(audit(&bc));
        assert!(!keeps(&bc, 65535));
        assert!(keeps(&bc, 65534));
    }

    proptest! {
        #[test]
        fn the_program_passes_the_audit_and_means_what_it_says(
            lo in any::<u16>(), hi in any::<u16>(), ex in proptest::collection::vec(any::<u16>(), 0..40), port in any::<u16>()
        ) {
            let bc = ephemeral_ports((lo, hi), &ex);
            prop_assert!(audit(&bc));
            let in_range: Vec<u16> = ex.iter().copied().filter(|p| *p >= lo && *p <= hi).take(MAX_EXCLUDED).collect();
            prop_assert_eq!(keeps(&bc, port), port >= lo && port <= hi && !in_range.contains(&port));
        }
    }
}
