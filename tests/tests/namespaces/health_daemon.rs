//! Health checking in the running daemon: `xnlb run` in the two-arm namespace network probes
//! real HTTP and HTTPS servers on the backends; health pages switched at run time take
//! backends out of rotation and bring them back, and real TCP shows what the datapath does.
//! The second test measures detection time with the default settings.
//!
//! Over 400 lines on purpose: two long scenarios on one farm of HTTP and HTTPS backends, each
//! step depending on the one before.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xnlb_tests::{
    apps::{LineClient, LineServer, line_servers, line_servers_on, spread},
    certs::TestCa,
    daemon::{Daemon, Scrape, backend_of},
    http_backend::{Answer, HttpBackend, web_servers},
    topology::{Mode, Net, TWO_ARM_CONFIG_HEAD, VIP, backend_ip},
};

const METRICS: &str = "127.0.0.1:9779";
const HEALTH: &str = "/owa/healthcheck.htm";
const PRI_HEALTH: &str = "/pri/healthcheck.htm";
const NAME: &str = "mail.contoso.test";

/// One backend namespace's servers: line servers on the service ports, a web server with the
/// health pages on 8080 and the same over HTTPS (certificate for `NAME`) on 8443.
struct Backend {
    _lines: Vec<LineServer>,
    http: HttpBackend,
    https: HttpBackend,
}

fn backends(net: &Net, ca: &TestCa) -> Vec<Backend> {
    net.backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let name = format!("b{}", i + 1);
            let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            Backend {
                _lines: [80, 81, 443]
                    .iter()
                    .map(|&p| LineServer::start(ns, p, &name))
                    .collect(),
                http: HttpBackend::start(Some(ns), any(8080), &name, None),
                https: HttpBackend::start(Some(ns), any(8443), &name, Some(ca.server(&[NAME]))),
            }
        })
        .collect()
}

fn backend_list(n: usize) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "      - {{ name: b{i}, address: {}, priority: {i} }}\n",
                backend_ip(i)
            )
        })
        .collect()
}

const FAST: &str = "      interval: 300ms\n      timeout: 200ms\n      rise: 2\n      fall: 2\n";

/// The `web` service on VIP:80 over the first `backends` backends, checked on :8080, with
/// `timing` lines.
fn web(backends: usize, timing: &str) -> String {
    format!(
        "  - name: web
    vip: {VIP}
    ports: [80]
    affinity: none
    backends:
{}    health:
      http: {{ path: {HEALTH}, port: 8080 }}
{timing}",
        backend_list(backends)
    )
}

/// `web` (HTTP checks), `owa` (HTTPS, verified, with a host name) and `pri` (filtering single)
/// on one VIP, with fast checks so the test takes seconds.
fn config() -> String {
    format!(
        "{TWO_ARM_CONFIG_HEAD}{web}  - name: owa
    vip: {VIP}
    ports: [443]
    affinity: none
    backends:
{b2}    health:
      http: {{ path: {HEALTH}, port: 8443, tls: true, host: {NAME} }}
{FAST}  - name: pri
    vip: {VIP}
    ports: [81]
    filtering: single
    backends:
{b2}    health:
      http: {{ path: {PRI_HEALTH}, port: 8080 }}
{FAST}metrics:
  listen: {METRICS}
",
        web = web(3, FAST),
        b2 = backend_list(2),
    )
}

fn backend_json(d: &Daemon, service: &str, backend: &str) -> serde_json::Value {
    backend_of(&d.status_json(), service, backend).clone()
}

