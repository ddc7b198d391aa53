//! The datapath's maps by the names they are created and pinned under. `lb-ebpf/src/maps.rs`
//! declares a static of each name; a datapath test checks that the object holds exactly these.

macro_rules! map_names {
    ($($name:ident: $version:literal),+ $(,)?) => {
        $(
            #[doc = concat!("The `", stringify!($name), "` map.")]
            pub const $name: &str = stringify!($name);
        )+
        /// Every map of the object.
        pub const ALL: &[&str] = &[$($name),+];
        /// Each map's layout version: what its keys and values mean, byte for byte. Bumped
        /// whenever a change keeps a type's size but not its meaning (a padding byte given a
        /// use, a flag bit, a field moved), and with any other change of the map's types, so
        /// that a daemon never reads a pinned map another xnlb wrote differently
        /// (`LAYOUT`; the fingerprints in the layout test say when one is due).
        pub const VERSIONS: &[(&str, u32)] = &[$(($name, $version)),+];
    };
}

/// `name`'s layout version in this build (`VERSIONS`).
pub fn version(name: &str) -> Option<u32> {
    VERSIONS.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
}

/// Not in the object: the controller creates and pins it beside the object's maps, one
/// `LayoutStamp` per map, the version the pinned map was made with.
pub const LAYOUT: &str = "LAYOUT";

map_names!(
    SETTINGS: 1,
    VIPS: 1,
    BACKEND_ADDRS: 1,
    SERVICE_RULES: 1,
    SERVICES: 1,
    BACKENDS: 1,
    RING: 1,
    FLOWS: 1,
    REPLIES: 1,
    HALF_OPEN: 1,
    HALF_OPEN_REPLIES: 1,
    BACKEND_HOPS: 1,
    NEXT_HOP_EPOCH: 1,
    BUCKETS: 1,
    CLUSTER_STATE: 1,
    SERVED_BY: 1,
    FRAGMENTS: 1,
    STICKY: 1,
    STICKY_MEMBERS: 1,
    STAGES: 1,
    SCRATCH: 1,
    BACKEND_STATS: 1,
    SERVICE_STATS: 1,
    DROPS: 1,
    PASSES: 1,
    FLOW_EVENTS: 1,
    XDP_ACTIONS: 1,
    TRACE: 1,
    TRACE_EVENTS: 1,
    TRACE_BUDGET: 1,
);

/// A `LAYOUT` element: a map's name (NUL-padded) and the layout version its pin was made with.
/// Its own layout never changes: any xnlb can read any other's stamps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutStamp {
    pub name: [u8; 28],
    pub version: u32,
}
const _: () = assert!(core::mem::size_of::<LayoutStamp>() == 32);

/// `LAYOUT`'s size: room for every map this and later versions define.
pub const MAX_LAYOUT_STAMPS: u32 = 64;

impl LayoutStamp {
    /// `name`'s stamp; a name longer than the field is cut (no map's is).
    pub fn new(name: &str, version: u32) -> Self {
        let mut stamp = Self {
            name: [0; 28],
            version,
        };
        for (to, from) in stamp.name.iter_mut().zip(name.bytes()) {
            *to = from;
        }
        stamp
    }

