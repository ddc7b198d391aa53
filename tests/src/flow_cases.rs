//! Golden cases for balanced flows, one row each: how the bed is set up (the services, the
//! mode, and the packets that come first), the packet, the action the balancer must take, the
//! exact bytes it must send and the counter that must move. Expected bytes are built from
//! scratch with etherparse, so byte equality also proves the incremental checksum updates.
//!
//! The golden tests check every row; the bench times every row's packet (`Timing` says how a
//! row can be repeated), so what is measured is what is proven correct.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    settings::MAX_SNAT_ADDRS,
    stats::{DropReason, FlowEvent, PassReason},
};
use xnlb::config::{Affinity, PortRange, Protocol};

use crate::bed::*;
use crate::packets::*;

/// A counter of the datapath's.
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    Drop(DropReason),
    Pass(PassReason),
    Event(FlowEvent),
}

impl Counter {
    pub fn read(self, bed: &Bed) -> u64 {
        match self {
            Counter::Drop(r) => bed.drops(r),
            Counter::Pass(r) => bed.passes(r),
            Counter::Event(e) => bed.events(e),
        }
    }
}

/// How the bench may repeat a row's packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// The same packet every run: it belongs to a flow the setup made.
    SameFlow,
    /// A new client address and port every run: every run is a new flow.
    NewClientEachRun,
}

pub struct FlowCase {
    pub name: &'static str,
    /// Programs a fresh bed and sends what must come before the packet.
    pub setup: fn(&mut Bed),
    /// The packet and the interface it arrives on.
    pub input: fn(&Bed) -> (Iface, Pkt),
    pub action: u32,
    /// What the balancer must send, given the bed after the run and the input.
    pub output: fn(&Bed, &Pkt) -> Vec<u8>,
    /// A counter that this packet moves by exactly one.
    pub counts: Option<Counter>,
    pub timing: Timing,
}

/// The client of every IPv4 row.
pub const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 19, 0, 42), 51_000);
/// The client of every IPv6 row (`remote_client6(0, 0x42)`).
pub const CLIENT6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x42), 51_000);

/// The service every two-arm row uses: `web` on VIP:443 over three backends, affinity none
/// (so one client's connections spread too).
pub fn three_backends(bed: &mut Bed) {
    let mut web = service("web", 443, &[1, 2, 3].map(backend_ip));
    web.affinity = Affinity::None;
    bed.install(web);
}

/// `three_backends` in IPv6: `web6` on VIP6:443 over three IPv6 backends, affinity none.
pub fn three_backends6(bed: &mut Bed) {
    let backends: Vec<IpAddr> = (1..=3).map(|n| backend_ip6(n).into()).collect();
    let mut web = service_at("web6", VIP6.into(), 443, &backends);
    web.affinity = Affinity::None;
    bed.install(web);
}

/// `three_backends`, and `alt` on VIP:8443 over the same backends' port 443: each backend port
/// then serves two VIP ports, so web's flows claim reply entries instead of deriving their
/// replies (`lb_common::flow`).
pub fn three_backends_shared(bed: &mut Bed) {
    three_backends(bed);
    let mut alt = service("alt", 8443, &[1, 2, 3].map(backend_ip));
    for b in &mut alt.backends {
        b.port = Some(443);
    }
    bed.install(alt);
}

/// How `web`'s flows find their replies (`lb_common::flow`): by derivation, where each backend
/// port serves VIP:443 alone, or by reply entries they claim, where `alt` shares the backend
/// ports. Tests of a flow's reply bookkeeping run both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replies {
    Derived,
    Claimed,
}

impl Replies {
    pub const BOTH: [Replies; 2] = [Replies::Derived, Replies::Claimed];

    /// `three_backends`, or `three_backends_shared`.
    pub fn install(self, bed: &mut Bed) {
        match self {
            Replies::Derived => three_backends(bed),
            Replies::Claimed => three_backends_shared(bed),
        }
    }

    /// The reply entries one of web's flows holds.
    pub fn entries(self) -> usize {
        match self {
            Replies::Derived => 0,
            Replies::Claimed => 1,
        }
    }

