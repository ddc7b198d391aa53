//! Backend choice for a new flow. The consistent-hash table is built in userspace; here it is
//! only indexed, with the hash shared with userspace (`lb_common::hash`).

use lb_common::{
    backend::BackendState,
    flow::FlowKey,
    hash::affinity_hash,
    service::{Filtering, NO_BACKEND, ServiceInfo},
    trace::{SELECTED_NONE, SELECTED_RING, SELECTED_SINGLE, SELECTED_STICKY},
};

use crate::{
    maps::{BACKENDS, RING},
    sticky,
};

/// Extra ring probes (with other seeds) when the slot's backend was marked down, or its id
/// given to another service's backend, but the controller has not yet switched the table.
const DOWN_RETRIES: u32 = 2;

/// Backend `backend_id` takes new flows of service `service_id`: up, and still this service's
/// (a reload writes a reused id before it switches the old table away from it).
#[inline(always)]
pub fn takes_new_flows(backend_id: u32, service_id: u32) -> bool {
    matches!(BACKENDS.get(backend_id),
        Some(b) if b.state == BackendState::Up as u8 && b.service_id == service_id)
}

/// The backend for a new flow of service `service_id`, or `NO_BACKEND` when it has no usable
/// one: the client's sticky backend if it has one, else the ring's choice. With it, how it was
/// chosen (`lb_common::trace::SELECTED_*`, for a trace).
#[inline(always)]
pub fn backend(svc: &ServiceInfo, service_id: u32, key: &FlowKey, now: u64) -> (u32, u32) {
    if svc.filtering == Filtering::Single as u8 {
        let id = svc.single_backend;
        return if takes_new_flows(id, service_id) {
            (id, SELECTED_SINGLE)
        } else {
            (NO_BACKEND, SELECTED_NONE)
        };
    }
    if svc.ring_size == 0 {
        return (NO_BACKEND, SELECTED_NONE);
    }
    if sticky::applies(svc)
        && let Some(id) = sticky::held_backend(svc, service_id, key, now)
    {
        return (id, SELECTED_STICKY);
    }
    for attempt in 0..=DOWN_RETRIES {
        let seed = svc.hash_seed.wrapping_add(attempt);
        let hash = affinity_hash(
            svc.affinity,
            svc.network_prefix,
            &key.src,
            key.src_port,
            seed,
        );
        let slot = svc.ring_base.wrapping_add(hash % svc.ring_size);
        if let Some(&id) = RING.get(slot)
            && takes_new_flows(id, service_id)
        {
            return (id, SELECTED_RING + attempt);
        }
    }
    (NO_BACKEND, SELECTED_NONE)
}
