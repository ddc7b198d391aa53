//! Golden packets for balanced flows. Single-packet cases are the rows of
//! `xnlb_tests::flow_cases` (shared with the bench); the scenarios here need several packets
//! or a change of the maps between them. Expected outputs are built from scratch with
//! etherparse (fresh checksums), so byte equality also proves the incremental checksum updates.
//!
//! Over 400 lines on purpose: each scenario is a short story of several packets that reads
//! best whole, and they share the helpers at the top.

use std::{net::Ipv4Addr, time::Duration};

use lb_common::{
    backend::BackendState,
    flow::FlowState,
    stats::{DropReason, FlowEvent},
};
use xnlb::config::{Affinity, Filtering, PortRange, Protocol};
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
    mid_flow_without_state,
    port_range_rule,
    udp_new_flow,
    udp_without_checksum,
    backend_port_rewrite,
    reply_from_backend_port,
    one_arm_new_flow,
    one_arm_reply,
    unknown_neighbour,
    no_route,
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
        if action == XDP_TX {
            ok += 1;
            verify_checksums(&out).unwrap();
        } else {
            assert_eq!(
                action, XDP_DROP,
                "a flow without a port is dropped, never sent on a taken port"
            );
        }
    }
    let mut ports: Vec<u16> = bed
        .dp
        .reader()
        .flows()
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
    assert!(bed.events(FlowEvent::SnatPortRetry) > 0);
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
    assert_eq!(send(444, SYN), XDP_DROP, "the open flow keeps its tuple");
    assert_eq!(bed.drops(DropReason::ReplyCollision), 1);

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
    assert_eq!(bed.drops(DropReason::ReplyCollision), 1);
}

/// Sends a client packet to VIP:443 and returns the backend address it was redirected to.
fn sent_to(bed: &Bed, client: (Ipv4Addr, u16), flags: TcpFlags) -> Ipv4Addr {
    let pkt = bed.from_client(Pkt::tcp(client, (VIP, 443), flags));
    let (action, out) = bed.run(bed.client_if, &pkt.bytes());
    assert_eq!(action, XDP_REDIRECT, "{client:?} {flags:?}");
    Ipv4Addr::new(out[30], out[31], out[32], out[33])
}

/// The backend a new flow (SYN) from `client` goes to.
fn backend_for(bed: &Bed, client: (Ipv4Addr, u16)) -> Ipv4Addr {
    sent_to(bed, client, SYN)
}

#[test]
fn affinity_none_spreads_one_clients_ports_as_predicted() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let mut seen = std::collections::HashSet::new();
    for port in 40_000..40_030 {
        let got = backend_for(&bed, (client_ip(1), port));
        assert_eq!(got, (bed.predict("web", client_ip(1), port)), "port {port}");
        seen.insert(got);
    }
    assert_eq!(
        seen.len(),
        3,
        "30 source ports of one client reach all 3 backends"
    );
}

#[test]
fn affinity_single_keeps_a_client_on_one_backend() {
    let mut bed = Bed::new();
    let mut web = service("web", 443, &[1, 2, 3].map(backend_ip));
    web.affinity = Affinity::Single;
    bed.install(web);
    let mut clients_per_backend = std::collections::HashMap::new();
    for n in 1..=30u16 {
        let first = backend_for(&bed, (client_ip(n), 40_000));
        assert_eq!(first, (bed.predict("web", client_ip(n), 40_000)));
        for port in 40_001..40_010 {
            assert_eq!(
                backend_for(&bed, (client_ip(n), port)),
                first,
                "client {n} port {port}"
            );
        }
        *clients_per_backend.entry(first).or_insert(0) += 1;
    }
    assert_eq!(
        clients_per_backend.len(),
        3,
        "different clients still spread"
    );
}

#[test]
fn affinity_network_keeps_a_slash_24_together() {
    let mut bed = Bed::new();
    let mut web = service("web", 443, &[1, 2, 3].map(backend_ip));
    web.affinity = Affinity::Network;
    web.network_prefix = 24;
    bed.install(web);
    let mut per_net = std::collections::HashSet::new();
    for net in 0..12u8 {
        let first = backend_for(&bed, (remote_client(net, 1), 40_000));
        for host in [2u8, 77, 254] {
            let client = remote_client(net, host);
            assert_eq!(
                backend_for(&bed, (client, 40_000 + host as u16)),
                first,
                "{client} shares its /24's backend"
            );
            assert_eq!(first, (bed.predict("web", client, 1)));
        }
        per_net.insert(first);
    }
    assert!(per_net.len() >= 2, "different networks spread");
}