    /// `FlowEntry::flags` of web's flows.
    pub fn flags(self) -> u8 {
        match self {
            Replies::Derived => lb_common::flow::REPLY_DERIVED,
            Replies::Claimed => 0,
        }
    }
}

/// One-arm over the bed's one-arm backends, SNAT from every SNAT slot with ports 1024-65535:
/// room for millions of flows, so the bench's new flows never run out of ports.
pub fn one_arm(bed: &mut Bed) {
    let snat: Vec<Ipv4Addr> = (0..MAX_SNAT_ADDRS).map(snat_ip).collect();
    let snat: Vec<std::net::IpAddr> = snat.into_iter().map(Into::into).collect();
    bed.program.one_arm(&snat, (1024, 65535));
    let backends: Vec<Ipv4Addr> = (1..=MAX_BED_BACKENDS).map(one_arm_backend_ip).collect();
    bed.install(service("web", 443, &backends));
}

/// Sends the client's SYN that starts the row's flow; the balancer must answer `action`.
fn syn_from_client(bed: &mut Bed, action: u32) {
    let (ingress, syn) = syn_to_vip(bed);
    assert_eq!(bed.run(ingress, &syn.bytes()).0, action, "setup SYN");
}

/// `three_backends`, and the client's SYN that starts the row's flow.
fn three_backends_and_a_flow(bed: &mut Bed) {
    three_backends(bed);
    syn_from_client(bed, XDP_REDIRECT);
}

fn shared_backend_ports_and_a_flow(bed: &mut Bed) {
    three_backends_shared(bed);
    syn_from_client(bed, XDP_REDIRECT);
}

/// The SYN-ACK of the backend the client's flow went to, as it reaches the server side.
fn reply_from_the_flows_backend(bed: &Bed) -> (Iface, Pkt) {
    let backend = bed.predict("web", CLIENT.0, CLIENT.1);
    let reply = Pkt::tcp((backend, 443), CLIENT, SYN_ACK);
    (bed.server_if, bed.from_backend(reply, bed.server_if))
}

/// The packet the balancer should send to `backend` for `pkt` (two-arm: client kept), of
/// either IP version.
pub fn to_backend(bed: &Bed, pkt: &Pkt, backend: (impl Into<IpAddr>, u16)) -> Vec<u8> {
    let backend = (backend.0.into(), backend.1);
    pkt.clone()
        .addressed((pkt.src, pkt.src_port()), backend)
        .ttl(pkt.ttl - 1)
        .macs(bed.server_if.mac, neighbour_mac_of(backend.0))
        .bytes()
}

/// What the client should get for a backend's `reply`: source restored to VIP:`port` (VIP6 for
/// an IPv6 client), TTL-1, towards the router.
pub fn to_client(bed: &Bed, reply: &Pkt, port: u16, client: (impl Into<IpAddr>, u16)) -> Vec<u8> {
    let client = (client.0.into(), client.1);
    let (vip, router): (IpAddr, _) = match client.0 {
        IpAddr::V4(_) => (VIP.into(), ROUTER_MAC),
        IpAddr::V6(_) => (VIP6.into(), neighbour_mac_of(CLIENT_IP6.into())),
    };
    reply
        .clone()
        .addressed((vip, port), client)
        .ttl(reply.ttl - 1)
        .macs(bed.client_if.mac, router)
        .bytes()
}

/// The client's SYN to VIP:443, as the router hands it to the client-side interface.
fn syn_to_vip(bed: &Bed) -> (Iface, Pkt) {
    (
        bed.client_if,
        bed.from_client(Pkt::tcp(CLIENT, (VIP, 443), SYN)),
    )
}

/// The client's ACK to VIP:443 (a packet of an established flow, or one without state).
fn ack_to_vip(bed: &Bed) -> (Iface, Pkt) {
    (
        bed.client_if,
        bed.from_client(Pkt::tcp(CLIENT, (VIP, 443), ACK)),
    )
}

/// `pkt` DNATed to the `web` backend the programmed table gives the client, port 443.
fn to_predicted_web_backend(bed: &Bed, pkt: &Pkt) -> Vec<u8> {
    to_backend(bed, pkt, (bed.predict("web", CLIENT.0, CLIENT.1), 443))
}

