//! The datapath image a config asks for: every map entry the controller owns, computed without
//! touching the kernel. `reconcile` then moves the real maps to this image.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use lb_common::{
    backend::BackendInfo,
    cluster::cluster_mac,
    flow::{
        BackendPort, FlowEntry, FlowKey, IDLE_CLASS_SHIFT, MAX_IDLE_CLASSES, MAX_LISTED_RANGE,
        MAX_SERVED_BY, SERVES_ALONE, ServedBy,
    },
    next_hop::NextHop,
    service::{KEEPS_FLOWS_OF_DOWN, NO_BACKEND, ServiceInfo},
    settings::{DatapathSettings, Mode, OwnMac, Routing},
    sticky::StickyMember,
};

use crate::{
    config::{Config, Filtering, OnBackendDown, Service},
    ids::IdBook,
    lifecycle::BackendState,
    maglev::{self, Member},
    port_rules::{RuleKey, addr_of, ip_of},
};

/// One service as the datapath holds it: its `SERVICES` value (without the ring base, which
/// depends on the slot it lands in) and its consistent-hash table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePlan {
    pub info: ServiceInfo,
    pub table: Vec<u32>,
}

impl ServicePlan {
    /// Has a backend for new flows (otherwise they are dropped as `no_backend`).
    pub fn serving(&self) -> bool {
        self.info.ring_size > 0 || self.info.single_backend != NO_BACKEND
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub settings: DatapathSettings,
    pub vips: BTreeSet<IpAddr>,
    pub backend_addrs: BTreeSet<IpAddr>,
    pub rules: BTreeMap<RuleKey, u32>,
    pub services: BTreeMap<u32, ServicePlan>,
    pub backends: BTreeMap<u32, BackendInfo>,
    /// Held routing: each backend's next hop (`NextHop::NONE` while it has none), by backend id.
    /// Empty under FIB routing, where the datapath keeps the FIB's answers itself.
    pub held_hops: BTreeMap<u32, NextHop>,
    /// Two-arm: the VIP and port each backend port serves alone, or served alone before
    /// (`SERVED_BY`, see `lb_common::flow::ServedBy`).
    pub served_by: BTreeMap<BackendPort, ServedBy>,
    /// Sticky services: each backend's id by (service, member) (`STICKY_MEMBERS`, see
    /// `lb_common::sticky`).
    pub sticky_members: BTreeMap<StickyMember, u32>,
}

/// What only the running system knows and the image depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The attached interfaces' own addresses: only frames sent to them are acted on.
    pub own_macs: Vec<OwnMac>,
    /// `Some` for held routing (one-arm on a host that does not forward): the next hop towards
    /// each backend address that has one now. `None`: the datapath asks the FIB.
    pub held_hops: Option<BTreeMap<IpAddr, NextHop>>,
    /// What `SERVED_BY` holds now: flows that derived their replies from an entry keep
    /// finding them after a reload makes its backend port serve more.
    pub served_by: BTreeMap<BackendPort, ServedBy>,
    /// What `DatapathSettings::idle_timeouts_ns` holds now: a flow carries its idle class for
    /// its whole life, so a value keeps its class across reloads (`idle_slots`).
    pub idle_timeouts_ns: [u64; MAX_IDLE_CLASSES + 1],
}

impl Default for Image {
    fn default() -> Self {
        Self {
            settings: DatapathSettings::defaults(),
            vips: BTreeSet::new(),
            backend_addrs: BTreeSet::new(),
            rules: BTreeMap::new(),
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            held_hops: BTreeMap::new(),
            served_by: BTreeMap::new(),
            sticky_members: BTreeMap::new(),
        }
    }
}

/// (backend id, name, weight) of a table's members: all a Maglev table depends on.
type MemberKey = Vec<(u32, String, u32)>;

/// Consistent-hash tables by the members they were built from, kept from one image to the
/// next: a health change rebuilds the one table it touches, not every service's (a build is
/// about a millisecond for 65537 entries).
#[derive(Debug, Default)]
pub struct TableCache(HashMap<MemberKey, Vec<u32>>);

