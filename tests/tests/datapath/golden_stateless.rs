//! Golden packets that create no state: traffic the balancer does not own, traffic to a VIP
//! that it refuses, and malformed frames. Each row: input, expected action, expected output
//! (unchanged for PASS), and the reason counter that must move.

use lb_common::stats::{DropReason, PassReason};
use xnlb_tests::{bed::*, packets::*};

enum Reason {
    Drop(DropReason),
    Pass(PassReason),
}

fn count(bed: &Bed, reason: &Reason) -> u64 {
    match *reason {
        Reason::Drop(r) => bed.drops(r),
        Reason::Pass(r) => bed.passes(r),
    }
}

struct Row {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    reason: Reason,
}

fn set_ipv4_byte(mut frame: Vec<u8>, offset: usize, value: u8) -> Vec<u8> {
    frame[14 + offset] = value;
    frame
}

fn with_frag(frame: Vec<u8>, flags_offset: u16) -> Vec<u8> {
    let [hi, lo] = flags_offset.to_be_bytes();
    let mut frame = set_ipv4_byte(set_ipv4_byte(frame, 6, hi), 7, lo);
    reseal_ipv4(&mut frame);
    frame
}

fn with_bad_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 10] ^= 0x5a;
    frame
}

#[test]
fn stateless_golden_packets() {
    let mut bed = Bed::new();
    bed.install(service("web", 443, &[backend_ip(1), backend_ip(2)]));
    let client = (client_ip(5), 40_000);
    let to_vip = |port| bed.from_client(Pkt::tcp(client, (VIP, port), SYN)).bytes();
    let elsewhere = bed
        .from_client(Pkt::tcp(client, (STRANGER, 443), SYN))
        .bytes();

    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&ROUTER_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    let mut ipv6 = to_vip(443);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut icmp = to_vip(443);
    icmp[14 + 9] = 1;
    reseal_ipv4(&mut icmp);
    let mut gre = to_vip(443);
    gre[14 + 9] = 47;
    reseal_ipv4(&mut gre);
    let eth_only = to_vip(443)[..14].to_vec();
    let short_ip = to_vip(443)[..14 + 12].to_vec();
    let short_tcp = {
        let mut f = to_vip(443)[..14 + 20 + 10].to_vec();
        f[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes()); // total length says so too
        reseal_ipv4(&mut f);
        f
    };
    let udp_to_rule_port = bed.from_client(Pkt::udp(client, (VIP, 443))).bytes();

    let rows = vec![
        Row {
            name: "non-VIP TCP",
            frame: elsewhere.clone(),
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::NotOurs),
        },
        Row {
            name: "ARP",
            frame: arp,
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::NotIp),
        },
        Row {
            name: "IPv4 bytes under the IPv6 EtherType (version 4)",
            frame: ipv6,
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::Malformed),
        },
        Row {
            name: "VIP port without a rule",
            frame: to_vip(80),
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::NoService),
        },
        Row {
            name: "VIP, rule port, other protocol (UDP)",
            frame: udp_to_rule_port,
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::NoService),
        },
        Row {
            name: "VIP, GRE",
            frame: gre,
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::NoService),
        },
        Row {
            name: "ICMP to VIP",
            frame: icmp,
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::IcmpToVip),
        },
        Row {
            name: "Ethernet header only",
            frame: eth_only,
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::Truncated),
        },
        Row {
            name: "truncated IPv4 header",
            frame: short_ip,
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::Truncated),
        },
        Row {
            name: "IHL 4 to VIP",
            frame: set_ipv4_byte(to_vip(443), 0, 0x44),
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::MalformedIp),
        },
        Row {
            name: "IHL 4 elsewhere",
            frame: set_ipv4_byte(elsewhere.clone(), 0, 0x44),
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::Malformed),
        },
        Row {
            name: "version 6 in an IPv4 frame to VIP",
            frame: set_ipv4_byte(to_vip(443), 0, 0x65),
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::MalformedIp),
        },
        Row {
            name: "total length beyond the frame to VIP",
            frame: set_ipv4_byte(to_vip(443), 2, 0x05),
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::MalformedIp),
        },
        Row {
            name: "IHL beyond the frame to VIP",
            frame: set_ipv4_byte(short_tcp.clone(), 0, 0x4f),
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::MalformedIp),
        },
        Row {
            name: "bad IPv4 header checksum to VIP",
            frame: with_bad_checksum(to_vip(443)),
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::IpChecksum),
        },
        Row {
            name: "bad IPv4 header checksum elsewhere",
            frame: with_bad_checksum(elsewhere.clone()),
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::NotOurs),
        },
        // (A first fragment is balanced like any packet: `fragments`.)
        Row {
            name: "later fragment to VIP, its first never seen",
            frame: with_frag(to_vip(443), 0x00b9),
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::Fragment),
        },
        Row {
            name: "fragment elsewhere",
            frame: with_frag(elsewhere.clone(), 0x2000),
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::NotOurs),
        },
        Row {
            name: "truncated TCP header to VIP",
            frame: short_tcp,
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::MalformedL4),
        },
        Row {
            name: "TCP data offset 4 to VIP",
            frame: {
                let mut f = to_vip(443);
                f[14 + 20 + 12] = 0x40;
                f
            },
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::MalformedL4),
        },
        Row {
            name: "TTL 1 to VIP",
            frame: bed
                .from_client(Pkt::tcp(client, (VIP, 443), SYN).ttl(1))
                .bytes(),
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::TtlExceeded),
        },
        Row {
            name: "from a backend, not a reply",
            frame: bed
                .from_backend(
                    Pkt::tcp((backend_ip(1), 22), (client_ip(5), 50_000), ACK),
                    bed.server_if,
                )
                .bytes(),
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::NotOurs),
        },
    ];

    for row in rows {
        let before = count(&bed, &row.reason);
        let ingress = arrives_on(&bed, &row.frame);
        let (action, out) = bed.run(ingress, &row.frame);
        assert_eq!(action, row.action, "{}: action", row.name);
        if action == XDP_PASS {
            assert_eq!(
                out, row.frame,
                "{}: a passed packet must reach the kernel byte for byte",
                row.name
            );
        }
        let after = count(&bed, &row.reason);
        assert_eq!(after, before + 1, "{}: its reason counter", row.name);
    }
    assert!(
        bed.dp.reader().flows().unwrap().is_empty(),
        "none of these may create a flow"
    );
}

