//! The connection table: a flow keeps its backend (and SNAT port) for its lifetime.
//!
//! Writes are plain stores of values this packet decided (time, state) or whole-entry inserts;
//! there is no shared read-modify-write. Inserts that must be unique use `BPF_NOEXIST`.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    backend::{BackendInfo, BackendState},
    flow::{FlowEntry, FlowKey, FlowState, ReplyEntry},
    hash::hash_addr_port,
    service::{NO_BACKEND, ServiceInfo},
    settings::{DatapathSettings, MAX_SNAT_ADDRS, Mode, SNAT_PORT_ATTEMPTS},
    stats::{DropReason, FlowEvent},
};

use crate::{
    maps::{BACKENDS, FLOWS, REPLIES},
    packet::L4,
    select, stats,
};

/// Where a client packet goes: the reply tuple holds the translated addresses
/// (backend ← src, client-or-SNAT ← dst).
pub struct Flow {
    pub reply: FlowKey,
    pub backend_id: u32,
}

/// The flow for a client packet to a service: the existing one, or a new one.
#[inline(always)]
pub fn client_flow(
    svc: &ServiceInfo,
    service_id: u32,
    key: &FlowKey,
    l4: &L4,
    s: &DatapathSettings,
    now: u64,
) -> Result<Flow, DropReason> {
    let existing = FLOWS.get_ptr_mut(key);
    if let Some(entry) = existing {
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get plain
        // stores of values this packet decided, so a racing CPU sees one value or the other.
        let e = unsafe { &mut *entry };
        if still_valid(e, service_id, key, l4, s, now) {
            e.last_seen_ns = now;
            if l4.is_fin_or_rst() {
                e.state = FlowState::Closing as u8;
            }
            return Ok(Flow {
                reply: e.reply,
                backend_id: e.backend_id,
            });
        }
    } else if l4.is_tcp() && !l4.is_syn() {
        stats::flow_event(FlowEvent::NonSynMiss);
    }
    new_flow(svc, service_id, key, l4.is_syn(), existing, s, now)
}

/// Whether the flow that owns `entry` is alive and still points back at `reply`; if so it is
/// refreshed by the reply. An entry whose flow is gone, expired or moved owns nothing: it is
/// removed, so it can never rewrite traffic that is not the balancer's (the backend's own
/// connections from a client port a balanced flow once used).
#[inline(always)]
pub fn reply_owner_alive(
    entry: &ReplyEntry,
    reply: &FlowKey,
    l4: &L4,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    if let Some(flow) = FLOWS.get_ptr_mut(&entry.client) {
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get plain
        // stores of values this packet decided, so a racing CPU sees one value or the other.
        let f = unsafe { &mut *flow };
        if f.reply.same(reply) && !f.expired(entry.client.proto, s, now) {
            f.last_seen_ns = now;
            if l4.is_fin_or_rst() {
                f.state = FlowState::Closing as u8;
            }
            return true;
        }
    }
    let _ = REPLIES.remove(reply);
    stats::flow_event(FlowEvent::StaleReply);
    false
}

/// May an existing entry carry this packet? Not when it timed out, when a SYN reuses the
/// tuple of a closing connection, when its backend id now names another backend (the flow's
/// own was removed: the address it was translated to is checked, not just the id), when its
/// backend is down, or (one-arm) when its SNAT port no longer belongs to it.
#[inline(always)]
fn still_valid(
    e: &FlowEntry,
    service_id: u32,
    key: &FlowKey,
    l4: &L4,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    if e.expired(key.proto, s, now) || (l4.is_syn() && e.state == FlowState::Closing as u8) {
        return false;
    }
    let Some(b) = BACKENDS.get(e.backend_id) else {
        stats::flow_event(FlowEvent::BackendRetired);
        return false;
    };
    if !b.is(service_id, &e.reply.src) {
        stats::flow_event(FlowEvent::BackendRetired);
        return false;
    }
    if !BackendState::byte_keeps_flows(b.state) {
        stats::flow_event(FlowEvent::ReselectedDown);
        return false;
    }
    if s.mode == Mode::OneArm as u8 {
        // An LRU may evict the reply entry alone; then another flow may have taken the port.
        // SAFETY: the element stays valid for this program run (RCU); writers replace whole
        // elements or store single fields, so a read sees old or new values, never freed memory.
        let owned = matches!(unsafe { REPLIES.get(&e.reply) }, Some(r) if r.client.same(key));
        if !owned {
            stats::flow_event(FlowEvent::ReplyReclaimed);
            return false;
        }
    }
    true
}