/// Lines of the `xnlb_health_probe*` families for `service` in a scrape.
fn probe_series(net: &Net, service: &str) -> usize {
    let label = format!("service=\"{service}\"");
    Scrape::take(&net.lb, METRICS)
        .text
        .lines()
        .filter(|l| l.starts_with("xnlb_health_probe") && l.contains(&label))
        .count()
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

const LIMIT: Duration = Duration::from_secs(15);

/// `health.initial: up` puts a cold start's backends in rotation before any probe passes;
/// the default (`down`) waits for `rise` passes. Probes here fail (nothing listens on 8080)
/// and come every 30 s: a `fall` of 3 keeps the `up` service serving for a minute, far
/// longer than the test takes even on a slow machine.
#[test]
fn initial_health_up_serves_before_the_first_probe() {
    let net = Net::build(Mode::TwoArm, 2);
    let _servers = line_servers_on(&net.backends, &[80, 81]);
    let slow = "      interval: 30s\n      timeout: 1s\n      rise: 3\n      fall: 3\n";
    let service = |name: &str, port: u16, initial: &str| {
        format!(
            "  - name: {name}
    vip: {VIP}
    ports: [{port}]
    backends:
{}    health:
      http: {{ path: {HEALTH}, port: 8080 }}
{slow}{initial}",
            backend_list(2)
        )
    };
    let config = format!(
        "{TWO_ARM_CONFIG_HEAD}{}{}",
        service("warm", 80, "      initial: up\n"),
        service("cold", 81, "")
    );
    let d = Daemon::start(&net.lb, &config);
    let status = d.status_json();
    for b in ["b1", "b2"] {
        assert_eq!(backend_of(&status, "warm", b)["state"], "up", "{status}");
        assert_eq!(backend_of(&status, "cold", b)["state"], "down", "{status}");
    }
    let served = spread(&net.client, VIP, 80, 10);
    assert_eq!(
        served.len(),
        10,
        "every request to the warm service is served: {served:?}"
    );
    assert!(
        LineClient::connect(&net.client, VIP, 81)
            .and_then(|mut c| c.ask())
            .is_err(),
        "the cold service has no backend in rotation yet"
    );
}

/// A probe the balancer itself cannot make (here its own routing policy forbids the probe's
/// port, so connect(2) fails with EACCES, as it fails with EMFILE when the daemon is out of
/// files; forwarding to the backend's service port is untouched) is the balancer's fault:
/// logged once, counted as `local_error`, and the backend stays in rotation however many
/// probes it misses; once probes get through, they count again.
#[test]
fn the_balancers_own_fault_never_takes_a_backend_out() {
    let net = Net::build(Mode::TwoArm, 2);
    let _lines = line_servers(&net.backends, 80);
    let _web: Vec<HttpBackend> = web_servers(&net.backends, 8080, "b");
    let config = format!(
        "{TWO_ARM_CONFIG_HEAD}{}metrics:\n  listen: {METRICS}\n",
        web(2, FAST)
    );
    let d = Daemon::start(&net.lb, &config);
    d.wait_state(&[("web", "b1"), ("web", "b2")], "up", LIMIT);

    let b1 = [("service", "web"), ("backend", "b1")];
    let with = |result| [b1[0], b1[1], ("result", result)];
    let before = Scrape::take(&net.lb, METRICS);
    let b1_address = format!("{}/32", backend_ip(1));
    let rule = [
        "to",
        &b1_address,
        "ipproto",
        "tcp",
        "dport",
        "8080",
        "prohibit",
    ];
    net.lb.ip(&[&["rule", "add"][..], &rule].concat());
    // Ten probes at 300 ms (fall is 2): about 3 s; the limit is slack for a loaded machine.
    let deadline = Instant::now() + LIMIT;
    let during = loop {
        let now = Scrape::take(&net.lb, METRICS);
        if now.since(&before, "xnlb_health_probes_total", &with("local_error")) >= 10.0 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "no local errors counted:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        during.since(&before, "xnlb_health_probes_total", &with("failure")),
        0.0,
        "the balancer's own fault counted against b1"
    );
    let health = &backend_json(&d, "web", "b1");
    assert_eq!(health["state"], "up", "{health}");
    assert_eq!(
        health["health"]["detail"],
        "up, not probed: the balancer cannot (connect: permission denied)"
    );
    let log = d.log();
    assert_eq!(
        count(
            &log,
            "web/b1: the balancer cannot probe it (connect: permission denied)"
        ),
        1,
        "{log}"
    );
    let served = spread(&net.client, VIP, 80, 20);
    assert!(
        served.iter().any(|b| b == "b1"),
        "b1 left rotation: {served:?}"
    );

    net.lb.ip(&[&["rule", "del"][..], &rule].concat());
    let deadline = Instant::now() + LIMIT;
    while count(&d.log(), "web/b1: probed again") == 0 {
        assert!(
            Instant::now() < deadline,
            "probes did not resume:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let health = &backend_json(&d, "web", "b1");
    assert_eq!(health["state"], "up", "{health}");
    assert_eq!(health["health"]["last_probe"]["ok"], true, "{health}");
}

#[test]
fn backends_leave_and_rejoin_rotation_by_health() {
    let net = Net::build(Mode::TwoArm, 3);
    let scratch = std::env::temp_dir().join(format!("xnlb-health-daemon-{}", std::process::id()));
    let ca = TestCa::new(&scratch);
    let servers = backends(&net, &ca);
    let ca_file = ca.pem_file.to_str().unwrap().to_string();
    let mut d = Daemon::start_with_env(&net.lb, &config(), &[("SSL_CERT_FILE", &ca_file)]);

    // Down until rise probes pass, then up; HTTPS with verification and SNI works.
    let all = [
        ("web", "b1"),
        ("web", "b2"),
        ("web", "b3"),
        ("owa", "b1"),
        ("owa", "b2"),
        ("pri", "b1"),
        ("pri", "b2"),
    ];
    let took = d.wait_state(&all, "up", LIMIT);
    println!("all 7 checked backends up {took:?} after the daemon answered");
    let b1 = backend_json(&d, "owa", "b1");
    let health = &b1["health"];
    assert_eq!(health["checked"], true);
    assert_eq!(health["last_probe"]["ok"], true);
    assert_eq!(health["last_probe"]["result"], "HTTP 200 OK");
    assert!(health["last_probe"]["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(health["consecutive_successes"].as_u64().unwrap() >= 2);
    assert_eq!(health["consecutive_failures"], 0);
    assert!(
        servers[0]
            .https
            .hosts_seen(HEALTH)
            .iter()
            .all(|h| h == &format!("{NAME}:8443"))
    );
    assert_eq!(
        servers[0].http.hosts_seen(HEALTH)[0],
        format!("{}:8080", backend_ip(1))
    );
    let web = spread(&net.client, VIP, 80, 30);
    for b in ["b1", "b2", "b3"] {
        assert!(web.iter().any(|n| n == b), "{b} takes web flows: {web:?}");
    }

    // A connection established on web/b1 before it fails.
    let mut held = (0..60)
        .map(|_| LineClient::connect(&net.client, VIP, 80).unwrap())
        .find_map(|mut c| (c.ask().unwrap().0 == "b1").then_some(c))
        .expect("a connection lands on b1");

    // web/b1's page fails: down after fall probes, with the reason, once in the log.
    servers[0].http.set(HEALTH, Answer::Status(503));
    d.wait_state(&[("web", "b1")], "down", LIMIT);
    let b1 = backend_json(&d, "web", "b1");
    assert_eq!(
        b1["health"]["detail"],
        "2 failures, last: HTTP 503 Service Unavailable"
    );
    assert_eq!(b1["health"]["last_probe"]["ok"], false);
    assert_eq!(
        count(
            &d.log(),
            "web/b1 down: 2 failures, last: HTTP 503 Service Unavailable"
        ),
        1
    );
    // Health is per service: owa probes another page of the same server and keeps b1.
    assert_eq!(backend_json(&d, "owa", "b1")["state"], "up");
    let web = spread(&net.client, VIP, 80, 30);
    assert!(
        !web.iter().any(|n| n == "b1"),
        "no new web flow on b1: {web:?}"
    );
    let owa = spread(&net.client, VIP, 443, 20);
    assert!(owa.iter().any(|n| n == "b1"), "owa still uses b1: {owa:?}");
    // The flow on the dead backend is re-selected on its next packet: the new backend knows
    // no such connection and resets it at once, so the client does not hang.
    let asked = Instant::now();
    let err = held.ask().expect_err("the held connection is reset");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{err:?}"
    );
    println!(
        "held connection to the dead backend ended after {:?}: {err}",
        asked.elapsed()
    );
    assert!(asked.elapsed() < Duration::from_secs(2));

    // Metrics tell the same story.
    let m = Scrape::take(&net.lb, METRICS);
    let web_b1 = [("service", "web"), ("backend", "b1")];
    assert_eq!(m.sum("xnlb_backend_up", &web_b1), 0.0);
    assert_eq!(
        m.sum(
            "xnlb_backend_state",
            &[("service", "web"), ("backend", "b1"), ("state", "down")]
        ),
        1.0
    );
    assert!(
        m.sum("xnlb_health_probe_seconds", &web_b1) >= 4.0,
        "{}",
        m.text
    );
    assert!(m.text.contains("xnlb_health_probe_seconds_bucket{"));
    assert!(
        m.sum(
            "xnlb_health_probes_total",
            &[("service", "web"), ("backend", "b1"), ("result", "failure")]
        ) >= 2.0
    );

    // Every web backend down: new flows are dropped and counted, logged once for the service.
    let no_backend = |m: &Scrape| m.sum("xnlb_drops_total", &[("reason", "no_backend")]);
    let drops_before = no_backend(&m);
    servers[1].http.set(HEALTH, Answer::Status(503));
    servers[2].http.set(HEALTH, Answer::Status(503));
    d.wait_state(&[("web", "b2"), ("web", "b3")], "down", LIMIT);
    let refused = net
        .client
        .run_in(|| TcpStream::connect_timeout(&(VIP, 80).into(), Duration::from_millis(500)));
    assert!(refused.is_err(), "no backend: the SYN is dropped");
    assert!(no_backend(&Scrape::take(&net.lb, METRICS)) > drops_before);
    assert_eq!(count(&d.log(), "service web: no backend in rotation"), 1);

    // Pages back: up after rise, in rotation again.
    for s in &servers {
        s.http.set(HEALTH, Answer::Status(200));
    }
    let took = d.wait_state(&[("web", "b1"), ("web", "b2"), ("web", "b3")], "up", LIMIT);
    println!("web back up {took:?} after its pages recovered (rise 2 × 300ms)");
    assert_eq!(count(&d.log(), "service web: in service with"), 2);
    let web = spread(&net.client, VIP, 80, 30);
    assert!(
        web.iter().any(|n| n == "b1"),
        "b1 takes web flows again: {web:?}"
    );

    // filtering single: fails over in priority order and fails back.
    let all_on = |who: &str| {
        let got = spread(&net.client, VIP, 81, 10);
        assert!(got.iter().all(|n| n == who), "pri on {who}: {got:?}");
    };
    all_on("b1");
    servers[0].http.set(PRI_HEALTH, Answer::Status(503));
    d.wait_state(&[("pri", "b1")], "down", LIMIT);
    all_on("b2");
    servers[0].http.set(PRI_HEALTH, Answer::Status(200));
    d.wait_state(&[("pri", "b1")], "up", LIMIT);
    all_on("b1");

    // Administrative states override health: a drained backend that fails stays draining;
    // `enable` then shows it down; its page back brings it up.
    d.ok(&["drain", "web", "b2"]);
    servers[1].http.set(HEALTH, Answer::Status(500));
    let deadline = Instant::now() + LIMIT;
    while !d.log().contains("web/b2 down: 2 failures, last: HTTP 500 Internal Server Error (stays draining: administrator)") {
        assert!(Instant::now() < deadline, "{}", d.log());
        thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(backend_json(&d, "web", "b2")["state"], "draining");
    d.ok(&["enable", "web", "b2"]);
    assert_eq!(backend_json(&d, "web", "b2")["state"], "down");
    servers[1].http.set(HEALTH, Answer::Status(200));
    d.wait_state(&[("web", "b2")], "up", LIMIT);

    // A reload that changes web's page and drops pri's check: the prober follows, and no
    // backend leaves rotation on the way.
    let moved = "/owa/moved/healthcheck.htm";
    let reloaded = config()
        .replacen(
            &format!("path: {HEALTH}, port: 8080"),
            &format!("path: {moved}, port: 8080"),
            1,
        )
        .replace(
            &format!("    health:\n      http: {{ path: {PRI_HEALTH}, port: 8080 }}\n{FAST}"),
            "",
        );
    let downs = count(&d.log(), " down: ");
    assert!(
        probe_series(&net, "pri") > 0,
        "pri's probes are in the scrape before the reload"
    );
    assert_ne!(reloaded, config());
    d.write_config(&reloaded);
    let says = d.ok(&["reload"]);
    assert_eq!(
        says,
        "reloaded:\n  web: health check changed\n  pri: health check removed\n"
    );
    let deadline = Instant::now() + LIMIT;
    while servers.iter().any(|s| s.http.hosts_seen(moved).len() < 2) {
        assert!(Instant::now() < deadline, "the new page is not probed");
        thread::sleep(Duration::from_millis(25));
    }
    d.wait_state(&all, "up", Duration::ZERO);
    assert_eq!(
        backend_json(&d, "pri", "b1")["health"]["detail"],
        "no health check"
    );
    assert_eq!(
        probe_series(&net, "pri"),
        0,
        "the probe series of backends no longer checked leave the scrape"
    );
    assert!(probe_series(&net, "web") > 0);
    assert_eq!(
        count(&d.log(), " down: "),
        downs,
        "no new down transitions:\n{}",
        d.log()
    );

    println!("what the daemon logged about health:");
    for line in d
        .log()
        .lines()
        .filter(|l| l.contains(" up: ") || l.contains(" down: ") || l.contains("service web:"))
    {
        println!("  {line}");
    }
    println!("{}", d.ok(&["status"]));

    d.ok(&["stop"]);
    d.wait_exit(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&scratch);
}

/// From the moment a health page fails until the datapath stops choosing that backend, with
/// the default settings (interval 2s, timeout 1s, rise 2, fall 3): measured and printed. The
/// only assertion is the SPEC's bound plus a second for scheduling.
#[test]
fn detection_time_with_default_settings() {
    let net = Net::build(Mode::TwoArm, 3);
    let _lines = line_servers(&net.backends, 80);
    let pages: Vec<HttpBackend> = web_servers(&net.backends, 8080, "b");
    let config = format!(
        "{TWO_ARM_CONFIG_HEAD}{}metrics:\n  listen: {METRICS}\n",
        web(3, "")
    );
    let d = Daemon::start(&net.lb, &config);
    let rise = d.wait_state(&[("web", "b1"), ("web", "b2"), ("web", "b3")], "up", LIMIT);

    // New connections every 20 ms from here on, each noting when it was opened and where it
    // landed.
    let log: Mutex<Vec<(Instant, String)>> = Mutex::default();
    let stop = AtomicBool::new(false);
    let shown_out = AtomicBool::new(false);
    let (failed, shown_down) = thread::scope(|scope| {
        scope.spawn(|| {
            let mut race = xnlb_tests::apps::RemovalRace::default();
            let limit = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                let opened = Instant::now();
                let answer = LineClient::connect(&net.client, VIP, 80).and_then(|mut c| c.ask());
                match answer {
                    Ok((name, _)) => log.lock().unwrap().push((opened, name)),
                    Err(e) if race.tolerate("detection", &e, shown_out.load(Ordering::Relaxed)) => {
                    }
                    Err(e) => panic!("a new connection failed: {e}"),
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        thread::sleep(Duration::from_millis(500));
        let failed = Instant::now();
        pages[0].set(HEALTH, Answer::Status(503));
        let shown_down = d.wait_state(&[("web", "b1")], "down", LIMIT);
        shown_out.store(true, Ordering::Relaxed);
        thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        (failed, shown_down)
    });
    let log = log.lock().unwrap();
    let last_on_b1 = log
        .iter()
        .filter(|(t, n)| *t >= failed && n == "b1")
        .map(|(t, _)| *t - failed)
        .max()
        .unwrap_or_default();
    let after: Vec<&String> = log
        .iter()
        .filter(|(t, _)| *t >= failed + shown_down)
        .map(|(_, n)| n)
        .collect();
    let bound = 3 * Duration::from_secs(2) + Duration::from_secs(1);
    println!(
        "detection with defaults (interval 2s, timeout 1s, fall 3): last new connection to b1 \
         opened {:.2}s after its page failed; status showed it down after {:.2}s; bound \
         fall × interval + timeout = {:.0}s; {} connections in all, {} after it was shown down \
         (none on b1); backends came up {:.2}s after the daemon answered",
        last_on_b1.as_secs_f64(),
        shown_down.as_secs_f64(),
        bound.as_secs_f64(),
        log.len(),
        after.len(),
        rise.as_secs_f64()
    );
    assert!(!after.is_empty());
    assert!(after.iter().all(|n| *n != "b1"), "{after:?}");
    assert!(shown_down <= bound + Duration::from_secs(1));
    assert!(last_on_b1 <= bound + Duration::from_secs(1));
}
