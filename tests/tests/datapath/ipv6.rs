//! IPv6 through the datapath: the IPv4 golden rows that apply, in IPv6 (UDP, one-arm both ways;
//! two-arm new flow, established flow and reply are rows of `flow_cases`, which the bench times
//! too), extension headers walked, IPv6 that is
//! not the balancer's (neighbour discovery, router advertisements) untouched, and a service pair
//! of both versions on one configuration. Expected packets are built by etherparse from
//! scratch, so each checksum (the pseudo-header holds the 128-bit addresses) is checked.

use std::net::{IpAddr, Ipv6Addr};

use etherparse::{IcmpEchoHeader, Icmpv6Type, PacketBuilder};
use lb_common::stats::{DropReason, PassReason};
use xnlb::config::Protocol;
use xnlb_tests::{
    bed::*,
    flow_cases::{CLIENT, to_backend, to_client},
    packets::{ACK, Pkt, SYN, SYN_ACK, fragment6},
};

fn client6() -> (IpAddr, u16) {
    (remote_client6(1, 0x42).into(), 51_000)
}

fn vip6(port: u16) -> (IpAddr, u16) {
    (VIP6.into(), port)
}

/// `web` on VIP6:443 over three IPv6 backends.
fn web6(bed: &mut Bed) {
    let backends: Vec<IpAddr> = (1..=3).map(|n| backend_ip6(n).into()).collect();
    bed.install(service_at("web6", VIP6.into(), 443, &backends));
}

#[test]
fn an_ipv6_udp_flow_and_its_reply() {
    let mut bed = Bed::new();
    let mut dns = service_at("dns6", VIP6.into(), 88, &[backend_ip6(1).into()]);
    dns.protocol = Protocol::Udp;
    bed.install(dns);
    let ask = bed.from_client(Pkt::udp(client6(), vip6(88)));
    let b1: IpAddr = backend_ip6(1).into();
    assert_eq!(
        bed.run(bed.client_if, &ask.bytes()),
        (XDP_REDIRECT, to_backend(&bed, &ask, (b1, 88)))
    );
    let answer = bed.from_backend(Pkt::udp((b1, 88), client6()), bed.server_if);
    assert_eq!(
        bed.run(bed.server_if, &answer.bytes()),
        (XDP_REDIRECT, to_client(&bed, &answer, 88, client6()))
    );
}

#[test]
fn one_arm_ipv6_is_translated_both_ways() {
    let mut bed = Bed::new();
    bed.one_arm((1024, 65535));
    bed.install(service_at(
        "web6",
        VIP6.into(),
        443,
        &[one_arm_backend_ip6(1).into()],
    ));
    let syn = bed.from_client(Pkt::tcp(client6(), vip6(443), SYN));
    let (action, out) = bed.run(bed.client_if, &syn.bytes());
    assert_eq!(action, XDP_TX);
    let flows = bed.dp.reader().half_open_flows().expect("flows");
    assert_eq!(flows.len(), 1);
    let reply = flows[0].1.reply;
    let snat_port = u16::from_be(reply.dst_port);
    let snat: IpAddr = SNAT_IP6.into();
    let b1: IpAddr = one_arm_backend_ip6(1).into();
    assert_eq!(
        out,
        syn.clone()
            .addressed((snat, snat_port), (b1, 443))
            .ttl(syn.ttl - 1)
            .macs(bed.client_if.mac, neighbour_mac_of(b1))
            .bytes(),
        "from the IPv6 SNAT address"
    );
    let back = bed.from_backend(
        Pkt::tcp((b1, 443), (snat, snat_port), SYN_ACK),
        bed.client_if,
    );
    assert_eq!(
        bed.run(bed.client_if, &back.bytes()),
        (XDP_TX, to_client(&bed, &back, 443, client6()))
    );
}

/// `pkt`'s bytes with IPv6 extension headers (each 8 bytes, next header chained) of the kinds
/// `kinds` inserted between the IPv6 and the transport header.
fn with_extensions(pkt: &Pkt, kinds: &[u8]) -> Vec<u8> {
    let mut frame = pkt.bytes();
    let transport_proto = frame[14 + 6];
    let mut headers = Vec::new();
    for (i, _) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(transport_proto);
        // Next header, length 0 (8 bytes), then PadN filling the rest.
        headers.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    frame[14 + 6] = kinds[0];
    let payload_len = u16::from_be_bytes([frame[14 + 4], frame[14 + 5]]) + headers.len() as u16;
    frame[14 + 4..14 + 6].copy_from_slice(&payload_len.to_be_bytes());
    frame.splice(14 + 40..14 + 40, headers);
    frame
}