#[test]
fn filtering_single_uses_the_best_backend_and_fails_over() {
    let mut bed = Bed::new();
    let mut web = service("web", 443, &[1, 2, 3].map(backend_ip));
    web.filtering = Filtering::Single;
    bed.install(web);
    for n in 1..=10u16 {
        assert_eq!(backend_for(&bed, (client_ip(n), 40_000)), backend_ip(1));
    }
    // The datapath alone: its single backend marked down, the service not yet moved on.
    let b1 = bed.backend_id("web", "b1");
    bed.dp.set_backend_state(b1, BackendState::Down).unwrap();
    assert_eq!(
        bed.run(
            bed.client_if,
            &bed.from_client(Pkt::tcp((client_ip(50), 1), (VIP, 443), SYN))
                .bytes()
        )
        .0,
        XDP_DROP,
        "single backend down: no flow until the controller moves on"
    );
    // The controller's model: b1 down points the service at the next priority.
    bed.set_state("web", "b1", BackendState::Down);
    assert_eq!(backend_for(&bed, (client_ip(51), 40_000)), backend_ip(2));
}

#[test]
fn filtering_disabled_and_no_healthy_backend_drop_with_reasons() {
    let mut bed = Bed::new();
    let mut web = service("web", 443, &[1, 2, 3].map(backend_ip));
    web.filtering = Filtering::Disabled;
    bed.install(web);
    let syn = bed
        .from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN))
        .bytes();
    assert_eq!(bed.run(bed.client_if, &syn).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::FilteringDisabled), 1);

    let mut bed = Bed::new();
    three_backends(&mut bed);
    for b in ["b1", "b2", "b3"] {
        bed.set_state("web", b, BackendState::Down);
    }
    assert_eq!(bed.run(bed.client_if, &syn).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::NoBackend), 1);
    let web = bed.service_id("web");
    assert_eq!(bed.dp.reader().service_stats(web).unwrap().dropped, 1);
}

#[test]
fn fin_shortens_a_flow_and_a_new_syn_after_close_selects_again() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let client = (client_ip(4), 40_000);
    bed.run(
        bed.client_if,
        &bed.from_client(Pkt::tcp(client, (VIP, 443), SYN)).bytes(),
    );
    bed.run(
        bed.client_if,
        &bed.from_client(Pkt::tcp(client, (VIP, 443), FIN_ACK))
            .bytes(),
    );
    let flows = bed.dp.reader().flows().unwrap();
    assert_eq!(
        flows[0].1.state,
        FlowState::Closing as u8,
        "FIN marks the flow closing"
    );

    // A retransmitted SYN while open keeps the flow; a SYN on a closing tuple is a new flow.
    bed.run(
        bed.client_if,
        &bed.from_client(Pkt::tcp(client, (VIP, 443), SYN)).bytes(),
    );
    let web = bed.service_id("web");
    assert_eq!(bed.dp.reader().service_stats(web).unwrap().new_flows, 2);
    // It reuses the old entries in place: one flow, open again, and one reply entry that still
    // undoes the NAT for the backend's answer.
    let flows = bed.dp.reader().flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].1.state, FlowState::Open as u8);
    assert_eq!(bed.dp.reader().replies().unwrap().len(), 1);
    let chosen = bed.program.address_of(flows[0].1.backend_id);
    let reply = bed.from_backend(Pkt::tcp((chosen, 443), client, SYN_ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, to_client(&bed, &reply, 443, client));
}

#[test]
fn timeouts_expire_flows() {
    let mut bed = Bed::new();
    let mut dns = service("dns", 88, &[1, 2, 3].map(backend_ip));
    dns.protocol = Protocol::Udp;
    bed.install(dns);
    let dns = bed.service_id("dns");
    let pkt = bed
        .from_client(Pkt::udp((client_ip(1), 5000), (VIP, 88)))
        .bytes();
    bed.run(bed.client_if, &pkt);
    bed.run(bed.client_if, &pkt);
    assert_eq!(
        bed.dp.reader().service_stats(dns).unwrap().new_flows,
        1,
        "within the timeout: one flow"
    );
    bed.program.config.conntrack.udp_timeout = Duration::ZERO;
    bed.reprogram();
    std::thread::sleep(Duration::from_millis(20)); // past the coarse clock's tick
    bed.run(bed.client_if, &pkt);
    assert_eq!(
        bed.dp.reader().service_stats(dns).unwrap().new_flows,
        2,
        "after the timeout: a new flow"
    );
}

