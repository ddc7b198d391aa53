//! Services: which (VIP, protocol, port) tuples are balanced, and how.

use crate::{
    addr::{Addr, FAMILY_V4},
    kernel_enum::kernel_enum,
};

/// Bytes of [`ServiceRuleKey`] that a rule's prefix can cover: family, protocol, padding and VIP
/// (20 bytes, always matched in full) followed by the 16-bit port.
pub const RULE_FIXED_BITS: u32 = 20 * 8;
/// Prefix length of a rule that matches exactly one port.
pub const RULE_EXACT_PORT_BITS: u32 = RULE_FIXED_BITS + 16;
/// Prefix length used for lookups (the whole key).
pub const RULE_LOOKUP_BITS: u32 = (core::mem::size_of::<ServiceRuleKey>() * 8) as u32;

/// Data of the longest-prefix-match key for port rules. A port range is stored as the few
/// prefixes that cover it, so one lookup answers any range at a cost independent of its width.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceRuleKey {
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    pub _pad: u16,
    /// The VIP (see [`Addr`]).
    pub vip: Addr,
    /// Destination port, network byte order (must come last: the prefix ends inside it).
    pub port: u16,
    pub _pad_tail: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceRuleKey>() == 24);

/// Value of a port rule: the service it belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceRule {
    pub service_id: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceRule>() == 4);

impl ServiceRuleKey {
    /// The key of a rule (or lookup) for `vip:port` of `family` (the port in network order).
    #[inline(always)]
    pub const fn new(family: u8, proto: u8, vip: Addr, port_be: u16) -> Self {
        Self {
            family,
            proto,
            _pad: 0,
            vip,
            port: port_be,
            _pad_tail: 0,
        }
    }

    /// The key of an IPv4 rule (or lookup) for `vip_word:port` (both in network order).
    #[inline(always)]
    pub const fn v4(proto: u8, vip_word: u32, port_be: u16) -> Self {
        Self {
            family: FAMILY_V4,
            proto,
            _pad: 0,
            vip: [vip_word, 0, 0, 0],
            port: port_be,
            _pad_tail: 0,
        }
    }
}

kernel_enum! {
    /// NLB's filtering modes: how a port rule spreads its traffic.
    Filtering {
        /// Over all backends by the consistent-hash table.
        Multiple = 0 => "multiple",
        /// To the one backend of best priority that is up (failover).
        Single = 1 => "single",
        /// Dropped.
        Disabled = 2 => "disabled",
    }
    default Multiple
}

kernel_enum! {
    /// NLB's affinity: what the new-flow hash covers. NLB's default is `single`.
    Affinity {
        /// Client address and port.
        None = 0 => "none",
        /// Client address.
        Single = 1 => "single",
        /// Client network (`network_prefix`).
        Network = 2 => "network",
    }
    default Single
}

/// `ServiceInfo::flags` (`on_backend_down: keep`): the established flows of a backend whose
/// health check failed stay on it until they end (as a draining backend's); without it they
/// are re-selected at their next packet. A disabled backend's always are.
pub const KEEPS_FLOWS_OF_DOWN: u8 = 1;

/// Largest consistent-hash table (a prime); also the stride between tables in the ring array.
pub const RING_MAX_SIZE: u32 = 65537;
/// Ring tables per service: the live one and the one being built beside it.
pub const RING_SLOTS_PER_SERVICE: u32 = 2;
/// Marks "no backend" in rings and in `single_backend`.
pub const NO_BACKEND: u32 = u32::MAX;

/// How a service picks backends. Replaced as a whole (the map is not preallocated, so the kernel
/// swaps elements under RCU): a switch to a freshly built ring is a single write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Index of the live table in the ring array: the table is `ring[ring_base .. ring_base +
    /// ring_size]`.
    pub ring_base: u32,
    /// Entries in the live table (a prime, at most [`RING_MAX_SIZE`]); 0 = no table.
    pub ring_size: u32,
    /// `filtering: single`: the backend every flow goes to, or [`NO_BACKEND`].
    pub single_backend: u32,
    /// Seed of the affinity hash, so services do not share hash collisions. The services of a
    /// persistence group share it; it also names their sticky table (`lb_common::sticky`).
    pub hash_seed: u32,
    /// A [`Filtering`] as `u8`.
    pub filtering: u8,
    /// An [`Affinity`] as `u8`.
    pub affinity: u8,
    /// Prefix length for [`Affinity::Network`].
    pub network_prefix: u8,
    /// [`KEEPS_FLOWS_OF_DOWN`], and the idle class its new flows take (`flow::IDLE_CLASS`).
    pub flags: u8,
    /// `sticky_timeout` in milliseconds; 0 = no sticky table (affinity by the ring alone).
    pub sticky_timeout_ms: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 24);
