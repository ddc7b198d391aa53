//! `xnlb trace` in the datapath: with a filter armed, each kind of decision writes exactly one
//! event with its fields; packets outside the filter, and every packet with none armed, write
//! nothing; the rate limit counts what it holds back.

use std::net::Ipv4Addr;

use lb_common::{
    addr::{FAMILY_V4, PROTO_TCP, v4},
    backend::BackendState,
    flow::FlowKey,
    hash::affinity_hash,
    stats::{DropReason, PassReason},
    trace::{ANY, TraceDecision, TraceDirection, TraceEvent, TraceFilter, TraceVerdict},
};
use xnlb::datapath::trace::Tap;
use xnlb_tests::{bed::*, flow_cases::three_backends, packets::*};

/// A filter for one client (a /32), any service and backend, that no test reaches the limit of.
fn for_client(client: Ipv4Addr) -> TraceFilter {
    TraceFilter {
        armed: 7,
        per_cpu_window: 10_000,
        client: v4(client.octets()),
        client_family: FAMILY_V4,
        client_prefix: 32,
        service_id: ANY,
        backend_id: ANY,
        ..TraceFilter::default()
    }
}

/// Runs `frame` in on `via` and returns the action and the events it wrote.
fn run(bed: &Bed, tap: &mut Tap, via: Iface, frame: &[u8]) -> (u32, Vec<TraceEvent>) {
    let (action, _) = bed.run(via, frame);
    let mut events = Vec::new();
    while let Some(e) = tap.next_event() {
        events.push(e);
    }
    (action, events)
}

/// The one event a packet wrote.
fn one(events: Vec<TraceEvent>, what: &str) -> TraceEvent {
    assert_eq!(events.len(), 1, "{what}: exactly one event, got {events:?}");
    events[0]
}

fn key(client: (Ipv4Addr, u16), to: (Ipv4Addr, u16)) -> FlowKey {
    FlowKey {
        src: v4(client.0.octets()),
        dst: v4(to.0.octets()),
        src_port: client.1.to_be(),
        dst_port: to.1.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

#[test]
fn each_decision_kind_writes_one_event_with_its_fields() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let web = bed.service_id("web");
    let mut tap = Tap::open(bed.dp.reader()).expect("trace maps");
    let client = (client_ip(1), 40_000);
    tap.arm(&for_client(client.0)).unwrap();

    // New flow: the ring's choice, hash and slot, the DNAT, the redirect.
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN)).bytes();
    let (action, events) = run(&bed, &mut tap, bed.client_if, &syn);
    assert_eq!(action, XDP_REDIRECT);
    let e = one(events, "SYN");
    let chosen = bed.predict("web", client.0, client.1);
    let chosen_id = bed.program.backend_id_at("web", chosen);
    assert_eq!(e.direction, TraceDirection::ToVip as u8);
    assert_eq!(e.decision, TraceDecision::NewFlow as u8);
    assert_eq!(e.client, key(client, (VIP, 443)));
    assert_eq!((e.service_id, e.backend_id), (web, chosen_id));
    assert_eq!(e.verdict, TraceVerdict::Sent as u8);
    assert_eq!(e.reason as u32, XDP_REDIRECT);
    assert_eq!(e.sent, key(client, (chosen, 443)), "DNAT to the backend");
    assert_eq!(e.out_ifindex, bed.server_if.index);
    assert_eq!(e.in_ifindex, bed.client_if.index);
    assert_eq!(e.tcp_flags, 0x02);
    let plan = &bed.program.image().services[&web];
    let hash = affinity_hash(
        plan.info.affinity,
        plan.info.network_prefix,
        &v4(client.0.octets()),
        client.1.to_be(),
        plan.info.hash_seed,
    );
    assert_eq!(e.hash, hash, "the client's affinity hash");
    assert_eq!(
        e.ring_slot,
        hash % plan.table.len() as u32,
        "its slot in the table"
    );
    assert_eq!(
        plan.table[e.ring_slot as usize], chosen_id,
        "the slot holds the backend"
    );

    // Existing flow: the handshake's ACK.
    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK)).bytes();
    let e = one(run(&bed, &mut tap, bed.client_if, &ack).1, "ACK");
    assert_eq!(e.decision, TraceDecision::Existing as u8);
    assert_eq!((e.service_id, e.backend_id), (web, chosen_id));
    assert_eq!(
        (e.hash, e.ring_slot),
        (0, 0),
        "no selection for an existing flow"
    );

    // Reply, its NAT undone: named by its client.
    let reply = bed
        .from_backend(Pkt::tcp((chosen, 443), client, ACK), bed.server_if)
        .bytes();
    let (action, events) = run(&bed, &mut tap, bed.server_if, &reply);
    assert_eq!(action, XDP_REDIRECT);
    let e = one(events, "reply");
    assert_eq!(e.direction, TraceDirection::FromBackend as u8);
    assert_eq!(e.decision, TraceDecision::Reply as u8);
    assert_eq!(
        e.client,
        key(client, (VIP, 443)),
        "the client's side of the flow"
    );
    assert_eq!(
        e.sent,
        key((VIP, 443), client),
        "from the VIP to the client"
    );
    assert_eq!((e.service_id, e.backend_id), (web, chosen_id));

    // Re-selected: the flow's backend went down.
    let name = format!("b{}", (1..=3).find(|&n| backend_ip(n) == chosen).unwrap());
    bed.set_state("web", &name, BackendState::Down);
    let e = one(run(&bed, &mut tap, bed.client_if, &ack).1, "ACK after down");
    assert_eq!(e.decision, TraceDecision::Reselected as u8);
    assert_ne!(e.backend_id, chosen_id);
    assert_eq!(e.verdict, TraceVerdict::Sent as u8);

    // No rule: a port no service has.
    let other_port = bed.from_client(Pkt::tcp(client, (VIP, 444), SYN)).bytes();
    let e = one(run(&bed, &mut tap, bed.client_if, &other_port).1, "no rule");
    assert_eq!(
        (e.decision, e.verdict),
        (TraceDecision::None as u8, TraceVerdict::Drop as u8)
    );
    assert_eq!(e.reason, DropReason::NoService as u8);
    assert_eq!((e.service_id, e.backend_id), (ANY, ANY));

    // Malformed: a TCP header whose data offset is 4 words.
    let mut malformed = bed
        .from_client(Pkt::tcp((client.0, 40_001), (VIP, 443), SYN))
        .bytes();
    malformed[14 + 20 + 12] = 0x40;
    let e = one(
        run(&bed, &mut tap, bed.client_if, &malformed).1,
        "malformed",
    );
    assert_eq!(e.verdict, TraceVerdict::Drop as u8);
    assert_eq!(e.reason, DropReason::MalformedL4 as u8);

    // A corrupt IP header: dropped by the entry program, traced there.
    let mut corrupt = bed
        .from_client(Pkt::tcp((client.0, 40_002), (VIP, 443), SYN))
        .bytes();
    corrupt[24] ^= 0xff;
    let e = one(
        run(&bed, &mut tap, bed.client_if, &corrupt).1,
        "bad checksum",
    );
    assert_eq!(e.direction, TraceDirection::Entry as u8);
    assert_eq!(e.reason, DropReason::IpChecksum as u8);

    // No backend: all three down.
    for n in 1..=3 {
        bed.set_state("web", &format!("b{n}"), BackendState::Down);
    }
    let syn2 = bed
        .from_client(Pkt::tcp((client.0, 40_003), (VIP, 443), SYN))
        .bytes();
    let e = one(run(&bed, &mut tap, bed.client_if, &syn2).1, "no backend");
    assert_eq!(e.reason, DropReason::NoBackend as u8);
    assert_eq!(e.service_id, web);

    // Passed to the kernel: TTL 1.
    let ttl1 = bed
        .from_client(Pkt::tcp((client.0, 40_004), (VIP, 443), SYN).ttl(1))
        .bytes();
    let e = one(run(&bed, &mut tap, bed.client_if, &ttl1).1, "TTL 1");
    assert_eq!(e.verdict, TraceVerdict::Pass as u8);
    assert_eq!(e.reason, PassReason::TtlExceeded as u8);
}

