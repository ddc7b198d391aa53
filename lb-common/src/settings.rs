//! Datapath-wide settings: one element of an array map, written by the controller.

use crate::{
    addr::Addr, cluster::ClusterSettings, flow::MAX_IDLE_CLASSES, kernel_enum::kernel_enum,
};

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

kernel_enum! {
    /// Where translated packets find their next hop.
    Routing {
        /// The kernel's FIB, asked by the datapath and its answers kept
        /// (`lb_common::next_hop`). Needs IPv4 forwarding on the interfaces.
        Fib = 0 => "fib",
        /// One-arm on a host that does not forward: the FIB refuses to answer there. The
        /// controller holds each backend's next hop in `BACKEND_HOPS`, and a client is answered
        /// the way its packets came (the interface, and the MAC they came from).
        Held = 1 => "held",
    }
    default Fib
}

/// Connection-table timeouts when the config does not say (seconds).
pub const DEFAULT_TCP_TIMEOUT_SECS: u64 = 2 * 3600;
pub const DEFAULT_TCP_CLOSING_TIMEOUT_SECS: u64 = 30;
/// A connection closed both ways (or reset): past its final ACK and any retransmission of it.
/// Its entry then frees its reply tuple (an SNAT port, in one-arm) for a new connection.
pub const DEFAULT_TCP_CLOSED_TIMEOUT_SECS: u64 = 2;
pub const DEFAULT_UDP_TIMEOUT_SECS: u64 = 60;
/// A TCP flow whose handshake has not completed: long enough for a client's SYN retries to keep
/// it (each refreshes it), short enough that a SYN flood's junk never lingers.
pub const DEFAULT_HALF_OPEN_TIMEOUT_SECS: u64 = 10;
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

/// How many (interface, MAC) pairs the datapath accepts frames for: the client and server
/// interfaces' own addresses, with room for cluster mode's shared MAC.
pub const MAX_OWN_MACS: usize = 4;

/// A destination MAC the balancer acts on when a frame arrives on interface `ifindex`.
/// `ifindex` 0 marks an unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnMac {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// The interface's MTU when the controller last looked (0: unknown). A frame larger than
    /// this was merged by GRO (generic mode), not sent so large: too big for its next hop, it
    /// goes to the kernel to be segmented, never answered with "fragmentation needed".
    pub mtu: u16,
}
const _: () = assert!(core::mem::size_of::<OwnMac>() == 12);

impl OwnMac {
    /// Whether a frame to `dst` arriving on `ifindex` is addressed to this entry. Byte by byte:
    /// an array `==` may become a `memcmp` call, which BPF cannot make.
    #[inline(always)]
    pub fn matches(&self, ifindex: u32, dst: &[u8; 6]) -> bool {
        self.ifindex == ifindex
            && self.mac[0] == dst[0]
            && self.mac[1] == dst[1]
            && self.mac[2] == dst[2]
            && self.mac[3] == dst[3]
            && self.mac[4] == dst[4]
            && self.mac[5] == dst[5]
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathSettings {
    pub tcp_timeout_ns: u64,
    pub tcp_closing_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    /// Half-open TCP flows (`HALF_OPEN`).
    pub half_open_timeout_ns: u64,
    /// TCP flows closed both ways or reset (`FlowState::Closed`).
    pub tcp_closed_timeout_ns: u64,
    /// Services' `idle_timeout`s by idle class (`flow::IDLE_CLASS`); index 0 is unused.
    pub idle_timeouts_ns: [u64; MAX_IDLE_CLASSES + 1],
    /// One-arm source addresses: `snat_count` IPv4 ones, then `snat_count_v6` IPv6 ones.
    pub snat_addrs: [Addr; MAX_SNAT_ADDRS],
    pub snat_count: u32,
    /// SNAT source ports are allocated from `snat_port_min..=snat_port_max` (host byte order).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// A [`Mode`] as `u8` (two-arm or one-arm).
    pub mode: u8,
    /// A [`Routing`] as `u8`.
    pub routing: u8,
    /// IPv6 SNAT addresses, after the IPv4 ones in `snat_addrs`.
    pub snat_count_v6: u8,
    pub _pad: [u8; 5],
    /// Frames are balanced or reverse-translated only when their destination MAC is one of
    /// these for the interface they arrived on; the rest (flooded unicast for another host,
    /// broadcast, multicast) pass untouched as `not_for_us`. The controller fills it from the
    /// interfaces it attaches to; empty, the datapath acts on nothing.
    pub own_macs: [OwnMac; MAX_OWN_MACS],
    /// Cluster mode; all zero when off.
    pub cluster: ClusterSettings,
}
const _: () = assert!(
    core::mem::size_of::<DatapathSettings>() == 40 + 128 + 16 * 16 + 16 + 12 * MAX_OWN_MACS + 40
);

impl DatapathSettings {
    /// Settings that balance nothing special: two-arm, SPEC default timeouts.
    pub const fn defaults() -> Self {
        Self {
            tcp_timeout_ns: DEFAULT_TCP_TIMEOUT_SECS * NS_PER_SEC,
            tcp_closing_timeout_ns: DEFAULT_TCP_CLOSING_TIMEOUT_SECS * NS_PER_SEC,
            udp_timeout_ns: DEFAULT_UDP_TIMEOUT_SECS * NS_PER_SEC,
            half_open_timeout_ns: DEFAULT_HALF_OPEN_TIMEOUT_SECS * NS_PER_SEC,
            tcp_closed_timeout_ns: DEFAULT_TCP_CLOSED_TIMEOUT_SECS * NS_PER_SEC,
            idle_timeouts_ns: [0; MAX_IDLE_CLASSES + 1],
            snat_addrs: [[0; 4]; MAX_SNAT_ADDRS],
            snat_count: 0,
            snat_port_min: DEFAULT_SNAT_PORT_MIN,
            snat_port_max: DEFAULT_SNAT_PORT_MAX,
            mode: Mode::TwoArm as u8,
            routing: Routing::Fib as u8,
            snat_count_v6: 0,
            _pad: [0; 5],
            own_macs: [OwnMac {
                ifindex: 0,
                mac: [0; 6],
                mtu: 0,
            }; MAX_OWN_MACS],
            cluster: ClusterSettings::OFF,
        }
    }

    /// Whether next hops are held: the controller's for backends, and a flow's way back to its
    /// client learnt from the client's frames (one-arm without forwarding, and cluster mode).
    #[inline(always)]
    pub fn holds_next_hops(&self) -> bool {
        self.routing == Routing::Held as u8
    }

    /// Held routing in a two-arm cluster, which forwards: a client hop not learnt from the
    /// client (a flow adopted from its backend's packet) is asked of the FIB.
    #[inline(always)]
    pub fn asks_fib_for_client_hops(&self) -> bool {
        self.cluster.enabled != 0 && self.mode == Mode::TwoArm as u8
    }

    /// Whether a packet of IP length `len` that arrived on `ifindex` fits that interface's MTU
    /// (as the controller last read it), so it was sent this large; not when unknown.
    #[inline(always)]
    pub fn fits_ingress(&self, ifindex: u32, len: u16) -> bool {
        self.own_macs
            .iter()
            .any(|m| m.ifindex == ifindex && m.mtu != 0 && len <= m.mtu)
    }

    /// Whether a frame to `dst` that arrived on `ifindex` is addressed to the balancer.
    #[inline(always)]
    pub fn addressed_to_us(&self, ifindex: u32, dst: &[u8; 6]) -> bool {
        // Unrolled by the compiler: four fixed slots, no bounds to prove.
        self.own_macs.iter().any(|m| m.matches(ifindex, dst))
    }
}
