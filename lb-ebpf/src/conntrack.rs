//! The connection table: a flow keeps its backend (and SNAT port) for its lifetime.
//!
//! A TCP flow is recorded in two stages: half-open (`HALF_OPEN`, `HALF_OPEN_REPLIES`) from its
//! SYN, established (`FLOWS`, `REPLIES`) from the client's first packet after the handshake. A
//! flood of SYNs that never complete churns only the half-open maps; an established flow is
//! evicted only by other established flows. UDP flows, and TCP flows picked up mid-connection
//! (after a restart or an eviction), start established.
//!
//! In two-arm, a flow whose backend port serves its VIP and port alone derives its replies
//! (`derived`): it has no reply entry, and its backend's packets find it under the client
//! tuple they name.
//!
//! Writes are plain stores of values this packet decided (time, state) or whole-entry inserts;
//! there is no shared read-modify-write. Inserts that must be unique use `BPF_NOEXIST`.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::LruHashMap,
};
use lb_common::{
    addr::FAMILY_V6,
    backend::{BackendInfo, BackendState},
    cluster::{BUCKET_HANDOVER, BUCKET_MINE},
    flow::{
        FlowEntry, FlowKey, FlowState, IDLE_CLASS, REPLY_DERIVED, ReplyEntry, SERVES_ALONE, STICKY,
        ServedBy,
    },
    hash::hash_addr_port,
    service::{KEEPS_FLOWS_OF_DOWN, NO_BACKEND, ServiceInfo},
    settings::{DatapathSettings, MAX_SNAT_ADDRS, Mode, SNAT_PORT_ATTEMPTS},
    stats::{DropReason, FlowEvent},
};

use crate::{
    cluster, derived,
    maps::{BACKENDS, FLOWS, HALF_OPEN, HALF_OPEN_REPLIES, REPLIES, SERVICES},
    mem,
    packet::{L4, TCP_FIN, TCP_RST},
    scratch, select, stats, sticky, trace,
};

/// Which pair of maps holds a flow. Always a constant where it is used, so each use compiles to
/// one map.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A TCP flow from its SYN until the handshake completes.
    HalfOpen,
    Established,
}

impl Stage {
    #[inline(always)]
    fn flows(self) -> &'static LruHashMap<FlowKey, FlowEntry> {
        match self {
            Stage::HalfOpen => &HALF_OPEN,
            Stage::Established => &FLOWS,
        }
    }

    #[inline(always)]
    pub fn replies(self) -> &'static LruHashMap<FlowKey, ReplyEntry> {
        match self {
            Stage::HalfOpen => &HALF_OPEN_REPLIES,
            Stage::Established => &REPLIES,
        }
    }

    #[inline(always)]
    fn other(self) -> Self {
        match self {
            Stage::HalfOpen => Stage::Established,
            Stage::Established => Stage::HalfOpen,
        }
    }

    /// The state a new entry of this stage starts in.
    #[inline(always)]
    fn first_state(self) -> FlowState {
        match self {
            Stage::HalfOpen => FlowState::HalfOpen,
            Stage::Established => FlowState::Open,
        }
    }

    /// Counted when this stage's flow map gets a new element.
    #[inline(always)]
    fn new_element(self) -> FlowEvent {
        match self {
            Stage::HalfOpen => FlowEvent::HalfOpenNew,
            Stage::Established => FlowEvent::EstablishedNew,
        }
    }
}

/// Where a client packet goes: the entry of its flow (the flow's own element, or this CPU's
/// scratch copy of the entry just recorded), whose reply tuple holds the translated addresses
/// (backend ← src, client-or-SNAT ← dst). A reference, not a copy: the stack is nearly full.
pub type Flow = &'static FlowEntry;

