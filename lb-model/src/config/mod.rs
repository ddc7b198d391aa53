//! The YAML config: the schema as typed structs (`serde`, unknown keys rejected) with their
//! defaults (`docs/config.md` describes every key). `load` reads and checks a file, `validate`
//! says what cannot work, `summary` what would run. Pure: the checks only the running system
//! can answer (do the interfaces exist) are the daemon's (`xnlb::host::interfaces`).

mod changes;
mod duration;
mod health;
mod load;
mod locate;
mod ports;
mod summary;
mod validate;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use lb_common::{limits, settings};
use serde::{Deserialize, Serialize};

pub use health::{
    Check, Health, HttpCheck, InitialHealth, ListedCheck, MAX_TCP_CHECK_TEXT, Require, TcpCheck,
};
pub use load::{ConfigError, Loaded, Problem, load, parse};
pub use locate::Locations;
pub use ports::PortRange;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mode: Mode,
    /// NLB-style cluster of xnlb nodes sharing the VIPs (`docs/cluster.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
    pub interfaces: Interfaces,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default)]
    pub snat: Option<Snat>,
    #[serde(default)]
    pub conntrack: Conntrack,
    /// Make the kernel answer ARP for each VIP on the client interface (the VIP as a /32 there).
    /// Off when the upstream router already routes the VIPs to the balancer.
    #[serde(default = "yes")]
    pub announce_vips: bool,
    /// Scale-out by routing (`docs/scale-out.md`): each VIP on an interface of its own while
    /// this node can serve it, for a routing daemon to export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Announce>,
    pub services: Vec<Service>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub admin: Admin,
}

pub use lb_common::{
    cluster::MacMode,
    service::{Affinity, Filtering},
    settings::Mode,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    #[serde(default)]
    pub mac_mode: MacMode,
    /// Unique per node (1-254); also the tie-break, as NLB's host priority.
    pub node_id: u8,
    /// Where the cluster MAC lives and heartbeats go: the client interface.
    pub interface: String,
    /// Two-arm: the backends' default gateway, shared by the nodes through a cluster MAC on the
    /// server interface.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub heartbeat: HeartbeatSettings,
    /// This node's weight in the division of the buckets.
    #[serde(default = "default_share")]
    pub share: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSettings {
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Heartbeats a node may miss before the others take its buckets.
    pub tolerance: u32,
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            tolerance: 5,
        }
    }
}

impl HeartbeatSettings {
    /// How long a silent node keeps its buckets in the others' eyes.
    pub fn dead_after(&self) -> Duration {
        self.interval * self.tolerance
    }

    /// How long a node's own bucket table stands without its controller renewing it: one
    /// interval less than `dead_after`, so a node whose controller stopped has let go of its
    /// buckets before the others take them.
    pub fn lease(&self) -> Duration {
        self.interval * self.tolerance.saturating_sub(1).max(1)
    }
}

fn default_share() -> u32 {
    100
}

/// The `announce` block: where a routing daemon (BIRD's `protocol direct`, FRR's
/// `redistribute connected`) finds the VIPs this node can serve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Announce {
    /// Created by xnlb (a dummy interface, or ifb where the kernel has no dummy driver).
    pub interface: String,
    /// A VIP is withdrawn while none of its services has this many backends in rotation.
    pub min_backends: u32,
    /// How long a withdrawn VIP must stay servable before it is announced again.
    #[serde(with = "duration")]
    pub hold_down: Duration,
}

pub const DEFAULT_ANNOUNCE_INTERFACE: &str = "xnlb-vips";

