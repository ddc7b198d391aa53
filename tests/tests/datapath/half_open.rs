//! A TCP flow is half-open from its SYN until the client's ACK, in tables of its own: its
//! backend's SYN-ACK is translated, its ACK establishes it, and SYNs that never complete (a
//! flood of spoofed ones) evict only each other.

use std::time::Duration;

use lb_common::{
    flow::{FlowKey, FlowState},
    stats::FlowEvent,
};
use xnlb::datapath::DatapathSizes;
use xnlb_tests::{
    bed::*,
    flow_cases::{Replies, three_backends, to_client},
    packets::*,
};

#[test]
fn a_flow_is_half_open_until_the_clients_ack() {
    for replies in Replies::BOTH {
        half_open_until_the_clients_ack(replies);
    }
}

fn half_open_until_the_clients_ack(replies: Replies) {
    let mut bed = Bed::new();
    replies.install(&mut bed);
    let web = bed.service_id("web");
    let client = (client_ip(5), 40_100);
    let backend = bed.predict("web", client.0, client.1);
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN));
    for attempt in 1..=2 {
        let (action, out) = bed.run(bed.client_if, &syn.bytes());
        assert_eq!(action, XDP_REDIRECT, "SYN {attempt}");
        assert_eq!(
            &out[30..34],
            &backend.octets(),
            "SYN {attempt}: to its backend"
        );
    }
    let reader = bed.dp.reader();
    assert!(
        reader.flows().unwrap().is_empty(),
        "nothing established yet"
    );
    let half_open = reader.half_open_flows().unwrap();
    assert_eq!(
        half_open.len(),
        1,
        "the retried SYN found its half-open flow"
    );
    assert_eq!(half_open[0].1.state, FlowState::HalfOpen as u8);
    assert_eq!(half_open[0].1.flags, replies.flags(), "{replies:?}");
    assert_eq!(reader.half_open_replies().unwrap().len(), replies.entries());
    assert_eq!(reader.service_stats(web).unwrap().new_flows, 1);
    assert_eq!(bed.events(FlowEvent::HalfOpenNew), 1);

    let syn_ack = bed.from_backend(Pkt::tcp((backend, 443), client, SYN_ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &syn_ack.bytes());
    assert_eq!(action, XDP_REDIRECT, "the SYN-ACK finds the half-open flow");
    assert_eq!(out, to_client(&bed, &syn_ack, 443, client));

    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
    let (action, out) = bed.run(bed.client_if, &ack.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[30..34], &backend.octets(), "the ACK follows the SYN");
    let flows = reader.flows().unwrap();
    assert_eq!(flows.len(), 1, "the ACK established the flow");
    assert_eq!(flows[0].1.state, FlowState::Open as u8);
    assert_eq!(flows[0].1.reply, half_open[0].1.reply);
    assert_eq!(flows[0].1.flags, replies.flags());
    assert!(reader.half_open_flows().unwrap().is_empty());
    assert!(reader.half_open_replies().unwrap().is_empty());
    assert_eq!(reader.replies().unwrap().len(), replies.entries());
    assert_eq!(
        (
            bed.events(FlowEvent::Established),
            bed.events(FlowEvent::EstablishedNew),
            bed.events(FlowEvent::NonSynMiss),
        ),
        (1, 1, 0)
    );
    assert_eq!(reader.service_stats(web).unwrap().new_flows, 1, "one flow");

    let data = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &data.bytes());
    assert_eq!(action, XDP_REDIRECT, "established replies are translated");
    assert_eq!(out, to_client(&bed, &data, 443, client));
}

#[test]
fn a_half_open_flow_lives_only_its_short_timeout() {
    for replies in Replies::BOTH {
        half_open_lives_only_its_short_timeout(replies);
    }
}

fn half_open_lives_only_its_short_timeout(replies: Replies) {
    let mut bed = Bed::new();
    replies.install(&mut bed);
    bed.program.config.conntrack.half_open_timeout = Duration::from_millis(1);
    bed.reprogram();
    let client = (client_ip(6), 40_200);
    let backend = bed.predict("web", client.0, client.1);
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN));
    assert_eq!(bed.run(bed.client_if, &syn.bytes()).0, XDP_REDIRECT);
    std::thread::sleep(Duration::from_millis(20)); // past the timeout and the coarse clock's tick

    let syn_ack = bed.from_backend(Pkt::tcp((backend, 443), client, SYN_ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &syn_ack.bytes());
    assert_eq!(action, XDP_PASS, "an expired half-open flow owns nothing");
    assert_eq!(out, syn_ack.bytes());
    assert_eq!(
        bed.events(FlowEvent::StaleReply),
        replies.entries() as u64,
        "its reply entry, if it claimed one, cleared"
    );
    // The client's late ACK is picked up as any packet without state: same backend (the
    // table has not changed), established at once.
    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
    let (action, out) = bed.run(bed.client_if, &ack.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[30..34], &backend.octets());
    assert_eq!(bed.events(FlowEvent::NonSynMiss), 1);
    assert_eq!(bed.dp.reader().flows().unwrap().len(), 1);
}

