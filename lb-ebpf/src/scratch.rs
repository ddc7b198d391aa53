//! Per-CPU room for the values a packet builds that are too large for the BPF stack next to
//! everything else: a new flow's entries, the FIB's parameters, a next hop kept nowhere. XDP runs to completion on
//! its CPU, so one element per CPU is never shared by two packets at once.

use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use lb_common::{
    flow::{BackendPort, FlowEntry, FlowKey, ReplyEntry},
    fragment::{FragmentEntry, FragmentKey},
    next_hop::NextHop,
    trace::TraceNotes,
};

use crate::maps::SCRATCH;

#[repr(C)]
pub struct Scratch {
    /// A flow entry being written (a new flow, or one moving to the established maps).
    pub entry: FlowEntry,
    /// The reply entry that names its owner.
    pub owner: ReplyEntry,
    /// `bpf_fib_lookup`'s parameters and answer.
    pub fib: FibParams,
    /// A next hop used once and kept nowhere (see `balance::backend_hop`).
    pub hop: NextHop,
    /// A backend port to look up in `SERVED_BY` (`derived::served_by`).
    pub backend_port: BackendPort,
    /// The client tuple of a flow that derived its replies, asked whether it holds a reply
    /// tuple that a new flow wants to claim (`derived::holds`).
    pub derived: FlowKey,
    /// A fragmented datagram's key and entry (`fragments`).
    pub fragment_key: FragmentKey,
    pub fragment: FragmentEntry,
    /// Where an IPv6 packet's transport header is, walked by the entry for its stage
    /// (`packet::walk_ipv6`).
    pub ipv6_transport: u32,
    /// Its fragment header's identification, when it has one.
    pub ipv6_fragment_id: u32,
    /// An IPv6 packet too big for its next hop, as its sender sent it (`icmp6::too_big`).
    pub sent_as: FlowKey,
    /// The packet being traced (`trace`).
    pub trace: TraceNotes,
}

/// This CPU's scratch space. Its contents are whatever the last packet left: every user writes
/// before it reads.
#[inline(always)]
pub fn get() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's element, used by this one program run at a time (XDP is not
    // preempted), and valid while the program runs.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
