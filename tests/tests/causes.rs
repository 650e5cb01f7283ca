//! The plateau causes beyond ports, fds and TIME_WAIT churn: tw-bucket overflow,
//! bind-before-connect hoarding, addresses that are not local. Each is provoked for real in a
//! private network namespace; counts are checked against the workload's errno counts and the
//! namespace's own TcpExt counters.

mod common;

use common::*;

#[test]
fn tw_bucket_overflow_is_charged_to_the_client() {
    if !require_root("tw_bucket_overflow_is_charged_to_the_client") {
        return;
    }
    let ct = Conntrace::start(&[]);
    // 30 connections the client closes first, with room for 10 TIME_WAIT sockets: the other
    // 20 close without one (inet_twsk_alloc returns NULL, TcpExt TCPTimeWaitOverflow).
    let out = in_netns(
        "sysctl -qw net.ipv4.tcp_tw_reuse=0\n\
         sysctl -qw net.ipv4.tcp_max_tw_buckets=10\n\
         $WL tw --addr 127.0.0.1:9000 --count 30 --hold-ms 1000",
    );
    let lines = ct.stop();
    let wl = report(&out);
    let client = wl["pid"].as_u64().unwrap();
    let server = wl["server_pid"].as_u64().unwrap();
    assert_eq!(wl["ok"], 30, "{wl}");
    let truth_overflows = wl["tw_overflows"].as_u64().unwrap();
    let truth_tw = wl["time_wait_sockets"].as_u64().unwrap();
    // inet_twsk_alloc() compares the table's count with the limit, and the count grows only
    // later (inet_twsk_hashdance_schedule): two closes on two CPUs can both pass the check, so
    // the table may end above its limit (seen: 11 with a limit of 10 on 6.12). Every close
    // is one or the other, and the table is full.
    assert_eq!(truth_tw + truth_overflows, 30, "{wl}");
    assert!(truth_tw >= 10, "{wl}");

    let s = &status(&lines)["signals"]["tw_overflow"];
    let mode = s["mode"].as_str().unwrap();
    assert!(expected_modes("tw_overflow", &NETWORK_MODES).contains(&mode), "{s}");
    // Exact where the hook sees inet_twsk_alloc's result; inferred from the table fill
    // otherwise, and said so.
    assert_eq!(s["exact"], mode == "fexit", "{s}");
    let overflows = total(&lines, client, "tw_overflows");
    let tws = total(&lines, client, "time_wait_created");
    if mode == "kprobe" {
        // What is counted is classified exactly (inet_twsk_alloc's own result): never more of
        // either kind than happened.
        assert!(overflows <= truth_overflows && tws <= truth_tw, "overflows {overflows}, TIME_WAIT {tws}: {wl}");
        // A kprobe that fires (in softirq) while another BPF kprobe runs on that CPU is
        // skipped by the kernel. Linux 6.7+ counts the skips and conntrace reports them: then
        // every close is either counted or reported skipped. Before 6.7 the kernel reports
        // them nowhere (status says the mode is approximate): how many are lost depends on
        // the load, so only the upper bounds above hold there.
        let skipped = skipped_runs(&lines, "tw_k");
        eprintln!("kprobe mode: {overflows} overflows and {tws} TIME_WAITs counted, {skipped} runs skipped or missed");
        if kernel_at_least(&lines, 6, 7) {
            assert!(
                overflows + tws + skipped >= 30,
                "overflows {overflows}, TIME_WAIT {tws}, skipped runs {skipped}: {wl}"
            );
        } else {
            eprintln!("kprobe mode before 6.7: {} of 30 closes counted, skips not reported", overflows + tws);
        }
    } else {
        assert_eq!(overflows, truth_overflows, "TIME_WAIT {tws}: {wl}");
        assert_eq!(tws, truth_tw, "{wl}");
    }
    assert_eq!(total(&lines, server, "tw_overflows"), 0, "the server closed last");

    let vs = activations(&lines, client, "tw_buckets");
    assert_eq!(vs.len(), 1, "{vs:?}");
    let e = &vs[0]["evidence"];
    assert_eq!(e["tcp_max_tw_buckets"], 10, "{e}");
    // What the kernel compared with the limit when it refused: the table that the namespace
    // still holds at the end (it only grows during the run; TIME_WAIT lasts 60 s).
    assert_eq!(e["time_wait"], truth_tw, "{e}");
    assert_eq!(e["netns_tw_overflows"], truth_overflows, "{e}");
    assert!(vs[0]["fix"].to_string().contains("tcp_max_tw_buckets"));
}

