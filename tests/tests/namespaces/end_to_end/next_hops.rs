//! Kept next hops follow routing, end to end (two-arm, where both directions route through the
//! balancer): the datapath keeps the FIB's answer per backend and per flow's client, and the
//! daemon's routing watch makes the kept answers stale on every change. A backend whose MAC
//! changes (its neighbour entry replaced, as a gratuitous ARP or an administrator would) and a
//! route to the clients moved to another gateway are followed by connections that already
//! exist, at once.
//!
//! The time bound is `FOLLOW_LIMIT`.

use aya::maps::{Array, Map, MapData};
use lb_common::maps as names;
use xnlb_tests::{
    addresses::{CLIENT_IP, REMOTE_CLIENTS},
    apps::{LineClient, line_servers},
};

use super::*;

const EXCHANGES: u64 = 20;

pub fn next_hops_follow_routing() {
    let farm = Farm::new(Mode::TwoArm, 1);
    let (lb, client, be) = (&farm.net.lb, &farm.net.client, &farm.net.backends[0]);
    let b1 = farm.net.backend_ip(1);
    let _servers = line_servers(&farm.net.backends, LINES);
    let backends = format!("      - {{ name: b1, address: {b1} }}\n");
    let d = Daemon::start(
        lb,
        &farm.config(&[farm.service("lines", LINES, "", &backends)]),
    );
    let remote = farm.net.remote_clients(1, 1)[0][0];
    let vip = farm.net.vip();
    let mut local = LineClient::connect_from(client, CLIENT_IP, vip, LINES).expect("connect");
    let mut far = LineClient::connect_from(client, remote, vip, LINES).expect("connect");
    local.ask().expect("local client's first exchange");
    far.ask().expect("remote client's first exchange");
    let epoch = || -> u32 {
        let data = MapData::from_pin(d.files.pin_dir.join(names::NEXT_HOP_EPOCH)).expect("pin");
        let map: Array<MapData, u32> = Array::try_from(Map::Array(data)).expect("array");
        map.get(&0, 0).expect("epoch")
    };

    // 1. The backend's MAC changes; the balancer's neighbour entry is replaced.
    let before = epoch();
    let changed = change_backend_mac(lb, be, b1, "srv0");
    local
        .ask()
        .expect("the existing connection after the backend's MAC changed");
    let took = changed.elapsed();
    println!("two-arm: first exchange after the backend's MAC changed took {took:?}");
    assert!(
        took < FOLLOW_LIMIT,
        "the backend's new MAC was followed only after {took:?}"
    );
    assert!(epoch() > before, "the routing watch moved the epoch");
    let mut fresh = LineClient::connect_from(client, CLIENT_IP, vip, LINES).expect("new conn");
    fresh.ask().expect("a new connection after the change");

    // 2. The clients' network moves behind another gateway on the client side: a macvlan of the
    // client namespace's interface with its own MAC (no address: the balancer is given its
    // neighbour entry). Replies that arrive there prove the route was followed.
    client.ip(&[
        "link", "add", "gw2", "link", "eth0", "type", "macvlan", "mode", "bridge",
    ]);
    client.ip(&["link", "set", "gw2", "up"]);
    for dev in ["all", "default", "eth0", "gw2"] {
        client.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0");
    }
    let gw2_mac = client.mac("gw2").map(|b| format!("{b:02x}")).join(":");
    let gw2 = "198.18.0.12";
    lb.ip(&[
        "neigh",
        "replace",
        gw2,
        "lladdr",
        &gw2_mac,
        "dev",
        "cli0",
        "nud",
        "permanent",
    ]);
    let received = || -> u64 {
        let out = client
            .command("ip")
            .args(["-s", "-j", "link", "show", "gw2"])
            .output()
            .expect("ip link show gw2");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        json[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .expect("rx packets")
    };
    let start = received();
    for i in 0..EXCHANGES {
        far.ask()
            .unwrap_or_else(|e| panic!("exchange {i} before the route change: {e}"));
    }
    let before_change = received() - start;
    assert!(
        before_change < EXCHANGES / 2,
        "before the change the replies do not come through gw2 ({before_change} frames did)"
    );

    let changed = Instant::now();
    lb.ip(&[
        "route",
        "replace",
        REMOTE_CLIENTS,
        "via",
        gw2,
        "dev",
        "cli0",
    ]);
    let start = received();
    far.ask()
        .expect("the existing connection after the route changed");
    let took = changed.elapsed();
    for i in 1..EXCHANGES {
        far.ask()
            .unwrap_or_else(|e| panic!("exchange {i} after the route change: {e}"));
    }
    let after_change = received() - start;
    println!(
        "two-arm: route to the clients moved; first exchange took {took:?}, {after_change} \
         frames reached the new gateway for {EXCHANGES} exchanges (before: {before_change})"
    );
    assert!(
        took < FOLLOW_LIMIT,
        "the new route was followed only after {took:?}"
    );
    assert!(
        after_change >= EXCHANGES,
        "every reply goes to the new gateway ({after_change} of {EXCHANGES} frames arrived there)"
    );
    local
        .ask()
        .expect("the local client, on its own route, is untouched");
}
