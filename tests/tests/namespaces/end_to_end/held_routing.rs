//! One-arm on a host that does not forward, as one-arm balancers are usually set up (and as the
//! one-arm test network is: IPv4 forwarding off on the balancer). The kernel's FIB answers
//! nothing there, so the daemon holds the backends' next hops and answers clients the way their
//! packets came. Every request is answered, `xnlb status` says how next hops are found, and an
//! open connection follows a backend whose MAC changes.
//! The time bound is `FOLLOW_LIMIT`.

use xnlb_tests::{
    addresses::CLIENT_IP,
    apps::{LineClient, line_servers},
};

use super::*;

const REQUESTS: usize = 50;

pub fn one_arm_without_forwarding() {
    let farm = Farm::new(Mode::OneArm, 1);
    let (lb, client, be) = (&farm.net.lb, &farm.net.client, &farm.net.backends[0]);
    let forwarding = lb
        .command("sysctl")
        .args(["-n", "net.ipv4.conf.lan0.forwarding"])
        .output()
        .expect("sysctl");
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "0");
    let b1 = farm.net.backend_ip(1);
    let _servers = line_servers(&farm.net.backends, LINES);
    let backends = format!("      - {{ name: b1, address: {b1} }}\n");
    let d = Daemon::start(
        lb,
        &farm.config(&[
            farm.service("web", HTTP, "", &backends),
            farm.service("lines", LINES, "", &backends),
        ]),
    );

    let clients = farm.net.client_addresses(REQUESTS - 1);
    let answered = clients
        .iter()
        .filter(|&&c| farm.try_get(c, HTTP).is_ok())
        .count();
    println!("one-arm, forwarding off: {answered} of {REQUESTS} requests answered");
    assert_eq!(answered, REQUESTS);
    assert_eq!(d.status_json()["routing"], "held");

    let vip = farm.net.vip();
    let mut open = LineClient::connect_from(client, CLIENT_IP, vip, LINES).expect("connect");
    open.ask().expect("first exchange");
    // The backend's MAC changes; the balancer's neighbour entry is replaced (as a gratuitous
    // ARP, or the kernel's own probing of the entry xnlb keeps managed, would).
    let changed = change_backend_mac(lb, be, b1, "lan0");
    open.ask()
        .expect("the open connection after the backend's MAC changed");
    let took = changed.elapsed();
    println!(
        "one-arm, forwarding off: first exchange after the backend's MAC changed took {took:?}"
    );
    assert!(
        took < FOLLOW_LIMIT,
        "the backend's new MAC was followed only after {took:?}"
    );
    let mut fresh = LineClient::connect_from(client, CLIENT_IP, vip, LINES).expect("new conn");
    fresh.ask().expect("a new connection after the change");
}