/// The only flow's backend address and SNAT source (one-arm rows make exactly one, half-open or
/// established).
fn one_arm_flow(bed: &Bed) -> (Ipv4Addr, (Ipv4Addr, u16)) {
    let reader = bed.dp.reader();
    let mut flows = reader.flows().expect("flows");
    flows.extend(reader.half_open_flows().expect("half-open flows"));
    assert_eq!(flows.len(), 1, "one flow");
    let reply = flows[0].1.reply;
    let backend = Ipv4Addr::from(lb_common::addr::v4_octets(&reply.src));
    let snat = Ipv4Addr::from(lb_common::addr::v4_octets(&reply.dst));
    (backend, (snat, u16::from_be(reply.dst_port)))
}

fn udp_service(bed: &mut Bed) {
    let mut s = service("dns", 88, &[1, 2, 3].map(backend_ip));
    s.protocol = Protocol::Udp;
    bed.install(s);
}

fn udp_to_backend(bed: &Bed, pkt: &Pkt) -> Vec<u8> {
    to_backend(bed, pkt, (bed.predict("dns", CLIENT.0, CLIENT.1), 88))
}

fn udp(zero_checksum: bool) -> Pkt {
    let mut pkt = Pkt::udp(CLIENT, (VIP, 88));
    pkt.l4 = Transport::Udp {
        sport: CLIENT.1,
        dport: 88,
        zero_checksum,
    };
    pkt
}

fn backend_on_8443(bed: &mut Bed) {
    let mut s = service("web", 443, &[backend_ip(1)]);
    s.backends[0].port = Some(8443);
    bed.install(s);
}

fn single_backend_at(bed: &mut Bed, addr: Ipv4Addr) {
    bed.install(service("web", 443, &[addr]));
}

/// What a backend gets when the kernel, not the balancer, forwards the translated SYN.
fn translated_only(to: Ipv4Addr) -> impl Fn(&Bed, &Pkt) -> Vec<u8> {
    move |_, pkt| pkt.clone().addressed(CLIENT, (to, 443)).bytes()
}

/// Every row, in the order the bench reports them.
pub fn all() -> Vec<FlowCase> {
    vec![
        two_arm_new_flow(),
        two_arm_established_flow(),
        two_arm_reply(),
        claimed_new_flow(),
        claimed_established_flow(),
        claimed_reply(),
        mid_flow_without_state(),
        port_range_rule(),
        udp_new_flow(),
        udp_without_checksum(),
        backend_port_rewrite(),
        reply_from_backend_port(),
        one_arm_new_flow(),
        one_arm_established_flow(),
        one_arm_reply(),
        cluster_established_flow(),
        unknown_neighbour(),
        no_route(),
        syn_for_another_host(),
        reply_for_another_host(),
        ipv6_new_flow(),
        ipv6_established_flow(),
        ipv6_reply(),
    ]
}

pub fn two_arm_new_flow() -> FlowCase {
    FlowCase {
        name: "two-arm new flow (SYN): DNAT to the predicted backend, TTL-1",
        setup: three_backends,
        input: syn_to_vip,
        action: XDP_REDIRECT,
        output: to_predicted_web_backend,
        counts: None,
        timing: Timing::NewClientEachRun,
    }
}

pub fn two_arm_established_flow() -> FlowCase {
    FlowCase {
        name: "two-arm established flow: the flow keeps its backend",
        setup: three_backends_and_a_flow,
        input: ack_to_vip,
        action: XDP_REDIRECT,
        output: to_predicted_web_backend,
        counts: None,
        timing: Timing::SameFlow,
    }
}

pub fn two_arm_reply() -> FlowCase {
    FlowCase {
        name: "two-arm reply: source restored to the VIP",
        setup: three_backends_and_a_flow,
        input: reply_from_the_flows_backend,
        action: XDP_REDIRECT,
        output: |bed, pkt| to_client(bed, pkt, 443, CLIENT),
        counts: None,
        timing: Timing::SameFlow,
    }
}

pub fn claimed_new_flow() -> FlowCase {
    FlowCase {
        name: "two-arm new flow, backend ports shared by two VIP ports: claims its reply tuple",
        setup: three_backends_shared,
        input: syn_to_vip,
        action: XDP_REDIRECT,
        output: to_predicted_web_backend,
        counts: None,
        timing: Timing::NewClientEachRun,
    }
}

