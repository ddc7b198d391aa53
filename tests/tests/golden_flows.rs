//! Golden packets for balanced flows: each expected output is built from scratch with
//! etherparse (fresh checksums), so byte equality also proves the incremental checksum updates.

use std::net::Ipv4Addr;

use lb_common::{
    addr::PROTO_UDP,
    backend::BackendState,
    flow::FlowState,
    service::{Affinity, Filtering},
    settings::DatapathSettings,
    stats::{DropReason, FlowEvent, PassReason},
};
use xnlb_tests::{bed::*, packets::*};

fn three_backends() -> Vec<(u32, Ipv4Addr, u16, u32)> {
    (1..=3)
        .map(|n| (n as u32 - 1, backend_ip(n), 0, 100))
        .collect()
}

fn ip_of(id: u32) -> Ipv4Addr {
    backend_ip(id as u8 + 1)
}

/// The packet the balancer should send to `backend` for `pkt` (two-arm: client kept).
fn expected_to_backend(bed: &Bed, pkt: &Pkt, backend: (Ipv4Addr, u16)) -> Vec<u8> {
    pkt.clone()
        .addressed((pkt.src, pkt.src_port()), backend)
        .ttl(pkt.ttl - 1)
        .macs(bed.server_if.mac, neighbour_mac(backend.0))
        .bytes()
}

/// What the client should get for a backend's `reply` to `client`: source restored to
/// VIP:`port`, TTL-1, towards the router.
fn expected_to_client(bed: &Bed, reply: &Pkt, port: u16, client: (Ipv4Addr, u16)) -> Vec<u8> {
    reply
        .clone()
        .addressed((VIP, port), client)
        .ttl(reply.ttl - 1)
        .macs(bed.client_if.mac, ROUTER_MAC)
        .bytes()
}

#[test]
fn two_arm_syn_goes_to_the_predicted_backend_and_the_flow_and_its_replies_follow() {
    let mut bed = Bed::new();
    bed.install(&ServiceSpec::tcp(0, 443, three_backends()));
    let client = (client_ip(42), 51_000);
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN));

    let chosen = bed.predict(0, client.0, client.1);
    let (action, out) = bed.run(bed.client_if, &syn.bytes());
    assert_eq!(action, XDP_REDIRECT, "to the server-side interface");
    assert_eq!(
        out,
        expected_to_backend(&bed, &syn, (ip_of(chosen), 443)),
        "SYN: DNAT to the predicted backend, TTL-1"
    );

    for _ in 0..3 {
        let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
        let (action, out) = bed.run(bed.client_if, &ack.bytes());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(
            out,
            expected_to_backend(&bed, &ack, (ip_of(chosen), 443)),
            "the flow keeps its backend"
        );
    }

    let reply = bed.from_backend(
        Pkt::tcp((ip_of(chosen), 443), client, SYN_ACK),
        bed.server_if,
    );
    let (action, out) = bed.run(bed.server_if, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT, "back to the client-side interface");
    let want = expected_to_client(&bed, &reply, 443, client);
    assert_eq!(out, want, "reply: source restored to the VIP");

    let stats = bed.dp.reader().backend_stats(chosen).unwrap();
    assert_eq!(
        (
            stats.new_flows,
            stats.to_backend_packets,
            stats.to_client_packets
        ),
        (1, 4, 1)
    );
    assert_eq!(bed.dp.reader().service_stats(0).unwrap().new_flows, 1);
}

#[test]
fn one_arm_snat_both_directions_out_the_same_interface() {
    let mut bed = Bed::new();
    bed.one_arm((20_000, 20_063));
    let backends = (1..=3)
        .map(|n| (n as u32 - 1, one_arm_backend_ip(n), 0, 100))
        .collect();
    bed.install(&ServiceSpec::tcp(0, 443, backends));
    let client = (client_ip(7), 40_001);
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN));
    let chosen = bed.predict(0, client.0, client.1);
    let backend = one_arm_backend_ip(chosen as u8 + 1);

    let (action, out) = bed.run(bed.client_if, &syn.bytes());
    assert_eq!(action, XDP_TX, "one-arm: out the interface it came in on");
    let flows = bed.dp.reader().flows().unwrap();
    assert_eq!(flows.len(), 1);
    let snat_port = u16::from_be(flows[0].1.reply.dst_port);
    assert!(
        (20_000..=20_063).contains(&snat_port),
        "SNAT port {snat_port} from the configured range"
    );
    let want = syn
        .clone()
        .addressed((SNAT_ADDR, snat_port), (backend, 443))
        .ttl(63)
        .macs(bed.client_if.mac, neighbour_mac(backend))
        .bytes();
    assert_eq!(out, want, "DNAT + SNAT");

    let reply = bed.from_backend(
        Pkt::tcp((backend, 443), (SNAT_ADDR, snat_port), SYN_ACK),
        bed.client_if,
    );
    let (action, out) = bed.run(bed.client_if, &reply.bytes());
    assert_eq!(action, XDP_TX);
    let want = expected_to_client(&bed, &reply, 443, client);
    assert_eq!(out, want, "reverse SNAT and DNAT");
}

