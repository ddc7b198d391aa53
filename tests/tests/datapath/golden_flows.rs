//! Golden packets for balanced flows. Single-packet cases are the rows of
//! `xnlb_tests::flow_cases` (shared with the bench); the scenarios here need several packets
//! or a change of the maps between them (`selection` and `flow_lifetime` hold more). Expected
//! outputs are built from scratch with etherparse (fresh checksums), so byte equality also
//! proves the incremental checksum updates.

use lb_common::stats::{DropReason, FlowEvent};
use xnlb::config::PortRange;
use xnlb_tests::{
    bed::*,
    flow_cases::{self, FlowCase, three_backends, to_backend, to_client},
    packets::*,
};

/// Runs one row on a fresh bed: the action, the exact bytes, the counter.
fn check(case: FlowCase) {
    let mut bed = Bed::new();
    (case.setup)(&mut bed);
    let (ingress, pkt) = (case.input)(&bed);
    let before = case.counts.map(|c| c.read(&bed));
    let (action, out) = bed.run(ingress, &pkt.bytes());
    assert_eq!(action, case.action, "{}: action", case.name);
    assert_eq!(out, (case.output)(&bed, &pkt), "{}: bytes", case.name);
    if let (Some(counter), Some(before)) = (case.counts, before) {
        assert_eq!(counter.read(&bed), before + 1, "{}: {counter:?}", case.name);
    }
}

/// One test per row of `flow_cases`, and a check that no row is left out.
macro_rules! rows {
    ($($row:ident),+ $(,)?) => {
        $(
            #[test]
            fn $row() {
                check(flow_cases::$row());
            }
        )+

        #[test]
        fn every_row_has_its_test() {
            let tested = [$(flow_cases::$row().name),+];
            let rows: Vec<&str> = flow_cases::all().iter().map(|c| c.name).collect();
            assert_eq!(rows, tested, "list every row of flow_cases::all() here");
        }
    };
}

rows!(
    two_arm_new_flow,
    two_arm_established_flow,
    two_arm_reply,
    claimed_new_flow,
    claimed_established_flow,
    claimed_reply,
    mid_flow_without_state,
    port_range_rule,
    udp_new_flow,
    udp_without_checksum,
    backend_port_rewrite,
    reply_from_backend_port,
    one_arm_new_flow,
    one_arm_established_flow,
    one_arm_reply,
    cluster_established_flow,
    unknown_neighbour,
    no_route,
    syn_for_another_host,
    reply_for_another_host,
    ipv6_new_flow,
    ipv6_established_flow,
    ipv6_reply,
);

#[test]
fn a_flows_packets_are_counted_for_its_backend_and_service() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let client = (client_ip(42), 51_000);
    let chosen = bed.predict("web", client.0, client.1);
    for flags in [SYN, ACK, ACK, ACK] {
        let pkt = bed.from_client(Pkt::tcp(client, (VIP, 443), flags));
        let (action, out) = bed.run(bed.client_if, &pkt.bytes());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out, to_backend(&bed, &pkt, (chosen, 443)), "{flags:?}");
    }
    let reply = bed.from_backend(Pkt::tcp((chosen, 443), client, SYN_ACK), bed.server_if);
    assert_eq!(bed.run(bed.server_if, &reply.bytes()).0, XDP_REDIRECT);

    let id = bed.program.backend_id_at("web", chosen);
    let stats = bed.dp.reader().backend_stats(id).unwrap();
    assert_eq!(
        (
            stats.new_flows,
            stats.to_backend_packets,
            stats.to_client_packets
        ),
        (1, 4, 1)
    );
    let web = bed.service_id("web");
    assert_eq!(bed.dp.reader().service_stats(web).unwrap().new_flows, 1);
}

#[test]
fn one_arm_ports_are_unique_per_backend_and_exhaustion_is_counted() {
    let mut bed = Bed::new();
    bed.one_arm((30_000, 30_015)); // 16 ports
    bed.install(service("web", 443, &[one_arm_backend_ip(1)]));
    let mut ok = 0;
    for n in 0..40u16 {
        let syn = bed.from_client(Pkt::tcp((client_ip(100 + n), 40_000), (VIP, 443), SYN));
        let (action, out) = bed.run(bed.client_if, &syn.bytes());
        assert_eq!(action, XDP_TX, "forwarded, or answered with a RST");
        verify_checksums(&out).unwrap();
        if !is_refusal(&out) {
            ok += 1;
        } else {
            assert_refuses(&out, &syn);
        }
    }
    // The SYNs' flows are half-open, and their ports as unique as established ones.
    assert!(bed.dp.reader().flows().unwrap().is_empty());
    let mut ports: Vec<u16> = bed
        .dp
        .reader()
        .half_open_flows()
        .unwrap()
        .iter()
        .map(|(_, f)| u16::from_be(f.reply.dst_port))
        .collect();
    let flows = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        flows,
        "no two flows share an SNAT port towards the same backend"
    );
    assert_eq!(ok, flows);
    assert!(
        (12..=16).contains(&ok),
        "{ok} of 16 ports allocated before hash attempts ran out"
    );
    assert_eq!(
        bed.drops(DropReason::SnatExhausted),
        40 - ok as u64,
        "every refused flow is counted"
    );
    assert_eq!(
        bed.events(FlowEvent::SnatExhaustedReset),
        40 - ok as u64,
        "and answered with a RST"
    );
    assert!(bed.events(FlowEvent::SnatPortRetry) > 0);
}

