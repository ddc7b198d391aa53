//! Stable ids for services and backends. An id names a ring slot pair (service) or a
//! `BACKENDS` element (backend) that established flows point at, so an id keeps its meaning
//! for as long as it is in use: a backend whose address or port changes gets a new id, and a
//! retired id is handed out again only when no never-used id is left.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::backend::BackendInfo;

use crate::{
    config::{Config, Service},
    port_rules::{RuleKey, addr_of},
};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub service: String,
    pub name: String,
    pub addr: IpAddr,
    /// 0 keeps the client's destination port.
    pub port: u16,
}

impl BackendKey {
    pub fn of(config: &Config) -> Vec<BackendKey> {
        config
            .services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(move |b| BackendKey {
                    service: s.name.clone(),
                    name: b.name.clone(),
                    addr: b.address,
                    port: b.port.unwrap_or(0),
                })
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdBook {
    pub services: BTreeMap<String, u32>,
    /// What each service answers for (VIP, protocol, ports), by name: a service that disappears
    /// and one with another name that answers for exactly the same is the same service renamed,
    /// and keeps its ids (its flows go on).
    pub shapes: BTreeMap<String, String>,
    /// Services the last `assign` found renamed: old name → new name.
    pub renamed: BTreeMap<String, String>,
    pub backends: BTreeMap<BackendKey, u32>,
    /// Backend ids that held a backend no longer configured.
    pub retired: BTreeSet<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error(
        "the running datapath has room for {0} services; restart the daemon (`systemctl restart xnlb`, or SIGTERM and `xnlb run`) with this config: the new daemon grows the tables and adopts the running datapath"
    )]
    Services(u32),
    #[error("more than {0} backends over all services")]
    Backends(u32),
}

impl IdBook {
    /// Gives every service and backend of `config` an id, keeping the ids of those already
    /// known. Returns the backend ids that were newly given out.
    pub fn assign(
        &mut self,
        config: &Config,
        service_slots: u32,
        backend_slots: u32,
    ) -> Result<Vec<u32>, IdError> {
        let names: BTreeSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        self.renamed.clear();
        self.inherit_renamed(config, &names);
        self.services
            .retain(|name, _| names.contains(name.as_str()));
        self.shapes = config
            .services
            .iter()
            .map(|s| (s.name.clone(), shape(s)))
            .collect();
        for name in &names {
            if !self.services.contains_key(*name) {
                let used: BTreeSet<u32> = self.services.values().copied().collect();
                let id = (0..service_slots)
                    .find(|id| !used.contains(id))
                    .ok_or(IdError::Services(service_slots))?;
                self.services.insert(name.to_string(), id);
            }
        }

        let wanted: BTreeSet<BackendKey> = BackendKey::of(config).into_iter().collect();
        let gone: Vec<u32> = self
            .backends
            .iter()
            .filter(|(k, _)| !wanted.contains(k))
            .map(|(_, &id)| id)
            .collect();
        self.backends.retain(|k, _| wanted.contains(k));
        self.retired.extend(gone);
        let mut fresh = Vec::new();
        for key in wanted {
            if self.backends.contains_key(&key) {
                continue;
            }
            let used: BTreeSet<u32> = self.backends.values().copied().collect();
            let id = (0..backend_slots)
                .find(|id| !used.contains(id) && !self.retired.contains(id))
                .or_else(|| self.retired.iter().next().copied())
                .ok_or(IdError::Backends(backend_slots))?;
            self.retired.remove(&id);
            self.backends.insert(key, id);
            fresh.push(id);
        }
        Ok(fresh)
    }

