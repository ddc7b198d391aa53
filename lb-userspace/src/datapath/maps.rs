//! What the controller owns in the datapath: settings, VIPs, backend addresses, backends, rings,
//! services and port rules; written by `reconcile`, read back on adoption.

use std::{net::IpAddr, os::fd::AsFd};

use aya::{
    Pod,
    maps::{
        Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
};
use lb_common::{
    addr::{Addr, AddrKey},
    backend::{BackendInfo, BackendState},
    flow::{BackendPort, FlowEntry, FlowKey, REPLY_DERIVED, ReplyEntry, ServedBy},
    limits::MAX_BACKENDS,
    maps as names,
    next_hop::{BackendHop, NextHop},
    service::{RING_MAX_SIZE, ServiceInfo, ServiceRule, ServiceRuleKey},
    settings::DatapathSettings,
    stats::{BackendStats, FlowEvent},
    sticky::{StickyEntry, StickyKey, StickyMember},
};
use lb_model::port_rules::{RuleKey, addr_of, ip_of};

use super::{Datapath, DatapathError, Result, batch, io_err, map_err, reader::stage_maps};

/// `bpf_map_update_elem`'s flag: only replace an element that exists.
const BPF_EXIST: u64 = 2;

impl Datapath {
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

    fn hash_remove<K: Pod, V: Pod>(&mut self, name: &'static str, key: &K) -> Result<()> {
        let mut map: HashMap<&mut MapData, K, V> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        match map.remove(key) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other.map_err(map_err(name)),
        }
    }

    fn addr_keys(&self, name: &'static str) -> Result<Vec<IpAddr>> {
        Ok(self
            .reader
            .hash_entries::<AddrKey, u32>(name)?
            .into_iter()
            .map(|(k, _)| ip_of(&k.addr, k.family))
            .collect())
    }

    pub fn set_settings(&mut self, settings: &DatapathSettings) -> Result<()> {
        self.array_set(names::SETTINGS, 0, settings)
    }

    pub fn settings(&self) -> Result<DatapathSettings> {
        self.array_get(names::SETTINGS, 0)
    }

    /// Makes `addr` a VIP: traffic to it is balanced or dropped from now on.
    pub fn add_vip(&mut self, addr: IpAddr) -> Result<()> {
        self.hash_insert(names::VIPS, &addr_key(addr), &0u32)
    }

    pub fn remove_vip(&mut self, addr: IpAddr) -> Result<()> {
        self.hash_remove::<AddrKey, u32>(names::VIPS, &addr_key(addr))
    }

    pub fn vips(&self) -> Result<Vec<IpAddr>> {
        self.addr_keys(names::VIPS)
    }

    /// Marks `addr` as a backend address whose packets may be replies of balanced flows.
    pub fn add_backend_addr(&mut self, addr: IpAddr) -> Result<()> {
        self.hash_insert(names::BACKEND_ADDRS, &addr_key(addr), &0u32)
    }

    pub fn remove_backend_addr(&mut self, addr: IpAddr) -> Result<()> {
        self.hash_remove::<AddrKey, u32>(names::BACKEND_ADDRS, &addr_key(addr))
    }

    pub fn backend_addrs(&self) -> Result<Vec<IpAddr>> {
        self.addr_keys(names::BACKEND_ADDRS)
    }

    /// Two-arm cluster mode: backend port `key` serves `value`'s VIP and port.
    pub fn set_served_by(&mut self, key: &BackendPort, value: &ServedBy) -> Result<()> {
        self.hash_insert(names::SERVED_BY, key, value)
    }

    pub fn remove_served_by(&mut self, key: &BackendPort) -> Result<()> {
        self.hash_remove::<BackendPort, ServedBy>(names::SERVED_BY, key)
    }

    pub fn served_by(&self) -> Result<Vec<(BackendPort, ServedBy)>> {
        self.reader.hash_entries(names::SERVED_BY)
    }

    /// Sticky services: `member` of service `service_id` is backend `id`.
    pub fn set_sticky_member(&mut self, at: &StickyMember, id: u32) -> Result<()> {
        self.hash_insert(names::STICKY_MEMBERS, at, &id)
    }

    pub fn remove_sticky_member(&mut self, at: &StickyMember) -> Result<()> {
        self.hash_remove::<StickyMember, u32>(names::STICKY_MEMBERS, at)
    }

    pub fn sticky_members(&self) -> Result<Vec<(StickyMember, u32)>> {
        self.reader.hash_entries(names::STICKY_MEMBERS)
    }

    /// Forgets the sticky entries `keys` (the administrator's `sticky clear`); how many were
    /// there.
    pub fn remove_sticky(&mut self, keys: &[StickyKey]) -> Result<usize> {
        let name = names::STICKY;
        let mut map: HashMap<&mut MapData, StickyKey, StickyEntry> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        Ok(keys.iter().filter(|k| map.remove(k).is_ok()).count())
    }

    /// Every `BACKENDS` element, in id order (unused ones are all zero).
    pub fn backends(&self) -> Result<Vec<BackendInfo>> {
        let fd = self.map_data(names::BACKENDS)?.fd().as_fd();
        let mut all = batch::lookup_all::<u32, BackendInfo>(fd, MAX_BACKENDS as usize)
            .map_err(io_err("reading BACKENDS"))?;
        all.sort_by_key(|(id, _)| *id);
        Ok(all.into_iter().map(|(_, b)| b).collect())
    }

    /// Zeroes a backend id's counters (before the id is given to a different backend).
    pub fn reset_backend_stats(&mut self, id: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| DatapathError::Io {
            what: "counting CPUs",
            source,
        })?;
        let zeros = PerCpuValues::try_from(vec![BackendStats::default(); cpus])
            .map_err(io_err("zeroing BACKEND_STATS"))?;
        let name = names::BACKEND_STATS;
        let mut array: PerCpuArray<&mut MapData, BackendStats> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        array.set(id, zeros, 0).map_err(map_err(name))
    }

    /// Adds `n` to a flow event only the controller counts (the datapath never writes that
    /// index, so a read-modify-write of the first CPU's slot races with nobody).
    pub fn count_flow_event(&mut self, event: FlowEvent, n: u64) -> Result<()> {
        let name = names::FLOW_EVENTS;
        let mut array: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let mut values: Vec<u64> = array
            .get(&(event as u32), 0)
            .map_err(map_err(name))?
            .iter()
            .copied()
            .collect();
        values[0] += n;
        let values = PerCpuValues::try_from(values).map_err(io_err("counting a flow event"))?;
        array.set(event as u32, values, 0).map_err(map_err(name))
    }

    /// Writes backend `id`, its kept next hop labelled with its address first.
    pub fn set_backend(&mut self, id: u32, backend: &BackendInfo) -> Result<()> {
        self.label_backend_hop(id, &backend.addr)?;
        self.array_set(names::BACKENDS, id, backend)
    }

    /// Labels backend `id`'s kept next hop with `addr` (emptied), then bumps the epoch, unless
    /// it is labelled so already. The datapath keeps an answer only in an element labelled with
    /// the packet's address and never relabels one, and a packet that read the epoch before the
    /// bump leaves a stale answer: no answer for one address is ever kept under another, even
    /// for a packet in flight while a reload gives the id another address.
    pub fn label_backend_hop(&mut self, id: u32, addr: &Addr) -> Result<()> {
        let kept: BackendHop = self.array_get(names::BACKEND_HOPS, id)?;
        if kept.addr == *addr {
            return Ok(());
        }
        let labelled = BackendHop {
            addr: *addr,
            hop: NextHop::NONE,
        };
        self.array_set(names::BACKEND_HOPS, id, &labelled)?;
        self.bump_next_hop_epoch().map(|_| ())
    }

    /// Held routing: backend `id`'s next hop, as the controller resolved it, under its address.
    /// The datapath never writes these (it asks no FIB), so a whole-element write races with
    /// nothing.
    pub fn hold_backend_hop(&mut self, id: u32, addr: &Addr, hop: &NextHop) -> Result<()> {
        let held = BackendHop {
            addr: *addr,
            hop: *hop,
        };
        self.array_set(names::BACKEND_HOPS, id, &held)
    }

    pub fn backend(&self, id: u32) -> Result<BackendInfo> {
        self.array_get(names::BACKENDS, id)
    }

    /// Changes only a backend's state (up, draining, down).
    pub fn set_backend_state(&mut self, id: u32, state: BackendState) -> Result<()> {
        let mut backend = self.backend(id)?;
        backend.state = state as u8;
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
        let fd = self.map_data(names::RING)?.fd().as_fd();
        batch::update_array(fd, base, table).map_err(io_err("writing RING"))?;
        Ok(base)
    }

    pub fn set_service(&mut self, id: u32, service: &ServiceInfo) -> Result<()> {
        self.hash_insert(names::SERVICES, &id, service)
    }

    pub fn remove_service(&mut self, id: u32) -> Result<()> {
        self.hash_remove::<u32, ServiceInfo>(names::SERVICES, &id)
    }

    pub fn services(&self) -> Result<Vec<(u32, ServiceInfo)>> {
        self.reader.hash_entries(names::SERVICES)
    }

    fn rules_mut(&mut self) -> Result<LpmTrie<&mut MapData, ServiceRuleKey, ServiceRule>> {
        LpmTrie::try_from(self.map_mut(names::SERVICE_RULES)?)
            .map_err(map_err(names::SERVICE_RULES))
    }

    pub fn insert_rule(&mut self, key: RuleKey, service_id: u32) -> Result<()> {
        let (bits, data) = key.to_kernel();
        self.rules_mut()?
            .insert(&Key::new(bits, data), ServiceRule { service_id }, 0)
            .map_err(map_err(names::SERVICE_RULES))
    }

    pub fn remove_rule(&mut self, key: RuleKey) -> Result<()> {
        let (bits, data) = key.to_kernel();
        match self.rules_mut()?.remove(&Key::new(bits, data)) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other.map_err(map_err(names::SERVICE_RULES)),
        }
    }

    pub fn rules(&self) -> Result<Vec<(RuleKey, u32)>> {
        let name = names::SERVICE_RULES;
        let rules: LpmTrie<&MapData, ServiceRuleKey, ServiceRule> =
            LpmTrie::try_from(self.map(name)?).map_err(map_err(name))?;
        rules
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(map_err(name))?;
                Ok((
                    RuleKey::from_kernel(k.prefix_len(), &k.data()),
                    v.service_id,
                ))
            })
            .collect()
    }

    /// Removes `flows` (as read from the established table, or the half-open one) with their
    /// reply entries. A flow is removed only if it still goes where it went when read (the
    /// datapath may have re-selected it since), a reply entry only if it still points back at
    /// the flow. Returns how many flows were removed.
    pub fn remove_flows(
        &mut self,
        half_open: bool,
        flows: &[(FlowKey, FlowEntry)],
    ) -> Result<usize> {
        let (flows_map, replies_map) = stage_maps(half_open);
        let mut removed = Vec::new();
        {
            let mut map: HashMap<&mut MapData, FlowKey, FlowEntry> =
                HashMap::try_from(self.map_mut(flows_map)?).map_err(map_err(flows_map))?;
            for (key, read) in flows {
                let unchanged = map
                    .get(key, 0)
                    .is_ok_and(|now| now.backend_id == read.backend_id && now.reply == read.reply);
                if unchanged && map.remove(key).is_ok() {
                    removed.push((*key, read.reply));
                }
            }
        }
        let mut map: HashMap<&mut MapData, FlowKey, ReplyEntry> =
            HashMap::try_from(self.map_mut(replies_map)?).map_err(map_err(replies_map))?;
        for (client, reply) in &removed {
            if map.get(reply, 0).is_ok_and(|owner| owner.client == *client) {
                let _ = map.remove(reply);
            }
        }
        let event = if half_open {
            FlowEvent::HalfOpenForeignRemoved
        } else {
            FlowEvent::ForeignRemoved
        };
        if !removed.is_empty() {
            self.count_flow_event(event, removed.len() as u64)?;
        }
        Ok(removed.len())
    }

    /// Re-points flows (of the half-open or established stage) at another backend id, each
    /// with its reply entry, unless the datapath changed the flow since it was read. Returns
    /// how many were re-pointed. The datapath's own stores into an entry in the instant of its
    /// rewrite (its last-seen time, a FIN) may be lost: the next packet stores them again.
    pub fn repoint_flows(
        &mut self,
        half_open: bool,
        flows: &[((FlowKey, FlowEntry), u32)],
    ) -> Result<usize> {
        let (flows_map, replies_map) = stage_maps(half_open);
        let mut moved = Vec::new();
        {
            let mut map: HashMap<&mut MapData, FlowKey, FlowEntry> =
                HashMap::try_from(self.map_mut(flows_map)?).map_err(map_err(flows_map))?;
            for &((key, read), id) in flows {
                let Ok(mut now) = map.get(&key, 0) else {
                    continue;
                };
                if now.backend_id != read.backend_id || now.reply != read.reply {
                    continue;
                }
                now.backend_id = id;
                if map.insert(key, now, BPF_EXIST).is_ok() {
                    moved.push((key, now.reply, id));
                }
            }
        }
        let mut map: HashMap<&mut MapData, FlowKey, ReplyEntry> =
            HashMap::try_from(self.map_mut(replies_map)?).map_err(map_err(replies_map))?;
        for (client, reply, id) in &moved {
            if let Ok(mut owner) = map.get(reply, 0)
                && owner.client == *client
            {
                owner.backend_id = *id;
                let _ = map.insert(reply, owner, BPF_EXIST);
            }
        }
        if !moved.is_empty() {
            self.count_flow_event(FlowEvent::Repointed, moved.len() as u64)?;
        }
        Ok(moved.len())
    }

    /// Removes an established flow's entry alone, leaving its reply entry, as the kernel's LRU
    /// may when the table is full (tests of what the datapath does then). Whether it was there.
    pub fn evict_flow(&mut self, key: &FlowKey) -> Result<bool> {
        let name = names::FLOWS;
        let mut map: HashMap<&mut MapData, FlowKey, FlowEntry> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        Ok(map.remove(key).is_ok())
    }

    /// Writes sticky entries directly, in batches (benchmarks fill the table with them; the
    /// datapath alone records clients in service).
    pub fn insert_sticky(&mut self, entries: &[(StickyKey, StickyEntry)]) -> Result<()> {
        let (keys, values): (Vec<StickyKey>, Vec<StickyEntry>) = entries.iter().copied().unzip();
        let fd = self.map_data(names::STICKY)?.fd().as_fd();
        batch::update(fd, &keys, &values).map_err(io_err("writing STICKY"))
    }

    /// Writes established flows directly, each with its reply entry unless it derives its
    /// replies, in batches (benchmarks fill the table with them; the datapath alone creates
    /// flows in service).
    pub fn insert_flows(&mut self, flows: &[(FlowKey, FlowEntry)]) -> Result<()> {
        let (keys, entries): (Vec<FlowKey>, Vec<FlowEntry>) = flows.iter().copied().unzip();
        let fd = self.map_data(names::FLOWS)?.fd().as_fd();
        batch::update(fd, &keys, &entries).map_err(io_err("writing FLOWS"))?;
        let (replies, owners): (Vec<FlowKey>, Vec<ReplyEntry>) = claimed_replies(flows).unzip();
        if replies.is_empty() {
            return Ok(());
        }
        let fd = self.map_data(names::REPLIES)?.fd().as_fd();
        batch::update(fd, &replies, &owners).map_err(io_err("writing REPLIES"))
    }

    /// Writes the reply table of the half-open or the established flows again from the flows,
    /// for a table whose pin was lost (`pins`): each claimed reply tuple that the table does
    /// not hold, so that it may run again once the program that fills the table is in place
    /// (a flow promoted meanwhile) without overwriting a claim the datapath made. How many
    /// entries it wrote.
    pub fn rebuild_replies(&mut self, half_open: bool) -> Result<usize> {
        let flows = self.reader.flows_in(half_open)?;
        let name = super::reader::stage_maps(half_open).1;
        let mut map: HashMap<&mut MapData, FlowKey, ReplyEntry> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let mut written = 0;
        for (reply, owner) in claimed_replies(&flows) {
            match map.insert(reply, owner, u64::from(aya_obj::generated::BPF_NOEXIST)) {
                Ok(()) => written += 1,
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(written)
    }
}

/// The reply entry (reply tuple, owner) of each of `flows` that claimed one; a flow that
/// derives its replies has none.
fn claimed_replies(
    flows: &[(FlowKey, FlowEntry)],
) -> impl Iterator<Item = (FlowKey, ReplyEntry)> + '_ {
    flows
        .iter()
        .filter(|(_, f)| f.flags & REPLY_DERIVED == 0)
        .map(|(client, f)| {
            let owner = ReplyEntry {
                client: *client,
                backend_id: f.backend_id,
                _pad: 0,
            };
            (f.reply, owner)
        })
}

/// The address-set key of `addr`.
fn addr_key(addr: IpAddr) -> AddrKey {
    let (addr, family) = addr_of(addr);
    AddrKey::new(addr, family)
}