/// Tables of the smallest size a config allows; established flows, then spoofed SYNs from
/// addresses that never answer, 20 times the half-open table, with a real handshake among them
/// every 1,000 SYNs.
#[test]
fn a_syn_flood_never_evicts_an_established_flow() {
    const TABLE: u32 = 1024;
    const ESTABLISHED: u16 = 200;
    const FLOOD: u32 = 20 * TABLE;
    let mut bed = Bed::with_sizes(DatapathSizes {
        flows: TABLE,
        half_open: TABLE,
        ring_services: 4,
        ..Default::default()
    });
    three_backends(&mut bed);
    let real = |n: u16| (client_ip(1 + n % 100), 41_000 + n);
    for n in 0..ESTABLISHED {
        assert_eq!(bed.connect(real(n), (VIP, 443)).0, XDP_REDIRECT);
    }

    let mut during = 0u16;
    for i in 0..FLOOD {
        let spoofed = (
            client_ip(1000 + (i % 20_000) as u16),
            1024 + (i / 20_000) as u16,
        );
        let syn = bed.from_client(Pkt::tcp(spoofed, (VIP, 443), SYN));
        assert_eq!(bed.run(bed.client_if, &syn.bytes()).0, XDP_REDIRECT);
        if i % 1000 == 999 {
            let client = real(ESTABLISHED + during);
            let (action, out) = bed.connect(client, (VIP, 443));
            assert_eq!(action, XDP_REDIRECT, "handshake {during} during the flood");
            let backend = bed.predict("web", client.0, client.1);
            assert_eq!(&out[30..34], &backend.octets());
            during += 1;
        }
    }
    assert_eq!(during, 20);

    let reader = bed.dp.reader();
    let flows = reader.flows().unwrap();
    assert_eq!(
        flows.len(),
        (ESTABLISHED + during) as usize,
        "every established flow is still there, and nothing else"
    );
    for n in 0..ESTABLISHED + during {
        let client = real(n);
        let key = FlowKey {
            src: [u32::from_ne_bytes(client.0.octets()), 0, 0, 0],
            src_port: client.1.to_be(),
            ..flows[0].0
        };
        assert!(flows.iter().any(|(k, _)| *k == key), "flow {n} kept");
        let backend = bed.predict("web", client.0, client.1);
        let reply = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);
        let (action, out) = bed.run(bed.server_if, &reply.bytes());
        assert_eq!(action, XDP_REDIRECT, "flow {n}'s reply is translated");
        assert_eq!(out, to_client(&bed, &reply, 443, client));
    }
    let held = reader.half_open_flows().unwrap().len() as u64;
    assert!(held <= TABLE as u64);
    let evicted = bed.events(FlowEvent::HalfOpenNew) - bed.events(FlowEvent::Established) - held;
    assert!(
        evicted >= (FLOOD - TABLE) as u64,
        "the flood evicted its own half-open entries: {evicted}"
    );
    assert_eq!(
        bed.events(FlowEvent::EstablishedNew),
        (ESTABLISHED + during) as u64
    );
}

/// A client comes back from the same port after its connection closed and the flow expired:
/// the old established reply entry is stale, the new handshake's is half-open. The backend's
/// SYN-ACK must find the new one, not stop at the stale one (it would leave untranslated, and
/// the client would wait a SYN timeout).
#[test]
fn a_client_back_on_its_old_port_gets_its_syn_ack() {
    for replies in Replies::BOTH {
        back_on_its_old_port(replies);
    }
}

fn back_on_its_old_port(replies: Replies) {
    let mut bed = Bed::new();
    replies.install(&mut bed);
    bed.program.config.conntrack.tcp_closed_timeout = Duration::from_millis(1);
    bed.reprogram();
    let client = (client_ip(7), 40_400);
    let backend = bed.predict("web", client.0, client.1);
    assert_eq!(bed.connect(client, (VIP, 443)).0, XDP_REDIRECT);
    let rst = bed.from_client(Pkt::tcp(client, (VIP, 443), RST));
    assert_eq!(bed.run(bed.client_if, &rst.bytes()).0, XDP_REDIRECT);
    std::thread::sleep(Duration::from_millis(20)); // past the closed timeout and a clock tick

    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN));
    assert_eq!(bed.run(bed.client_if, &syn.bytes()).0, XDP_REDIRECT);
    let syn_ack = bed.from_backend(Pkt::tcp((backend, 443), client, SYN_ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &syn_ack.bytes());
    assert_eq!(
        action, XDP_REDIRECT,
        "the SYN-ACK of the new handshake is translated"
    );
    assert_eq!(out, to_client(&bed, &syn_ack, 443, client));
    assert_eq!(
        bed.events(FlowEvent::StaleReply),
        replies.entries() as u64,
        "the old entry (if the flow claimed one), removed on the way"
    );
}