impl Default for Announce {
    fn default() -> Self {
        Self {
            interface: DEFAULT_ANNOUNCE_INTERFACE.to_string(),
            min_backends: 1,
            hold_down: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    pub client: String,
    #[serde(default)]
    pub server: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic where the driver has no XDP support.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snat {
    pub addresses: Vec<IpAddr>,
    /// Source ports the balancer claims on the SNAT addresses. Keep it clear of the kernel's
    /// own ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by default).
    #[serde(default = "default_snat_ports")]
    pub ports: PortRange,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conntrack {
    /// Established flows (each of `FLOWS` and `REPLIES`).
    pub max_entries: u32,
    /// TCP flows whose handshake has not completed, kept apart so that a SYN flood never evicts
    /// an established flow. Omitted: a quarter of `max_entries`, at least the minimum table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_entries: Option<u32>,
    #[serde(with = "duration")]
    pub tcp_timeout: Duration,
    #[serde(with = "duration")]
    pub tcp_closing_timeout: Duration,
    #[serde(with = "duration")]
    pub tcp_closed_timeout: Duration,
    #[serde(with = "duration")]
    pub udp_timeout: Duration,
    #[serde(with = "duration")]
    pub half_open_timeout: Duration,
    /// Clients the sticky table holds (`sticky_timeout`). Omitted: a million when a service
    /// is sticky, else the smallest table (`Config::sticky_entries`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_entries: Option<u32>,
}

impl Conntrack {
    /// Size of the half-open table: as configured, or derived from `max_entries`.
    pub fn half_open_entries(&self) -> u32 {
        self.half_open_entries.unwrap_or(
            (self.max_entries / limits::DEFAULT_HALF_OPEN_SHARE).max(limits::MIN_FLOW_ENTRIES),
        )
    }
}

impl Default for Conntrack {
    fn default() -> Self {
        Self {
            max_entries: limits::DEFAULT_FLOW_ENTRIES,
            half_open_entries: None,
            tcp_timeout: Duration::from_secs(settings::DEFAULT_TCP_TIMEOUT_SECS),
            tcp_closing_timeout: Duration::from_secs(settings::DEFAULT_TCP_CLOSING_TIMEOUT_SECS),
            tcp_closed_timeout: Duration::from_secs(settings::DEFAULT_TCP_CLOSED_TIMEOUT_SECS),
            udp_timeout: Duration::from_secs(settings::DEFAULT_UDP_TIMEOUT_SECS),
            half_open_timeout: Duration::from_secs(settings::DEFAULT_HALF_OPEN_TIMEOUT_SECS),
            sticky_entries: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub filtering: Filtering,
    #[serde(default)]
    pub affinity: Affinity,
    /// Prefix length for `affinity: network`; by default /24 for an IPv4 VIP, /64 for IPv6
    /// (`Service::network_prefix`).
    #[serde(default)]
    pub network_prefix: Option<u8>,
    /// Extended affinity: a client stays on its backend this long after its last packet,
    /// whatever membership changes (`lb_common::sticky`); 0 = by the ring alone.
    #[serde(default, with = "duration")]
    pub sticky_timeout: Duration,
    /// Services of one group share their sticky table and hash seed: a client reaches the same
    /// backend on each of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_group: Option<String>,
    /// How long an open flow of this service lives after its last packet, in place of
    /// `conntrack.tcp_timeout` (TCP) or `udp_timeout` (UDP); 0 = those.
    #[serde(default, with = "duration")]
    pub idle_timeout: Duration,
    /// What a backend's established flows do when its health check fails.
    #[serde(default)]
    pub on_backend_down: OnBackendDown,
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub health: Option<Health>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Both,
}

impl Protocol {
    pub fn includes(self, other: Protocol) -> bool {
        self == Protocol::Both || other == Protocol::Both || self == other
    }

    /// IP protocol numbers this rule matches.
    pub fn numbers(self) -> &'static [u8] {
        use lb_common::addr::{PROTO_TCP, PROTO_UDP};
        match self {
            Protocol::Tcp => &[PROTO_TCP],
            Protocol::Udp => &[PROTO_UDP],
            Protocol::Both => &[PROTO_TCP, PROTO_UDP],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    pub address: IpAddr,
    /// Destination port towards the backend; `None` keeps the client's destination port.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Order for `filtering: single` (lower wins); defaults to the position in the list.
    #[serde(default)]
    pub priority: Option<u32>,
}

/// `on_backend_down`: `reset` moves a failed backend's established flows to another backend at
/// their next packet (a TCP connection then ends, as Kemp's "drop connections on real server
/// failure"); `keep` lets them run on it until they end. A disabled backend always resets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendDown {
    #[default]
    Reset,
    Keep,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9779)),
        }
    }
}

pub const DEFAULT_SOCKET: &str = "/run/xnlb/xnlb.sock";
/// Where `xnlb run` and `check` read the config when `--config` is not given (the package's
/// conffile).
pub const DEFAULT_CONFIG: &str = "/etc/xnlb/xnlb.yaml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub socket: PathBuf,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

fn yes() -> bool {
    true
}
pub(crate) fn default_snat_ports() -> PortRange {
    PortRange {
        lo: settings::DEFAULT_SNAT_PORT_MIN,
        hi: settings::DEFAULT_SNAT_PORT_MAX,
    }
}
pub const DEFAULT_WEIGHT: u32 = 100;
pub const MAX_WEIGHT: u32 = 1000;
fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl Service {
    /// The VIP as IPv4, in cluster mode (whose validation rejects anything else).
    pub fn vip_v4(&self) -> Ipv4Addr {
        v4_of(self.vip)
    }

    /// The prefix length `affinity: network` groups clients by: the configured one, or /24 for
    /// an IPv4 VIP and /64 for an IPv6 one.
    pub fn network_prefix(&self) -> u8 {
        self.network_prefix
            .unwrap_or(if self.vip.is_ipv6() { 64 } else { 24 })
    }

    /// Keeps sticky entries: a timeout, spread by the ring, by client (as the datapath's
    /// `sticky::applies`; validation refuses a timeout anywhere else).
    pub fn sticky(&self) -> bool {
        !self.sticky_timeout.is_zero()
    }

    /// `sticky_timeout` in milliseconds, as the datapath holds it (validation keeps it within
    /// 30 days, far below `u32::MAX` ms).
    pub fn sticky_timeout_ms(&self) -> u32 {
        self.sticky_timeout.as_millis().min(u32::MAX as u128) as u32
    }

    /// What names the service's sticky table and seeds its hash: its persistence group, or
    /// itself.
    pub fn persistence_key(&self) -> String {
        match &self.persistence_group {
            Some(group) => format!("group {group}"),
            None => self.name.clone(),
        }
    }

    /// Backends with their effective priority (explicit, or 1-based position).
    pub fn priority_of(&self, index: usize) -> u32 {
        self.backends[index].priority.unwrap_or(index as u32 + 1)
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Whether some packet `other` answers for (VIP, protocol, port) this service answers for
    /// too: flows of `other` may become this service's when a reload regroups services.
    pub fn overlaps(&self, other: &Service) -> bool {
        self.vip == other.vip
            && self
                .protocol
                .numbers()
                .iter()
                .any(|p| other.protocol.numbers().contains(p))
            && self
                .ports
                .iter()
                .any(|a| other.ports.iter().any(|b| a.overlaps(b)))
    }
}

impl Config {
    /// The distinct `idle_timeout`s of the services, shortest first (each gets an idle class,
    /// `lb_common::flow::IDLE_CLASS`, in `plan::settings`).
    pub fn idle_timeouts(&self) -> Vec<Duration> {
        let set: std::collections::BTreeSet<Duration> = self
            .services
            .iter()
            .map(|s| s.idle_timeout)
            .filter(|t| !t.is_zero())
            .collect();
        set.into_iter().collect()
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Size of the sticky table: as configured, or a million clients when a service is sticky,
    /// else the smallest table (a reload may still add stickiness; a restart makes room).
    pub fn sticky_entries(&self) -> u32 {
        self.conntrack
            .sticky_entries
            .unwrap_or(if self.services.iter().any(Service::sticky) {
                lb_common::sticky::DEFAULT_STICKY_ENTRIES
            } else {
                limits::MIN_FLOW_ENTRIES
            })
    }

    /// Cluster mode: the cluster MAC's address, the first service's VIP (every VIP is answered
    /// with the same MAC).
    pub fn cluster_vip(&self) -> Option<Ipv4Addr> {
        self.cluster.as_ref()?;
        self.services.first().map(Service::vip_v4)
    }

    /// The SNAT addresses (none without a `snat` block).
    pub fn snat_addresses(&self) -> &[IpAddr] {
        self.snat.as_ref().map_or(&[], |s| &s.addresses)
    }

    /// Interfaces the program attaches to: the client side, and in two-arm the server side.
    pub fn attach_interfaces(&self) -> Vec<&str> {
        let mut out = vec![self.interfaces.client.as_str()];
        if let (Mode::TwoArm, Some(server)) = (self.mode, &self.interfaces.server) {
            out.push(server.as_str());
        }
        out
    }
}

/// The word a config uses for an enum value (`single`, `two-arm`, ...).
pub fn word<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn v4_of(addr: IpAddr) -> Ipv4Addr {
    match addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => unreachable!("validation admits only IPv4 addresses, got {a}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(vip: &str, protocol: &str, ports: &str) -> Service {
        let text =
            format!("name: s\nvip: {vip}\nprotocol: {protocol}\nports: [{ports}]\nbackends: []\n");
        serde_norway::from_str(&text).expect("a service")
    }

    #[test]
    fn services_overlap_on_a_shared_vip_protocol_and_port() {
        let mail = service("198.18.1.1", "tcp", "80, 443");
        assert!(mail.overlaps(&service("198.18.1.1", "tcp", "443")));
        assert!(mail.overlaps(&service("198.18.1.1", "both", "\"400-500\"")));
        assert!(!mail.overlaps(&service("198.18.1.1", "tcp", "8443")));
        assert!(!mail.overlaps(&service("198.18.1.1", "udp", "443")));
        assert!(!mail.overlaps(&service("198.18.1.2", "tcp", "443")));
    }
}
