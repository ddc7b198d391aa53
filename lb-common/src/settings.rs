//! Datapath-wide settings: one element of an array map, written by the controller.

use crate::addr::Addr;

/// Two-arm: DNAT only, the client address is preserved, replies route through the balancer.
pub const MODE_TWO_ARM: u8 = 0;
/// One-arm: DNAT and SNAT to one of the SNAT addresses.
pub const MODE_ONE_ARM: u8 = 1;

/// At most this many SNAT addresses.
pub const MAX_SNAT_ADDRS: usize = 16;
const _: () = assert!(MAX_SNAT_ADDRS.is_power_of_two());
/// How many ports the datapath tries when allocating an SNAT port for a new flow.
pub const SNAT_PORT_ATTEMPTS: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathSettings {
    pub tcp_timeout_ns: u64,
    pub tcp_closing_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    /// One-arm source addresses; the first `snat_count` are used.
    pub snat_addrs: [Addr; MAX_SNAT_ADDRS],
    pub snat_count: u32,
    /// SNAT source ports are allocated from `snat_port_min..=snat_port_max` (host byte order).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// `MODE_TWO_ARM` or `MODE_ONE_ARM`.
    pub mode: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<DatapathSettings>() == 24 + 16 * 16 + 16);

impl DatapathSettings {
    /// Settings that balance nothing special: two-arm, SPEC default timeouts.
    pub const fn defaults() -> Self {
        Self {
            tcp_timeout_ns: 2 * 3600 * 1_000_000_000,
            tcp_closing_timeout_ns: 30 * 1_000_000_000,
            udp_timeout_ns: 60 * 1_000_000_000,
            snat_addrs: [[0; 4]; MAX_SNAT_ADDRS],
            snat_count: 0,
            // Below Linux's ephemeral range (32768-60999), so the balancer's own connections to
            // backends (health probes) never collide with an SNAT port on a shared address.
            snat_port_min: 1024,
            snat_port_max: 32767,
            mode: MODE_TWO_ARM,
            _pad: [0; 7],
        }
    }
}
