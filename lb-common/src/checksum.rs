//! Incremental Internet checksum updates (RFC 1624): `HC' = ~(~HC + ~m + m')`.
//!
//! Words are the checksum's 16-bit words exactly as they sit in memory, so the same functions
//! serve both byte orders. Addresses are applied as two words each; one "address delta" is used
//! for both the IP header and the TCP/UDP pseudo-header.

/// One's-complement sum of `a` and `b`, folded to 16 bits.
#[inline(always)]
const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Accumulates the one's-complement difference of replacing words by others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    pub const fn new() -> Self {
        Delta(0)
    }

    /// Adds the change of one 16-bit word from `old` to `new`.
    #[inline(always)]
    pub const fn word(self, old: u16, new: u16) -> Self {
        Delta(fold(self.0 + (!old) as u32 + new as u32) as u32)
    }

    /// Adds the change of one 32-bit field (e.g. an IPv4 address) as its two 16-bit words.
    #[inline(always)]
    pub const fn word32(self, old: u32, new: u32) -> Self {
        self.word(old as u16, new as u16)
            .word((old >> 16) as u16, (new >> 16) as u16)
    }

    /// Combines two deltas.
    #[inline(always)]
    pub const fn add(self, other: Delta) -> Self {
        Delta(fold(self.0 + other.0) as u32)
    }

    /// The checksum field `check` after applying this delta.
    #[inline(always)]
    pub const fn apply(self, check: u16) -> u16 {
        !fold((!check) as u32 + self.0)
    }

    /// UDP: a zero checksum means "none" and stays zero; a computed zero is sent as `0xffff`.
    #[inline(always)]
    pub const fn apply_udp(self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        let c = self.apply(check);
        if c == 0 { 0xffff } else { c }
    }
}
