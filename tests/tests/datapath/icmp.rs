//! ICMP through the NAT: errors about a balanced flow's packets reach the party that sent them,
//! translated (outer and quoted headers, every checksum); packets too big for their next hop
//! are answered with "fragmentation needed" about the packet as its sender sent it; echo
//! requests to a VIP are answered. Every expected frame is built from scratch by etherparse.

use std::net::Ipv4Addr;

use etherparse::{IcmpEchoHeader, Icmpv4Type};
use lb_common::stats::{FlowEvent, PassReason};
use xnlb::config::Protocol;
use xnlb_tests::{
    bed::*,
    flow_cases::{CLIENT, Replies, one_arm},
    packets::{ACK, Pkt, frag_needed, icmp_frame},
};

/// A router on the backends' side of the balancer.
const SERVER_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 254);
/// What an error quotes of the packet it is about: RFC 792's minimum (the IP header and 8 bytes:
/// the ports, and UDP's checksum but not TCP's), and what Linux quotes (as much as fits in 576
/// bytes: TCP's checksum and some payload too).
const QUOTES: [usize; 2] = [28, 576 - 28];
/// A payload that makes a full-size packet.
const LARGE: usize = 1400;

fn large(pkt: Pkt) -> Pkt {
    Pkt {
        payload: vec![b'x'; LARGE],
        ..pkt
    }
}

/// The first `len` bytes of `pkt`'s IP packet.
fn quote(pkt: &Pkt, len: usize) -> Vec<u8> {
    pkt.ip_bytes()[..len].to_vec()
}

/// A two-arm TCP flow from `CLIENT` to VIP:443, established; its backend.
fn two_arm_flow(bed: &mut Bed, replies: Replies) -> Ipv4Addr {
    replies.install(bed);
    assert_eq!(bed.connect(CLIENT, (VIP, 443)).0, XDP_REDIRECT);
    bed.predict("web", CLIENT.0, CLIENT.1)
}

#[test]
fn an_error_about_a_reply_goes_to_the_backend_that_sent_it() {
    for replies in Replies::BOTH {
        for len in QUOTES {
            let mut bed = Bed::new();
            let backend = two_arm_flow(&mut bed, replies);
            // The backend's reply, and as it left the balancer: from the VIP. The router that
            // could not forward it quotes it with its TTL spent by two hops.
            let sent = large(Pkt::tcp((backend, 443), CLIENT, ACK)).ttl(62);
            let left = sent.clone().addressed((VIP, 443), CLIENT);
            let error = icmp_frame(
                (ROUTER_MAC, bed.client_if.mac),
                ROUTER,
                VIP,
                64,
                frag_needed(1280),
                &quote(&left, len),
            );
            let want = icmp_frame(
                (bed.server_if.mac, neighbour_mac(backend)),
                ROUTER,
                backend,
                63,
                frag_needed(1280),
                &quote(&sent, len),
            );
            assert_eq!(
                bed.run(bed.client_if, &error),
                (XDP_REDIRECT, want),
                "{replies:?}, {len}-byte quote: to the backend, about its reply as it sent it"
            );
            assert_eq!(bed.events(FlowEvent::IcmpErrorToBackend), 1);
        }
    }
}

#[test]
fn an_error_about_a_clients_packet_goes_to_the_client() {
    for replies in Replies::BOTH {
        for len in QUOTES {
            let mut bed = Bed::new();
            let backend = two_arm_flow(&mut bed, replies);
            // The client's packet, and as the balancer sent it on: to the backend. A router on
            // the backends' side could not forward it.
            let sent = large(Pkt::tcp(CLIENT, (VIP, 443), ACK)).ttl(62);
            let left = sent.clone().addressed(CLIENT, (backend, 443));
            let error = icmp_frame(
                (neighbour_mac(SERVER_ROUTER), bed.server_if.mac),
                SERVER_ROUTER,
                CLIENT.0,
                64,
                frag_needed(1400),
                &quote(&left, len),
            );
            let want = icmp_frame(
                (bed.client_if.mac, ROUTER_MAC),
                SERVER_ROUTER,
                CLIENT.0,
                63,
                frag_needed(1400),
                &quote(&sent, len),
            );
            assert_eq!(
                bed.run(bed.server_if, &error),
                (XDP_REDIRECT, want),
                "{replies:?}, {len}-byte quote: to the client, about its packet as it sent it"
            );
            assert_eq!(bed.events(FlowEvent::IcmpErrorToClient), 1);
        }
    }
}

