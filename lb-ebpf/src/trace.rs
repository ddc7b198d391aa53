//! `xnlb trace` (`lb_common::trace`): one event per packet that matches the armed filter,
//! written after the packet's fate is decided.
//!
//! A stage asks `armed` (one load, one branch: all a packet pays when nobody traces). When a
//! trace runs, `begin` notes the packet as it arrived in this CPU's scratch space and says
//! whether its client is the filter's; the selection of a new flow notes how it chose
//! (`conntrack::new_flow`); `emit` then gathers the rest from the maps and the rewritten packet.
//! Both are functions of their own, so the stages' code and stack stay as they were.

use aya_ebpf::{
    bindings::{BPF_RB_NO_WAKEUP, xdp_action},
    helpers::generated::bpf_ktime_get_ns,
    programs::XdpContext,
};
use lb_common::{
    addr::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP},
    flow::FlowKey,
    hash::affinity_hash,
    stats::PassReason,
    trace::{
        ANY, SELECTED_NONE, SELECTED_RING, SELECTED_SINGLE, SELECTED_STICKY, TraceDecision,
        TraceDirection, TraceEvent, TraceFilter, TraceVerdict, WINDOW_NS,
    },
};

use crate::{
    Outcome,
    maps::{BACKEND_HOPS, FLOWS, HALF_OPEN, SERVICES, TRACE, TRACE_BUDGET, TRACE_EVENTS},
    packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, ptr_at},
    scratch,
};

/// Whether a trace runs.
#[inline(always)]
pub fn armed() -> bool {
    matches!(TRACE.get(0), Some(f) if f.armed != 0)
}

/// Starts tracing a packet going `direction`: notes it as it arrived, marked with the trace's
/// generation (`TraceFilter::armed`) unless it is a client packet whose client is not the
/// filter's (a backend's packet names its client only once its NAT is undone: `emit` asks
/// then). Notes of another generation are never emitted: a trace armed while a packet was
/// between `begin` and `emit` does not get that packet's stale notes.
///
/// (Functions of their own return a number: the verifier refuses a function that leaves a
/// stack pointer in the return register, which LLVM may do when the result is `()`.)
#[inline(never)]
pub fn begin(raw: *mut aya_ebpf::bindings::xdp_md, direction: u32) -> u32 {
    let ctx = crate::packet::own_context(raw);
    let (Some(filter), Some(s)) = (TRACE.get(0), scratch::get()) else {
        return 0;
    };
    let notes = &mut s.trace;
    notes.generation = 0;
    notes.selected = SELECTED_NONE;
    notes.backend_id = ANY;
    notes.reselected = 0;
    let Some((arrived, _)) = tuple_of(&ctx) else {
        return 0;
    };
    notes.arrived = arrived;
    if direction != TraceDirection::ToVip as u32
        || filter.takes_client(arrived.family, &arrived.src)
    {
        notes.generation = filter.armed;
    }
    notes.generation
}

/// The entry program dropped a packet addressed to a VIP (a malformed or corrupt IP header):
/// its event, if its client is the filter's.
#[inline(never)]
pub fn entry_drop(raw: *mut aya_ebpf::bindings::xdp_md, reason: u32) -> u32 {
    begin(raw, TraceDirection::Entry as u32);
    emit(
        raw,
        TraceDirection::Entry as u32,
        verdict_word(TraceVerdict::Drop, reason),
    )
}

/// A new flow's backend was chosen (`how`: `SELECTED_*`).
#[inline(always)]
pub fn note_selected(notes: &mut lb_common::trace::TraceNotes, how: u32, backend_id: u32) {
    notes.selected = how;
    notes.backend_id = backend_id;
}

/// The packet's flow was given up: its backend went down or away.
#[inline(always)]
pub fn note_reselected() {
    if let Some(s) = scratch::get() {
        s.trace.reselected = 1;
    }
}

/// The outcome as `emit` takes it: verdict and reason in one word (a function of its own takes
/// at most five registers, no enum).
#[inline(always)]
pub fn outcome_word(outcome: &Outcome) -> u32 {
    match *outcome {
        Outcome::Pass(reason) => verdict_word(TraceVerdict::Pass, reason as u32),
        Outcome::Drop(reason) => verdict_word(TraceVerdict::Drop, reason as u32),
        Outcome::Sent(action) => verdict_word(TraceVerdict::Sent, action),
        Outcome::TooBig(_) => verdict_word(TraceVerdict::Pass, PassReason::FragNeeded as u32),
    }
}

