//! Extended affinity (`sticky_timeout`): a client's first flow records its backend in `STICKY`;
//! later flows of that client go there while it takes new flows, until `sticky_timeout` after
//! the client's last packet, whatever the ring says after a membership change.
//!
//! One table serves all services: an entry is keyed by its service's sticky table (the hash seed,
//! which the services of a `persistence_group` share) and the client (its address, or its network
//! under `affinity: network`). Backend ids are per service, so an entry keeps both the id it was
//! recorded with and the backend's `member` number, which is the same in every service of a
//! group: another service of the group finds its own backend through `STICKY_MEMBERS`.

use crate::addr::{Addr, network};
use crate::service::Affinity;

/// Key of `STICKY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StickyKey {
    /// The service's sticky table (`ServiceInfo::hash_seed`).
    pub table: u32,
    /// The client's family (`FAMILY_V4` or `FAMILY_V6`).
    pub family: u8,
    pub _pad0: u8,
    pub _pad1: u16,
    /// The client's address, or its network (`affinity: network`).
    pub client: Addr,
}
const _: () = assert!(core::mem::size_of::<StickyKey>() == 24);

impl StickyKey {
    /// The key of `client` (of `family`) in sticky table `table`, under the service's affinity.
    #[inline(always)]
    pub const fn new(
        table: u32,
        affinity: u8,
        network_prefix: u8,
        family: u8,
        client: &Addr,
    ) -> Self {
        let client = if affinity == Affinity::Network as u8 {
            network(client, network_prefix)
        } else {
            *client
        };
        Self {
            table,
            family,
            _pad0: 0,
            _pad1: 0,
            client,
        }
    }
}

/// Value of `STICKY`: where the client goes, and when it was last seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StickyEntry {
    /// `bpf_ktime_get_coarse_ns` of the client's last packet (refreshed about once a second by
    /// a busy flow, see [`STAMP_SHIFT`]).
    pub last_seen_ns: u64,
    /// The backend id the entry was recorded with (of the recording service).
    pub backend_id: u32,
    /// That backend's member number (`BackendInfo::member`).
    pub member: u32,
}
const _: () = assert!(core::mem::size_of::<StickyEntry>() == 16);

impl StickyEntry {
    /// Whether the entry still holds at `now` for a service whose timeout is `timeout_ms`.
    #[inline(always)]
    pub const fn holds(&self, now: u64, timeout_ms: u32) -> bool {
        now.wrapping_sub(self.last_seen_ns) < timeout_ms as u64 * 1_000_000
    }
}

/// Key of `STICKY_MEMBERS`: a member of a persistence group, in one of the group's services.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StickyMember {
    pub service_id: u32,
    pub member: u32,
}
const _: () = assert!(core::mem::size_of::<StickyMember>() == 8);

/// A flow refreshes its client's entry when its packet falls in another period of 2^30 ns
/// (about a second) than the flow's last refresh: at most once a second per busy flow, and
/// always after a quiet spell. The flow keeps the period's low 16 bits (`FlowEntry::sticky_stamp`).
pub const STAMP_SHIFT: u32 = 30;

/// The period stamp of time `now`.
#[inline(always)]
pub const fn stamp(now: u64) -> u16 {
    (now >> STAMP_SHIFT) as u16
}

/// Sticky entries when the config does not say and a service uses `sticky_timeout`: a million
/// clients. Without one, the table is the smallest (`limits::MIN_FLOW_ENTRIES`): a reload can
/// add stickiness, a restart makes room.
pub const DEFAULT_STICKY_ENTRIES: u32 = 1 << 20;
