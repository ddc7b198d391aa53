//! Cluster mode (`lb_common::cluster`): which of the VIPs' packets are this node's (the
//! buckets it owns, while its lease on the bucket table holds), and ARP for the VIPs answered
//! with the cluster MAC, so that every node receives every packet for them.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    addr::{Addr, AddrKey},
    cluster::{
        ACTIVE_TABLE, BUCKET_FINISHING, BUCKET_HANDOVER, BUCKET_MINE, BUCKETS as BUCKETS_PER_TABLE,
        LEASE_UNTIL, bucket_of,
    },
    flow::{FlowKey, ReplyEntry, ServedBy},
    settings::DatapathSettings,
    stats::PassReason,
};

use crate::{
    Outcome, conntrack,
    maps::{BACKENDS, BUCKETS, CLUSTER_STATE, SERVICES, VIPS},
    mem,
    packet::{ETH_HLEN, EthHdr, ptr_at},
};

/// This node's flags for the bucket of a client at `client`:`client_port` of a service with
/// `affinity` and `network_prefix`; 0 (not this node's) once the lease on the table has run
/// out: the controller stopped renewing it, so the other nodes are taking its buckets.
#[inline(always)]
pub fn bucket_flags(
    affinity: u8,
    network_prefix: u8,
    client: &Addr,
    client_port: u16,
    now: u64,
) -> u32 {
    let lease = CLUSTER_STATE.get(LEASE_UNTIL).copied().unwrap_or(0);
    if now >= lease {
        return 0;
    }
    let table = (CLUSTER_STATE.get(ACTIVE_TABLE).copied().unwrap_or(0) & 1) as u32;
    let bucket = bucket_of(affinity, network_prefix, client, client_port);
    BUCKETS
        .get(table * BUCKETS_PER_TABLE + bucket)
        .copied()
        .unwrap_or(0)
}

/// Whether this node forwards a backend's packet of the flow `entry` names: its bucket is this
/// node's, or (TCP) this node is finishing its connections there. Another node carries the
/// rest: a node back from the dead holds flows that others adopted.
#[inline(always)]
pub fn carries_reply(entry: &ReplyEntry, tcp: bool, now: u64) -> bool {
    let Some(backend) = BACKENDS.get(entry.backend_id) else {
        return false;
    };
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole elements.
    let Some(svc) = (unsafe { SERVICES.get(&backend.service_id) }) else {
        return false;
    };
    let client = &entry.client;
    let flags = bucket_flags(
        svc.affinity,
        svc.network_prefix,
        &client.src,
        client.src_port,
        now,
    );
    flags & BUCKET_MINE != 0 || (tcp && flags & BUCKET_FINISHING != 0)
}

/// The source MAC of a frame this node sends back out of the interface a frame to `frame_dst`
/// arrived on: that destination, unless it is the cluster MAC, which no node may ever send from
/// (a switch would learn it and stop flooding it to the other nodes); then the node's own.
#[inline(always)]
pub fn answering_mac<'a>(s: &'a DatapathSettings, frame_dst: &'a [u8; 6]) -> &'a [u8; 6] {
    if s.cluster.enabled != 0 {
        &s.cluster.own_client_mac
    } else {
        frame_dst
    }
}

/// Two-arm: whether this node may adopt the connection that a backend's `reply` answers, which
/// no node knows any more (its node died before its client sent again; the client tuple comes
/// from `served`): the client's bucket is this node's with nobody finishing there, and the
/// backend still serves that address and port and keeps flows. A frame of its own: the reply
/// path's is nearly full.
#[inline(never)]
pub fn may_adopt(served: &ServedBy, reply: &FlowKey, now: u64) -> bool {
    // SAFETY: the element stays valid for this program run (RCU).
    let Some(svc) = (unsafe { SERVICES.get(&served.service_id) }) else {
        return false;
    };
    let flags = v4_bucket_flags(
        svc.affinity,
        svc.network_prefix,
        reply.dst[0],
        reply.dst_port,
        now,
    );
    if flags & BUCKET_MINE == 0 || flags & BUCKET_HANDOVER != 0 {
        return false;
    }
    conntrack::backend_carries(served.backend_id, reply)
}