pub fn claimed_established_flow() -> FlowCase {
    FlowCase {
        name: "two-arm established flow that claimed its reply tuple",
        setup: shared_backend_ports_and_a_flow,
        input: ack_to_vip,
        action: XDP_REDIRECT,
        output: to_predicted_web_backend,
        counts: None,
        timing: Timing::SameFlow,
    }
}

pub fn claimed_reply() -> FlowCase {
    FlowCase {
        name: "two-arm reply of a flow that claimed its reply tuple",
        setup: shared_backend_ports_and_a_flow,
        input: reply_from_the_flows_backend,
        action: XDP_REDIRECT,
        output: |bed, pkt| to_client(bed, pkt, 443, CLIENT),
        counts: None,
        timing: Timing::SameFlow,
    }
}

pub fn mid_flow_without_state() -> FlowCase {
    FlowCase {
        name: "mid-flow packet without state: balanced like its SYN, counted",
        setup: three_backends,
        input: ack_to_vip,
        action: XDP_REDIRECT,
        output: to_predicted_web_backend,
        counts: Some(Counter::Event(FlowEvent::NonSynMiss)),
        timing: Timing::NewClientEachRun,
    }
}

pub fn port_range_rule() -> FlowCase {
    FlowCase {
        name: "port-range rule: any port of the range, the client's port kept",
        setup: |bed| {
            let mut s = service("rpc", 1024, &[1, 2, 3].map(backend_ip));
            s.ports = vec![PortRange {
                lo: 1024,
                hi: 65535,
            }];
            bed.install(s);
        },
        input: |bed| {
            (
                bed.client_if,
                bed.from_client(Pkt::tcp(CLIENT, (VIP, 6001), SYN)),
            )
        },
        action: XDP_REDIRECT,
        output: |bed, pkt| to_backend(bed, pkt, (bed.predict("rpc", CLIENT.0, CLIENT.1), 6001)),
        counts: None,
        timing: Timing::NewClientEachRun,
    }
}

pub fn udp_new_flow() -> FlowCase {
    FlowCase {
        name: "UDP new flow",
        setup: udp_service,
        input: |bed| (bed.client_if, bed.from_client(udp(false))),
        action: XDP_REDIRECT,
        output: udp_to_backend,
        counts: None,
        timing: Timing::NewClientEachRun,
    }
}

pub fn udp_without_checksum() -> FlowCase {
    FlowCase {
        name: "UDP without a checksum: it stays without one",
        setup: udp_service,
        input: |bed| (bed.client_if, bed.from_client(udp(true))),
        action: XDP_REDIRECT,
        output: udp_to_backend,
        counts: None,
        timing: Timing::NewClientEachRun,
    }
}

pub fn backend_port_rewrite() -> FlowCase {
    FlowCase {
        name: "a backend port rewrites the destination port",
        setup: backend_on_8443,
        input: syn_to_vip,
        action: XDP_REDIRECT,
        output: |bed, pkt| to_backend(bed, pkt, (backend_ip(1), 8443)),
        counts: None,
        timing: Timing::NewClientEachRun,
    }
}

pub fn reply_from_backend_port() -> FlowCase {
    FlowCase {
        name: "reply from a backend port: source restored to VIP:443",
        setup: |bed| {
            backend_on_8443(bed);
            syn_from_client(bed, XDP_REDIRECT);
        },
        input: |bed| {
            let reply = Pkt::tcp((backend_ip(1), 8443), CLIENT, SYN_ACK);
            (bed.server_if, bed.from_backend(reply, bed.server_if))
        },
        action: XDP_REDIRECT,
        output: |bed, pkt| to_client(bed, pkt, 443, CLIENT),
        counts: None,
        timing: Timing::SameFlow,
    }
}

pub fn one_arm_new_flow() -> FlowCase {
    FlowCase {
        name: "one-arm new flow (SYN): DNAT and SNAT, out the interface it came in on",
        setup: one_arm,
        input: syn_to_vip,
        action: XDP_TX,
        output: |bed, pkt| {
            let (backend, snat) = one_arm_flow(bed);
            assert_eq!(backend, bed.predict("web", CLIENT.0, CLIENT.1));
            pkt.clone()
                .addressed(snat, (backend, 443))
                .ttl(pkt.ttl - 1)
                .macs(bed.client_if.mac, neighbour_mac(backend))
                .bytes()
        },
        counts: None,
        timing: Timing::NewClientEachRun,
    }
}

