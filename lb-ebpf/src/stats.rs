//! Per-CPU counters: each CPU increments its own slot, so there is no shared read-modify-write.

use lb_common::stats::{DropReason, FlowEvent, PassReason};

use crate::maps::{BACKEND_STATS, DROPS, FLOW_EVENTS, PASSES, SERVICE_STATS, XDP_ACTIONS};

#[inline(always)]
fn bump(slot: Option<*mut u64>) {
    if let Some(p) = slot {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the program is not preempted while
        // it runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn drop_reason(reason: DropReason) {
    bump(DROPS.get_ptr_mut(reason as u32));
}

#[inline(always)]
pub fn pass_reason(reason: PassReason) {
    bump(PASSES.get_ptr_mut(reason as u32));
}

#[inline(always)]
pub fn flow_event(event: FlowEvent) {
    bump(FLOW_EVENTS.get_ptr_mut(event as u32));
}

#[inline(always)]
pub fn xdp_action(action: u32) {
    bump(XDP_ACTIONS.get_ptr_mut(action));
}

#[inline(always)]
pub fn service_packet(service_id: u32, bytes: u64) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the program is not preempted while
        // it runs.
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
    }
}

#[inline(always)]
pub fn service_dropped(service_id: u32) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the program is not preempted while
        // it runs.
        unsafe { (*s).dropped += 1 };
    }
}

#[inline(always)]
pub fn new_flow(service_id: u32, backend_id: u32) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the program is not preempted while
        // it runs.
        unsafe { (*s).new_flows += 1 };
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the program is not preempted while
        // it runs.
        unsafe { (*b).new_flows += 1 };
    }
}

#[inline(always)]
pub fn to_backend(backend_id: u32, bytes: u64) {
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the program is not preempted while
        // it runs.
        let b = unsafe { &mut *b };
        b.to_backend_packets += 1;
        b.to_backend_bytes += bytes;
    }
}

#[inline(always)]
pub fn to_client(backend_id: u32, bytes: u64) {
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the program is not preempted while
        // it runs.
        let b = unsafe { &mut *b };
        b.to_client_packets += 1;
        b.to_client_bytes += bytes;
    }
}
