//! The sticky table as the administrator sees it (`xnlb sticky`, status, metrics): which of
//! its entries belong to a service, which still hold, and which backend each names. The
//! datapath's side is `lb_common::sticky`.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::sticky::{StickyEntry, StickyKey};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Affinity, Config, Service},
    plan::{member_of, seed_of},
    port_rules::{addr_of, ip_of},
};

/// One client held to a backend, as `xnlb sticky list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StickyRow {
    /// The client's address, or its network (`198.51.100.0/24`) under `affinity: network`.
    pub client: String,
    /// The backend's name, or `?` for a member the config no longer has.
    pub backend: String,
    /// Since the client's last packet (as refreshed: about a second's precision on busy flows).
    pub idle_s: f64,
    /// Until the entry stops holding, unless the client sends again.
    pub expires_in_s: f64,
}

/// The service `name` of `config` for a sticky verb, or why it has no sticky table.
pub fn sticky_service<'a>(config: &'a Config, name: &str) -> Result<&'a Service, String> {
    let Some(service) = config.service(name) else {
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "unknown service `{name}`; services: {}",
            names.join(", ")
        ));
    };
    if !service.sticky() {
        return Err(format!(
            "service {name} keeps no sticky table (it has no sticky_timeout): its clients follow the ring"
        ));
    }
    Ok(service)
}

/// The services that share `service`'s sticky table (its persistence group, or itself).
pub fn sharing<'a>(config: &'a Config, service: &Service) -> Vec<&'a str> {
    let table = seed_of(service);
    config
        .services
        .iter()
        .filter(|s| s.sticky() && seed_of(s) == table)
        .map(|s| s.name.as_str())
        .collect()
}

/// The table `xnlb sticky list` prints.
pub fn render(rows: &[StickyRow]) -> String {
    if rows.is_empty() {
        return "no sticky clients\n".to_string();
    }
    let widest = |cell: fn(&StickyRow) -> usize, header: &str| {
        rows.iter().map(cell).max().unwrap_or(0).max(header.len())
    };
    let width = widest(|r| r.client.len(), "CLIENT");
    let bwidth = widest(|r| r.backend.len(), "BACKEND");
    let mut out = format!(
        "{:<width$}  {:<bwidth$}  {:>8}  {:>10}\n",
        "CLIENT", "BACKEND", "IDLE", "EXPIRES IN"
    );
    for r in rows {
        out += &format!(
            "{:<width$}  {:<bwidth$}  {:>7.0}s  {:>9.0}s\n",
            r.client, r.backend, r.idle_s, r.expires_in_s
        );
    }
    out += &format!("{} sticky clients\n", rows.len());
    out
}

/// The key `client` has in `service`'s sticky table.
pub fn key_of(service: &Service, client: IpAddr) -> StickyKey {
    let (addr, family) = addr_of(client);
    StickyKey::new(
        seed_of(service),
        service.affinity as u8,
        service.network_prefix(),
        family,
        &addr,
    )
}

/// Whether `entry` holds at `now_ns` for `service` (as the datapath judges it).
pub fn holds(service: &Service, entry: &StickyEntry, now_ns: u64) -> bool {
    entry.holds(now_ns, service.sticky_timeout_ms())
}

/// The entries of `service`'s table, optionally only `client`'s, that hold at `now_ns`.
pub fn rows(
    service: &Service,
    entries: &[(StickyKey, StickyEntry)],
    client: Option<IpAddr>,
    now_ns: u64,
) -> Vec<StickyRow> {
    let table = seed_of(service);
    let wanted = client.map(|c| key_of(service, c));
    let names: BTreeMap<u32, &str> = service
        .backends
        .iter()
        .map(|b| (member_of(&b.name), b.name.as_str()))
        .collect();
    let timeout = service.sticky_timeout.as_secs_f64();
    let mut out: Vec<StickyRow> = entries
        .iter()
        .filter(|(k, e)| {
            k.table == table && wanted.is_none_or(|w| w == *k) && holds(service, e, now_ns)
        })
        .map(|(k, e)| {
            let idle_s = now_ns.saturating_sub(e.last_seen_ns) as f64 / 1e9;
            let ip = ip_of(&k.client, k.family);
            StickyRow {
                client: match service.affinity {
                    Affinity::Network => format!("{ip}/{}", service.network_prefix()),
                    _ => ip.to_string(),
                },
                backend: names.get(&e.member).unwrap_or(&"?").to_string(),
                idle_s,
                expires_in_s: (timeout - idle_s).max(0.0),
            }
        })
        .collect();
    out.sort_by(|a, b| a.client.cmp(&b.client));
    out
}

/// The keys `xnlb sticky clear` removes from `service`'s table: every entry, or `client`'s,
/// or those naming `backend`. Expired entries go too: they hold nothing.
pub fn to_clear(
    service: &Service,
    entries: &[(StickyKey, StickyEntry)],
    client: Option<IpAddr>,
    backend: Option<&str>,
) -> Vec<StickyKey> {
    let table = seed_of(service);
    let wanted = client.map(|c| key_of(service, c));
    let member = backend.map(member_of);
    entries
        .iter()
        .filter(|(k, e)| {
            k.table == table
                && wanted.is_none_or(|w| w == *k)
                && member.is_none_or(|m| m == e.member)
        })
        .map(|(k, _)| *k)
        .collect()
}

