//! ICMP for balanced flows (IPv4).
//!
//! An error (destination unreachable, fragmentation needed, time exceeded, parameter problem)
//! quotes the packet it is about. One that quotes a packet of a balanced flow is translated the
//! way the flow is, outer and quoted headers alike, with every checksum, and goes to the party
//! that sent the quoted packet: a client-side router's error about a reply (it quotes VIP →
//! client) to the flow's backend; a backend's, or a backend-side router's, error about a
//! client's packet (it quotes client-or-SNAT → backend) to the client. Path MTU discovery
//! through the NAT depends on it. An error that quotes nothing the balancer keeps passes
//! untouched.
//!
//! A packet of a flow larger than its next hop's MTU, with DF set, is answered here too
//! ([`too_big`]): with a "fragmentation needed" about the packet as its sender sent it, back out
//! of the interface it came in on.
//!
//! An echo request to a VIP is answered in place (in cluster mode by the node that owns the
//! sender's bucket).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    addr::{AddrKey, FAMILY_V4, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    checksum::Delta,
    cluster::BUCKET_MINE,
    flow::FlowKey,
    service::Affinity,
    settings::{DatapathSettings, Mode},
    stats::{DropReason, FlowEvent, PassReason},
};

use crate::{
    Outcome, balance, cluster, conntrack, forward,
    maps::{BACKEND_ADDRS, VIPS},
    mem, nat,
    packet::{
        ETH_HLEN, ETH_P_IP, EthHdr, IP_DF, IP_OFFSET, Ipv4Hdr, Ports, ipv4_header_len, is_fragment,
        parse_l4, ptr_at,
    },
    stats,
};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACH: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;
/// The TTL of the messages the datapath writes.
const TTL: u8 = 64;

/// An ICMP header: type, code, checksum and the type's four bytes (echo: id and sequence;
/// fragmentation needed: unused, then the next hop's MTU).
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub rest: [u16; 2],
}
const ICMP_LEN: usize = 8;
const _: () = assert!(core::mem::size_of::<IcmpHdr>() == ICMP_LEN);
const IP_LEN: usize = 20;
/// What a "fragmentation needed" quotes of the packet: its header (without options) and the
/// first 8 bytes after it (RFC 792): the ports, and TCP's sequence number, by which the sender
/// finds its connection.
const QUOTE_LEN: usize = IP_LEN + 8;
/// The bytes put in front of the quoted packet: an IPv4 and an ICMP header.
const PREPENDED: usize = IP_LEN + ICMP_LEN;

/// The ICMP stage: a packet sent to the balancer's MAC whose IPv4 header the entry checked.
#[inline(always)]
pub fn stage(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    s: &DatapathSettings,
) -> Outcome {
    // SAFETY: the element stays valid for this program run (RCU).
    let to_vip = unsafe { VIPS.get(&AddrKey::v4_word(ip.dst)) }.is_some();
    let untouched = if to_vip {
        Outcome::Pass(PassReason::IcmpToVip)
    } else {
        Outcome::Pass(PassReason::NotOurs)
    };
    if is_fragment(ip) {
        return untouched;
    }
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, ETH_HLEN + ipv4_header_len(ip)) else {
        return untouched;
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet, which outlives this call.
    let icmp = unsafe { &mut *icmp };
    match icmp.kind {
        ECHO_REQUEST if to_vip => answer_echo(eth, ip, icmp, s),
        DEST_UNREACH | TIME_EXCEEDED | PARAMETER_PROBLEM => {
            translate_error(ctx, eth, ip, icmp, s).unwrap_or(untouched)
        }
        _ => untouched,
    }
}

/// The packet an error quotes, where it lies in the error.
struct Quoted {
    ip: *mut Ipv4Hdr,
    ports: *mut Ports,
    /// Its TCP or UDP checksum, when the quote holds it (UDP's lies in the 8 bytes every error
    /// quotes; TCP's only in a longer quote).
    l4_check: Option<*mut u16>,
    /// As quoted (network order).
    tuple: FlowKey,
}

