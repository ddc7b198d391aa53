//! Refusing a new connection out loud: a client's SYN that cannot be balanced (no SNAT port is
//! free) is turned, in place, into the RST|ACK the VIP answers with, and sent back out the
//! interface it came in on. The client fails at once instead of waiting out its SYN retries.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext,
};

use lb_common::settings::DatapathSettings;

use crate::{
    cluster, mem,
    nat::{fold, sum_words},
    packet::{ETH_HLEN, EthHdr, IP_DF, Ipv4Hdr, TCP_ACK, TCP_RST, TcpHdr, ptr_at},
};

/// An IPv4 header without options, and a TCP header without options.
const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
const TTL: u8 = 64;

/// Rewrites the SYN in the packet into the VIP's RST|ACK for it and returns `XDP_TX`; None (the
/// packet untouched) when its IPv4 header has options.
#[inline(always)]
pub fn refuse_syn(ctx: &XdpContext, settings: &DatapathSettings) -> Option<u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    let tcp: *mut TcpHdr = ptr_at(ctx, ETH_HLEN + IP_LEN)?;
    // SAFETY: `ptr_at` checked that each header lies inside the packet, which outlives this call.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };
    if ip.version_ihl != 0x45 {
        return None;
    }

    let mut mac = [0u8; 6];
    mem::copy_mac(&mut mac, cluster::answering_mac(settings, &eth.dst));
    mem::copy_mac(&mut eth.dst, &eth.src);
    mem::copy_mac(&mut eth.src, &mac);

    (ip.src, ip.dst) = (ip.dst, ip.src);
    ip.tos = 0;
    ip.tot_len = ((IP_LEN + TCP_LEN) as u16).to_be();
    ip.id = 0;
    ip.frag_off = IP_DF.to_be();
    ip.ttl = TTL;
    ip.check = 0;
    ip.check = fold(sum_words(ip as *const Ipv4Hdr as *const u16, IP_LEN / 2));

    (tcp.src_port, tcp.dst_port) = (tcp.dst_port, tcp.src_port);
    // The SYN takes one sequence number: the RST acknowledges it and sends none of its own.
    tcp.ack = u32::from_be(tcp.seq).wrapping_add(1).to_be();
    tcp.seq = 0;
    tcp.data_offset = ((TCP_LEN / 4) as u8) << 4;
    tcp.flags = TCP_RST | TCP_ACK;
    tcp.window = 0;
    tcp.urgent = 0;
    tcp.check = 0;
    let pseudo = (ip.src >> 16)
        + (ip.src & 0xffff)
        + (ip.dst >> 16)
        + (ip.dst & 0xffff)
        + u32::from((ip.proto as u16).to_be())
        + u32::from((TCP_LEN as u16).to_be());
    tcp.check = fold(pseudo + sum_words(tcp as *const TcpHdr as *const u16, TCP_LEN / 2));

    // The SYN's options and any data go: the frame ends after the TCP header.
    let keep = (ETH_HLEN + IP_LEN + TCP_LEN) as i32;
    let len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: a helper that takes this program's context and a length; it only shrinks the
    // frame (every pointer above is dead from here on).
    if len > keep && unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep - len) } != 0 {
        return None;
    }
    Some(xdp_action::XDP_TX)
}
