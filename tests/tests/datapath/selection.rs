//! How new flows choose a backend: affinity none, single and network as the controller's
//! tables predict, and filtering single (failover) and disabled.

use std::net::Ipv4Addr;

use lb_common::{
    backend::BackendState,
    stats::{DropReason, FlowEvent},
};
use xnlb::config::{Affinity, Filtering};
use xnlb_tests::{bed::*, flow_cases::three_backends, packets::*};

/// Sends a client packet to VIP:443 and returns the backend address it was redirected to.
pub(super) fn sent_to(bed: &Bed, client: (Ipv4Addr, u16), flags: TcpFlags) -> Ipv4Addr {
    let pkt = bed.from_client(Pkt::tcp(client, (VIP, 443), flags));
    let (action, out) = bed.run(bed.client_if, &pkt.bytes());
    assert_eq!(action, XDP_REDIRECT, "{client:?} {flags:?}");
    Ipv4Addr::new(out[30], out[31], out[32], out[33])
}

/// The backend a new flow (SYN) from `client` goes to.
pub(super) fn backend_for(bed: &Bed, client: (Ipv4Addr, u16)) -> Ipv4Addr {
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
    web.network_prefix = Some(24);
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
    // Addressed to this bed's interface.
    let syn = bed
        .from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN))
        .bytes();
    assert_eq!(bed.run(bed.client_if, &syn).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::NoBackend), 1);
    let web = bed.service_id("web");
    assert_eq!(bed.dp.reader().service_stats(web).unwrap().dropped, 1);
}

/// Port rules follow reloads: a port that moves from a single-port rule into a range, then
/// leaves with its service, is balanced, balanced, then dropped.
#[test]
fn port_rules_follow_reloads_from_one_port_to_a_range_to_none() {
    let mut bed = Bed::new();
    // Keeps the VIP the balancer's when `web` is gone.
    bed.install(service("other", 80, &[backend_ip(2)]));
    bed.install(service("web", 443, &[backend_ip(1)]));
    let to = |port: u16| {
        bed.from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, port), SYN))
            .bytes()
    };
    let (syn443, syn444) = (to(443), to(444));
    assert_eq!(bed.run(bed.client_if, &syn443).0, XDP_REDIRECT);
    assert_eq!(bed.run(bed.client_if, &syn444).0, XDP_DROP);

    // 443 becomes part of a range 440-450: the exact entry goes, the range answers.
    let mut ranged = service("web", 443, &[backend_ip(1)]);
    ranged.ports = vec![xnlb::config::PortRange { lo: 440, hi: 450 }];
    bed.install(ranged);
    assert_eq!(bed.run(bed.client_if, &syn443).0, XDP_REDIRECT);
    assert_eq!(bed.run(bed.client_if, &syn444).0, XDP_REDIRECT);

    // Removed: neither answers, and the VIP's traffic is dropped, not passed.
    bed.program.remove("web");
    bed.reprogram();
    let before = bed.drops(DropReason::NoService);
    assert_eq!(bed.run(bed.client_if, &syn443).0, XDP_DROP);
    assert_eq!(bed.run(bed.client_if, &syn444).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::NoService), before + 2);
}

/// An established flow has its service from its backend, so its packets skip the rule lookup:
/// a reload that takes its port's rule away removes the flow, and its next packet is dropped as
/// traffic to a port without a rule, as a new one would be. A flow on a port that keeps its
/// rule goes on.
#[test]
fn an_established_flow_ends_with_its_ports_rule() {
    let mut bed = Bed::new();
    let mut web = service("web", 443, &[backend_ip(1)]);
    web.ports.push(xnlb::config::PortRange { lo: 444, hi: 444 });
    bed.install(web.clone());
    let (kept, cut) = ((client_ip(2), 40_001), (client_ip(2), 40_002));
    assert_eq!(bed.connect(kept, (VIP, 443)).0, XDP_REDIRECT);
    assert_eq!(bed.connect(cut, (VIP, 444)).0, XDP_REDIRECT);
    assert_eq!(bed.dp.reader().flows().unwrap().len(), 2);

    web.ports.truncate(1);
    bed.install(web);
    let flows = bed.dp.reader().flows().unwrap();
    assert_eq!(flows.len(), 1, "the reload removed the flow of port 444");
    assert_eq!(u16::from_be(flows[0].0.dst_port), 443);
    assert_eq!(bed.events(FlowEvent::ForeignRemoved), 1);
    let ack = |client, port| bed.from_client(Pkt::tcp(client, (VIP, port), ACK)).bytes();
    let before = bed.drops(DropReason::NoService);
    assert_eq!(bed.run(bed.client_if, &ack(cut, 444)).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::NoService), before + 1);
    assert_eq!(bed.run(bed.client_if, &ack(kept, 443)).0, XDP_REDIRECT);
}

/// A reload removes a service before it re-points the service's flows at their new service
/// (`datapath::reconcile`, steps 4 and 5): in between, a flow's backend names a service that is
/// gone. Its packets then find their service by the rule, as a flow without one would, and go
/// on (they were dropped as `no_service` when only the flow's backend was asked).
#[test]
fn a_flow_whose_service_is_gone_finds_it_by_the_rule() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let client = (client_ip(3), 40_003);
    let backend = bed.predict("web", client.0, client.1);
    assert_eq!(bed.connect(client, (VIP, 443)).0, XDP_REDIRECT);
    let id = bed.dp.reader().flows().unwrap()[0].1.backend_id;
    let mut info = bed.dp.backend(id).expect("backend");
    info.service_id = lb_common::limits::MAX_SERVICES - 1;
    bed.dp.set_backend(id, &info).expect("set backend");

    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
    let (action, out) = bed.run(bed.client_if, &ack.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[30..34], &backend.octets(), "on its backend still");
    assert_eq!(bed.drops(DropReason::NoService), 0);
}