/// The flow for a client packet to a service: the existing one, or a new one. `ownership` is
/// this node's flags for the packet's bucket (`lb_common::cluster`; `BUCKET_MINE` outside
/// cluster mode): only the owner starts flows; a finishing node carries its own TCP connections
/// to their end; an owner that another node is finishing for takes no connection's middle,
/// which is that node's; UDP moves with the bucket at once.
/// `established` is the key's entry in `FLOWS` (`established_entry`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn client_flow(
    svc: &ServiceInfo,
    service_id: u32,
    key: &FlowKey,
    l4: &L4,
    s: &DatapathSettings,
    ownership: u32,
    established: Option<*mut FlowEntry>,
    now: u64,
) -> Result<Flow, DropReason> {
    let mine = ownership & BUCKET_MINE != 0;
    if !mine && !l4.is_tcp() {
        return Err(DropReason::NotMyBucket);
    }
    let mut closing = None;
    if let Some(entry) = established {
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get plain
        // stores of values this packet decided, so a racing CPU sees one value or the other.
        let e = unsafe { &mut *entry };
        if still_valid(e, Stage::Established, key, l4, s, now) {
            if !FlowState::byte_is_closing(e.state) {
                touch(e, l4, now, true);
                if e.flags & STICKY != 0 {
                    sticky::refresh(svc, e, key, now);
                }
                if s.holds_next_hops() {
                    follow_the_client(e);
                }
                return Ok(e);
            }
            // A new handshake may have reused the closing flow's tuple: the half-open flow, if
            // there is one, is the newer.
            closing = Some(e);
        }
    }
    if l4.is_tcp() {
        let half_open = HALF_OPEN.get_ptr_mut(key);
        if let Some(entry) = half_open {
            // SAFETY: as above.
            let h = unsafe { &mut *entry };
            if still_valid(h, Stage::HalfOpen, key, l4, s, now) {
                h.last_seen_ns = now;
                // A SYN retry, or the client giving up (RST, FIN) before the handshake
                // completed, leaves the flow half-open.
                if l4.is_syn() || l4.is_fin_or_rst() {
                    return Ok(h);
                }
                let flow = establish(key, h, established, now)?;
                if flow.flags & STICKY != 0 {
                    sticky::remember(svc, key, flow.backend_id, now);
                }
                return Ok(flow);
            }
        }
        if let Some(e) = closing {
            touch(e, l4, now, true);
            return Ok(e);
        }
        if l4.is_syn() {
            if !mine {
                return Err(DropReason::NotMyBucket);
            }
            return new_flow(Stage::HalfOpen, svc, service_id, key, half_open, s, now);
        }
        if established.is_none() {
            if !mine || ownership & BUCKET_HANDOVER != 0 {
                return Err(DropReason::NotMyBucket);
            }
            stats::flow_event(FlowEvent::NonSynMiss);
        }
    }
    new_flow(
        Stage::Established,
        svc,
        service_id,
        key,
        established,
        s,
        now,
    )
}

/// The established entry a client packet may belong to. A SYN starts a connection: it never
/// joins an established flow, so that table is not asked (one cold lookup less per new flow).
/// A SYN on an established flow's tuple becomes a half-open flow of its own, which the client's
/// next packet completes only if the established flow is closing or gone; a spoofed one no
/// longer refreshes the flow.
#[inline(always)]
pub fn established_entry(key: &FlowKey, l4: &L4) -> Option<*mut FlowEntry> {
    if l4.is_syn() {
        None
    } else {
        FLOWS.get_ptr_mut(key)
    }
}

/// The service of an established entry: its backend's, while the backend id still names the
/// backend it went to (`client_flow` decides whether the flow goes on).
#[inline(always)]
pub fn service_of(entry: *mut FlowEntry) -> Option<u32> {
    // SAFETY: a pointer to a live LRU element (valid for this run under RCU).
    let e = unsafe { &*entry };
    let b = BACKENDS.get(e.backend_id)?;
    b.serves(&e.reply.src, e.reply.src_port)
        .then_some(b.service_id)
}

/// Held routing: the way back to the client is the way its packets come. `balance::to_vip`
/// wrote this packet's into the scratch entry; an established flow takes it when it differs
/// from the one it holds (a flow re-adopted without one, or opened under FIB routing, or a
/// client that now comes through another router).
#[inline(always)]
fn follow_the_client(e: &mut FlowEntry) {
    let Some(scratch) = scratch::get() else {
        return;
    };
    let (held, now) = (&e.client_hop, &scratch.entry.client_hop);
    let same = held.epoch == now.epoch
        && held.ifindex == now.ifindex
        && held.dmac[0] == now.dmac[0]
        && held.dmac[1] == now.dmac[1]
        && held.dmac[2] == now.dmac[2]
        && held.dmac[3] == now.dmac[3]
        && held.dmac[4] == now.dmac[4]
        && held.dmac[5] == now.dmac[5];
    if !same {
        mem::copy(&mut e.client_hop, now);
    }
}

/// A packet of a live flow, from the client or the backend: fresh again, and closing (then
/// closed) as FINs and RSTs go by.
#[inline(always)]
fn touch(e: &mut FlowEntry, l4: &L4, now: u64, from_client: bool) {
    e.last_seen_ns = now;
    if l4.is_fin_or_rst() {
        let fin = l4.tcp_flags & TCP_FIN != 0;
        let rst = l4.tcp_flags & TCP_RST != 0;
        e.state = FlowState::byte_after(e.state, fin, rst, from_client);
    }
}