#[test]
fn extension_headers_are_walked_to_the_transport_header() {
    let mut bed = Bed::new();
    web6(&mut bed);
    let backend = bed.predict_ip("web6", client6().0, client6().1);
    let syn = bed.from_client(Pkt::tcp(client6(), vip6(443), SYN));
    // Hop-by-hop and destination options: balanced, the headers carried along.
    let (hop_by_hop, dest_opts) = (0u8, 60u8);
    let input = with_extensions(&syn, &[hop_by_hop, dest_opts]);
    let want = with_extensions(
        &syn.clone()
            .addressed((syn.src, syn.src_port()), (backend, 443))
            .ttl(syn.ttl - 1)
            .macs(bed.server_if.mac, neighbour_mac_of(backend)),
        &[hop_by_hop, dest_opts],
    );
    assert_eq!(bed.run(bed.client_if, &input), (XDP_REDIRECT, want));
    // Five: more than the datapath walks, dropped with a reason rather than guessed at.
    let input = with_extensions(&syn, &[dest_opts; 5]);
    assert_eq!(bed.run(bed.client_if, &input).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::Ipv6Headers), 1);
    // A fragment header (its bytes read as offset 32): a later fragment whose first was never
    // seen, dropped.
    let input = with_extensions(&syn, &[44]);
    assert_eq!(bed.run(bed.client_if, &input).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::Fragment), 1);
}

#[test]
fn ipv6_that_is_not_the_balancers_passes_untouched() {
    let mut bed = Bed::new();
    web6(&mut bed);
    let router: Ipv6Addr = CLIENT_IP6;
    let frames: Vec<(&str, Vec<u8>, PassReason)> = vec![
        (
            "neighbour solicitation for the balancer",
            icmpv6(
                &bed,
                router,
                "ff02::1:ff00:1".parse().unwrap(),
                Icmpv6Type::Unknown {
                    type_u8: 135,
                    code_u8: 0,
                    bytes5to8: [0; 4],
                },
                &LB_CLIENT_IP6.octets(),
            ),
            PassReason::NotOurs,
        ),
        (
            "router advertisement",
            icmpv6(
                &bed,
                "fe80::1".parse().unwrap(),
                "ff02::1".parse().unwrap(),
                Icmpv6Type::Unknown {
                    type_u8: 134,
                    code_u8: 0,
                    bytes5to8: [64, 0, 0, 0],
                },
                &[0; 8],
            ),
            PassReason::NotOurs,
        ),
        (
            "neighbour solicitation for the VIP (unicast, as to check it is still there)",
            icmpv6(
                &bed,
                router,
                VIP6,
                Icmpv6Type::Unknown {
                    type_u8: 135,
                    code_u8: 0,
                    bytes5to8: [0; 4],
                },
                &VIP6.octets(),
            ),
            PassReason::IcmpToVip,
        ),
        (
            "TCP to another address",
            bed.from_client(Pkt::tcp(
                client6(),
                (Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 9), 443),
                SYN,
            ))
            .bytes(),
            PassReason::NotOurs,
        ),
    ];
    for (name, frame, reason) in frames {
        let before = bed.passes(reason);
        assert_eq!(
            bed.run(bed.client_if, &frame),
            (XDP_PASS, frame.clone()),
            "{name}: untouched"
        );
        assert_eq!(
            bed.passes(reason),
            before + 1,
            "{name}: counted as {reason:?}"
        );
    }
}

/// An ICMPv6 message from `src` to `dst`, as the router hands it to cli0.
fn icmpv6(bed: &Bed, src: Ipv6Addr, dst: Ipv6Addr, kind: Icmpv6Type, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, bed.client_if.mac)
        .ipv6(src.octets(), dst.octets(), 255)
        .icmpv6(kind)
        .write(&mut out, payload)
        .expect("build ICMPv6");
    out
}

#[test]
fn a_dual_stack_service_pair_balances_both_versions() {
    let mut bed = Bed::new();
    web6(&mut bed);
    bed.install(service("web", 443, &[1, 2, 3].map(backend_ip)));
    let backend4 = bed.predict("web", CLIENT.0, CLIENT.1);
    let syn4 = bed.from_client(Pkt::tcp(CLIENT, (VIP, 443), SYN));
    assert_eq!(
        bed.run(bed.client_if, &syn4.bytes()),
        (XDP_REDIRECT, to_backend(&bed, &syn4, (backend4, 443)))
    );
    let backend6 = bed.predict_ip("web6", client6().0, client6().1);
    let syn6 = bed.from_client(Pkt::tcp(client6(), vip6(443), SYN));
    assert_eq!(
        bed.run(bed.client_if, &syn6.bytes()),
        (XDP_REDIRECT, to_backend(&bed, &syn6, (backend6, 443)))
    );
}

