//! Checks a typed config for what cannot work. Each problem names its path; the loader adds
//! the line and column. One service's own checks are in `service`.

mod service;

pub use service::service_problems;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use lb_common::{
    flow::MAX_IDLE_CLASSES,
    limits::{MAX_BACKENDS, MAX_FLOW_ENTRIES, MAX_SERVICES, MIN_FLOW_ENTRIES},
    settings::{MAX_SNAT_ADDRS, MIN_SNAT_PORTS},
};

use std::time::Duration;

use super::{
    Affinity, Announce, Cluster, Config, DEFAULT_ANNOUNCE_INTERFACE, Filtering, Health, HttpCheck,
    MAX_WEIGHT, Mode, Problem, Service, TcpCheck, health::MAX_TCP_CHECK_TEXT,
};

pub fn problems(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    top_level(config, &mut out);
    if let Some(cluster) = &config.cluster {
        cluster_problems(config, cluster, &mut out);
    }
    if let Some(announce) = &config.announce {
        announce_problems(config, announce, &mut out);
    }
    for (i, service) in config.services.iter().enumerate() {
        out.extend(service_problems(service, &format!("services[{i}]")));
    }
    across_services(config, &mut out);
    idle_timeouts(config, &mut out);
    persistence_groups(config, &mut out);
    addresses_with_two_roles(config, &mut out);
    admin_socket(config, &mut out);
    out
}

/// A VIP or a SNAT address that is also a backend's: traffic to it would be balanced to
/// itself, or replies to the balancer taken for a backend's.
fn addresses_with_two_roles(config: &Config, out: &mut Vec<Problem>) {
    // A backend of the same service at its VIP is said by the service's own check.
    let backend_at = |addr: IpAddr, not_of: Option<&str>| {
        config
            .services
            .iter()
            .filter(|s| Some(s.name.as_str()) != not_of)
            .find_map(|s| {
                s.backends
                    .iter()
                    .find(|b| b.address == addr)
                    .map(|b| format!("{}/{}", s.name, b.name))
            })
    };
    for (i, s) in config.services.iter().enumerate() {
        if let Some(backend) = backend_at(s.vip, Some(&s.name)) {
            out.push(
                Problem::new(
                    format!("services[{i}].vip"),
                    format!("{} is also the address of backend {backend}", s.vip),
                )
                .hint("a VIP is the balancer's; a backend is a server behind it"),
            );
        }
    }
    for (k, addr) in config.snat_addresses().iter().enumerate() {
        if let Some(backend) = backend_at(*addr, None) {
            out.push(
                Problem::new(
                    format!("snat.addresses[{k}]"),
                    format!("{addr} is also the address of backend {backend}"),
                )
                .hint("the SNAT address is the balancer's own, towards the backends"),
            );
        }
    }
}

/// `admin.socket` names a file under a directory (the daemon creates the directory).
fn admin_socket(config: &Config, out: &mut Vec<Problem>) {
    let socket = &config.admin.socket;
    if !socket.is_absolute() || socket.file_name().is_none() || socket.as_os_str().len() > 107 {
        out.push(
            Problem::new(
                "admin.socket",
                format!("`{}` cannot be the admin socket", socket.display()),
            )
            .hint("an absolute path to a file, under 108 bytes, e.g. /run/xnlb/xnlb.sock"),
        );
    }
}

/// Allowed, but worth telling the administrator.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in &config.services {
        if let Some(group) = &s.persistence_group {
            groups.entry(group).or_default().push(&s.name);
        }
    }
    groups
        .into_iter()
        .filter(|(_, services)| services.len() == 1)
        .map(|(group, services)| {
            format!(
                "persistence_group {group} has one service ({}): it shares nothing",
                services[0]
            )
        })
        .collect()
}

