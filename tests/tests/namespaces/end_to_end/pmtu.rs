//! Echo to the VIP, and path MTU discovery through the NAT, end to end: 2 MB downloads and uploads with DF set (as
//! Linux TCP sends) between a client behind a router and a backend, through the VIP, where one
//! hop of the path has a smaller MTU (1280) than the links (1500).
//!
//! - A router on the clients' side (the client namespace, which routes for a far client's
//!   namespace) cannot forward the backend's full-size replies: it answers "fragmentation
//!   needed" to the VIP, which the balancer must translate back to the backend
//!   (`icmp_error_to_backend`); without that the download hangs.
//! - Two-arm, the balancer's own route to the far client, then to the backend, has the small
//!   MTU: the balancer answers "fragmentation needed" itself, to the backend about its reply or
//!   to the client about its upload (`too_big_answered`). (A one-arm balancer answers a client
//!   the way its packets came, on an interface they fitted, and sends to backends on that same
//!   link: it has no smaller hop of its own.)
//!
//! Each case uses a far client address of its own, and the far client forgets what it learnt
//! of the path to the VIP, so that no path MTU one case taught a host helps another. The time
//! bound is `TRANSFER_LIMIT`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv6Addr},
};

use xnlb_tests::{
    addresses::{CLIENT_IP, CLIENT_IP6, SNAT_IP, SNAT_IP6},
    apps::{IO_TIMEOUT, connect_from, line_servers},
    nic::NicStandIn,
};

use super::*;

/// The far client's network, behind the client namespace.
const FAR_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
/// One far client address per case.
const FAR_CLIENTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 19, 200, 10),
    Ipv4Addr::new(198, 19, 200, 11),
    Ipv4Addr::new(198, 19, 200, 12),
];
const SMALL_MTU: &str = "1280";
const BYTES: usize = 2 * 1024 * 1024;
/// The bound on a 2 MB transfer whose path MTU must be discovered. On veth such a
/// transfer takes well under a second, and one discovery costs about one retransmission
/// timeout (200 ms to 1 s); the rest is slack for a loaded machine. A transfer whose ICMP is
/// lost never completes: the IO timeout (5 s without a byte) ends it first.
const TRANSFER_LIMIT: Duration = Duration::from_secs(20);

/// A namespace behind the client namespace, which routes for it: `eth0` with `FAR_CLIENTS`.
fn far_client(net: &Net) -> NetNs {
    let far = NetNs::new("far");
    net.client.ip(&[
        "link",
        "add",
        "far0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        far.name(),
    ]);
    net.client
        .ip(&["addr", "add", &format!("{FAR_GATEWAY}/24"), "dev", "far0"]);
    net.client.ip(&["link", "set", "far0", "up"]);
    net.client.sysctl("net.ipv4.ip_forward", "1");
    for addr in FAR_CLIENTS {
        far.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    }
    far.ip(&["link", "set", "eth0", "up"]);
    far.ip(&["route", "add", "default", "via", &FAR_GATEWAY.to_string()]);
    // Its packets are rewritten by the balancer: complete checksums (`docs/testing.md`).
    far.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
    far
}

/// Downloads `BYTES` (`/bulk/`) from `src` through `vip`:80, checking every byte arrived; how
/// long it took.
fn download(farm: &Farm, far: &NetNs, src: IpAddr, vip: IpAddr) -> Duration {
    let started = Instant::now();
    let (status, body) = http_get_from(far, src, (vip, HTTP).into(), &format!("/bulk/{BYTES}"))
        .unwrap_or_else(|e| panic!("{}: download to {src}: {e}", farm.mode()));
    assert_eq!(status, 200);
    let (greeting, data) = body.split_once('\n').expect("<backend> <client>\n<data>");
    assert!(greeting.starts_with("b1 "), "{greeting}");
    assert_eq!(
        data.len(),
        BYTES,
        "{}: bytes downloaded to {src}",
        farm.mode()
    );
    started.elapsed()
}

/// Uploads `BYTES` (one line) from `src` through `vip`:`LINES`, which answers once it has the
/// line; how long it took.
fn upload(farm: &Farm, far: &NetNs, src: IpAddr, vip: IpAddr) -> Duration {
    let started = Instant::now();
    let fail = |e: std::io::Error| -> ! { panic!("{}: upload from {src}: {e}", farm.mode()) };
    let mut stream = connect_from(far, src, (vip, LINES).into()).unwrap_or_else(|e| fail(e));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut line = vec![b'x'; BYTES];
    line.push(b'\n');
    stream.write_all(&line).unwrap_or_else(|e| fail(e));
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .unwrap_or_else(|e| fail(e));
    assert!(
        answer.starts_with("b1 "),
        "the line server's answer: {answer:?}"
    );
    started.elapsed()
}

