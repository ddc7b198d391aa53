//! One-arm SNAT capacity: 256 source ports towards one backend, short connections one after
//! another for 45 s. A port comes free `tcp_closed_timeout` (2 s) after its connection closed
//! both ways, so the ports carry about 128 new connections a second, not 256 every 30 s as when
//! a closed connection kept its port for `tcp_closing_timeout` (578 connections in the first
//! second, then 2-35 a second). The client asks faster than that: when every port is taken the
//! balancer refuses the connection with a RST, and the client tries again a moment later, as
//! browsers and Outlook do.

use super::*;
use xnlb_tests::apps::connect_from;

const PORTS: (u16, u16) = (30_000, 30_255);
const RUN: Duration = Duration::from_secs(45);
/// A refused request is tried again after this pause, up to `TRIES` times: ports come free
/// 2 s after their connections close (plus a clock tick), well inside the 5 s this allows.
const PAUSE: Duration = Duration::from_millis(100);
const TRIES: usize = 50;

/// The one-arm farm with one backend, and the daemon balancing `web` to it from `PORTS`.
fn one_backend_with_256_ports() -> (Farm, Daemon) {
    let farm = Farm::new(Mode::OneArm, 1);
    let backends = farm.backends(&[1], |_| "".into());
    let config = farm
        .config(&[farm.service("web", HTTP, "", &backends)])
        .replace(
            "snat:\n",
            &format!("snat:\n  ports: \"{}-{}\"\n", PORTS.0, PORTS.1),
        );
    let daemon = Daemon::start(&farm.net.lb, &config);
    (farm, daemon)
}

pub fn short_connections_reuse_closed_ports() {
    let (farm, _d) = one_backend_with_256_ports();
    let clients = farm.net.client_addresses(8);
    let before = farm.scrape();
    let start = Instant::now();
    let (mut ok, mut failed, mut refused) = (0usize, Vec::new(), 0usize);
    let mut per_second = Vec::new();
    let mut second = (0, Instant::now());

    // Bounded by time (45 s) and by count (one request at a time, at most 100,000, each tried
    // at most `TRIES` times).
    while start.elapsed() < RUN && ok + failed.len() < 100_000 {
        let client = clients[(ok + failed.len()) % clients.len()];
        let mut outcome = farm.try_get(client, HTTP);
        for _ in 1..TRIES {
            match &outcome {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    refused += 1;
                    thread::sleep(PAUSE);
                    outcome = farm.try_get(client, HTTP);
                }
                _ => break,
            }
        }
        match outcome {
            Ok(_) => ok += 1,
            Err(e) => failed.push(e.to_string()),
        }
        if second.1.elapsed() >= Duration::from_secs(1) {
            per_second.push(ok - second.0);
            second = (ok, Instant::now());
        }
    }
    let after = farm.scrape();
    let delta = |event: &str| after.since(&before, "xnlb_flow_events_total", &[("event", event)]);
    let exhausted = after.sum("xnlb_drops_total", &[("reason", "snat_exhausted")]);
    let established = after.sum("xnlb_conntrack_entries", &[]);
    let (low, high) = (
        per_second.iter().min().copied().unwrap_or(0),
        per_second.iter().max().copied().unwrap_or(0),
    );
    println!(
        "one-arm, {} SNAT ports, one backend: {ok} connections in {:.0?} ({:.0}/s; per second \
         {low}..{high}), {} failed, {refused} refusals retried; SNAT port retries {}, \
         exhausted {exhausted}; flows held at the end {established}",
        PORTS.1 - PORTS.0 + 1,
        start.elapsed(),
        ok as f64 / start.elapsed().as_secs_f64(),
        failed.len(),
        delta("snat_port_retry"),
    );
    assert!(
        failed.len() * 100 <= ok,
        "more than 1% of connections failed: {:?}",
        &failed[..failed.len().min(10)]
    );
    // Held for 30 s after close, each port could serve at most two connections in 45 s (at 0 s
    // and after 30 s): 512 in all. Three per port is the bar, so it cannot pass with ports held
    // that long; here about nine per port are seen, and a machine three times slower still
    // clears it.
    let ports = (PORTS.1 - PORTS.0 + 1) as usize;
    assert!(
        ok >= 3 * ports,
        "{ok} connections over {ports} ports in {RUN:?}: closed connections still hold their ports"
    );
}

/// Exhaustion is answered: with the ports held by open connections, the next SYN the balancer
/// cannot give a port is refused at once by a RST from the VIP (the client reads "connection
/// refused"), instead of being dropped and left to the client's SYN timeouts.
pub fn exhaustion_is_refused_with_a_reset() {
    let (farm, _d) = one_backend_with_256_ports();
    let clients = farm.net.client_addresses(8);
    let before = farm.scrape();
    // Connections stay open (their ports held) until the test ends; at most 400 attempts, more
    // than the 256 ports.
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        match connect_from(&farm.net.client, clients[i % clients.len()], farm.vip(HTTP)) {
            Ok(stream) => held.push(stream),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let after = farm.scrape();
    let e = refused.expect("the 256 ports ran out within 400 open connections");
    let resets = after.since(
        &before,
        "xnlb_flow_events_total",
        &[("event", "snat_exhausted_reset")],
    );
    let retries = after.since(
        &before,
        "xnlb_flow_events_total",
        &[("event", "snat_port_retry")],
    );
    println!(
        "one-arm: {} connections held their ports, then: {e} ({resets} resets sent, {retries} \
         taken ports tried)",
        held.len()
    );
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // A SYN is refused when 8 hashed ports are all taken: at a quarter of the ports in use that
    // happens to about 1 SYN in 65,000, so a refusal before 64 open connections means a fault.
    // (113 to 170 were seen; 128 was the first bound and failed a clean run at 120.)
    assert!(held.len() >= 64, "only {} ports were given out", held.len());
    assert!(
        after.since(
            &before,
            "xnlb_flow_events_total",
            &[("event", "snat_exhausted_reset")]
        ) >= 1.0
    );
    assert!(after.since(&before, "xnlb_drops_total", &[("reason", "snat_exhausted")]) >= 1.0);
}