/// The services of a persistence group share a sticky table and a hash seed, so they must key
/// clients alike and know the same backends; and no two sticky tables (or two members of one)
/// may share a number.
fn persistence_groups(config: &Config, out: &mut Vec<Problem>) {
    let mut first_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in config.services.iter().enumerate() {
        let Some(group) = s.persistence_group.as_deref() else {
            continue;
        };
        let Some(&f) = first_of.get(group) else {
            first_of.insert(group, i);
            continue;
        };
        let first = &config.services[f];
        let differs = |what: &str, here: String, there: String| {
            Problem::new(
                format!("services[{i}].{what}"),
                format!(
                    "{what} is {here} here and {there} in {} (services[{f}]) of persistence_group {group}",
                    first.name
                ),
            )
            .hint("the services of a group keep one sticky table: they must agree on it")
        };
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if s.sticky_timeout != first.sticky_timeout {
            out.push(differs(
                "sticky_timeout",
                show(s.sticky_timeout),
                show(first.sticky_timeout),
            ));
        }
        if s.affinity != first.affinity {
            out.push(differs(
                "affinity",
                s.affinity.label().into(),
                first.affinity.label().into(),
            ));
        } else if s.affinity == Affinity::Network && s.network_prefix() != first.network_prefix() {
            out.push(differs(
                "network_prefix",
                format!("/{}", s.network_prefix()),
                format!("/{}", first.network_prefix()),
            ));
        }
        let servers = |s: &Service| -> BTreeMap<String, IpAddr> {
            s.backends
                .iter()
                .map(|b| (b.name.clone(), b.address))
                .collect()
        };
        if servers(s) != servers(first) {
            out.push(
                Problem::new(
                    format!("services[{i}].backends"),
                    format!(
                        "the backends differ from those of {} (services[{f}]) of persistence_group {group}",
                        first.name
                    ),
                )
                .hint("a group's services list the same backends (names and addresses); ports and weights may differ"),
            );
        }
    }
    // Numbers are hashes of names: a clash is unlikely, and would mix two clients or servers up.
    let mut tables: BTreeMap<u32, String> = BTreeMap::new();
    for (i, s) in config
        .services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.sticky())
    {
        let key = s.persistence_key();
        let seed = crate::plan::seed_of(s);
        match tables.get(&seed) {
            Some(other) if *other != key => out.push(
                Problem::new(
                    format!("services[{i}].name"),
                    format!("`{key}` and `{other}` hash to the same sticky table"),
                )
                .hint("rename one of them"),
            ),
            Some(_) => {}
            None => {
                tables.insert(seed, key);
            }
        }
        let mut members: BTreeMap<u32, &str> = BTreeMap::new();
        for (j, b) in s.backends.iter().enumerate() {
            if let Some(other) = members.insert(crate::plan::member_of(&b.name), &b.name)
                && other != b.name
            {
                out.push(
                    Problem::new(
                        format!("services[{i}].backends[{j}].name"),
                        format!(
                            "backends `{other}` and `{}` hash to the same member number",
                            b.name
                        ),
                    )
                    .hint("rename one of them"),
                );
            }
        }
    }
}

/// The `announce` block's own checks.
fn announce_problems(config: &Config, announce: &Announce, out: &mut Vec<Problem>) {
    let name = &announce.interface;
    // IFNAMSIZ less its terminating zero; `ip link add` refuses the rest.
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
    {
        out.push(
            Problem::new(
                "announce.interface",
                format!(
                    "{name:?} is not an interface name (1-15 characters, no '/', ':' or spaces)"
                ),
            )
            .hint(format!(
                "announce: {{ interface: {DEFAULT_ANNOUNCE_INTERFACE} }}"
            )),
        );
    }
    let theirs = [
        Some(&config.interfaces.client),
        config.interfaces.server.as_ref(),
    ];
    if theirs.into_iter().flatten().any(|i| i == name) {
        out.push(
            Problem::new(
                "announce.interface",
                format!(
                    "{name} carries traffic; the VIPs are announced on an interface of their own"
                ),
            )
            .hint("a name xnlb creates, such as xnlb-vips"),
        );
    }
    if announce.min_backends == 0 {
        out.push(
            Problem::new(
                "announce.min_backends",
                "0 would announce a VIP nothing serves",
            )
            .hint("1: announced while a backend is in rotation"),
        );
    }
    if announce.hold_down > Duration::from_secs(3600) {
        out.push(Problem::new(
            "announce.hold_down",
            "more than an hour: a VIP would stay withdrawn long after its backends recovered",
        ));
    }
    if config.cluster.is_some() {
        out.push(
            Problem::new(
                "announce",
                "cluster mode shares the VIPs on one segment; announce shares them by routing",
            )
            .hint("use one of the two blocks"),
        );
    }
    // A VIP none of whose services could ever have enough backends is never announced.
    let mut most: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for s in &config.services {
        let n = s.backends.iter().filter(|b| b.weight > 0).count();
        let m = most.entry(s.vip).or_default();
        *m = (*m).max(n);
    }
    for (vip, n) in most {
        if n < announce.min_backends as usize {
            out.push(
                Problem::new(
                    "announce.min_backends",
                    format!(
                        "{} but {vip}'s services have at most {n} backend(s) of positive weight: \
                         it would never be announced",
                        announce.min_backends
                    ),
                )
                .hint("lower min_backends or add backends"),
            );
        }
    }
}

