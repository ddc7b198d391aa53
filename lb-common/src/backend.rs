//! Backends: where flows go. Indexed by a backend id that is unique per (service, backend), so
//! counters and health are per service, as Exchange's per-protocol health needs.

use crate::{addr::Addr, kernel_enum::kernel_enum};

kernel_enum! {
    /// A backend's state as the datapath acts on it, and as `xnlb status` shows it.
    BackendState {
        /// Selectable for new flows and forwarding established ones.
        Up = 0 => "up",
        /// Not selectable for new flows; established flows keep going (drain).
        Draining = 1 => "draining",
        /// Failed its health checks: established TCP/UDP flows are re-selected on their next
        /// packet.
        Down = 2 => "down",
        /// Taken out of rotation by the administrator; the datapath treats it exactly as down. A
        /// state of its own so that a restarted controller can tell it from a failed health check.
        Disabled = 3 => "disabled",
    }
    default Down
}

impl BackendState {
    /// Takes new flows.
    #[inline(always)]
    pub const fn in_rotation(self) -> bool {
        matches!(self, BackendState::Up)
    }

    /// Keeps its established flows (up, or draining).
    #[inline(always)]
    pub const fn keeps_flows(self) -> bool {
        matches!(self, BackendState::Up | BackendState::Draining)
    }

    /// [`BackendState::keeps_flows`] of a `state` byte read from `BACKENDS`.
    #[inline(always)]
    pub const fn byte_keeps_flows(state: u8) -> bool {
        state == BackendState::Up as u8 || state == BackendState::Draining as u8
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    pub addr: Addr,
    /// Destination port after DNAT, network byte order; 0 keeps the client's destination port.
    pub port: u16,
    pub family: u8,
    /// A [`BackendState`] as `u8`. Changed in place by the controller as a single byte.
    pub state: u8,
    /// The service this backend belongs to (for per-service counters).
    pub service_id: u32,
    /// The backend's number in its service's sticky table, the same in every service of a
    /// persistence group (`lb_common::sticky`).
    pub member: u32,
}
const _: () = assert!(core::mem::size_of::<BackendInfo>() == 28);

impl BackendInfo {
    /// Whether this is the backend of `service_id` at `addr`: what the controller keeps a flow
    /// balanced to `addr` under (`plan::flow_fates`).
    #[inline(always)]
    pub fn is(&self, service_id: u32, addr: &Addr) -> bool {
        self.service_id == service_id && self.at(addr)
    }

    /// Whether a flow translated to `addr`:`port` (network order) still goes to this backend:
    /// the same address and port (port 0 keeps whatever port the client asked for). What the
    /// datapath checks under a flow's backend id: an id given to a backend elsewhere is never
    /// followed, while a service that a reload splits, merges or renames keeps its flows on
    /// the backends they went to (the controller then re-points them at their new service's
    /// id for that backend).
    #[inline(always)]
    pub fn serves(&self, addr: &Addr, port: u16) -> bool {
        self.at(addr) && (self.port == 0 || self.port == port)
    }

    /// Word by word: BPF cannot call `memcmp`.
    #[inline(always)]
    fn at(&self, addr: &Addr) -> bool {
        self.addr[0] == addr[0]
            && self.addr[1] == addr[1]
            && self.addr[2] == addr[2]
            && self.addr[3] == addr[3]
    }
}
