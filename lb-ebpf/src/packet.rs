//! Header parsing: one bounds-checked accessor, the headers as `#[repr(C)]` structs, and the
//! validity rules. IPv4 honours IHL (options are skipped, not rejected).

use aya_ebpf::programs::XdpContext;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_HLEN: usize = 14;
/// IPv4 flags and fragment offset (host order).
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Ethertype, network byte order.
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8) and flow label (20), network order.
    pub vtc_flow: u32,
    /// Bytes after this 40-byte header, extension headers included.
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}
pub const IPV6_HLEN: usize = 40;

/// Whether the IPv6 header is version 6 and its payload fits the frame (`l3_len` = bytes after
/// Ethernet).
#[inline(always)]
pub fn ipv6_valid(ip: &Ipv6Hdr, l3_len: usize) -> bool {
    u32::from_be(ip.vtc_flow) >> 28 == 6
        && IPV6_HLEN + u16::from_be(ip.payload_len) as usize <= l3_len
}

/// Extension headers walked before the transport header; a packet with more is not walked.
const MAX_IPV6_EXTENSIONS: usize = 4;
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_AUTH: u8 = 51;
const EXT_DEST_OPTS: u8 = 60;

/// Where an IPv6 packet's transport header is.
pub struct Ipv6Transport {
    /// Its offset in the frame, and the protocol.
    pub offset: usize,
    pub proto: u8,
    /// Bytes from it to the end of the IP packet.
    pub len: usize,
    /// The packet is a fragment (it has a fragment header): the first of its datagram (with more
    /// to come), or a later one (which carries no transport header).
    pub fragment: bool,
    pub first: bool,
    pub later: bool,
}

/// Bits of the walk's answer (`walk_ipv6`) beside the offset and protocol.
pub const IPV6_FRAGMENT: u32 = 1 << 24;
pub const IPV6_LATER_FRAGMENT: u32 = 1 << 25;
pub const IPV6_FIRST_FRAGMENT: u32 = 1 << 26;

/// The farthest a transport header may start (a mask): four extension headers of up to 88
/// bytes each. A packet whose headers run longer is not walked.
const MAX_TRANSPORT_OFFSET: usize = 0x1ff;

/// Where the IPv6 packet `ip`'s transport header is: right after the IPv6 header for plain TCP
/// and UDP (most packets, which the entry does not walk), else where the entry's walk
/// (`walk_ipv6`) found it, in scratch.
#[inline(always)]
pub fn ipv6_transport(ip: &Ipv6Hdr) -> Option<Ipv6Transport> {
    let packed = match ip.next_hdr {
        lb_common::addr::PROTO_TCP | lb_common::addr::PROTO_UDP => {
            plain_ipv6_transport(ip.next_hdr)
        }
        _ => crate::scratch::get()?.ipv6_transport,
    };
    if packed == 0 {
        return None;
    }
    // Masked, so that the verifier knows the bound the walk checked.
    let offset = packed as usize & MAX_TRANSPORT_OFFSET;
    let end = ETH_HLEN + IPV6_HLEN + u16::from_be(ip.payload_len) as usize;
    if offset > end {
        return None;
    }
    Some(Ipv6Transport {
        offset,
        proto: (packed >> 16) as u8,
        len: end - offset,
        fragment: packed & IPV6_FRAGMENT != 0,
        first: packed & IPV6_FIRST_FRAGMENT != 0,
        later: packed & IPV6_LATER_FRAGMENT != 0,
    })
}

/// `walk_ipv6`'s answer for a transport header of `proto` right after the IPv6 header.
#[inline(always)]
pub const fn plain_ipv6_transport(proto: u8) -> u32 {
    (ETH_HLEN + IPV6_HLEN) as u32 | (proto as u32) << 16
}