/// The client's first packet after the handshake: the half-open flow `h` moves to the
/// established maps with its backend and reply tuple (claimed when the SYN came, so it is this
/// flow's), taking the place of the key's old established entry if there is one.
#[inline(always)]
fn establish(
    key: &FlowKey,
    h: &FlowEntry,
    established: Option<*mut FlowEntry>,
    now: u64,
) -> Result<Flow, DropReason> {
    let Some(scratch) = scratch::get() else {
        return Err(DropReason::FlowTableFull);
    };
    // Copied before the half-open element is removed: a removed LRU element may be reused at once.
    let entry = &mut scratch.entry;
    entry.last_seen_ns = now;
    mem::copy(&mut entry.reply, &h.reply);
    entry.backend_id = h.backend_id;
    entry.state = FlowState::Open as u8;
    entry.flags = h.flags;
    entry.sticky_stamp = h.sticky_stamp;
    // The SYN-ACK's next hop to the client serves the established flow.
    mem::copy(&mut entry.client_hop, &h.client_hop);
    // A flow that derives its replies has no reply entry to move.
    let claimed = entry.flags & REPLY_DERIVED == 0;
    if claimed {
        let owner = &mut scratch.owner;
        owner.client = *key;
        owner.backend_id = entry.backend_id;
        owner._pad = 0;
        // The reply entry first: a backend reply racing this packet finds one stage or the
        // other.
        if REPLIES.insert(&entry.reply, owner, BPF_ANY as u64).is_err() {
            return Err(DropReason::FlowTableFull);
        }
    }
    record(Stage::Established, key, entry, established)?;
    if claimed {
        let _ = HALF_OPEN_REPLIES.remove(&entry.reply);
    }
    if HALF_OPEN.remove(key).is_ok() {
        stats::flow_event(FlowEvent::Established);
    }
    Ok(entry)
}

/// Writes `entry` as the key's flow in `stage`: in place of the key's old entry (expired,
/// closing, or its backend gone) when there is one, since an LRU insert would allocate an element
/// and free the old one.
#[inline(always)]
fn record(
    stage: Stage,
    key: &FlowKey,
    entry: &FlowEntry,
    existing: Option<*mut FlowEntry>,
) -> Result<(), DropReason> {
    match existing {
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get plain
        // stores of values this packet decided, so a racing CPU sees one value or the other.
        Some(e) => unsafe { *e = *entry },
        None => {
            if stage.flows().insert(key, entry, BPF_ANY as u64).is_err() {
                return Err(DropReason::FlowTableFull);
            }
            stats::flow_event(stage.new_element());
        }
    }
    Ok(())
}

/// The flow that owns `entry` (found in `stage`'s replies), if it is alive and still points
/// back at `reply`; it is refreshed by the reply. An entry whose flow is expired or moved owns
/// nothing: it is removed, so it can never rewrite traffic that is not the balancer's (the
/// backend's own connections from a client port a balanced flow once used).
///
/// An established entry whose flow is gone altogether lost it to the LRU (the two maps age
/// apart, and an overloaded table evicts): a TCP packet past the handshake is that flow's
/// reply, so the flow is re-adopted from what the entry names (`readopted`) rather than its
/// reply leaking to the client from the backend's own address. A SYN-ACK is not: a backend
/// answering a new direct connection from the flow's old client port clears the entry (it
/// passes untouched), before any other packet of that connection could be taken for the
/// flow's. UDP has no such mark, so a UDP entry without its flow is only cleared.
#[inline(always)]
pub fn reply_owner(
    stage: Stage,
    entry: &ReplyEntry,
    reply: &FlowKey,
    l4: &L4,
    s: &DatapathSettings,
    now: u64,
) -> Option<*mut FlowEntry> {
    match stage.flows().get_ptr_mut(&entry.client) {
        Some(flow) if answers(stage, flow, &entry.client, reply, false, l4, s, now) => {
            return Some(flow);
        }
        Some(_) => {}
        None if stage == Stage::Established && l4.is_tcp_midstream() => {
            if let Some(flow) = readopt(entry, reply, l4, now) {
                return Some(flow);
            }
        }
        None => {}
    }
    let _ = stage.replies().remove(reply);
    stats::flow_event(FlowEvent::StaleReply);
    None
}

/// The flow of `client` in `stage`, if it is alive, its reply tuple is `reply` and (with
/// `derived_only`) it derives its replies: refreshed by this backend packet.
#[inline(always)]
fn live_flow(
    stage: Stage,
    client: &FlowKey,
    reply: &FlowKey,
    derived_only: bool,
    l4: &L4,
    s: &DatapathSettings,
    now: u64,
) -> Option<*mut FlowEntry> {
    let flow = stage.flows().get_ptr_mut(client)?;
    answers(stage, flow, client, reply, derived_only, l4, s, now).then_some(flow)
}

