//! Held routing: one-arm on a host that does not forward. The kernel refuses `bpf_fib_lookup`
//! on an interface without forwarding, so the controller resolves each backend's next hop (of
//! either IP version) the way the host itself would send to it from its SNAT address of that
//! version: the route (`ip route get B from
//! S`), the next hop's MAC from the neighbour table, and the egress interface's index, MAC and
//! MTU. The datapath then uses what is held (`Routing::Held`).
//!
//! A host that does not forward never resolves a neighbour for a packet the datapath hands it,
//! so the next hops get *managed* neighbour entries: the kernel resolves them at once and keeps
//! them resolved, and each change reaches the routing watch, which has them resolved again.
//! Entries an administrator made static are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{Context, Result};
use lb_common::next_hop::{HELD_EPOCH, NextHop};
use serde::Deserialize;

use super::{ip, run_ip};

/// What one resolution found: a next hop for each backend address that has one, and why each
/// other has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub hops: BTreeMap<IpAddr, NextHop>,
    pub unresolved: BTreeMap<IpAddr, String>,
}

/// Resolves backends' next hops and keeps the managed neighbour entries it made.
#[derive(Debug, Default)]
pub struct Resolver {
    /// (address, interface) of each managed entry this daemon made.
    managed: BTreeSet<(IpAddr, String)>,
}

#[derive(Deserialize)]
struct Route {
    dst: IpAddr,
    gateway: Option<IpAddr>,
    dev: String,
    #[serde(default)]
    metrics: Vec<RouteMetric>,
}

#[derive(Deserialize)]
struct RouteMetric {
    mtu: Option<u16>,
}

#[derive(Deserialize)]
struct Neighbour {
    dst: IpAddr,
    dev: String,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

#[derive(Deserialize)]
struct Link {
    ifindex: u32,
    ifname: String,
    mtu: u32,
    address: Option<String>,
}

/// A neighbour entry's states whose MAC can be used. Not INCOMPLETE or FAILED (no MAC), nor
/// NONE (never resolved).
const USABLE: [&str; 6] = ["REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"];

impl Resolver {
    /// The next hop of every address in `backends`, sending from the address of its version in
    /// `from` (when there is one). Managed
    /// neighbour entries are made for next hops that have no static one, and for the gateways
    /// of the routes out of `client_side` (when given), and dropped for those no longer needed;
    /// a next hop just made managed resolves later (its change reaches the routing watch), so
    /// it is unresolved now.
    pub fn resolve(
        &mut self,
        backends: &BTreeSet<IpAddr>,
        from: &[IpAddr],
        client_side: Option<&str>,
    ) -> Result<Resolved> {
        let mut found = Resolved::default();
        let routes = routes_to(backends, from)?;
        let links: BTreeMap<String, Link> =
            serde_json::from_str::<Vec<Link>>(&ip(&["-j", "link", "show"])?)
                .context("reading ip -j link show")?
                .into_iter()
                .map(|l| (l.ifname.clone(), l))
                .collect();
        let neighbours = neighbours(&ip(&["-j", "neigh", "show"])?)?;
        let mut needed: BTreeSet<(IpAddr, String)> = routes
            .values()
            .map(|r| (r.gateway.unwrap_or(r.dst), r.dev.clone()))
            .collect();
        if let Some(dev) = client_side {
            let table = ip(&["-4", "route", "show", "dev", dev])?;
            needed.extend(gateways(&table).into_iter().map(|g| (g, dev.to_string())));
        }
        let failed = self.manage(&needed, &neighbours);

        for &backend in backends {
            let Some(route) = routes.get(&backend) else {
                found.unresolved.insert(backend, "no route".into());
                continue;
            };
            let via = route.gateway.unwrap_or(backend);
            let Some(link) = links.get(&route.dev) else {
                found
                    .unresolved
                    .insert(backend, format!("interface {} not found", route.dev));
                continue;
            };
            let entry = neighbours.get(&(via, route.dev.clone()));
            let Some(dmac) = entry.and_then(|n| n.mac) else {
                let mut what = if via == backend {
                    "no MAC for it yet".to_string()
                } else {
                    format!("no MAC for its gateway {via} yet")
                };
                if let Some(e) = failed.get(&(via, route.dev.clone())) {
                    what = format!("{what} ({e})");
                }
                found.unresolved.insert(backend, what);
                continue;
            };
            let Some(smac) = link.address.as_deref().and_then(parse_mac) else {
                found
                    .unresolved
                    .insert(backend, format!("{} has no MAC", route.dev));
                continue;
            };
            let route_mtu = route.metrics.iter().find_map(|m| m.mtu);
            let mtu = route_mtu
                .map_or(link.mtu, |m| (m as u32).min(link.mtu))
                .min(u16::MAX as u32) as u16;
            found.hops.insert(
                backend,
                NextHop {
                    epoch: HELD_EPOCH,
                    ifindex: link.ifindex,
                    mtu,
                    dmac,
                    smac,
                    _pad: 0,
                },
            );
        }
        Ok(found)
    }