/// Walks the IPv6 packet's extension headers (hop-by-hop, routing, destination options,
/// authentication, fragment; at most `MAX_IPV6_EXTENSIONS`) to its transport header: packed as
/// `offset | proto << 16 | IPV6_*FRAGMENT`, with a fragment header's identification in
/// `fragment_id` (network order, as read), or 0 when there are more, one is truncated, or they
/// end past `MAX_TRANSPORT_OFFSET`. The entry walks, and leaves the answer in scratch for the
/// stage it calls (`ipv6_transport`): walked in the stage, the headers' paths would multiply
/// with every path through the rest of it, beyond the verifier's budget.
#[inline(always)]
pub fn walk_ipv6(ctx: &XdpContext, ip: &Ipv6Hdr, fragment_id: &mut u32) -> u32 {
    let mut next = ip.next_hdr;
    let mut offset = ETH_HLEN + IPV6_HLEN;
    let mut fragment = 0;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let len = match next {
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS | EXT_AUTH | EXT_FRAGMENT => {
                let Some(h) = ptr_at::<[u8; 2]>(ctx, offset) else {
                    return 0;
                };
                // SAFETY: `ptr_at` checked that these bytes lie inside the packet.
                let h = unsafe { &*h };
                let len = match next {
                    EXT_FRAGMENT => {
                        let Some(f) = ptr_at::<[u16; 4]>(ctx, offset) else {
                            return 0;
                        };
                        // SAFETY: `ptr_at` checked that these bytes lie inside the packet.
                        let f = unsafe { &*f };
                        // Offset (13 bits) and M, in the second word; the identification after.
                        let offset_m = u16::from_be(f[1]);
                        fragment = IPV6_FRAGMENT
                            | if offset_m & 0xfff8 != 0 {
                                IPV6_LATER_FRAGMENT
                            } else if offset_m & 1 != 0 {
                                IPV6_FIRST_FRAGMENT
                            } else {
                                0
                            };
                        *fragment_id = (f[2] as u32) | (f[3] as u32) << 16;
                        8
                    }
                    EXT_AUTH => (h[1] as usize + 2) * 4,
                    _ => (h[1] as usize + 1) * 8,
                };
                next = h[0];
                len
            }
            _ => break,
        };
        offset += len;
    }
    if matches!(
        next,
        EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS | EXT_AUTH | EXT_FRAGMENT
    ) || offset > MAX_TRANSPORT_OFFSET
    {
        return 0;
    }
    offset as u32 | (next as u32) << 16 | fragment
}

/// The part of TCP and UDP headers that NAT touches: ports are at the same offsets in both.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// A TCP header without its options.
#[repr(C)]
pub struct TcpHdr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// Data offset in 32-bit words, in the high nibble.
    pub data_offset: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urgent: u16,
}

/// This program's context `raw`, in a function of its own (`#[inline(never)]`) that takes the
/// raw pointer. Its first read is volatile: LLVM would otherwise hand the function the
/// packet's bounds as read by its caller, and the verifier refuses arithmetic on them there.
#[inline(always)]
pub fn own_context(raw: *mut aya_ebpf::bindings::xdp_md) -> XdpContext {
    // SAFETY: `raw` is this program's context, valid for the run.
    let _ = unsafe { core::ptr::read_volatile(&(*raw).data) };
    XdpContext::new(raw)
}

/// A bounds-checked pointer to a `T` at `offset` bytes into the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// What the IPv4 header says about itself.
pub enum Ipv4Check {
    Valid,
    /// Version not 4, IHL < 5, or lengths that do not fit.
    Invalid,
}

/// Checks the IPv4 header against itself and the frame. `l3_len` = bytes after Ethernet.
#[inline(always)]
pub fn check_ipv4(ip: &Ipv4Hdr, l3_len: usize) -> Ipv4Check {
    let ihl = (ip.version_ihl & 0x0f) as usize * 4;
    let tot = u16::from_be(ip.tot_len) as usize;
    if ip.version_ihl >> 4 != 4 || ihl < 20 || tot < ihl || tot > l3_len || ihl > l3_len {
        return Ipv4Check::Invalid;
    }
    Ipv4Check::Valid
}