#[inline(always)]
fn verdict_word(verdict: TraceVerdict, reason: u32) -> u32 {
    (verdict as u32) << 8 | (reason & 0xff)
}

/// Writes the event of the packet `begin` noted, now that its fate (`outcome`, from
/// `outcome_word`) is decided, if it matches the filter and this CPU's budget allows: 1 if it
/// did.
#[inline(never)]
pub fn emit(raw: *mut aya_ebpf::bindings::xdp_md, direction: u32, outcome: u32) -> u32 {
    let ctx = crate::packet::own_context(raw);
    let (Some(filter), Some(s)) = (TRACE.get(0), scratch::get()) else {
        return 0;
    };
    let notes = &mut s.trace;
    if notes.generation != filter.armed {
        return 0;
    }
    notes.generation = 0;
    let verdict = (outcome >> 8) as u8;
    let sent = verdict == TraceVerdict::Sent as u8;
    // The packet as it is now: translated, if its flow was found (a packet may also be passed
    // to the kernel after its translation, for the kernel to find a neighbour).
    let now = tuple_of(&ctx);
    let tcp_flags = match &now {
        Some((key, l4)) => tcp_flags(&ctx, key, *l4),
        None => 0,
    };
    let sent_as = match now {
        Some((key, _)) if key != notes.arrived => Some(key),
        _ => None,
    };
    // The client's side: as it arrived, or a reply's as it left, turned around.
    let client = if direction == TraceDirection::FromBackend as u32 {
        let back = match &sent_as {
            Some(t) => t,
            None => &notes.arrived,
        };
        let client = back.reversed();
        if !filter.takes_client(client.family, &client.src) {
            return 0;
        }
        client
    } else {
        notes.arrived
    };
    let (service_id, affinity, hash, ring_slot) = service_of(&client, notes.selected);
    let (decision, backend_id) = decision_of(direction, notes, &client, sent_as.is_some());
    if !filter.takes_decision(service_id, backend_id) || !within_budget(filter) {
        return 0;
    }
    let Some(mut slot) = TRACE_EVENTS.reserve::<TraceEvent>(0) else {
        if let Some(b) = TRACE_BUDGET.get_ptr_mut(0) {
            // SAFETY: this CPU's element, written by this one program run.
            unsafe { (*b).lost += 1 };
        }
        return 0;
    };
    // SAFETY: a helper that takes no arguments.
    let time_ns = unsafe { bpf_ktime_get_ns() };
    let redirected = sent && outcome & 0xff == xdp_action::XDP_REDIRECT;
    let out_ifindex = if redirected && direction == TraceDirection::ToVip as u32 {
        BACKEND_HOPS.get(backend_id).map_or(0, |h| h.hop.ifindex)
    } else {
        0
    };
    slot.write(TraceEvent {
        time_ns,
        client,
        sent: sent_as.unwrap_or_default(),
        service_id,
        backend_id,
        hash,
        ring_slot,
        in_ifindex: ctx.ingress_ifindex() as u32,
        out_ifindex,
        direction: direction as u8,
        decision: decision as u8,
        verdict,
        reason: outcome as u8,
        affinity,
        tcp_flags,
        _pad: [0; 2],
    });
    // No wakeup per event: the default wakes the reader whenever it has caught up, which
    // costs an interrupt per traced packet; the daemon drains the ring every 20 ms instead.
    slot.submit(BPF_RB_NO_WAKEUP as u64);
    1
}

/// The service a client tuple is for (`ANY` when no rule has it), its affinity, and for a new
/// flow chosen by the ring, the hash and slot that chose it.
#[inline(always)]
fn service_of(client: &FlowKey, selected: u32) -> (u32, u8, u32, u32) {
    let Some(id) = crate::balance::rule_service(client.family, client) else {
        return (ANY, 0, 0, 0);
    };
    // SAFETY: the element stays valid for this program run (RCU).
    let Some(svc) = (unsafe { SERVICES.get(&id) }) else {
        return (id, 0, 0, 0);
    };
    if selected < SELECTED_RING || svc.ring_size == 0 {
        return (id, svc.affinity, 0, 0);
    }
    let seed = svc.hash_seed.wrapping_add(selected - SELECTED_RING);
    let hash = affinity_hash(
        svc.affinity,
        svc.network_prefix,
        &client.src,
        client.src_port,
        seed,
    );
    (id, svc.affinity, hash, hash % svc.ring_size)
}