/// Whether an output frame is the balancer's RST (from the VIP) rather than a forwarded SYN.
fn is_refusal(out: &[u8]) -> bool {
    out[26..30] == VIP.octets()
}

/// `out` is exactly the VIP's answer to `syn` when no SNAT port is free: back to the sender's
/// MAC from the receiving interface's, VIP:443 → client, TTL 64, RST|ACK acknowledging the SYN
/// (sequence 0, window 0), no options, no data; checksums verified by the caller.
fn assert_refuses(out: &[u8], syn: &Pkt) {
    let sliced = etherparse::SlicedPacket::from_ethernet(out).expect("parseable RST");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = sliced.link else {
        panic!("an Ethernet frame")
    };
    assert_eq!(
        (eth.source(), eth.destination()),
        (syn.dst_mac, syn.src_mac)
    );
    let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("IPv4")
    };
    let h = ip.header();
    assert_eq!(
        (h.source_addr(), h.destination_addr().into()),
        (VIP, syn.src)
    );
    assert_eq!((h.ttl(), h.total_len(), h.ihl()), (64, 40, 5));
    let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("TCP")
    };
    assert_eq!(
        (tcp.source_port(), tcp.destination_port()),
        (443, syn.src_port())
    );
    assert!(tcp.rst() && tcp.ack() && !tcp.syn() && !tcp.fin());
    assert_eq!(
        (tcp.sequence_number(), tcp.acknowledgment_number()),
        (0, 1001)
    );
    assert_eq!((tcp.window_size(), tcp.data_offset()), (0, 5));
    assert!(tcp.payload().is_empty());
    assert_eq!(out.len(), 54, "the SYN's options and data are cut");
}

