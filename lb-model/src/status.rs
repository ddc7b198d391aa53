//! What `xnlb status` shows: the stable JSON document (see the README) and the table a person
//! reads. Built by the controller from its state and the datapath's counters.

use std::{collections::HashMap, fmt::Write as _};

use lb_common::{
    flow::{FlowEntry, FlowKey},
    settings::DatapathSettings,
};
use serde::{Deserialize, Serialize};

use crate::lifecycle::{BackendState, Lifecycle};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub mode: String,
    /// Where balanced packets find their next hop: `fib` (the kernel's routing, forwarding on)
    /// or `held` (one-arm on a host that does not forward: xnlb resolves them).
    #[serde(default)]
    pub routing: String,
    /// Cluster mode: this node's view of the cluster (`xnlb cluster query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterStatus>,
    pub interfaces: Vec<InterfaceStatus>,
    pub config: String,
    pub conntrack: ConntrackStatus,
    pub services: Vec<ServiceStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InterfaceStatus {
    pub name: String,
    /// `client` or `server`.
    pub role: String,
    /// How the program was attached: `native`, `generic`, or `adopted` (from a previous daemon).
    pub attached: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConntrackStatus {
    /// Live established flows (not yet timed out).
    pub entries: u64,
    pub max_entries: u32,
    /// Live half-open TCP flows (SYN seen, handshake not completed).
    pub half_open: u64,
    pub half_open_max_entries: u32,
    /// Flows the kernel evicted from each table to make room for new ones, since the maps were
    /// created: elements the datapath added, less those it removed, less those still held.
    pub evicted: u64,
    pub half_open_evicted: u64,
    /// Sticky clients whose entry holds (`sticky_timeout`), over all sticky tables.
    #[serde(default)]
    pub sticky_entries: u64,
    #[serde(default)]
    pub sticky_max_entries: u32,
    /// Sticky clients the full table forgot to make room (the least recently seen first):
    /// recorded, less cleared by the administrator, less held now.
    #[serde(default)]
    pub sticky_evicted: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub ports: Vec<String>,
    pub protocol: String,
    pub filtering: String,
    pub affinity: String,
    /// Extended affinity (`30m`), `null` without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_group: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    /// `null` keeps the client's destination port.
    pub port: Option<u16>,
    pub state: BackendState,
    pub weight: u32,
    pub priority: u32,
    pub health: HealthStatus,
    pub active_flows: u64,
    /// Clients whose sticky entry (of this service's table) names this backend.
    #[serde(default)]
    pub sticky_clients: u64,
    pub new_flows: u64,
    /// Both directions.
    pub packets: u64,
    pub bytes: u64,
    pub packets_to_backend: u64,
    pub bytes_to_backend: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthStatus {
    /// Whether the service has a health check.
    pub checked: bool,
    pub healthy: bool,
    /// One line in words: `HTTP 200 OK in 1.2ms`, `3 failures, last: HTTP 503 ...`.
    pub detail: String,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// `null` until the first probe (and always without a health check).
    pub last_probe: Option<ProbeStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeStatus {
    pub ok: bool,
    /// `HTTP 200 OK`, `connect: connection refused`, `timeout after 1s connecting`, ...
    pub result: String,
    pub latency_ms: f64,
    /// When it finished, seconds since the Unix epoch.
    pub at: f64,
}

impl HealthStatus {
    pub fn of(life: &Lifecycle) -> Self {
        let tracker = life.health.as_ref();
        Self {
            checked: tracker.is_some(),
            healthy: life.healthy(),
            detail: life.health_detail(),
            consecutive_successes: tracker.map_or(0, |t| t.successes),
            consecutive_failures: tracker.map_or(0, |t| t.failures),
            last_probe: tracker.and_then(|t| t.last.as_ref()).map(|p| ProbeStatus {
                ok: p.ok,
                result: p.result.clone(),
                latency_ms: p.latency.as_secs_f64() * 1000.0,
                at: p
                    .at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            }),
        }
    }
}

/// Live flows per backend id, from a read of the connection table. A flow counts while its
/// last packet is younger than its protocol's (or closing) timeout, as the datapath judges it.
pub fn flow_census(
    flows: &[(FlowKey, FlowEntry)],
    settings: &DatapathSettings,
    now_ns: u64,
) -> (u64, HashMap<u32, u64>) {
    let mut per_backend = HashMap::new();
    let mut total = 0;
    for (key, entry) in flows {
        if !entry.expired(key.proto, settings, now_ns) {
            total += 1;
            *per_backend.entry(entry.backend_id).or_insert(0) += 1;
        }
    }
    (total, per_backend)
}

fn human(n: u64, unit: &str) -> String {
    const STEPS: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < STEPS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}{unit}")
    } else {
        format!("{v:.1}{}{unit}", STEPS[i])
    }
}

impl Status {
    /// The table `xnlb status` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ifaces: Vec<String> = self
            .interfaces
            .iter()
            .map(|i| format!("{} {} ({})", i.role, i.name, i.attached))
            .collect();
        let _ = writeln!(
            out,
            "xnlb {}{}   {}   flows {}/{} established, {}/{} half-open   config {}",
            self.mode,
            match (self.routing.as_str(), self.cluster.is_some()) {
                ("held", true) => " (next hops held: cluster mode)",
                ("held", false) => " (next hops held: forwarding off)",
                _ => "",
            },
            ifaces.join(", "),
            self.conntrack.entries,
            self.conntrack.max_entries,
            self.conntrack.half_open,
            self.conntrack.half_open_max_entries,
            self.config
        );
        if self.services.iter().any(|s| s.sticky_timeout.is_some()) {
            let _ = writeln!(
                out,
                "sticky clients {}/{}, {} forgotten by a full table",
                self.conntrack.sticky_entries,
                self.conntrack.sticky_max_entries,
                self.conntrack.sticky_evicted
            );
        }
        if let Some(c) = &self.cluster {
            let _ = writeln!(
                out,
                "cluster node {} {}: owns {} of {} buckets ({:.0}%), finishing {}, {} members",
                c.node_id,
                c.state,
                c.owned,
                c.buckets,
                100.0 * c.owned as f64 / c.buckets.max(1) as f64,
                c.finishing,
                c.members
            );
        }
        for s in &self.services {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{}  {}:{} {}  filtering {}  affinity {}{}{}  {} pkts {}  dropped {}",
                s.name,
                s.vip,
                s.ports.join(","),
                s.protocol,
                s.filtering,
                s.affinity,
                match &s.sticky_timeout {
                    Some(t) => format!(" sticky {t}"),
                    None => String::new(),
                },
                match &s.persistence_group {
                    Some(g) => format!(" (group {g})"),
                    None => String::new(),
                },
                human(s.packets, ""),
                human(s.bytes, "B"),
                s.dropped
            );
            let sticky = s.sticky_timeout.is_some();
            let rows: Vec<Vec<String>> = s
                .backends
                .iter()
                .map(|b| {
                    let mut row = vec![
                        b.name.clone(),
                        match b.port {
                            Some(p) => format!("{}:{p}", b.address),
                            None => b.address.clone(),
                        },
                        b.state.label().to_string(),
                        b.weight.to_string(),
                        b.active_flows.to_string(),
                        b.new_flows.to_string(),
                    ];
                    if sticky {
                        row.push(b.sticky_clients.to_string());
                    }
                    row.extend([
                        human(b.packets, ""),
                        human(b.bytes, "B"),
                        b.health.detail.clone(),
                    ]);
                    row
                })
                .collect();
            let mut header = vec!["BACKEND", "ADDRESS", "STATE", "WEIGHT", "FLOWS", "NEW"];
            if sticky {
                header.push("STICKY");
            }
            header.extend(["PACKETS", "BYTES", "HEALTH"]);
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.len());
                }
            }
            let line = |cells: &[&str]| {
                let mut l = String::from("  ");
                for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                    if i + 1 == cells.len() {
                        l.push_str(c);
                    } else {
                        let _ = write!(l, "{c:<w$}  ");
                    }
                }
                l
            };
            let _ = writeln!(out, "{}", line(&header));
            for r in &rows {
                let cells: Vec<&str> = r.iter().map(String::as_str).collect();
                let _ = writeln!(out, "{}", line(&cells));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{
        addr::{PROTO_TCP, PROTO_UDP},
        flow::FlowState,
    };

    #[test]
    fn census_counts_only_live_flows() {
        let mut s = DatapathSettings::defaults();
        s.tcp_timeout_ns = 100;
        s.tcp_closing_timeout_ns = 10;
        s.udp_timeout_ns = 50;
        let flow = |proto, backend_id, last_seen_ns, state| {
            (
                FlowKey {
                    proto,
                    ..Default::default()
                },
                FlowEntry {
                    last_seen_ns,
                    backend_id,
                    state,
                    ..Default::default()
                },
            )
        };
        let flows = [
            flow(PROTO_TCP, 1, 950, 0),
            flow(PROTO_TCP, 1, 899, 0),
            flow(PROTO_TCP, 2, 995, FlowState::Closing as u8),
            flow(PROTO_TCP, 2, 985, FlowState::Closing as u8),
            flow(PROTO_UDP, 3, 960, 0),
            flow(PROTO_UDP, 3, 940, 0),
        ];
        let (total, per) = flow_census(&flows, &s, 1000);
        assert_eq!(total, 3);
        assert_eq!(per.get(&1), Some(&1));
        assert_eq!(per.get(&2), Some(&1));
        assert_eq!(per.get(&3), Some(&1));
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human(999, ""), "999");
        assert_eq!(human(1_234_567, "B"), "1.2MB");
    }
}
