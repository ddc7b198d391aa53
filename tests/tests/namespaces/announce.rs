//! `announce:` in the running daemon, without a routing daemon (BGP end to end with BIRD is
//! `scale_out`): the VIP is on the announce interface while enough backends pass their health
//! checks, withdrawn below `min_backends`, held down before it comes back; a SIGTERM restart
//! keeps it there throughout; `xnlb stop` deletes the interface.

use std::{
    thread,
    time::{Duration, Instant},
};

use xnlb_tests::{
    daemon::{Daemon, Scrape},
    http_backend::{Answer, web_servers},
    netns::NetNs,
    topology::{Mode, Net, TWO_ARM_CONFIG_HEAD, VIP, backend_ip},
};

const METRICS: &str = "127.0.0.1:9779";
const HEALTH: &str = "/owa/healthcheck.htm";
const IFACE: &str = "xnlb-vips";
const HOLD_DOWN: Duration = Duration::from_secs(2);

fn config() -> String {
    format!(
        "{TWO_ARM_CONFIG_HEAD}  - name: web
    vip: {VIP}
    ports: [80]
    backends:
      - {{ name: b1, address: {b1} }}
      - {{ name: b2, address: {b2} }}
    health:
      http: {{ path: {HEALTH}, port: 8080 }}
      interval: 300ms
      timeout: 200ms
      rise: 2
      fall: 2
announce:
  interface: {IFACE}
  min_backends: 2
  hold_down: {hold}s
metrics:
  listen: {METRICS}
",
        b1 = backend_ip(1),
        b2 = backend_ip(2),
        hold = HOLD_DOWN.as_secs(),
    )
}

/// Whether the VIP is an address of the announce interface; `None` when there is no such
/// interface.
fn on_interface(ns: &NetNs) -> Option<bool> {
    let out = ns
        .command("ip")
        .args(["-j", "addr", "show", "dev", IFACE])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).contains(&format!("\"{VIP}\"")))
}

/// Polls until the VIP's presence on the interface is `want`; returns when it was seen.
/// `limit` bounds the wait (each caller says why its bound holds).
fn wait_announced(ns: &NetNs, want: bool, limit: Duration, d: &Daemon) -> Instant {
    let start = Instant::now();
    loop {
        if on_interface(ns) == Some(want) {
            return Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "VIP {} within {limit:?}:\n{}",
            if want {
                "not announced"
            } else {
                "still announced"
            },
            d.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn vip_status(d: &Daemon) -> serde_json::Value {
    let status = d.status_json();
    assert_eq!(status["announce"]["interface"], IFACE, "{status}");
    status["announce"]["vips"][0].clone()
}

#[test]
fn the_announce_interface_follows_health_with_a_hold_down_and_survives_a_restart() {
    let net = Net::build(Mode::TwoArm, 2);
    let web = web_servers(&net.backends, 8080, "b");
    let mut d = Daemon::start(&net.lb, &config());
    let both = [("web", "b1"), ("web", "b2")];

    // Up: announced as soon as both backends are in rotation (the first time: no hold-down).
    // Bounds here and below: health at 300 ms intervals takes about a second; the rest is
    // slack for a loaded machine.
    d.wait_state(&both, "up", Duration::from_secs(15));
    wait_announced(&net.lb, true, Duration::from_secs(5), &d);
    let vip = vip_status(&d);
    assert_eq!(vip["vip"], VIP.to_string());
    assert_eq!(vip["announced"], true);
    assert_eq!(vip["why"], "2 backends of web in rotation (needs 2)");
    let scrape = Scrape::take(&net.lb, METRICS);
    assert_eq!(
        scrape.sum("xnlb_vip_announced", &[("vip", &VIP.to_string())]),
        1.0,
        "{}",
        scrape.text
    );
    assert!(d.ok(&["status"]).contains(&format!(
        "{VIP} announced on {IFACE}: 2 backends of web in rotation"
    )));

    // One backend fails: below min_backends, withdrawn with the backend's transition.
    web[1].set(HEALTH, Answer::Status(503));
    d.wait_state(&[("web", "b2")], "down", Duration::from_secs(15));
    wait_announced(&net.lb, false, Duration::from_secs(3), &d);
    assert_eq!(
        vip_status(&d)["why"],
        "1 backend of web in rotation, needs 2"
    );
    assert_eq!(
        Scrape::take(&net.lb, METRICS).sum("xnlb_vip_announced", &[("vip", &VIP.to_string())]),
        0.0
    );

    // Back: held down for HOLD_DOWN before the VIP is announced again.
    web[1].set(HEALTH, Answer::Status(200));
    d.wait_state(&[("web", "b2")], "up", Duration::from_secs(15));
    let up_seen = Instant::now();
    let held = vip_status(&d);
    assert_eq!(held["announced"], false, "{held}");
    assert!(
        held["why"].as_str().unwrap().contains("held down"),
        "{held}"
    );
    let announced = wait_announced(&net.lb, true, HOLD_DOWN + Duration::from_secs(5), &d);
    // The backend came up before `wait_state` saw it (by one 25 ms poll and a status call):
    // half a second of slack for that on a slow machine.
    let waited = announced - up_seen;
    assert!(
        waited >= HOLD_DOWN - Duration::from_millis(500),
        "announced {waited:?} after the backend came back: the hold-down is {HOLD_DOWN:?}"
    );
    assert!(d.log().contains(&format!("announce: {VIP} on {IFACE}")));

    // SIGTERM and a new daemon: the VIP stays on the interface throughout.
    let pid = nix::unistd::Pid::from_raw(d.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(
        on_interface(&net.lb),
        Some(true),
        "kept while no daemon runs"
    );
    d.launch(&net.lb);
    let restart = Instant::now();
    // Watched while the new daemon starts, adopts and probes (it starts from the adopted
    // states: up).
    while restart.elapsed() < Duration::from_secs(3) {
        assert_eq!(on_interface(&net.lb), Some(true), "{}", d.log());
        thread::sleep(Duration::from_millis(20));
    }
    d.wait_answering();
    assert_eq!(vip_status(&d)["announced"], true);
    assert!(d.log().contains("stay while servable"), "{}", d.log());

    // `xnlb stop`: withdrawn and the interface deleted.
    assert!(d.ok(&["stop"]).contains("detached and unpinned"));
    d.wait_exit(Duration::from_secs(10));
    assert_eq!(on_interface(&net.lb), None, "the interface is deleted");
}
