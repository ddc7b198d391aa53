//! ICMPv6 for balanced flows, as `icmp` for IPv4: an error (destination unreachable, packet too
//! big, time exceeded, parameter problem) quoting a balanced flow's packet is translated the way
//! the flow is and goes to the party that sent the quoted packet; an echo request to a VIP is
//! answered in place. Everything else — neighbour discovery and router advertisements above all
//! — passes untouched. Unlike ICMP's, the ICMPv6 checksum covers a pseudo-header, so the outer
//! addresses' change counts in it too.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    addr::{Addr, FAMILY_V6, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    checksum::Delta,
    flow::FlowKey,
    settings::{DatapathSettings, Mode},
    stats::{FlowEvent, PassReason},
};

use crate::{
    Outcome, balance, conntrack, forward,
    icmp::{self, IcmpHdr, UNTOUCHED},
    ip::{same_addr, v6_key},
    maps::{BACKEND_ADDRS, VIPS},
    mem, nat,
    packet::{
        ETH_HLEN, ETH_P_IPV6, EthHdr, IPV6_HLEN, Ipv6Hdr, Ports, ipv6_transport, own_context,
        ptr_at,
    },
    scratch, stats,
};

const DEST_UNREACH: u8 = 1;
const PARAMETER_PROBLEM: u8 = 4;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
const ICMP_LEN: usize = 8;
/// The hop limit of the messages the datapath writes.
const HOP_LIMIT: u8 = 64;

/// The ICMPv6 stage: a packet sent to the balancer's MAC whose next header is ICMPv6 (as the
/// entry walked it).
#[inline(always)]
pub fn stage(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    s: &DatapathSettings,
) -> Outcome {
    // SAFETY: the element stays valid for this program run (RCU).
    let to_vip = unsafe { VIPS.get(&v6_key(&ip.dst)) }.is_some();
    let untouched = if to_vip {
        Outcome::Pass(PassReason::IcmpToVip)
    } else {
        Outcome::Pass(PassReason::NotOurs)
    };
    let Some(t) = ipv6_transport(ip) else {
        return untouched;
    };
    if t.fragment || t.proto != PROTO_ICMPV6 {
        return untouched;
    }
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, t.offset) else {
        return untouched;
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet, which outlives this call.
    let icmp = unsafe { &mut *icmp };
    match icmp.kind {
        ECHO_REQUEST if to_vip => answer_echo(eth, ip, icmp),
        DEST_UNREACH..=PARAMETER_PROBLEM => {
            translate_error(ctx, eth, ip, icmp, t.offset + ICMP_LEN, t.offset + t.len, s)
                .unwrap_or(untouched)
        }
        _ => untouched,
    }
}

/// The packet an error quotes (an IPv6 header with TCP or UDP right after it), where it lies.
struct Quoted {
    ip: *mut Ipv6Hdr,
    ports: *mut Ports,
    /// Its TCP or UDP checksum, when the quote holds it.
    l4_check: Option<*mut u16>,
    tuple: FlowKey,
}