/// A connection that ends in a reset after this side closed (FIN_WAIT2 → CLOSE) must count
/// neither as TIME_WAIT nor as an overflow: the socket is unhashed either way when the
/// tracepoint fires, so only sk_err and tcp_send_reset tell them apart.
#[test]
fn resets_after_close_are_not_time_wait() {
    if !require_root("resets_after_close_are_not_time_wait") {
        return;
    }
    // The peer resets (sk_err is set), then this side resets after its CLOSE (SO_LINGER 0:
    // tcp_disconnect sends the reset after the state change, so the count is taken back).
    for flag in ["", "--linger"] {
        let ct = Conntrace::start(&[]);
        let out = in_netns(&format!("$WL resets --addr 127.0.0.1:9000 --count 10 {flag}"));
        let lines = ct.stop();
        let wl = report(&out);
        let pid = wl["pid"].as_u64().unwrap();
        assert_eq!(wl["time_wait_sockets"], 0, "{flag}: {wl}");
        assert_eq!(wl["resets_sent"], 10, "{flag}: {wl}");
        assert_eq!(total(&lines, pid, "connect_ok"), 10, "{flag}");
        assert_eq!(total(&lines, pid, "time_wait_created"), 0, "{flag}");
        assert_eq!(total(&lines, pid, "tw_overflows"), 0, "{flag}");
    }
}

#[test]
fn bind_before_connect_hoards_ports_across_destinations() {
    if !require_root("bind_before_connect_hoards_ports_across_destinations") {
        return;
    }
    let ct = Conntrace::start(&[]);
    // Three destinations could take 50 ports each; bound before connect, the 50 ports of the
    // range are exclusive and shared by all three: 50 connections, then bind() fails.
    let out = in_netns(
        "sysctl -qw net.ipv4.ip_local_port_range='40000 40049'\n\
         $WL bind-connect --bind 0.0.0.0:0 --dests 127.0.0.1:9000,127.0.0.2:9000,127.0.0.3:9000 --count 60 --hold-ms 1000",
    );
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    let failed = wl["bind_errors"]["EADDRINUSE"].as_u64().unwrap();
    assert_eq!(wl["ok"], 50, "{wl}");
    assert_eq!(failed, 10, "{wl}");
    assert_signal_exact(&lines, "bind", &NETWORK_MODES);
    let sum_bind =
        |errno: &str| samples(&lines, pid).map(|s| s["bind_errors"][errno].as_u64().unwrap_or(0)).sum::<u64>();
    if kprobe_mode(&lines, "bind") {
        assert!(total(&lines, pid, "bind_failures") <= failed);
    } else {
        assert_eq!(total(&lines, pid, "bind_failures"), failed);
        assert_eq!(sum_bind("EADDRINUSE"), failed);
        assert_eq!(total(&lines, pid, "bound_connects"), 50);
    }
    assert_eq!(total(&lines, pid, "port_assign_failures"), 0);
    let ev = events(&lines, pid, "bind_error");
    assert!(!ev.is_empty() && ev.iter().all(|e| e["errno"] == "EADDRINUSE" && e["sport"] == 0), "{ev:?}");

    let vs = activations(&lines, pid, "bind_hoarding");
    assert_eq!(vs.len(), 1, "{vs:?}");
    let e = &vs[0]["evidence"];
    assert_eq!(e["range"], "40000-40049", "{e}");
    assert_eq!(e["in_use"], 50, "{e}");
    assert!(vs[0]["fix"].to_string().contains("IP_BIND_ADDRESS_NO_PORT"));
    assert!(activations(&lines, pid, "ephemeral_ports").is_empty(), "bind(0) failing is not a connect() port search");
}