    /// The map's name; empty for an unused element.
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(28);
        core::str::from_utf8(&self.name[..len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::{fmt::Debug, mem::size_of};
    use std::{format, string::String, vec::Vec};

    use super::*;
    use crate::{
        addr::AddrKey,
        backend::BackendInfo,
        flow::{self, BackendPort, FlowEntry, FlowKey, ReplyEntry, ServedBy},
        fragment::{FragmentEntry, FragmentKey},
        next_hop::BackendHop,
        service::{self, ServiceInfo, ServiceRule, ServiceRuleKey},
        settings::DatapathSettings,
        stats::{BackendStats, DropReason, FlowEvent, PassReason, ServiceStats, XDP_ACTION_LABELS},
        sticky::{StickyEntry, StickyKey, StickyMember},
        trace::{TraceBudget, TraceEvent, TraceFilter},
    };

    /// A map's key and value types: their sizes, and their names and fields (an all-zero
    /// value's `Debug` names the type and every field in order).
    fn types<K: Debug, V: Debug>() -> String {
        // SAFETY: map keys and values are integers and arrays of them (`pod`): all zeros is a
        // value of each.
        let (k, v): (K, V) = unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
        format!("{}: {k:?} -> {}: {v:?}", size_of::<K>(), size_of::<V>())
    }

    /// FNV-1a, 64 bits.
    fn fingerprint(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// What each map's bytes mean: its types, and the flag bits and counter orders they carry.
    /// `SCRATCH` (one packet's working memory) and `STAGES` (programs) carry nothing across a
    /// restart.
    fn meanings() -> Vec<(&'static str, String)> {
        let flow_flags = format!(
            "flags {} {} {:#x}",
            flow::REPLY_DERIVED,
            flow::STICKY,
            flow::IDLE_CLASS
        );
        let flow = format!("{} {flow_flags}", types::<FlowKey, FlowEntry>());
        let service = format!(
            "{} flags {} {:#x}",
            types::<u32, ServiceInfo>(),
            service::KEEPS_FLOWS_OF_DOWN,
            flow::IDLE_CLASS
        );
        let counters = |labels: String| format!("{} {labels}", types::<u32, u64>());
        std::vec![
            (SETTINGS, types::<u32, DatapathSettings>()),
            (VIPS, types::<AddrKey, u32>()),
            (BACKEND_ADDRS, types::<AddrKey, u32>()),
            (SERVICE_RULES, types::<ServiceRuleKey, ServiceRule>()),
            (SERVICES, service),
            (BACKENDS, types::<u32, BackendInfo>()),
            (RING, types::<u32, u32>()),
            (FLOWS, flow.clone()),
            (REPLIES, types::<FlowKey, ReplyEntry>()),
            (HALF_OPEN, flow),
            (HALF_OPEN_REPLIES, types::<FlowKey, ReplyEntry>()),
            (BACKEND_HOPS, types::<u32, BackendHop>()),
            (NEXT_HOP_EPOCH, types::<u32, u32>()),
            (BUCKETS, types::<u32, u32>()),
            (CLUSTER_STATE, types::<u32, u64>()),
            (
                SERVED_BY,
                format!(
                    "{} {}",
                    types::<BackendPort, ServedBy>(),
                    flow::SERVES_ALONE
                )
            ),
            (FRAGMENTS, types::<FragmentKey, FragmentEntry>()),
            (STICKY, types::<StickyKey, StickyEntry>()),
            (STICKY_MEMBERS, types::<StickyMember, u32>()),
            (BACKEND_STATS, types::<u32, BackendStats>()),
            (SERVICE_STATS, types::<u32, ServiceStats>()),
            (DROPS, counters(format!("{:?}", DropReason::ALL))),
            (PASSES, counters(format!("{:?}", PassReason::ALL))),
            (FLOW_EVENTS, counters(format!("{:?}", FlowEvent::ALL))),
            (XDP_ACTIONS, counters(format!("{XDP_ACTION_LABELS:?}"))),
            (TRACE, types::<u32, TraceFilter>()),
            (TRACE_EVENTS, types::<(), TraceEvent>()),
            (TRACE_BUDGET, types::<u32, TraceBudget>()),
        ]
    }

    /// The fingerprint of each map's meaning at its version. When this fails, a map's types,
    /// flags or counters changed: bump its version in `map_names!` and record the new
    /// fingerprint here with it, so that a daemon of this build refuses or replaces the map
    /// when it finds one pinned by the last (`LAYOUT`).
    const RECORDED: &[(&str, u32, u64)] = &[
        (SETTINGS, 1, 0xd33e53fdf573bc12),
        (VIPS, 1, 0xcbbcdd179079b134),
        (BACKEND_ADDRS, 1, 0xcbbcdd179079b134),
        (SERVICE_RULES, 1, 0x2deef521c128e9bd),
        (SERVICES, 1, 0x789d8cb7863f6d84),
        (BACKENDS, 1, 0x46e400cff387db26),
        (RING, 1, 0xe81075f5ae662d28),
        (FLOWS, 1, 0xfcb59b7b1f895ba1),
        (REPLIES, 1, 0xed58258c1df8cba5),
        (HALF_OPEN, 1, 0xfcb59b7b1f895ba1),
        (HALF_OPEN_REPLIES, 1, 0xed58258c1df8cba5),
        (BACKEND_HOPS, 1, 0xac8ba5218e8e0c5e),
        (NEXT_HOP_EPOCH, 1, 0xe81075f5ae662d28),
        (BUCKETS, 1, 0xe81075f5ae662d28),
        (CLUSTER_STATE, 1, 0xdd633616b8bcc7fc),
        (SERVED_BY, 1, 0x89bf2a3928251aa6),
        (FRAGMENTS, 1, 0x9229988883ceb3f7),
        (STICKY, 1, 0xbf3fdb711be20e76),
        (STICKY_MEMBERS, 1, 0x46ee368e11616220),
        (BACKEND_STATS, 1, 0xf7c6a1882bb45d63),
        (SERVICE_STATS, 1, 0xc750cb4b687686f9),
        (DROPS, 1, 0x6dedc1d357868487),
        (PASSES, 1, 0x81fa7449ccb45c8b),
        (FLOW_EVENTS, 1, 0xd51a6a4374b7e707),
        (XDP_ACTIONS, 1, 0x4469982967534c89),
        (TRACE, 1, 0xec5749573cfa7dd4),
        (TRACE_EVENTS, 1, 0x1de3e32d849ca9d1),
        (TRACE_BUDGET, 1, 0xc18193fa7d611211),
    ];

    #[test]
    fn each_maps_version_is_recorded_with_its_meaning() {
        let mut wrong = Vec::new();
        for (name, meaning) in meanings() {
            let now = (version(name).expect("a map of ALL"), fingerprint(&meaning));
            let recorded = RECORDED
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|&(_, v, f)| (v, f));
            if recorded != Some(now) {
                wrong.push(format!("    ({name}, {}, {:#018x}),", now.0, now.1));
            }
        }
        assert!(
            wrong.is_empty(),
            "maps whose version and meaning are not recorded together (bump the version of a \
             map whose meaning changed, then record):\n{}",
            wrong.join("\n")
        );
        let skipped = [SCRATCH, STAGES];
        assert_eq!(meanings().len() + skipped.len(), ALL.len());
    }

    #[test]
    fn a_stamp_reads_back_its_name() {
        let stamp = LayoutStamp::new(HALF_OPEN_REPLIES, 3);
        assert_eq!((stamp.name(), stamp.version), (HALF_OPEN_REPLIES, 3));
        assert_eq!(LayoutStamp::new("", 0).name(), "");
    }
}