/// Whether `flow`, the flow of `client` in `stage`, is alive with `reply` as its reply tuple
/// (and, with `derived_only`, derives its replies): then it is refreshed by this backend
/// packet.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn answers(
    stage: Stage,
    flow: *mut FlowEntry,
    client: &FlowKey,
    reply: &FlowKey,
    derived_only: bool,
    l4: &L4,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get plain
    // stores of values this packet decided, so a racing CPU sees one value or the other.
    let f = unsafe { &mut *flow };
    if !f.reply.same(reply)
        || f.expired(client.proto, s, now)
        || (derived_only && f.flags & REPLY_DERIVED == 0)
    {
        return false;
    }
    match stage {
        Stage::Established => touch(f, l4, now, false),
        // The handshake decides: a backend's RST leaves the flow half-open, to expire.
        Stage::HalfOpen => f.last_seen_ns = now,
    }
    true
}

/// The flow that a backend's `reply` answers, found under the client tuple it derives from
/// `served` (`derived`), with a reply entry naming that client and the flow's backend (in
/// scratch). The handshake's packets ask the half-open stage first, since a closing
/// established flow may still have the tuple. Where the backend port serves more now (a
/// reload), only a flow that derived its replies is taken: a flow that claimed the tuple is
/// found by its reply entry. A flow that is gone stays gone, except in cluster mode (`adopt`,
/// a connection of a node that died): nothing in a backend's packet tells a connection the LRU
/// evicted from the backend's own (a direct connection from the same client port, a health
/// probe), whose packets must pass untouched; the client's next packet starts the flow again.
#[inline(always)]
pub fn derived_reply_owner(
    served: &ServedBy,
    reply: &FlowKey,
    l4: &L4,
    s: &DatapathSettings,
    now: u64,
) -> Option<(&'static ReplyEntry, *mut FlowEntry)> {
    let scratch = scratch::get()?;
    let owner = &mut scratch.owner;
    derived::client_of(&mut owner.client, served, reply);
    let client = &owner.client;
    let only = served.flags & SERVES_ALONE == 0;
    let flow = if l4.is_handshake() {
        live_flow(Stage::HalfOpen, client, reply, only, l4, s, now)
            .or_else(|| live_flow(Stage::Established, client, reply, only, l4, s, now))
    } else {
        live_flow(Stage::Established, client, reply, only, l4, s, now)
            .or_else(|| live_flow(Stage::HalfOpen, client, reply, only, l4, s, now))
    };
    let flow = match flow {
        Some(flow) => flow,
        None if s.cluster.enabled != 0 && l4.is_tcp_midstream() => {
            adopt(served, client, reply, l4, now)?
        }
        None => return None,
    };
    // SAFETY: a pointer to a live LRU element (valid for this run under RCU).
    owner.backend_id = unsafe { (*flow).backend_id };
    owner._pad = 0;
    Some((owner, flow))
}

/// Cluster mode: records the established flow of `client` that a backend's TCP packet past
/// the handshake answers, which no node knows any more: its node died before its client sent
/// again (`adopted`). Only the owner of the client's bucket takes it, when nobody is finishing
/// connections there; only where the backend port serves its VIP and port alone, so that
/// `client` is the connection's; and while its backend serves and keeps flows. Its next hop to
/// the client is asked again (held routing: learnt from the client's next packet).
#[inline(always)]
fn adopt(
    served: &ServedBy,
    client: &FlowKey,
    reply: &FlowKey,
    l4: &L4,
    now: u64,
) -> Option<*mut FlowEntry> {
    if !derived::derives(served, client) || !cluster::may_adopt(served, reply, now) {
        return None;
    }
    let met = Met {
        backend_id: served.backend_id,
        flags: REPLY_DERIVED | idle_class(served.service_id),
        event: FlowEvent::Adopted,
    };
    record_from_reply(client, reply, &met, l4, now)
}

/// Whether backend `id` still serves the address and port `reply` comes from, and keeps flows:
/// a flow met from the backend's side may be recorded again only then.
#[inline(always)]
pub fn backend_carries(id: u32, reply: &FlowKey) -> bool {
    BACKENDS.get(id).is_some_and(|b| {
        b.serves(&reply.src, reply.src_port) && BackendState::byte_keeps_flows(b.state)
    })
}

/// The idle class (`FlowEntry::flags` bits) of service `id`'s flows, for a flow recorded
/// without its service at hand (met from the backend's side): a rare path pays the lookup.
#[inline(always)]
fn idle_class(id: u32) -> u8 {
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole
    // elements.
    unsafe { SERVICES.get(&id) }.map_or(0, |svc| svc.flags & IDLE_CLASS)
}

