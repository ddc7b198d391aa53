//! Programs the bed's maps the way the daemon does: the services of a config, through the
//! controller's id book, `plan::image` (the same seeds, the same Maglev tables) and
//! `reconcile` (the same write order). The golden tests therefore test what the daemon writes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use lb_common::{backend::BackendState, hash::affinity_hash, limits::MAX_BACKENDS};
use xnlb::{
    config::{Config, Conntrack, Interfaces, PortRange, Service, Snat},
    datapath::{
        Datapath,
        reconcile::{Changes, Programmed},
    },
    host::{interfaces::own_macs, next_hops::Resolver},
    model::{
        ids::IdBook,
        plan::{self, HostFacts, Image, TableCache},
        port_rules::addr_v4,
    },
};

/// A TCP service on the bed's VIP and `port` (1-65535), over `backends` named `b1`, `b2`, ...
/// with the config's defaults (affinity single, weight 100, the client's port kept). Tests
/// change its fields as a config file would.
pub fn service(name: &str, port: u16, backends: &[Ipv4Addr]) -> Service {
    let backends: Vec<IpAddr> = backends.iter().map(|&a| a.into()).collect();
    service_at(name, crate::addresses::VIP.into(), port, &backends)
}

/// `service` on `vip` over `backends`, of either IP version.
pub fn service_at(name: &str, vip: IpAddr, port: u16, backends: &[IpAddr]) -> Service {
    let text = format!("name: {name}\nvip: \"{vip}\"\nports: [{port}]\nbackends: []\n");
    let mut s: Service = serde_norway::from_str(&text).expect("a service");
    s.backends = backends
        .iter()
        .enumerate()
        .map(|(i, addr)| backend_at(&format!("b{}", i + 1), *addr))
        .collect();
    s
}

/// A backend with the config's defaults.
pub fn backend(name: &str, addr: Ipv4Addr) -> xnlb::config::Backend {
    backend_at(name, addr.into())
}

/// `backend` at an address of either IP version.
pub fn backend_at(name: &str, addr: IpAddr) -> xnlb::config::Backend {
    let text = format!("name: {name}\naddress: \"{addr}\"\n");
    serde_norway::from_str(&text).expect("a backend")
}

/// The controller's record of the bed's maps and what they were made from.
pub struct Programmer {
    pub config: Config,
    /// How many backend ids the id book may hand out (the daemon's is `MAX_BACKENDS`); a
    /// small one makes a reload reuse a retired id at once, as long reload churn does.
    pub backend_capacity: u32,
    ids: IdBook,
    states: BTreeMap<(String, String), BackendState>,
    tables: TableCache,
    programmed: Programmed,
    /// Held routing: the controller's resolver, asked at every apply. `None`: FIB routing.
    held: Option<Resolver>,
}

impl Programmer {
    pub fn new(dp: &Datapath) -> Self {
        Self {
            config: Config {
                mode: xnlb::config::Mode::TwoArm,
                cluster: None,
                interfaces: Interfaces {
                    client: "cli0".into(),
                    server: Some("srv0".into()),
                },
                xdp_mode: Default::default(),
                snat: None,
                conntrack: Conntrack::default(),
                announce_vips: false,
                announce: None,
                services: Vec::new(),
                metrics: Default::default(),
                admin: Default::default(),
            },
            backend_capacity: MAX_BACKENDS,
            ids: IdBook::default(),
            states: BTreeMap::new(),
            tables: TableCache::default(),
            programmed: Programmed::read(dp).expect("read the new datapath's maps"),
            held: None,
        }
    }

