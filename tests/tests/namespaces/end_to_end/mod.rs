//! End to end, as an administrator runs it: the real `xnlb run` with a config file, in the
//! two-arm and the one-arm namespace networks, real HTTP and UDP through native XDP on veth.
//! Every scenario runs in both modes. What the tests measure (shares, the time a failed backend
//! kept getting connections, the fraction of clients a new backend took) is printed; run with
//! `--nocapture` to read it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use xnlb_tests::{
    apps::{Transfer, UdpEcho, http_get_from, tally, udp_ask},
    daemon::{Daemon, Scrape, backend_of},
    http_backend::{Answer, HttpBackend},
    netns::NetNs,
    packets::{Pkt, SYN, reseal_ipv4},
    topology::{Mode, Net},
    wire::{FrameSender, ping},
};

const HTTP: u16 = 80;
const ECHO: u16 = 7;
const METRICS: &str = "127.0.0.1:9779";
const HEALTH: &str = "/owa/healthcheck.htm";
const LIMIT: Duration = Duration::from_secs(10);
/// The line servers' port (`apps::line_servers`): one line answered per line asked.
const LINES: u16 = 7100;
/// How soon an open connection's next exchange must complete after a routing change. The
/// routing watch reacts in milliseconds (under held routing the controller then resolves the
/// next hops again, a few more); a next hop that did not follow would lose packets until the
/// datapath's clock tick refreshed it (up to 4.3 s) or for good (held routing), and TCP's first
/// retransmission comes only after 200 ms, so the bound leaves most of a second of slack for a
/// loaded machine and still catches a watch that failed.
const FOLLOW_LIMIT: Duration = Duration::from_secs(1);

/// The namespace network with its servers: on each backend an HTTP server on :80 (health page,
/// `/stream/<n>`, a page naming the backend and the client it saw) and a UDP echo on :7.
struct Farm {
    net: Net,
    web: Vec<HttpBackend>,
    _echo: Vec<UdpEcho>,
}

impl Farm {
    fn new(mode: Mode, backends: usize) -> Self {
        Self::on(Net::build(mode, backends))
    }

    /// The servers on `net`'s backends.
    fn on(net: Net) -> Self {
        let name = |i: usize| format!("b{}", i + 1);
        let web = net
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let addr = SocketAddr::from((net.backend_ip(i + 1), HTTP));
                HttpBackend::start(Some(ns), addr, &name(i), None)
            })
            .collect();
        let echo = net
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| UdpEcho::start(ns, ECHO, &name(i)))
            .collect();
        Self {
            net,
            web,
            _echo: echo,
        }
    }

    fn mode(&self) -> &'static str {
        match self.net.mode {
            Mode::TwoArm => "two-arm",
            Mode::OneArm => "one-arm",
        }
    }

    /// `- { name: bN, address: ..., <extra> }` lines for backends `ns` (1-based).
    fn backends(&self, ns: &[usize], extra: impl Fn(usize) -> String) -> String {
        ns.iter()
            .map(|&n| {
                format!(
                    "      - {{ name: b{n}, address: {}, port: {HTTP}{} }}\n",
                    self.net.backend_ip(n),
                    extra(n)
                )
            })
            .collect()
    }

    /// A service on the VIP: `name`, `port`, `rest` (protocol, affinity, ...), its backends.
    fn service(&self, name: &str, port: u16, rest: &str, backends: &str) -> String {
        format!(
            "  - name: {name}\n    vip: {}\n    ports: [{port}]\n{rest}    backends:\n{backends}",
            self.net.vip()
        )
    }

    fn config(&self, services: &[String]) -> String {
        format!(
            "{}{}metrics:\n  listen: {METRICS}\n",
            self.net.config_head(),
            services.concat()
        )
    }

    /// `web`: VIP:80 over three equal backends, affinity none.
    fn web_config(&self) -> String {
        let backends = self.backends(&[1, 2, 3], |_| "".into());
        self.config(&[self.service("web", HTTP, "    affinity: none\n", &backends)])
    }

    fn vip(&self, port: u16) -> SocketAddr {
        (self.net.vip(), port).into()
    }

    /// One HTTP request from `src` to VIP:`port`; the backend that answered. Checks the address
    /// the backend saw: the client's in two-arm, the SNAT address in one-arm.
    fn get(&self, src: Ipv4Addr, port: u16) -> String {
        self.try_get(src, port)
            .unwrap_or_else(|e| panic!("{}: GET from {src} to port {port}: {e}", self.mode()))
    }

    /// `get`, returning a connection error instead of panicking on it.
    fn try_get(&self, src: Ipv4Addr, port: u16) -> std::io::Result<String> {
        let (status, body) = http_get_from(&self.net.client, src, self.vip(port), "/")?;
        assert_eq!(status, 200, "{body}");
        let (backend, seen) = body.trim().split_once(' ').expect("<backend> <client>");
        assert_eq!(
            seen,
            self.net.seen_by_backend(src).to_string(),
            "{}: the address {backend} saw for {src}",
            self.mode()
        );
        Ok(backend.to_string())
    }

    /// Opens a transfer of `ticks` ticks from `src`.
    fn transfer(&self, src: Ipv4Addr, ticks: usize) -> Transfer {
        Transfer::start(&self.net.client, src, self.vip(HTTP), ticks)
            .unwrap_or_else(|e| panic!("{}: transfer from {src}: {e}", self.mode()))
    }

    /// Makes frames from the client to the balancer, with the client's and the balancer's MACs
    /// (read once): for traffic sent raw with `FrameSender`.
    fn on_the_wire(&self) -> impl Fn(Pkt) -> Vec<u8> + use<> {
        let client = self.net.client.mac("eth0");
        let lb = self.net.lb.mac(self.net.client_iface());
        move |pkt| pkt.macs(client, lb).bytes()
    }

    fn scrape(&self) -> Scrape {
        Scrape::take(&self.net.lb, METRICS)
    }
}

