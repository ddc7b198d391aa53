//! Fragmented datagrams: the first fragment (which carries the ports) is balanced or
//! reverse-translated like any packet; the datagram's later fragments follow it to the same
//! backend (or client) with the same translation; a later fragment whose first was not seen is
//! dropped, never misrouted. Expected fragments are the translated datagram, built from scratch
//! by etherparse, cut the same way.

use std::net::Ipv4Addr;

use lb_common::stats::{DropReason, FlowEvent};
use xnlb::config::Protocol;
use xnlb_tests::{
    bed::*,
    flow_cases::{CLIENT, one_arm},
    packets::{Pkt, fragment},
};

/// A UDP service on VIP:88 over three backends.
fn udp_service(bed: &mut Bed, backends: &[Ipv4Addr]) {
    let mut dns = service("dns", 88, backends);
    dns.protocol = Protocol::Udp;
    bed.install(dns);
}

/// A datagram of 3000 bytes of payload: three fragments of at most 1480.
fn datagram(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Pkt {
    Pkt {
        payload: (0..3000).map(|i| (i % 251) as u8).collect(),
        ..Pkt::udp(src, dst)
    }
    .fragmentable()
}

const ID: u16 = 0x4d2;
const SIZE: usize = 1480;

#[test]
fn a_datagrams_fragments_follow_its_first_to_one_backend() {
    let mut bed = Bed::new();
    udp_service(&mut bed, &[1, 2, 3].map(backend_ip));
    let sent = bed.from_client(datagram(CLIENT, (VIP, 88)));
    let backend = bed.predict("dns", CLIENT.0, CLIENT.1);
    let want = sent
        .clone()
        .addressed(CLIENT, (backend, 88))
        .ttl(sent.ttl - 1)
        .macs(bed.server_if.mac, neighbour_mac(backend));
    let (ins, outs) = (
        fragment(&sent.bytes(), SIZE, ID),
        fragment(&want.bytes(), SIZE, ID),
    );
    assert_eq!(ins.len(), 3, "first, middle, last");
    for (i, (frame, out)) in ins.iter().zip(outs).enumerate() {
        assert_eq!(
            bed.run(bed.client_if, frame),
            (XDP_REDIRECT, out),
            "fragment {i} to {backend}"
        );
    }
    assert_eq!(bed.events(FlowEvent::FragmentTracked), 1);
    assert_eq!(bed.events(FlowEvent::FragmentFollowed), 2);
}

#[test]
fn a_later_fragment_before_its_first_is_dropped_then_follows() {
    let mut bed = Bed::new();
    udp_service(&mut bed, &[1, 2, 3].map(backend_ip));
    let sent = bed.from_client(datagram(CLIENT, (VIP, 88)));
    let backend = bed.predict("dns", CLIENT.0, CLIENT.1);
    let want = sent
        .clone()
        .addressed(CLIENT, (backend, 88))
        .ttl(sent.ttl - 1)
        .macs(bed.server_if.mac, neighbour_mac(backend));
    let (ins, outs) = (
        fragment(&sent.bytes(), SIZE, ID),
        fragment(&want.bytes(), SIZE, ID),
    );
    // The last fragment first: nothing says where its datagram goes.
    assert_eq!(bed.run(bed.client_if, &ins[2]).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::Fragment), 1);
    // Another datagram of the same client (another IP ID) does not open the way for it.
    let other = fragment(&sent.bytes(), SIZE, ID + 1);
    assert_eq!(bed.run(bed.client_if, &other[0]).0, XDP_REDIRECT);
    assert_eq!(bed.run(bed.client_if, &ins[2]).0, XDP_DROP);
    // Its first fragment, then the rest, in any order.
    assert_eq!(
        bed.run(bed.client_if, &ins[0]),
        (XDP_REDIRECT, outs[0].clone())
    );
    assert_eq!(
        bed.run(bed.client_if, &ins[2]),
        (XDP_REDIRECT, outs[2].clone())
    );
    assert_eq!(
        bed.run(bed.client_if, &ins[1]),
        (XDP_REDIRECT, outs[1].clone())
    );
    assert_eq!(bed.drops(DropReason::Fragment), 2);
}