#[test]
fn one_arm_ports_are_unique_per_backend_and_exhaustion_is_counted() {
    let mut bed = Bed::new();
    bed.one_arm((30_000, 30_015)); // 16 ports
    bed.install(&ServiceSpec::tcp(
        0,
        443,
        vec![(0, one_arm_backend_ip(1), 0, 100)],
    ));
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
fn udp_is_balanced_and_a_zero_checksum_stays_zero() {
    let mut bed = Bed::new();
    let mut spec = ServiceSpec::tcp(0, 88, three_backends());
    spec.proto = PROTO_UDP;
    bed.install(&spec);
    for (n, zero) in [(1u16, false), (2, true)] {
        let client = (client_ip(n), 53_000);
        let mut pkt = bed.from_client(Pkt::udp(client, (VIP, 88)));
        pkt.l4 = Transport::Udp {
            sport: client.1,
            dport: 88,
            zero_checksum: zero,
        };
        let chosen = bed.predict(0, client.0, client.1);
        let (action, out) = bed.run(bed.client_if, &pkt.bytes());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(
            out,
            expected_to_backend(&bed, &pkt, (ip_of(chosen), 88)),
            "zero checksum: {zero}"
        );
        if zero {
            assert_eq!(
                &out[14 + 20 + 6..14 + 20 + 8],
                &[0, 0],
                "no checksum stays no checksum"
            );
        }
    }
}

#[test]
fn port_range_rules_match_their_whole_range_and_nothing_else() {
    let mut bed = Bed::new();
    let mut spec = ServiceSpec::tcp(0, 0, three_backends());
    spec.ports = (1024, 65535);
    bed.install(&spec);
    bed.install(&ServiceSpec::tcp(1, 135, vec![(3, backend_ip(4), 0, 100)]));
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
fn a_backend_port_rewrites_the_destination_port() {
    let mut bed = Bed::new();
    bed.install(&ServiceSpec::tcp(
        0,
        443,
        vec![(0, backend_ip(1), 8443, 100)],
    ));
    let client = (client_ip(9), 41_000);
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN));
    let (_, out) = bed.run(bed.client_if, &syn.bytes());
    assert_eq!(out, expected_to_backend(&bed, &syn, (backend_ip(1), 8443)));
    let reply = bed.from_backend(
        Pkt::tcp((backend_ip(1), 8443), client, SYN_ACK),
        bed.server_if,
    );
    let (_, out) = bed.run(bed.server_if, &reply.bytes());
    assert_eq!(out, expected_to_client(&bed, &reply, 443, client));
}