/// The TCP or UDP packet the error `icmp` (in the packet of IPv4 header `ip`) quotes, if its
/// header and ports lie inside the error's IP packet.
#[inline(always)]
fn quoted(ctx: &XdpContext, ip: &Ipv4Hdr) -> Option<Quoted> {
    let at = ETH_HLEN + ipv4_header_len(ip) + ICMP_LEN;
    // Not trailing padding: only what the error's own length covers.
    let end = ETH_HLEN + u16::from_be(ip.tot_len) as usize;
    let inner: *mut Ipv4Hdr = ptr_at(ctx, at)?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet, which outlives this call.
    let inner_ref = unsafe { &*inner };
    let ihl = ipv4_header_len(inner_ref);
    if inner_ref.version_ihl >> 4 != 4
        || ihl < IP_LEN
        || u16::from_be(inner_ref.frag_off) & IP_OFFSET != 0
    {
        return None;
    }
    let check_at = match inner_ref.proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return None,
    };
    let l4_at = at + ihl;
    if l4_at + 4 > end {
        return None;
    }
    let ports: *mut Ports = ptr_at(ctx, l4_at)?;
    let l4_check = if l4_at + check_at + 2 <= end {
        ptr_at::<u16>(ctx, l4_at + check_at)
    } else {
        None
    };
    // SAFETY: as above.
    let p = unsafe { &*ports };
    let tuple = FlowKey {
        src: [inner_ref.src, 0, 0, 0],
        dst: [inner_ref.dst, 0, 0, 0],
        src_port: p.src,
        dst_port: p.dst,
        proto: inner_ref.proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    Some(Quoted {
        ip: inner,
        ports,
        l4_check,
        tuple,
    })
}

/// An ICMP error about a balanced flow's packet, translated and forwarded to the party that
/// sent that packet; None when it quotes no packet of a flow the balancer keeps.
#[inline(always)]
fn translate_error(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    icmp: &mut IcmpHdr,
    s: &DatapathSettings,
) -> Option<Outcome> {
    let q = quoted(ctx, ip)?;
    // The error goes where the quoted packet came from.
    if ip.dst != q.tuple.src[0] {
        return None;
    }
    // SAFETY: a helper that takes no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: the elements stay valid for this program run (RCU).
    if unsafe { VIPS.get(&AddrKey::v4_word(q.tuple.src[0])) }.is_some() {
        // About a reply the balancer sent from the VIP: for the flow's backend, about the
        // reply as the backend sent it (to the client, or in one-arm to the SNAT address,
        // which the error then seems to come from).
        let client = q.tuple.reversed();
        let flow = conntrack::flow_of_client(&client, s, now)?;
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU).
        let (reply, backend_id) = unsafe { ((*flow).reply, (*flow).backend_id) };
        let outer_src = if s.mode == Mode::OneArm as u8 {
            reply.dst[0]
        } else {
            ip.src
        };
        if ip.ttl <= 1 {
            return Some(Outcome::Pass(PassReason::TtlExceeded));
        }
        rewrite(ip, icmp, &q, outer_src, reply.src[0], &reply);
        stats::flow_event(FlowEvent::IcmpErrorToBackend);
        let epoch = forward::epoch(now, s);
        let hop = balance::backend_hop(backend_id, &reply.src)?;
        let sent = forward::send(ctx, eth, ip, &Ports { src: 0, dst: 0 }, hop, epoch, false);
        return Some(cluster::to_kernel_as_own(ctx, s, sent.unanswered()));
    }
    // SAFETY: as above.
    unsafe { BACKEND_ADDRS.get(&AddrKey::v4_word(q.tuple.dst[0])) }?;
    // About a client's packet the balancer sent to a backend: for the client, about its packet
    // as it sent it (to the VIP). The backend's own address never reaches the client: an error
    // from it seems to come from the VIP.
    let reply = q.tuple.reversed();
    let (client, flow) = conntrack::flow_of_reply(&reply, s, now)?;
    let outer_src = if ip.src == reply.src[0] {
        client.dst[0]
    } else {
        ip.src
    };
    if ip.ttl <= 1 {
        return Some(Outcome::Pass(PassReason::TtlExceeded));
    }
    rewrite(ip, icmp, &q, outer_src, client.src[0], client);
    stats::flow_event(FlowEvent::IcmpErrorToClient);
    let epoch = forward::epoch(now, s);
    // SAFETY: a pointer to a live LRU element (valid for this run under RCU).
    let hop = unsafe { &mut (*flow).client_hop };
    let ask_fib = s.asks_fib_for_client_hops();
    let sent = forward::send(ctx, eth, ip, &Ports { src: 0, dst: 0 }, hop, epoch, ask_fib);
    Some(cluster::to_kernel_as_own(ctx, s, sent.unanswered()))
}