#[test]
fn established_flows_leave_a_dead_backend_but_stay_on_a_draining_one() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    // One flow per backend.
    let mut flows = Vec::new();
    for port in 40_000.. {
        let chosen = bed.predict("web", client_ip(1), port);
        if flows.iter().all(|&(_, c)| c != chosen) {
            backend_for(&bed, (client_ip(1), port));
            flows.push((port, chosen));
        }
        if flows.len() == 3 {
            break;
        }
    }
    let ack_to = |bed: &Bed, port| sent_to(bed, (client_ip(1), port), ACK);
    let (drain_port, draining) = flows[0];
    let (dead_port, dead) = flows[1];
    let name_of = |addr: Ipv4Addr| format!("b{}", addr.octets()[3] - 10);
    bed.set_state("web", &name_of(draining), BackendState::Draining);
    bed.set_state("web", &name_of(dead), BackendState::Down);

    assert_eq!(
        ack_to(&bed, drain_port),
        (draining),
        "draining keeps its established flow"
    );
    let moved = ack_to(&bed, dead_port);
    assert_ne!(moved, (dead), "a dead backend's flow is re-selected");
    assert_eq!(bed.events(FlowEvent::ReselectedDown), 1);
    for port in 50_000..50_020 {
        let got = backend_for(&bed, (client_ip(2), port));
        assert_ne!(got, (draining), "no new flow to a draining backend");
        assert_ne!(got, (dead), "no new flow to a dead backend");
    }
}

#[test]
fn switching_a_ring_moves_new_flows_only() {
    let mut bed = Bed::new();
    assert!(
        bed.dp.ring_mapped(),
        "ring tables are written through the mmap-ed map"
    );
    three_backends(&mut bed);
    let established: Vec<(u16, Ipv4Addr)> = (40_000..40_050)
        .map(|p| (p, backend_for(&bed, (client_ip(1), p))))
        .collect();
    let mut web = bed.program.service("web").clone();
    web.backends.push(backend("b4", backend_ip(4)));
    bed.install(web);
    for (port, backend) in established {
        let (_, out) = bed.run(
            bed.client_if,
            &bed.from_client(Pkt::tcp((client_ip(1), port), (VIP, 443), ACK))
                .bytes(),
        );
        assert_eq!(
            &out[30..34],
            &backend.octets(),
            "established flow on port {port} keeps its backend"
        );
    }
    let new: Vec<Ipv4Addr> = (60_000..60_100)
        .map(|p| backend_for(&bed, (client_ip(1), p)))
        .collect();
    assert!(
        new.contains(&backend_ip(4)),
        "new flows reach the added backend"
    );
}

#[test]
fn a_reply_entry_whose_flow_expired_never_rewrites_the_backends_own_traffic() {
    // A client once reached the backend through the VIP from port P; later it connects to the
    // backend's own address from the same port. The backend's answer carries the same tuple as
    // the old flow's replies, but it is not the balancer's: it must pass byte for byte.
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let client = (client_ip(12), 45_000);
    let backend = bed.predict("web", client.0, client.1);
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN));
    assert_eq!(bed.run(bed.client_if, &syn.bytes()).0, XDP_REDIRECT);
    let answer = bed.from_backend(Pkt::tcp((backend, 443), client, SYN_ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &answer.bytes());
    assert_eq!(
        action, XDP_REDIRECT,
        "while the flow lives, its replies are translated"
    );
    assert_eq!(out, to_client(&bed, &answer, 443, client));

    bed.program.config.conntrack.tcp_timeout = Duration::ZERO;
    bed.reprogram();
    std::thread::sleep(Duration::from_millis(20)); // past the coarse clock's tick
    let stamped = bed.dp.reader().flows().unwrap()[0].1.last_seen_ns;
    for round in 1..=2 {
        let (action, out) = bed.run(bed.server_if, &answer.bytes());
        assert_eq!(
            action, XDP_PASS,
            "round {round}: the flow expired, so not ours"
        );
        assert_eq!(out, answer.bytes(), "round {round}: untouched");
    }
    assert_eq!(
        bed.events(FlowEvent::StaleReply),
        1,
        "the stale entry is counted once and removed"
    );
    assert!(bed.dp.reader().replies().unwrap().is_empty());
    assert_eq!(
        bed.dp.reader().flows().unwrap()[0].1.last_seen_ns,
        stamped,
        "the expired flow is not refreshed by the backend's packet"
    );
}
