//! The connection table: two LRU maps per stage. `FLOWS` is keyed by the client's tuple and says
//! where the flow goes; `REPLIES` is keyed by the tuple the backend's replies carry and says how
//! to undo the NAT. A reply key is claimed with `BPF_NOEXIST`, so two flows never share one (in
//! one-arm mode that is what makes an SNAT port unique).
//!
//! A TCP flow lives in `HALF_OPEN` / `HALF_OPEN_REPLIES` from its SYN until the client's first
//! packet after the handshake, and only then moves to `FLOWS` / `REPLIES`: a SYN flood churns the
//! half-open pair and can never evict an established flow.
//!
//! Derived replies (two-arm): a backend port that serves one VIP and port alone names its
//! replies' client tuple by itself (the reply's destination is the client, `SERVED_BY` gives
//! the VIP and port), so its flows need no reply entry: one insert per new flow and one lookup
//! per established packet instead of two each. Only a backend port reached from several VIP
//! ports (two services, a range wider than `MAX_LISTED_RANGE`) and every one-arm flow, whose
//! SNAT port must be unique, claim reply entries.

use crate::{
    addr::{Addr, PROTO_UDP},
    kernel_enum::kernel_enum,
    next_hop::NextHop,
    settings::DatapathSettings,
};

/// A directional 5-tuple. Ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

kernel_enum! {
    /// TCP life of a flow, for timeouts and for when its reply tuple may be taken again.
    FlowState {
        Open = 0 => "open",
        /// The client sent a FIN: the entry lives `tcp_closing_timeout` after its last packet.
        Closing = 1 => "closing",
        /// A SYN was seen, the handshake has not completed: the entry is in `HALF_OPEN` and lives
        /// `half_open_timeout` after its last packet.
        HalfOpen = 2 => "half_open",
        /// The backend sent a FIN first (it will keep the tuple in TIME_WAIT): as `Closing`.
        BackendClosing = 3 => "backend_closing",
        /// FINs from both sides, or a RST: the connection is over. The entry lives
        /// `tcp_closed_timeout` after its last packet; then its reply tuple (an SNAT port, in
        /// one-arm) is free for a new connection.
        Closed = 4 => "closed",
    }
    default Open
}

impl FlowState {
    /// Whether a state byte is one of the closing states (FIN or RST seen).
    #[inline(always)]
    pub fn byte_is_closing(state: u8) -> bool {
        state == Self::Closing as u8
            || state == Self::BackendClosing as u8
            || state == Self::Closed as u8
    }

    /// The state after a TCP packet with FIN (`fin`) or RST (`rst`) from the client
    /// (`from_client`) or the backend.
    #[inline(always)]
    pub fn byte_after(state: u8, fin: bool, rst: bool, from_client: bool) -> u8 {
        let (mine, theirs) = if from_client {
            (Self::Closing as u8, Self::BackendClosing as u8)
        } else {
            (Self::BackendClosing as u8, Self::Closing as u8)
        };
        if rst || (fin && state == theirs) {
            Self::Closed as u8
        } else if fin && state == Self::Open as u8 {
            mine
        } else {
            state
        }
    }
}

/// Value in `FLOWS`: the translation applied to the client's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// `bpf_ktime_get_coarse_ns` of the last packet in either direction.
    pub last_seen_ns: u64,
    /// The reply tuple this flow owns in `REPLIES` (backend → client or SNAT address).
    pub reply: FlowKey,
    pub backend_id: u32,
    /// A [`FlowState`] as `u8`.
    pub state: u8,
    /// [`REPLY_DERIVED`], [`STICKY`], and the service's idle class ([`IDLE_CLASS`]).
    pub flags: u8,
    /// With [`STICKY`]: the period in which the flow last refreshed its client's sticky entry
    /// (`lb_common::sticky::stamp`).
    pub sticky_stamp: u16,
    /// Where the backend's replies leave for the client (filled by the first reply).
    pub client_hop: NextHop,
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 80);