impl TableCache {
    /// The table for `members`, from the previous image's tables or built now; recorded in
    /// `next`, which becomes the cache once the image is done.
    fn table(&mut self, members: &[Member], next: &mut HashMap<MemberKey, Vec<u32>>) -> Vec<u32> {
        let key: MemberKey = members
            .iter()
            .map(|m| (m.id, m.name.to_string(), m.weight))
            .collect();
        let table = match self.0.remove(&key).or_else(|| next.get(&key).cloned()) {
            Some(t) => t,
            None => maglev::build(members, maglev::DEFAULT_TABLE_SIZE),
        };
        next.insert(key, table.clone());
        table
    }
}

/// The image for `config` with the given ids (already assigned for every service and
/// backend) and backend states, on the running system `host`. `tables` keeps the Maglev
/// tables for the next call.
pub fn image(
    config: &Config,
    ids: &IdBook,
    state: impl Fn(&str, &str) -> BackendState,
    host: &HostFacts,
    tables: &mut TableCache,
) -> Image {
    let mut next_tables = HashMap::new();
    let mut img = Image {
        settings: settings(config, &host.idle_timeouts_ns),
        ..Default::default()
    };
    for (slot, mac) in img.settings.own_macs.iter_mut().zip(&host.own_macs) {
        *slot = *mac;
    }
    if host.held_hops.is_some() {
        img.settings.routing = Routing::Held as u8;
    }
    cluster_settings(config, host, &mut img.settings);
    for service in &config.services {
        let sid = ids.services[&service.name];
        img.vips.insert(service.vip);
        for range in &service.ports {
            for &proto in service.protocol.numbers() {
                for key in RuleKey::covering(service.vip, proto, range.lo, range.hi) {
                    img.rules.insert(key, sid);
                }
            }
        }
        let mut members = Vec::new();
        for (i, b) in service.backends.iter().enumerate() {
            let bid = ids
                .backend_id(&service.name, &b.name)
                .expect("ids assigned");
            let st = state(&service.name, &b.name);
            img.backend_addrs.insert(b.address);
            if let Some(held) = &host.held_hops {
                let hop = held.get(&b.address).copied().unwrap_or(NextHop::NONE);
                img.held_hops.insert(bid, hop);
            }
            let (addr, family) = addr_of(b.address);
            let member = member_of(&b.name);
            img.backends.insert(
                bid,
                BackendInfo {
                    addr,
                    port: b.port.unwrap_or(0).to_be(),
                    family,
                    state: st as u8,
                    service_id: sid,
                    member,
                },
            );
            if service.sticky() {
                let at = StickyMember {
                    service_id: sid,
                    member,
                };
                img.sticky_members.insert(at, bid);
            }
            if st.in_rotation() && b.weight > 0 {
                members.push((service.priority_of(i), bid, b.name.as_str(), b.weight));
            }
        }
        let mut plan = service_plan(service, members, tables, &mut next_tables);
        plan.info.flags |= idle_class(&img.settings, service) << IDLE_CLASS_SHIFT;
        img.services.insert(sid, plan);
    }
    tables.0 = next_tables;
    if config.mode == Mode::TwoArm {
        img.served_by = served_by(config, ids, &host.served_by);
    }
    img
}

