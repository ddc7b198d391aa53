//! The loaded XDP datapath and typed access to its maps. Everything that writes or reads the
//! kernel's state goes through here; the daemon, the tests and the benchmarks share it.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, Xdp},
};
use lb_common::{
    addr::{Addr, AddrKey, FAMILY_V4, v4},
    backend::BackendInfo,
    flow::{FlowEntry, FlowKey, ReplyEntry},
    service::{
        RING_MAX_SIZE, RING_SLOTS_PER_SERVICE, RULE_FIXED_BITS, ServiceInfo, ServiceRule,
        ServiceRuleKey,
    },
    settings::DatapathSettings,
    stats::{BackendStats, DropReason, FlowEvent, PassReason, ServiceStats, XDP_ACTION_LABELS},
};

use crate::{
    bpf_batch,
    ebpf_object::{XDP_OBJECT, XDP_PROGRAM},
    mapped_array::MappedArray,
    port_rules,
};

/// Every map of the object, by the name it is pinned under.
pub const MAP_NAMES: [&str; 15] = [
    "SETTINGS",
    "VIPS",
    "BACKEND_ADDRS",
    "SERVICE_RULES",
    "SERVICES",
    "BACKENDS",
    "RING",
    "FLOWS",
    "REPLIES",
    "BACKEND_STATS",
    "SERVICE_STATS",
    "DROPS",
    "PASSES",
    "FLOW_EVENTS",
    "XDP_ACTIONS",
];

/// Elements of the `BACKENDS` array (`MAX_BACKENDS` in the datapath).
pub const BACKEND_SLOTS: u32 = 4096;

/// One port-rule prefix of a VIP: the key of `SERVICE_RULES` in userspace terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleKey {
    pub vip: Ipv4Addr,
    pub proto: u8,
    /// First port of the prefix (host order).
    pub port: u16,
    /// Port bits that must match (16 = exactly `port`).
    pub port_bits: u8,
}

impl RuleKey {
    /// The prefixes that together cover `vip`:`lo..=hi`/`proto`.
    pub fn covering(vip: Ipv4Addr, proto: u8, lo: u16, hi: u16) -> Vec<RuleKey> {
        port_rules::prefixes(lo, hi)
            .into_iter()
            .map(|p| RuleKey {
                vip,
                proto,
                port: p.port,
                port_bits: p.bits,
            })
            .collect()
    }

    fn to_kernel(self) -> Key<ServiceRuleKey> {
        let data = ServiceRuleKey {
            family: FAMILY_V4,
            proto: self.proto,
            _pad: [0; 2],
            vip: v4(self.vip.octets()),
            port: self.port.to_be(),
            _pad_tail: [0; 2],
        };
        Key::new(RULE_FIXED_BITS + self.port_bits as u32, data)
    }

