//! What `xnlb status` shows: the stable JSON document (see the README) and the table a person
//! reads. Built by the controller from its state and the datapath's counters.

use std::{collections::HashMap, fmt::Write as _, time::SystemTime};

use lb_common::{
    addr::PROTO_TCP,
    flow::{FlowEntry, FlowKey, FlowState},
    settings::DatapathSettings,
};
use serde::{Deserialize, Serialize};

use crate::lifecycle::{BackendState, Change, Lifecycle};

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
    /// Scale-out by routing: the VIPs on the announce interface and why (`announce:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceStatus>,
    pub interfaces: Vec<InterfaceStatus>,
    pub config: String,
    /// Seconds since the daemon started (a restart adopts the datapath: its counters go on).
    #[serde(default)]
    pub uptime_secs: u64,
    /// The span the `rates` are measured over, in seconds; 0 in the daemon's first second
    /// (no rates yet).
    #[serde(default)]
    pub rates_over_secs: f64,
    pub conntrack: ConntrackStatus,
    pub services: Vec<ServiceStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AnnounceStatus {
    pub interface: String,
    pub vips: Vec<crate::announce::VipAnnouncement>,
}

/// Per second, over the status's `rates_over_secs`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Rates {
    pub packets: f64,
    pub bytes: f64,
    pub new_flows: f64,
}

/// A backend's last change of state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChangeStatus {
    /// When, seconds since the Unix epoch.
    pub at: f64,
    /// The state before.
    pub from: BackendState,
    /// `3 failures, last: HTTP 503 Service Unavailable`, `administrator: drain`, ...
    pub reason: String,
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
    /// Of those, the open connections seen in the last minute (`ACTIVE_WITHIN_SECS`).
    #[serde(default)]
    pub active: u64,
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
    /// Open connections seen in the last minute, over its backends.
    #[serde(default)]
    pub active_connections: u64,
    #[serde(default)]
    pub rates: Rates,
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
    /// `null` while it is in the state it started in (or was adopted in).
    #[serde(default)]
    pub last_change: Option<ChangeStatus>,
    /// Tracked flows: entries of the connection table that have not timed out, idle ones
    /// included (up to `tcp_timeout`, 2 h by default).
    pub active_flows: u64,
    /// Open connections (TCP not closing, or UDP) with a packet in the last minute
    /// (`ACTIVE_WITHIN_SECS`).
    #[serde(default)]
    pub active_connections: u64,
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
    #[serde(default)]
    pub rates: Rates,
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
                at: epoch_secs(p.at),
            }),
        }
    }
}

impl ChangeStatus {
    pub fn of(change: &Change) -> Self {
        Self {
            at: epoch_secs(change.at),
            from: change.from,
            reason: change.reason.clone(),
        }
    }
}

/// `at` in the status's time: seconds since the Unix epoch.
pub fn epoch_secs(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A connection is active while open and seen this recently: long enough for a quiet
/// interactive session's keep-alives, short enough that the count says what is in use now
/// rather than what the table still remembers.
pub const ACTIVE_WITHIN_SECS: u64 = 60;

/// Flows of a table (or of one backend) by how alive they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCount {
    /// Not timed out, as the datapath judges it (`FlowEntry::expired`).
    pub live: u64,
    /// Live, open (TCP neither closing nor closed; UDP) and seen within `ACTIVE_WITHIN_SECS`.
    pub active: u64,
}

