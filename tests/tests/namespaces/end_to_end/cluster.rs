//! Cluster mode end to end: three xnlb nodes on one switch (a Linux bridge, which floods the
//! unicast cluster MAC no node ever sends from, and multicast), one-arm, each with its own SNAT
//! address, so a backend's view of a connection says which node carried it. The clients resolve
//! the VIP to the cluster MAC (the nodes' datapaths answer ARP) and every node sees every
//! packet; each keeps its buckets'.
//!
//! Time bounds, with their slack: heartbeats every 300 ms, tolerance 5, so a dead node's
//! buckets move after 1.5 s; the bound is that plus 1 s. Convergence at start is
//! waited for up to `LIMIT` (10 s; it takes about three intervals, 0.9 s).

use socket2::{Domain, Socket, Type};
use xnlb_tests::{
    addresses::{SNAT_IP, snat_ip},
    netns::NetNs,
    nic::NicStandIn,
    topology::CLUSTER_GATEWAY,
};

use super::{
    flooding::{SynCounters, syn_retransmits},
    *,
};

const INTERVAL: Duration = Duration::from_millis(300);
const TOLERANCE: u32 = 5;
/// `tolerance × interval + 1 s`.
const FAILOVER_BOUND: Duration = Duration::from_millis(300 * 5 + 1000);
/// The sticky service's port (affinity single): a client stays on one node and one backend.
const STICKY: u16 = 82;

/// The nodes: node 1 is the farm's own balancer namespace, the others are added to its switch.
struct Nodes<'f> {
    farm: &'f Farm,
    /// Nodes 2, 3, ...: their namespaces and their switch ports' NIC stand-ins.
    extra: Vec<(NetNs, Vec<NicStandIn>)>,
    daemons: Vec<Option<Daemon>>,
}

impl<'f> Nodes<'f> {
    fn new(farm: &'f Farm, count: usize) -> Self {
        let extra = (2..=count)
            .map(|n| match farm.net.mode {
                Mode::OneArm => {
                    let addr = Ipv4Addr::new(198, 18, 0, n as u8 + 1);
                    let (ns, nic) = farm.net.another_one_arm_balancer(&format!("lb{n}"), addr);
                    (ns, vec![nic])
                }
                Mode::TwoArm => farm.net.another_two_arm_node(n as u8),
            })
            .collect();
        Self {
            farm,
            extra,
            daemons: (0..count).map(|_| None).collect(),
        }
    }

    fn ns(&self, node: usize) -> &NetNs {
        match node {
            1 => &self.farm.net.lb,
            n => &self.extra[n - 2].0,
        }
    }

    /// Node `node`'s SNAT address: what a backend sees of the connections it carries.
    fn snat(node: usize) -> Ipv4Addr {
        if node == 1 {
            SNAT_IP
        } else {
            snat_ip(node - 1)
        }
    }

    fn node_of(snat: &str) -> usize {
        (1..=9)
            .find(|&n| Self::snat(n).to_string() == snat)
            .unwrap_or_else(|| panic!("{snat} is no node's SNAT address"))
    }

    fn config(&self, node: usize, mac_mode: &str, extra_weight: bool) -> String {
        let head = self
            .farm
            .net
            .config_head()
            .replace(&format!("[{SNAT_IP}]"), &format!("[{}]", Self::snat(node)));
        let (interface, gateway) = match self.farm.net.mode {
            Mode::OneArm => ("lan0", String::new()),
            Mode::TwoArm => ("cli0", format!("  gateway: {CLUSTER_GATEWAY}\n")),
        };
        let cluster = format!(
            "cluster:\n  node_id: {node}\n  interface: {interface}\n  mac_mode: {mac_mode}\n{gateway}  heartbeat: {{ interval: {}ms, tolerance: {TOLERANCE} }}\n",
            INTERVAL.as_millis()
        );
        let weight = |n| {
            if extra_weight && n == 1 {
                ", weight: 50".to_string()
            } else {
                String::new()
            }
        };
        let backends = self.farm.backends(&[1, 2, 3], weight);
        let sticky = self
            .farm
            .service("sticky", STICKY, "    affinity: single\n", &backends);
        // Two-arm: the backends' port 80 serves only `sticky`, so a backend's packet names the
        // VIP port its client reached and a dead node's connections can be adopted from it.
        let services = match self.farm.net.mode {
            Mode::OneArm => vec![
                self.farm
                    .service("web", HTTP, "    affinity: none\n", &backends),
                sticky,
            ],
            Mode::TwoArm => vec![sticky],
        };
        format!(
            "{cluster}{head}{}metrics:\n  listen: {METRICS}\n",
            services.concat()
        )
    }