/// Backend `addr` (namespace `be`) gets a new MAC, and the balancer's neighbour entry for it on
/// `dev` is replaced, as a gratuitous ARP would; returns the instant just before the balancer
/// learnt it.
fn change_backend_mac(lb: &NetNs, be: &NetNs, addr: Ipv4Addr, dev: &str) -> Instant {
    let new_mac = "02:00:00:99:00:01";
    be.ip(&["link", "set", "eth0", "address", new_mac]);
    let changed = Instant::now();
    let addr = addr.to_string();
    lb.ip(&[
        "neigh",
        "replace",
        &addr,
        "lladdr",
        new_mac,
        "dev",
        dev,
        "nud",
        "reachable",
    ]);
    changed
}

/// Two tests for each scenario: `<two>` runs it in two-arm mode, `<one>` in one-arm mode.
macro_rules! in_both_modes {
    ($($scenario:path: $two:ident, $one:ident;)+) => {$(
        #[test]
        fn $two() {
            $scenario(Mode::TwoArm);
        }

        #[test]
        fn $one() {
            $scenario(Mode::OneArm);
        }
    )+};
}

mod balancing;
mod churn;
mod cluster;
mod failures;
mod flooding;
mod fragments;
mod health_checks;
mod held_routing;
mod ipv6;
mod lifecycle;
mod next_hops;
mod ownership;
mod persistence;
mod pmtu;
mod snat_capacity;
mod syn_flood;
mod tracing;

in_both_modes! {
    balancing::balancing: balancing_two_arm, balancing_one_arm;
    lifecycle::lifecycle: health_drain_reload_two_arm, health_drain_reload_one_arm;
    lifecycle::rename: rename_keeps_connections_two_arm, rename_keeps_connections_one_arm;
    lifecycle::regroup: split_and_merge_keep_connections_two_arm, split_and_merge_keep_connections_one_arm;
    failures::fail_static: fail_static_two_arm, fail_static_one_arm;
    failures::bad_input: bad_input_two_arm, bad_input_one_arm;
    syn_flood::syn_flood: syn_flood_two_arm, syn_flood_one_arm;
    churn::churn: reload_churn_and_kill_two_arm, reload_churn_and_kill_one_arm;
    fragments::fragmented_datagrams: fragmented_datagrams_two_arm, fragmented_datagrams_one_arm;
    ipv6::dual_stack: dual_stack_two_arm, dual_stack_one_arm;
    pmtu::path_mtu_through_the_nat: path_mtu_through_the_nat_two_arm, path_mtu_through_the_nat_one_arm;
    pmtu::path_mtu_through_the_nat_ipv6: path_mtu_through_the_nat_ipv6_two_arm, path_mtu_through_the_nat_ipv6_one_arm;
    persistence::persistence: sticky_clients_survive_membership_changes_two_arm, sticky_clients_survive_membership_changes_one_arm;
    persistence::keep_or_reset: a_failed_backend_keeps_or_resets_its_flows_two_arm, a_failed_backend_keeps_or_resets_its_flows_one_arm;
}

