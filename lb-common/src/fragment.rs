//! Fragments of a balanced datagram. Only a datagram's first fragment carries the ports, so only
//! it can be balanced (or reverse-translated); it leaves the translation it got in `FRAGMENTS`,
//! keyed by what every fragment of the datagram carries (source, destination, protocol, IP ID),
//! and the datagram's later fragments follow it: the same addresses, the same next hop.

use crate::{addr::Addr, next_hop::NextHop};

/// Key of `FRAGMENTS`: a datagram as its fragments name it. Addresses as sent (before
/// translation); `id` is the IPv4 identification (network order, in the low 16 bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<FragmentKey>() == 40);

/// Value in `FRAGMENTS`: the translation the datagram's first fragment got.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentEntry {
    /// `bpf_ktime_get_coarse_ns` of the datagram's last fragment.
    pub last_seen_ns: u64,
    /// The addresses its fragments leave with.
    pub src: Addr,
    pub dst: Addr,
    /// Where they go (the first fragment's next hop, asked again when stale).
    pub hop: NextHop,
    /// The backend, for its counters.
    pub backend_id: u32,
    /// 1 when the datagram goes to the client (a backend's reply), 0 to a backend.
    pub to_client: u8,
    // Integers, not a `[u8; 3]`: zeroing an odd-sized array is a `memset` call in the datapath.
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(core::mem::size_of::<FragmentEntry>() == 72);

/// How long a datagram's later fragments may follow its first (after the last one seen). A
/// sender puts a datagram's fragments on the wire back to back; a receiver reassembles for up
/// to 30 s, but a fragment that late has usually been given up on, and a longer entry would
/// hold an IP ID that a busy sender may use again.
pub const FRAGMENT_TIMEOUT_NS: u64 = 5_000_000_000;

/// Datagrams being followed at once (`FRAGMENTS`, least recently used first out).
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 16_384;