/// The `cluster` block's own checks.
fn cluster_problems(config: &Config, cluster: &Cluster, out: &mut Vec<Problem>) {
    // The cluster MAC is answered by ARP and derived from an IPv4 VIP.
    for (i, s) in config.services.iter().enumerate() {
        if s.vip.is_ipv6() {
            out.push(
                Problem::new(
                    format!("services[{i}].vip"),
                    "cluster mode shares IPv4 VIPs only (the nodes answer ARP for them)",
                )
                .hint("balance an IPv6 VIP on a node outside the cluster"),
            );
        }
    }
    if !(1..=254).contains(&cluster.node_id) {
        out.push(
            Problem::new(
                "cluster.node_id",
                format!("{} is out of range 1..=254", cluster.node_id),
            )
            .hint("give each node of the cluster its own number"),
        );
    }
    if cluster.interface != config.interfaces.client {
        out.push(
            Problem::new(
                "cluster.interface",
                format!(
                    "the cluster MAC lives on the client interface ({}), not {}",
                    config.interfaces.client, cluster.interface
                ),
            )
            .hint(format!(
                "cluster: {{ interface: {} }}",
                config.interfaces.client
            )),
        );
    }
    match (config.mode, cluster.gateway) {
        (Mode::TwoArm, None) => out.push(
            Problem::new(
                "cluster.gateway",
                "a two-arm cluster needs the backends' shared gateway",
            )
            .hint("the address the backends route through, on the server side, on no node"),
        ),
        (Mode::TwoArm, Some(IpAddr::V6(_))) => out.push(Problem::new(
            "cluster.gateway",
            "the shared gateway must be an IPv4 address",
        )),
        (Mode::TwoArm, Some(gateway)) if config.services.iter().any(|s| s.vip == gateway) => out
            .push(Problem::new(
                "cluster.gateway",
                "the shared gateway is a VIP",
            )),
        (Mode::OneArm, Some(_)) => out.push(Problem::new(
            "cluster.gateway",
            "a shared gateway is for two-arm mode",
        )),
        _ => {}
    }
    if config.services.is_empty() {
        out.push(
            Problem::new(
                "cluster",
                "cluster mode needs a service: the first one's VIP names the cluster MAC",
            )
            .hint("add a service"),
        );
    }
    if !(1..=MAX_WEIGHT).contains(&cluster.share) {
        out.push(Problem::new(
            "cluster.share",
            format!("{} is out of range 1..={MAX_WEIGHT}", cluster.share),
        ));
    }
    let hb = &cluster.heartbeat;
    if !(Duration::from_millis(100)..=Duration::from_secs(10)).contains(&hb.interval) {
        out.push(Problem::new(
            "cluster.heartbeat.interval",
            format!("{:?} is out of range 100ms..=10s", hb.interval),
        ));
    }
    if !(2..=60).contains(&hb.tolerance) {
        out.push(Problem::new(
            "cluster.heartbeat.tolerance",
            format!("{} is out of range 2..=60 heartbeats", hb.tolerance),
        ));
    }
}