    /// Removes every managed entry this daemon made (`xnlb stop`, or forwarding turned on).
    pub fn release_all(&mut self) {
        for (addr, dev) in std::mem::take(&mut self.managed) {
            forget(addr, &dev);
        }
    }

    /// Makes managed entries for the `needed` (address, interface) pairs that have no static
    /// entry, and drops the ones made before that are no longer needed. Returns why each that
    /// could not be made failed.
    fn manage(
        &mut self,
        needed: &BTreeSet<(IpAddr, String)>,
        neighbours: &BTreeMap<(IpAddr, String), NeighbourEntry>,
    ) -> BTreeMap<(IpAddr, String), String> {
        let mut failed = BTreeMap::new();
        for (addr, dev) in needed.difference(&self.managed.clone()) {
            if neighbours
                .get(&(*addr, dev.clone()))
                .is_some_and(|n| n.fixed)
            {
                continue;
            }
            match ip(&["neigh", "replace", &addr.to_string(), "dev", dev, "managed"]) {
                Ok(_) => {
                    self.managed.insert((*addr, dev.clone()));
                }
                Err(e) => {
                    failed.insert((*addr, dev.clone()), format!("{e:#}"));
                }
            }
        }
        let gone: Vec<_> = self.managed.difference(needed).cloned().collect();
        for (addr, dev) in gone {
            forget(addr, &dev);
            self.managed.remove(&(addr, dev));
        }
        failed
    }
}

/// One `ip route get` per backend, in one batch per IP version, sending from the address of
/// its version in `from`; a backend without a route has no answer. The kernel answers "from"
/// lookups only for a local source: until the SNAT address is on an interface (the daemon adds
/// it after its first resolution), the rest are asked without one.
fn routes_to(backends: &BTreeSet<IpAddr>, from: &[IpAddr]) -> Result<BTreeMap<IpAddr, Route>> {
    let mut found = BTreeMap::new();
    for v6 in [false, true] {
        let of_version: Vec<&IpAddr> = backends.iter().filter(|b| b.is_ipv6() == v6).collect();
        if of_version.is_empty() {
            continue;
        }
        if let Some(from) = from.iter().find(|a| a.is_ipv6() == v6) {
            found.extend(route_batch(
                of_version.iter().copied(),
                v6,
                &format!(" from {from}"),
            )?);
        }
        let rest: Vec<&IpAddr> = of_version
            .into_iter()
            .filter(|b| !found.contains_key(*b))
            .collect();
        if !rest.is_empty() {
            found.extend(route_batch(rest.into_iter(), v6, "")?);
        }
    }
    Ok(found)
}

/// The gateways in `ip route show` output (`... via 198.18.0.10 ...`).
fn gateways(table: &str) -> BTreeSet<IpAddr> {
    table
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "via")?;
            words.next()?.parse().ok()
        })
        .collect()
}

/// `ip route get B<suffix>` for each of `backends` (all IPv6, or all IPv4), in one `ip -batch`.
fn route_batch<'a>(
    backends: impl Iterator<Item = &'a IpAddr>,
    v6: bool,
    suffix: &str,
) -> Result<BTreeMap<IpAddr, Route>> {
    let batch: String = backends
        .map(|b| format!("route get {b}{suffix}\n"))
        .collect();
    let family = if v6 { "-6" } else { "-4" };
    // -force: a backend without a route must not stop the others' lookups.
    let out = run_ip(&["-j", family, "-force", "-batch", "-"], Some(batch))?;
    routes(&String::from_utf8_lossy(&out.stdout))
}

fn forget(addr: IpAddr, dev: &str) {
    // Gone already (the interface went away) is fine: nothing is left to release.
    let _ = ip(&["neigh", "del", &addr.to_string(), "dev", dev]);
}

