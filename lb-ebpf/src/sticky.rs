//! Extended affinity (`lb_common::sticky`): a new flow goes to its client's sticky backend while
//! that backend takes new flows; the client's flows keep the entry fresh.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    flow::{FlowEntry, FlowKey},
    service::{Affinity, Filtering, ServiceInfo},
    stats::FlowEvent,
    sticky::{StickyEntry, StickyKey, StickyMember, stamp},
};

use crate::{
    maps::{BACKENDS, STICKY, STICKY_MEMBERS},
    select::takes_new_flows,
    stats,
};

/// Whether service `svc` keeps sticky entries: a timeout, spread by the ring, by client.
#[inline(always)]
pub fn applies(svc: &ServiceInfo) -> bool {
    svc.sticky_timeout_ms != 0
        && svc.filtering == Filtering::Multiple as u8
        && svc.affinity != Affinity::None as u8
}

#[inline(always)]
fn key_of(svc: &ServiceInfo, client: &FlowKey) -> StickyKey {
    StickyKey::new(
        svc.hash_seed,
        svc.affinity,
        svc.network_prefix,
        client.family,
        &client.src,
    )
}

/// The backend of service `service_id` that the client of `key` is held to, if its entry holds
/// and the backend takes new flows; the entry is refreshed. Otherwise `None`, with the reason
/// counted (an expired entry, or one whose backend is out of rotation), and the ring decides.
#[inline(always)]
pub fn held_backend(svc: &ServiceInfo, service_id: u32, key: &FlowKey, now: u64) -> Option<u32> {
    let e = STICKY.get_ptr_mut(&key_of(svc, key))?;
    // SAFETY: a pointer to a live LRU element (valid for this run under RCU); its fields get
    // plain stores, so a racing CPU sees one value or the other.
    let e = unsafe { &mut *e };
    if !e.holds(now, svc.sticky_timeout_ms) {
        stats::flow_event(FlowEvent::StickyExpired);
        return None;
    }
    let id = member_in(service_id, e.backend_id, e.member)?;
    if !takes_new_flows(id, service_id) {
        stats::flow_event(FlowEvent::StickyMoved);
        return None;
    }
    e.last_seen_ns = now;
    stats::flow_event(FlowEvent::StickyHit);
    Some(id)
}

/// Service `service_id`'s backend for `member`: `recorded` itself when the entry was recorded by
/// this service (and the id still names that member), else the group's translation.
#[inline(always)]
fn member_in(service_id: u32, recorded: u32, member: u32) -> Option<u32> {
    if let Some(b) = BACKENDS.get(recorded)
        && b.service_id == service_id
        && b.member == member
    {
        return Some(recorded);
    }
    let at = StickyMember { service_id, member };
    // SAFETY: a plain value, copied out at once.
    unsafe { STICKY_MEMBERS.get(&at) }.copied()
}

/// The client of `key` is now held to `backend_id` (of a flow that has just started or completed
/// its handshake): its entry is written, or refreshed if it already names that backend's member.
#[inline(always)]
pub fn remember(svc: &ServiceInfo, key: &FlowKey, backend_id: u32, now: u64) {
    let Some(b) = BACKENDS.get(backend_id) else {
        return;
    };
    let sticky_key = key_of(svc, key);
    if let Some(e) = STICKY.get_ptr_mut(&sticky_key) {
        // SAFETY: as in `held_backend`.
        let e = unsafe { &mut *e };
        e.last_seen_ns = now;
        e.backend_id = backend_id;
        e.member = b.member;
        return;
    }
    let entry = StickyEntry {
        last_seen_ns: now,
        backend_id,
        member: b.member,
    };
    // A full table gives up its least recently used client.
    if STICKY.insert(&sticky_key, &entry, BPF_ANY as u64).is_ok() {
        stats::flow_event(FlowEvent::StickyRecorded);
    }
}

/// A client packet of the sticky flow `e`: once per period (`lb_common::sticky::stamp`), the
/// client's entry is refreshed if it still names the flow's backend. An entry that names
/// another (the client's new flows moved while this one drains) or none (cleared by the
/// administrator, or forgotten by a full table) is left as it is.
#[inline(always)]
pub fn refresh(svc: &ServiceInfo, e: &mut FlowEntry, key: &FlowKey, now: u64) {
    let period = stamp(now);
    if e.sticky_stamp == period {
        return;
    }
    e.sticky_stamp = period;
    let Some(b) = BACKENDS.get(e.backend_id) else {
        return;
    };
    if let Some(s) = STICKY.get_ptr_mut(&key_of(svc, key)) {
        // SAFETY: as in `held_backend`.
        let s = unsafe { &mut *s };
        if s.member == b.member {
            s.last_seen_ns = now;
        }
    }
}
