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
    packets::{Pkt, SYN},
    topology::{Mode, Net},
    wire::{FrameSender, ping},
};

const HTTP: u16 = 80;
const ECHO: u16 = 7;
const METRICS: &str = "127.0.0.1:9779";
const HEALTH: &str = "/owa/healthcheck.htm";
const LIMIT: Duration = Duration::from_secs(10);

/// The namespace network with its servers: on each backend an HTTP server on :80 (health page,
/// `/stream/<n>`, a page naming the backend and the client it saw) and a UDP echo on :7.
struct Farm {
    net: Net,
    web: Vec<HttpBackend>,
    _echo: Vec<UdpEcho>,
}

impl Farm {
    fn new(mode: Mode, backends: usize) -> Self {
        let net = Net::build(mode, backends);
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

    fn scrape(&self) -> Scrape {
        Scrape::take(&self.net.lb, METRICS)
    }
}

/// Two tests for each scenario: `<two>` runs it in two-arm mode, `<one>` in one-arm mode.
macro_rules! in_both_modes {
    ($($scenario:ident: $two:ident, $one:ident;)+) => {$(
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

in_both_modes! {
    balancing: balancing_two_arm, balancing_one_arm;
    lifecycle: health_drain_reload_two_arm, health_drain_reload_one_arm;
    fail_static: fail_static_two_arm, fail_static_one_arm;
    bad_input: bad_input_two_arm, bad_input_one_arm;
}

fn shares(counts: &BTreeMap<String, usize>) -> String {
    let total: usize = counts.values().sum();
    counts
        .iter()
        .map(|(b, n)| format!("{b} {:.1}%", 100.0 * *n as f64 / total as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `counts` over b1..bN match `weights` within ±15% of each expected share.
fn assert_shares(what: &str, counts: &BTreeMap<String, usize>, weights: &[usize]) {
    let total: usize = counts.values().sum();
    let sum: usize = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let expected = total as f64 * *w as f64 / sum as f64;
        let got = counts.get(&format!("b{}", i + 1)).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() <= 0.15 * expected,
            "{what}: b{} got {got} of {total}, expected {expected:.0} ± 15%: {counts:?}",
            i + 1
        );
    }
}

// 1, 2 and 8: distribution, weights, affinity, UDP; the address backends see.

fn balancing(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let all = [1, 2, 3];
    let weight = |n| format!(", weight: {}", if n == 2 { 200 } else { 100 });
    let config = farm.config(&[
        farm.service(
            "web",
            HTTP,
            "    affinity: none\n",
            &farm.backends(&all, |_| "".into()),
        ),
        farm.service(
            "weighted",
            81,
            "    affinity: none\n",
            &farm.backends(&all, weight),
        ),
        farm.service(
            "sticky",
            82,
            "    affinity: single\n",
            &farm.backends(&all, |_| "".into()),
        ),
        farm.service(
            "subnet",
            83,
            "    affinity: network\n    network_prefix: 24\n",
            &farm.backends(&all, |_| "".into()),
        ),
        farm.service(
            "echo",
            ECHO,
            "    protocol: udp\n    affinity: none\n",
            &farm
                .backends(&all, |_| "".into())
                .replace(&format!("port: {HTTP}"), &format!("port: {ECHO}")),
        ),
    ]);
    let _d = Daemon::start(&farm.net.lb, &config);
    let clients = farm.net.client_addresses(39);
    let mode_name = farm.mode();

    // 1000 requests from 40 clients over three equal backends.
    let answered: Vec<String> = (0..1000)
        .map(|i| farm.get(clients[i % clients.len()], HTTP))
        .collect();
    let counts = tally(&answered);
    println!(
        "{mode_name}: 1000 requests, 40 clients, 3 equal backends: {}",
        shares(&counts)
    );
    assert_shares(&format!("{mode_name} equal"), &counts, &[1, 1, 1]);

    // Weights 100:200:100.
    let answered: Vec<String> = (0..2000)
        .map(|i| farm.get(clients[i % clients.len()], 81))
        .collect();
    let counts = tally(&answered);
    println!(
        "{mode_name}: 2000 requests, weights 1:2:1: {}",
        shares(&counts)
    );
    assert_shares(&format!("{mode_name} weighted"), &counts, &[1, 2, 1]);

    // Affinity none: one client's connections spread over every backend.
    let one: Vec<String> = (0..30).map(|_| farm.get(clients[0], HTTP)).collect();
    assert_eq!(
        tally(&one).len(),
        3,
        "{mode_name}: affinity none, one client: {one:?}"
    );

    // Affinity single: each client address sticks to one backend; the clients still spread.
    let mut sticky = BTreeMap::new();
    for &c in &clients {
        let seen: BTreeSet<String> = (0..5).map(|_| farm.get(c, 82)).collect();
        assert_eq!(
            seen.len(),
            1,
            "{mode_name}: affinity single, client {c}: {seen:?}"
        );
        sticky.insert(c, seen.into_iter().next().unwrap());
    }
    let spread = tally(sticky.values());
    println!("{mode_name}: affinity single, 40 clients: {spread:?}");
    assert!(
        spread.len() >= 2,
        "{mode_name}: all clients on one backend: {spread:?}"
    );

    // Affinity network /24: the clients of one network (behind a router) share a backend.
    let networks = farm.net.remote_clients(8, 4);
    let mut per_network = Vec::new();
    for hosts in &networks {
        let seen: BTreeSet<String> = hosts
            .iter()
            .flat_map(|&h| [farm.get(h, 83), farm.get(h, 83)])
            .collect();
        assert_eq!(
            seen.len(),
            1,
            "{mode_name}: affinity network, {hosts:?}: {seen:?}"
        );
        per_network.extend(seen);
    }
    println!("{mode_name}: affinity network, 8 /24s of 4 clients: {per_network:?}");
    assert!(
        tally(&per_network).len() >= 2,
        "{mode_name}: {per_network:?}"
    );

    // UDP: every datagram answered, from every backend, with the right source address.
    let mut echoes = Vec::new();
    for i in 0..60 {
        let src = clients[i % clients.len()];
        let (backend, seen) = udp_ask(&farm.net.client, src, farm.vip(ECHO))
            .unwrap_or_else(|e| panic!("{mode_name}: UDP from {src}: {e}"));
        assert_eq!(seen, farm.net.seen_by_backend(src).to_string());
        echoes.push(backend);
    }
    let counts = tally(&echoes);
    println!("{mode_name}: 60 UDP exchanges: {}", shares(&counts));
    assert_eq!(counts.len(), 3, "{mode_name}: {counts:?}");
}

// 3, 4 and 5: health, drain, adding a backend by reload, with transfers that must survive.

const FAST: &str = "    health:\n      http: { path: /owa/healthcheck.htm, port: 80 }\n      interval: 300ms\n      timeout: 200ms\n      rise: 2\n      fall: 2\n";
/// fall × interval + timeout + 1 s, the bound for the fast settings.
const DETECTION_BOUND: Duration = Duration::from_millis(2 * 300 + 200 + 1000);

fn owa(farm: &Farm, backends: &[usize]) -> String {
    let rest = "    affinity: single\n";
    let service = farm.service("owa", HTTP, rest, &farm.backends(backends, |_| "".into()));
    farm.config(&[service + FAST])
}

/// The client (of `clients`) whose connections go to `backend` under affinity single.
fn client_of(farm: &Farm, clients: &[Ipv4Addr], backend: &str) -> Ipv4Addr {
    *clients
        .iter()
        .find(|&&c| farm.get(c, HTTP) == backend)
        .unwrap_or_else(|| panic!("no client reaches {backend}"))
}

fn lifecycle(mode: Mode) {
    let farm = Farm::new(mode, 4);
    let mode_name = farm.mode();
    let d = Daemon::start(&farm.net.lb, &owa(&farm, &[1, 2, 3]));
    let backends = [("owa", "b1"), ("owa", "b2"), ("owa", "b3")];
    d.wait_state(&backends, "up", LIMIT);
    let clients = farm.net.client_addresses(59);

    // 3. Health. A transfer to b1 runs throughout while b2's page fails and comes back.
    let held = farm.transfer(client_of(&farm, &clients, "b1"), 300);
    assert_eq!(held.backend, "b1");
    let failed_at = Instant::now();
    farm.web[1].set(HEALTH, Answer::Status(503));
    let mut last_hit = None;
    let mut after_down = 0;
    let mut race = xnlb_tests::apps::RemovalRace::default();
    let mut i = 0;
    // New connections until b2 is shown down, then 40 more: none may reach it.
    while after_down < 40 {
        assert!(
            failed_at.elapsed() < LIMIT,
            "{mode_name}: b2 never went down\n{}",
            d.log()
        );
        let src = clients[i % clients.len()];
        i += 1;
        let backend = match farm.try_get(src, HTTP) {
            Ok(backend) => backend,
            Err(e) if race.tolerate(mode_name, &e, after_down > 0) => continue,
            Err(e) => panic!(
                "{mode_name}: GET from {src}: {e} ({} resets before)",
                race.resets()
            ),
        };
        if backend == "b2" {
            assert_eq!(
                after_down, 0,
                "{mode_name}: b2 got a connection after it was shown down"
            );
            last_hit = Some(failed_at.elapsed());
        }
        if after_down > 0 || backend_of(&d.status_json(), "owa", "b2")["state"] == "down" {
            after_down += 1;
        }
    }
    let last_hit = last_hit.expect("b2 took connections before it failed");
    println!(
        "{mode_name}: last new connection to b2 {:.2}s after its page failed (bound {:.1}s)",
        last_hit.as_secs_f64(),
        DETECTION_BOUND.as_secs_f64()
    );
    assert!(last_hit <= DETECTION_BOUND, "{mode_name}: {last_hit:?}");
    farm.web[1].set(HEALTH, Answer::Status(200));
    let back = d.wait_state(&[("owa", "b2")], "up", LIMIT);
    let b2_client = client_of(&farm, &clients, "b2");
    assert!(
        held.running(),
        "{mode_name}: the transfer must span the failure and the return"
    );
    println!(
        "{mode_name}: b2 back in rotation {:.2}s after its page recovered (client {b2_client})",
        back.as_secs_f64()
    );
    let held = held
        .finish()
        .unwrap_or_else(|e| panic!("{mode_name}: transfer to b1: {e}"));
    println!("{mode_name}: the transfer to b1 ran throughout: {held} bytes");

    // 4. Drain: the transfer to b3 completes; no new connection reaches b3.
    let draining = farm.transfer(client_of(&farm, &clients, "b3"), 100);
    d.ok(&["drain", "owa", "b3"]);
    let after: Vec<String> = clients.iter().map(|&c| farm.get(c, HTTP)).collect();
    assert!(
        draining.running(),
        "{mode_name}: the transfer must span the drain"
    );
    assert!(
        !after.contains(&"b3".to_string()),
        "{mode_name}: drained b3 got new connections"
    );
    draining
        .finish()
        .unwrap_or_else(|e| panic!("{mode_name}: transfer to drained b3: {e}"));
    d.ok(&["enable", "owa", "b3"]);
    d.wait_state(&[("owa", "b3")], "up", LIMIT);

    // 5. Reload adding b4: transfers to b1..b3 survive; affinity clients that move go to b4.
    let before: Vec<String> = clients.iter().map(|&c| farm.get(c, HTTP)).collect();
    let transfers: Vec<Transfer> = ["b1", "b2", "b3"]
        .iter()
        .map(|b| farm.transfer(client_of(&farm, &clients, b), 150))
        .collect();
    d.write_config(&owa(&farm, &[1, 2, 3, 4]));
    d.ok(&["reload"]);
    d.wait_state(&[("owa", "b4")], "up", LIMIT);
    let after: Vec<String> = clients.iter().map(|&c| farm.get(c, HTTP)).collect();
    assert!(
        transfers.iter().all(Transfer::running),
        "{mode_name}: the transfers must span the reload"
    );
    let moved: Vec<(&String, &String)> =
        before.iter().zip(&after).filter(|(a, b)| a != b).collect();
    println!(
        "{mode_name}: adding b4 moved {} of {} affinity clients ({:.0}%; ideal 25%)",
        moved.len(),
        clients.len(),
        100.0 * moved.len() as f64 / clients.len() as f64
    );
    assert!(
        moved.iter().all(|(_, to)| *to == "b4"),
        "{mode_name}: {moved:?}"
    );
    assert!(
        !moved.is_empty() && moved.len() * 2 < clients.len(),
        "{mode_name}: {moved:?}"
    );
    for t in transfers {
        let b = t.backend.clone();
        t.finish()
            .unwrap_or_else(|e| panic!("{mode_name}: transfer to {b} across the reload: {e}"));
    }
}

// 6. Fail-static.

fn fail_static(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let mode_name = farm.mode();
    let config = farm.web_config();
    let mut d = Daemon::start(&farm.net.lb, &config);
    let clients = farm.net.client_addresses(19);
    let transfer = farm.transfer(clients[0], 250);
    let before = farm.scrape();

    d.kill9();
    let during: Vec<String> = (0..60).map(|i| farm.get(clients[i % 20], HTTP)).collect();
    println!(
        "{mode_name}: 60 requests with the daemon dead: {}",
        shares(&tally(&during))
    );
    assert_eq!(tally(&during).len(), 3, "{mode_name}: {during:?}");

    d.spawn(&farm.net.lb);
    assert!(
        transfer.running(),
        "{mode_name}: the transfer must span the restart"
    );
    assert!(
        d.log().contains("adopted the running datapath"),
        "{mode_name}: {}",
        d.log()
    );
    let bytes = transfer
        .finish()
        .unwrap_or_else(|e| panic!("{mode_name}: transfer across kill -9 and restart: {e}"));
    let after_restart: Vec<String> = (0..30).map(|i| farm.get(clients[i % 20], HTTP)).collect();
    assert_eq!(
        tally(&after_restart).len(),
        3,
        "{mode_name}: {after_restart:?}"
    );
    let after = farm.scrape();
    let lost = after.sum("xnlb_drops_total", &[]) - before.sum("xnlb_drops_total", &[]);
    let misses = after.sum("xnlb_flow_events_total", &[("event", "non_syn_miss")]);
    println!(
        "{mode_name}: transfer of {bytes} bytes survived; drops {lost}, non-SYN misses {misses}"
    );
    assert_eq!(lost, 0.0, "{mode_name}: drops across the restart");
    assert_eq!(misses, 0.0, "{mode_name}: flows lost across the restart");
}

// 7. Bad input on the wire.

/// A frame from the client to `dst` with the client's and the balancer's MACs.
fn frame(farm: &Farm, pkt: Pkt) -> Vec<u8> {
    let client = farm.net.client.mac("eth0");
    let lb = farm.net.lb.mac(farm.net.client_iface());
    pkt.macs(client, lb).bytes()
}

fn bad_input(mode: Mode) {
    const BURST: usize = 500;
    let farm = Farm::new(mode, 3);
    let mode_name = farm.mode();
    let config = farm.web_config();
    let _d = Daemon::start(&farm.net.lb, &config);
    let clients = farm.net.client_addresses(9);
    let src = |i: usize| (clients[i % clients.len()], 40000 + i as u16);
    let vip = farm.net.vip();
    let before = farm.scrape();

    // Bad frames, each kind `BURST` times, interleaved.
    let mut kinds: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
    let syn = |i| Pkt::tcp(src(i), (vip, HTTP), SYN);
    kinds.push((
        "malformed_ip",
        (0..BURST)
            .map(|i| {
                let mut f = frame(&farm, syn(i));
                f[14] = 0x43; // IHL 3: shorter than an IPv4 header can be
                f
            })
            .collect(),
    ));
    kinds.push((
        "malformed_l4",
        (0..BURST)
            .map(|i| {
                let mut f = frame(&farm, syn(i));
                f.truncate(14 + 20 + 10); // half a TCP header
                f[16..18].copy_from_slice(&30u16.to_be_bytes());
                f
            })
            .collect(),
    ));
    kinds.push((
        "fragment",
        (0..BURST)
            .map(|i| {
                let mut f = frame(&farm, syn(i));
                f[20] |= 0x20; // more fragments
                f
            })
            .collect(),
    ));
    kinds.push((
        "no_service",
        (0..BURST)
            .map(|i| frame(&farm, Pkt::tcp(src(i), (vip, 9999), SYN)))
            .collect(),
    ));
    // Not for a VIP: UDP to the balancer's own address, which the kernel answers.
    let host = farm.net.lb_address();
    let strangers: Vec<Vec<u8>> = (0..BURST)
        .map(|i| frame(&farm, Pkt::udp(src(i), (host, 9))))
        .collect();

    // Real traffic alongside, from another thread.
    let traffic = thread::scope(|s| {
        let real = s.spawn(|| {
            (0..200)
                .map(|i| farm.get(clients[i % clients.len()], HTTP))
                .collect::<Vec<_>>()
        });
        let sender = FrameSender::open(&farm.net.client, "eth0");
        for i in 0..BURST {
            for (_, frames) in &kinds {
                sender.send(&frames[i]).expect("send a bad frame");
            }
            sender.send(&strangers[i]).expect("send a stranger's frame");
            if i % 50 == 0 {
                thread::sleep(Duration::from_millis(5));
            }
        }
        real.join().expect("real traffic")
    });
    assert_eq!(traffic.len(), 200);
    println!(
        "{mode_name}: 200 real requests during the burst: {}",
        shares(&tally(&traffic))
    );
    assert!(
        ping(&farm.net.client, host, Duration::from_secs(2)),
        "{mode_name}: the balancer's own address no longer answers ping"
    );

    let after = farm.scrape();
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    for (reason, _) in &kinds {
        let counted = delta("xnlb_drops_total", &[("reason", reason)]);
        println!("{mode_name}: xnlb_drops_total{{reason=\"{reason}\"}} +{counted}");
        assert_eq!(counted, BURST as f64, "{mode_name}: drops for {reason}");
    }
    let passed = delta("xnlb_passes_total", &[("reason", "not_ours")]);
    assert!(
        passed >= BURST as f64,
        "{mode_name}: not_ours passes +{passed}"
    );
    let sent_drops = delta("xnlb_xdp_actions_total", &[("action", "drop")]);
    assert_eq!(
        sent_drops,
        (BURST * kinds.len()) as f64,
        "{mode_name}: XDP_DROP count"
    );
}