    /// A service of `config` new by name that answers for exactly what a vanished one did is
    /// that service renamed: it takes over the service id and the ids of backends at the same
    /// address and port (and name), so the datapath sees no change and no flow is touched.
    fn inherit_renamed(&mut self, config: &Config, names: &BTreeSet<&str>) {
        for service in &config.services {
            if self.services.contains_key(&service.name) {
                continue;
            }
            let wanted = shape(service);
            let old = self.shapes.iter().find(|(name, s)| {
                !names.contains(name.as_str())
                    && **s == wanted
                    && self.services.contains_key(name.as_str())
            });
            let Some((old, _)) = old.map(|(n, s)| (n.clone(), s.clone())) else {
                continue;
            };
            let id = self.services.remove(&old).expect("checked above");
            self.services.insert(service.name.clone(), id);
            self.renamed.insert(old.clone(), service.name.clone());
            self.shapes.remove(&old);
            let moved: Vec<(BackendKey, u32)> = self
                .backends
                .iter()
                .filter(|(k, _)| k.service == old)
                .map(|(k, &id)| (k.clone(), id))
                .collect();
            for (key, id) in moved {
                self.backends.remove(&key);
                let key = BackendKey {
                    service: service.name.clone(),
                    ..key
                };
                self.backends.insert(key, id);
            }
        }
    }

    /// The ids a running datapath already uses for `config`'s services and backends, found
    /// from its maps (daemon restart): a service by the rules of its VIP and ports, a backend
    /// by (service, address, port). Ids in use by nothing configured are retired.
    pub fn recover(
        config: &Config,
        rules: &BTreeMap<RuleKey, u32>,
        backends: &BTreeMap<u32, BackendInfo>,
    ) -> IdBook {
        let mut book = IdBook::default();
        let mut taken_services = BTreeSet::new();
        for service in &config.services {
            let sid = service.ports.iter().find_map(|range| {
                let proto = service.protocol.numbers()[0];
                RuleKey::covering(service.vip, proto, range.lo, range.hi)
                    .into_iter()
                    .find_map(|k| rules.get(&k).copied())
            });
            if let Some(sid) = sid.filter(|sid| taken_services.insert(*sid)) {
                book.services.insert(service.name.clone(), sid);
                book.shapes.insert(service.name.clone(), shape(service));
            }
        }
        let mut taken = BTreeSet::new();
        for key in BackendKey::of(config) {
            let Some(&sid) = book.services.get(&key.service) else {
                continue;
            };
            let found = backends.iter().find(|(id, b)| {
                b.service_id == sid
                    && b.addr == addr_of(key.addr).0
                    && u16::from_be(b.port) == key.port
                    && !taken.contains(*id)
            });
            if let Some((&id, _)) = found {
                taken.insert(id);
                book.backends.insert(key, id);
            }
        }
        book.retired = backends
            .keys()
            .filter(|id| !taken.contains(*id))
            .copied()
            .collect();
        book
    }