/// Entries that hold, over every sticky table of `config` (a group's clients once).
pub fn live(config: &Config, entries: &[(StickyKey, StickyEntry)], now_ns: u64) -> u64 {
    let tables: BTreeMap<u32, &Service> = config
        .services
        .iter()
        .filter(|s| s.sticky())
        .map(|s| (seed_of(s), s))
        .collect();
    entries
        .iter()
        .filter(|(k, e)| tables.get(&k.table).is_some_and(|s| holds(s, e, now_ns)))
        .count() as u64
}

/// Live sticky clients per (service, backend name), for status and metrics. A group's clients
/// count under each of its services: each of them would send the client there.
pub fn census(
    config: &Config,
    entries: &[(StickyKey, StickyEntry)],
    now_ns: u64,
) -> BTreeMap<(String, String), u64> {
    let mut per_table: BTreeMap<(u32, u32), Vec<&StickyEntry>> = BTreeMap::new();
    for (k, e) in entries {
        per_table.entry((k.table, e.member)).or_default().push(e);
    }
    let mut out = BTreeMap::new();
    for s in config.services.iter().filter(|s| s.sticky()) {
        let table = seed_of(s);
        for b in &s.backends {
            let live = per_table
                .get(&(table, member_of(&b.name)))
                .map_or(0, |es| es.iter().filter(|e| holds(s, e, now_ns)).count());
            out.insert((s.name.clone(), b.name.clone()), live as u64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn service(name: &str, group: Option<&str>, affinity: Affinity) -> Service {
        let text = format!(
            "name: {name}\nvip: 198.18.0.100\nports: [443]\nsticky_timeout: 10s\n\
             backends: [{{name: a, address: 198.18.2.1}}, {{name: b, address: 198.18.2.2}}]\n"
        );
        let mut s: Service = serde_norway::from_str(&text).unwrap();
        s.persistence_group = group.map(str::to_string);
        s.affinity = affinity;
        s
    }

    fn entry(backend: &str, last_seen_ns: u64) -> StickyEntry {
        StickyEntry {
            last_seen_ns,
            backend_id: 0,
            member: member_of(backend),
        }
    }

    #[test]
    fn rows_are_the_services_live_entries_by_name() {
        let owa = service("owa", Some("cas"), Affinity::Single);
        let rpc = service("rpc", Some("cas"), Affinity::Single);
        let other = service("pop", None, Affinity::Single);
        let c1: IpAddr = "198.51.100.1".parse().unwrap();
        let c2: IpAddr = "198.51.100.2".parse().unwrap();
        let now = 100 * 1_000_000_000;
        let entries = vec![
            (key_of(&owa, c1), entry("a", now - 2_000_000_000)),
            // Past the 10 s timeout.
            (key_of(&owa, c2), entry("b", now - 11_000_000_000)),
            (key_of(&other, c1), entry("b", now)),
        ];
        let got = rows(&rpc, &entries, None, now);
        assert_eq!(
            got.len(),
            1,
            "the group's table, live entries only: {got:?}"
        );
        assert_eq!(
            (got[0].client.as_str(), got[0].backend.as_str()),
            ("198.51.100.1", "a")
        );
        assert!((got[0].idle_s - 2.0).abs() < 1e-9 && (got[0].expires_in_s - 8.0).abs() < 1e-9);
        assert!(rows(&owa, &entries, Some(c2), now).is_empty());
        assert_eq!(to_clear(&owa, &entries, None, None).len(), 2);
        assert_eq!(
            to_clear(&owa, &entries, None, Some("b")),
            vec![key_of(&owa, c2)]
        );
        assert_eq!(to_clear(&other, &entries, Some(c1), None).len(), 1);
        let mut config: Config =
            serde_norway::from_str("interfaces: { client: a, server: b }\nservices: []\n").unwrap();
        config.services = vec![owa, rpc, other];
        let counts = census(&config, &entries, now);
        assert_eq!(counts[&("rpc".to_string(), "a".to_string())], 1);
        assert_eq!(counts[&("owa".to_string(), "b".to_string())], 0);
        assert_eq!(counts[&("pop".to_string(), "b".to_string())], 1);
    }

    #[test]
    fn a_network_client_is_its_network() {
        let mut web = service("web", None, Affinity::Network);
        web.network_prefix = Some(24);
        web.sticky_timeout = Duration::from_secs(60);
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let b: IpAddr = "198.51.100.200".parse().unwrap();
        assert_eq!(key_of(&web, a), key_of(&web, b));
        let got = rows(&web, &[(key_of(&web, a), entry("a", 5))], Some(b), 10);
        assert_eq!(got[0].client, "198.51.100.0/24");
    }
}