#[inline(always)]
fn new_flow(
    svc: &ServiceInfo,
    service_id: u32,
    key: &FlowKey,
    syn: bool,
    existing: Option<*mut FlowEntry>,
    s: &DatapathSettings,
    now: u64,
) -> Result<Flow, DropReason> {
    let backend_id = select::backend(svc, service_id, key);
    if backend_id == NO_BACKEND {
        return Err(DropReason::NoBackend);
    }
    let Some(backend) = BACKENDS.get(backend_id) else {
        return Err(DropReason::NoBackend);
    };
    let owner = ReplyEntry {
        client: *key,
        backend_id,
        _pad: 0,
    };
    let reply = if s.mode == Mode::OneArm as u8 {
        claim_snat_port(key, backend, &owner, s, now)?
    } else {
        let reply = reply_tuple(key, backend, key.src, key.src_port);
        // A client reusing its port for the same backend finds its old reply entry: refreshed
        // in place, without a new element.
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get plain
        // stores of values this packet decided, so a racing CPU sees one value or the other.
        let ours = existing.is_some_and(|e| unsafe { (*e).reply.same(&reply) });
        if !(ours && refresh_own(&reply, &owner)) {
            // Two services on one VIP may send a client's reused source port to the same
            // backend port: the backend sees the old connection's tuple again, as after any
            // port reuse, and a new SYN may take it over from a closing flow (as the backend's
            // TIME_WAIT allows).
            if !claim(&reply, &owner, Takeover::from(syn), s, now) {
                return Err(DropReason::ReplyCollision);
            }
        }
        reply
    };
    let entry = FlowEntry {
        last_seen_ns: now,
        reply,
        backend_id,
        state: FlowState::Open as u8,
        _pad: [0; 3],
    };
    match existing {
        // The key's old entry (expired, closing, or its backend gone) becomes the new flow in
        // place: an LRU insert would allocate an element and free the old one.
        // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get plain
        // stores of values this packet decided, so a racing CPU sees one value or the other.
        Some(e) => unsafe { *e = entry },
        None => {
            if FLOWS.insert(key, &entry, BPF_ANY as u64).is_err() {
                return Err(DropReason::FlowTableFull);
            }
        }
    }
    stats::new_flow(service_id, backend_id);
    Ok(Flow { reply, backend_id })
}

/// The tuple the backend's replies carry: from the backend to `to:to_port`.
#[inline(always)]
fn reply_tuple(key: &FlowKey, backend: &BackendInfo, to: [u32; 4], to_port: u16) -> FlowKey {
    FlowKey {
        src: backend.addr,
        dst: to,
        src_port: if backend.port == 0 {
            key.dst_port
        } else {
            backend.port
        },
        dst_port: to_port,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// One-arm: an SNAT address by client hash, then ports by hash until one is free for this
/// backend's (address, port). The reply tuple is unique, so no two flows share a port towards
/// the same backend.
#[inline(always)]
fn claim_snat_port(
    key: &FlowKey,
    backend: &BackendInfo,
    owner: &ReplyEntry,
    s: &DatapathSettings,
    now: u64,
) -> Result<FlowKey, DropReason> {
    let count = s.snat_count;
    if count == 0 || count as usize > MAX_SNAT_ADDRS || s.snat_port_max < s.snat_port_min {
        return Err(DropReason::SnatExhausted);
    }
    let hash = hash_addr_port(&key.src, key.src_port, key.dst[0]);
    // The verifier needs the index bounded by a mask; LLVM would drop a plain mask (it knows
    // `count <= MAX_SNAT_ADDRS`), so the index is read back opaquely first.
    let idx = (hash % count) as usize;
    // SAFETY: reads a local variable.
    let idx = unsafe { core::ptr::read_volatile(&idx) } & (MAX_SNAT_ADDRS - 1);
    let addr = s.snat_addrs[idx];
    let span = (s.snat_port_max - s.snat_port_min) as u32 + 1;
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let pick = hash_addr_port(&key.src, key.src_port, hash ^ attempt) % span;
        let port = (s.snat_port_min as u32 + pick) as u16;
        let reply = reply_tuple(key, backend, addr, port.to_be());
        if claim(&reply, owner, Takeover::GoneOnly, s, now) {
            return Ok(reply);
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
    /// Also from a closing flow (a TCP SYN reusing the tuple).
    Closing,
}

impl Takeover {
    #[inline(always)]
    fn from(syn: bool) -> Self {
        if syn { Self::Closing } else { Self::GoneOnly }
    }
}

/// `reply` is still held by this client: points it at the new backend, in place. False when the
/// entry is gone or belongs to another flow (then `claim` decides).
#[inline(always)]
fn refresh_own(reply: &FlowKey, owner: &ReplyEntry) -> bool {
    match REPLIES.get_ptr_mut(reply) {
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

/// Takes `reply` for `owner`: free, already ours, or held by a flow that is gone (or closing,
/// when `takeover` allows).
#[inline(always)]
fn claim(
    reply: &FlowKey,
    owner: &ReplyEntry,
    takeover: Takeover,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    if REPLIES.insert(reply, owner, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole elements or
    // store single fields, so a read sees old or new values, never freed memory.
    let free = match unsafe { REPLIES.get(reply) } {
        None => true,
        Some(held) => {
            held.client.same(&owner.client) || owner_gone(&held.client, reply, takeover, s, now)
        }
    };
    free && REPLIES.insert(reply, owner, BPF_ANY as u64).is_ok()
}

/// The flow `client` no longer owns `reply`: it is gone, expired, moved to another tuple, or
/// (with `Takeover::Closing`) closing.
#[inline(always)]
fn owner_gone(
    client: &FlowKey,
    reply: &FlowKey,
    takeover: Takeover,
    s: &DatapathSettings,
    now: u64,
) -> bool {
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole elements or
    // store single fields, so a read sees old or new values, never freed memory.
    match unsafe { FLOWS.get(client) } {
        None => true,
        Some(f) => {
            !f.reply.same(reply)
                || f.expired(client.proto, s, now)
                || (takeover == Takeover::Closing && f.state == FlowState::Closing as u8)
        }
    }
}