#[test]
fn a_backends_fragmented_reply_reaches_the_client_from_the_vip() {
    let mut bed = Bed::new();
    udp_service(&mut bed, &[1, 2, 3].map(backend_ip));
    let ask = bed.from_client(Pkt::udp(CLIENT, (VIP, 88)));
    assert_eq!(bed.run(bed.client_if, &ask.bytes()).0, XDP_REDIRECT);
    let backend = bed.predict("dns", CLIENT.0, CLIENT.1);
    let reply = bed.from_backend(datagram((backend, 88), CLIENT), bed.server_if);
    let want = reply
        .clone()
        .addressed((VIP, 88), CLIENT)
        .ttl(reply.ttl - 1)
        .macs(bed.client_if.mac, ROUTER_MAC);
    let (ins, outs) = (
        fragment(&reply.bytes(), SIZE, ID),
        fragment(&want.bytes(), SIZE, ID),
    );
    for (i, (frame, out)) in ins.iter().zip(outs).enumerate() {
        assert_eq!(
            bed.run(bed.server_if, frame),
            (XDP_REDIRECT, out),
            "reply fragment {i}"
        );
    }
    assert_eq!(bed.events(FlowEvent::FragmentFollowed), 2);
}

#[test]
fn one_arm_fragments_follow_both_ways() {
    let mut bed = Bed::new();
    one_arm(&mut bed);
    let mut dns = service("dns", 88, &[1, 2, 3].map(one_arm_backend_ip));
    dns.protocol = Protocol::Udp;
    bed.install(dns);
    let sent = bed.from_client(datagram(CLIENT, (VIP, 88)));
    let ins = fragment(&sent.bytes(), SIZE, ID);
    let (action, first) = bed.run(bed.client_if, &ins[0]);
    assert_eq!(action, XDP_TX);
    // Where the first went (its SNAT source is the flow's): the rest must go the same way.
    let flows = bed.dp.reader().flows().expect("flows");
    let dns_flow = flows
        .iter()
        .find(|(k, _)| u16::from_be(k.dst_port) == 88)
        .expect("the datagram's flow");
    let reply = dns_flow.1.reply;
    let backend = Ipv4Addr::from(lb_common::addr::v4_octets(&reply.src));
    let snat = (
        Ipv4Addr::from(lb_common::addr::v4_octets(&reply.dst)),
        u16::from_be(reply.dst_port),
    );
    let want = sent
        .clone()
        .addressed(snat, (backend, 88))
        .ttl(sent.ttl - 1)
        .macs(bed.client_if.mac, neighbour_mac(backend));
    let outs = fragment(&want.bytes(), SIZE, ID);
    assert_eq!(first, outs[0]);
    for i in 1..3 {
        assert_eq!(
            bed.run(bed.client_if, &ins[i]),
            (XDP_TX, outs[i].clone()),
            "fragment {i}"
        );
    }

    let back = bed.from_backend(datagram((backend, 88), snat), bed.client_if);
    let want = back
        .clone()
        .addressed((VIP, 88), CLIENT)
        .ttl(back.ttl - 1)
        .macs(bed.client_if.mac, ROUTER_MAC);
    let (ins, outs) = (
        fragment(&back.bytes(), SIZE, ID),
        fragment(&want.bytes(), SIZE, ID),
    );
    for (i, (frame, out)) in ins.iter().zip(outs).enumerate() {
        assert_eq!(
            bed.run(bed.client_if, frame),
            (XDP_TX, out),
            "reply fragment {i}"
        );
    }
    assert_eq!(bed.events(FlowEvent::FragmentTracked), 2);
    assert_eq!(bed.events(FlowEvent::FragmentFollowed), 4);
}