#[test]
fn only_what_the_filter_asks_for_is_traced() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let mut tap = Tap::open(bed.dp.reader()).expect("trace maps");
    let traced = client_ip(1);
    let other = client_ip(2);
    let syn = |c: Ipv4Addr, port| {
        bed.from_client(Pkt::tcp((c, port), (VIP, 443), SYN))
            .bytes()
    };

    // Nothing armed: nothing written, whoever sends.
    for port in 41_000..41_010 {
        assert!(
            run(&bed, &mut tap, bed.client_if, &syn(traced, port))
                .1
                .is_empty()
        );
    }
    // Another client's packets, and its replies, are not the filter's.
    tap.arm(&for_client(traced)).unwrap();
    let (_, events) = run(&bed, &mut tap, bed.client_if, &syn(other, 41_100));
    assert!(events.is_empty(), "{events:?}");
    let backend = bed.predict("web", other, 41_100);
    let reply = bed
        .from_backend(
            Pkt::tcp((backend, 443), (other, 41_100), SYN_ACK),
            bed.server_if,
        )
        .bytes();
    assert!(run(&bed, &mut tap, bed.server_if, &reply).1.is_empty());
    // A backend filter: the traced client's flows to other backends are not written.
    let b1 = bed.backend_id("web", "b1");
    tap.arm(&TraceFilter {
        backend_id: b1,
        ..for_client(traced)
    })
    .unwrap();
    let mut written = 0;
    for port in 41_200..41_230 {
        let events = run(&bed, &mut tap, bed.client_if, &syn(traced, port)).1;
        let to_b1 = bed.predict("web", traced, port) == backend_ip(1);
        assert_eq!(events.len(), to_b1 as usize, "port {port}");
        written += events.len();
    }
    assert!(written > 0, "some of 30 ports reach b1");
    // Cleared: nothing again.
    tap.disarm().unwrap();
    assert!(
        run(&bed, &mut tap, bed.client_if, &syn(traced, 41_300))
            .1
            .is_empty()
    );
}

#[test]
fn the_rate_limit_holds_back_and_counts_what_is_over_it() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let mut tap = Tap::open(bed.dp.reader()).expect("trace maps");
    let client = client_ip(1);
    // 5 events per CPU per 100 ms window. 200 packets: even if this loop took a whole second
    // on a slow shared machine (10 windows) on each of its CPUs, at most 5 × 10 × CPUs are
    // written, fewer than 200 on up to 3 CPUs; the rest are counted as limited.
    tap.arm(&TraceFilter {
        per_cpu_window: 5,
        ..for_client(client)
    })
    .unwrap();
    let before = tap.missed().unwrap();
    let mut written = 0;
    for port in 42_000..42_200 {
        let syn = bed
            .from_client(Pkt::tcp((client, port), (VIP, 443), SYN))
            .bytes();
        let (action, events) = run(&bed, &mut tap, bed.client_if, &syn);
        assert_eq!(action, XDP_REDIRECT, "the limit never touches forwarding");
        written += events.len() as u64;
    }
    let limited = tap.missed().unwrap().limited - before.limited;
    assert!(
        written >= 5,
        "the first window's events are written ({written})"
    );
    assert!(limited > 0, "the rest are held back ({written} written)");
    assert_eq!(written + limited, 200, "each packet written or counted");
}
