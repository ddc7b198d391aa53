//! Reading the datapath's counters, statistics and connection table through map handles of the
//! reader's own (duplicated file descriptors): the metrics and status paths read while the
//! controller writes, and neither waits for the other.

use std::os::fd::{AsFd, AsRawFd};

use aya::{
    Ebpf, Pod,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray},
};
use lb_common::{
    flow::{FlowEntry, FlowKey, ReplyEntry},
    maps as names,
    stats::{BackendStats, DropReason, FlowEvent, PassReason, ServiceStats, XDP_ACTION_LABELS},
    sticky::{StickyEntry, StickyKey},
};

use super::{DatapathError, Result, batch, io_err, map_err};

/// Handles to every map of one loaded datapath, for reading.
pub struct Reader {
    maps: Vec<(&'static str, Map)>,
}

/// Datapath counters that are not per service or backend, labelled for metrics.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub drops: Vec<(DropReason, u64)>,
    pub passes: Vec<(PassReason, u64)>,
    pub flow_events: Vec<(FlowEvent, u64)>,
    pub actions: Vec<(&'static str, u64)>,
}

/// One map's shape and the bytes the kernel charges for it (`memlock` in its fdinfo).
#[derive(Clone, Debug)]
pub struct MapFootprint {
    pub name: &'static str,
    pub kind: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub memlock: u64,
}

/// The `MapData` behind any map kind the object uses.
pub(super) fn data_of<'a>(map: &'a Map, name: &'static str) -> Result<&'a MapData> {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::LpmTrie(m)
        | Map::PerCpuArray(m)
        | Map::ProgramArray(m)
        | Map::RingBuf(m) => Ok(m),
        _ => Err(DatapathError::MissingMap(name)),
    }
}

/// A second handle to the same kernel map.
pub(super) fn duplicate(map: &Map, name: &'static str) -> Result<Map> {
    let fd = data_of(map, name)?
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err("duplicating a map handle"))?;
    let data = MapData::from_fd(fd).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

impl Reader {
    /// Handles to every map of `ebpf`.
    pub(super) fn of(ebpf: &Ebpf) -> Result<Self> {
        let maps = names::ALL
            .iter()
            .map(|&name| {
                let map = ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
                Ok((name, duplicate(map, name)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { maps })
    }

    /// The same maps through new handles.
    pub fn try_clone(&self) -> Result<Self> {
        let maps = self
            .maps
            .iter()
            .map(|(name, map)| Ok((*name, duplicate(map, name)?)))
            .collect::<Result<_>>()?;
        Ok(Self { maps })
    }

    /// A second handle to map `name`, owned (`trace::Tap` keeps its own).
    pub(super) fn own_handle(&self, name: &'static str) -> Result<Map> {
        duplicate(self.map(name)?, name)
    }

    fn map(&self, name: &'static str) -> Result<&Map> {
        self.maps
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
            .ok_or(DatapathError::MissingMap(name))
    }

    fn data(&self, name: &'static str) -> Result<&MapData> {
        data_of(self.map(name)?, name)
    }

    /// The size the kernel gave a map (for an adopted map, the size it was created with).
    pub fn max_entries(&self, name: &'static str) -> Result<u32> {
        let info = self.data(name)?.info().map_err(map_err(name))?;
        Ok(info.max_entries())
    }

    /// One element of a hash map, if it is there.
    fn hash_get<K: Pod, V: Pod>(&self, name: &'static str, key: &K) -> Result<Option<V>> {
        let map: HashMap<&MapData, K, V> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// The flow of client tuple `key`, in the half-open table or the established one.
    pub fn flow(&self, half_open: bool, key: &FlowKey) -> Result<Option<FlowEntry>> {
        self.hash_get(stage_maps(half_open).0, key)
    }

    /// The reply entry of reply tuple `key`, in the half-open table or the established one.
    pub fn reply(&self, half_open: bool, key: &FlowKey) -> Result<Option<ReplyEntry>> {
        self.hash_get(stage_maps(half_open).1, key)
    }

    pub(super) fn hash_entries<K: Pod, V: Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>> {
        let map: HashMap<&MapData, K, V> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        map.iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(name))
    }

    /// Sums a per-CPU array element over all CPUs with `add`.
    fn per_cpu_sum<V: Pod + Default>(
        &self,
        name: &'static str,
        index: u32,
        add: fn(&mut V, &V),
    ) -> Result<V> {
        let array: PerCpuArray<&MapData, V> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        let values = array.get(&index, 0).map_err(map_err(name))?;
        let mut total = V::default();
        for v in values.iter() {
            add(&mut total, v);
        }
        Ok(total)
    }

    fn counter(&self, name: &'static str, index: u32) -> Result<u64> {
        self.per_cpu_sum::<u64>(name, index, |t, v| *t += v)
    }

    pub fn drop_count(&self, reason: DropReason) -> Result<u64> {
        self.counter(names::DROPS, reason as u32)
    }

    pub fn pass_count(&self, reason: PassReason) -> Result<u64> {
        self.counter(names::PASSES, reason as u32)
    }

    pub fn flow_event_count(&self, event: FlowEvent) -> Result<u64> {
        self.counter(names::FLOW_EVENTS, event as u32)
    }

    /// Packets per XDP action, labelled.
    pub fn action_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        (0..XDP_ACTION_LABELS.len() as u32)
            .map(|a| {
                Ok((
                    XDP_ACTION_LABELS[a as usize],
                    self.counter(names::XDP_ACTIONS, a)?,
                ))
            })
            .collect()
    }

    /// Every counter that is not per service or backend.
    pub fn counters(&self) -> Result<Counters> {
        fn each<T: Copy>(all: &[T], count: impl Fn(T) -> Result<u64>) -> Result<Vec<(T, u64)>> {
            all.iter().map(|&x| Ok((x, count(x)?))).collect()
        }
        Ok(Counters {
            drops: each(DropReason::ALL, |r| self.drop_count(r))?,
            passes: each(PassReason::ALL, |r| self.pass_count(r))?,
            flow_events: each(FlowEvent::ALL, |e| self.flow_event_count(e))?,
            actions: self.action_counts()?,
        })
    }

    pub fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        self.per_cpu_sum(names::BACKEND_STATS, id, |t: &mut BackendStats, v| {
            t.to_backend_packets += v.to_backend_packets;
            t.to_backend_bytes += v.to_backend_bytes;
            t.to_client_packets += v.to_client_packets;
            t.to_client_bytes += v.to_client_bytes;
            t.new_flows += v.new_flows;
        })
    }

    pub fn service_stats(&self, id: u32) -> Result<ServiceStats> {
        self.per_cpu_sum(names::SERVICE_STATS, id, |t: &mut ServiceStats, v| {
            t.packets += v.packets;
            t.bytes += v.bytes;
            t.new_flows += v.new_flows;
            t.dropped += v.dropped;
        })
    }

    /// Every established flow (client tuple → flow), read in batches.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        self.flows_in(false)
    }

