//! Addresses as the datapath keeps them.

/// An IPv4 or IPv6 address: 16 bytes in network order, read as four native `u32` words.
/// IPv4 uses word 0 only; words 1..=3 are zero. The family is stored beside it where needed.
pub type Addr = [u32; 4];

/// `AF_INET`, as stored in the `family` fields.
pub const FAMILY_V4: u8 = 2;
/// `AF_INET6`, as stored in the `family` fields (the datapath does not balance IPv6 yet).
pub const FAMILY_V6: u8 = 10;

/// IP protocol numbers used in keys.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

/// The IPv4 address `octets` as the datapath stores it.
pub const fn v4(octets: [u8; 4]) -> Addr {
    [u32::from_ne_bytes(octets), 0, 0, 0]
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
}