/// The routes in `ip -j route get` answers (one JSON array per answer), by destination.
fn routes(text: &str) -> Result<BTreeMap<IpAddr, Route>> {
    let mut by_dst = BTreeMap::new();
    for answer in serde_json::Deserializer::from_str(text).into_iter::<Vec<Route>>() {
        for route in answer.context("reading ip -j route get")? {
            by_dst.insert(route.dst, route);
        }
    }
    Ok(by_dst)
}

/// One neighbour entry, as far as a next hop is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NeighbourEntry {
    /// Its MAC, while the entry holds a usable one.
    mac: Option<[u8; 6]>,
    /// Made static by an administrator (permanent or noarp): never managed by xnlb.
    fixed: bool,
}

/// The neighbour table (`ip -j neigh show`) by (address, interface).
fn neighbours(text: &str) -> Result<BTreeMap<(IpAddr, String), NeighbourEntry>> {
    let all: Vec<Neighbour> = serde_json::from_str(text).context("reading ip -j neigh show")?;
    Ok(all
        .into_iter()
        .map(|n| {
            let usable = n.state.iter().any(|s| USABLE.contains(&s.as_str()));
            let entry = NeighbourEntry {
                mac: n.lladdr.as_deref().and_then(parse_mac).filter(|_| usable),
                fixed: n.state.iter().any(|s| s == "PERMANENT" || s == "NOARP"),
            };
            ((n.dst, n.dev), entry)
        })
        .collect())
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_routes_from_a_batch_of_answers() {
        // As `ip -j -force -batch` prints them: one array per answer; a failed lookup prints
        // nothing (its error goes to stderr).
        let text = concat!(
            r#"[{"dst":"198.18.0.5","from":"198.18.0.2","dev":"lan0","flags":[],"uid":0,"cache":[]}]"#,
            "\n",
            r#"[{"dst":"198.19.1.1","from":"198.18.0.2","gateway":"198.18.0.10","dev":"lan0","flags":[],"uid":0,"cache":[],"metrics":[{"mtu":1400}]}]"#,
            "\n"
        );
        let routes = routes(text).unwrap();
        let direct = &routes[&"198.18.0.5".parse().unwrap()];
        assert_eq!((direct.gateway, direct.dev.as_str()), (None, "lan0"));
        assert!(direct.metrics.is_empty());
        let routed = &routes[&"198.19.1.1".parse().unwrap()];
        assert_eq!(routed.gateway, Some("198.18.0.10".parse().unwrap()));
        assert_eq!(routed.metrics[0].mtu, Some(1400));
    }

    #[test]
    fn only_a_usable_entry_gives_a_mac_and_only_static_ones_are_fixed() {
        let text = r#"[
            {"dst":"198.18.0.10","dev":"lan0","lladdr":"02:00:00:00:00:10","state":["PERMANENT"]},
            {"dst":"198.18.0.5","dev":"lan0","managed":null,"state":["INCOMPLETE"]},
            {"dst":"198.18.0.6","dev":"lan0","lladdr":"02:00:00:00:00:06","state":["FAILED"]},
            {"dst":"198.18.0.7","dev":"lan0","lladdr":"02:00:00:00:00:07","state":["STALE"]}
        ]"#;
        let table = neighbours(text).unwrap();
        let entry = |a: &str| table[&(a.parse().unwrap(), "lan0".to_string())];
        let router = entry("198.18.0.10");
        assert_eq!(router.mac, Some([2, 0, 0, 0, 0, 0x10]));
        assert!(router.fixed);
        assert_eq!(entry("198.18.0.5").mac, None);
        assert_eq!(entry("198.18.0.6").mac, None);
        let stale = entry("198.18.0.7");
        assert_eq!(stale.mac, Some([2, 0, 0, 0, 0, 7]));
        assert!(!stale.fixed);
    }

    #[test]
    fn parses_only_whole_macs() {
        assert_eq!(
            parse_mac("3a:9b:76:1a:81:44"),
            Some([0x3a, 0x9b, 0x76, 0x1a, 0x81, 0x44])
        );
        assert_eq!(parse_mac("3a:9b:76:1a:81"), None);
        assert_eq!(parse_mac("3a:9b:76:1a:81:44:00"), None);
        assert_eq!(parse_mac("zz:9b:76:1a:81:44"), None);
    }
}