#[test]
fn an_echo_request_to_an_ipv6_vip_is_answered() {
    let mut bed = Bed::new();
    web6(&mut bed);
    let client = remote_client6(1, 0x42);
    let echo = IcmpEchoHeader { id: 7, seq: 3 };
    let request = icmpv6(
        &bed,
        client,
        VIP6,
        Icmpv6Type::EchoRequest(echo),
        b"ping payload",
    );
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(bed.client_if.mac, ROUTER_MAC)
        .ipv6(VIP6.octets(), client.octets(), 64)
        .icmpv6(Icmpv6Type::EchoReply(echo))
        .write(&mut reply, b"ping payload")
        .expect("build ICMPv6");
    assert_eq!(bed.run(bed.client_if, &request), (XDP_TX, reply));
}

/// The first `len` bytes of `pkt`'s IP packet (what an ICMPv6 error quotes).
fn quote(pkt: &Pkt, len: usize) -> Vec<u8> {
    pkt.bytes()[14..14 + len].to_vec()
}

/// An ICMPv6 message in a frame from `macs.0` to `macs.1`, checksums from scratch.
fn icmpv6_frame(
    macs: ([u8; 6], [u8; 6]),
    src: IpAddr,
    dst: IpAddr,
    hop_limit: u8,
    kind: Icmpv6Type,
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (src, dst) else {
        panic!("IPv6 addresses")
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src.octets(), dst.octets(), hop_limit)
        .icmpv6(kind)
        .write(&mut out, payload)
        .expect("build ICMPv6");
    out
}

/// `web6`, and the client's connection to it established; the backend it went to.
fn web6_with_a_flow(bed: &mut Bed) -> IpAddr {
    web6(bed);
    for flags in [SYN, ACK] {
        let pkt = bed.from_client(Pkt::tcp(client6(), vip6(443), flags));
        assert_eq!(bed.run(bed.client_if, &pkt.bytes()).0, XDP_REDIRECT);
    }
    bed.predict_ip("web6", client6().0, client6().1)
}

/// `p` with 1400 bytes of payload: too big for a 1280-byte hop.
fn big(p: Pkt) -> Pkt {
    Pkt {
        payload: vec![b'x'; 1400],
        ..p
    }
}

#[test]
fn icmpv6_errors_about_a_flow_reach_its_sender_translated() {
    let mut bed = Bed::new();
    let backend = web6_with_a_flow(&mut bed);
    // A client-side router's "packet too big" about a reply (as it left: from the VIP): to the
    // backend, about the reply as the backend sent it. Quoted with the TCP checksum.
    let router: IpAddr = CLIENT_IP6.into();
    let sent = big(Pkt::tcp((backend, 443), client6(), ACK)).ttl(62);
    let left = sent.clone().addressed(vip6(443), client6());
    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let error = icmpv6_frame(
        (ROUTER_MAC, bed.client_if.mac),
        router,
        VIP6.into(),
        64,
        too_big,
        &quote(&left, 100),
    );
    let want = icmpv6_frame(
        (bed.server_if.mac, neighbour_mac_of(backend)),
        router,
        backend,
        63,
        too_big,
        &quote(&sent, 100),
    );
    assert_eq!(bed.run(bed.client_if, &error), (XDP_REDIRECT, want));

    // A backend-side router's "unreachable" about the client's packet (as sent on: to the
    // backend): to the client, about its packet as it sent it.
    let server_router: IpAddr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0xfe).into();
    let sent = big(Pkt::tcp(client6(), vip6(443), ACK)).ttl(62);
    let left = sent.clone().addressed(client6(), (backend, 443));
    let unreachable =
        Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Address);
    let error = icmpv6_frame(
        (neighbour_mac_of(server_router), bed.server_if.mac),
        server_router,
        client6().0,
        64,
        unreachable,
        &quote(&left, 100),
    );
    let want = icmpv6_frame(
        (bed.client_if.mac, neighbour_mac_of(CLIENT_IP6.into())),
        server_router,
        client6().0,
        63,
        unreachable,
        &quote(&sent, 100),
    );
    assert_eq!(bed.run(bed.server_if, &error), (XDP_REDIRECT, want));
    assert_eq!(
        bed.events(lb_common::stats::FlowEvent::IcmpErrorToBackend),
        1
    );
    assert_eq!(
        bed.events(lb_common::stats::FlowEvent::IcmpErrorToClient),
        1
    );
}