/// What is known of a flow met in its middle from the backend's side.
struct Met {
    backend_id: u32,
    /// `FlowEntry::flags`.
    flags: u8,
    /// Counted with `established_new` when it is recorded.
    event: FlowEvent,
}

/// Records the established flow of `client` met in its middle from the backend's side, from
/// this packet's `reply` tuple: open, and no way back to the client yet (asked again, or,
/// under held routing, learnt from the client's next packet); refreshed by the packet.
#[inline(always)]
fn record_from_reply(
    client: &FlowKey,
    reply: &FlowKey,
    met: &Met,
    l4: &L4,
    now: u64,
) -> Option<*mut FlowEntry> {
    let scratch = scratch::get()?;
    let e = &mut scratch.entry;
    e.last_seen_ns = now;
    mem::copy(&mut e.reply, reply);
    e.backend_id = met.backend_id;
    e.state = FlowState::Open as u8;
    e.flags = met.flags;
    e.sticky_stamp = 0;
    // SAFETY: a next hop is plain integers; all zero means never looked up.
    unsafe { mem::zero(&mut e.client_hop) };
    // NOEXIST: a client packet that re-created the flow meanwhile decides.
    FLOWS.insert(client, e, BPF_NOEXIST as u64).ok()?;
    stats::flow_event(FlowEvent::EstablishedNew);
    stats::flow_event(met.event);
    let flow = FLOWS.get_ptr_mut(client)?;
    // SAFETY: as in `live_flow`.
    touch(unsafe { &mut *flow }, l4, now, false);
    Some(flow)
}

/// Records again the established flow that `entry` names, which the LRU evicted while its
/// reply entry stayed: its client tuple, backend and reply tuple (`reply`, this packet's). Not
/// when its backend no longer serves that address and port, or no longer keeps flows: then
/// the flow is over. Its next hop to the client is asked again (held routing: learnt from the
/// client's next packet).
#[inline(always)]
fn readopt(entry: &ReplyEntry, reply: &FlowKey, l4: &L4, now: u64) -> Option<*mut FlowEntry> {
    if !backend_carries(entry.backend_id, reply) {
        return None;
    }
    let met = Met {
        backend_id: entry.backend_id,
        flags: BACKENDS
            .get(entry.backend_id)
            .map_or(0, |b| idle_class(b.service_id)),
        event: FlowEvent::Readopted,
    };
    record_from_reply(&entry.client, reply, &met, l4, now)
}

/// May an existing entry of `stage` carry this packet? Not when it timed out, when a SYN reuses
/// the tuple of a closing connection, when its backend id now names another backend (the flow's
/// own was removed: the address and port it was translated to are checked, not just the id;
/// the service is not, so a reload that splits or merges services keeps its flows), when its
/// backend is down, or when its reply tuple (an SNAT port, in one-arm) no longer belongs to it.
#[inline(always)]
fn still_valid(
    e: &FlowEntry,
    stage: Stage,
    key: &FlowKey,
    l4: &L4,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    if e.expired(key.proto, s, now) || (l4.is_syn() && FlowState::byte_is_closing(e.state)) {
        return false;
    }
    let Some(b) = BACKENDS.get(e.backend_id) else {
        stats::flow_event(FlowEvent::BackendRetired);
        trace::note_reselected();
        return false;
    };
    if !b.serves(&e.reply.src, e.reply.src_port) {
        stats::flow_event(FlowEvent::BackendRetired);
        trace::note_reselected();
        return false;
    }
    if !BackendState::byte_keeps_flows(b.state) && !keeps_flows_of_down(b) {
        stats::flow_event(FlowEvent::ReselectedDown);
        trace::note_reselected();
        return false;
    }
    // An LRU may evict the reply entry alone (the two maps age apart), and then another flow
    // may take the tuple (an SNAT port, in one-arm). A flow whose replies could no longer be
    // translated must not carry another packet: it claims its reply tuple anew (two-arm: the
    // same one, normally) or picks another port. A flow that derives its replies has no entry.
    if e.flags & REPLY_DERIVED != 0 {
        return true;
    }
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole elements
    // or store single fields, so a read sees old or new values, never freed memory.
    let owned = matches!(unsafe { stage.replies().get(&e.reply) }, Some(r) if r.client.same(key));
    if !owned {
        stats::flow_event(FlowEvent::ReplyReclaimed);
        return false;
    }
    true
}

