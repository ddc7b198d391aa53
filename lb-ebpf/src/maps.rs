//! Every map of the datapath. Names and sizes come from `lb_common::{maps, limits}`; the
//! controller sets the connection table's and the rings' real sizes from its config before
//! loading.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::{
    addr::AddrKey,
    backend::BackendInfo,
    cluster::{BUCKET_TABLES, BUCKETS as BUCKETS_PER_TABLE, CLUSTER_STATE_WORDS},
    flow::{BackendPort, FlowEntry, FlowKey, MAX_SERVED_BY, ReplyEntry, ServedBy},
    fragment::{FragmentEntry, FragmentKey, MAX_FRAGMENTED_DATAGRAMS},
    limits::{
        DEFAULT_FLOW_ENTRIES, MAX_BACKENDS, MAX_RULE_PREFIXES, MAX_SERVICES, MAX_VIPS,
        MIN_FLOW_ENTRIES,
    },
    next_hop::BackendHop,
    service::{RING_MAX_SIZE, RING_SLOTS_PER_SERVICE, ServiceInfo, ServiceRule, ServiceRuleKey},
    settings::DatapathSettings,
    stats::{BackendStats, DropReason, FlowEvent, PassReason, ServiceStats, XDP_ACTION_LABELS},
    sticky::{StickyEntry, StickyKey, StickyMember},
    trace::{RING_BYTES, TraceBudget, TraceFilter},
};

use crate::scratch::Scratch;

const BUCKETS_ALL: u32 = BUCKETS_PER_TABLE * BUCKET_TABLES;

/// Mode, timeouts and SNAT addresses (one element).
#[map]
pub static SETTINGS: Array<DatapathSettings> = Array::with_max_entries(1, 0);

/// Addresses the balancer owns: traffic to them is balanced or dropped, never passed on blindly.
#[map]
pub static VIPS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Addresses of backends: only packets from these can be replies of balanced flows.
#[map]
pub static BACKEND_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// (VIP, protocol, port prefix) → service: port rules and ranges.
#[map]
pub static SERVICE_RULES: LpmTrie<ServiceRuleKey, ServiceRule> =
    LpmTrie::with_max_entries(MAX_RULE_PREFIXES, 0);

/// Service id → how it selects. Not preallocated: an update swaps the element under RCU, so a
/// reader sees the old service or the new one, never a mix.
#[map]
pub static SERVICES: HashMap<u32, ServiceInfo> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Backend id → address, port and state.
#[map]
pub static BACKENDS: Array<BackendInfo> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Consistent-hash tables, built in userspace: `RING[service.ring_base + hash %
/// service.ring_size]`.
/// Mmap-able, so the controller writes a table with one copy.
#[map]
pub static RING: Array<u32> =
    Array::with_max_entries(RING_MAX_SIZE * RING_SLOTS_PER_SERVICE, BPF_F_MMAPABLE);

/// Client tuple → established flow.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

/// Reply tuple → the client tuple to restore (established flows).
#[map]
pub static REPLIES: LruHashMap<FlowKey, ReplyEntry> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

/// Client tuple → TCP flow whose handshake has not completed. Apart from `FLOWS`, so that SYNs
/// (a flood of spoofed ones included) evict only each other.
#[map]
pub static HALF_OPEN: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(MIN_FLOW_ENTRIES, 0);

/// Reply tuple → client tuple, for half-open flows (the backend's SYN-ACK).
#[map]
pub static HALF_OPEN_REPLIES: LruHashMap<FlowKey, ReplyEntry> =
    LruHashMap::with_max_entries(MIN_FLOW_ENTRIES, 0);

/// Backend id → the FIB's answer for its address, kept (`lb_common::next_hop`).
#[map]
pub static BACKEND_HOPS: Array<BackendHop> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The controller's count of routing changes (one element): kept next hops from an older count
/// are looked up again.
#[map]
pub static NEXT_HOP_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// The stages `xnlb` tail-calls (`lb_common::programs`), put in by the controller at load.
#[map]
pub static STAGES: ProgramArray = ProgramArray::with_max_entries(STAGES_LEN, 0);

const STAGES_LEN: u32 = lb_common::programs::STAGES.len() as u32;

/// Cluster mode: two tables of bucket flags (`lb_common::cluster`), the live one named by
/// `CLUSTER_STATE[ACTIVE_TABLE]`.
#[map]
pub static BUCKETS: Array<u32> = Array::with_max_entries(BUCKETS_ALL, 0);

/// Two-arm: the VIP and port a backend port serves alone, from which its replies derive their
/// flow (`lb_common::flow::ServedBy`).
#[map]
pub static SERVED_BY: HashMap<BackendPort, ServedBy> = HashMap::with_max_entries(MAX_SERVED_BY, 0);

/// A fragmented datagram → the translation its first fragment got, for its later ones
/// (`lb_common::fragment`).
#[map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentEntry> =
    LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

/// Extended affinity: (sticky table, client) → its backend (`lb_common::sticky`). The controller
/// sizes it from the config.
#[map]
pub static STICKY: LruHashMap<StickyKey, StickyEntry> =
    LruHashMap::with_max_entries(MIN_FLOW_ENTRIES, 0);

/// Persistence groups: (service, member) → the service's backend id for that member.
#[map]
pub static STICKY_MEMBERS: HashMap<StickyMember, u32> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Cluster mode: this node's lease on its bucket table, and the live table.
#[map]
pub static CLUSTER_STATE: Array<u64> = Array::with_max_entries(CLUSTER_STATE_WORDS, 0);

/// Per-CPU room for the large values one packet builds (see `scratch`): the BPF stack's 512
/// bytes cannot hold them next to everything else.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `xnlb trace`'s filter (one element; all zero is off: `trace`).
#[map]
pub static TRACE: Array<TraceFilter> = Array::with_max_entries(1, 0);

/// `xnlb trace`'s events (`lb_common::trace::TraceEvent`), for the controller to read.
#[map]
pub static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Each CPU's trace rate-limit window and the events it could not write.
#[map]
pub static TRACE_BUDGET: PerCpuArray<TraceBudget> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

#[map]
pub static PASSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(PassReason::COUNT, 0);

#[map]
pub static FLOW_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FlowEvent::COUNT, 0);

#[map]
pub static XDP_ACTIONS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(XDP_ACTION_LABELS.len() as u32, 0);