/// Rewrites the error to `outer_src → outer_dst`, and the packet it quotes to `to` (source and
/// destination, with ports), with the quoted IP and transport checksums and the ICMP checksum,
/// which covers the quote.
#[inline(always)]
fn rewrite(
    ip: &mut Ipv4Hdr,
    icmp: &mut IcmpHdr,
    q: &Quoted,
    outer_src: u32,
    outer_dst: u32,
    to: &FlowKey,
) {
    // SAFETY: `quoted` checked that these lie inside the packet, which outlives this call.
    let (inner, ports) = unsafe { (&mut *q.ip, &mut *q.ports) };
    let addrs = Delta::new()
        .word32(inner.src, to.src[0])
        .word32(inner.dst, to.dst[0]);
    let old_inner_check = inner.check;
    inner.check = addrs.apply(inner.check);
    inner.src = to.src[0];
    inner.dst = to.dst[0];
    let l4 = addrs
        .word(ports.src, to.src_port)
        .word(ports.dst, to.dst_port);
    ports.src = to.src_port;
    ports.dst = to.dst_port;
    // Everything changed inside the ICMP message, for its checksum.
    let mut message = l4.word(old_inner_check, inner.check);
    if let Some(check) = q.l4_check {
        // SAFETY: as above.
        let check = unsafe { &mut *check };
        let old = *check;
        *check = if inner.proto == PROTO_UDP {
            l4.apply_udp(old)
        } else {
            l4.apply(old)
        };
        message = message.word(old, *check);
    }
    icmp.check = message.apply(icmp.check);

    let outer = Delta::new()
        .word32(ip.src, outer_src)
        .word32(ip.dst, outer_dst);
    ip.check = outer.apply(ip.check);
    ip.src = outer_src;
    ip.dst = outer_dst;
}

/// The echo request `icmp` to a VIP, turned in place into its reply and sent back the way it
/// came. In cluster mode every node sees it; the owner of the sender's bucket answers.
#[inline(always)]
fn answer_echo(
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    icmp: &mut IcmpHdr,
    s: &DatapathSettings,
) -> Outcome {
    if s.cluster.enabled != 0 {
        // SAFETY: a helper that takes no arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let flags = cluster::bucket_flags(Affinity::Single as u8, 32, &[ip.src, 0, 0, 0], 0, now);
        if flags & BUCKET_MINE == 0 {
            return Outcome::Drop(DropReason::NotMyBucket);
        }
    }
    let mut mac = [0u8; 6];
    mem::copy_mac(&mut mac, cluster::answering_mac(s, &eth.dst));
    mem::copy_mac(&mut eth.dst, &eth.src);
    mem::copy_mac(&mut eth.src, &mac);
    // Swapping the addresses leaves the header's sum as it was; the TTL shares a word with the
    // protocol.
    (ip.src, ip.dst) = (ip.dst, ip.src);
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.ttl = TTL;
    ip.check = Delta::new()
        .word(old, u16::from_ne_bytes([ip.ttl, ip.proto]))
        .apply(ip.check);
    let old = u16::from_ne_bytes([icmp.kind, icmp.code]);
    icmp.kind = ECHO_REPLY;
    icmp.check = Delta::new()
        .word(old, u16::from_ne_bytes([icmp.kind, icmp.code]))
        .apply(icmp.check);
    stats::flow_event(FlowEvent::EchoAnswered);
    Outcome::Sent(xdp_action::XDP_TX)
}

/// A packet of a flow, already translated, that `forward::send` found larger than its next
/// hop's MTU `mtu`; `original` is the tuple its sender sent it with. With DF set it is answered
/// with a "fragmentation needed" to its sender about the packet as sent, so that the sender
/// (the client, or the backend for a reply) lowers its path MTU; the kernel, given the
/// translated packet, would answer from or to the VIP, which nobody would match to a
/// connection. It goes to the kernel translated (`frag_needed`) when the kernel must handle it:
/// DF clear (the kernel fragments it), larger than the interface it came in on (a GRO-merged
/// packet in generic mode, which the kernel segments), or with IP options.
#[inline(always)]
pub fn too_big(
    ctx: &XdpContext,
    ip: &Ipv4Hdr,
    original: &FlowKey,
    mtu: u32,
    s: &DatapathSettings,
) -> Outcome {
    if ip.frag_off & IP_DF.to_be() == 0
        || ip.version_ihl != 0x45
        || !s.fits_ingress(ctx.ingress_ifindex() as u32, u16::from_be(ip.tot_len))
    {
        return Outcome::Pass(PassReason::FragNeeded);
    }
    answered(answer_too_big(ctx, original, mtu as u16, s))
}

/// An `answer_too_big` (of either version) could not grow the frame: the packet is as it was.
pub const UNTOUCHED: u32 = xdp_action::XDP_ABORTED;