/// Two-arm: `SERVED_BY` for `config`, where `before` is what it holds now. A backend port that
/// serves exactly one VIP and port names it, `SERVES_ALONE` (a backend port reached from two VIP
/// ports, or from two services, says nothing about which its client reached). One that serves
/// more keeps the entry it had, without the flag, for the flows that derived their replies from
/// it. A port served by nothing has none. Entries `before` had come first when there are more
/// than the map holds: the ports left out claim reply entries.
fn served_by(
    config: &Config,
    ids: &IdBook,
    before: &BTreeMap<BackendPort, ServedBy>,
) -> BTreeMap<BackendPort, ServedBy> {
    let mut seen: BTreeMap<BackendPort, Option<ServedBy>> = BTreeMap::new();
    let mut note = |key: BackendPort, value: Option<ServedBy>| {
        let slot = seen.entry(key).or_insert(value);
        if *slot != value {
            *slot = None;
        }
    };
    // Wide ranges whose backend keeps the client's port: (address, protocol, ports).
    let mut wide = Vec::new();
    for service in &config.services {
        let sid = ids.services[&service.name];
        let (vip, family) = addr_of(service.vip);
        for b in &service.backends {
            let bid = ids
                .backend_id(&service.name, &b.name)
                .expect("ids assigned");
            let (addr, _) = addr_of(b.address);
            for &proto in service.protocol.numbers() {
                let key = |port: u16| BackendPort {
                    addr,
                    port: port.to_be(),
                    proto,
                    _pad: 0,
                };
                for range in &service.ports {
                    if range.hi - range.lo >= MAX_LISTED_RANGE {
                        match b.port {
                            Some(port) => note(key(port), None),
                            None => wide.push((addr, proto, range.lo..=range.hi)),
                        }
                        continue;
                    }
                    for vport in range.lo..=range.hi {
                        let value = ServedBy {
                            vip,
                            vip_port: vport.to_be(),
                            flags: SERVES_ALONE,
                            family,
                            service_id: sid,
                            backend_id: bid,
                        };
                        note(key(b.port.unwrap_or(vport)), Some(value));
                    }
                }
            }
        }
    }
    for (key, alone) in seen.iter_mut() {
        let port = u16::from_be(key.port);
        if wide.iter().any(|(addr, proto, ports)| {
            *addr == key.addr && *proto == key.proto && ports.contains(&port)
        }) {
            *alone = None;
        }
    }
    let want = seen.into_iter().filter_map(|(key, alone)| match alone {
        Some(value) => Some((key, value)),
        None => before
            .get(&key)
            .map(|had| (key, ServedBy { flags: 0, ..*had })),
    });
    let (kept, new): (Vec<_>, Vec<_>) = want.partition(|(key, _)| before.contains_key(key));
    kept.into_iter()
        .chain(new)
        .take(MAX_SERVED_BY as usize)
        .collect()
}

/// Cluster mode: the cluster MAC answered for every VIP on the client interface and accepted
/// there as the node's own; in two-arm, the shared gateway's on the server interface too.
fn cluster_settings(config: &Config, host: &HostFacts, s: &mut DatapathSettings) {
    let (Some(cluster), Some(vip)) = (&config.cluster, config.cluster_vip()) else {
        return;
    };
    let Some(client) = host.own_macs.first() else {
        return;
    };
    // (interface, MAC, the interface's MTU): the cluster MACs accepted besides the own ones.
    let mut accepted = vec![(
        client.ifindex,
        cluster_mac(cluster.mac_mode, vip.octets()),
        client.mtu,
    )];
    let c = &mut s.cluster;
    c.enabled = 1;
    c.node_id = cluster.node_id;
    c.client_ifindex = client.ifindex;
    c.own_client_mac = client.mac;
    c.vip_mac = accepted[0].1;
    if let (Some(IpAddr::V4(gateway)), Some(server)) = (cluster.gateway, host.own_macs.get(1)) {
        c.gateway = u32::from_ne_bytes(gateway.octets());
        c.gateway_mac = cluster_mac(cluster.mac_mode, gateway.octets());
        c.server_ifindex = server.ifindex;
        c.own_server_mac = server.mac;
        accepted.push((server.ifindex, c.gateway_mac, server.mtu));
    }
    let slots = s.own_macs.iter_mut().skip(host.own_macs.len());
    for (slot, (ifindex, mac, mtu)) in slots.zip(accepted) {
        *slot = OwnMac { ifindex, mac, mtu };
    }
}

/// `members`: (priority, backend id, name, weight) of the backends taking new flows.
fn service_plan(
    service: &Service,
    members: Vec<(u32, u32, &str, u32)>,
    tables: &mut TableCache,
    next_tables: &mut HashMap<MemberKey, Vec<u32>>,
) -> ServicePlan {
    let mut info = ServiceInfo {
        ring_base: 0,
        ring_size: 0,
        single_backend: NO_BACKEND,
        hash_seed: seed_of(service),
        filtering: service.filtering as u8,
        affinity: service.affinity as u8,
        network_prefix: service.network_prefix(),
        flags: match service.on_backend_down {
            OnBackendDown::Keep => KEEPS_FLOWS_OF_DOWN,
            OnBackendDown::Reset => 0,
        },
        sticky_timeout_ms: service.sticky_timeout_ms(),
    };
    let mut table = Vec::new();
    match service.filtering {
        Filtering::Single => {
            if let Some(best) = members.iter().min_by_key(|m| m.0) {
                info.single_backend = best.1;
            }
        }
        Filtering::Multiple if !members.is_empty() => {
            let m: Vec<Member> = members
                .iter()
                .map(|&(_, id, name, weight)| Member { id, name, weight })
                .collect();
            table = tables.table(&m, next_tables);
            info.ring_size = table.len() as u32;
        }
        _ => {}
    }
    ServicePlan { info, table }
}