/// The quoted packet at `at`, if it lies inside the error (which ends at `end`).
#[inline(always)]
fn quoted(ctx: &XdpContext, at: usize, end: usize) -> Option<Quoted> {
    let inner: *mut Ipv6Hdr = ptr_at(ctx, at)?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet, which outlives this call.
    let inner_ref = unsafe { &*inner };
    if u32::from_be(inner_ref.vtc_flow) >> 28 != 6 {
        return None;
    }
    let check_at = match inner_ref.next_hdr {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return None,
    };
    let l4_at = at + IPV6_HLEN;
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
    let mut tuple = FlowKey {
        src: [0; 4],
        dst: [0; 4],
        src_port: p.src,
        dst_port: p.dst,
        proto: inner_ref.next_hdr,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    mem::copy(&mut tuple.src, &inner_ref.src);
    mem::copy(&mut tuple.dst, &inner_ref.dst);
    Some(Quoted {
        ip: inner,
        ports,
        l4_check,
        tuple,
    })
}

/// An ICMPv6 error about a balanced flow's packet (its quote at `at`, the message ending at
/// `end`), translated and forwarded to the party that sent that packet; None when it quotes no
/// packet of a flow the balancer keeps.
#[inline(always)]
fn translate_error(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    icmp: &mut IcmpHdr,
    at: usize,
    end: usize,
    s: &DatapathSettings,
) -> Option<Outcome> {
    let q = quoted(ctx, at, end)?;
    // The error goes where the quoted packet came from.
    if !same_addr(&ip.dst, &q.tuple.src) {
        return None;
    }
    if ip.hop_limit <= 1 {
        return Some(Outcome::Pass(PassReason::TtlExceeded));
    }
    // SAFETY: a helper that takes no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let epoch = forward::epoch(now, s);
    let no_ports = Ports { src: 0, dst: 0 };
    // SAFETY: the elements stay valid for this program run (RCU).
    let sent = if unsafe { VIPS.get(&v6_key(&q.tuple.src)) }.is_some() {
        // About a reply the balancer sent from the VIP: for the flow's backend (in one-arm
        // from the SNAT address it knows), about the reply as the backend sent it.
        let client = q.tuple.reversed();
        let flow = conntrack::flow_of_client(&client, s, now)?;
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU).
        let (reply, backend_id) = unsafe { (&(*flow).reply, (*flow).backend_id) };
        let outer_src = if s.mode == Mode::OneArm as u8 {
            reply.dst
        } else {
            ip.src
        };
        rewrite(ip, icmp, &q, &outer_src, &reply.src, reply);
        stats::flow_event(FlowEvent::IcmpErrorToBackend);
        let hop = balance::backend_hop(backend_id, &reply.src)?;
        forward::send(ctx, eth, ip, &no_ports, hop, epoch, false)
    } else {
        // SAFETY: as above.
        unsafe { BACKEND_ADDRS.get(&v6_key(&q.tuple.dst)) }?;
        // About a client's packet the balancer sent to a backend: for the client, about its
        // packet as it sent it; the backend's own error comes from the VIP.
        let reply = q.tuple.reversed();
        let (client, flow) = conntrack::flow_of_reply(&reply, s, now)?;
        let outer_src = if same_addr(&ip.src, &reply.src) {
            client.dst
        } else {
            ip.src
        };
        rewrite(ip, icmp, &q, &outer_src, &client.src, client);
        stats::flow_event(FlowEvent::IcmpErrorToClient);
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU).
        let hop = unsafe { &mut (*flow).client_hop };
        forward::send(ctx, eth, ip, &no_ports, hop, epoch, false)
    };
    Some(sent.unanswered())
}

/// Rewrites the error to `outer_src → outer_dst` and its quote to `to`, with the quoted
/// transport checksum (when quoted) and the ICMPv6 checksum, whose pseudo-header holds the
/// outer addresses and whose message holds the quote.
#[inline(always)]
fn rewrite(
    ip: &mut Ipv6Hdr,
    icmp: &mut IcmpHdr,
    q: &Quoted,
    outer_src: &Addr,
    outer_dst: &Addr,
    to: &FlowKey,
) {
    // SAFETY: `quoted` checked that these lie inside the packet, which outlives this call.
    let (inner, ports) = unsafe { (&mut *q.ip, &mut *q.ports) };
    let addrs = Delta::new()
        .addr(&inner.src, &to.src)
        .addr(&inner.dst, &to.dst);
    let l4 = addrs
        .word(ports.src, to.src_port)
        .word(ports.dst, to.dst_port);
    let mut message = l4;
    if let Some(check) = q.l4_check {
        // SAFETY: as above.
        let check = unsafe { &mut *check };
        let old = *check;
        *check = if inner.next_hdr == PROTO_UDP {
            l4.apply_udp(old)
        } else {
            l4.apply(old)
        };
        message = message.word(old, *check);
    }
    let pseudo = Delta::new()
        .addr(&ip.src, outer_src)
        .addr(&ip.dst, outer_dst);
    icmp.check = message.add(pseudo).apply(icmp.check);
    mem::copy(&mut inner.src, &to.src);
    mem::copy(&mut inner.dst, &to.dst);
    ports.src = to.src_port;
    ports.dst = to.dst_port;
    mem::copy(&mut ip.src, outer_src);
    mem::copy(&mut ip.dst, outer_dst);
}

