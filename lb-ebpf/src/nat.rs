//! Address and port rewriting with incremental checksum updates (RFC 1624), and full checksums
//! for the headers the datapath writes itself.

use lb_common::{addr::PROTO_UDP, checksum::Delta};

use crate::packet::{Ipv4Hdr, L4};

/// Rewrites the packet to `src:src_port → dst:dst_port` (all in network order) and fixes the
/// IPv4 header checksum and the TCP/UDP checksum (a zero UDP checksum stays zero).
#[inline(always)]
pub fn rewrite(ip: &mut Ipv4Hdr, l4: &L4, src: u32, src_port: u16, dst: u32, dst_port: u16) {
    let addrs = Delta::new().word32(ip.src, src).word32(ip.dst, dst);
    ip.check = addrs.apply(ip.check);
    ip.src = src;
    ip.dst = dst;

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

/// Decrements the TTL of a packet this program forwards itself (the kernel does it otherwise).
#[inline(always)]
pub fn decrement_ttl(ip: &mut Ipv4Hdr) {
    // TTL and protocol share one checksum word.
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.check = Delta::new().word(old, new).apply(ip.check);
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
