//! The daemon as an administrator meets it: `xnlb run` in a two-arm namespace network with real
//! TCP through it; `status`, `drain`/`enable`, `reload` (good and broken), SIGHUP, metrics,
//! `kill -9` with an open connection and a restart that adopts the running datapath, SIGTERM
//! and SIGINT, which leave it forwarding as well, `stop`.

use std::{collections::BTreeSet, os::unix::process::CommandExt, time::Duration};

use xnlb_tests::{
    apps::{LineClient, line_servers, line_servers_on, spread},
    daemon::{Daemon, Scrape, backends_of, refused_run},
    topology::{CLIENT_IP, Mode, Net, TWO_ARM_CONFIG_HEAD, VIP, backend_ip},
};

const PORT: u16 = 80;
const METRICS: &str = "127.0.0.1:9779";

/// A two-arm config balancing VIP:80 over the first `n` backends.
fn config(n: usize) -> String {
    let backends: String = (1..=n)
        .map(|i| format!("      - {{ name: b{i}, address: {} }}\n", backend_ip(i)))
        .collect();
    format!(
        "{TWO_ARM_CONFIG_HEAD}  - name: web
    vip: {VIP}
    ports: [{PORT}]
    affinity: none
    backends:
{backends}metrics:
  listen: {METRICS}
"
    )
}