fn event(farm: &Farm, name: &str) -> f64 {
    farm.scrape()
        .sum("xnlb_flow_events_total", &[("event", name)])
}

fn within_limit(farm: &Farm, what: &str, took: Duration) {
    println!("{}: {what} took {took:?}", farm.mode());
    assert!(
        took <= TRANSFER_LIMIT,
        "{}: {what} took {took:?}",
        farm.mode()
    );
}

pub fn path_mtu_through_the_nat(mode: Mode) {
    let farm = Farm::new(mode, 1);
    let net = &farm.net;
    let far = far_client(net);
    // `XDP_TX` on veth needs a native program on the peer (`docs/testing.md`): the one-arm
    // network has one on the balancer's switch port; two-arm gets them here, for the answers
    // the balancer sends back out the way a packet came.
    let _nics = (mode == Mode::TwoArm).then(|| {
        (
            NicStandIn::attach(&net.switch, &["lb"]),
            NicStandIn::attach(&net.client, &["eth0"]),
        )
    });
    let _lines = line_servers(&net.backends, LINES);
    let b1 = net.backend_ip(1);
    let _d = Daemon::start(
        &net.lb,
        &farm.config(&[
            farm.service("web", HTTP, "", &farm.backends(&[1], |_| "".into())),
            farm.service(
                "lines",
                LINES,
                "",
                &format!("      - {{ name: b1, address: {b1} }}\n"),
            ),
        ]),
    );
    let vip = net.vip().to_string();

    // 0. The VIP answers ping (the datapath answers; the VIP need not be the host's).
    assert!(
        ping(&net.client, net.vip(), Duration::from_secs(2)),
        "{}: ping to the VIP",
        farm.mode()
    );
    assert!(event(&farm, "echo_answered") >= 1.0, "{}", farm.mode());

    // 1. The router's hops to the far client, and to the VIP, are small.
    let client = FAR_CLIENTS[0].to_string();
    net.client.ip(&[
        "route", "add", &client, "dev", "far0", "mtu", "lock", SMALL_MTU,
    ]);
    let towards_vip = match mode {
        Mode::TwoArm => ["via", "198.18.0.1"],
        Mode::OneArm => ["dev", "eth0"],
    };
    net.client.ip(&[
        "route",
        "add",
        &vip,
        towards_vip[0],
        towards_vip[1],
        "mtu",
        "lock",
        SMALL_MTU,
    ]);
    within_limit(
        &farm,
        "download past a small router hop",
        download(&farm, &far, FAR_CLIENTS[0].into(), net.vip().into()),
    );
    assert!(
        event(&farm, "icmp_error_to_backend") >= 1.0,
        "{}: the router's error reached the backend through the balancer",
        farm.mode()
    );
    within_limit(
        &farm,
        "upload past a small router hop",
        upload(&farm, &far, FAR_CLIENTS[0].into(), net.vip().into()),
    );
    if mode == Mode::OneArm {
        return;
    }
    // The far client learnt the router's small hop to the VIP (a path MTU is kept per
    // destination, whatever the source address): gone, and forgotten.
    net.client.ip(&["route", "del", &vip]);
    far.ip(&["route", "flush", "cache"]);

    // 2. The balancer's own route to the far client is small.
    let client = FAR_CLIENTS[1].to_string();
    net.lb.ip(&[
        "route",
        "add",
        &client,
        "via",
        &CLIENT_IP.to_string(),
        "mtu",
        "lock",
        SMALL_MTU,
    ]);
    let answered = event(&farm, "too_big_answered");
    within_limit(
        &farm,
        "download past the balancer's small hop",
        download(&farm, &far, FAR_CLIENTS[1].into(), net.vip().into()),
    );
    assert!(
        event(&farm, "too_big_answered") > answered,
        "the balancer answered the backend's large reply"
    );

    // 3. The balancer's own route to the backend is small.
    net.lb.ip(&[
        "route",
        "add",
        &b1.to_string(),
        "dev",
        "srv0",
        "mtu",
        "lock",
        SMALL_MTU,
    ]);
    let answered = event(&farm, "too_big_answered");
    within_limit(
        &farm,
        "upload past the balancer's small hop",
        upload(&farm, &far, FAR_CLIENTS[2].into(), net.vip().into()),
    );
    assert!(
        event(&farm, "too_big_answered") > answered,
        "the balancer answered the client's large packet"
    );
}

/// The far client's IPv6 network, behind the client namespace.
const FAR_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 1);
const FAR_CLIENTS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 0x12),
];

