//! Cluster mode's datapath: every node receives every packet for the VIPs (through the cluster
//! MAC it answers ARP with) and keeps only its buckets' packets; a bucket it gave up it keeps
//! only for its own TCP connections; a bucket another node is finishing it takes only new flows
//! in; and when its lease runs out it keeps nothing.

use std::{net::Ipv4Addr, time::Duration};

use lb_common::{
    addr::v4,
    cluster::{BUCKET_FINISHING, BUCKET_HANDOVER, BUCKET_MINE, MacMode, bucket_of, cluster_mac},
    service::Affinity,
    stats::{DropReason, FlowEvent, PassReason},
};
use xnlb_tests::{bed::*, packets::*};

/// Comfortably longer than any test: the lease is not what these rows test.
const LEASE: Duration = Duration::from_secs(60);

fn unicast_mac() -> [u8; 6] {
    cluster_mac(MacMode::Unicast, VIP.octets())
}

/// A one-arm cluster node balancing `web` (affinity single) over two backends.
fn node() -> Bed {
    let mut bed = Bed::new();
    bed.one_arm((30_000, 30_999));
    bed.install(service(
        "web",
        443,
        &[one_arm_backend_ip(1), one_arm_backend_ip(2)],
    ));
    bed.cluster(1, MacMode::Unicast);
    bed
}

/// A bucket table where this node has `flags` for `bucket` and nothing else.
fn only(bucket: u32, flags: u32) -> impl Fn(u32) -> u32 {
    move |b| if b == bucket { flags } else { 0 }
}

fn bucket(client: Ipv4Addr) -> u32 {
    bucket_of(Affinity::Single as u8, 24, &v4(client.octets()), 0)
}

/// A client's packet to the VIP as the switch floods it: to the cluster MAC.
fn to_cluster(client: (Ipv4Addr, u16), flags: TcpFlags) -> Pkt {
    Pkt::tcp(client, (VIP, 443), flags).macs(ROUTER_MAC, unicast_mac())
}

/// Two clients in different buckets.
fn two_clients() -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let a = client_ip(1);
    let b = (2..200)
        .map(client_ip)
        .find(|&c| bucket(c) != bucket(a))
        .expect("another bucket");
    ((a, 40_000), (b, 40_000))
}

/// An ARP request from the router for `target`, broadcast.
fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&ROUTER.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

#[test]
fn arp_for_a_vip_is_answered_with_the_cluster_mac_from_the_nodes_own() {
    let bed = node();
    let (action, out) = bed.run(bed.client_if, &arp_request(VIP));
    assert_eq!(action, XDP_TX);
    assert_eq!(&out[0..6], &ROUTER_MAC, "to the asker");
    assert_eq!(
        &out[6..12],
        &bed.client_if.mac,
        "from the node's own MAC: a switch must never learn the cluster MAC"
    );
    assert_eq!(&out[12..14], &[0x08, 0x06]);
    assert_eq!(&out[20..22], &[0, 2], "a reply");
    assert_eq!(
        &out[22..28],
        &unicast_mac(),
        "the VIP is at the cluster MAC"
    );
    assert_eq!(&out[28..32], &VIP.octets());
    assert_eq!(&out[32..38], &ROUTER_MAC);
    assert_eq!(&out[38..42], &ROUTER.octets());

    // Anything else is the kernel's.
    let other = arp_request(LB_CLIENT_IP);
    assert_eq!(bed.run(bed.client_if, &other), (XDP_PASS, other.clone()));
    assert_eq!(bed.passes(PassReason::Arp), 1);
    // Without cluster mode, ARP is not the datapath's at all.
    let mut plain = Bed::new();
    plain.one_arm((30_000, 30_999));
    plain.install(service("web", 443, &[one_arm_backend_ip(1)]));
    let asked = arp_request(VIP);
    assert_eq!(
        plain.run(plain.client_if, &asked),
        (XDP_PASS, asked.clone())
    );
    assert_eq!(plain.passes(PassReason::NotIp), 1);
}