/// Two-arm: `xnlb trace` follows one client of 40, and holds a flood to its rate.
#[test]
fn trace_follows_one_client_and_holds_a_flood_to_its_rate() {
    tracing::trace_one_client();
}

/// Two-arm only: there the backends' own connections route through the balancer.
#[test]
fn direct_connections_to_backends_from_reused_client_ports_pass_untouched() {
    ownership::direct_connections_from_reused_ports();
}

/// Two-arm only: there both directions of a flow route through the balancer.
#[test]
fn kept_next_hops_follow_routing_changes() {
    next_hops::next_hops_follow_routing();
}

/// One-arm only: a two-arm balancer routes, so it needs forwarding.
#[test]
fn one_arm_without_forwarding_holds_next_hops() {
    held_routing::one_arm_without_forwarding();
}

#[test]
fn idle_metrics_connections_cannot_starve_the_daemon() {
    failures::idle_metrics_connections();
}

/// One-arm only: there every flow claims a reply entry, so a lost reply table shows.
#[test]
fn one_arm_restart_checks_every_pin() {
    failures::pins_are_checked();
}

/// One-arm only: SNAT ports.
#[test]
fn one_arm_snat_ports_come_free_after_close() {
    snat_capacity::short_connections_reuse_closed_ports();
}

#[test]
fn one_arm_snat_exhaustion_is_refused_with_a_reset() {
    snat_capacity::exhaustion_is_refused_with_a_reset();
}

/// Cluster mode, one-arm: three nodes share the VIP through the cluster MAC.
#[test]
fn cluster_of_three_nodes_unicast() {
    cluster::three_nodes("unicast");
}

#[test]
fn cluster_of_three_nodes_multicast() {
    cluster::three_nodes("multicast");
}

#[test]
fn cluster_of_three_nodes_igmp() {
    cluster::three_nodes("igmp");
}

#[test]
fn cluster_failover_join_and_drainstop() {
    cluster::failover_join_and_drainstop();
}

#[test]
fn cluster_two_arm_failover_adopts_connections() {
    cluster::two_arm_failover_adopts_connections();
}

#[test]
fn cluster_node_with_another_config_owns_nothing() {
    cluster::a_node_with_another_config_owns_nothing();
}

/// One-arm only: the shared segment is where frames for another balancer arrive.
#[test]
fn standby_balancer_on_a_flooding_switch_acts_on_nothing() {
    flooding::standby_on_a_flooding_switch();
}

fn shares(counts: &BTreeMap<String, usize>) -> String {
    let total: usize = counts.values().sum();
    counts
        .iter()
        .map(|(b, n)| format!("{b} {:.1}%", 100.0 * *n as f64 / total as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `counts` over b1..bN match `weights`: each backend's count within 5 standard
/// deviations of its expected share. Connections land by a hash of random client ports, so a
/// count is a binomial draw; a fixed ±15% (3.4 deviations for 1,000 draws over 3 backends)
/// failed about once in a hundred full runs (b1 280 of 1000 once). Five deviations fail a fair
/// draw about once in two million checks, and still catch a backend that gets a skewed share
/// (±22% of 333 for 1,000 requests, ±11% of 1,000 for the weighted 2,000).
fn assert_shares(what: &str, counts: &BTreeMap<String, usize>, weights: &[usize]) {
    let total: usize = counts.values().sum();
    let sum: usize = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let p = *w as f64 / sum as f64;
        let expected = total as f64 * p;
        let tolerance = 5.0 * (total as f64 * p * (1.0 - p)).sqrt();
        let got = counts.get(&format!("b{}", i + 1)).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() <= tolerance,
            "{what}: b{} got {got} of {total}, expected {expected:.0} ± {tolerance:.0}: {counts:?}",
            i + 1
        );
    }
}