/// The client's flow established (SYN, then ACK), its packets sent by `to`.
fn a_flow(bed: &mut Bed, to: fn(&Bed) -> (Iface, Pkt)) {
    let (ingress, syn) = to(bed);
    let syn = syn.flags(SYN);
    assert_eq!(bed.run(ingress, &syn.bytes()).0, XDP_TX, "setup SYN");
    let (ingress, ack) = to(bed);
    assert_eq!(bed.run(ingress, &ack.bytes()).0, XDP_TX, "setup ACK");
}

/// `pkt` translated to the row's only flow's backend, from its SNAT source.
fn snatted_to_the_flows_backend(bed: &Bed, pkt: &Pkt) -> Vec<u8> {
    let (backend, snat) = one_arm_flow(bed);
    pkt.clone()
        .addressed(snat, (backend, 443))
        .ttl(pkt.ttl - 1)
        .macs(bed.client_if.mac, neighbour_mac(backend))
        .bytes()
}

pub fn one_arm_established_flow() -> FlowCase {
    FlowCase {
        name: "one-arm established flow: DNAT and SNAT as at its SYN",
        setup: |bed| {
            one_arm(bed);
            a_flow(bed, ack_to_vip);
        },
        input: ack_to_vip,
        action: XDP_TX,
        output: snatted_to_the_flows_backend,
        counts: None,
        timing: Timing::SameFlow,
    }
}

/// The client's ACK to VIP:443 sent to the cluster MAC, as a cluster's switch floods it.
fn ack_to_cluster(bed: &Bed) -> (Iface, Pkt) {
    let mac = lb_common::cluster::cluster_mac(lb_common::cluster::MacMode::Unicast, VIP.octets());
    (
        bed.client_if,
        Pkt::tcp(CLIENT, (VIP, 443), ACK).macs(ROUTER_MAC, mac),
    )
}

pub fn cluster_established_flow() -> FlowCase {
    FlowCase {
        name: "cluster mode: one-arm established flow in a bucket this node owns (bucket check)",
        setup: |bed| {
            one_arm(bed);
            bed.cluster(1, lb_common::cluster::MacMode::Unicast);
            bed.own_buckets(
                |_| lb_common::cluster::BUCKET_MINE,
                std::time::Duration::from_secs(3600),
            );
            a_flow(bed, ack_to_cluster);
        },
        input: ack_to_cluster,
        action: XDP_TX,
        output: snatted_to_the_flows_backend,
        counts: None,
        timing: Timing::SameFlow,
    }
}

pub fn one_arm_reply() -> FlowCase {
    FlowCase {
        name: "one-arm reply: reverse SNAT and DNAT",
        setup: |bed| {
            one_arm(bed);
            syn_from_client(bed, XDP_TX);
        },
        input: |bed| {
            let (backend, snat) = one_arm_flow(bed);
            let reply = Pkt::tcp((backend, 443), snat, SYN_ACK);
            (bed.client_if, bed.from_backend(reply, bed.client_if))
        },
        action: XDP_TX,
        output: |bed, pkt| to_client(bed, pkt, 443, CLIENT),
        counts: None,
        timing: Timing::SameFlow,
    }
}

pub fn unknown_neighbour() -> FlowCase {
    FlowCase {
        name: "unknown neighbour: translated, then the kernel forwards it and resolves ARP",
        setup: |bed| single_backend_at(bed, UNRESOLVED_BACKEND),
        input: syn_to_vip,
        action: XDP_PASS,
        output: |bed, pkt| translated_only(UNRESOLVED_BACKEND)(bed, pkt),
        counts: Some(Counter::Pass(PassReason::NoNeighbour)),
        timing: Timing::NewClientEachRun,
    }
}

