//! Sizes of the datapath's maps and the limits the config is checked against: defined once,
//! used by the map declarations, the loader and the config validation.

/// Services: `SERVICES` and `SERVICE_STATS` elements, and the most a config may define.
pub const MAX_SERVICES: u32 = 256;
/// Backends over all services: `BACKENDS`, `BACKEND_ADDRS` and `BACKEND_STATS` elements.
pub const MAX_BACKENDS: u32 = 4096;
/// Distinct VIP addresses (`VIPS` elements).
pub const MAX_VIPS: u32 = 1024;
/// Port-rule prefixes over all services (`SERVICE_RULES` elements).
pub const MAX_RULE_PREFIXES: u32 = 8192;

/// Connection-table entries (each of `FLOWS` and `REPLIES`) when the config does not say.
pub const DEFAULT_FLOW_ENTRIES: u32 = 262_144;
/// Half-open entries (each of `HALF_OPEN` and `HALF_OPEN_REPLIES`) when the config does not say:
/// this share of the connection table, and never fewer than `MIN_FLOW_ENTRIES`.
pub const DEFAULT_HALF_OPEN_SHARE: u32 = 4;
/// The smallest and largest connection table (and half-open table) a config may ask for.
pub const MIN_FLOW_ENTRIES: u32 = 1024;
pub const MAX_FLOW_ENTRIES: u32 = 1 << 24;

/// Services that get a ring table pair at start when the config has few: room to grow by reload.
pub const MIN_RING_SERVICES: u32 = 16;