/// Whether `b` is down (not disabled) in a service with `on_backend_down: keep`. Asked only of
/// a backend out of rotation, so the service lookup costs nothing on the common path.
#[inline(always)]
fn keeps_flows_of_down(b: &BackendInfo) -> bool {
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole
    // elements.
    b.state == BackendState::Down as u8
        && matches!(unsafe { SERVICES.get(&b.service_id) },
            Some(svc) if svc.flags & KEEPS_FLOWS_OF_DOWN != 0)
}

/// A new flow in `stage`: a backend selected, its reply tuple claimed (an SNAT port in one-arm),
/// the entry written over `existing` (the key's stale entry in that stage) or inserted.
#[inline(always)]
fn new_flow(
    stage: Stage,
    svc: &ServiceInfo,
    service_id: u32,
    key: &FlowKey,
    existing: Option<*mut FlowEntry>,
    s: &DatapathSettings,
    now: u64,
) -> Result<Flow, DropReason> {
    let (backend_id, how) = select::backend(svc, service_id, key, now);
    if backend_id == NO_BACKEND {
        return Err(DropReason::NoBackend);
    }
    let Some(backend) = BACKENDS.get(backend_id) else {
        return Err(DropReason::NoBackend);
    };
    let Some(scratch) = scratch::get() else {
        return Err(DropReason::FlowTableFull);
    };
    trace::note_selected(&mut scratch.trace, how, backend_id);
    let owner = &mut scratch.owner;
    owner.client = *key;
    owner.backend_id = backend_id;
    owner._pad = 0;
    let entry = &mut scratch.entry;
    if s.mode == Mode::OneArm as u8 {
        claim_snat_port(stage, key, backend, owner, &mut entry.reply, s, now)?;
        entry.flags = 0;
    } else {
        write_reply_tuple(&mut entry.reply, key, backend, &key.src, key.src_port);
        // (It sets the entry's flags.)
        if !two_arm_reply(stage == Stage::HalfOpen, existing, s, now) {
            return Err(DropReason::ReplyCollision);
        }
    }
    entry.last_seen_ns = now;
    entry.backend_id = backend_id;
    entry.state = stage.first_state() as u8;
    entry.flags |= svc.flags & IDLE_CLASS;
    let sticky = sticky::applies(svc);
    if sticky {
        entry.flags |= STICKY;
    }
    entry.sticky_stamp = lb_common::sticky::stamp(now);
    if !s.holds_next_hops() {
        // SAFETY: a next hop is plain integers; all zero means never looked up.
        unsafe { mem::zero(&mut entry.client_hop) };
    }
    // (Held routing: `balance::to_vip` wrote the way back to the client there.)
    record(stage, key, entry, existing)?;
    stats::new_flow(service_id, backend_id);
    // A client is remembered once its flow is established: spoofed SYNs leave no sticky entries.
    if sticky && stage == Stage::Established {
        sticky::remember(svc, key, backend_id, now);
    }
    Ok(entry)
}

/// Two-arm: how the new flow that scratch holds (its reply tuple in the entry, its client and
/// backend in the owner) finds its replies, in the half-open stage or the established one:
/// derived, where its backend port serves its VIP and port alone (the entry's flags say so), or
/// by claiming its reply tuple (`existing`: the client's stale entry in that stage). False when
/// another flow holds the tuple. A frame of its own: the claim's locals stay off the stage's
/// frame, which the verifier bounds at 512 bytes together with its callees'.
#[inline(never)]
fn two_arm_reply(
    half_open: bool,
    existing: Option<*mut FlowEntry>,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    let Some(scratch) = scratch::get() else {
        return false;
    };
    let (entry, owner) = (&mut scratch.entry, &scratch.owner);
    let (reply, client) = (&entry.reply, &owner.client);
    let served = derived::served_by(reply);
    if let Some(served) = served
        && derived::derives(served, client)
    {
        entry.flags = REPLY_DERIVED;
        return true;
    }
    entry.flags = 0;
    if served.is_some_and(|v| derived::holds(v, s, now)) {
        return false;
    }
    if half_open {
        claim_two_arm(Stage::HalfOpen, reply, owner, existing, s, now)
    } else {
        claim_two_arm(Stage::Established, reply, owner, existing, s, now)
    }
}