/// The echo request `icmp` to a VIP, turned in place into its reply and sent back the way it
/// came. (Swapping the addresses leaves the pseudo-header's sum as it was.)
#[inline(always)]
fn answer_echo(eth: &mut EthHdr, ip: &mut Ipv6Hdr, icmp: &mut IcmpHdr) -> Outcome {
    let mut mac = [0u8; 6];
    mem::copy_mac(&mut mac, &eth.dst);
    mem::copy_mac(&mut eth.dst, &eth.src);
    mem::copy_mac(&mut eth.src, &mac);
    let mut vip = [0u32; 4];
    mem::copy(&mut vip, &ip.dst);
    mem::copy(&mut ip.dst, &ip.src);
    mem::copy(&mut ip.src, &vip);
    ip.hop_limit = HOP_LIMIT;
    let old = u16::from_ne_bytes([icmp.kind, icmp.code]);
    icmp.kind = ECHO_REPLY;
    icmp.check = Delta::new()
        .word(old, u16::from_ne_bytes([icmp.kind, icmp.code]))
        .apply(icmp.check);
    stats::flow_event(FlowEvent::EchoAnswered);
    Outcome::Sent(xdp_action::XDP_TX)
}

const PACKET_TOO_BIG: u8 = 2;
/// The bytes put in front of the quoted packet: an IPv6 and an ICMPv6 header.
const PREPENDED: usize = IPV6_HLEN + ICMP_LEN;
/// What a "packet too big" quotes of the packet: its header and the first 8 bytes after it
/// (the ports, and TCP's sequence number), by which the sender finds its connection.
const QUOTE_LEN: usize = IPV6_HLEN + 8;
/// `icmp::too_big` for IPv6: a translated packet larger than its next hop's MTU `mtu` is to
/// be answered with a "packet too big" to its sender about the packet as sent (`original`), so
/// that the sender lowers its path MTU (IPv6 routers never fragment). The answer is written by
/// the stage's program itself once the stage's body has returned ([`answer`]): on top of that
/// body's frame the answer's would pass the verifier's bound on the stack. So this keeps
/// `original` in scratch and returns `Outcome::TooBig`. To the kernel translated
/// (`frag_needed`) when it has extension headers, or is larger than the interface it came in
/// on allows (a GRO-merged packet in generic mode, which the kernel segments).
#[inline(always)]
pub fn too_big(
    ctx: &XdpContext,
    ip: &Ipv6Hdr,
    original: &FlowKey,
    mtu: u32,
    s: &DatapathSettings,
) -> Outcome {
    let len = u16::from_be(ip.payload_len).saturating_add(IPV6_HLEN as u16);
    if (ip.next_hdr != PROTO_TCP && ip.next_hdr != PROTO_UDP)
        || !s.fits_ingress(ctx.ingress_ifindex() as u32, len)
    {
        return Outcome::Pass(PassReason::FragNeeded);
    }
    let Some(scratch) = scratch::get() else {
        return Outcome::Pass(PassReason::FragNeeded);
    };
    mem::copy(&mut scratch.sent_as, original);
    Outcome::TooBig(mtu)
}

/// The stage's outcome, with a packet `too_big` left to answer answered.
#[inline(always)]
pub fn answer(ctx: &XdpContext, outcome: Outcome) -> Outcome {
    let Outcome::TooBig(mtu) = outcome else {
        return outcome;
    };
    let Some(scratch) = scratch::get() else {
        return Outcome::Pass(PassReason::FragNeeded);
    };
    icmp::answered(answer_too_big(ctx, &scratch.sent_as, mtu))
}

/// Turns the translated packet into a "packet too big" (MTU `mtu`) to its sender, about the
/// packet as sent (`original`): an IPv6 and an ICMPv6 header go in front of it, its
/// translation is undone, and all but the quote is cut. Returns `XDP_TX`; [`UNTOUCHED`] when
/// the frame cannot be grown; `XDP_DROP` if the grown frame is not what it must be. A frame of
/// its own.
#[inline(never)]
fn answer_too_big(ctx: &XdpContext, original: &FlowKey, mtu: u32) -> u32 {
    // SAFETY: a helper that takes this program's context and a length; it moves the start of
    // the frame (every packet pointer the caller holds is dead from here on).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(PREPENDED as i32)) } != 0 {
        return UNTOUCHED;
    }
    write_too_big(ctx.ctx, original, mtu).unwrap_or(xdp_action::XDP_DROP)
}

