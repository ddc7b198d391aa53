//! Address and port rewriting with incremental checksum updates (RFC 1624), and full checksums
//! for the headers the datapath writes itself.

use lb_common::addr::{Addr, PROTO_UDP};

use crate::{ip::IpHeader, packet::L4};

/// Rewrites the packet to `src:src_port → dst:dst_port` (all in network order) and fixes the
/// IPv4 header checksum and the TCP/UDP checksum, whose pseudo-header holds the addresses (a
/// zero UDP checksum stays zero).
#[inline(always)]
pub fn rewrite<I: IpHeader>(
    ip: &mut I,
    l4: &L4,
    src: &Addr,
    src_port: u16,
    dst: &Addr,
    dst_port: u16,
) {
    let addrs = ip.readdress(src, dst);

    // SAFETY: `parse_l4` checked that these bytes lie inside the packet, which outlives this call.
    let ports = unsafe { &mut *l4.ports };
    let l4_delta = addrs.word(ports.src, src_port).word(ports.dst, dst_port);
    ports.src = src_port;
    ports.dst = dst_port;
    // SAFETY: `parse_l4` checked that these bytes lie inside the packet, which outlives this call.
    let check = unsafe { &mut *l4.check };
    *check = if l4.proto == PROTO_UDP {
        l4_delta.apply_udp(*check)
    } else {
        l4_delta.apply(*check)
    };
}

/// The one's-complement sum of `n` 16-bit words at `p` (network order kept: the sum is the same
/// either way round).
#[inline(always)]
pub fn sum_words(p: *const u16, n: usize) -> u32 {
    let mut sum = 0u32;
    for i in 0..n {
        // SAFETY: the caller's header holds `n` words, inside the packet.
        sum += u32::from(unsafe { core::ptr::read_unaligned(p.add(i)) });
    }
    sum
}

/// The checksum field value for a one's-complement sum.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