/// `FlowEntry::flags`: the flow holds no reply entry; its replies find it through `SERVED_BY`
/// (its backend port served its VIP and port alone when it started).
pub const REPLY_DERIVED: u8 = 1;
/// `FlowEntry::flags`: the flow's service keeps sticky entries; the client's packets refresh
/// its entry.
pub const STICKY: u8 = 2;
/// `FlowEntry::flags` and `ServiceInfo::flags`, the high four bits: the service's idle class,
/// an index into `DatapathSettings::idle_timeouts_ns` (its `idle_timeout`); 0 = the protocol's
/// own timeout (`tcp_timeout`, `udp_timeout`). A new flow copies its service's bits.
pub const IDLE_CLASS: u8 = 0xF0;
pub const IDLE_CLASS_SHIFT: u8 = 4;
/// Distinct `idle_timeout` values a config may use (class 0 is the protocol's own).
pub const MAX_IDLE_CLASSES: usize = 15;

/// Key of `SERVED_BY`: a backend's address, the port it serves on (network order) and the
/// protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendPort {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<BackendPort>() == 20);

/// Value of `SERVED_BY` (two-arm): the VIP and port a backend port serves, and the ids it
/// serves them under. With [`SERVES_ALONE`] the backend port serves that VIP and port and
/// nothing else: new flows to it derive their replies. Without it, it did when it was last
/// written and serves more now (a reload added a service on it): the flows it derived before
/// still find their replies this way, and a new flow that claims its reply tuple checks that
/// none of them holds it. A backend port that never served one VIP and port alone has no entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServedBy {
    /// The VIP, of `family` (`addr::v4` or `addr::v6`).
    pub vip: Addr,
    /// Network order.
    pub vip_port: u16,
    /// [`SERVES_ALONE`], or 0.
    pub flags: u8,
    /// The VIP's family: `BackendPort` has none, so a reply of the other version whose address
    /// words happen to match derives nothing.
    pub family: u8,
    pub service_id: u32,
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<ServedBy>() == 28);

/// `ServedBy::flags`: the backend port serves this VIP and port alone.
pub const SERVES_ALONE: u8 = 1;

/// Entries `SERVED_BY` has room for.
pub const MAX_SERVED_BY: u32 = 16_384;

/// Ports of a range are listed in `SERVED_BY` one by one up to this width; a wider range's
/// backend ports claim reply entries.
pub const MAX_LISTED_RANGE: u16 = 16;

/// Value in `REPLIES`: the client's original tuple, to restore on the backend's replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyEntry {
    /// The client's tuple as it reached the VIP (`FLOWS` key of the owning flow).
    pub client: FlowKey,
    pub backend_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ReplyEntry>() == 48);

impl FlowKey {
    /// Field-by-field equality (derived `==` may become a `memcmp` call, which BPF cannot make).
    #[inline(always)]
    pub fn same(&self, o: &FlowKey) -> bool {
        self.src[0] == o.src[0]
            && self.src[1] == o.src[1]
            && self.src[2] == o.src[2]
            && self.src[3] == o.src[3]
            && self.dst[0] == o.dst[0]
            && self.dst[1] == o.dst[1]
            && self.dst[2] == o.dst[2]
            && self.dst[3] == o.dst[3]
            && self.src_port == o.src_port
            && self.dst_port == o.dst_port
            && self.proto == o.proto
            && self.family == o.family
    }

    /// The tuple of the other direction.
    #[inline(always)]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

impl FlowEntry {
    /// Whether this flow of protocol `proto` has outlived its timeout at `now_ns` (the
    /// datapath's clock). The one expiry rule: the datapath and `xnlb status` both use it. An
    /// open flow (UDP, or TCP neither half-open nor closing) of a service with an
    /// `idle_timeout` has that one.
    #[inline(always)]
    pub fn expired(&self, proto: u8, s: &DatapathSettings, now_ns: u64) -> bool {
        // At most 15: four bits.
        let class = (self.flags >> IDLE_CLASS_SHIFT) as usize;
        let timeout = if proto == PROTO_UDP {
            if class != 0 {
                s.idle_timeouts_ns[class]
            } else {
                s.udp_timeout_ns
            }
        } else if self.state == FlowState::Closed as u8 {
            s.tcp_closed_timeout_ns
        } else if FlowState::byte_is_closing(self.state) {
            s.tcp_closing_timeout_ns
        } else if self.state == FlowState::HalfOpen as u8 {
            s.half_open_timeout_ns
        } else if class != 0 {
            s.idle_timeouts_ns[class]
        } else {
            s.tcp_timeout_ns
        };
        // Saturating: a stamp newer than `now_ns` (written by another CPU after this packet read
        // the clock, or a status read on a finer clock) is fresh, never expired.
        now_ns.saturating_sub(self.last_seen_ns) >= timeout
    }
}