/// On the grown frame: the quote (the old packet's header and first 8 bytes, at `PREPENDED`)
/// put back as the sender sent it (`original`), the Ethernet, IPv6 and ICMPv6 headers of the
/// "packet too big" in front of it, and the frame cut after it. Only the quoted bytes are
/// undone: the rest is cut.
#[inline(never)]
fn write_too_big(
    raw: *mut aya_ebpf::bindings::xdp_md,
    original: &FlowKey,
    mtu: u32,
) -> Option<u32> {
    let ctx = &own_context(raw);
    // The old Ethernet header overlaps the new headers: its MACs are read first.
    let old_eth = ptr_at::<EthHdr>(ctx, PREPENDED)?;
    let old_ip = ptr_at::<Ipv6Hdr>(ctx, PREPENDED + ETH_HLEN)?;
    let old_l4 = ptr_at::<[u16; 4]>(ctx, PREPENDED + ETH_HLEN + IPV6_HLEN)?;
    // SAFETY: `ptr_at` checked that these lie inside the packet.
    let (old_eth, old_ip, old_l4) = unsafe { (&*old_eth, &mut *old_ip, &mut *old_l4) };
    let (mut to_mac, mut from_mac) = ([0u8; 6], [0u8; 6]);
    mem::copy_mac(&mut to_mac, &old_eth.src);
    mem::copy_mac(&mut from_mac, &old_eth.dst);
    // The quote as sent: addresses, ports and (UDP, whose checksum the quote holds) checksum.
    let addrs = Delta::new()
        .addr(&old_ip.src, &original.src)
        .addr(&old_ip.dst, &original.dst);
    let l4 = addrs
        .word(old_l4[0], original.src_port)
        .word(old_l4[1], original.dst_port);
    mem::copy(&mut old_ip.src, &original.src);
    mem::copy(&mut old_ip.dst, &original.dst);
    old_l4[0] = original.src_port;
    old_l4[1] = original.dst_port;
    if old_ip.next_hdr == PROTO_UDP {
        old_l4[3] = l4.apply_udp(old_l4[3]);
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    let icmp = ptr_at::<IcmpHdr>(ctx, ETH_HLEN + IPV6_HLEN)?;
    // SAFETY: as above. The new IPv6 header ends where the old one starts: no overlap.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *ip, &mut *icmp) };
    mem::copy_mac(&mut eth.dst, &to_mac);
    mem::copy_mac(&mut eth.src, &from_mac);
    eth.proto = ETH_P_IPV6.to_be();
    ip.vtc_flow = (6u32 << 28).to_be();
    ip.payload_len = ((ICMP_LEN + QUOTE_LEN) as u16).to_be();
    ip.next_hdr = PROTO_ICMPV6;
    ip.hop_limit = HOP_LIMIT;
    // From the address the packet was for, to its sender.
    mem::copy(&mut ip.src, &original.dst);
    mem::copy(&mut ip.dst, &original.src);
    icmp.kind = PACKET_TOO_BIG;
    icmp.code = 0;
    icmp.check = 0;
    icmp.rest = [((mtu >> 16) as u16).to_be(), (mtu as u16).to_be()];
    // The checksum: the pseudo-header (addresses, length, next header), then the message.
    let addresses = nat::sum_words(ip.src.as_ptr() as *const u16, 16);
    let pseudo = addresses
        + u32::from(((ICMP_LEN + QUOTE_LEN) as u16).to_be())
        + u32::from((PROTO_ICMPV6 as u16).to_be());
    let message = ptr_at::<[u16; (ICMP_LEN + QUOTE_LEN) / 2]>(ctx, ETH_HLEN + IPV6_HLEN)?;
    icmp.check =
        nat::fold(pseudo + nat::sum_words(message as *const u16, (ICMP_LEN + QUOTE_LEN) / 2));
    let keep = (ETH_HLEN + IPV6_HLEN + ICMP_LEN + QUOTE_LEN) as i32;
    let len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: a helper that takes this program's context and a length; it only shrinks the
    // frame (every pointer above is dead from here on).
    if len > keep && unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep - len) } != 0 {
        return None;
    }
    Some(xdp_action::XDP_TX)
}