pub fn no_route() -> FlowCase {
    FlowCase {
        name: "no route: translated, then the kernel answers with ICMP unreachable",
        setup: |bed| single_backend_at(bed, UNROUTABLE_BACKEND),
        input: syn_to_vip,
        action: XDP_PASS,
        output: |bed, pkt| translated_only(UNROUTABLE_BACKEND)(bed, pkt),
        counts: Some(Counter::Pass(PassReason::NoFastRoute)),
        timing: Timing::NewClientEachRun,
    }
}

/// The input, unchanged: what a passed packet must look like when it reaches the kernel.
fn unchanged(_: &Bed, pkt: &Pkt) -> Vec<u8> {
    pkt.bytes()
}

pub fn syn_for_another_host() -> FlowCase {
    FlowCase {
        name: "SYN to the VIP sent to another host's MAC (flooded): passed untouched, not_for_us",
        setup: three_backends,
        input: |bed| {
            let (ingress, syn) = syn_to_vip(bed);
            (ingress, syn.macs(ROUTER_MAC, OTHER_HOST_MAC))
        },
        action: XDP_PASS,
        output: unchanged,
        counts: Some(Counter::Pass(PassReason::NotForUs)),
        timing: Timing::NewClientEachRun,
    }
}

pub fn reply_for_another_host() -> FlowCase {
    FlowCase {
        name: "reply of a live flow sent to another host's MAC: passed untouched, not_for_us",
        setup: three_backends_and_a_flow,
        input: |bed| {
            let (ingress, reply) = reply_from_the_flows_backend(bed);
            let backend_mac = neighbour_mac_of(reply.src);
            (ingress, reply.macs(backend_mac, OTHER_HOST_MAC))
        },
        action: XDP_PASS,
        output: unchanged,
        counts: Some(Counter::Pass(PassReason::NotForUs)),
        timing: Timing::SameFlow,
    }
}

/// The client's packet to VIP6:443 with `flags`, as the router hands it to the client side.
fn to_vip6(bed: &Bed, flags: TcpFlags) -> (Iface, Pkt) {
    let pkt = Pkt::tcp(CLIENT6, (VIP6, 443), flags);
    (bed.client_if, bed.from_client(pkt))
}

/// `pkt` DNATed to the `web6` backend the programmed table gives the IPv6 client, port 443.
fn to_predicted_web6_backend(bed: &Bed, pkt: &Pkt) -> Vec<u8> {
    let backend = bed.predict_ip("web6", CLIENT6.0.into(), CLIENT6.1);
    to_backend(bed, pkt, (backend, 443))
}

/// `three_backends6`, and the IPv6 client's SYN that starts the row's flow.
fn three_backends6_and_a_flow(bed: &mut Bed) {
    three_backends6(bed);
    let (ingress, syn) = to_vip6(bed, SYN);
    assert_eq!(bed.run(ingress, &syn.bytes()).0, XDP_REDIRECT, "setup SYN");
}

pub fn ipv6_new_flow() -> FlowCase {
    FlowCase {
        name: "IPv6 two-arm new flow (SYN): DNAT to the predicted backend, hop limit -1",
        setup: three_backends6,
        input: |bed| to_vip6(bed, SYN),
        action: XDP_REDIRECT,
        output: to_predicted_web6_backend,
        counts: None,
        timing: Timing::NewClientEachRun,
    }
}

pub fn ipv6_established_flow() -> FlowCase {
    FlowCase {
        name: "IPv6 two-arm established flow: the flow keeps its backend",
        setup: three_backends6_and_a_flow,
        input: |bed| to_vip6(bed, ACK),
        action: XDP_REDIRECT,
        output: to_predicted_web6_backend,
        counts: None,
        timing: Timing::SameFlow,
    }
}

pub fn ipv6_reply() -> FlowCase {
    FlowCase {
        name: "IPv6 two-arm reply: source restored to the VIP",
        setup: three_backends6_and_a_flow,
        input: |bed| {
            let backend = bed.predict_ip("web6", CLIENT6.0.into(), CLIENT6.1);
            let reply = Pkt::tcp((backend, 443), CLIENT6, SYN_ACK);
            (bed.server_if, bed.from_backend(reply, bed.server_if))
        },
        action: XDP_REDIRECT,
        output: |bed, pkt| to_client(bed, pkt, 443, CLIENT6),
        counts: None,
        timing: Timing::SameFlow,
    }
}
