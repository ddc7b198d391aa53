//! Datapath-wide settings: one element of an array map, written by the controller.

use crate::{addr::Addr, kernel_enum::kernel_enum};

kernel_enum! {
    /// How the balancer sits between clients and backends.
    Mode {
        /// DNAT only, the client address is preserved, replies route through the balancer.
        TwoArm = 0 => "two-arm",
        /// DNAT and SNAT to one of the SNAT addresses.
        OneArm = 1 => "one-arm",
        /// Direct server return: accepted by the schema, refused by validation until the
        /// datapath does it.
        Dsr = 2 => "dsr",
    }
    default TwoArm
}

/// Connection-table timeouts when the config does not say (seconds).
pub const DEFAULT_TCP_TIMEOUT_SECS: u64 = 2 * 3600;
pub const DEFAULT_TCP_CLOSING_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_UDP_TIMEOUT_SECS: u64 = 60;
/// SNAT source ports when the config does not say: below Linux's ephemeral range
/// (32768-60999), so the balancer's own connections to backends (health probes) never collide
/// with an SNAT port on a shared address.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 1024;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 32767;
/// The fewest SNAT ports a config may give.
pub const MIN_SNAT_PORTS: u32 = 256;

const NS_PER_SEC: u64 = 1_000_000_000;

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
    /// A [`Mode`] as `u8` (two-arm or one-arm).
    pub mode: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<DatapathSettings>() == 24 + 16 * 16 + 16);

impl DatapathSettings {
    /// Settings that balance nothing special: two-arm, SPEC default timeouts.
    pub const fn defaults() -> Self {
        Self {
            tcp_timeout_ns: DEFAULT_TCP_TIMEOUT_SECS * NS_PER_SEC,
            tcp_closing_timeout_ns: DEFAULT_TCP_CLOSING_TIMEOUT_SECS * NS_PER_SEC,
            udp_timeout_ns: DEFAULT_UDP_TIMEOUT_SECS * NS_PER_SEC,
            snat_addrs: [[0; 4]; MAX_SNAT_ADDRS],
            snat_count: 0,
            snat_port_min: DEFAULT_SNAT_PORT_MIN,
            snat_port_max: DEFAULT_SNAT_PORT_MAX,
            mode: Mode::TwoArm as u8,
            _pad: [0; 7],
        }
    }
}