    pub fn backend_id(&self, service: &str, name: &str) -> Option<u32> {
        self.backends
            .iter()
            .find(|(k, _)| k.service == service && k.name == name)
            .map(|(_, &id)| id)
    }
}

/// What a service answers for, as one comparable value: VIP, protocol and ports.
fn shape(service: &Service) -> String {
    format!("{} {:?} {:?}", service.vip, service.protocol, service.ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn config(backends: &[(&str, &str)]) -> Config {
        let list: Vec<String> = backends
            .iter()
            .map(|(n, a)| format!("      - {{ name: {n}, address: {a} }}"))
            .collect();
        let text = format!(
            "interfaces: {{ client: a, server: b }}\nservices:\n  - name: web\n    vip: 198.18.1.1\n    ports: [80]\n    backends:\n{}\n",
            list.join("\n")
        );
        config::parse(&text, "t").unwrap().config
    }

    #[test]
    fn ids_stay_put_and_changed_addresses_get_new_ids() {
        let mut book = IdBook::default();
        let fresh = book
            .assign(&config(&[("a", "198.18.2.1"), ("b", "198.18.2.2")]), 4, 8)
            .unwrap();
        assert_eq!(fresh, vec![0, 1]);
        let a = book.backend_id("web", "a").unwrap();
        // b moves to a new address, c is added: a keeps its id, b's old id is retired.
        let fresh = book
            .assign(
                &config(&[
                    ("a", "198.18.2.1"),
                    ("b", "198.18.2.9"),
                    ("c", "198.18.2.3"),
                ]),
                4,
                8,
            )
            .unwrap();
        assert_eq!(book.backend_id("web", "a"), Some(a));
        assert_eq!(fresh.len(), 2);
        assert!(
            !fresh.contains(&1),
            "a retired id is not reused while fresh ones remain"
        );
        assert!(book.retired.contains(&1));
        assert_eq!(book.services["web"], 0);
    }

    #[test]
    fn recover_finds_the_ids_a_running_datapath_uses() {
        use crate::{lifecycle::BackendState, plan};
        // Ids as a long-running daemon left them (b moved once, so ids are not 0, 1, 2).
        let mut running = IdBook::default();
        running
            .assign(&config(&[("a", "198.18.2.1"), ("b", "198.18.2.2")]), 4, 8)
            .unwrap();
        let now = config(&[
            ("a", "198.18.2.1"),
            ("b", "198.18.2.9"),
            ("c", "198.18.2.3"),
        ]);
        running.assign(&now, 4, 8).unwrap();
        let image = plan::image(
            &now,
            &running,
            |_, _| BackendState::Up,
            &plan::HostFacts::default(),
            &mut plan::TableCache::default(),
        );
        let mut backends = image.backends.clone();
        // The retired id is still in BACKENDS, marked down.
        let mut old = backends[&0];
        old.state = BackendState::Down as u8;
        backends.insert(1, old);

        let recovered = IdBook::recover(&now, &image.rules, &backends);
        assert_eq!(recovered.services, running.services);
        assert_eq!(recovered.backends, running.backends);
        assert_eq!(recovered.retired, BTreeSet::from([1]));
    }

    #[test]
    fn retired_ids_are_reused_last_and_capacity_is_enforced() {
        let mut book = IdBook::default();
        book.assign(&config(&[("a", "198.18.2.1"), ("b", "198.18.2.2")]), 1, 2)
            .unwrap();
        book.assign(&config(&[("a", "198.18.2.1"), ("c", "198.18.2.3")]), 1, 2)
            .unwrap();
        assert_eq!(book.backend_id("web", "c"), Some(1));
        assert!(book.retired.is_empty());
        let err = book
            .assign(
                &config(&[
                    ("a", "198.18.2.1"),
                    ("c", "198.18.2.3"),
                    ("d", "198.18.2.4"),
                ]),
                1,
                2,
            )
            .unwrap_err();
        assert_eq!(err, IdError::Backends(2));
    }

    #[test]
    fn a_renamed_service_keeps_its_ids() {
        let mut book = IdBook::default();
        let web = config(&[("a", "198.18.2.1"), ("b", "198.18.2.2")]);
        book.assign(&web, 4, 8).unwrap();
        let before = (
            book.services["web"],
            book.backend_id("web", "a"),
            book.backend_id("web", "b"),
        );
        let mut owa = web.clone();
        owa.services[0].name = "owa".into();
        let fresh = book.assign(&owa, 4, 8).unwrap();
        assert!(fresh.is_empty(), "no backend got a new id: {fresh:?}");
        assert!(book.retired.is_empty());
        assert_eq!(
            (
                book.services["owa"],
                book.backend_id("owa", "a"),
                book.backend_id("owa", "b")
            ),
            before
        );
        assert!(!book.services.contains_key("web"));
        assert_eq!(book.renamed, BTreeMap::from([("web".into(), "owa".into())]));
        // Another VIP or port is another service: new ids.
        let mut moved = owa.clone();
        moved.services[0].name = "ews".into();
        moved.services[0].ports[0].lo = 81;
        moved.services[0].ports[0].hi = 81;
        let fresh = book.assign(&moved, 4, 8).unwrap();
        assert_eq!(fresh.len(), 2);
    }
}