    /// Every half-open flow (client tuple → flow), read in batches.
    pub fn half_open_flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        self.flows_in(true)
    }

    /// Every flow of the half-open table or the established one, read in batches.
    pub fn flows_in(&self, half_open: bool) -> Result<Vec<(FlowKey, FlowEntry)>> {
        let name = stage_maps(half_open).0;
        let fd = self.data(name)?.fd().as_fd();
        let what = if half_open {
            "reading HALF_OPEN"
        } else {
            "reading FLOWS"
        };
        batch::lookup_all(fd, 4096).map_err(io_err(what))
    }

    /// Every sticky entry (sticky table and client → backend), read in batches.
    pub fn sticky_entries(&self) -> Result<Vec<(StickyKey, StickyEntry)>> {
        let fd = self.data(names::STICKY)?.fd().as_fd();
        batch::lookup_all(fd, 4096).map_err(io_err("reading STICKY"))
    }

    /// Every reply entry (reply tuple → client tuple).
    pub fn replies(&self) -> Result<Vec<(FlowKey, ReplyEntry)>> {
        self.hash_entries(names::REPLIES)
    }

    /// Every reply entry of a half-open flow (reply tuple → client tuple).
    pub fn half_open_replies(&self) -> Result<Vec<(FlowKey, ReplyEntry)>> {
        self.hash_entries(names::HALF_OPEN_REPLIES)
    }

    /// What each map costs: its shape and the memory the kernel charges for it.
    pub fn footprints(&self) -> Result<Vec<MapFootprint>> {
        self.maps
            .iter()
            .map(|&(name, _)| {
                let data = self.data(name)?;
                let info = data.info().map_err(map_err(name))?;
                let fdinfo = format!("/proc/self/fdinfo/{}", data.fd().as_fd().as_raw_fd());
                let memlock = std::fs::read_to_string(&fdinfo)
                    .ok()
                    .and_then(|text| {
                        text.lines()
                            .find_map(|l| l.strip_prefix("memlock:"))
                            .and_then(|v| v.trim().parse().ok())
                    })
                    .ok_or(DatapathError::Io {
                        what: "reading the map's memlock from fdinfo",
                        source: std::io::ErrorKind::NotFound.into(),
                    })?;
                Ok(MapFootprint {
                    name,
                    kind: format!("{:?}", info.map_type().map_err(map_err(name))?),
                    key_size: info.key_size(),
                    value_size: info.value_size(),
                    max_entries: info.max_entries(),
                    memlock,
                })
            })
            .collect()
    }
}

/// The clock the datapath stamps flows with (`bpf_ktime_get_coarse_ns` follows CLOCK_MONOTONIC).
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// The (flows, replies) maps of the half-open stage or the established one.
pub(super) fn stage_maps(half_open: bool) -> (&'static str, &'static str) {
    if half_open {
        (names::HALF_OPEN, names::HALF_OPEN_REPLIES)
    } else {
        (names::FLOWS, names::REPLIES)
    }
}