    fn from_kernel(key: &Key<ServiceRuleKey>) -> RuleKey {
        let data = key.data();
        let vip = data.vip[0].to_ne_bytes();
        RuleKey {
            vip: Ipv4Addr::from(vip),
            proto: data.proto,
            port: u16::from_be(data.port),
            port_bits: (key.prefix_len() - RULE_FIXED_BITS) as u8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("ring slot {slot} is out of range (capacity {capacity} tables)")]
    RingSlot { slot: u32, capacity: u32 },
    #[error("a ring table has {0} entries; at most {RING_MAX_SIZE}")]
    RingTooLarge(usize),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, DatapathError>;

/// Sizes fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct DatapathSizes {
    /// Entries in the connection table (each of `FLOWS` and `REPLIES`).
    pub flows: u32,
    /// Services that can have a ring table (two slots each, of `RING_MAX_SIZE` entries).
    pub ring_services: u32,
}

impl Default for DatapathSizes {
    fn default() -> Self {
        Self {
            flows: 262_144,
            ring_services: 16,
        }
    }
}

pub struct Datapath {
    // Field order is drop order: unmap the ring before the map goes.
    /// `RING` in our memory; `None` for a ring adopted from an xnlb that made it without
    /// `BPF_F_MMAPABLE` (then tables are written with syscalls).
    ring_view: Option<MappedArray>,
    ebpf: Ebpf,
    ring_slots: u32,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl Datapath {
    /// Loads the embedded object (maps created, program verified), not yet attached anywhere.
    pub fn load(sizes: DatapathSizes) -> Result<Self> {
        let mut dp = Self::load_with(sizes, None)?;
        dp.set_settings(&DatapathSettings::defaults())?;
        Ok(dp)
    }

    /// Loads the object with every map pinned under `dir`. Maps already pinned there (a
    /// previous daemon's) are reused as they are, contents and sizes included: that is how a
    /// restarted daemon adopts a running datapath. Returns whether it adopted.
    pub fn load_pinned(sizes: DatapathSizes, dir: &Path) -> Result<(Self, bool)> {
        std::fs::create_dir_all(dir).map_err(|source| DatapathError::Io {
            what: "creating the pin directory",
            source,
        })?;
        let adopted = dir.join("FLOWS").exists();
        let dp = Self::load_with(sizes, Some(dir))?;
        Ok((dp, adopted))
    }

    fn load_with(sizes: DatapathSizes, pin_dir: Option<&Path>) -> Result<Self> {
        let ring_slots = sizes.ring_services * RING_SLOTS_PER_SERVICE;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("FLOWS", sizes.flows)
            .map_max_entries("REPLIES", sizes.flows)
            .map_max_entries("RING", ring_slots * RING_MAX_SIZE);
        if let Some(dir) = pin_dir {
            for name in MAP_NAMES {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let ebpf = loader.load(XDP_OBJECT)?;
        let mut dp = Self {
            ring_view: None,
            ebpf,
            ring_slots,
        };
        // An adopted RING keeps the size (and flags) it was created with.
        let ring_entries = dp.max_entries("RING")?;
        dp.ring_slots = ring_entries / RING_MAX_SIZE;
        dp.ring_view = MappedArray::map(dp.map_data("RING")?.fd().as_fd(), ring_entries);
        dp.program_mut()?.load()?;
        Ok(dp)
    }

    fn map_data(&self, name: &'static str) -> Result<&MapData> {
        match self.map(name)? {
            Map::Array(m)
            | Map::HashMap(m)
            | Map::LruHashMap(m)
            | Map::LpmTrie(m)
            | Map::PerCpuArray(m) => Ok(m),
            _ => Err(DatapathError::MissingMap(name)),
        }
    }

    /// The size the kernel gave a map (for an adopted map, the size it was created with).
    pub fn max_entries(&self, name: &'static str) -> Result<u32> {
        let info = self.map_data(name)?.info().map_err(map_err(name))?;
        Ok(info.max_entries())
    }

    /// Whether ring tables are written through the mmap-ed `RING` (false only for a ring adopted
    /// from an older xnlb).
    pub fn ring_mapped(&self) -> bool {
        self.ring_view.is_some()
    }

    /// Services that can have a ring table.
    pub fn ring_capacity(&self) -> u32 {
        self.ring_slots / RING_SLOTS_PER_SERVICE
    }

    /// Pins the loaded program at `path` (replacing an older pin).
    pub fn pin_program(&mut self, path: &Path) -> Result<()> {
        let _ = std::fs::remove_file(path);
        Ok(self.program_mut()?.pin(path)?)
    }

    pub fn program(&self) -> Result<&Xdp> {
        let prog = self
            .ebpf
            .program(XDP_PROGRAM)
            .ok_or(DatapathError::MissingMap(XDP_PROGRAM))?;
        Ok(prog.try_into()?)
    }

    pub fn program_mut(&mut self) -> Result<&mut Xdp> {
        let prog = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(DatapathError::MissingMap(XDP_PROGRAM))?;
        Ok(prog.try_into()?)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))
    }

    fn array_set<V: Pod>(&mut self, name: &'static str, index: u32, value: &V) -> Result<()> {
        let mut array: Array<&mut MapData, V> =
            Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        array.set(index, value, 0).map_err(map_err(name))
    }

    fn array_get<V: Pod>(&self, name: &'static str, index: u32) -> Result<V> {
        let array: Array<&MapData, V> = Array::try_from(self.map(name)?).map_err(map_err(name))?;
        array.get(&index, 0).map_err(map_err(name))
    }

    fn hash_insert<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        key: &K,
        value: &V,
    ) -> Result<()> {
        let mut map: HashMap<&mut MapData, K, V> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.insert(key, value, 0).map_err(map_err(name))
    }

    fn hash_entries<K: Pod, V: Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>> {
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

    pub fn set_settings(&mut self, settings: &DatapathSettings) -> Result<()> {
        self.array_set("SETTINGS", 0, settings)
    }

    pub fn settings(&self) -> Result<DatapathSettings> {
        self.array_get("SETTINGS", 0)
    }

    fn hash_remove<K: Pod, V: Pod>(&mut self, name: &'static str, key: &K) -> Result<()> {
        let mut map: HashMap<&mut MapData, K, V> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        match map.remove(key) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other.map_err(map_err(name)),
        }
    }

    fn addr_keys(&self, name: &'static str) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .hash_entries::<AddrKey, u32>(name)?
            .into_iter()
            .filter(|(k, _)| k.family == FAMILY_V4)
            .map(|(k, _)| Ipv4Addr::from(k.addr[0].to_ne_bytes()))
            .collect())
    }

    fn addr_key(addr: Ipv4Addr) -> AddrKey {
        AddrKey {
            addr: v4(addr.octets()),
            family: FAMILY_V4,
            _pad: [0; 3],
        }
    }

