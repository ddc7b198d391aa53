//! Userspace: these types may be copied to and from BPF maps byte for byte.

use crate::{
    addr, backend, flow, fragment, maps, next_hop, service, settings, stats, sticky, trace,
};

macro_rules! pod {
    ($($t:ty),+ $(,)?) => { $(
        // SAFETY: `#[repr(C)]`, integer fields and arrays only, explicit padding and a size
        // assertion next to each type: every byte pattern is a valid value and none is hidden.
        unsafe impl aya::Pod for $t {}
    )+ };
}

pod!(
    service::ServiceRuleKey,
    service::ServiceRule,
    addr::AddrKey,
    service::ServiceInfo,
    backend::BackendInfo,
    flow::FlowKey,
    flow::FlowEntry,
    flow::ReplyEntry,
    maps::LayoutStamp,
    next_hop::NextHop,
    next_hop::BackendHop,
    settings::DatapathSettings,
    stats::BackendStats,
    stats::ServiceStats,
    flow::BackendPort,
    flow::ServedBy,
    fragment::FragmentKey,
    fragment::FragmentEntry,
    sticky::StickyKey,
    sticky::StickyEntry,
    sticky::StickyMember,
    trace::TraceFilter,
    trace::TraceBudget,
    trace::TraceEvent,
);