/// The outcome of an `answer_too_big` (of either version) that returned `action`.
#[inline(always)]
pub fn answered(action: u32) -> Outcome {
    match action {
        xdp_action::XDP_TX => {
            stats::flow_event(FlowEvent::TooBigAnswered);
            Outcome::Sent(xdp_action::XDP_TX)
        }
        UNTOUCHED => Outcome::Pass(PassReason::FragNeeded),
        action => Outcome::Sent(action),
    }
}

/// Turns the translated packet into a "fragmentation needed" (MTU `mtu`) to its sender, about
/// the packet as sent (`original`): an IPv4 and an ICMP header go in front of it, its
/// translation is undone, and all but the quote is cut. Returns `XDP_TX`; [`UNTOUCHED`] when
/// the frame cannot be grown; `XDP_DROP` if the grown frame is not what it must be (it cannot
/// be sent half built). A frame of its own, off the stage's stack.
#[inline(never)]
fn answer_too_big(ctx: &XdpContext, original: &FlowKey, mtu: u16, s: &DatapathSettings) -> u32 {
    // SAFETY: a helper that takes this program's context and a length; it moves the start of
    // the frame (every packet pointer the caller holds is dead from here on).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(PREPENDED as i32)) } != 0 {
        return UNTOUCHED;
    }
    build_too_big(ctx, original, mtu, s).unwrap_or(xdp_action::XDP_DROP)
}

/// The body of `answer_too_big`, on the grown frame.
#[inline(always)]
fn build_too_big(
    ctx: &XdpContext,
    original: &FlowKey,
    mtu: u16,
    s: &DatapathSettings,
) -> Option<u32> {
    // The old frame now starts at `PREPENDED`: its Ethernet header overlaps the new IP and ICMP
    // headers, so its MACs are read first.
    let old_eth = ptr_at::<EthHdr>(ctx, PREPENDED)?;
    let old_ip = ptr_at::<Ipv4Hdr>(ctx, PREPENDED + ETH_HLEN)?;
    // SAFETY: `ptr_at` checked that the headers lie inside the packet.
    let (old_eth, old_ip) = unsafe { (&*old_eth, &mut *old_ip) };
    let (mut to_mac, mut from_mac) = ([0u8; 6], [0u8; 6]);
    mem::copy_mac(&mut to_mac, &old_eth.src);
    mem::copy_mac(&mut from_mac, cluster::answering_mac(s, &old_eth.dst));
    let l4_len = (u16::from_be(old_ip.tot_len) as usize).saturating_sub(IP_LEN);
    let l4 = parse_l4(ctx, PREPENDED + ETH_HLEN + IP_LEN, old_ip.proto, l4_len)?;
    nat::rewrite(
        old_ip,
        &l4,
        &original.src,
        original.src_port,
        &original.dst,
        original.dst_port,
    );
    let (sender, receiver) = (old_ip.src, old_ip.dst);

    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    let icmp = ptr_at::<IcmpHdr>(ctx, ETH_HLEN + IP_LEN)?;
    // SAFETY: as above.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *ip, &mut *icmp) };
    mem::copy_mac(&mut eth.dst, &to_mac);
    mem::copy_mac(&mut eth.src, &from_mac);
    eth.proto = ETH_P_IP.to_be();
    ip.version_ihl = 0x45;
    ip.tos = 0;
    ip.tot_len = ((IP_LEN + ICMP_LEN + QUOTE_LEN) as u16).to_be();
    ip.id = 0;
    ip.frag_off = 0;
    ip.ttl = TTL;
    ip.proto = PROTO_ICMP;
    // From the address the packet was for, as if that host answered: the sender's stack
    // matches the error to its connection by the quote, and the address routes back here.
    ip.src = receiver;
    ip.dst = sender;
    ip.check = 0;
    ip.check = nat::fold(nat::sum_words(
        ip as *const Ipv4Hdr as *const u16,
        IP_LEN / 2,
    ));
    icmp.kind = DEST_UNREACH;
    icmp.code = FRAG_NEEDED;
    icmp.check = 0;
    icmp.rest = [0, mtu.to_be()];
    let message = ptr_at::<[u16; (ICMP_LEN + QUOTE_LEN) / 2]>(ctx, ETH_HLEN + IP_LEN)?;
    icmp.check = nat::fold(nat::sum_words(
        message as *const u16,
        (ICMP_LEN + QUOTE_LEN) / 2,
    ));
    let keep = (ETH_HLEN + IP_LEN + ICMP_LEN + QUOTE_LEN) as i32;
    let len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: a helper that takes this program's context and a length; it only shrinks the
    // frame (every pointer above is dead from here on).
    if len > keep && unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep - len) } != 0 {
        return None;
    }
    Some(xdp_action::XDP_TX)
}