#[test]
fn a_syn_takes_over_the_reply_tuple_of_a_closing_flow_only() {
    // Two services on one VIP send to the same backend port: a client reusing its source port
    // for the other service produces the same tuple at the backend.
    let mut bed = Bed::new();
    let backend = vec![(0, backend_ip(1), 8443, 100)];
    bed.install(&ServiceSpec::tcp(0, 443, backend.clone()));
    let mut other = ServiceSpec::tcp(1, 444, backend);
    other.backends[0].0 = 1;
    bed.install(&other);
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
        expected_to_client(&bed, &reply, 444, client),
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
    bed.install(&ServiceSpec::tcp(0, 443, three_backends()));
    let mut seen = std::collections::HashSet::new();
    for port in 40_000..40_030 {
        let got = backend_for(&bed, (client_ip(1), port));
        assert_eq!(
            got,
            ip_of(bed.predict(0, client_ip(1), port)),
            "port {port}"
        );
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
    let mut spec = ServiceSpec::tcp(0, 443, three_backends());
    spec.affinity = Affinity::Single as u8;
    bed.install(&spec);
    let mut clients_per_backend = std::collections::HashMap::new();
    for n in 1..=30u16 {
        let first = backend_for(&bed, (client_ip(n), 40_000));
        assert_eq!(first, ip_of(bed.predict(0, client_ip(n), 40_000)));
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
    let mut spec = ServiceSpec::tcp(0, 443, three_backends());
    spec.affinity = Affinity::Network as u8;
    spec.network_prefix = 24;
    bed.install(&spec);
    let mut per_net = std::collections::HashSet::new();
    for net in 0..12u8 {
        let first = backend_for(&bed, (Ipv4Addr::new(198, 19, net, 1), 40_000));
        for host in [2u8, 77, 254] {
            let client = Ipv4Addr::new(198, 19, net, host);
            assert_eq!(
                backend_for(&bed, (client, 40_000 + host as u16)),
                first,
                "{client} shares its /24's backend"
            );
            assert_eq!(first, ip_of(bed.predict(0, client, 1)));
        }
        per_net.insert(first);
    }
    assert!(per_net.len() >= 2, "different networks spread");
}

#[test]
fn filtering_single_uses_the_best_backend_and_fails_over() {
    let mut bed = Bed::new();
    let mut spec = ServiceSpec::tcp(0, 443, three_backends());
    spec.filtering = Filtering::Single as u8;
    bed.install(&spec);
    for n in 1..=10u16 {
        assert_eq!(backend_for(&bed, (client_ip(n), 40_000)), backend_ip(1));
    }
    // The controller marks cas1 down and points the service at the next priority.
    bed.dp.set_backend_state(0, BackendState::Down).unwrap();
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
    spec.backends[0].3 = 0;
    bed.publish(&spec);
    assert_eq!(backend_for(&bed, (client_ip(51), 40_000)), backend_ip(2));
}

#[test]
fn filtering_disabled_and_no_healthy_backend_drop_with_reasons() {
    let mut bed = Bed::new();
    let mut spec = ServiceSpec::tcp(0, 443, three_backends());
    spec.filtering = Filtering::Disabled as u8;
    bed.install(&spec);
    let syn = bed
        .from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN))
        .bytes();
    assert_eq!(bed.run(bed.client_if, &syn).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::FilteringDisabled), 1);

    let mut bed = Bed::new();
    let spec = ServiceSpec::tcp(0, 443, three_backends());
    bed.install(&spec);
    for id in 0..3 {
        bed.dp.set_backend_state(id, BackendState::Down).unwrap();
    }
    assert_eq!(bed.run(bed.client_if, &syn).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::NoBackend), 1);
    assert_eq!(bed.dp.reader().service_stats(0).unwrap().dropped, 1);
}

#[test]
fn an_unknown_neighbour_hands_the_translated_packet_to_the_kernel() {
    let mut bed = Bed::new();
    bed.install(&ServiceSpec::tcp(
        0,
        443,
        vec![(0, UNRESOLVED_BACKEND, 0, 100)],
    ));
    let syn = bed.from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN));
    let (action, out) = bed.run(bed.client_if, &syn.bytes());
    assert_eq!(action, XDP_PASS, "the kernel forwards it and resolves ARP");
    let want = syn
        .clone()
        .addressed((client_ip(1), 40_000), (UNRESOLVED_BACKEND, 443))
        .bytes();
    assert_eq!(out, want, "translated, TTL and MACs left to the kernel");
    assert_eq!(bed.passes(PassReason::NoNeighbour), 1);
}

#[test]
fn no_route_hands_the_translated_packet_to_the_kernel() {
    let mut bed = Bed::new();
    bed.install(&ServiceSpec::tcp(
        0,
        443,
        vec![(0, UNROUTABLE_BACKEND, 0, 100)],
    ));
    let syn = bed.from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN));
    let (action, out) = bed.run(bed.client_if, &syn.bytes());
    assert_eq!(action, XDP_PASS, "the kernel answers with ICMP unreachable");
    assert_eq!(
        out,
        syn.clone()
            .addressed((client_ip(1), 40_000), (UNROUTABLE_BACKEND, 443))
            .bytes()
    );
    assert_eq!(bed.passes(PassReason::NoFastRoute), 1);
}

