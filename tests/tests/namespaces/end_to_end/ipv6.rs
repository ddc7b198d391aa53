//! IPv6 end to end, in both modes: the real daemon with an IPv6 service beside an IPv4 one on
//! one config (a dual-stack pair over the same three backends), real HTTP over both versions:
//! balancing over every backend with the address the mode shows it (the client's in two-arm,
//! the IPv6 SNAT address in one-arm, where next hops are held: the host does not forward), the
//! IPv6 health probes taking a failing backend out of rotation and back, fragmented UDP both
//! ways, and a restart that adopts the datapath (fail-static) with IPv6 connections answered
//! throughout.

use std::net::{IpAddr, SocketAddr};

use xnlb_tests::{
    addresses::{CLIENT_IP, CLIENT_IP6, SNAT_IP, SNAT_IP6},
    apps::udp_ask_sized,
};

use super::*;

const REQUESTS: usize = 60;
const FAST_HEALTH: &str = "    health:\n      http: { path: /owa/healthcheck.htm, port: 80 }\n      interval: 300ms\n      timeout: 200ms\n      rise: 2\n      fall: 2\n";
/// fall × interval + timeout + 1 s of slack for a loaded machine: how soon the failed backend
/// must be out of rotation.
const DETECTION_BOUND: Duration = Duration::from_millis(2 * 300 + 200 + 1000);

/// One GET from the client's IPv6 address to the IPv6 VIP's port 80: the backend that
/// answered, checking the address it saw.
fn get6(net: &Net) -> std::io::Result<String> {
    let (status, body) = http_get_from(
        &net.client,
        CLIENT_IP6,
        SocketAddr::from((net.vip6(), HTTP)),
        "/",
    )?;
    assert_eq!(status, 200, "{body}");
    let (backend, seen) = body.trim().split_once(' ').expect("<backend> <client>");
    assert_eq!(
        seen.parse::<IpAddr>().ok(),
        Some(net.seen_by_backend6(CLIENT_IP6).into()),
        "the address {backend} saw"
    );
    Ok(backend.to_string())
}

pub fn dual_stack(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let net = &farm.net;
    let mode_name = farm.mode();
    net.add_ipv6();
    let vip6 = net.vip6();
    let web6: Vec<HttpBackend> = (1..=3)
        .map(|n| {
            let addr = SocketAddr::from((net.backend_ip6(n), HTTP));
            HttpBackend::start(Some(&net.backends[n - 1]), addr, &format!("b{n}"), None)
        })
        .collect();
    let backends6: String = (1..=3)
        .map(|n| {
            format!(
                "      - {{ name: b{n}, address: \"{}\" }}\n",
                net.backend_ip6(n)
            )
        })
        .collect();
    let service6 = format!(
        "  - name: web6\n    vip: \"{vip6}\"\n    ports: [{HTTP}]\n    affinity: none\n    backends:\n{backends6}{FAST_HEALTH}"
    );
    let service4 = farm.service(
        "web",
        HTTP,
        "    affinity: none\n",
        &farm.backends(&[1, 2, 3], |_| "".into()),
    );
    let echo6 = format!(
        "  - name: echo6\n    vip: \"{vip6}\"\n    ports: [{ECHO}]\n    protocol: udp\n    affinity: none\n    backends:\n{}",
        backends6.replace("\" }\n", &format!("\", port: {ECHO} }}\n"))
    );
    // One-arm: an IPv6 SNAT address beside the IPv4 one.
    let config = farm.config(&[service4, service6, echo6]).replace(
        &format!("addresses: [{SNAT_IP}]"),
        &format!("addresses: [{SNAT_IP}, \"{SNAT_IP6}\"]"),
    );
    let mut d = Daemon::start(&net.lb, &config);
    // The IPv6 backends start down, until their probes (over IPv6) rise.
    let backends6 = [("web6", "b1"), ("web6", "b2"), ("web6", "b3")];
    let took = d.wait_state(&backends6, "up", LIMIT);
    println!("{mode_name} IPv6: the backends rose in {took:?}");
    // Both versions answer, from every backend.
    let mut seen6 = Vec::new();
    let mut seen4 = Vec::new();
    for _ in 0..REQUESTS {
        seen6.push(get6(net).expect("an IPv6 request"));
        seen4.push(farm.get(CLIENT_IP, HTTP));
    }
    let counts6 = tally(&seen6);
    println!(
        "{mode_name} IPv6: {REQUESTS} requests: {}",
        shares(&counts6)
    );
    assert_eq!(counts6.len(), 3, "{counts6:?}");
    assert_eq!(tally(&seen4).len(), 3);

    // b2's health page fails: out of rotation within the bound, over IPv6 probes.
    web6[1].set(HEALTH, Answer::Status(503));
    let failed = Instant::now();
    let mut last_b2 = failed;
    // A connection whose SYN reaches b2 as it leaves rotation is reset (`apps::RemovalRace`).
    let mut race = xnlb_tests::apps::RemovalRace::default();
    while failed.elapsed() < DETECTION_BOUND + Duration::from_secs(1) {
        match get6(net) {
            Ok(b) if b == "b2" => last_b2 = Instant::now(),
            Ok(_) => {}
            Err(e) if race.tolerate(mode_name, &e, false) => {}
            Err(e) => panic!("{mode_name}: a request while b2 fails: {e}"),
        }
    }
    let kept = last_b2.duration_since(failed);
    println!("{mode_name} IPv6: b2 got new connections for {kept:?} after its page failed");
    assert!(kept < DETECTION_BOUND, "b2 stayed in rotation for {kept:?}");
    web6[1].set(HEALTH, Answer::Status(200));

    // Fragmented UDP over IPv6: datagrams of 4000 and 9000 bytes, and answers as large, whole.
    let mut echoed = Vec::new();
    for size in [4000, 9000] {
        for _ in 0..10 {
            let (backend, seen, len) = udp_ask_sized(
                &net.client,
                CLIENT_IP6,
                SocketAddr::from((vip6, ECHO)),
                size,
            )
            .unwrap_or_else(|e| panic!("a {size}-byte IPv6 datagram: {e}"));
            assert_eq!(
                seen.parse::<IpAddr>().ok(),
                Some(net.seen_by_backend6(CLIENT_IP6).into())
            );
            assert_eq!(len, size, "the answer came back whole");
            echoed.push(backend);
        }
    }
    println!(
        "{mode_name} IPv6: 20 fragmented datagrams answered: {}",
        shares(&tally(&echoed))
    );

    // Fail-static: the daemon dies; IPv6 keeps being balanced; a new daemon adopts.
    d.kill9();
    for _ in 0..10 {
        get6(net).expect("a request while no daemon runs");
    }
    d.spawn(&net.lb);
    assert!(
        d.log().contains("adopted the running datapath"),
        "{}",
        d.log()
    );
    for _ in 0..10 {
        get6(net).expect("a request after the restart");
    }
}