/// An SNAT port is the backend's tuple: it comes free when the connection has closed both ways
/// (or was reset) and `tcp_closed_timeout` has passed, not 30 s later; a half-closed connection
/// (the backend may still be sending) keeps its port.
#[test]
fn one_arm_ports_come_free_when_their_connection_has_closed() {
    let mut bed = Bed::new();
    bed.one_arm((30_000, 30_015)); // 16 ports
    bed.install(service("web", 443, &[one_arm_backend_ip(1)]));
    bed.program.config.conntrack.tcp_closed_timeout = std::time::Duration::from_millis(1);
    bed.reprogram();
    let backend = (one_arm_backend_ip(1), 443);
    let client = |n: u16| (client_ip(200 + n), 41_000);
    let mut open = Vec::new();
    for n in 0..40 {
        let syn = bed.from_client(Pkt::tcp(client(n), (VIP, 443), SYN));
        let (action, out) = bed.run(bed.client_if, &syn.bytes());
        assert_eq!(action, XDP_TX, "forwarded, or answered with a RST");
        if !is_refusal(&out) {
            let ack = bed.from_client(Pkt::tcp(client(n), (VIP, 443), ACK));
            assert_eq!(bed.run(bed.client_if, &ack.bytes()).0, XDP_TX);
            open.push(client(n));
        }
    }
    assert!(
        (12..=16).contains(&open.len()),
        "{} ports taken",
        open.len()
    );
    let snat_of = |bed: &Bed, c: (std::net::Ipv4Addr, u16)| {
        let flows = bed.dp.reader().flows().unwrap();
        let (_, f) = flows
            .iter()
            .find(|(k, _)| {
                k.src_port == c.1.to_be() && k.src[0] == u32::from_ne_bytes(c.0.octets())
            })
            .expect("the client's flow");
        (
            std::net::Ipv4Addr::from(f.reply.dst[0].to_ne_bytes()),
            u16::from_be(f.reply.dst_port),
        )
    };
    // Every connection but the first closes both ways: the client's FIN, then the backend's.
    // The first is only half-closed.
    let half_closed = snat_of(&bed, open[0]);
    for (i, &c) in open.iter().enumerate() {
        let fin = bed.from_client(Pkt::tcp(c, (VIP, 443), FIN_ACK));
        assert_eq!(bed.run(bed.client_if, &fin.bytes()).0, XDP_TX);
        if i > 0 {
            let back =
                bed.from_backend(Pkt::tcp(backend, snat_of(&bed, c), FIN_ACK), bed.client_if);
            assert_eq!(bed.run(bed.client_if, &back.bytes()).0, XDP_TX);
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(20)); // past the timeout and a clock tick

    let exhausted = bed.drops(DropReason::SnatExhausted);
    let mut again = 0;
    for n in 100..140 {
        let syn = bed.from_client(Pkt::tcp(client(n), (VIP, 443), SYN));
        let (action, out) = bed.run(bed.client_if, &syn.bytes());
        assert_eq!(action, XDP_TX, "forwarded, or answered with a RST");
        if !is_refusal(&out) {
            again += 1;
            let port = u16::from_be_bytes([out[34], out[35]]);
            assert_ne!(
                port, half_closed.1,
                "a half-closed connection keeps its port"
            );
        }
    }
    assert!(
        again + 1 >= open.len() - 2,
        "{again} new connections got the {} ports freed by closing",
        open.len() - 1
    );
    assert_eq!(
        bed.drops(DropReason::SnatExhausted) - exhausted,
        40 - again as u64
    );
}

#[test]
fn port_range_rules_match_their_whole_range_and_nothing_else() {
    let mut bed = Bed::new();
    let mut rpc = service("rpc", 1024, &[1, 2, 3].map(backend_ip));
    rpc.ports = vec![PortRange {
        lo: 1024,
        hi: 65535,
    }];
    bed.install(rpc);
    bed.install(service("epmap", 135, &[backend_ip(4)]));
    for port in [1024u16, 1025, 6001, 32768, 65535] {
        let pkt = bed.from_client(Pkt::tcp((client_ip(3), 40_000), (VIP, port), SYN));
        let (action, out) = bed.run(bed.client_if, &pkt.bytes());
        assert_eq!(action, XDP_REDIRECT, "port {port}");
        assert_eq!(
            u16::from_be_bytes([out[36], out[37]]),
            port,
            "the backend keeps the client's port"
        );
    }
    let pkt = bed.from_client(Pkt::tcp((client_ip(3), 40_000), (VIP, 135), SYN));
    let (_, out) = bed.run(bed.client_if, &pkt.bytes());
    assert_eq!(
        &out[30..34],
        &backend_ip(4).octets(),
        "135 is its own service"
    );
    for port in [1023u16, 136, 443] {
        let pkt = bed.from_client(Pkt::tcp((client_ip(3), 40_000), (VIP, port), SYN));
        assert_eq!(
            bed.run(bed.client_if, &pkt.bytes()).0,
            XDP_DROP,
            "port {port} has no rule"
        );
    }
}

#[test]
fn a_syn_takes_over_the_reply_tuple_of_a_closing_flow_only() {
    // Two services on one VIP send to the same backend port: a client reusing its source port
    // for the other service produces the same tuple at the backend.
    let mut bed = Bed::new();
    for (name, port) in [("web", 443), ("other", 444)] {
        let mut s = service(name, port, &[backend_ip(1)]);
        s.backends[0].port = Some(8443);
        bed.install(s);
    }
    let client = (client_ip(11), 41_000);
    let send = |port, flags| {
        let pkt = bed.from_client(Pkt::tcp(client, (VIP, port), flags));
        bed.run(bed.client_if, &pkt.bytes()).0
    };
    assert_eq!(send(443, SYN), XDP_REDIRECT);
    assert_eq!(
        send(444, SYN),
        XDP_DROP,
        "the half-open flow keeps its tuple"
    );
    assert_eq!(send(443, ACK), XDP_REDIRECT);
    assert_eq!(
        send(444, SYN),
        XDP_DROP,
        "the established flow keeps its tuple"
    );
    assert_eq!(bed.drops(DropReason::ReplyCollision), 2);

    assert_eq!(send(443, FIN_ACK), XDP_REDIRECT);
    assert_eq!(
        send(444, SYN),
        XDP_REDIRECT,
        "a SYN takes over from the closing flow"
    );
    let reply = bed.from_backend(
        Pkt::tcp((backend_ip(1), 8443), client, SYN_ACK),
        bed.server_if,
    );
    let (_, out) = bed.run(bed.server_if, &reply.bytes());
    assert_eq!(
        out,
        to_client(&bed, &reply, 444, client),
        "replies now belong to the new flow"
    );
    assert_eq!(bed.drops(DropReason::ReplyCollision), 2);
}
