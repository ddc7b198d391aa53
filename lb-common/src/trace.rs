//! `xnlb trace`: the filter the controller arms in `TRACE`, and the event the datapath writes to
//! `TRACE_EVENTS` (a BPF ring buffer) for each packet that matches it.
//!
//! Off, tracing costs each stage one load and one branch on `TraceFilter::armed`. Armed, a
//! packet whose client is outside the filter's prefix costs a masked compare more; one inside it
//! costs the event (looked up and written after the packet's fate is decided). Each CPU may write
//! `per_cpu_window` events per `WINDOW_NS`: what is over that, or finds the ring buffer full, is
//! counted in `TRACE_BUDGET` and never delays the packet.

use crate::addr::{Addr, network};
use crate::flow::FlowKey;
use crate::kernel_enum::kernel_enum;

/// A filter field that matches everything (service and backend ids).
pub const ANY: u32 = u32::MAX;

/// The rate limit's window: each CPU writes at most `TraceFilter::per_cpu_window` events in it.
pub const WINDOW_NS: u64 = 100_000_000;

/// `TRACE_EVENTS`' size in bytes (a power of two of pages): about 2,000 events waiting to be
/// read before the rest is counted as lost.
pub const RING_BYTES: u32 = 256 * 1024;

/// The one element of `TRACE`: what to trace. All zero is off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// Non-zero while a trace runs: the one thing a packet reads when none does. Each trace
    /// arms with a number of its own (its generation), which the packets it traces carry.
    pub armed: u32,
    /// Events each CPU may write per `WINDOW_NS`.
    pub per_cpu_window: u32,
    /// The client's network (masked to `client_prefix`); with `client_prefix` 0, any client.
    pub client: Addr,
    /// The client's family (`FAMILY_V4`, `FAMILY_V6`), or 0 for any.
    pub client_family: u8,
    pub client_prefix: u8,
    pub _pad: [u8; 2],
    /// The service's id, or `ANY`.
    pub service_id: u32,
    /// The backend's id, or `ANY`.
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<TraceFilter>() == 36);

impl TraceFilter {
    /// Whether a client of `family` at `addr` is one the filter asks for.
    #[inline(always)]
    pub fn takes_client(&self, family: u8, addr: &Addr) -> bool {
        if self.client_family != 0 && self.client_family != family {
            return false;
        }
        let masked = network(addr, self.client_prefix);
        masked[0] == self.client[0]
            && masked[1] == self.client[1]
            && masked[2] == self.client[2]
            && masked[3] == self.client[3]
    }

    /// Whether a decision about `service_id` and `backend_id` (`ANY` when there was none) is
    /// one the filter asks for.
    #[inline(always)]
    pub fn takes_decision(&self, service_id: u32, backend_id: u32) -> bool {
        (self.service_id == ANY || self.service_id == service_id)
            && (self.backend_id == ANY || self.backend_id == backend_id)
    }
}

/// Each CPU's element of `TRACE_BUDGET`: its window and what it could not write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceBudget {
    /// When this CPU's current window began.
    pub window_start_ns: u64,
    /// Events written in it.
    pub written: u32,
    pub _pad: u32,
    /// Events over the rate limit.
    pub limited: u64,
    /// Events that found the ring buffer full (the reader behind).
    pub lost: u64,
}
const _: () = assert!(core::mem::size_of::<TraceBudget>() == 32);

kernel_enum! {
    /// Which way the traced packet went.
    TraceDirection {
        /// A client's packet to a VIP.
        ToVip = 0 => "to_vip",
        /// A backend's packet (its reply, once the NAT is undone).
        FromBackend = 1 => "from_backend",
        /// Dropped by the entry program before a stage saw it (a malformed IP header).
        Entry = 2 => "entry",
    }
    default ToVip
}

kernel_enum! {
    /// How the packet's backend was found.
    TraceDecision {
        /// None: the packet was passed or dropped before a flow was decided.
        None = 0 => "none",
        /// A new flow, its backend from the ring.
        NewFlow = 1 => "new flow",
        /// A packet of a flow the connection table holds.
        Existing = 2 => "existing flow",
        /// A new flow sent to the backend the client's sticky entry names.
        Sticky = 3 => "sticky",
        /// A flow whose backend went down or away, given a new one.
        Reselected = 4 => "re-selected",
        /// A backend's reply, its NAT undone.
        Reply = 5 => "reply",
        /// A new flow of a service with one backend (`filtering: single`).
        Single = 6 => "single host",
    }
    default None
}

kernel_enum! {
    /// What became of the packet (with `TraceEvent::reason`).
    TraceVerdict {
        /// To the kernel: `reason` is a `PassReason`.
        Pass = 0 => "pass",
        /// Dropped: `reason` is a `DropReason`.
        Drop = 1 => "drop",
        /// Forwarded: `reason` is the XDP action (`XDP_ACTION_LABELS`).
        Sent = 2 => "sent",
    }
    default Pass
}

/// What this CPU's scratch space holds about the packet being traced, for its event: the
/// stage starts it and a new flow's selection adds to it (unconditionally: one store on a path
/// that has the scratch space at hand). Whatever an untraced packet left is never read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceNotes {
    /// The trace (`TraceFilter::armed`) that `begin` noted the packet for; 0 when the packet
    /// is not traced.
    pub generation: u32,
    /// How a new flow's backend was chosen (`SELECTED_*`, or the ring attempt that chose it).
    pub selected: u32,
    /// The backend chosen for it.
    pub backend_id: u32,
    /// 1 when the packet's flow was given up because its backend went down or away.
    pub reselected: u32,
    /// The packet as it arrived (before any translation).
    pub arrived: FlowKey,
}

/// `TraceNotes::selected`: not a new flow.
pub const SELECTED_NONE: u32 = 0;
/// `TraceNotes::selected`: the service's single backend.
pub const SELECTED_SINGLE: u32 = 1;
/// `TraceNotes::selected`: the client's sticky entry.
pub const SELECTED_STICKY: u32 = 2;
/// `TraceNotes::selected`: the ring, at attempt `selected - SELECTED_RING` (each attempt
/// hashes with the next seed).
pub const SELECTED_RING: u32 = 3;

/// One traced packet, as the datapath decided it. Addresses and ports as in `FlowKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when it was decided.
    pub time_ns: u64,
    /// The client's side of the flow: client → VIP (a reply's tuple turned around, its NAT
    /// undone).
    pub client: FlowKey,
    /// The packet as it left, when it was translated (else zero): forwarded, or passed to the
    /// kernel to be forwarded (a neighbour to resolve).
    pub sent: FlowKey,
    /// The service, or `ANY`.
    pub service_id: u32,
    /// The backend, or `ANY`.
    pub backend_id: u32,
    /// The affinity hash and ring slot (within the service's table) of a new flow from the ring.
    pub hash: u32,
    pub ring_slot: u32,
    /// The interface the packet came in on.
    pub in_ifindex: u32,
    /// Where it was redirected to (0 when not redirected, or not known).
    pub out_ifindex: u32,
    /// A `TraceDirection`, a `TraceDecision`, a `TraceVerdict`.
    pub direction: u8,
    pub decision: u8,
    pub verdict: u8,
    /// The verdict's reason (see `TraceVerdict`).
    pub reason: u8,
    /// The service's affinity (`service::Affinity`).
    pub affinity: u8,
    /// The TCP flags of the packet (0 for UDP).
    pub tcp_flags: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 120);
