//! The datapath's maps by the names they are created and pinned under. `lb-ebpf/src/maps.rs`
//! declares a static of each name; a datapath test checks that the object holds exactly these.

macro_rules! map_names {
    ($($name:ident),+ $(,)?) => {
        $(
            #[doc = concat!("The `", stringify!($name), "` map.")]
            pub const $name: &str = stringify!($name);
        )+
        /// Every map of the object.
        pub const ALL: &[&str] = &[$($name),+];
    };
}

map_names!(
    SETTINGS,
    VIPS,
    BACKEND_ADDRS,
    SERVICE_RULES,
    SERVICES,
    BACKENDS,
    RING,
    FLOWS,
    REPLIES,
    HALF_OPEN,
    HALF_OPEN_REPLIES,
    BACKEND_HOPS,
    NEXT_HOP_EPOCH,
    BUCKETS,
    CLUSTER_STATE,
    SERVED_BY,
    FRAGMENTS,
    STICKY,
    STICKY_MEMBERS,
    STAGES,
    SCRATCH,
    BACKEND_STATS,
    SERVICE_STATS,
    DROPS,
    PASSES,
    FLOW_EVENTS,
    XDP_ACTIONS,
);
