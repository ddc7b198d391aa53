//! Finding 1 of the connection-table review, end to end (two-arm, where the backends' own
//! traffic routes through the balancer): a client reaches the backends through the VIP from
//! ports P, the flows time out, then the client connects to each backend's own address from
//! the same ports. The backend's answers carry the tuples the old flows' reply entries were
//! keyed by; they are not the balancer's and must reach the client untouched. Before reply
//! entries were checked against a live flow, 9 of 20 such connections failed (the SYN-ACK came
//! back from the VIP).
//!
//! Run twice: with `web` alone, its flows derive their replies and hold no reply entry at all;
//! with `alt` on the same backend ports, they claim reply entries, which go stale.

use xnlb_tests::{addresses::CLIENT_IP, apps::http_get_from_port};

use super::*;

const CONNECTIONS: u16 = 40;
const FIRST_PORT: u16 = 45_000;

pub fn direct_connections_from_reused_ports() {
    for shared in [false, true] {
        direct_connections(shared);
    }
}

/// `shared`: `alt` (VIP:8080) shares web's backend ports.
fn direct_connections(shared: bool) {
    let farm = Farm::new(Mode::TwoArm, 3);
    let backends = farm.backends(&[1, 2, 3], |_| "".into());
    let mut services = vec![farm.service("web", HTTP, "    affinity: none\n", &backends)];
    if shared {
        services.push(farm.service("alt", 8080, "", &backends));
    }
    // Short timeouts, so the test can wait them out.
    let config = format!(
        "{}conntrack:\n  tcp_timeout: 2s\n  tcp_closing_timeout: 1s\n",
        farm.config(&services)
    );
    let _d = Daemon::start(&farm.net.lb, &config);
    let client = &farm.net.client;
    let mut served_by = Vec::new();
    for port in FIRST_PORT..FIRST_PORT + CONNECTIONS {
        let (status, body) =
            http_get_from_port(client, (CLIENT_IP, port).into(), farm.vip(HTTP), "/")
                .unwrap_or_else(|e| panic!("GET through the VIP from port {port}: {e}"));
        assert_eq!(status, 200, "{body}");
        let name = body.split_whitespace().next().expect("backend name");
        let n: usize = name[1..].parse().expect("bN");
        served_by.push(farm.net.backend_ip(n));
    }
    let stale_before = farm
        .scrape()
        .sum("xnlb_flow_events_total", &[("event", "stale_reply")]);
    // Past both timeouts (2 s), with 1 s for the datapath's coarse clock and a slow machine.
    thread::sleep(Duration::from_secs(3));

    let mut failed = Vec::new();
    for (i, port) in (FIRST_PORT..FIRST_PORT + CONNECTIONS).enumerate() {
        let backend = served_by[i];
        match http_get_from_port(
            client,
            (CLIENT_IP, port).into(),
            (backend, HTTP).into(),
            "/",
        ) {
            Ok((200, body)) if body.trim().ends_with(&CLIENT_IP.to_string()) => {}
            Ok((status, body)) => failed.push(format!("{port} → {backend}: {status} {body}")),
            Err(e) => failed.push(format!("{port} → {backend}: {e}")),
        }
    }
    let stale = farm
        .scrape()
        .sum("xnlb_flow_events_total", &[("event", "stale_reply")])
        - stale_before;
    println!(
        "two-arm, backend ports shared: {shared}: {} of {CONNECTIONS} direct connections from \
         reused client ports failed; stale reply entries met: {stale}",
        failed.len()
    );
    assert!(failed.is_empty(), "direct connections failed: {failed:?}");
    let (entries, why) = if shared {
        (
            CONNECTIONS,
            "each old flow's reply entry was met once, found stale and removed",
        )
    } else {
        (0, "the flows derived their replies: no entry to meet")
    };
    assert_eq!(stale, entries as f64, "{why}");
}