#[test]
fn only_this_nodes_buckets_are_balanced() {
    let mut bed = node();
    let (mine, theirs) = two_clients();
    let my_bucket = bucket(mine.0);
    bed.own_buckets(only(my_bucket, BUCKET_MINE), LEASE);
    let (action, _) = bed.run(bed.client_if, &to_cluster(mine, SYN).bytes());
    assert_eq!(
        action, XDP_TX,
        "sent to the cluster MAC, in this node's bucket"
    );
    let (action, _) = bed.run(bed.client_if, &to_cluster(theirs, SYN).bytes());
    assert_eq!(action, XDP_DROP);
    assert_eq!(bed.drops(DropReason::NotMyBucket), 1);
    let web = bed.service_id("web");
    assert_eq!(
        bed.dp.reader().service_stats(web).unwrap().packets,
        1,
        "another node's packets are not counted as this one's"
    );

    // The bucket is another node's now (this node came back from the dead, its old flows
    // still in its table, and the others had adopted them): neither the client's packets nor
    // the backend's replies of those flows are this node's any more.
    bed.run(bed.client_if, &to_cluster(mine, ACK).bytes());
    let (_, flow) = bed.dp.reader().flows().unwrap()[0];
    let backend = Ipv4Addr::from(lb_common::addr::v4_octets(&flow.reply.src));
    let snat = (
        Ipv4Addr::from(lb_common::addr::v4_octets(&flow.reply.dst)),
        u16::from_be(flow.reply.dst_port),
    );
    let reply = bed.from_backend(Pkt::tcp((backend, 443), snat, ACK), bed.client_if);
    assert_eq!(
        bed.run(bed.client_if, &reply.bytes()).0,
        XDP_TX,
        "while it is mine"
    );
    bed.own_buckets(|_| 0, LEASE);
    assert_eq!(bed.run(bed.client_if, &reply.bytes()).0, XDP_DROP);
    assert_eq!(
        bed.run(bed.client_if, &to_cluster(mine, ACK).bytes()).0,
        XDP_DROP
    );
}

#[test]
fn a_finishing_node_carries_its_own_connections_and_nothing_new() {
    let mut bed = node();
    let (client, other) = two_clients();
    let b = bucket(client.0);
    bed.own_buckets(only(b, BUCKET_MINE), LEASE);
    bed.run(bed.client_if, &to_cluster(client, SYN).bytes());
    bed.run(bed.client_if, &to_cluster(client, ACK).bytes());
    assert_eq!(bed.dp.reader().flows().unwrap().len(), 1);

    // The bucket moves to another node; this one finishes its connection there.
    bed.own_buckets(only(b, BUCKET_FINISHING), LEASE);
    let (action, _) = bed.run(bed.client_if, &to_cluster(client, ACK).bytes());
    assert_eq!(action, XDP_TX, "its own connection goes on");
    let (_, snat) = {
        let flows = bed.dp.reader().flows().unwrap();
        let r = flows[0].1.reply;
        (
            Ipv4Addr::from(lb_common::addr::v4_octets(&r.src)),
            (
                Ipv4Addr::from(lb_common::addr::v4_octets(&r.dst)),
                u16::from_be(r.dst_port),
            ),
        )
    };
    let backend = Ipv4Addr::from(lb_common::addr::v4_octets(
        &bed.dp.reader().flows().unwrap()[0].1.reply.src,
    ));
    let reply = bed.from_backend(Pkt::tcp((backend, 443), snat, ACK), bed.client_if);
    assert_eq!(
        bed.run(bed.client_if, &reply.bytes()).0,
        XDP_TX,
        "and its replies"
    );
    let new_port = (client.0, 40_001);
    let (action, _) = bed.run(bed.client_if, &to_cluster(new_port, SYN).bytes());
    assert_eq!(
        action, XDP_DROP,
        "a new connection there is the new owner's"
    );
    let mut udp = Pkt::udp(client, (VIP, 443)).macs(ROUTER_MAC, unicast_mac());
    udp.ttl = 64;
    assert_eq!(
        bed.run(bed.client_if, &udp.bytes()).0,
        XDP_DROP,
        "UDP moves at once"
    );
    let (action, _) = bed.run(bed.client_if, &to_cluster(other, ACK).bytes());
    assert_eq!(action, XDP_DROP);
}