/// Whether the IPv4 header (of `ihl` bytes, already checked to lie in the frame) sums to
/// 0xffff, as RFC 1071 requires. Only traffic to a VIP is checked: the rest is the kernel's.
#[inline(always)]
pub fn ipv4_checksum_ok(ctx: &XdpContext, ihl: usize) -> bool {
    // The 20 fixed bytes as five 32-bit words, summed in 64 bits and folded: no carries lost.
    let Some(words) = ptr_at::<[u32; 5]>(ctx, ETH_HLEN) else {
        return false;
    };
    // SAFETY: `ptr_at` checked that these 20 bytes lie inside the packet.
    let words = unsafe { &*words };
    let mut sum: u64 = words.iter().map(|&w| w as u64).sum();
    // Options (rare): up to 40 more bytes, one 32-bit word at a time.
    for i in 0..10 {
        if 20 + i * 4 >= ihl {
            break;
        }
        let Some(word) = ptr_at::<u32>(ctx, ETH_HLEN + 20 + i * 4) else {
            return false;
        };
        // SAFETY: `ptr_at` checked that these 4 bytes lie inside the packet.
        sum += unsafe { *word } as u64;
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let mut folded = (sum & 0xffff) + (sum >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    folded == 0xffff
}

#[inline(always)]
pub fn ipv4_header_len(ip: &Ipv4Hdr) -> usize {
    (ip.version_ihl & 0x0f) as usize * 4
}

#[inline(always)]
pub fn is_fragment(ip: &Ipv4Hdr) -> bool {
    u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) != 0
}

/// The transport header of a TCP or UDP packet.
#[derive(Clone, Copy)]
pub struct L4 {
    pub ports: *mut Ports,
    /// The TCP or UDP checksum field.
    pub check: *mut u16,
    pub proto: u8,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// The packet is the first fragment of a datagram (set by the stage that knows its IP
    /// version): its translation is kept for the later ones (`fragments`).
    pub first_fragment: bool,
}

impl L4 {
    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.proto == lb_common::addr::PROTO_TCP
    }

    /// A SYN without ACK: the first packet of a TCP connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.is_tcp() && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A TCP packet of the handshake's first two steps (SYN, or SYN-ACK).
    #[inline(always)]
    pub fn is_handshake(&self) -> bool {
        self.is_tcp() && self.tcp_flags & TCP_SYN != 0
    }

    /// A TCP packet of a connection past its handshake's first step (no SYN flag).
    #[inline(always)]
    pub fn is_tcp_midstream(&self) -> bool {
        self.is_tcp() && self.tcp_flags & TCP_SYN == 0
    }

    #[inline(always)]
    pub fn is_fin_or_rst(&self) -> bool {
        self.is_tcp() && self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}

/// Parses the TCP or UDP header at `offset`; None if it is truncated or its data offset is bad.
/// `l4_len` = bytes the IP header says follow it.
#[inline(always)]
pub fn parse_l4(ctx: &XdpContext, offset: usize, proto: u8, l4_len: usize) -> Option<L4> {
    use lb_common::addr::{PROTO_TCP, PROTO_UDP};
    match proto {
        PROTO_TCP => {
            // Bytes 12..14: data offset (high nibble of byte 12) and flags (byte 13).
            let hdr: *const [u8; 20] = ptr_at(ctx, offset)?;
            // SAFETY: `ptr_at` checked that these 20 bytes lie inside the packet.
            let hdr = unsafe { &*hdr };
            let doff = (hdr[12] >> 4) as usize * 4;
            if doff < 20 || doff > l4_len {
                return None;
            }
            Some(L4 {
                ports: (ctx.data() + offset) as *mut Ports,
                check: (ctx.data() + offset + 16) as *mut u16,
                proto,
                tcp_flags: hdr[13],
                first_fragment: false,
            })
        }
        PROTO_UDP => {
            let _: *const [u8; 8] = ptr_at(ctx, offset)?;
            if l4_len < 8 {
                return None;
            }
            Some(L4 {
                ports: (ctx.data() + offset) as *mut Ports,
                check: (ctx.data() + offset + 6) as *mut u16,
                proto,
                tcp_flags: 0,
                first_fragment: false,
            })
        }
        _ => None,
    }
}