/// The bed's interface whose MAC `frame` is sent to (the client side for any other).
fn arrives_on(bed: &Bed, frame: &[u8]) -> Iface {
    if frame[..6] == bed.server_if.mac {
        bed.server_if
    } else {
        bed.client_if
    }
}

/// Frames the balancer would act on if they were addressed to it, sent to someone else or
/// arriving on the other interface: every one passes byte for byte, counted `not_for_us`, and
/// creates nothing. (`flow_cases` holds the flooded SYN and the flooded reply of a live flow.)
#[test]
fn frames_not_addressed_to_the_receiving_interface_pass_untouched() {
    let mut bed = Bed::new();
    bed.install(service("web", 443, &[backend_ip(1), backend_ip(2)]));
    let syn = Pkt::tcp((client_ip(5), 40_000), (VIP, 443), SYN);
    let ipv4_multicast_mac = [0x01, 0x00, 0x5e, 0x7f, 0x01, 0x64];
    let from_backend = Pkt::tcp((backend_ip(1), 443), (client_ip(5), 40_000), SYN_ACK);
    let rows = [
        (
            "VIP SYN to the broadcast MAC",
            bed.client_if,
            syn.clone().macs(ROUTER_MAC, [0xff; 6]),
        ),
        (
            "VIP SYN to a multicast MAC",
            bed.client_if,
            syn.clone().macs(ROUTER_MAC, ipv4_multicast_mac),
        ),
        // Sent to the client side's MAC, but received on the server side.
        (
            "VIP SYN on the wrong interface",
            bed.server_if,
            syn.clone().macs(ROUTER_MAC, bed.client_if.mac),
        ),
        (
            "backend packet to the broadcast MAC",
            bed.server_if,
            from_backend
                .clone()
                .macs(neighbour_mac(backend_ip(1)), [0xff; 6]),
        ),
        (
            "backend packet to another host",
            bed.server_if,
            from_backend.macs(neighbour_mac(backend_ip(1)), OTHER_HOST_MAC),
        ),
    ];
    for (name, ingress, pkt) in rows {
        let frame = pkt.bytes();
        let before = bed.passes(PassReason::NotForUs);
        let (action, out) = bed.run(ingress, &frame);
        assert_eq!(action, XDP_PASS, "{name}: action");
        assert_eq!(out, frame, "{name}: passed byte for byte");
        assert_eq!(
            bed.passes(PassReason::NotForUs),
            before + 1,
            "{name}: not_for_us"
        );
    }
    assert!(
        bed.dp.reader().flows().unwrap().is_empty(),
        "none of these may create a flow"
    );
    // The same SYN addressed to the interface is balanced: the MAC alone made the difference.
    let (action, _) = bed.run(bed.client_if, &bed.from_client(syn).bytes());
    assert_eq!(action, XDP_REDIRECT);
}