#[test]
fn a_backends_own_error_reaches_the_client_from_the_vip() {
    let mut bed = Bed::new();
    let mut dns = service("dns", 88, &[1, 2, 3].map(backend_ip));
    dns.protocol = Protocol::Udp;
    bed.install(dns);
    let sent = Pkt::udp(CLIENT, (VIP, 88));
    let (action, _) = bed.run(bed.client_if, &bed.from_client(sent.clone()).bytes());
    assert_eq!(action, XDP_REDIRECT);
    let backend = bed.predict("dns", CLIENT.0, CLIENT.1);
    // Port unreachable from the backend itself, about the datagram it got.
    let got = sent.clone().addressed(CLIENT, (backend, 88)).ttl(63);
    let unreachable =
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
    let error = icmp_frame(
        (neighbour_mac(backend), bed.server_if.mac),
        backend,
        CLIENT.0,
        64,
        unreachable.clone(),
        &quote(&got, 28),
    );
    let want = icmp_frame(
        (bed.client_if.mac, ROUTER_MAC),
        VIP,
        CLIENT.0,
        63,
        unreachable,
        &quote(&sent.ttl(63), 28),
    );
    assert_eq!(
        bed.run(bed.server_if, &error),
        (XDP_REDIRECT, want),
        "the backend's address never reaches the client"
    );
}

/// A one-arm flow from `CLIENT` to VIP:443, established: its backend and SNAT source.
fn one_arm_flow(bed: &mut Bed) -> (Ipv4Addr, (Ipv4Addr, u16)) {
    one_arm(bed);
    assert_eq!(bed.connect(CLIENT, (VIP, 443)).0, XDP_TX);
    let flows = bed.dp.reader().flows().expect("flows");
    assert_eq!(flows.len(), 1, "one flow");
    let reply = flows[0].1.reply;
    let backend = Ipv4Addr::from(lb_common::addr::v4_octets(&reply.src));
    let snat = Ipv4Addr::from(lb_common::addr::v4_octets(&reply.dst));
    (backend, (snat, u16::from_be(reply.dst_port)))
}

#[test]
fn one_arm_errors_are_translated_both_ways() {
    let mut bed = Bed::new();
    let (backend, snat) = one_arm_flow(&mut bed);

    // A client-side router's error about a reply: to the backend, from the SNAT address it
    // knows, about the reply as the backend sent it (to the SNAT address).
    let sent = large(Pkt::tcp((backend, 443), snat, ACK)).ttl(62);
    let left = sent.clone().addressed((VIP, 443), CLIENT);
    let error = icmp_frame(
        (ROUTER_MAC, bed.client_if.mac),
        ROUTER,
        VIP,
        64,
        frag_needed(1280),
        &quote(&left, 28),
    );
    let want = icmp_frame(
        (bed.client_if.mac, neighbour_mac(backend)),
        snat.0,
        backend,
        63,
        frag_needed(1280),
        &quote(&sent, 28),
    );
    assert_eq!(bed.run(bed.client_if, &error), (XDP_TX, want));

    // The backend's own error about the client's packet (as it got it: from the SNAT
    // address): to the client, from the VIP, about the packet as the client sent it.
    let sent = Pkt::tcp(CLIENT, (VIP, 443), ACK).ttl(63);
    let got = sent.clone().addressed(snat, (backend, 443));
    let error = icmp_frame(
        (neighbour_mac(backend), bed.client_if.mac),
        backend,
        snat.0,
        64,
        frag_needed(1400),
        &quote(&got, 28),
    );
    let want = icmp_frame(
        (bed.client_if.mac, ROUTER_MAC),
        VIP,
        CLIENT.0,
        63,
        frag_needed(1400),
        &quote(&sent, 28),
    );
    assert_eq!(bed.run(bed.client_if, &error), (XDP_TX, want));
    assert_eq!(bed.events(FlowEvent::IcmpErrorToBackend), 1);
    assert_eq!(bed.events(FlowEvent::IcmpErrorToClient), 1);
}

#[test]
fn errors_that_quote_nothing_of_ours_pass_untouched() {
    let mut bed = Bed::new();
    let backend = two_arm_flow(&mut bed, Replies::Derived);
    // About a reply to another client port: no such flow.
    let left = Pkt::tcp((VIP, 443), (CLIENT.0, CLIENT.1 + 1), ACK);
    let to_vip = icmp_frame(
        (ROUTER_MAC, bed.client_if.mac),
        ROUTER,
        VIP,
        64,
        frag_needed(1280),
        &quote(&left, 28),
    );
    assert_eq!(bed.run(bed.client_if, &to_vip), (XDP_PASS, to_vip.clone()));
    assert_eq!(bed.passes(PassReason::IcmpToVip), 1);
    // About the backend's own connection to a client (not through the VIP).
    let own = Pkt::tcp(CLIENT, (backend, 22), ACK);
    let to_client = icmp_frame(
        (neighbour_mac(SERVER_ROUTER), bed.server_if.mac),
        SERVER_ROUTER,
        CLIENT.0,
        64,
        frag_needed(1400),
        &quote(&own, 28),
    );
    assert_eq!(
        bed.run(bed.server_if, &to_client),
        (XDP_PASS, to_client.clone())
    );
    assert_eq!(bed.passes(PassReason::NotOurs), 1);
    assert_eq!(bed.events(FlowEvent::IcmpErrorToBackend), 0);
    assert_eq!(bed.events(FlowEvent::IcmpErrorToClient), 0);
}