fn top_level(config: &Config, out: &mut Vec<Problem>) {
    match config.mode {
        Mode::Dsr => out.push(
            Problem::new("mode", "dsr mode is planned but not available yet")
                .hint("use two-arm or one-arm"),
        ),
        Mode::TwoArm => {
            match &config.interfaces.server {
                None => out.push(
                    Problem::new("interfaces", "two-arm mode needs interfaces.server")
                        .hint("name the interface towards the backends, or use mode: one-arm"),
                ),
                Some(server) if *server == config.interfaces.client => out.push(
                    Problem::new(
                        "interfaces.server",
                        "the server interface is the client interface",
                    )
                    .hint("with one interface, use mode: one-arm"),
                ),
                Some(_) => {}
            }
            if config.snat.is_some() {
                out.push(
                    Problem::new("snat", "snat is only used in one-arm mode")
                        .hint("two-arm keeps the client's address; remove the snat block"),
                );
            }
        }
        Mode::OneArm => {
            if config.interfaces.server.is_some() {
                out.push(
                    Problem::new(
                        "interfaces.server",
                        "one-arm mode uses only interfaces.client",
                    )
                    .hint("remove interfaces.server, or use mode: two-arm"),
                );
            }
            match &config.snat {
                Some(snat) if !snat.addresses.is_empty() => {
                    // Each IP version's services need a source address of that version.
                    for (i, s) in config.services.iter().enumerate() {
                        if !snat.addresses.iter().any(|a| a.is_ipv6() == s.vip.is_ipv6()) {
                            let family = family_name(s.vip);
                            out.push(
                                Problem::new(
                                    format!("services[{i}].vip"),
                                    format!("one-arm mode needs an {family} SNAT address for this {family} VIP"),
                                )
                                .hint(format!("add an {family} address of the balancer to snat.addresses")),
                            );
                        }
                    }
                }
                _ => out.push(
                    Problem::new(
                        "snat",
                        "one-arm mode needs snat.addresses (the source address towards backends)",
                    )
                    .hint("e.g. snat: { addresses: [198.18.0.2] }, an address of the balancer on the client subnet"),
                ),
            }
        }
    }
    if let Some(snat) = &config.snat {
        if snat.addresses.len() > MAX_SNAT_ADDRS {
            out.push(Problem::new(
                "snat.addresses",
                format!(
                    "at most {MAX_SNAT_ADDRS} SNAT addresses, got {}",
                    snat.addresses.len()
                ),
            ));
        }
        for (i, a) in snat.addresses.iter().enumerate() {
            if let Some(p) = unicast_problem(*a, &format!("snat.addresses[{i}]")) {
                out.push(p);
            }
        }
        if u32::from(snat.ports.hi - snat.ports.lo) + 1 < MIN_SNAT_PORTS {
            out.push(
                Problem::new(
                    "snat.ports",
                    format!("{} leaves too few ports for SNAT", snat.ports),
                )
                .hint(format!(
                    "give at least {MIN_SNAT_PORTS} ports, e.g. \"{}\"",
                    super::default_snat_ports()
                )),
            );
        }
    }
    let ct = &config.conntrack;
    for (name, entries) in [
        ("max_entries", Some(ct.max_entries)),
        ("half_open_entries", ct.half_open_entries),
        ("sticky_entries", ct.sticky_entries),
    ] {
        if let Some(n) = entries.filter(|n| !(MIN_FLOW_ENTRIES..=MAX_FLOW_ENTRIES).contains(n)) {
            out.push(Problem::new(
                format!("conntrack.{name}"),
                format!("{n} is out of range {MIN_FLOW_ENTRIES}..={MAX_FLOW_ENTRIES}"),
            ));
        }
    }
    for (name, d) in [
        ("tcp_timeout", ct.tcp_timeout),
        ("half_open_timeout", ct.half_open_timeout),
        ("tcp_closing_timeout", ct.tcp_closing_timeout),
        ("tcp_closed_timeout", ct.tcp_closed_timeout),
        ("udp_timeout", ct.udp_timeout),
    ] {
        duration_in(
            &format!("conntrack.{name}"),
            d,
            FLOW_TIMEOUTS,
            "e.g. 2h for TCP, 60s for UDP",
            out,
        );
    }
    if config.services.is_empty() {
        out.push(Problem::new("services", "no services: nothing to balance"));
    }
    if config.services.len() > MAX_SERVICES as usize {
        out.push(Problem::new(
            "services",
            format!(
                "at most {MAX_SERVICES} services, got {}",
                config.services.len()
            ),
        ));
    }
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    if backends > MAX_BACKENDS as usize {
        out.push(Problem::new(
            "services",
            format!("at most {MAX_BACKENDS} backends over all services, got {backends}"),
        ));
    }
    if !config.admin.socket.is_absolute() {
        out.push(Problem::new(
            "admin.socket",
            "the admin socket path must be absolute",
        ));
    }
}