    /// Makes `addr` a VIP: traffic to it is balanced or dropped from now on.
    pub fn add_vip(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.hash_insert("VIPS", &Self::addr_key(addr), &0u32)
    }

    pub fn remove_vip(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.hash_remove::<AddrKey, u32>("VIPS", &Self::addr_key(addr))
    }

    pub fn vips(&self) -> Result<Vec<Ipv4Addr>> {
        self.addr_keys("VIPS")
    }

    pub fn remove_backend_addr(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.hash_remove::<AddrKey, u32>("BACKEND_ADDRS", &Self::addr_key(addr))
    }

    pub fn backend_addrs(&self) -> Result<Vec<Ipv4Addr>> {
        self.addr_keys("BACKEND_ADDRS")
    }

    /// Every `BACKENDS` element, in id order (unused ones are all zero).
    pub fn backends(&self) -> Result<Vec<BackendInfo>> {
        let fd = self.map_data("BACKENDS")?.fd().as_fd();
        let mut all = bpf_batch::lookup_all::<u32, BackendInfo>(fd, BACKEND_SLOTS as usize)
            .map_err(|source| DatapathError::Io {
                what: "reading BACKENDS",
                source,
            })?;
        all.sort_by_key(|(id, _)| *id);
        Ok(all.into_iter().map(|(_, b)| b).collect())
    }