#[test]
fn fin_shortens_a_flow_and_a_new_syn_after_close_selects_again() {
    let mut bed = Bed::new();
    bed.install(&ServiceSpec::tcp(0, 443, three_backends()));
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
    assert_eq!(bed.dp.reader().service_stats(0).unwrap().new_flows, 2);
    // It reuses the old entries in place: one flow, open again, and one reply entry that still
    // undoes the NAT for the backend's answer.
    let flows = bed.dp.reader().flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].1.state, FlowState::Open as u8);
    assert_eq!(bed.dp.reader().replies().unwrap().len(), 1);
    let chosen = ip_of(flows[0].1.backend_id);
    let reply = bed.from_backend(Pkt::tcp((chosen, 443), client, SYN_ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_to_client(&bed, &reply, 443, client));
}

#[test]
fn timeouts_expire_flows() {
    let mut bed = Bed::new();
    let mut spec = ServiceSpec::tcp(0, 88, three_backends());
    spec.proto = PROTO_UDP;
    bed.install(&spec);
    let pkt = bed
        .from_client(Pkt::udp((client_ip(1), 5000), (VIP, 88)))
        .bytes();
    bed.run(bed.client_if, &pkt);
    bed.run(bed.client_if, &pkt);
    assert_eq!(
        bed.dp.reader().service_stats(0).unwrap().new_flows,
        1,
        "within the timeout: one flow"
    );
    let mut s = DatapathSettings::defaults();
    s.udp_timeout_ns = 0;
    bed.settings(&s);
    std::thread::sleep(std::time::Duration::from_millis(20)); // past the coarse clock's tick
    bed.run(bed.client_if, &pkt);
    assert_eq!(
        bed.dp.reader().service_stats(0).unwrap().new_flows,
        2,
        "after the timeout: a new flow"
    );
}

#[test]
fn established_flows_leave_a_dead_backend_but_stay_on_a_draining_one() {
    let mut bed = Bed::new();
    let mut spec = ServiceSpec::tcp(0, 443, three_backends());
    bed.install(&spec);
    // One flow per backend.
    let mut flows = Vec::new();
    for port in 40_000.. {
        let chosen = bed.predict(0, client_ip(1), port);
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
    bed.dp
        .set_backend_state(draining, BackendState::Draining)
        .unwrap();
    bed.dp.set_backend_state(dead, BackendState::Down).unwrap();
    spec.backends[draining as usize].3 = 0;
    spec.backends[dead as usize].3 = 0;
    bed.publish(&spec);

    assert_eq!(
        ack_to(&bed, drain_port),
        ip_of(draining),
        "draining keeps its established flow"
    );
    let moved = ack_to(&bed, dead_port);
    assert_ne!(moved, ip_of(dead), "a dead backend's flow is re-selected");
    assert_eq!(bed.events(FlowEvent::ReselectedDown), 1);
    for port in 50_000..50_020 {
        let got = backend_for(&bed, (client_ip(2), port));
        assert_ne!(got, ip_of(draining), "no new flow to a draining backend");
        assert_ne!(got, ip_of(dead), "no new flow to a dead backend");
    }
}

#[test]
fn a_mid_flow_packet_without_state_is_balanced_and_counted() {
    let mut bed = Bed::new();
    bed.install(&ServiceSpec::tcp(0, 443, three_backends()));
    let client = (client_ip(8), 44_000);
    let got = sent_to(&bed, client, ACK);
    assert_eq!(
        got,
        ip_of(bed.predict(0, client.0, client.1)),
        "same hash, same backend as its SYN had"
    );
    assert_eq!(bed.events(FlowEvent::NonSynMiss), 1);
}

#[test]
fn switching_a_ring_moves_new_flows_only() {
    let mut bed = Bed::new();
    assert!(
        bed.dp.ring_mapped(),
        "ring tables are written through the mmap-ed map"
    );
    let mut spec = ServiceSpec::tcp(0, 443, three_backends());
    bed.install(&spec);
    let established: Vec<(u16, Ipv4Addr)> = (40_000..40_050)
        .map(|p| (p, backend_for(&bed, (client_ip(1), p))))
        .collect();
    spec.backends.push((3, backend_ip(4), 0, 100));
    bed.dp
        .set_backend(
            3,
            &lb_common::backend::BackendInfo {
                addr: xnlb::model::port_rules::addr_v4(backend_ip(4)),
                port: 0,
                family: lb_common::addr::FAMILY_V4,
                state: lb_common::backend::BackendState::Up as u8,
                service_id: 0,
            },
        )
        .unwrap();
    bed.publish(&spec);
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