#[test]
fn an_ipv6_packet_too_big_for_its_route_is_answered_to_its_sender() {
    let mut bed = Bed::new();
    // Locked MTUs (a forwarding lookup honours a route's MTU only then), before the flow: its
    // next hops, kept from its first packets, carry the MTU. Host routes: more specific than
    // the connected /64, which would win over a route of the same prefix.
    let mut routes: Vec<(String, Option<String>)> = (1..=3)
        .map(|n| (format!("{}/128", backend_ip6(n)), None))
        .collect();
    routes.push((format!("{}/128", client6().0), Some(CLIENT_IP6.to_string())));
    for (net, via) in routes {
        let mut args = vec!["-6", "route", "add", net.as_str()];
        if let Some(via) = &via {
            args.extend(["via", via.as_str()]);
        }
        let dev = if via.is_some() { "cli0" } else { "srv0" };
        args.extend(["dev", dev, "mtu", "lock", "1280"]);
        bed.ns.ip(&args);
    }
    let backend = web6_with_a_flow(&mut bed);
    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
    // The client's large packet: answered from the VIP, about the packet as the client sent it.
    let upload = bed.from_client(big(Pkt::tcp(client6(), vip6(443), ACK)));
    let want = icmpv6_frame(
        (bed.client_if.mac, ROUTER_MAC),
        VIP6.into(),
        client6().0,
        64,
        too_big,
        &quote(&upload, 48),
    );
    assert_eq!(bed.run(bed.client_if, &upload.bytes()), (XDP_TX, want));
    // The backend's large reply: answered to the backend, about the reply as it sent it.
    let download = bed.from_backend(big(Pkt::tcp((backend, 443), client6(), ACK)), bed.server_if);
    let want = icmpv6_frame(
        (bed.server_if.mac, neighbour_mac_of(backend)),
        client6().0,
        backend,
        64,
        too_big,
        &quote(&download, 48),
    );
    assert_eq!(bed.run(bed.server_if, &download.bytes()), (XDP_TX, want));
    assert_eq!(bed.events(lb_common::stats::FlowEvent::TooBigAnswered), 2);
}

#[test]
fn an_ipv6_datagrams_fragments_follow_its_first_both_ways() {
    let mut bed = Bed::new();
    let backends: Vec<IpAddr> = (1..=3).map(|n| backend_ip6(n).into()).collect();
    let mut dns = service_at("dns6", VIP6.into(), 88, &backends);
    dns.protocol = Protocol::Udp;
    bed.install(dns);
    let datagram = |src: (IpAddr, u16), dst: (IpAddr, u16)| Pkt {
        payload: (0..3000).map(|i| (i % 251) as u8).collect(),
        ..Pkt::udp(src, dst)
    };
    let backend = bed.predict_ip("dns6", client6().0, client6().1);
    let sent = bed.from_client(datagram(client6(), vip6(88)));
    let want = sent
        .clone()
        .addressed(client6(), (backend, 88))
        .ttl(sent.ttl - 1)
        .macs(bed.server_if.mac, neighbour_mac_of(backend));
    let (ins, outs) = (
        fragment6(&sent.bytes(), 1232, 0x1234_5678),
        fragment6(&want.bytes(), 1232, 0x1234_5678),
    );
    assert_eq!(ins.len(), 3, "first, middle, last");
    // The last before its first: dropped, never guessed; then all follow the first.
    assert_eq!(bed.run(bed.client_if, &ins[2]).0, XDP_DROP);
    assert_eq!(bed.drops(DropReason::Fragment), 1);
    for (i, (frame, out)) in ins.iter().zip(outs).enumerate() {
        assert_eq!(
            bed.run(bed.client_if, frame),
            (XDP_REDIRECT, out),
            "fragment {i} to {backend}"
        );
    }
    // The backend's fragmented answer reaches the client from the VIP.
    let answer = bed.from_backend(datagram((backend, 88), client6()), bed.server_if);
    let want = answer
        .clone()
        .addressed(vip6(88), client6())
        .ttl(answer.ttl - 1)
        .macs(bed.client_if.mac, neighbour_mac_of(CLIENT_IP6.into()));
    let (ins, outs) = (
        fragment6(&answer.bytes(), 1232, 0x9abc_def0),
        fragment6(&want.bytes(), 1232, 0x9abc_def0),
    );
    for (i, (frame, out)) in ins.iter().zip(outs).enumerate() {
        assert_eq!(
            bed.run(bed.server_if, frame),
            (XDP_REDIRECT, out),
            "answer fragment {i}"
        );
    }
    assert_eq!(bed.events(lb_common::stats::FlowEvent::FragmentTracked), 2);
    assert_eq!(bed.events(lb_common::stats::FlowEvent::FragmentFollowed), 4);
}