#[test]
fn an_echo_request_to_a_vip_is_answered() {
    let mut bed = Bed::new();
    bed.install(service("web", 443, &[backend_ip(1)]));
    let echo = IcmpEchoHeader { id: 7, seq: 3 };
    let request = icmp_frame(
        (ROUTER_MAC, bed.client_if.mac),
        CLIENT.0,
        VIP,
        61,
        Icmpv4Type::EchoRequest(echo),
        b"ping payload",
    );
    let reply = icmp_frame(
        (bed.client_if.mac, ROUTER_MAC),
        VIP,
        CLIENT.0,
        64,
        Icmpv4Type::EchoReply(echo),
        b"ping payload",
    );
    assert_eq!(bed.run(bed.client_if, &request), (XDP_TX, reply));
    assert_eq!(bed.events(FlowEvent::EchoAnswered), 1);
}

/// The backends' network (`backend_ip`) gets a route with a locked MTU of `mtu` (a forwarding
/// lookup honours a route's MTU only when it is locked).
fn backend_route_mtu(bed: &Bed, mtu: u16) {
    let mtu = mtu.to_string();
    bed.ns.ip(&[
        "route",
        "add",
        "198.18.2.0/25",
        "dev",
        "srv0",
        "mtu",
        "lock",
        &mtu,
    ]);
}

#[test]
fn a_packet_too_big_for_the_backends_route_is_answered_to_the_client() {
    let mut bed = Bed::new();
    // Before the flow: its backend's next hop, kept from its first packet, carries the MTU.
    backend_route_mtu(&bed, 1000);
    let backend = two_arm_flow(&mut bed, Replies::Derived);
    let big = bed.from_client(large(Pkt::tcp(CLIENT, (VIP, 443), ACK)));
    let want = icmp_frame(
        (bed.client_if.mac, ROUTER_MAC),
        VIP,
        CLIENT.0,
        64,
        frag_needed(1000),
        &quote(&big, 28),
    );
    assert_eq!(
        bed.run(bed.client_if, &big.bytes()),
        (XDP_TX, want),
        "from the VIP, about the packet as the client sent it"
    );
    assert_eq!(bed.events(FlowEvent::TooBigAnswered), 1);

    // Without DF the kernel fragments it: it goes there translated.
    let fragmentable = big.clone().fragmentable();
    let (action, out) = bed.run(bed.client_if, &fragmentable.bytes());
    assert_eq!(action, XDP_PASS);
    assert_eq!(
        out,
        fragmentable
            .addressed((big.src, big.src_port()), (backend, 443))
            .bytes()
    );
    assert_eq!(bed.passes(PassReason::FragNeeded), 1);
}

#[test]
fn a_reply_too_big_for_the_clients_route_is_answered_to_the_backend() {
    let mut bed = Bed::new();
    let backend = two_arm_flow(&mut bed, Replies::Derived);
    bed.ns.ip(&[
        "route",
        "add",
        &format!("{}/32", CLIENT.0),
        "via",
        &ROUTER.to_string(),
        "dev",
        "cli0",
        "mtu",
        "lock",
        "1280",
    ]);
    let reply = bed.from_backend(large(Pkt::tcp((backend, 443), CLIENT, ACK)), bed.server_if);
    let want = icmp_frame(
        (bed.server_if.mac, neighbour_mac(backend)),
        CLIENT.0,
        backend,
        64,
        frag_needed(1280),
        &quote(&reply, 28),
    );
    assert_eq!(
        bed.run(bed.server_if, &reply.bytes()),
        (XDP_TX, want),
        "to the backend, about its reply as it sent it"
    );
}

#[test]
fn a_frame_larger_than_its_interface_allows_goes_to_the_kernel_to_be_segmented() {
    let mut bed = Bed::new();
    // Before the flow: its backend's next hop, kept from its first packet, carries the MTU.
    backend_route_mtu(&bed, 1000);
    let backend = two_arm_flow(&mut bed, Replies::Derived);
    // As generic mode sees a GRO-merged packet: larger than the interface it came in on.
    bed.ns.ip(&["link", "set", "cli0", "mtu", "1300"]);
    bed.reprogram();
    let big = bed.from_client(large(Pkt::tcp(CLIENT, (VIP, 443), ACK)));
    let (action, out) = bed.run(bed.client_if, &big.bytes());
    assert_eq!(action, XDP_PASS);
    assert_eq!(
        out,
        big.clone()
            .addressed((big.src, big.src_port()), (backend, 443))
            .bytes(),
        "translated, for the kernel to segment and forward"
    );
    assert_eq!(bed.passes(PassReason::FragNeeded), 1);
    assert_eq!(bed.events(FlowEvent::TooBigAnswered), 0);
}
