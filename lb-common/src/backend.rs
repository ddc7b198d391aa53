//! Backends: where flows go. Indexed by a backend id that is unique per (service, backend), so
//! counters and health are per service, as Exchange's per-protocol health needs.

use crate::addr::Addr;

/// Selectable for new flows and forwarding established ones.
pub const BACKEND_UP: u8 = 0;
/// Not selectable for new flows; established flows keep going (drain).
pub const BACKEND_DRAINING: u8 = 1;
/// Failed its health checks: established TCP/UDP flows are re-selected on their next packet.
pub const BACKEND_DOWN: u8 = 2;
/// Taken out of rotation by the administrator; the datapath treats it exactly as down. A state
/// of its own so that a restarted controller can tell it from a failed health check.
pub const BACKEND_DISABLED: u8 = 3;

/// Whether a backend in `state` keeps its established flows (up, or draining).
#[inline(always)]
pub const fn keeps_flows(state: u8) -> bool {
    state == BACKEND_UP || state == BACKEND_DRAINING
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    pub addr: Addr,
    /// Destination port after DNAT, network byte order; 0 keeps the client's destination port.
    pub port: u16,
    pub family: u8,
    /// One of the `BACKEND_*` states. Changed in place by the controller as a single byte.
    pub state: u8,
    /// The service this backend belongs to (for per-service counters).
    pub service_id: u32,
}
const _: () = assert!(core::mem::size_of::<BackendInfo>() == 24);