/// The flows of a read of a connection table, in all and per backend id.
pub fn flow_census(
    flows: &[(FlowKey, FlowEntry)],
    settings: &DatapathSettings,
    now_ns: u64,
) -> (FlowCount, HashMap<u32, FlowCount>) {
    let mut per_backend: HashMap<u32, FlowCount> = HashMap::new();
    let mut total = FlowCount::default();
    for (key, entry) in flows {
        if entry.expired(key.proto, settings, now_ns) {
            continue;
        }
        let recent = now_ns.saturating_sub(entry.last_seen_ns) < ACTIVE_WITHIN_SECS * 1_000_000_000;
        let open = key.proto != PROTO_TCP || entry.state == FlowState::Open as u8;
        let active = u64::from(recent && open);
        let backend = per_backend.entry(entry.backend_id).or_default();
        for count in [&mut total, backend] {
            count.live += 1;
            count.active += active;
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

/// A rate per second as a person reads it: `0`, `0.4`, `12`, `1.5k`.
fn rate(per_sec: f64, unit: &str) -> String {
    if per_sec < 10.0 && per_sec.fract() != 0.0 {
        format!("{per_sec:.1}{unit}")
    } else {
        human(per_sec.round() as u64, unit)
    }
}

/// A service's rates in words.
fn per_second(r: &Rates) -> String {
    format!(
        "{} new flows/s, {} packets/s, {}/s",
        rate(r.new_flows, ""),
        rate(r.packets, ""),
        rate(r.bytes, "B")
    )
}

/// A span of time in its two largest units: `42s`, `4m12s`, `3h04m`, `2d03h`.
fn span(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
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
            "xnlb {}{}   up {}   {}   flows {}/{} established ({} active), {}/{} half-open   \
             config {}",
            self.mode,
            match (self.routing.as_str(), self.cluster.is_some()) {
                ("held", true) => " (next hops held: cluster mode)",
                ("held", false) => " (next hops held: forwarding off)",
                _ => "",
            },
            span(self.uptime_secs as f64),
            ifaces.join(", "),
            self.conntrack.entries,
            self.conntrack.max_entries,
            self.conntrack.active,
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
        if let Some(a) = &self.announce {
            for v in &a.vips {
                let _ = writeln!(
                    out,
                    "{} {} on {}: {}",
                    v.vip,
                    if v.announced {
                        "announced"
                    } else {
                        "withdrawn"
                    },
                    a.interface,
                    v.why
                );
            }
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
            let rated = self.rates_over_secs > 0.0;
            if rated {
                let _ = writeln!(
                    out,
                    "  {} active connection{}; over the last {:.0}s: {}",
                    s.active_connections,
                    if s.active_connections == 1 { "" } else { "s" },
                    self.rates_over_secs,
                    per_second(&s.rates)
                );
            }
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
                        b.active_connections.to_string(),
                        b.active_flows.to_string(),
                        b.new_flows.to_string(),
                    ];
                    if sticky {
                        row.push(b.sticky_clients.to_string());
                    }
                    row.extend([human(b.packets, ""), human(b.bytes, "B")]);
                    if rated {
                        row.extend([
                            rate(b.rates.new_flows, ""),
                            rate(b.rates.packets, ""),
                            rate(b.rates.bytes, "B"),
                        ]);
                    }
                    row.push(b.health.detail.clone());
                    row.push(match &b.last_change {
                        Some(c) => format!(
                            "{} ago, was {}: {}",
                            span(epoch_secs(SystemTime::now()) - c.at),
                            c.from.label(),
                            c.reason
                        ),
                        None => "-".to_string(),
                    });
                    row
                })
                .collect();
            let mut header = vec![
                "BACKEND", "ADDRESS", "STATE", "WEIGHT", "ACTIVE", "TRACKED", "NEW",
            ];
            if sticky {
                header.push("STICKY");
            }
            header.extend(["PACKETS", "BYTES"]);
            if rated {
                header.extend(["NEW/S", "PKTS/S", "BYTES/S"]);
            }
            header.extend(["HEALTH", "LAST CHANGE"]);
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
    use lb_common::addr::PROTO_UDP;

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
        assert_eq!(total.live, 3);
        let live = |id| per.get(&id).map(|c| c.live);
        assert_eq!([live(1), live(2), live(3)], [Some(1), Some(1), Some(1)]);
        // All seen within the minute; the closing one is not open.
        assert_eq!(total.active, 2);
    }

    #[test]
    fn an_idle_connection_is_tracked_but_not_active() {
        let s = DatapathSettings::defaults(); // tcp_timeout 2 h
        let minute = ACTIVE_WITHIN_SECS * 1_000_000_000;
        let now = 10 * minute;
        let flow = |last_seen_ns| {
            let key = FlowKey {
                proto: PROTO_TCP,
                ..Default::default()
            };
            let entry = FlowEntry {
                last_seen_ns,
                backend_id: 7,
                ..Default::default()
            };
            (key, entry)
        };
        let flows = [
            flow(now - minute + 1),
            flow(now - minute),
            flow(now - 5 * minute),
        ];
        let (total, per) = flow_census(&flows, &s, now);
        let want = FlowCount { live: 3, active: 1 };
        assert_eq!((total, per[&7]), (want, want));
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human(999, ""), "999");
        assert_eq!(human(1_234_567, "B"), "1.2MB");
        assert_eq!(
            [
                rate(0.0, ""),
                rate(0.4, ""),
                rate(12.3, ""),
                rate(1500.0, "B")
            ],
            ["0", "0.4", "12", "1.5kB"]
        );
        assert_eq!(
            [span(42.9), span(252.0), span(11_040.0), span(183_600.0)],
            ["42s", "4m12s", "3h04m", "2d03h"]
        );
    }
}