#[test]
fn non_local_address_is_not_port_exhaustion() {
    if !require_root("non_local_address_is_not_port_exhaustion") {
        return;
    }
    let ct = Conntrace::start(&[]);
    // 192.0.2.1 (TEST-NET-1) is on no interface of the new namespace.
    let out = in_netns("$WL bind-addr --addr 192.0.2.1:8080 --count 5");
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert_eq!(wl["bind_errors"]["EADDRNOTAVAIL"], 5, "{wl}");
    assert_signal_exact(&lines, "bind", &NETWORK_MODES);
    let n: u64 = samples(&lines, pid).map(|s| s["bind_errors"]["EADDRNOTAVAIL"].as_u64().unwrap_or(0)).sum();
    if !kprobe_mode(&lines, "bind") {
        assert_eq!(n, 5);
    }
    let ev = events(&lines, pid, "bind_error");
    assert!(ev.iter().all(|e| e["saddr"] == "192.0.2.1" && e["sport"] == 8080), "{ev:?}");
    let vs = activations(&lines, pid, "address_unavailable");
    assert_eq!(vs.len(), 1, "{vs:?}");
    assert_eq!(vs[0]["evidence"]["addresses"][0], "192.0.2.1:8080");
    assert!(activations(&lines, pid, "ephemeral_ports").is_empty());
    assert!(activations(&lines, pid, "bind_hoarding").is_empty());
}

#[test]
fn full_accept_queue_is_charged_to_the_listener_owner() {
    if !require_root("full_accept_queue_is_charged_to_the_listener_owner") {
        return;
    }
    let ct = Conntrace::start(&[]);
    // A listener with backlog 8 that never accepts (separate process), 40 clients: 9
    // connections fill its accept queue (full above the backlog), the other SYNs, final ACKs
    // and their retransmits are dropped. (More clients may see their side ESTABLISHED: a final
    // ACK that arrives once the queue is full is dropped.)
    let out = in_netns("$WL backlog --listen 127.0.0.1:9000 --backlog 8 --clients 40 --wait-ms 2500 --hold-ms 1500");
    let lines = ct.stop();
    let wl = report(&out);
    let server = wl["server_pid"].as_u64().unwrap();
    let client = wl["pid"].as_u64().unwrap();
    let truth = wl["listen_drops"].as_u64().unwrap();
    assert_eq!(wl["accept_queue"], 9, "{wl}");
    assert!(truth >= 31, "{wl}");
    assert_eq!(wl["listen_overflows"], truth, "{wl}");
    let s = &status(&lines)["signals"]["accept_queue"];
    assert_eq!((s["mode"].as_str(), s["exact"].as_bool()), (Some("sock_diag"), Some(true)), "{s}");
    assert_eq!(total(&lines, server, "listen_drops"), truth);
    assert_eq!(total(&lines, client, "listen_drops"), 0);

    let vs = activations(&lines, server, "accept_queue");
    assert_eq!(vs.len(), 1, "{vs:?}");
    let v = vs[0];
    assert_eq!(v["listener"], "127.0.0.1:9000");
    let e = &v["evidence"];
    assert_eq!((e["backlog"].as_u64(), e["queue_len"].as_u64()), (Some(8), Some(9)), "{e}");
    assert!(e["drops"].as_u64().unwrap() >= 1, "{e}");
    let fixes = v["fix"].to_string();
    assert!(fixes.contains("somaxconn") && fixes.contains("accept faster"), "{fixes}");
    assert!(activations(&lines, client, "accept_queue").is_empty());
}