/// How the packet's backend was found, and which it is (`ANY` for none). `translated`: the
/// packet's flow was found and its addresses rewritten.
#[inline(always)]
fn decision_of(
    direction: u32,
    notes: &lb_common::trace::TraceNotes,
    client: &FlowKey,
    translated: bool,
) -> (TraceDecision, u32) {
    let new = match notes.selected {
        SELECTED_NONE => None,
        _ if notes.reselected != 0 => Some(TraceDecision::Reselected),
        SELECTED_SINGLE => Some(TraceDecision::Single),
        SELECTED_STICKY => Some(TraceDecision::Sticky),
        _ => Some(TraceDecision::NewFlow),
    };
    if direction == TraceDirection::ToVip as u32
        && let Some(decision) = new
    {
        return (decision, notes.backend_id);
    }
    if !translated {
        return (TraceDecision::None, ANY);
    }
    let kind = if direction == TraceDirection::FromBackend as u32 {
        TraceDecision::Reply
    } else {
        TraceDecision::Existing
    };
    // SAFETY: the elements stay valid for this program run (RCU).
    let flow = unsafe { FLOWS.get(client).or_else(|| HALF_OPEN.get(client)) };
    (kind, flow.map_or(ANY, |f| f.backend_id))
}

/// Whether this CPU may write one more event in its window (counting it if not).
#[inline(always)]
fn within_budget(filter: &TraceFilter) -> bool {
    let Some(b) = TRACE_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's element, written by this one program run (XDP is not preempted).
    let b = unsafe { &mut *b };
    // SAFETY: a helper that takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(b.window_start_ns) >= WINDOW_NS {
        b.window_start_ns = now;
        b.written = 0;
    }
    if b.written >= filter.per_cpu_window {
        b.limited += 1;
        return false;
    }
    b.written += 1;
    true
}

/// The packet's tuple as its headers now say (ports zero when it has no TCP or UDP header, or
/// is a later fragment), and where its transport header is.
#[inline(always)]
fn tuple_of(ctx: &XdpContext) -> Option<(FlowKey, usize)> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let proto = u16::from_be(unsafe { (*eth).proto });
    let mut key = FlowKey::default();
    let l4 = if proto == ETH_P_IP {
        let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        key.family = FAMILY_V4;
        key.proto = ip.proto;
        key.src = [ip.src, 0, 0, 0];
        key.dst = [ip.dst, 0, 0, 0];
        let later = crate::fragments::is_later(ip);
        (!later).then(|| ETH_HLEN + crate::packet::ipv4_header_len(ip))
    } else if proto == ETH_P_IPV6 {
        let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        key.family = FAMILY_V6;
        key.src = ip.src;
        key.dst = ip.dst;
        let t = crate::packet::ipv6_transport(ip)?;
        key.proto = t.proto;
        (!t.later).then_some(t.offset)
    } else {
        return None;
    };
    let l4 = l4.unwrap_or(0);
    if l4 != 0
        && (key.proto == PROTO_TCP || key.proto == PROTO_UDP)
        && let Some(ports) = ptr_at::<crate::packet::Ports>(ctx, l4 & 0xfff)
    {
        // SAFETY: as above.
        let ports = unsafe { &*ports };
        key.src_port = ports.src;
        key.dst_port = ports.dst;
    }
    Some((key, l4))
}

/// The TCP flags of the packet whose tuple is `key` and transport header at `l4` (0 for
/// anything else).
#[inline(always)]
fn tcp_flags(ctx: &XdpContext, key: &FlowKey, l4: usize) -> u8 {
    if key.proto != PROTO_TCP || l4 == 0 {
        return 0;
    }
    match ptr_at::<TcpHdr>(ctx, l4 & 0xfff) {
        // SAFETY: `ptr_at` checked that the header lies inside the packet.
        Some(tcp) => unsafe { (*tcp).flags },
        None => 0,
    }
}
