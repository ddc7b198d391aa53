//! Userspace: these types may be copied to and from BPF maps byte for byte.

use crate::{addr, backend, flow, service, settings, stats};

macro_rules! pod {
    ($($t:ty),+ $(,)?) => { $(unsafe impl aya::Pod for $t {})+ };
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
    settings::DatapathSettings,
    stats::BackendStats,
    stats::ServiceStats,
);