/// Two-arm, a backend port that serves more than the flow's VIP and port: claims `reply` in
/// `stage` for `owner`, the client of a new flow (`existing`: its stale entry in that stage).
/// False when another live flow holds it.
#[inline(always)]
fn claim_two_arm(
    stage: Stage,
    reply: &FlowKey,
    owner: &ReplyEntry,
    existing: Option<*mut FlowEntry>,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    // A client reusing its port for the same backend finds its old reply entry: refreshed in
    // place, without a new element.
    // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get plain
    // stores of values this packet decided, so a racing CPU sees one value or the other.
    let ours = existing.is_some_and(|e| unsafe { (*e).reply.same(reply) });
    if ours && refresh_own(stage, reply, owner) {
        return true;
    }
    // Two services on one VIP may send a client's reused source port to the same backend port:
    // the backend sees the old connection's tuple again, as after any port reuse, and a new
    // SYN may take it over from a closing flow (as the backend's TIME_WAIT allows).
    let takeover = if stage == Stage::HalfOpen {
        Takeover::Closing
    } else {
        Takeover::GoneOnly
    };
    claim(stage, reply, owner, takeover, s, now)
}

/// Writes into `out` the tuple the backend's replies carry: from the backend to `to:to_port`.
#[inline(always)]
fn write_reply_tuple(
    out: &mut FlowKey,
    key: &FlowKey,
    backend: &BackendInfo,
    to: &[u32; 4],
    to_port: u16,
) {
    mem::copy(&mut out.src, &backend.addr);
    mem::copy(&mut out.dst, to);
    out.src_port = if backend.port == 0 {
        key.dst_port
    } else {
        backend.port
    };
    out.dst_port = to_port;
    out.proto = key.proto;
    out.family = key.family;
    out._pad = [0; 2];
}

/// One-arm: an SNAT address by client hash, then ports by hash until one is free for this
/// backend's (address, port), written into `reply`. The reply tuple is unique over both stages,
/// so no two flows share a port towards the same backend.
#[inline(always)]
fn claim_snat_port(
    stage: Stage,
    key: &FlowKey,
    backend: &BackendInfo,
    owner: &ReplyEntry,
    reply: &mut FlowKey,
    s: &DatapathSettings,
    now: u64,
) -> Result<(), DropReason> {
    // The addresses of the flow's family: IPv4 ones first, then IPv6 ones.
    let (base, count) = if key.family == FAMILY_V6 {
        (s.snat_count, s.snat_count_v6 as u32)
    } else {
        (0, s.snat_count)
    };
    if count == 0 || (base + count) as usize > MAX_SNAT_ADDRS || s.snat_port_max < s.snat_port_min {
        return Err(DropReason::SnatExhausted);
    }
    let hash = hash_addr_port(&key.src, key.src_port, key.dst[0]);
    let span = (s.snat_port_max - s.snat_port_min) as u32 + 1;
    // The verifier needs the index bounded by a mask; LLVM would drop a plain mask (it knows
    // `count <= MAX_SNAT_ADDRS`), so the index is read back opaquely first.
    let idx = (base + hash % count) as usize;
    // SAFETY: reads a local variable.
    let idx = unsafe { core::ptr::read_volatile(&idx) } & (MAX_SNAT_ADDRS - 1);
    let addr = s.snat_addrs[idx];
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let pick = hash_addr_port(&key.src, key.src_port, hash ^ attempt) % span;
        let port = (s.snat_port_min as u32 + pick) as u16;
        write_reply_tuple(reply, key, backend, &addr, port.to_be());
        if claim(stage, reply, owner, Takeover::GoneOnly, s, now) {
            return Ok(());
        }
        stats::flow_event(FlowEvent::SnatPortRetry);
    }
    Err(DropReason::SnatExhausted)
}

/// Whose reply tuple a new flow may take.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takeover {
    /// Only from a flow that is gone.
    GoneOnly,
    /// Also from a closing flow (a TCP SYN reusing the tuple, as the backend's TIME_WAIT allows).
    Closing,
}

/// `reply` is still held in `stage` by this client: points it at the new backend, in place.
/// False when the entry is gone or belongs to another flow (then `claim` decides).
#[inline(always)]
fn refresh_own(stage: Stage, reply: &FlowKey, owner: &ReplyEntry) -> bool {
    match stage.replies().get_ptr_mut(reply) {
        Some(held) => {
            // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get
            // plain stores of values this packet decided, so a racing CPU sees one value or the
            // other.
            let held = unsafe { &mut *held };
            if !held.client.same(&owner.client) {
                return false;
            }
            if held.backend_id != owner.backend_id {
                held.backend_id = owner.backend_id;
            }
            true
        }
        None => false,
    }
}