/// A backend's number in its service's sticky table: of its name, so that it is the same in
/// every service of a persistence group and across restarts and reloads.
pub fn member_of(backend: &str) -> u32 {
    hash_seed(&format!("member {backend}"))
}

/// A service's hash seed, of its persistence key (its group's name, or its own): affinity
/// survives restarts and reloads, a group's services hash alike, and it names the service's
/// sticky table (`lb_common::sticky`).
pub fn seed_of(service: &Service) -> u32 {
    hash_seed(&service.persistence_key())
}

/// A seed that depends only on `name` (FNV-1a).
pub fn hash_seed(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// `service`'s idle class: where `settings` keeps its `idle_timeout`; 0 (the protocol's own
/// timeout) without one.
fn idle_class(settings: &DatapathSettings, service: &Service) -> u8 {
    let ns = service.idle_timeout.as_nanos() as u64;
    match settings
        .idle_timeouts_ns
        .iter()
        .skip(1)
        .position(|&t| t == ns)
    {
        Some(i) if ns != 0 => i as u8 + 1,
        _ => 0,
    }
}

/// The datapath settings for `config`, where `idle_before` is what the running settings' idle
/// classes hold (`HostFacts::idle_timeouts_ns`).
pub fn settings(config: &Config, idle_before: &[u64; MAX_IDLE_CLASSES + 1]) -> DatapathSettings {
    let mut s = DatapathSettings::defaults();
    // Validation refuses `dsr`; the datapath knows two-arm and one-arm.
    s.mode = match config.mode {
        Mode::OneArm => Mode::OneArm,
        Mode::TwoArm | Mode::Dsr => Mode::TwoArm,
    } as u8;
    s.tcp_timeout_ns = config.conntrack.tcp_timeout.as_nanos() as u64;
    s.tcp_closing_timeout_ns = config.conntrack.tcp_closing_timeout.as_nanos() as u64;
    s.tcp_closed_timeout_ns = config.conntrack.tcp_closed_timeout.as_nanos() as u64;
    s.udp_timeout_ns = config.conntrack.udp_timeout.as_nanos() as u64;
    s.half_open_timeout_ns = config.conntrack.half_open_timeout.as_nanos() as u64;
    let wanted: Vec<u64> = config
        .idle_timeouts()
        .iter()
        .map(|t| t.as_nanos() as u64)
        .collect();
    s.idle_timeouts_ns = idle_slots(idle_before, &wanted);
    if let Some(snat) = &config.snat {
        // IPv4 addresses first, then IPv6 ones (`DatapathSettings::snat_count_v6`).
        let (v4s, v6s): (Vec<IpAddr>, Vec<IpAddr>) =
            snat.addresses.iter().partition(|a| a.is_ipv4());
        for (slot, &addr) in s.snat_addrs.iter_mut().zip(v4s.iter().chain(&v6s)) {
            *slot = addr_of(addr).0;
        }
        s.snat_count = v4s.len() as u32;
        s.snat_count_v6 = v6s.len() as u8;
        s.snat_port_min = snat.ports.lo;
        s.snat_port_max = snat.ports.hi;
    }
    s
}

/// The idle classes' timeouts holding every value of `wanted` (distinct, at most
/// `MAX_IDLE_CLASSES`: validated), given what they hold now (`before`). Flows carry their
/// class, not the value, so a value kept by the config keeps its class, and a value the config
/// no longer has keeps its class too (the flows that started under it keep their timeout until
/// they end) until a new value needs the room: new values take never-used classes first.
/// Class 0 is the protocol's own timeout and holds nothing.
pub fn idle_slots(
    before: &[u64; MAX_IDLE_CLASSES + 1],
    wanted: &[u64],
) -> [u64; MAX_IDLE_CLASSES + 1] {
    let mut slots = *before;
    slots[0] = 0;
    let new: Vec<u64> = wanted
        .iter()
        .copied()
        .filter(|w| *w != 0 && !slots[1..].contains(w))
        .collect();
    let never_used = (1..slots.len()).filter(|&c| slots[c] == 0);
    let stale = (1..slots.len()).filter(|&c| slots[c] != 0 && !wanted.contains(&slots[c]));
    let free: Vec<usize> = never_used.chain(stale).collect();
    for (class, value) in free.into_iter().zip(new) {
        slots[class] = value;
    }
    slots
}

/// What a reload does with a flow already in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowFate {
    /// Its backend id still names, in the service its tuple belongs to, the backend it went to.
    Keep,
    /// Its tuple now belongs to another service (a split, a merge) that has the backend it went
    /// to (same address and port) under this id: re-pointed there, it goes on.
    Repoint(u32),
    /// It no longer belongs to the backend it was balanced to: its tuple matches no service, or
    /// its service has no backend at the address and port it went to. The datapath never
    /// follows such a flow's id to another backend (it re-selects on the next packet); the
    /// controller removes it, so that the table, `xnlb status` and the metrics hold only flows
    /// that can still go where they went.
    Foreign,
}