/// `far_client`'s IPv6 side: the far client's IPv6 addresses, routed by the client namespace,
/// and the balancer's route to them.
fn far_client6(net: &Net, far: &NetNs) {
    net.client.ip(&[
        "addr",
        "add",
        &format!("{FAR_GATEWAY6}/64"),
        "dev",
        "far0",
        "nodad",
    ]);
    net.client.sysctl("net.ipv6.conf.all.forwarding", "1");
    for addr in FAR_CLIENTS6 {
        far.ip(&["addr", "add", &format!("{addr}/64"), "dev", "eth0", "nodad"]);
    }
    far.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &FAR_GATEWAY6.to_string(),
    ]);
    net.lb.ip(&[
        "-6",
        "route",
        "add",
        "fd00:20::/64",
        "via",
        &CLIENT_IP6.to_string(),
    ]);
}

/// The IPv6 counterpart of `path_mtu_through_the_nat`: IPv6 routers never fragment, so "packet
/// too big" is the only way a sender learns, and the balancer must translate it, or answer it
/// for its own hops (two-arm).
pub fn path_mtu_through_the_nat_ipv6(mode: Mode) {
    let farm = Farm::new(mode, 1);
    let net = &farm.net;
    net.add_ipv6();
    let far = far_client(net);
    far_client6(net, &far);
    let _nics = (mode == Mode::TwoArm).then(|| {
        (
            NicStandIn::attach(&net.switch, &["lb"]),
            NicStandIn::attach(&net.client, &["eth0"]),
        )
    });
    let _lines = line_servers(&net.backends, LINES);
    let b1 = net.backend_ip6(1);
    let vip6 = net.vip6();
    let _web6 = HttpBackend::start(
        Some(&net.backends[0]),
        SocketAddr::from((b1, HTTP)),
        "b1",
        None,
    );
    let service = |name: &str, port: u16| {
        format!(
            "  - name: {name}\n    vip: \"{vip6}\"\n    ports: [{port}]\n    backends:\n      - {{ name: b1, address: \"{b1}\" }}\n"
        )
    };
    // One-arm: an IPv6 SNAT address beside the IPv4 one.
    let config = farm
        .config(&[service("web6", HTTP), service("lines6", LINES)])
        .replace(
            &format!("addresses: [{SNAT_IP}]"),
            &format!("addresses: [{SNAT_IP}, \"{SNAT_IP6}\"]"),
        );
    let _d = Daemon::start(&net.lb, &config);
    let vip: IpAddr = vip6.into();

    // 1. The router's hops to the far client, and to the VIP, are small.
    let client = FAR_CLIENTS6[0].to_string();
    net.client.ip(&[
        "-6", "route", "add", &client, "dev", "far0", "mtu", "lock", SMALL_MTU,
    ]);
    let towards_vip = match mode {
        Mode::TwoArm => ["via", "fd00::1"],
        Mode::OneArm => ["dev", "eth0"],
    };
    net.client.ip(&[
        "-6",
        "route",
        "add",
        &format!("{vip6}/128"),
        towards_vip[0],
        towards_vip[1],
        "mtu",
        "lock",
        SMALL_MTU,
    ]);
    let src: IpAddr = FAR_CLIENTS6[0].into();
    within_limit(
        &farm,
        "IPv6 download past a small router hop",
        download(&farm, &far, src, vip),
    );
    assert!(
        event(&farm, "icmp_error_to_backend") >= 1.0,
        "the router's packet too big reached the backend through the balancer"
    );
    within_limit(
        &farm,
        "IPv6 upload past a small router hop",
        upload(&farm, &far, src, vip),
    );
    if mode == Mode::OneArm {
        return;
    }
    net.client
        .ip(&["-6", "route", "del", &format!("{vip6}/128")]);
    far.ip(&["-6", "route", "flush", "cache"]);

    // 2. The balancer's own route to the far client is small.
    let client = FAR_CLIENTS6[1].to_string();
    net.lb.ip(&[
        "-6",
        "route",
        "add",
        &client,
        "via",
        &CLIENT_IP6.to_string(),
        "mtu",
        "lock",
        SMALL_MTU,
    ]);
    let answered = event(&farm, "too_big_answered");
    let src: IpAddr = FAR_CLIENTS6[1].into();
    within_limit(
        &farm,
        "IPv6 download past the balancer's small hop",
        download(&farm, &far, src, vip),
    );
    assert!(
        event(&farm, "too_big_answered") > answered,
        "the balancer answered the backend"
    );

    // 3. The balancer's own route to the backend is small.
    net.lb.ip(&[
        "-6",
        "route",
        "add",
        &format!("{b1}/128"),
        "dev",
        "srv0",
        "mtu",
        "lock",
        SMALL_MTU,
    ]);
    let answered = event(&farm, "too_big_answered");
    let src: IpAddr = FAR_CLIENTS6[2].into();
    within_limit(
        &farm,
        "IPv6 upload past the balancer's small hop",
        upload(&farm, &far, src, vip),
    );
    assert!(
        event(&farm, "too_big_answered") > answered,
        "the balancer answered the client"
    );
}