    /// Zeroes a backend id's counters (before the id is given to a different backend).
    pub fn reset_backend_stats(&mut self, id: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| DatapathError::Io {
            what: "counting CPUs",
            source,
        })?;
        let zeros =
            PerCpuValues::try_from(vec![BackendStats::default(); cpus]).map_err(|source| {
                DatapathError::Io {
                    what: "zeroing BACKEND_STATS",
                    source,
                }
            })?;
        let mut array: PerCpuArray<&mut MapData, BackendStats> =
            PerCpuArray::try_from(self.map_mut("BACKEND_STATS")?)
                .map_err(map_err("BACKEND_STATS"))?;
        array.set(id, zeros, 0).map_err(map_err("BACKEND_STATS"))
    }

    /// Marks `addr` as a backend address whose packets may be replies of balanced flows.
    pub fn add_backend_addr(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.hash_insert("BACKEND_ADDRS", &Self::addr_key(addr), &0u32)
    }

    pub fn set_backend(&mut self, id: u32, backend: &BackendInfo) -> Result<()> {
        self.array_set("BACKENDS", id, backend)
    }

    pub fn backend(&self, id: u32) -> Result<BackendInfo> {
        self.array_get("BACKENDS", id)
    }

    /// Changes only a backend's state (up, draining, down).
    pub fn set_backend_state(&mut self, id: u32, state: u8) -> Result<()> {
        let mut backend = self.backend(id)?;
        backend.state = state;
        self.set_backend(id, &backend)
    }

    /// Writes a consistent-hash table into ring slot `slot` and returns its `ring_base`. The
    /// table goes live only when a service is pointed at it (`set_service`): write the new
    /// table into the slot the service is not using, then switch with one service write.
    pub fn write_ring(&mut self, slot: u32, table: &[u32]) -> Result<u32> {
        if slot >= self.ring_slots {
            return Err(DatapathError::RingSlot {
                slot,
                capacity: self.ring_slots,
            });
        }
        if table.len() > RING_MAX_SIZE as usize {
            return Err(DatapathError::RingTooLarge(table.len()));
        }
        let base = slot * RING_MAX_SIZE;
        if let Some(view) = &mut self.ring_view {
            view.write(base as usize, table);
            return Ok(base);
        }
        let fd = self.map_data("RING")?.fd().as_fd();
        bpf_batch::update_array(fd, base, table).map_err(|source| DatapathError::Io {
            what: "writing RING",
            source,
        })?;
        Ok(base)
    }

    pub fn set_service(&mut self, id: u32, service: &ServiceInfo) -> Result<()> {
        self.hash_insert("SERVICES", &id, service)
    }

    pub fn remove_service(&mut self, id: u32) -> Result<()> {
        self.hash_remove::<u32, ServiceInfo>("SERVICES", &id)
    }

    pub fn services(&self) -> Result<Vec<(u32, ServiceInfo)>> {
        self.hash_entries("SERVICES")
    }

    fn rules_mut(&mut self) -> Result<LpmTrie<&mut MapData, ServiceRuleKey, ServiceRule>> {
        LpmTrie::try_from(self.map_mut("SERVICE_RULES")?).map_err(map_err("SERVICE_RULES"))
    }

    pub fn insert_rule(&mut self, key: RuleKey, service_id: u32) -> Result<()> {
        self.rules_mut()?
            .insert(&key.to_kernel(), ServiceRule { service_id }, 0)
            .map_err(map_err("SERVICE_RULES"))
    }

    pub fn remove_rule(&mut self, key: RuleKey) -> Result<()> {
        match self.rules_mut()?.remove(&key.to_kernel()) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other.map_err(map_err("SERVICE_RULES")),
        }
    }

    pub fn rules(&self) -> Result<Vec<(RuleKey, u32)>> {
        let rules: LpmTrie<&MapData, ServiceRuleKey, ServiceRule> =
            LpmTrie::try_from(self.map("SERVICE_RULES")?).map_err(map_err("SERVICE_RULES"))?;
        rules
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(map_err("SERVICE_RULES"))?;
                Ok((RuleKey::from_kernel(&k), v.service_id))
            })
            .collect()
    }

    /// Routes `vip`:`lo..=hi`/`proto` to service `service_id`.
    pub fn add_port_rule(
        &mut self,
        vip: Ipv4Addr,
        proto: u8,
        lo: u16,
        hi: u16,
        service_id: u32,
    ) -> Result<()> {
        for key in RuleKey::covering(vip, proto, lo, hi) {
            self.insert_rule(key, service_id)?;
        }
        Ok(())
    }

    pub fn drop_count(&self, reason: DropReason) -> Result<u64> {
        self.counter("DROPS", reason as u32)
    }

    pub fn pass_count(&self, reason: PassReason) -> Result<u64> {
        self.counter("PASSES", reason as u32)
    }

    pub fn flow_event_count(&self, event: FlowEvent) -> Result<u64> {
        self.counter("FLOW_EVENTS", event as u32)
    }

    pub fn drop_counts(&self) -> Result<Vec<(DropReason, u64)>> {
        DropReason::ALL
            .iter()
            .map(|&r| Ok((r, self.drop_count(r)?)))
            .collect()
    }

    pub fn pass_counts(&self) -> Result<Vec<(PassReason, u64)>> {
        PassReason::ALL
            .iter()
            .map(|&r| Ok((r, self.pass_count(r)?)))
            .collect()
    }

    pub fn flow_event_counts(&self) -> Result<Vec<(FlowEvent, u64)>> {
        FlowEvent::ALL
            .iter()
            .map(|&e| Ok((e, self.flow_event_count(e)?)))
            .collect()
    }

    /// Packets per XDP action, labelled.
    pub fn action_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        (0..XDP_ACTION_LABELS.len() as u32)
            .map(|a| {
                Ok((
                    XDP_ACTION_LABELS[a as usize],
                    self.counter("XDP_ACTIONS", a)?,
                ))
            })
            .collect()
    }

    pub fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        self.per_cpu_sum("BACKEND_STATS", id, |t: &mut BackendStats, v| {
            t.to_backend_packets += v.to_backend_packets;
            t.to_backend_bytes += v.to_backend_bytes;
            t.to_client_packets += v.to_client_packets;
            t.to_client_bytes += v.to_client_bytes;
            t.new_flows += v.new_flows;
        })
    }

    pub fn service_stats(&self, id: u32) -> Result<ServiceStats> {
        self.per_cpu_sum("SERVICE_STATS", id, |t: &mut ServiceStats, v| {
            t.packets += v.packets;
            t.bytes += v.bytes;
            t.new_flows += v.new_flows;
            t.dropped += v.dropped;
        })
    }

    /// Every entry of the connection table (client tuple → flow), read in batches.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        let fd = self.map_data("FLOWS")?.fd().as_fd();
        bpf_batch::lookup_all(fd, 4096).map_err(|source| DatapathError::Io {
            what: "reading FLOWS",
            source,
        })
    }

    /// Writes connection-table entries directly, in batches (benchmarks fill the table with
    /// them; the datapath alone creates flows in service).
    pub fn insert_flows(&mut self, flows: &[(FlowKey, FlowEntry)]) -> Result<()> {
        let (keys, entries): (Vec<FlowKey>, Vec<FlowEntry>) = flows.iter().copied().unzip();
        let fd = self.map_data("FLOWS")?.fd().as_fd();
        bpf_batch::update(fd, &keys, &entries).map_err(|source| DatapathError::Io {
            what: "writing FLOWS",
            source,
        })
    }

    /// What each map costs: its shape and the memory the kernel charges for it.
    pub fn footprints(&self) -> Result<Vec<MapFootprint>> {
        MAP_NAMES
            .iter()
            .map(|&name| {
                let data = self.map_data(name)?;
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

    /// Every reply entry (reply tuple → client tuple).
    pub fn replies(&self) -> Result<Vec<(FlowKey, ReplyEntry)>> {
        self.hash_entries("REPLIES")
    }
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

/// An IPv4 address as the datapath stores it.
pub fn addr_v4(addr: Ipv4Addr) -> Addr {
    v4(addr.octets())
}
