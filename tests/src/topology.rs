//! Namespaced networks with the daemon's view of the world: real interfaces, real routes,
//! real TCP. The two-arm layout:
//!
//! ```text
//!  client ns            balancer ns                         switch ns          backend ns (×N)
//!  eth0 198.18.0.10 ── cli0 198.18.0.1 [xnlb] srv0 198.18.2.1 ── lb [br0] bN ── eth0 198.18.2.(10+N)
//!  default via .0.1                                                           default via 198.18.2.1
//! ```
//! The VIP 198.18.1.100 is reached through the client's default route. Test-bed settings follow
//! `shared/XDP-ON-VETH.md`: senders have tx checksum offload off; the veths that receive
//! redirected frames (client eth0, switch port `lb`) have GRO on.

use std::net::Ipv4Addr;

use crate::netns::NetNs;

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const LB_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const LB_SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

/// The start of an `xnlb` config for the `TwoArm` balancer, up to `services:`.
pub const TWO_ARM_CONFIG_HEAD: &str =
    "mode: two-arm\ninterfaces:\n  client: cli0\n  server: srv0\nservices:\n";

/// Backend `n` (1-based).
pub fn backend_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + n as u8)
}

/// A veth pair: `name` in `ns`, its peer `peer` in `peer_ns`.
fn veth(ns: &NetNs, name: &str, peer_ns: &NetNs, peer: &str) {
    ns.ip(&[
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        peer_ns.name(),
    ]);
}

pub struct TwoArm {
    pub client: NetNs,
    pub lb: NetNs,
    pub switch: NetNs,
    pub backends: Vec<NetNs>,
}

impl TwoArm {
    /// Adds `n` more addresses to the client (198.18.0.11, .12, ...) and returns them with the
    /// first one (`CLIENT_IP`) in front: many clients for distribution and affinity.
    pub fn client_addresses(&self, n: usize) -> Vec<Ipv4Addr> {
        assert!(n < 200, "one /24 of clients");
        let mut all = vec![CLIENT_IP];
        for i in 0..n {
            let addr = Ipv4Addr::new(198, 18, 0, 11 + i as u8);
            self.client
                .ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            all.push(addr);
        }
        all
    }

    pub fn new(backends: usize) -> Self {
        let client = NetNs::new("cli");
        let lb = NetNs::new("lb");
        let switch = NetNs::new("sw");
        let backends: Vec<NetNs> = (1..=backends).map(|_| NetNs::new("be")).collect();

        veth(&lb, "cli0", &client, "eth0");
        veth(&lb, "srv0", &switch, "lb");
        lb.ip(&["addr", "add", "198.18.0.1/24", "dev", "cli0"]);
        lb.ip(&["addr", "add", "198.18.2.1/24", "dev", "srv0"]);
        lb.ip(&["link", "set", "cli0", "up"]);
        lb.ip(&["link", "set", "srv0", "up"]);
        lb.sysctl("net.ipv4.ip_forward", "1");

        client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"]);
        client.ip(&["link", "set", "eth0", "up"]);
        client.ip(&["route", "add", "default", "via", "198.18.0.1"]);
        client.exec(&["ethtool", "-K", "eth0", "tx", "off", "gro", "on"]);

        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        switch.ip(&["link", "set", "lb", "master", "br0", "up"]);
        switch.exec(&["ethtool", "-K", "lb", "gro", "on"]);
        for (i, be) in backends.iter().enumerate() {
            let port = format!("b{}", i + 1);
            veth(&switch, &port, be, "eth0");
            switch.ip(&["link", "set", &port, "master", "br0", "up"]);
            be.ip(&[
                "addr",
                "add",
                &format!("{}/24", backend_ip(i + 1)),
                "dev",
                "eth0",
            ]);
            be.ip(&["link", "set", "eth0", "up"]);
            be.ip(&["route", "add", "default", "via", "198.18.2.1"]);
            be.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        }
        Self {
            client,
            lb,
            switch,
            backends,
        }
    }
}