/// A SYN flood (raw SYNs from an address whose SYN-ACKs go out a veth to nobody) against a
/// listener with backlog 8: with tcp_syncookies=0 the SYNs beyond the queue are dropped, with
/// 1 they are answered with cookies. Either way the verdict is the SYN queue, not the accept
/// queue, charged to the listener's owner.
fn syn_flood(cookies: bool) {
    let ct = Conntrace::start(&[]);
    let out = in_netns(&format!(
        "ip link add v0 type veth peer name v1\n\
         ip addr add 10.9.0.1/24 dev v0\nip link set v0 up\nip link set v1 up\n\
         ip neigh add 10.9.0.2 lladdr 02:00:00:00:00:02 dev v0 nud permanent\n\
         sysctl -qw net.ipv4.tcp_syncookies={}\n\
         $WL syn-flood --listen 10.9.0.1:9000 --from 10.9.0.2 --syns 30 --backlog 8 --hold-ms 1500",
        cookies as u8
    ));
    let lines = ct.stop();
    let wl = report(&out);
    let server = wl["server_pid"].as_u64().unwrap();
    assert_eq!(wl["syn_recv"], 9, "{wl}");
    let (drops, cookie_count) = (wl["reqq_full_drop"].as_u64().unwrap(), wl["reqq_full_cookies"].as_u64().unwrap());
    if cookies {
        assert_eq!((drops, cookie_count), (0, 21), "{wl}");
    } else {
        assert_eq!((drops, cookie_count), (21, 0), "{wl}");
    }
    assert_eq!(wl["listen_overflows"], 0, "{wl}");
    let s = &status(&lines)["signals"]["syn_queue"];
    assert_eq!((s["mode"].as_str(), s["exact"].as_bool()), (Some("sock_diag"), Some(true)), "{s}");
    assert_eq!(total(&lines, server, "listen_drops"), drops);
    assert_eq!(total(&lines, server, "syncookies"), cookie_count);

    let vs = activations(&lines, server, "syn_queue");
    let all: Vec<&serde_json::Value> = lines.iter().filter(|v| v["type"] == "verdict" && v["pid"] == server).collect();
    assert_eq!(vs.len(), 1, "the server's verdicts: {all:?}");
    assert_eq!(vs[0]["listener"], "10.9.0.1:9000");
    let e = &vs[0]["evidence"];
    assert_eq!((e["syn_recv"].as_u64(), e["backlog"].as_u64()), (Some(9), Some(8)), "{e}");
    assert!(activations(&lines, server, "accept_queue").is_empty());
}

#[test]
fn full_syn_queue_without_syncookies_drops_syns() {
    if !require_root("full_syn_queue_without_syncookies_drops_syns") {
        return;
    }
    syn_flood(false);
}

#[test]
fn full_syn_queue_with_syncookies_is_still_named() {
    if !require_root("full_syn_queue_with_syncookies_is_still_named") {
        return;
    }
    syn_flood(true);
}

#[test]
fn exhausted_tcp_memory_is_named_with_tcp_mem() {
    if !require_root("exhausted_tcp_memory_is_named_with_tcp_mem") {
        return;
    }
    if std::env::var("CONNTRACE_IN_VM").is_err() {
        eprintln!(
            "SKIPPED exhausted_tcp_memory_is_named_with_tcp_mem: lowers the global net.ipv4.tcp_mem, so it runs only \
             inside the kernel-matrix VM (cargo xtask vm-test)"
        );
        return;
    }
    let ct = Conntrace::start(&[]);
    if status(&ct.seen)["signals"]["tcp_mem"]["mode"] == "unavailable" {
        // fexit/kprobe-only runs: the signal is hooked by its tracepoint only.
        let _ = ct.stop();
        eprintln!(
            "SKIPPED exhausted_tcp_memory_is_named_with_tcp_mem: tcp_mem needs tracepoints, not allowed in this mode"
        );
        return;
    }
    const TCP_MEM: &str = "/proc/sys/net/ipv4/tcp_mem";
    let _restore = Sysctl(TCP_MEM, std::fs::read_to_string(TCP_MEM).unwrap());
    // 20/40/60 pages (80/160/240 KiB) for all TCP sockets of the machine.
    std::fs::write(TCP_MEM, "20 40 60").unwrap();
    let out = in_netns("$WL mem-hog --addr 127.0.0.1:9000 --conns 8 --bytes 1000000 --hold-ms 1000");
    drop(_restore);
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert!(wl["written"].as_u64().unwrap() < wl["asked"].as_u64().unwrap(), "{wl}");
    assert!(wl["memory_pressures"].as_u64().unwrap() > 0, "{wl}");
    let refused = total(&lines, pid, "tcp_mem_send_refused") + total(&lines, pid, "tcp_mem_recv_refused");
    assert!(refused > 0, "{wl}");
    let vs = activations(&lines, pid, "tcp_mem");
    assert_eq!(vs.len(), 1, "{vs:?}");
    assert_eq!(vs[0]["evidence"]["tcp_mem"], serde_json::json!([20, 40, 60]));
    assert!(vs[0]["fix"].to_string().contains("ss -tmn"));
}

