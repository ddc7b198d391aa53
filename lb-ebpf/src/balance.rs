//! The two directions of a balanced flow: client → VIP (select, DNAT, SNAT in one-arm) and
//! backend → client (undo the NAT). Each has an entry per IP version, which finds the transport
//! header (and deals with fragments), and one body for both (`ip::IpHeader`).

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key, programs::XdpContext,
};
use lb_common::{
    addr::{FAMILY_V4, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    cluster::BUCKET_MINE,
    flow::{FlowEntry, FlowKey, ReplyEntry},
    next_hop::NextHop,
    service::{Filtering, RULE_LOOKUP_BITS, ServiceRuleKey},
    settings::{DatapathSettings, Mode},
    stats::{DropReason, FlowEvent, PassReason},
};

use crate::{
    Outcome, cluster,
    conntrack::{self, Stage},
    derived, forward, fragments,
    ip::{IpHeader, same_addr},
    maps::{BACKEND_HOPS, HALF_OPEN_REPLIES, REPLIES, SERVICE_RULES, SERVICES},
    mem, nat,
    packet::{ETH_HLEN, EthHdr, Ipv4Hdr, Ipv6Hdr, L4, ipv4_header_len, ipv6_transport, parse_l4},
    reset, scratch, stats,
};

/// The transport header of a valid IPv4 TCP/UDP packet (not a later fragment).
#[inline(always)]
fn transport(ctx: &XdpContext, ip: &Ipv4Hdr) -> Option<L4> {
    let ihl = ipv4_header_len(ip);
    let l4_len = (u16::from_be(ip.tot_len) as usize).saturating_sub(ihl);
    parse_l4(ctx, ETH_HLEN + ihl, ip.proto, l4_len)
}

#[inline(always)]
fn tuple<I: IpHeader>(ip: &I, l4: &L4) -> FlowKey {
    // SAFETY: `parse_l4` checked that these bytes lie inside the packet, which outlives this call.
    let ports = unsafe { &*l4.ports };
    FlowKey {
        src: ip.src(),
        dst: ip.dst(),
        src_port: ports.src,
        dst_port: ports.dst,
        proto: l4.proto,
        family: I::FAMILY,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// An IPv4 packet addressed to a VIP: balanced, or dropped with a reason. (ICMP has a stage of
/// its own.)
#[inline(always)]
pub fn to_vip_v4(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    settings: &DatapathSettings,
) -> Outcome {
    // A first fragment carries the ports: it is balanced below, like any packet.
    if fragments::is_later(ip) {
        return fragments::follow(ctx, eth, ip, ip.proto, settings).unwrap_or(
            if settings.cluster.enabled != 0 {
                // Every node sees every fragment; the one that balanced the first follows it.
                Outcome::Drop(DropReason::NotMyBucket)
            } else {
                Outcome::Drop(DropReason::Fragment)
            },
        );
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Outcome::Drop(DropReason::NoService);
    }
    let Some(mut l4) = transport(ctx, ip) else {
        return Outcome::Drop(DropReason::MalformedL4);
    };
    l4.first_fragment = fragments::is_first(ip);
    to_vip(ctx, eth, ip, l4, settings)
}

/// An IPv6 packet addressed to a VIP: balanced, or dropped with a reason. ICMPv6 (neighbour
/// discovery for the VIP where it is the host's, echo, errors) is the kernel's.
#[inline(always)]
pub fn to_vip_v6(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    settings: &DatapathSettings,
) -> Outcome {
    let Some(t) = ipv6_transport(ip) else {
        return Outcome::Drop(DropReason::Ipv6Headers);
    };
    // A first fragment carries the ports: it is balanced below, like any packet.
    if t.later {
        return fragments::follow(ctx, eth, ip, t.proto, settings)
            .unwrap_or(Outcome::Drop(DropReason::Fragment));
    }
    match t.proto {
        PROTO_TCP | PROTO_UDP => {}
        // (The entry sends ICMPv6 to its own stage; this one gets it only if that is missing.)
        PROTO_ICMPV6 => return Outcome::Pass(PassReason::IcmpToVip),
        _ => return Outcome::Drop(DropReason::NoService),
    }
    let Some(mut l4) = parse_l4(ctx, t.offset, t.proto, t.len) else {
        return Outcome::Drop(DropReason::MalformedL4);
    };
    l4.first_fragment = t.first;
    to_vip(ctx, eth, ip, l4, settings)
}

/// A TCP or UDP packet addressed to a VIP, of either IP version.
#[inline(always)]
fn to_vip<I: IpHeader>(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut I,
    l4: L4,
    settings: &DatapathSettings,
) -> Outcome {
    let key = tuple(ip, &l4);
    // A packet of an established flow has its service from the flow's backend: the rule lookup
    // (a longest-prefix walk, the costliest lookup on this path) is for packets without one,
    // and for a flow whose service a reload has just removed (it is re-pointed at its new
    // service right after). A reload that takes a port's rule away removes the port's flows
    // (`plan::flow_fates`). Not in cluster mode, where most packets are other nodes': there the
    // bucket is checked first, and the flow looked up only for this node's.
    let flows_first = settings.cluster.enabled == 0;
    let established = if flows_first {
        conntrack::established_entry(&key, &l4)
    } else {
        None
    };
    let flow_service = established
        .and_then(conntrack::service_of)
        // SAFETY: the element stays valid for this program run (RCU); writers replace whole
        // elements, so a read sees old or new values, never freed memory.
        .and_then(|id| unsafe { SERVICES.get(&id) }.map(|svc| (id, svc)));
    let (service_id, svc) = match flow_service {
        Some(found) => found,
        None => {
            let Some(service_id) = rule_service(I::FAMILY, &key) else {
                return Outcome::Drop(DropReason::NoService);
            };
            // SAFETY: as above.
            let Some(svc) = (unsafe { SERVICES.get(&service_id) }) else {
                return Outcome::Drop(DropReason::NoService);
            };
            (service_id, svc)
        }
    };
    // SAFETY: a helper that takes no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Cluster mode: every node sees every packet; another node's are not counted as this one's.
    let ownership = if settings.cluster.enabled != 0 {
        let flags = cluster::bucket_flags(
            svc.affinity,
            svc.network_prefix,
            &key.src,
            key.src_port,
            now,
        );
        if flags == 0 {
            return Outcome::Drop(DropReason::NotMyBucket);
        }
        flags
    } else {
        BUCKET_MINE
    };
    let established = if flows_first {
        established
    } else {
        conntrack::established_entry(&key, &l4)
    };
    let bytes = frame_len(ctx);
    stats::service_packet(service_id, bytes);
    if svc.filtering == Filtering::Disabled as u8 {
        stats::service_dropped(service_id);
        return Outcome::Drop(DropReason::FilteringDisabled);
    }
    if ip.ttl() <= 1 {
        return Outcome::Pass(PassReason::TtlExceeded);
    }
    if settings.holds_next_hops() {
        // A new flow's entry is built in scratch: it takes its client hop from there.
        let Some(scratch) = scratch::get() else {
            return Outcome::Pass(PassReason::NoFastRoute);
        };
        let smac = cluster::answering_mac(settings, &eth.dst);
        forward::return_to_sender(ctx, eth, smac, &mut scratch.entry.client_hop);
    }
    let flow = match conntrack::client_flow(
        svc,
        service_id,
        &key,
        &l4,
        settings,
        ownership,
        established,
        now,
    ) {
        Ok(flow) => flow,
        Err(reason) => {
            stats::service_dropped(service_id);
            if reason == DropReason::SnatExhausted
                && l4.is_syn()
                // (The reset is written for IPv4.)
                && I::FAMILY == FAMILY_V4
                && let Some(action) = reset::refuse_syn(ctx, settings)
            {
                stats::drop_reason(reason);
                stats::flow_event(FlowEvent::SnatExhaustedReset);
                return Outcome::Sent(action);
            }
            return Outcome::Drop(reason);
        }
    };
    let r = &flow.reply;
    nat::rewrite(ip, &l4, &r.dst, r.dst_port, &r.src, r.src_port);
    stats::to_backend(flow.backend_id, bytes);
    let epoch = forward::epoch(now, settings);
    let Some(hop) = backend_hop(flow.backend_id, &r.src) else {
        return Outcome::Pass(PassReason::NoFastRoute);
    };
    if l4.first_fragment {
        fragments::record(&key, ip, hop, flow.backend_id, false);
    }
    // SAFETY: `parse_l4` checked that these bytes lie inside the packet, which outlives this call.
    let sent = match forward::send(ctx, eth, ip, unsafe { &*l4.ports }, hop, epoch, false) {
        Outcome::TooBig(mtu) => ip.too_big(ctx, &key, mtu, settings),
        sent => sent,
    };
    cluster::to_kernel_as_own(ctx, settings, sent)
}

/// The service whose rule takes a client packet of tuple `key` (of `family`: a constant where
/// the caller has one), by the rules' longest-prefix walk.
#[inline(always)]
pub fn rule_service(family: u8, key: &FlowKey) -> Option<u32> {
    let rule_key = Key::new(
        RULE_LOOKUP_BITS,
        ServiceRuleKey::new(family, key.proto, key.dst, key.dst_port),
    );
    SERVICE_RULES.get(&rule_key).map(|rule| rule.service_id)
}

/// Where the next hop for backend `id` at `addr` is kept: its `BACKEND_HOPS` element, which
/// the controller labels with the backend's address before the id is used for it. A packet for
/// another address (a flow of the id's previous backend, in the instant a reload re-addresses
/// it) gets this CPU's scratch hop instead, asked of the FIB and kept nowhere: the datapath
/// never relabels an element, so it can never keep one address's answer under another's.
#[inline(always)]
pub fn backend_hop(id: u32, addr: &[u32; 4]) -> Option<*mut NextHop> {
    let kept = BACKEND_HOPS.get_ptr_mut(id)?;
    // SAFETY: a pointer to a live array element; the datapath only stores the hop's fields
    // (see `forward::send`), the controller the whole element.
    let kept = unsafe { &mut *kept };
    if same_addr(&kept.addr, addr) {
        return Some(&mut kept.hop);
    }
    let scratch = scratch::get()?;
    // SAFETY: a next hop is plain integers; all zero means never looked up.
    unsafe { mem::zero(&mut scratch.hop) };
    Some(&mut scratch.hop)
}

/// An IPv4 packet from a backend's address: a reply of a balanced flow gets its NAT undone;
/// anything else (the backend's own traffic) goes to the kernel untouched.
#[inline(always)]
pub fn from_backend_v4(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    settings: &DatapathSettings,
) -> Outcome {
    if fragments::is_later(ip) {
        return fragments::follow(ctx, eth, ip, ip.proto, settings)
            .unwrap_or(Outcome::Pass(PassReason::Fragment));
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Outcome::Pass(PassReason::NotOurs);
    }
    let Some(mut l4) = transport(ctx, ip) else {
        return Outcome::Pass(PassReason::Malformed);
    };
    l4.first_fragment = fragments::is_first(ip);
    from_backend(ctx, eth, ip, l4, settings)
}

/// The same for IPv6.
#[inline(always)]
pub fn from_backend_v6(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    settings: &DatapathSettings,
) -> Outcome {
    let Some(t) = ipv6_transport(ip) else {
        return Outcome::Pass(PassReason::Malformed);
    };
    if t.later {
        return fragments::follow(ctx, eth, ip, t.proto, settings)
            .unwrap_or(Outcome::Pass(PassReason::Fragment));
    }
    if t.proto != PROTO_TCP && t.proto != PROTO_UDP {
        return Outcome::Pass(PassReason::NotOurs);
    }
    let Some(mut l4) = parse_l4(ctx, t.offset, t.proto, t.len) else {
        return Outcome::Pass(PassReason::Malformed);
    };
    l4.first_fragment = t.first;
    from_backend(ctx, eth, ip, l4, settings)
}

/// A TCP or UDP packet from a backend's address, of either IP version.
#[inline(always)]
fn from_backend<I: IpHeader>(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut I,
    l4: L4,
    settings: &DatapathSettings,
) -> Outcome {
    let key = tuple(ip, &l4);
    // SAFETY: a helper that takes no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Two-arm: a backend port that serves (or served) one VIP and port alone names the flow.
    if settings.mode == Mode::TwoArm as u8
        && let Some(served) = derived::served_by(&key)
        && let Some((entry, flow)) =
            conntrack::derived_reply_owner(served, &key, &l4, settings, now)
    {
        return to_client(ctx, eth, ip, &l4, entry, flow, settings, now);
    }
    // Otherwise its reply entry: an established flow's reply, or the SYN-ACK (or RST) of a
    // half-open one. A stale established entry does not end the search: a client that came
    // back from the same port has the tuple again, half-open. Two blocks, so that each names
    // its maps as constants.
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole elements or
    // store single fields, so a read sees old or new values, never freed memory.
    if let Some(entry) = unsafe { REPLIES.get(&key) }
        && let Some(flow) =
            conntrack::reply_owner(Stage::Established, entry, &key, &l4, settings, now)
    {
        return to_client(ctx, eth, ip, &l4, entry, flow, settings, now);
    }
    // SAFETY: as above.
    if let Some(entry) = unsafe { HALF_OPEN_REPLIES.get(&key) }
        && let Some(flow) = conntrack::reply_owner(Stage::HalfOpen, entry, &key, &l4, settings, now)
    {
        return to_client(ctx, eth, ip, &l4, entry, flow, settings, now);
    }
    Outcome::Pass(PassReason::NotOurs)
}

/// A backend's packet of the live flow `flow` (`entry` names its client): its NAT undone,
/// forwarded by the next hop the flow keeps for its client. (Eight arguments: a struct of them
/// would cost stack, which the verifier counts.)
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn to_client<I: IpHeader>(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut I,
    l4: &L4,
    entry: &ReplyEntry,
    flow: *mut FlowEntry,
    settings: &DatapathSettings,
    now: u64,
) -> Outcome {
    if settings.cluster.enabled != 0 && !cluster::carries_reply(entry, l4.is_tcp(), now) {
        return Outcome::Drop(DropReason::NotMyBucket);
    }
    if ip.ttl() <= 1 {
        return Outcome::Pass(PassReason::TtlExceeded);
    }
    let client = &entry.client;
    nat::rewrite(
        ip,
        l4,
        &client.dst,
        client.dst_port,
        &client.src,
        client.src_port,
    );
    stats::to_client(entry.backend_id, frame_len(ctx));
    let epoch = forward::epoch(now, settings);
    // SAFETY: a pointer to a live LRU element (valid for this run under RCU).
    let hop = unsafe { &mut (*flow).client_hop };
    if l4.first_fragment {
        // SAFETY: as above; its reply tuple is this packet's as the backend sent it.
        fragments::record(unsafe { &(*flow).reply }, ip, hop, entry.backend_id, true);
    }
    let ask_fib = settings.asks_fib_for_client_hops();
    // SAFETY: `parse_l4` checked that these bytes lie inside the packet, which outlives this call.
    let sent = match forward::send(ctx, eth, ip, unsafe { &*l4.ports }, hop, epoch, ask_fib) {
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU); its reply
        // tuple is this packet's as the backend sent it (`conntrack::reply_owner`).
        Outcome::TooBig(mtu) => ip.too_big(ctx, unsafe { &(*flow).reply }, mtu, settings),
        sent => sent,
    };
    cluster::to_kernel_as_own(ctx, settings, sent)
}