    fn start(&mut self, node: usize, mac_mode: &str) {
        let config = self.config(node, mac_mode, false);
        self.daemons[node - 1] = Some(Daemon::start(self.ns(node), &config));
    }

    fn daemon(&self, node: usize) -> &Daemon {
        self.daemons[node - 1].as_ref().expect("a running node")
    }

    fn query(&self, node: usize) -> serde_json::Value {
        let text = self.daemon(node).ok(&["cluster", "query", "--json"]);
        serde_json::from_str(&text).expect("cluster query --json is JSON")
    }

    /// Waits until the running nodes `nodes` are converged members of one cluster of that
    /// many, owning every bucket between them; their buckets owned.
    fn converged(&self, nodes: &[usize]) -> BTreeMap<usize, u64> {
        let start = Instant::now();
        loop {
            if let Ok(owned) = self.convergence(nodes) {
                return owned;
            }
            if start.elapsed() >= LIMIT {
                let views = self.convergence(nodes).unwrap_err();
                panic!("the cluster did not converge on {nodes:?} within {LIMIT:?}: {views:#?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The buckets each of `nodes` owns if they have converged (nothing finishing), else their
    /// views.
    fn convergence(&self, nodes: &[usize]) -> Result<BTreeMap<usize, u64>, Vec<serde_json::Value>> {
        let views: Vec<serde_json::Value> = nodes.iter().map(|&n| self.query(n)).collect();
        let owned: BTreeMap<usize, u64> = nodes
            .iter()
            .zip(&views)
            .map(|(&n, v)| (n, v["owned"].as_u64().unwrap_or(0)))
            .collect();
        let done = views.iter().all(|v| {
            v["state"] == "converged"
                && v["members"].as_u64() == Some(nodes.len() as u64)
                && v["finishing"].as_u64() == Some(0)
        }) && owned.values().sum::<u64>() == 256;
        if done { Ok(owned) } else { Err(views) }
    }
}

/// SYNs from each of three one-arm nodes (by SNAT address), counted on every backend.
fn syn_counters(farm: &Farm) -> Vec<SynCounters<'_>> {
    let sources: Vec<Ipv4Addr> = (1..=3).map(Nodes::snat).collect();
    farm.net
        .backends
        .iter()
        .map(|be| SynCounters::install(be, &sources))
        .collect()
}

/// One GET from `src` to the VIP's `port`: (backend, node) that carried it.
fn get_via(farm: &Farm, src: Ipv4Addr, port: u16) -> std::io::Result<(String, usize)> {
    let (status, body) = http_get_from(&farm.net.client, src, farm.vip(port), "/")?;
    if status != 200 {
        return Err(std::io::Error::other(format!("HTTP {status}: {body}")));
    }
    let (backend, seen) = body.trim().split_once(' ').expect("<backend> <client>");
    Ok((backend.to_string(), Nodes::node_of(seen)))
}

/// Whether a TCP connection from `src` to the VIP's `port` completes within `wait` (a SYN-ACK
/// came back through whichever node owns the client's bucket).
fn connects(farm: &Farm, src: Ipv4Addr, port: u16, wait: Duration) -> bool {
    let Ok(socket) = farm
        .net
        .client
        .run_in(|| Socket::new(Domain::IPV4, Type::STREAM, None))
    else {
        return false;
    };
    socket.bind(&SocketAddr::from((src, 0)).into()).is_ok()
        && socket.connect_timeout(&farm.vip(port).into(), wait).is_ok()
}

pub fn three_nodes(mac_mode: &str) {
    let farm = Farm::new(Mode::OneArm, 3);
    let mut nodes = Nodes::new(&farm, 3);
    if mac_mode == "igmp" {
        // A snooping switch with a querier, as IGMP mode expects of the network.
        let sw = &farm.net.switch;
        sw.ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "1",
        ]);
        sw.ip(&["link", "set", "br0", "type", "bridge", "mcast_querier", "1"]);
    }
    for n in 1..=3 {
        nodes.start(n, mac_mode);
    }
    let owned = nodes.converged(&[1, 2, 3]);
    println!("{mac_mode}: converged, buckets owned by nodes 1-3: {owned:?}");
    if mac_mode == "igmp" {
        // Every node joined the cluster's group: the switch knows its port for it.
        let [_, _, c, d] = farm.net.vip().octets();
        let group = format!("239.255.{c}.{d}");
        let start = Instant::now();
        loop {
            let out = farm
                .net
                .switch
                .command("bridge")
                .args(["mdb", "show"])
                .output()
                .expect("bridge mdb show");
            let mdb = String::from_utf8_lossy(&out.stdout).to_string();
            let ports: Vec<&str> = mdb
                .lines()
                .filter(|l| l.contains(&group))
                .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "port").nth(1))
                .collect();
            if ["lb", "lb2", "lb3"].iter().all(|p| ports.contains(p)) {
                println!("igmp: the switch delivers {group} to ports {ports:?}");
                break;
            }
            assert!(
                start.elapsed() < LIMIT,
                "the nodes did not join {group}: {mdb}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
    let syns = syn_counters(&farm);
    let retransmits_before = syn_retransmits(&farm.net.client);

    // 1. Every request answered, each node carrying its share of the buckets (affinity none:
    // every connection hashes apart). 1500 requests: a node's count is within 4 standard
    // deviations of its expectation inside ±15%.
    let clients = farm.net.client_addresses(59);
    const REQUESTS: usize = 1500;
    let mut per_node: BTreeMap<usize, usize> = BTreeMap::new();
    for i in 0..REQUESTS {
        let (_, node) = get_via(&farm, clients[i % clients.len()], HTTP)
            .unwrap_or_else(|e| panic!("{mac_mode}: request {i}: {e}"));
        *per_node.entry(node).or_default() += 1;
    }
    println!("{mac_mode}: {REQUESTS} requests from 60 clients carried by nodes: {per_node:?}");
    for (n, &buckets) in &owned {
        let expected = REQUESTS as f64 * buckets as f64 / 256.0;
        let got = *per_node.get(n).unwrap_or(&0) as f64;
        assert!(
            (got - expected).abs() <= 0.15 * expected,
            "{mac_mode}: node {n} carried {got} requests, expected {expected:.0} (±15%)"
        );
    }
    // No duplicates: each connection's SYN reached a backend once, through one node.
    let retransmits = syn_retransmits(&farm.net.client) - retransmits_before;
    let total: u64 = (1..=3)
        .map(|n| syns.iter().map(|c| c.read(Nodes::snat(n))).sum::<u64>())
        .sum();
    println!(
        "{mac_mode}: SYNs at the backends {total} for {REQUESTS} connections ({retransmits} retransmitted)"
    );
    assert_eq!(
        total,
        REQUESTS as u64 + retransmits,
        "{mac_mode}: a SYN forwarded twice"
    );

    // 2. Affinity single: each client stays on one node and one backend.
    for &c in &clients {
        let seen: BTreeSet<(String, usize)> = (0..3)
            .map(|_| get_via(&farm, c, STICKY).expect("sticky request"))
            .collect();
        assert_eq!(seen.len(), 1, "{mac_mode}: client {c} moved: {seen:?}");
    }
}

pub fn failover_join_and_drainstop() {
    let farm = Farm::new(Mode::OneArm, 3);
    let mut nodes = Nodes::new(&farm, 3);
    for n in 1..=3 {
        nodes.start(n, "unicast");
    }
    nodes.converged(&[1, 2, 3]);
    let clients = farm.net.client_addresses(59);
    let node_of = |c: Ipv4Addr| get_via(&farm, c, STICKY).expect("sticky request").1;
    let by_node: BTreeMap<usize, Vec<Ipv4Addr>> =
        clients.iter().fold(BTreeMap::new(), |mut m, &c| {
            m.entry(node_of(c)).or_default().push(c);
            m
        });
    assert_eq!(
        by_node.len(),
        3,
        "60 clients reach all three nodes: {by_node:?}"
    );

    // 1. Node 3 dies (daemon killed, link down) while transfers run through nodes 1 and 2.
    let transfers: Vec<Transfer> = [1, 2]
        .iter()
        .flat_map(|n| by_node[n].iter().take(3))
        .map(|&c| Transfer::start(&farm.net.client, c, farm.vip(STICKY), 400).expect("transfer"))
        .collect();
    let orphans = &by_node[&3];
    let died = Instant::now();
    nodes.daemons[2].as_mut().unwrap().kill9();
    nodes.ns(3).ip(&["link", "set", "lan0", "down"]);
    // Until every client of node 3 connects again, through the survivors.
    let mut waiting: Vec<Ipv4Addr> = orphans.clone();
    while !waiting.is_empty() {
        waiting.retain(|&c| !connects(&farm, c, STICKY, Duration::from_millis(200)));
        assert!(
            died.elapsed() < FAILOVER_BOUND + Duration::from_secs(2),
            "node 3's clients still cannot connect after {:?}: {waiting:?}",
            died.elapsed()
        );
    }
    let gap = died.elapsed();
    println!(
        "node 3 died: its {} clients connect again after {gap:?} (bound {FAILOVER_BOUND:?})",
        orphans.len()
    );
    assert!(gap < FAILOVER_BOUND, "failover took {gap:?}");
    let owned = nodes.converged(&[1, 2]);
    println!("nodes 1 and 2 own {owned:?}");
    for c in orphans.iter().take(10) {
        let (_, node) = get_via(&farm, *c, STICKY).expect("a request after the failover");
        assert_ne!(node, 3);
    }

    // 2. Node 3 comes back: the running transfers go on; it takes buckets again. Requests run
    // all through the convergence, and no SYN may reach a backend twice (through two nodes).
    let syns = syn_counters(&farm);
    let retransmits_before = syn_retransmits(&farm.net.client);
    nodes.ns(3).ip(&["link", "set", "lan0", "up"]);
    nodes.daemons[2] = None;
    nodes.start(3, "unicast");
    let (mut attempts, mut answered) = (0u64, 0u64);
    let joining = Instant::now();
    while nodes.convergence(&[1, 2, 3]).is_err() || attempts < 60 {
        answered += u64::from(get_via(&farm, clients[attempts as usize % 60], STICKY).is_ok());
        attempts += 1;
        assert!(joining.elapsed() < LIMIT * 2, "node 3 did not rejoin");
    }
    let retransmits = syn_retransmits(&farm.net.client) - retransmits_before;
    let total: u64 = (1..=3)
        .map(|n| syns.iter().map(|c| c.read(Nodes::snat(n))).sum::<u64>())
        .sum();
    println!(
        "node 3 rejoining: {answered} of {attempts} requests answered during the convergence; \
         SYNs at the backends {total} ({retransmits} retransmitted by the clients)"
    );
    assert!(
        answered <= total && total <= attempts + retransmits,
        "a SYN reached the backends twice during the convergence"
    );
    let back: usize = clients.iter().filter(|&&c| node_of(c) == 3).count();
    println!("node 3 rejoined: {back} of 60 clients' new connections go to it");
    assert!(back > 0, "node 3 took no buckets back");
    let mut broken = Vec::new();
    for t in transfers {
        if let Err(e) = t.finish() {
            broken.push(e);
        }
    }
    assert!(
        broken.is_empty(),
        "transfers through nodes 1 and 2 broke: {broken:?}"
    );

    // 3. Drainstop node 2 during transfers through it: they complete; no new connection
    // reaches it; it stops when they have ended.
    let through_2: Vec<Ipv4Addr> = clients
        .iter()
        .copied()
        .filter(|&c| node_of(c) == 2)
        .collect();
    let draining: Vec<Transfer> = through_2
        .iter()
        .take(3)
        .map(|&c| Transfer::start(&farm.net.client, c, farm.vip(STICKY), 200).expect("transfer"))
        .collect();
    nodes.daemon(2).ok(&["cluster", "drainstop"]);
    let owned = nodes.converged(&[1, 3]);
    println!("node 2 draining: nodes 1 and 3 own {owned:?}");
    for &c in &through_2 {
        let (_, node) = get_via(&farm, c, STICKY).expect("a new connection during the drain");
        assert_ne!(node, 2, "a new connection reached the draining node");
    }
    for t in draining {
        t.finish().expect("a transfer through the draining node");
    }
    // Node 2 stops when its last connection's entry has gone: a closed one 2 s after its last
    // packet, typically. One clean run took longer than 10 s: an entry left by the failover and
    // rejoin above (a half-open one lives `half_open_timeout`, 10 s; one whose close was seen
    // from one side only, `tcp_closing_timeout`, 30 s). The bound is the longest of those plus
    // `LIMIT` (10 s) of slack; the node's view is printed if it is exceeded.
    let drain_bound = Duration::from_secs(30) + LIMIT;
    let start = Instant::now();
    while nodes.query(2)["state"] != "stopped" {
        assert!(
            start.elapsed() < drain_bound,
            "node 2 did not stop after its connections ended: {:#}",
            nodes.query(2)
        );
        thread::sleep(Duration::from_millis(100));
    }
    println!(
        "node 2 drained and stopped {:?} after its transfers ended",
        start.elapsed()
    );

    // 4. `cluster start`: node 2 joins again; `xnlb status` shows each node's share.
    nodes.daemon(2).ok(&["cluster", "start"]);
    let owned = nodes.converged(&[1, 2, 3]);
    println!("node 2 started again: {owned:?}");
    let status = nodes.daemon(2).ok(&["status"]);
    let line = format!(
        "cluster node 2 converged: owns {} of 256 buckets",
        owned[&2]
    );
    assert!(status.contains(&line), "{status}");

    // 5. `cluster stop` on node 1: the others take its buckets and carry every client; then
    // it starts again.
    nodes.daemon(1).ok(&["cluster", "stop"]);
    let owned = nodes.converged(&[2, 3]);
    println!("node 1 stopped: {owned:?}");
    for &c in clients.iter().take(20) {
        let (_, node) = get_via(&farm, c, STICKY).expect("a request while node 1 is stopped");
        assert_ne!(node, 1);
    }
    nodes.daemon(1).ok(&["cluster", "start"]);
    nodes.converged(&[1, 2, 3]);
}

pub fn a_node_with_another_config_owns_nothing() {
    let farm = Farm::new(Mode::OneArm, 3);
    let mut nodes = Nodes::new(&farm, 3);
    nodes.start(1, "unicast");
    nodes.start(2, "unicast");
    let owned = nodes.converged(&[1, 2]);
    // Detected within two heartbeats: the odd node's first tick after it heard the others.
    // The bound adds 1 s of slack for a loaded machine's scheduling and query round trips.
    let odd = nodes.config(3, "unicast", true);
    nodes.daemons[2] = Some(Daemon::start(nodes.ns(3), &odd));
    let start = Instant::now();
    loop {
        let v = nodes.query(3);
        if v["state"] == "conflict" {
            assert_eq!(v["owned"], 0);
            break;
        }
        assert!(
            start.elapsed() < INTERVAL * 2 + Duration::from_secs(1),
            "node 3's different config was not detected: {v:#}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    println!(
        "node 3's different config detected {:?} after it started",
        start.elapsed()
    );
    let problems = nodes.query(1)["problems"].to_string();
    assert!(
        problems.contains("node 3 has a different config"),
        "{problems}"
    );
    let scrape = Scrape::take(nodes.ns(1), METRICS);
    assert!(scrape.sum("xnlb_cluster_conflicts", &[]) >= 1.0);
    println!("node 3's different config: detected, it owns nothing; nodes 1 and 2 own {owned:?}");
    let clients = farm.net.client_addresses(19);
    for &c in &clients {
        let (_, node) = get_via(&farm, c, HTTP).expect("a request");
        assert_ne!(node, 3);
    }
}

/// Two-arm: node 3 dies while 24 transfers run, some through it. The survivors take its buckets
/// and adopt its connections on the backends they were on (the backend choice is the same on
/// every node): from the backend's next packet (its retransmission) or the client's. Every
/// transfer completes byte-exact. The read timeout of a transfer is 5 s; a backend retransmits
/// about 3 s after the node died, after the takeover at 1.5-1.8 s.
pub fn two_arm_failover_adopts_connections() {
    let farm = Farm::on(Net::build_two_arm_cluster(3));
    let mut nodes = Nodes::new(&farm, 3);
    for n in 1..=3 {
        nodes.start(n, "unicast");
    }
    let owned = nodes.converged(&[1, 2, 3]);
    println!("two-arm: converged, buckets owned by nodes 1-3: {owned:?}");
    // Clients behind the client-side router, as in a real site: a node that adopts a
    // connection from its backend's packet finds the way to the client through the router.
    let clients: Vec<Ipv4Addr> = farm.net.remote_clients(4, 6).concat();
    for &c in &clients {
        farm.get(c, STICKY);
    }
    // The requests' flows leave the tables `tcp_closed_timeout` (2 s) after they closed: then
    // a node's live flows are its transfers.
    thread::sleep(Duration::from_millis(2500));
    let transfers: Vec<Transfer> = clients
        .iter()
        .map(|&c| Transfer::start(&farm.net.client, c, farm.vip(STICKY), 500).expect("transfer"))
        .collect();
    let adopted = |nodes: &Nodes, n: usize| {
        let s = Scrape::take(nodes.ns(n), METRICS);
        s.sum("xnlb_flow_events_total", &[("event", "adopted")])
            + s.sum("xnlb_flow_events_total", &[("event", "non_syn_miss")])
    };
    let on_3 = nodes.daemon(3).status_json()["conntrack"]["entries"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(on_3 >= 1.0, "no transfer went through node 3");
    let before = adopted(&nodes, 1) + adopted(&nodes, 2);
    nodes.daemons[2].as_mut().unwrap().kill9();
    for dev in ["cli0", "srv0"] {
        nodes.ns(3).ip(&["link", "set", dev, "down"]);
    }
    let mut broken = Vec::new();
    for t in transfers {
        if let Err(e) = t.finish() {
            broken.push(e);
        }
    }
    let taken = adopted(&nodes, 1) + adopted(&nodes, 2) - before;
    println!(
        "two-arm: node 3 died with {on_3} transfers; the survivors adopted {taken} connections; \
         {} of {} transfers broke",
        broken.len(),
        clients.len()
    );
    assert!(broken.is_empty(), "{broken:?}");
    assert!(taken >= on_3, "node 3's connections were not adopted");
    for &c in &clients {
        farm.get(c, STICKY);
    }
}