fn backend_states(d: &Daemon) -> Vec<(String, String)> {
    backends_of(&d.status_json(), "web")
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `ip -4 addr show dev cli0` in the balancer namespace.
fn cli0_addresses(net: &Net) -> String {
    let out = net
        .lb
        .command("ip")
        .args(["-4", "addr", "show", "dev", "cli0"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Sends `signal` to the daemon process.
fn signal(d: &Daemon, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(d.pid().expect("daemon running") as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
}

fn names(list: &[String]) -> BTreeSet<&str> {
    list.iter().map(String::as_str).collect()
}

#[test]
fn daemon_lifecycle_with_real_connections() {
    let net = Net::build(Mode::TwoArm, 3);
    let _servers = line_servers(&net.backends, PORT);
    let mut d = Daemon::start(&net.lb, &config(2));

    // Status: one service, two backends up; the table names them; the VIP is announced.
    let status = d.status_json();
    assert_eq!(status["services"][0]["name"], "web");
    assert_eq!(status["services"][0]["vip"], VIP.to_string());
    assert_eq!(
        backend_states(&d),
        vec![("b1".into(), "up".into()), ("b2".into(), "up".into())]
    );
    let out = d.cli(&["status"]);
    // A copy nobody may execute wherever the checkout lives.
    let bin = d.files.dir.join("xnlb-copy");
    std::fs::copy(xnlb_tests::daemon::xnlb_bin(), &bin).unwrap();
    let nobody = std::process::Command::new(&bin)
        .args(["status", "--socket"])
        .arg(&d.files.socket)
        .uid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        !nobody.status.success() && err.contains("permission denied"),
        "{err}"
    );
    assert!(out.status.success());
    let table = d.ok(&["status"]);
    assert!(
        table.contains("web") && table.contains("b1") && table.contains("b2"),
        "{table}"
    );
    let addrs = cli0_addresses(&net);
    assert!(
        addrs.contains(&format!("{VIP}/32")),
        "VIP not announced on cli0: {addrs}"
    );

    // A client the balancer has never exchanged ARP with: the first reply waits in the kernel
    // for neighbour resolution (`no_neighbour`), which needs accept_local on the interfaces.
    let newcomer = net.client_addresses(1)[1];
    let mut first = LineClient::connect_from(&net.client, newcomer, VIP, PORT)
        .expect("a client without a neighbour entry connects");
    assert_eq!(first.ask().expect("answer").1, newcomer.to_string());
    drop(first);

    // Traffic: connections spread over both backends, which see the real client address.
    let before = Scrape::take(&net.lb, METRICS);
    let seen = spread(&net.client, VIP, PORT, 24);
    assert_eq!(names(&seen), BTreeSet::from(["b1", "b2"]), "{seen:?}");
    let mut long = LineClient::connect(&net.client, VIP, PORT).expect("long-lived connection");
    let (long_backend, client_seen) = long.ask().expect("answer");
    assert_eq!(
        client_seen,
        CLIENT_IP.to_string(),
        "two-arm keeps the client address"
    );

    // Metrics: SPEC's names are there and the counters moved with the traffic.
    let after = Scrape::take(&net.lb, METRICS);
    for name in [
        "xnlb_packets_total",
        "xnlb_bytes_total",
        "xnlb_flows_total",
        "xnlb_backend_up",
        "xnlb_backend_state",
        "xnlb_conntrack_entries",
        "xnlb_drops_total",
        "xnlb_xdp_actions_total",
    ] {
        assert!(
            after.samples.iter().any(|s| s.metric == name),
            "metric {name} missing:\n{}",
            after.text
        );
    }
    let to_backend = |s: &Scrape| s.sum("xnlb_packets_total", &[("direction", "to_backend")]);
    let to_client = |s: &Scrape| s.sum("xnlb_packets_total", &[("direction", "to_client")]);
    let flows = |s: &Scrape| s.sum("xnlb_flows_total", &[("service", "web")]);
    assert!(
        to_backend(&after) - to_backend(&before) >= 24.0 * 3.0,
        "{}",
        after.text
    );
    assert!(
        to_client(&after) - to_client(&before) >= 24.0 * 2.0,
        "{}",
        after.text
    );
    assert_eq!(
        flows(&after) - flows(&before),
        25.0,
        "one new flow per connection"
    );
    assert_eq!(after.sum("xnlb_backend_up", &[("backend", "b1")]), 1.0);
    assert_eq!(
        after.sum("xnlb_backend_state", &[("backend", "b2"), ("state", "up")]),
        1.0
    );
    assert!(after.sum("xnlb_conntrack_entries", &[]) >= 1.0);
    assert!(after.sum("xnlb_xdp_actions_total", &[("action", "redirect")]) > 0.0);

    // Drain the long connection's backend: no new flows reach it, the old one continues.
    d.ok(&["drain", "web", &long_backend]);
    assert!(backend_states(&d).contains(&(long_backend.clone(), "draining".into())));
    let seen = spread(&net.client, VIP, PORT, 16);
    assert!(
        !names(&seen).contains(long_backend.as_str()),
        "drained backend took new flows: {seen:?}"
    );
    assert_eq!(
        long.ask().expect("drained backend keeps its connection").0,
        long_backend
    );
    d.ok(&["enable", "web", &long_backend]);
    let seen = spread(&net.client, VIP, PORT, 24);
    assert!(
        names(&seen).contains(long_backend.as_str()),
        "enabled backend got nothing: {seen:?}"
    );

    // Admin errors are one line, non-zero, and list what is valid.
    let out = d.cli(&["drain", "web", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("b1, b2") && err.lines().count() == 1,
        "{err}"
    );
    let out = d.cli(&["disable", "mail", "b1"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("services: web")
    );

    // Reload with a third backend: the established connection survives, b3 takes flows.
    d.write_config(&config(3));
    let msg = d.ok(&["reload"]);
    assert_eq!(
        msg, "reloaded:\n  web: backend b3 added (198.18.2.13)\n",
        "{msg}"
    );
    assert_eq!(backend_states(&d).len(), 3);
    assert_eq!(
        long.ask().expect("connection survives a reload").0,
        long_backend
    );
    let seen = spread(&net.client, VIP, PORT, 30);
    assert!(names(&seen).contains("b3"), "{seen:?}");

    // A broken file: reload fails with every problem listed, the old config keeps forwarding.
    d.write_config(
        &config(3)
            .replace("affinity: none", "affinity: none\n    colour: blue")
            .replace("{ name: b2,", "{ name: b2, weight: 5000,"),
    );
    let out = d.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken reload must fail");
    assert!(err.contains("colour") && err.contains(":"), "{err}");
    assert_eq!(backend_states(&d).len(), 3);
    assert_eq!(spread(&net.client, VIP, PORT, 6).len(), 6);

    // SIGHUP reloads too: back to two backends.
    d.write_config(&config(2));
    signal(&d, nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backend_states(&d).len() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // kill -9 with the connection open: forwarding goes on without the daemon.
    let long_backend = if long_backend == "b3" {
        long = LineClient::connect(&net.client, VIP, PORT).unwrap();
        long.ask().unwrap().0
    } else {
        long_backend
    };
    d.kill9();
    assert_eq!(long.ask().expect("flow survives kill -9").0, long_backend);
    let seen = spread(&net.client, VIP, PORT, 12);
    assert_eq!(
        names(&seen),
        BTreeSet::from(["b1", "b2"]),
        "new connections balanced without a daemon"
    );
    let out = d.cli(&["status"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not running"));

    // Restart: the pinned datapath is adopted, the flow survives, counters carry on.
    d.spawn(&net.lb);
    let status = d.status_json();
    assert_eq!(status["interfaces"][0]["attached"], "adopted", "{status}");
    assert_eq!(
        long.ask().expect("flow survives the restart").0,
        long_backend
    );
    let active: u64 = status["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["active_flows"].as_u64().unwrap())
        .sum();
    assert!(active >= 1, "{status}");
    assert!(
        d.log().contains("adopted the running datapath"),
        "{}",
        d.log()
    );
    let restarted = Scrape::take(&net.lb, METRICS);
    assert!(
        flows(&restarted) >= flows(&after) + 25.0,
        "counters survive the restart"
    );

    // A client verb finds the socket without --socket: from XNLB_SOCKET, else from the
    // config's admin.socket; a miss says where the path it tried came from.
    let bin = xnlb_tests::daemon::xnlb_bin();
    let status_via = |env: Option<&std::path::Path>, config: &std::path::Path| {
        let mut c = std::process::Command::new(&bin);
        c.args(["status", "--config"])
            .arg(config)
            .env_remove("XNLB_SOCKET");
        if let Some(socket) = env {
            c.env("XNLB_SOCKET", socket);
        }
        c.output().unwrap()
    };
    let absent = d.files.dir.join("absent.yaml");
    let by_env = status_via(Some(&d.files.socket), &absent);
    assert!(by_env.status.success(), "{by_env:?}");
    let by_config = status_via(None, &d.files.config);
    assert!(by_config.status.success(), "{by_config:?}");
    let missed = status_via(Some(&d.files.dir.join("other.sock")), &d.files.config);
    let said = String::from_utf8_lossy(&missed.stderr);
    assert!(
        !missed.status.success() && said.contains("not running") && said.contains("$XNLB_SOCKET"),
        "{said}"
    );

    // What an administrator sees (printed for the record; `--nocapture` shows it).
    println!("$ xnlb status\n{}", d.ok(&["status"]));
    let excerpt: Vec<&str> = restarted
        .text
        .lines()
        .filter(|l| {
            [
                "xnlb_packets_total",
                "xnlb_flows_total",
                "xnlb_backend_up",
                "xnlb_conntrack_entries",
                "xnlb_drops_total{reason=\"no_service\"}",
                "xnlb_xdp_actions_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .collect();
    println!(
        "$ curl http://{METRICS}/metrics (excerpt)\n{}",
        excerpt.join("\n")
    );

    // Stop: detached, unpinned, the VIP removed, the CLI says the daemon is gone.
    assert!(d.ok(&["stop"]).contains("stopped"));
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    assert!(!d.files.pin_dir.exists(), "pins removed on stop");
    let addrs = cli0_addresses(&net);
    assert!(
        !addrs.contains(&VIP.to_string()),
        "VIP still on cli0: {addrs}"
    );
    let out = d.cli(&["status"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn sigterm_keeps_the_datapath_and_a_second_daemon_or_a_missing_interface_is_refused() {
    let net = Net::build(Mode::TwoArm, 1);
    let mut d = Daemon::start(&net.lb, &config(1));
    assert!(d.files.pin_dir.join("link-cli0").exists());

    // A second daemon on the same socket refuses before touching the datapath.
    let never_used = std::path::Path::new("/sys/fs/bpf/xnlb-never-used");
    let err = refused_run(&net.lb, &d.files.config, Some(never_used));
    assert!(err.contains("already running"), "{err}");
    assert!(!never_used.exists());
    assert!(
        d.ok(&["status"]).contains("web"),
        "the first daemon is untouched"
    );

    // `run` checks the system: an interface that does not exist is refused with its location.
    let bad = d.files.dir.join("bad.yaml");
    std::fs::write(&bad, config(1).replace("server: srv0", "server: nope0")).unwrap();
    let err = refused_run(&net.lb, &bad, None);
    assert!(
        err.contains(":4:3: interfaces.server: interface `nope0` does not exist"),
        "{err}"
    );

    // The admin socket takes a request line of bounded size, in UTF-8, and answers what is
    // wrong with one that is not; the daemon does not grow holding what it is sent.
    let rss_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid().unwrap())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .to_string();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = rss_kib();
    let ask_raw = |bytes: &[u8]| {
        use std::io::{BufRead, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&d.files.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The daemon answers and closes once it has seen enough: the rest may not be taken.
        let _ = stream.write_all(bytes);
        let mut answer = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut answer)
            .unwrap();
        answer
    };
    let huge = ask_raw(&vec![b'x'; 200 * 1024 * 1024]);
    assert!(
        huge.contains("longer than 65536 bytes without a newline"),
        "{huge}"
    );
    let garbled = ask_raw(b"{\"verb\":\"\xff\xfe\"}\n");
    assert!(garbled.contains("not UTF-8"), "{garbled}");
    let grew = rss_kib().saturating_sub(before);
    // The 200 MB were never held: a few MB of slack for the allocator and the status read.
    assert!(grew < 16 * 1024, "the daemon grew by {grew} KiB");
    assert!(d.ok(&["status"]).contains("web"));

    // The pin directory is locked for the daemon's life: with the first daemon's socket gone
    // (deleted by hand), a second one on the same pins is refused before it touches them.
    std::fs::remove_file(&d.files.socket).unwrap();
    let err = refused_run(&net.lb, &d.files.config, Some(&d.files.pin_dir));
    assert!(
        err.contains("another daemon holds the pin directory"),
        "{err}"
    );
    assert!(
        !d.files.socket.exists(),
        "the refused daemon removed its socket"
    );
    assert!(d.files.pin_dir.join("link-cli0").exists());
    assert!(
        !err.contains("adopted"),
        "refused before it adopted anything: {err}"
    );

    // SIGTERM and SIGINT (`systemctl stop`, `restart`, Ctrl-C) end the daemon as a crash
    // would: the datapath stays attached and pinned, the VIP stays, the socket goes; the next
    // daemon adopts it. (Traffic across such a restart: `fail_static` end to end.)
    let signals = [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ];
    for (restarts, sig) in (1..).zip(signals) {
        signal(&d, sig);
        assert!(
            d.wait_exit(Duration::from_secs(10)).success(),
            "{}",
            d.log()
        );
        assert!(
            d.log()
                .contains(&format!("{sig}: exiting; the datapath keeps forwarding")),
            "{}",
            d.log()
        );
        assert!(
            d.files.pin_dir.join("link-cli0").exists(),
            "{sig}: the link stays pinned"
        );
        assert!(!d.files.socket.exists(), "{sig}: socket removed");
        assert!(
            cli0_addresses(&net).contains(&VIP.to_string()),
            "{sig}: the VIP stays"
        );
        d.spawn(&net.lb);
        assert_eq!(
            d.log().matches("adopted the running datapath").count(),
            restarts,
            "{}",
            d.log()
        );
    }
    // Only `xnlb stop` takes the balancer out: detached, VIP and pins removed.
    assert!(d.ok(&["stop"]).contains("detached and unpinned"));
    d.wait_exit(Duration::from_secs(10));
    assert!(!d.files.pin_dir.exists(), "pins removed by `xnlb stop`");
    assert!(!cli0_addresses(&net).contains(&VIP.to_string()));
}

/// NLB's host-wide drainstop: `--backend NAME` acts on the backend in every service that has
/// it, with one line per service; a verb that changes nothing says so; `status SERVICE` shows
/// one service; names that do not exist are refused with the ones that do.
#[test]
fn host_wide_verbs_and_one_services_status() {
    let net = Net::build(Mode::TwoArm, 2);
    let _servers = line_servers_on(&net.backends, &[80, 81]);
    let backends = format!(
        "      - {{ name: b1, address: {} }}\n      - {{ name: b2, address: {} }}\n",
        backend_ip(1),
        backend_ip(2)
    );
    let config = format!(
        "{TWO_ARM_CONFIG_HEAD}  - name: web
    vip: {VIP}
    ports: [80]
    affinity: none
    backends:
{backends}  - name: alt
    vip: {VIP}
    ports: [81]
    affinity: none
    backends:
{backends}"
    );
    let d = Daemon::start(&net.lb, &config);

    let said = d.ok(&["drain", "--backend", "b2"]);
    assert_eq!(said, "web/b2: up -> draining\nalt/b2: up -> draining\n");
    for port in [80, 81] {
        let seen = spread(&net.client, VIP, port, 12);
        assert!(
            !names(&seen).contains("b2"),
            "drained b2 took new flows on {port}: {seen:?}"
        );
    }
    let said = d.ok(&["enable", "--backend", "b2"]);
    assert_eq!(said, "web/b2: draining -> up\nalt/b2: draining -> up\n");
    assert_eq!(d.ok(&["enable", "alt", "b2"]), "alt/b2: up (no change)\n");
    let out = d.cli(&["disable", "--backend", "b9"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no service has a backend `b9`; backends: b1, b2"),
        "{err}"
    );

    let one = d.ok(&["status", "alt", "--json"]);
    let one: serde_json::Value = serde_json::from_str(&one).unwrap();
    let services = one["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{one}");
    assert_eq!(services[0]["name"], "alt");
    let text = d.ok(&["status", "web"]);
    let service_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&VIP.to_string()))
        .collect();
    assert!(
        service_lines.len() == 1 && service_lines[0].starts_with("web "),
        "{text}"
    );
    let out = d.cli(&["status", "mail"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown service `mail`; services: web, alt"),
        "{err}"
    );
}

/// What `status` tells about the present: an open connection is active and tracked, closed
/// ones only tracked (until their timeout); rates over the last seconds follow the traffic; a
/// drain is the backend's last change, with its time, the state before and the reason; the
/// daemon's uptime; `--watch` redraws in place.
#[test]
fn status_tells_activity_rates_and_last_changes() {
    let net = Net::build(Mode::TwoArm, 2);
    let _servers = line_servers(&net.backends, PORT);
    // Closed connections stay tracked for the whole test.
    let config = format!("{}conntrack:\n  tcp_closed_timeout: 10m\n", config(2));
    let started = std::time::SystemTime::now();
    let d = Daemon::start(&net.lb, &config);
    let mut long = LineClient::connect(&net.client, VIP, PORT).expect("connect");
    long.ask().expect("the long connection answers");
    assert_eq!(spread(&net.client, VIP, PORT, 20).len(), 20);
    let sum = |status: &serde_json::Value, field: &str| -> u64 {
        let backends = backends_of(status, "web");
        backends.iter().map(|b| b[field].as_u64().unwrap()).sum()
    };
    // The closed connections' FINs cross the veth pair in microseconds; 5 s of polling covers
    // a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = d.status_json();
        if sum(&status, "active_connections") == 1 || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sum(&status, "active_connections"), 1, "{status}");
    assert_eq!(sum(&status, "active_flows"), 21, "tracked: {status}");
    assert_eq!(status["conntrack"]["active"], 1, "{status}");
    assert_eq!(status["services"][0]["active_connections"], 1, "{status}");

    // Rates: traffic on the long connection for 2 s, then read at once.
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        long.ask().expect("the long connection answers");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = d.status_json();
    let over = status["rates_over_secs"].as_f64().unwrap();
    // Samples are a second apart and kept for 5 s; one may be late on a loaded machine.
    assert!((0.5..=7.0).contains(&over), "rates over {over}s: {status}");
    // Each ask is four packets at least (the line and its ACK, the answer and its ACK, two each
    // way) every 20 ms plus a round trip: well above 10 packets/s each way even on a slow
    // machine. The service counts the clients' side, a backend both directions.
    let service_rate = status["services"][0]["rates"]["packets"].as_f64().unwrap();
    assert!(service_rate > 10.0, "{status}");
    let backend_rate = backends_of(&status, "web")
        .iter()
        .map(|b| b["rates"]["packets"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(backend_rate > 20.0, "{status}");
    let uptime = status["uptime_secs"].as_u64().unwrap();
    assert!(
        uptime <= started.elapsed().unwrap().as_secs() + 1,
        "{status}"
    );

    // A drain is b2's last change; b1 has none.
    let before = std::time::SystemTime::now();
    d.ok(&["drain", "web", "b2"]);
    let status = d.status_json();
    let backends = backends_of(&status, "web");
    let change = |name: &str| {
        let b = backends.iter().find(|b| b["name"] == name).unwrap();
        b["last_change"].clone()
    };
    assert!(change("b1").is_null(), "{status}");
    let drained = change("b2");
    assert_eq!(drained["from"], "up", "{status}");
    assert_eq!(drained["reason"], "administrator: drain", "{status}");
    let at = drained["at"].as_f64().unwrap();
    let epoch = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap();
    let now = epoch(std::time::SystemTime::now()).as_secs_f64();
    assert!(
        (epoch(before).as_secs_f64()..=now).contains(&at),
        "{at}: {status}"
    );
    let table = d.ok(&["status"]);
    println!("$ xnlb status\n{table}");
    for column in ["ACTIVE", "TRACKED", "PKTS/S", "LAST CHANGE"] {
        assert!(table.contains(column), "{column}: {table}");
    }
    assert!(table.contains("was up: administrator: drain"), "{table}");

    // --watch: frames 0.2 s apart for 2.5 s. A frame is one request: even at half a second
    // each on a loaded machine that is five; three are asked for. The interrupt may cut the
    // last one, so the ones before it are checked.
    let mut watch = std::process::Command::new(xnlb_tests::daemon::xnlb_bin());
    watch
        .args(["status", "--watch", "0.2", "--socket"])
        .arg(&d.files.socket)
        .stdout(std::process::Stdio::piped());
    let mut child = watch.spawn().expect("xnlb status --watch");
    std::thread::sleep(Duration::from_millis(2500));
    // SIGKILL, not Ctrl-C's SIGINT: a test run started in the background by a shell inherits
    // SIGINT ignored, and so would the watcher (seen in a clean-clone run: it never ended).
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    let frames: Vec<&str> = shown.split("\x1b[H\x1b[2J").skip(1).collect();
    assert!(frames.len() >= 3, "{} frames: {shown}", frames.len());
    let whole = &frames[..frames.len() - 1];
    assert!(
        whole
            .iter()
            .all(|f| f.contains("every 0.2s") && f.contains("b2")),
        "{shown}"
    );
    let refused = d.cli(&["status", "--watch", "0"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("outside 0.1 to 3600"),
        "{err}"
    );
}

/// `check` knows what a running daemon can reload into: its rings were sized when it started
/// (twice the services, at least 16), and a config with more services than that is refused by
/// `check` as by `reload`; one that fits says so. A restart with the larger config grows the
/// rings and keeps the connections.
#[test]
fn check_refuses_what_the_running_daemon_cannot_reload() {
    let net = Net::build(Mode::TwoArm, 1);
    let services = |n: usize| -> String {
        let list: String = (0..n)
            .map(|i| {
                format!(
                    "  - name: s{i}\n    vip: {VIP}\n    ports: [{}]\n    backends:\n      - {{ name: b1, address: {} }}\n",
                    1000 + i,
                    backend_ip(1)
                )
            })
            .collect();
        format!("{TWO_ARM_CONFIG_HEAD}{list}")
    };
    // s0's port, and s16's: the service only the grown rings can hold.
    let _servers = line_servers_on(&net.backends, &[1000, 1016]);
    let mut d = Daemon::start(&net.lb, &services(1));
    // `cli` adds this daemon's --socket.
    let check = |d: &Daemon, n: usize| {
        let file = d.files.dir.join(format!("services-{n}.yaml"));
        std::fs::write(&file, services(n)).unwrap();
        d.cli(&["check", "--config", file.to_str().unwrap()])
    };
    let fits = check(&d, 16);
    let said = String::from_utf8_lossy(&fits.stdout);
    assert!(fits.status.success(), "{fits:?}");
    assert!(
        said.contains("has room for 16 services: a reload can apply it"),
        "{said}"
    );
    let refused = check(&d, 17);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("has room for 16 services and this config has 17")
            && err.contains("`xnlb reload` would refuse it"),
        "{err}"
    );
    // And so it does.
    d.write_config(&services(17));
    let out = d.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("room for 16 services") && err.contains("restart"),
        "{err}"
    );
    // The way out it names: a restart with that config grows the rings (34: twice the
    // services) and adopts, with an open connection on the first service carried across.
    let mut open = LineClient::connect(&net.client, VIP, 1000).expect("connect to s0");
    open.ask().expect("s0 answers");
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        d.log()
    );
    d.spawn(&net.lb);
    assert!(
        d.log()
            .contains("RING grown from room for 16 services to 34"),
        "{}",
        d.log()
    );
    open.ask()
        .expect("the connection carried across the restart");
    let grown = check(&d, 17);
    let said = String::from_utf8_lossy(&grown.stdout);
    assert!(said.contains("has room for 34 services"), "{said}");
    for port in [1000, 1016] {
        let mut c = LineClient::connect(&net.client, VIP, port).expect("connect");
        assert_eq!(c.ask().expect("answer").0, "b1", "port {port}");
    }
}
