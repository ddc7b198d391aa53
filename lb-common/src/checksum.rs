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

    /// Adds the change of one 16-byte address (`crate::addr::Addr`) as its eight words.
    #[inline(always)]
    pub const fn addr(self, old: &[u32; 4], new: &[u32; 4]) -> Self {
        self.word32(old[0], new[0])
            .word32(old[1], new[1])
            .word32(old[2], new[2])
            .word32(old[3], new[3])
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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// RFC 1071 checksum over 16-bit words, computed from scratch.
    fn full(words: &[u16]) -> u16 {
        let mut sum: u32 = words.iter().map(|&w| w as u32).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn incremental_updates_match_a_full_recomputation() {
        // A deterministic spread of headers, including the 0x0000/0xffff corner words.
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..20_000 {
            let mut words: Vec<u16> = (0..10).map(|_| next() as u16).collect();
            if round % 7 == 0 {
                words[0] = 0xffff;
                words[1] = 0;
            }
            let check = full(&words);
            let (old32, new32) = (u32::from(words[2]) | u32::from(words[3]) << 16, next());
            let (old16, new16) = (words[4], next() as u16);
            let delta = Delta::new().word32(old32, new32).word(old16, new16);
            words[2] = new32 as u16;
            words[3] = (new32 >> 16) as u16;
            words[4] = new16;
            let want = full(&words);
            let got = delta.apply(check);
            // 0x0000 and 0xffff are the same one's-complement value.
            assert!(
                got == want || (got ^ want) == 0xffff && (got == 0 || want == 0),
                "round {round}: {got:#06x} != {want:#06x}"
            );
        }
    }

    #[test]
    fn a_zero_udp_checksum_stays_zero_and_a_computed_zero_becomes_ffff() {
        assert_eq!(Delta::new().word(1, 2).apply_udp(0), 0);
        // Some checksum value that this delta turns into 0x0000, which UDP must send as 0xffff.
        let d = Delta::new().word(0, 0x0001);
        let zeroing = (1..=0xffffu32)
            .map(|c| c as u16)
            .find(|&c| d.apply(c) == 0)
            .unwrap();
        assert_eq!(d.apply_udp(zeroing), 0xffff);
    }
}