#[test]
fn full_conntrack_table_is_named_and_charged_to_the_connecting_process() {
    if !require_root("full_conntrack_table_is_named_and_charged_to_the_connecting_process") {
        return;
    }
    if std::env::var("CONNTRACE_IN_VM").is_err() {
        eprintln!(
            "SKIPPED full_conntrack_table_is_named_and_charged_to_the_connecting_process: lowers the global \
             net.netfilter.nf_conntrack_max, so it runs only inside the kernel-matrix VM (cargo xtask vm-test)"
        );
        return;
    }
    let ct = Conntrace::start(&[]);
    if status(&ct.seen)["signals"]["netfilter_drop"]["mode"] == "unavailable" {
        let _ = ct.stop();
        eprintln!(
            "SKIPPED full_conntrack_table_is_named_and_charged_to_the_connecting_process: netfilter_drop needs \
             tracepoints, not allowed in this mode"
        );
        return;
    }
    let loaded = std::process::Command::new("modprobe").arg("nf_conntrack").status().map(|s| s.success());
    assert_eq!(loaded.ok(), Some(true), "modprobe nf_conntrack");
    const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
    let _restore = Sysctl(MAX, std::fs::read_to_string(MAX).unwrap());
    std::fs::write(MAX, "12").unwrap();
    // A rule that needs conntrack makes the namespace track its connections; 12 held
    // connections fill the table, the SYNs of 5 more are dropped (twice each: the first
    // retransmission comes after 1 s).
    let out = in_netns(
        "nft add table ip t\n\
         nft add chain ip t out '{ type filter hook output priority 0; }'\n\
         nft add rule ip t out ct state new counter\n\
         $WL ct-fill --addr 127.0.0.1:9000 --hold 12 --extra 5 --wait-ms 1500 --hold-ms 1500",
    );
    drop(_restore);
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert_eq!(wl["held"], 12, "{wl}");
    assert_eq!(wl["syn_sent"], 5, "{wl}");
    let truth = wl["ct_drops"].as_u64().unwrap();
    assert!(truth >= 5, "{wl}");
    // On a miss, say where the drops went (seen once in the VM: 2 of 10 on the workload).
    let elsewhere: Vec<String> = lines
        .iter()
        .filter(|v| v["type"] == "sample" && v["netfilter_drops"].as_u64().unwrap_or(0) > 0 && v["pid"] != pid)
        .map(|v| format!("{}[{}]: {}", v["comm"], v["pid"], v["netfilter_drops"]))
        .collect();
    assert_eq!(
        total(&lines, pid, "netfilter_drops"),
        truth,
        "{wl}; drops charged elsewhere: {elsewhere:?}; skipped runs: {}",
        skipped_runs(&lines, "nf_drop")
    );
    let vs = activations(&lines, pid, "conntrack_full");
    assert_eq!(vs.len(), 1, "{vs:?}");
    let e = &vs[0]["evidence"];
    assert_eq!(e["max"], 12, "{e}");
    assert!(e["drop"].as_u64().unwrap() >= 1, "{e}");
    assert!(vs[0]["fix"].to_string().contains("nf_conntrack_max"));
}