#[test]
fn an_owner_takes_a_connections_middle_only_when_nobody_is_finishing_it() {
    let mut bed = node();
    let (client, _) = two_clients();
    let b = bucket(client.0);
    // Another node is finishing connections in this bucket: an unknown connection's packet is
    // that node's; a SYN is a new flow, this node's.
    bed.own_buckets(only(b, BUCKET_MINE | BUCKET_HANDOVER), LEASE);
    let (action, _) = bed.run(bed.client_if, &to_cluster(client, ACK).bytes());
    assert_eq!(action, XDP_DROP);
    assert_eq!(bed.events(FlowEvent::NonSynMiss), 0);
    let fresh = (client.0, 40_002);
    assert_eq!(
        bed.run(bed.client_if, &to_cluster(fresh, SYN).bytes()).0,
        XDP_TX
    );
    // Nobody is: the connection of a node that died is adopted at once.
    bed.own_buckets(only(b, BUCKET_MINE), LEASE);
    let (action, out) = bed.run(bed.client_if, &to_cluster(client, ACK).bytes());
    assert_eq!(action, XDP_TX);
    assert_eq!(bed.events(FlowEvent::NonSynMiss), 1, "adopted");
    let backend = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    assert_eq!(
        backend,
        bed.predict("web", client.0, client.1),
        "to the backend every node's table gives it"
    );
}

#[test]
fn a_node_whose_lease_ran_out_keeps_nothing() {
    let mut bed = node();
    let (client, _) = two_clients();
    bed.own_buckets(|_| BUCKET_MINE, LEASE);
    bed.run(bed.client_if, &to_cluster(client, SYN).bytes());
    bed.run(bed.client_if, &to_cluster(client, ACK).bytes());
    assert_eq!(
        bed.run(bed.client_if, &to_cluster(client, ACK).bytes()).0,
        XDP_TX
    );
    // The controller stopped renewing the lease (it died): the other nodes take over.
    bed.expire_lease();
    assert_eq!(
        bed.run(bed.client_if, &to_cluster(client, ACK).bytes()).0,
        XDP_DROP
    );
    let new = (client.0, 40_003);
    assert_eq!(
        bed.run(bed.client_if, &to_cluster(new, SYN).bytes()).0,
        XDP_DROP
    );
}

/// Two-arm: a connection whose node died, met first from its backend's side (the client is
/// waiting for data). The owner of the client's bucket adopts it from `SERVED_BY` (the backend
/// port serves web's VIP:443 alone) and translates the packet; not while another node is
/// finishing in the bucket, and never from a SYN-ACK.
#[test]
fn a_dead_nodes_connection_is_adopted_from_its_backends_packet() {
    let mut bed = Bed::new();
    xnlb_tests::flow_cases::three_backends(&mut bed);
    bed.cluster(1, MacMode::Unicast);
    let client: (Ipv4Addr, u16) = (client_ip(7), 45_000);
    let b = bucket_of(
        Affinity::None as u8,
        24,
        &v4(client.0.octets()),
        client.1.to_be(),
    );
    let backend = backend_ip(1);
    let data = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);

    bed.own_buckets(only(b, BUCKET_MINE | BUCKET_HANDOVER), LEASE);
    assert_eq!(
        bed.run(bed.server_if, &data.bytes()).0,
        XDP_PASS,
        "another node's to finish"
    );
    bed.own_buckets(only(b, BUCKET_MINE), LEASE);
    let syn_ack = bed.from_backend(Pkt::tcp((backend, 443), client, SYN_ACK), bed.server_if);
    assert_eq!(
        bed.run(bed.server_if, &syn_ack.bytes()).0,
        XDP_PASS,
        "not a SYN-ACK"
    );
    assert_eq!(bed.events(FlowEvent::Adopted), 0);

    assert_eq!(
        bed.run(bed.server_if, &data.bytes()),
        (
            XDP_REDIRECT,
            xnlb_tests::flow_cases::to_client(&bed, &data, 443, client)
        )
    );
    assert_eq!(bed.events(FlowEvent::Adopted), 1);
    let flows = bed.dp.reader().flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].1.backend_id, bed.backend_id("web", "b1"));
    // The client's next packet finds the flow: to the same backend.
    let ack = Pkt::tcp(client, (VIP, 443), ACK).macs(ROUTER_MAC, unicast_mac());
    let (action, out) = bed.run(bed.client_if, &ack.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[30..34], &backend.octets());
    assert_eq!(bed.events(FlowEvent::NonSynMiss), 0);
}