/// Takes `reply` in `stage` for `owner`: free, already ours, or held by a flow that is gone (or
/// closing, when `takeover` allows). A live flow of the other stage holding it keeps it; a gone
/// one loses its entry there, so the backend's replies find only the new owner.
#[inline(always)]
fn claim(
    stage: Stage,
    reply: &FlowKey,
    owner: &ReplyEntry,
    takeover: Takeover,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    let other = stage.other();
    match holder(other, reply, owner, takeover, s, now) {
        Holder::Live => return false,
        Holder::Gone => {
            let _ = other.replies().remove(reply);
        }
        Holder::Nobody | Holder::Owner => {}
    }
    if stage
        .replies()
        .insert(reply, owner, BPF_NOEXIST as u64)
        .is_ok()
    {
        return true;
    }
    holder(stage, reply, owner, takeover, s, now) != Holder::Live
        && stage.replies().insert(reply, owner, BPF_ANY as u64).is_ok()
}

/// Who holds a reply tuple in one stage, as seen by a flow that wants it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    Nobody,
    /// The flow that wants it (its client tuple).
    Owner,
    /// A flow that no longer owns it (see `owner_gone`).
    Gone,
    /// Another live flow.
    Live,
}

#[inline(always)]
fn holder(
    stage: Stage,
    reply: &FlowKey,
    owner: &ReplyEntry,
    takeover: Takeover,
    s: &DatapathSettings,
    now: u64,
) -> Holder {
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole elements or
    // store single fields, so a read sees old or new values, never freed memory.
    match unsafe { stage.replies().get(reply) } {
        None => Holder::Nobody,
        Some(held) if held.client.same(&owner.client) => Holder::Owner,
        Some(held) if owner_gone(stage, &held.client, reply, takeover, s, now) => Holder::Gone,
        Some(_) => Holder::Live,
    }
}

/// The flow `client` (in `stage`) no longer owns `reply`: it is gone, expired (a closed one soon:
/// `tcp_closed_timeout`, which frees its SNAT port), moved to another tuple, or (with
/// `Takeover::Closing`) closing.
#[inline(always)]
fn owner_gone(
    stage: Stage,
    client: &FlowKey,
    reply: &FlowKey,
    takeover: Takeover,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole elements or
    // store single fields, so a read sees old or new values, never freed memory.
    match unsafe { stage.flows().get(client) } {
        None => true,
        Some(f) => {
            !f.reply.same(reply)
                || f.expired(client.proto, s, now)
                || (takeover == Takeover::Closing && FlowState::byte_is_closing(f.state))
        }
    }
}

/// The live flow of `client`, established or half-open, for an ICMP error about one of its
/// packets: found, not refreshed (an error says nothing of the flow's life).
#[inline(always)]
pub fn flow_of_client(client: &FlowKey, s: &DatapathSettings, now: u64) -> Option<*mut FlowEntry> {
    alive(Stage::Established, client, None, s, now)
        .or_else(|| alive(Stage::HalfOpen, client, None, s, now))
}

/// The live flow whose backend sends `reply`, with its client tuple, for an ICMP error about
/// one of its packets to the backend: by derivation (two-arm), else by its reply entry; found,
/// not refreshed.
#[inline(always)]
pub fn flow_of_reply(
    reply: &FlowKey,
    s: &DatapathSettings,
    now: u64,
) -> Option<(&'static FlowKey, *mut FlowEntry)> {
    if s.mode == Mode::TwoArm as u8
        && let Some(served) = derived::served_by(reply)
    {
        // (Derived into scratch: a zeroed key on the stack would be a `memset` call.)
        let client = &mut scratch::get()?.derived;
        derived::client_of(client, served, reply);
        if let Some(flow) = alive(Stage::Established, client, Some(reply), s, now)
            .or_else(|| alive(Stage::HalfOpen, client, Some(reply), s, now))
        {
            return Some((client, flow));
        }
    }
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole
    // elements, so a read sees old or new values, never freed memory.
    if let Some(entry) = unsafe { REPLIES.get(reply) }
        && let Some(flow) = alive(Stage::Established, &entry.client, Some(reply), s, now)
    {
        return Some((&entry.client, flow));
    }
    // SAFETY: as above.
    let entry = unsafe { HALF_OPEN_REPLIES.get(reply) }?;
    let flow = alive(Stage::HalfOpen, &entry.client, Some(reply), s, now)?;
    Some((&entry.client, flow))
}

/// `client`'s flow in `stage`, if it is alive (and, given `reply`, has that reply tuple).
#[inline(always)]
fn alive(
    stage: Stage,
    client: &FlowKey,
    reply: Option<&FlowKey>,
    s: &DatapathSettings,
    now: u64,
) -> Option<*mut FlowEntry> {
    let flow = stage.flows().get_ptr_mut(client)?;
    // SAFETY: a pointer to a live LRU element (valid for this run under RCU); only read.
    let f = unsafe { &*flow };
    if f.expired(client.proto, s, now) || reply.is_some_and(|r| !f.reply.same(r)) {
        return None;
    }
    Some(flow)
}