#[test]
fn frames_shorter_than_ethernet_never_reach_the_program() {
    // The kernel refuses them (a NIC does not deliver them either): zero length and 13 bytes.
    let bed = Bed::new();
    for len in [0usize, 13] {
        assert!(
            bed.try_run(bed.client_if, &vec![0u8; len], 1).is_err(),
            "{len}-byte frame"
        );
    }
}

#[test]
fn ip_options_are_honoured_not_misparsed() {
    // IHL 6 (one 4-byte option): the ports are after the option, and the packet is balanced.
    let mut bed = Bed::new();
    bed.install(service("web", 443, &[backend_ip(1)]));
    let plain = bed
        .from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN))
        .bytes();
    let mut with_option = plain[..14].to_vec();
    let mut ip = plain[14..34].to_vec();
    ip[0] = 0x46;
    let total = u16::from_be_bytes([ip[2], ip[3]]) + 4;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[1, 1, 1, 0]); // NOP, NOP, NOP, end of options
    ip[10..12].copy_from_slice(&[0, 0]);
    let sum = ip
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
    with_option.extend_from_slice(&ip);
    with_option.extend_from_slice(&plain[34..]);

    let (action, out) = bed.run(bed.client_if, &with_option);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        &out[14 + 16..14 + 20],
        &backend_ip(1).octets(),
        "DNAT to the backend"
    );
    assert_eq!(&out[14 + 20..14 + 24], &[1, 1, 1, 0], "options untouched");
    assert_eq!(
        u16::from_be_bytes([out[14 + 26], out[14 + 27]]),
        443,
        "ports read after the options"
    );
    verify_checksums(&out).unwrap();
}

#[test]
fn the_object_holds_exactly_the_maps_lb_common_names() {
    let bed = Bed::new();
    let mut held = bed.dp.map_names();
    held.sort();
    let mut named: Vec<String> = lb_common::maps::ALL.iter().map(|n| n.to_string()).collect();
    named.sort();
    assert_eq!(
        held, named,
        "lb-ebpf/src/maps.rs and lb_common::maps::ALL must list the same maps"
    );
}

/// Each program (the entry and every stage) leaves the verifier at least half of its budget of
/// a million instructions: a change that would take a program near the limit must split it
/// into another stage first (`lb_common::programs`), not find out when a load fails.
#[test]
fn every_program_leaves_the_verifier_half_its_budget() {
    let bed = Bed::new();
    let counts = bed.dp.verified_instructions().expect("program info");
    let names: Vec<&str> = counts.iter().map(|&(name, _)| name).collect();
    let stages = lb_common::programs::STAGES.map(|(_, name)| name);
    assert_eq!(names[0], lb_common::programs::ENTRY);
    assert_eq!(names[1..], stages, "every stage is loaded");
    for (name, count) in counts {
        assert!(count > 0, "{name}: the kernel reports no count");
        assert!(count < 500_000, "{name}: {count} instructions verified");
    }
}
