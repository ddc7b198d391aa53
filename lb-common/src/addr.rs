//! Addresses as the datapath keeps them.

/// An IPv4 or IPv6 address: 16 bytes in network order, read as four native `u32` words.
/// IPv4 uses word 0 only; words 1..=3 are zero. The family is stored beside it where needed.
pub type Addr = [u32; 4];

/// `AF_INET`, as stored in the `family` fields.
pub const FAMILY_V4: u8 = 2;
/// `AF_INET6`, as stored in the `family` fields.
pub const FAMILY_V6: u8 = 10;

/// IP protocol numbers used in keys.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// The IPv4 address `octets` as the datapath stores it.
pub const fn v4(octets: [u8; 4]) -> Addr {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// The IPv6 address `octets` as the datapath stores it.
pub const fn v6(octets: [u8; 16]) -> Addr {
    let o = octets;
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The octets of an address stored by [`v6`] (or, in the first four, by [`v4`]).
pub const fn octets(addr: &Addr) -> [u8; 16] {
    let (a, b, c, d) = (
        addr[0].to_ne_bytes(),
        addr[1].to_ne_bytes(),
        addr[2].to_ne_bytes(),
        addr[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// The first `prefix` bits of `addr`, the rest zero: an IPv4 address's network (its words
/// after the first are zero already) or an IPv6 address's.
#[inline(always)]
pub const fn network(addr: &Addr, prefix: u8) -> Addr {
    let p = prefix as u32;
    [
        addr[0] & v4_prefix_mask(clamp_word(p)),
        addr[1] & v4_prefix_mask(clamp_word(p.saturating_sub(32))),
        addr[2] & v4_prefix_mask(clamp_word(p.saturating_sub(64))),
        addr[3] & v4_prefix_mask(clamp_word(p.saturating_sub(96))),
    ]
}

/// A bit count for one 32-bit word's mask.
#[inline(always)]
const fn clamp_word(bits: u32) -> u8 {
    if bits > 32 { 32 } else { bits as u8 }
}

/// The octets of an IPv4 address stored by [`v4`].
pub const fn v4_octets(addr: &Addr) -> [u8; 4] {
    addr[0].to_ne_bytes()
}

/// Mask for the first `prefix` bits of an IPv4 word in network order (`prefix` is clamped to 32).
#[inline(always)]
pub const fn v4_prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else if prefix >= 32 {
        u32::MAX
    } else {
        (u32::MAX << (32 - prefix as u32)).to_be()
    }
}

/// Key of the address sets (VIPs; backend addresses that may send replies).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: Addr,
    pub family: u8,
    // Integers, not a `[u8; 3]`: zeroing an odd-sized byte array becomes a call to a byte-loop
    // `memset` in the datapath, on every packet.
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

impl AddrKey {
    /// The key of an IPv4 address held as its network-order word (`Ipv4Hdr.src`/`.dst`).
    #[inline(always)]
    pub const fn v4_word(word: u32) -> Self {
        Self {
            addr: [word, 0, 0, 0],
            family: FAMILY_V4,
            _pad0: 0,
            _pad1: 0,
        }
    }

    /// The key of the IPv4 address `octets`.
    pub const fn v4(octets: [u8; 4]) -> Self {
        Self::v4_word(u32::from_ne_bytes(octets))
    }

    /// The key of `addr` of `family`.
    #[inline(always)]
    pub const fn new(addr: Addr, family: u8) -> Self {
        Self {
            addr,
            family,
            _pad0: 0,
            _pad1: 0,
        }
    }
}