/// Names appear in metric labels, CLI arguments and logs.
fn name_problem(name: &str, path: &str) -> Option<Problem> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (!ok).then(|| {
        Problem::new(path, format!("`{name}` is not a usable name"))
            .hint("use 1-64 letters, digits, '-', '_' or '.'")
    })
}

fn unicast_problem(addr: IpAddr, path: &str) -> Option<Problem> {
    let not_unicast = match addr {
        IpAddr::V4(a) => {
            a.is_broadcast() || a.is_unspecified() || a.is_multicast() || a.is_loopback()
        }
        // (Link-local addresses are not routed: a VIP or backend must be reachable beyond.)
        IpAddr::V6(a) => {
            a.is_unspecified() || a.is_multicast() || a.is_loopback() || a.is_unicast_link_local()
        }
    };
    not_unicast.then(|| Problem::new(path, format!("{addr} is not a unicast address")))
}

/// "IPv4" or "IPv6".
fn family_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn across_services(config: &Config, out: &mut Vec<Problem>) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        if let Some(first) = names.insert(&s.name, i) {
            out.push(Problem::new(
                format!("services[{i}].name"),
                format!(
                    "service name `{}` is already used by services[{first}]",
                    s.name
                ),
            ));
        }
    }
    for (i, a) in config.services.iter().enumerate() {
        for (j, b) in config.services.iter().enumerate().skip(i + 1) {
            if a.vip != b.vip || !a.protocol.includes(b.protocol) {
                continue;
            }
            for (k, pb) in b.ports.iter().enumerate() {
                if let Some(pa) = a.ports.iter().find(|pa| pa.overlaps(pb)) {
                    out.push(
                        Problem::new(
                            format!("services[{j}].ports[{k}]"),
                            format!(
                                "{} port {pb} overlaps port {pa} of service `{}` on the same VIP {}",
                                b.name, a.name, a.vip
                            ),
                        )
                        .hint("each VIP port may belong to one service only"),
                    );
                }
            }
        }
    }
    if let Some(snat) = &config.snat {
        for (i, addr) in snat.addresses.iter().enumerate() {
            if config.services.iter().any(|s| s.vip == *addr) {
                out.push(Problem::new(
                    format!("snat.addresses[{i}]"),
                    format!("{addr} is also a VIP"),
                ));
            }
        }
    }
}

/// Each service's `idle_timeout` in the conntrack timeouts' range, and no more distinct ones
/// than the datapath has idle classes for.
fn idle_timeouts(config: &Config, out: &mut Vec<Problem>) {
    for (i, s) in config.services.iter().enumerate() {
        if !s.idle_timeout.is_zero() {
            duration_in(
                &format!("services[{i}].idle_timeout"),
                s.idle_timeout,
                FLOW_TIMEOUTS,
                "e.g. 20m for Outlook Anywhere, 35m for EWS streaming; 0s for conntrack's",
                out,
            );
        }
    }
    let distinct = config.idle_timeouts();
    if distinct.len() > MAX_IDLE_CLASSES {
        let shown: Vec<String> = distinct
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        out.push(
            Problem::new(
                "services",
                format!(
                    "{} different idle_timeout values ({}); the datapath has room for {MAX_IDLE_CLASSES}",
                    distinct.len(),
                    shown.join(", ")
                ),
            )
            .hint("services with close values can share one"),
        );
    }
}

/// Conntrack timeouts: below a second a flow is forgotten between two packets; past 30 days
/// an idle entry is never freed in practice (and past ~584 years the datapath's nanosecond
/// clock would wrap).
const FLOW_TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(30 * 86400);

/// Adds a problem unless `d` is within `range`; whether it was.
pub(super) fn duration_in(
    path: &str,
    d: Duration,
    range: std::ops::RangeInclusive<Duration>,
    hint: &str,
    out: &mut Vec<Problem>,
) -> bool {
    if range.contains(&d) {
        return true;
    }
    let show = |d: &Duration| humantime::format_duration(*d).to_string();
    out.push(
        Problem::new(
            path,
            format!(
                "{} is out of range {}..={}",
                show(&d),
                show(range.start()),
                show(range.end())
            ),
        )
        .hint(hint),
    );
    false
}