/// `sent`, the outcome of sending a translated packet. One of this node's packets that goes to
/// the kernel after all (to resolve a neighbour, to be fragmented, to answer with ICMP) was
/// sent to the cluster MAC, which the kernel does not take as its own: it is readdressed to the
/// node's own MAC on the interface it came in on. (The Ethernet header is found again: a
/// packet that `icmp::too_big` could not answer went through a helper that may move the
/// frame, which leaves the caller no valid packet pointer.)
#[inline(always)]
pub fn to_kernel_as_own(ctx: &XdpContext, s: &DatapathSettings, sent: Outcome) -> Outcome {
    if let Outcome::Pass(_) = sent {
        readdress_to_this_node(ctx, s);
    }
    sent
}

#[inline(always)]
fn readdress_to_this_node(ctx: &XdpContext, s: &DatapathSettings) {
    let c = &s.cluster;
    if c.enabled == 0 {
        return;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return;
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet, which outlives this call.
    let eth = unsafe { &mut *eth };
    let ingress = ctx.ingress_ifindex() as u32;
    let own = if ingress == c.client_ifindex {
        &c.own_client_mac
    } else if c.server_ifindex != 0 && ingress == c.server_ifindex {
        &c.own_server_mac
    } else {
        return;
    };
    mem::copy_mac(&mut eth.dst, own);
    // The kernel classifies the frame again (host, not another host's) only when it sees its
    // source changed as well; the source of a frame it takes in is not used.
    mem::copy_mac(&mut eth.src, own);
}

/// `bucket_flags` for an IPv4 client, in a frame of its own: the hash's registers would
/// otherwise spill onto `may_adopt`'s stack, which sits on top of the reply stage's (the
/// verifier counts the sum against 512 bytes).
#[inline(never)]
fn v4_bucket_flags(
    affinity: u8,
    network_prefix: u8,
    client: u32,
    client_port: u16,
    now: u64,
) -> u32 {
    bucket_flags(
        affinity,
        network_prefix,
        &[client, 0, 0, 0],
        client_port,
        now,
    )
}

const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// An ARP packet for IPv4 over Ethernet.
#[repr(C)]
struct ArpIpv4 {
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    oper: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// Whether the frame is ARP.
#[inline(always)]
pub fn is_arp(eth: &EthHdr) -> bool {
    u16::from_be(eth.proto) == ETH_P_ARP
}

/// An ARP request for a VIP on the cluster interface, or (two-arm) for the shared gateway on
/// the server interface, is answered in place with the cluster MAC, from this node's own MAC
/// (a switch must never learn the cluster MAC, or it would stop flooding it). Every node
/// answers alike. Any other ARP is the kernel's.
#[inline(always)]
pub fn answer_arp(ctx: &XdpContext, eth: &mut EthHdr, s: &DatapathSettings) -> Outcome {
    let c = &s.cluster;
    let Some(arp) = ptr_at::<ArpIpv4>(ctx, ETH_HLEN) else {
        return Outcome::Pass(PassReason::Arp);
    };
    // SAFETY: `ptr_at` checked that the packet holds it; it outlives this call.
    let arp = unsafe { &mut *arp };
    if u16::from_be(arp.oper) != ARP_REQUEST
        || u16::from_be(arp.ptype) != 0x0800
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Outcome::Pass(PassReason::Arp);
    }
    let target = u32::from_ne_bytes(arp.tpa);
    let ingress = ctx.ingress_ifindex() as u32;
    let (cluster_mac, own_mac) = if ingress == c.client_ifindex
        // SAFETY: the element stays valid for this program run (RCU).
        && unsafe { VIPS.get(&AddrKey::v4_word(target)) }.is_some()
    {
        (&c.vip_mac, &c.own_client_mac)
    } else if c.gateway != 0 && ingress == c.server_ifindex && target == c.gateway {
        (&c.gateway_mac, &c.own_server_mac)
    } else {
        return Outcome::Pass(PassReason::Arp);
    };
    arp.oper = ARP_REPLY.to_be();
    let asker_mac = arp.sha;
    let asker_ip = arp.spa;
    mem::copy_mac(&mut arp.tha, &asker_mac);
    arp.tpa = asker_ip;
    mem::copy_mac(&mut arp.sha, cluster_mac);
    arp.spa = target.to_ne_bytes();
    mem::copy_mac(&mut eth.dst, &asker_mac);
    mem::copy_mac(&mut eth.src, own_mac);
    Outcome::Sent(xdp_action::XDP_TX)
}