    /// Adds `service`, or replaces the one with its name.
    pub fn put(&mut self, service: Service) {
        match self
            .config
            .services
            .iter_mut()
            .find(|s| s.name == service.name)
        {
            Some(s) => *s = service,
            None => self.config.services.push(service),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.config.services.retain(|s| s.name != name);
    }

    pub fn set_state(&mut self, service: &str, backend: &str, state: BackendState) {
        self.states.insert((service.into(), backend.into()), state);
    }

    /// One-arm, SNAT from `addresses` with source ports `ports`.
    pub fn one_arm(&mut self, addresses: &[IpAddr], ports: (u16, u16)) {
        self.config.mode = xnlb::config::Mode::OneArm;
        self.config.snat = Some(Snat {
            addresses: addresses.to_vec(),
            ports: PortRange {
                lo: ports.0,
                hi: ports.1,
            },
        });
    }

    /// Held routing (as the daemon chooses for one-arm on a host that does not forward), or
    /// back to FIB routing.
    pub fn hold_next_hops(&mut self, held: bool) {
        self.held = held.then(Resolver::default);
    }

    /// Moves the maps to what the config and the backend states ask for, as a reload or a
    /// health change does (and, under held routing, as a routing change does).
    pub fn apply(&mut self, dp: &mut Datapath) -> Changes {
        let fresh = self
            .ids
            .assign(&self.config, dp.ring_capacity(), self.backend_capacity)
            .expect("ids for the bed's services");
        let states = &self.states;
        // Read in the bed's namespace, which the calling thread has entered.
        let own_macs = own_macs(&self.config).expect("the bed's interface addresses");
        let backends = self
            .config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        let snat = self.config.snat_addresses();
        let held_hops = self.held.as_mut().map(|resolver| {
            resolver
                .resolve(&backends, snat, None)
                .expect("resolve the backends' next hops")
                .hops
        });
        let host = HostFacts {
            own_macs,
            held_hops,
            served_by: self.programmed.image.served_by.clone(),
            idle_timeouts_ns: self.programmed.image.settings.idle_timeouts_ns,
        };
        let image = plan::image(
            &self.config,
            &self.ids,
            |s, b| {
                states
                    .get(&(s.to_string(), b.to_string()))
                    .copied()
                    .unwrap_or(BackendState::Up)
            },
            &host,
            &mut self.tables,
        );
        self.programmed
            .apply(dp, &image, &fresh)
            .expect("reconcile the bed's maps")
    }

    pub fn image(&self) -> &Image {
        &self.programmed.image
    }

    pub fn service_id(&self, name: &str) -> u32 {
        self.ids.services[name]
    }

    pub fn backend_id(&self, service: &str, backend: &str) -> u32 {
        self.ids
            .backend_id(service, backend)
            .unwrap_or_else(|| panic!("no backend {service}/{backend}"))
    }

    /// The id of `service`'s backend at `addr`.
    pub fn backend_id_at(&self, service: &str, addr: Ipv4Addr) -> u32 {
        let sid = self.service_id(service);
        self.image()
            .backends
            .iter()
            .find(|(_, b)| b.service_id == sid && b.addr == addr_v4(addr))
            .map(|(&id, _)| id)
            .unwrap_or_else(|| panic!("{service} has no backend at {addr}"))
    }

    /// The address of backend `id`.
    pub fn address_of(&self, id: u32) -> Ipv4Addr {
        let info = self.image().backends[&id];
        Ipv4Addr::from(lb_common::addr::v4_octets(&info.addr))
    }

    /// The address of backend `id`, of either version.
    pub fn ip_address_of(&self, id: u32) -> IpAddr {
        let info = self.image().backends[&id];
        xnlb::model::port_rules::ip_of(&info.addr, info.family)
    }

    /// The backend (id) the programmed table gives a new flow of `service` from
    /// `client:port`: the datapath's hash over the live table.
    pub fn predict(&self, service: &str, client: impl Into<IpAddr>, port: u16) -> u32 {
        let plan = &self.image().services[&self.service_id(service)];
        let info = plan.info;
        if plan.table.is_empty() {
            // `filtering: single`, or nothing in rotation: no table to hash into.
            return info.single_backend;
        }
        let h = affinity_hash(
            info.affinity,
            info.network_prefix,
            &xnlb::model::port_rules::addr_of(client.into()).0,
            port.to_be(),
            info.hash_seed,
        );
        plan.table[(h % plan.table.len() as u32) as usize]
    }

    /// The service as installed, to change and install again.
    pub fn service(&self, name: &str) -> &Service {
        self.config
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }
}