/// The fate of each of `flows` under `image`.
pub fn flow_fates(image: &Image, flows: &[(FlowKey, FlowEntry)]) -> Vec<FlowFate> {
    let mut service_of: HashMap<(IpAddr, u8, u16), Option<u32>> = HashMap::new();
    // Each service's backends, to find the one at a flow's address and port.
    let mut members: HashMap<u32, Vec<(u32, &BackendInfo)>> = HashMap::new();
    for (&id, b) in &image.backends {
        members.entry(b.service_id).or_default().push((id, b));
    }
    flows
        .iter()
        .map(|(key, entry)| {
            let vip = ip_of(&key.dst, key.family);
            let port = u16::from_be(key.dst_port);
            let service = *service_of.entry((vip, key.proto, port)).or_insert_with(|| {
                image
                    .rules
                    .iter()
                    .find(|(rule, _)| rule.covers(vip, key.proto, port))
                    .map(|(_, &sid)| sid)
            });
            let Some(sid) = service else {
                return FlowFate::Foreign;
            };
            let (addr, port) = (&entry.reply.src, entry.reply.src_port);
            let own = image.backends.get(&entry.backend_id);
            if own.is_some_and(|b| b.is(sid, addr) && b.serves(addr, port)) {
                return FlowFate::Keep;
            }
            members
                .get(&sid)
                .and_then(|m| m.iter().find(|(_, b)| b.serves(addr, port)))
                .map_or(FlowFate::Foreign, |&(id, _)| FlowFate::Repoint(id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_common::addr::FAMILY_V4;

    use super::*;
    use crate::config;
    use crate::port_rules::addr_v4;

    const TEXT: &str = "interfaces: { client: a, server: b }
services:
  - name: web
    vip: 198.18.1.1
    ports: [80, \"1000-1001\"]
    protocol: both
    backends:
      - { name: a, address: 198.18.2.1 }
      - { name: b, address: 198.18.2.2, weight: 0 }
      - { name: c, address: 198.18.2.3, port: 8080 }
  - name: one
    vip: 198.18.1.1
    ports: [443]
    filtering: single
    backends:
      - { name: x, address: 198.18.2.1, priority: 5 }
      - { name: y, address: 198.18.2.4, priority: 2 }
";

    fn image_with(down: &[&str]) -> (Image, IdBook) {
        image_cached(down, &mut TableCache::default())
    }

    fn image_cached(down: &[&str], tables: &mut TableCache) -> (Image, IdBook) {
        let config = config::parse(TEXT, "t").unwrap().config;
        let mut ids = IdBook::default();
        ids.assign(&config, 4, 16).unwrap();
        let state = |_: &str, b: &str| {
            if down.contains(&b) {
                BackendState::Down
            } else {
                BackendState::Up
            }
        };
        let img = image(&config, &ids, state, &HostFacts::default(), tables);
        (img, ids)
    }

    #[test]
    fn cached_tables_equal_fresh_ones_and_only_changed_members_rebuild() {
        let mut tables = TableCache::default();
        let (all_up, _) = image_cached(&[], &mut tables);
        assert_eq!(tables.0.len(), 1, "one Maglev table (web); `one` is single");
        let (a_down, _) = image_cached(&["a"], &mut tables);
        assert_eq!(a_down, image_with(&["a"]).0);
        assert_eq!(
            tables.0.len(),
            1,
            "only tables the last image used are kept"
        );
        let (again, _) = image_cached(&[], &mut tables);
        assert_eq!(again, all_up);
    }

    #[test]
    fn rules_backends_and_tables() {
        let (img, ids) = image_with(&[]);
        // 80 and 1000-1001 (one /15 prefix) for TCP and UDP, 443 for TCP.
        assert_eq!(img.rules.len(), 5);
        assert_eq!(img.vips.len(), 1);
        assert_eq!(img.backend_addrs.len(), 4);
        assert_eq!(img.backends.len(), 5);
        let web = &img.services[&ids.services["web"]];
        let b = ids.backend_id("web", "b").unwrap();
        assert!(!web.table.contains(&b), "weight 0 takes no new flows");
        let c = ids.backend_id("web", "c").unwrap();
        assert_eq!(img.backends[&c].port, 8080u16.to_be());
        let one = &img.services[&ids.services["one"]];
        assert_eq!(one.info.single_backend, ids.backend_id("one", "y").unwrap());
        assert!(one.table.is_empty());
    }

    #[test]
    fn a_down_backend_leaves_the_table_and_single_fails_over() {
        let (img, ids) = image_with(&["y", "c"]);
        let c = ids.backend_id("web", "c").unwrap();
        let web = &img.services[&ids.services["web"]];
        assert!(!web.table.contains(&c));
        assert_eq!(img.backends[&c].state, BackendState::Down as u8);
        let one = &img.services[&ids.services["one"]];
        assert_eq!(one.info.single_backend, ids.backend_id("one", "x").unwrap());
    }

    #[test]
    fn a_backend_port_names_its_vip_only_when_it_serves_one() {
        let config = config::parse(TEXT, "t").unwrap().config;
        let mut ids = IdBook::default();
        ids.assign(&config, 4, 16).unwrap();
        let served = served_by(&config, &ids, &BTreeMap::new());
        let at = |addr: [u8; 4], port: u16, proto: u8| {
            served.get(&BackendPort {
                addr: lb_common::addr::v4(addr),
                port: port.to_be(),
                proto,
                _pad: 0,
            })
        };
        let (tcp, udp) = (lb_common::addr::PROTO_TCP, lb_common::addr::PROTO_UDP);
        // `a` keeps the client's port: each of web's ports is its own backend port.
        let a = at([198, 18, 2, 1], 1001, udp).expect("a:1001/udp");
        assert_eq!(u16::from_be(a.vip_port), 1001);
        assert_eq!(a.service_id, ids.services["web"]);
        assert_eq!(a.backend_id, ids.backend_id("web", "a").unwrap());
        // The same address serves `one` on 443 as `x`.
        let x = at([198, 18, 2, 1], 443, tcp).expect("x:443/tcp");
        assert_eq!(x.backend_id, ids.backend_id("one", "x").unwrap());
        // `c` serves every web port on 8080: its packets do not say which.
        assert_eq!(at([198, 18, 2, 3], 8080, tcp), None);
        assert!(served.values().all(|v| v.flags == SERVES_ALONE));
    }

    #[test]
    fn a_backend_port_that_comes_to_serve_more_keeps_its_entry_without_the_flag() {
        let key = |addr: [u8; 4], port: u16| BackendPort {
            addr: lb_common::addr::v4(addr),
            port: port.to_be(),
            proto: lb_common::addr::PROTO_TCP,
            _pad: 0,
        };
        let config = config::parse(TEXT, "t").unwrap().config;
        let mut ids = IdBook::default();
        ids.assign(&config, 4, 16).unwrap();
        let before = served_by(&config, &ids, &BTreeMap::new());
        // Another VIP's port 80 on `a`, and a wide range on `y` that covers 443.
        let more = format!(
            "{TEXT}  - name: more
    vip: 198.18.1.2
    ports: [80]
    backends: [{{ name: a, address: 198.18.2.1 }}]
  - name: wide
    vip: 198.18.1.3
    ports: [\"1-1024\"]
    backends: [{{ name: y, address: 198.18.2.4 }}]
"
        );
        let config = config::parse(&more, "t").unwrap().config;
        ids.assign(&config, 4, 16).unwrap();
        let after = served_by(&config, &ids, &before);
        let a80 = key([198, 18, 2, 1], 80);
        assert_eq!(
            after[&a80],
            ServedBy {
                flags: 0,
                ..before[&a80]
            },
            "a:80 kept for web's flows, no longer serving web:80 alone"
        );
        let y443 = key([198, 18, 2, 4], 443);
        assert_eq!(before[&y443].flags, SERVES_ALONE);
        assert_eq!(after[&y443].flags, 0, "the wide range reaches y:443 too");
        assert_eq!(
            served_by(&config, &ids, &BTreeMap::new()).get(&y443),
            None,
            "nothing to keep: no entry"
        );
        // Back to the first config: served alone again.
        let config = config::parse(TEXT, "t").unwrap().config;
        assert_eq!(served_by(&config, &ids, &after)[&a80], before[&a80]);
    }

    #[test]
    fn a_flow_keeps_its_backend_follows_it_to_another_service_or_is_foreign() {
        let (img, ids) = image_with(&[]);
        let a = ids.backend_id("web", "a").unwrap();
        let c = ids.backend_id("web", "c").unwrap();
        let x = ids.backend_id("one", "x").unwrap();
        // A flow to VIP:`port`, balanced to `backend`:`to` under `backend_id`.
        let flow = |port: u16, backend_id: u32, backend: Ipv4Addr, to: u16| {
            let key = FlowKey {
                src: addr_v4(Ipv4Addr::new(198, 19, 0, 1)),
                dst: addr_v4(Ipv4Addr::new(198, 18, 1, 1)),
                src_port: 40_000u16.to_be(),
                dst_port: port.to_be(),
                proto: lb_common::addr::PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            };
            let entry = FlowEntry {
                backend_id,
                reply: FlowKey {
                    src: addr_v4(backend),
                    dst: key.src,
                    src_port: to.to_be(),
                    dst_port: key.src_port,
                    ..key
                },
                ..Default::default()
            };
            (key, entry)
        };
        let a_addr = Ipv4Addr::new(198, 18, 2, 1);
        let c_addr = Ipv4Addr::new(198, 18, 2, 3);
        let flows = [
            flow(80, a, a_addr, 80),                       // web → a: its own
            flow(1001, a, a_addr, 1001),                   // web's range → a: its own
            flow(443, x, a_addr, 443),                     // one → x (same address): its own
            flow(1000, c, c_addr, 8080),                   // web → c's fixed port: its own
            flow(443, a, a_addr, 443), // one's port, web's a: one's x is there too
            flow(80, a, Ipv4Addr::new(198, 18, 2, 9), 80), // id a, but another address
            flow(80, 15, a_addr, 80),  // an id nobody holds, but web's a is there
            flow(80, c, c_addr, 80),   // c, but not at the port it serves
            flow(443, c, c_addr, 8080), // one has nothing at c
            flow(8443, a, a_addr, 8443), // a port no service has now
        ];
        use FlowFate::*;
        assert_eq!(
            flow_fates(&img, &flows),
            vec![
                Keep,
                Keep,
                Keep,
                Keep,
                Repoint(x),
                Foreign,
                Repoint(a),
                Foreign,
                Foreign,
                Foreign
            ]
        );
    }

    /// A value keeps its class while the config has it; a value it dropped keeps its class
    /// (for the flows that started under it) until a new value finds no never-used class.
    #[test]
    fn idle_classes_keep_their_values_across_reloads() {
        let none = [0u64; MAX_IDLE_CLASSES + 1];
        let first = idle_slots(&none, &[60, 3600]);
        assert_eq!(first[..4], [0, 60, 3600, 0]);
        // A shorter value added, 60 dropped: 3600 stays in class 2, 60 stays in class 1.
        let second = idle_slots(&first, &[30, 3600]);
        assert_eq!(second[..5], [0, 60, 3600, 30, 0]);
        // Class 0 is never given out, even if `before` held something there.
        let mut odd = second;
        odd[0] = 5;
        assert_eq!(idle_slots(&odd, &[30, 3600]), second);
        // Fifteen new values: the never-used classes first, then the dropped 60's.
        let many: Vec<u64> = (1000..1015).collect();
        let full = idle_slots(&second, &many);
        let mut taken: Vec<u64> = full[1..].to_vec();
        taken.sort_unstable();
        assert_eq!(taken, many);
        assert_eq!(full[4..], many[..12], "never-used classes, in order");
        assert_eq!(
            full[1..4],
            [many[12], many[13], many[14]],
            "then the dropped ones"
        );
    }
}
