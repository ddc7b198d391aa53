//! Namespaced networks with the daemon's view of the world: real interfaces, real routes,
//! real TCP. Two layouts, one type ([`Net`]) so a test can run in either mode.
//!
//! Two-arm (routed; backends see the client's address):
//! ```text
//!  client ns            balancer ns                         switch ns          backend ns (×N)
//!  eth0 198.18.0.10 ── cli0 198.18.0.1 [xnlb] srv0 198.18.2.1 ── lb [br0] bN ── eth0
//! 198.18.2.(10+N)
//!  default via .0.1                                                           default via
//! 198.18.2.1
//! ```
//! The VIP 198.18.1.100 is reached through the client's default route.
//!
//! One-arm (one subnet; backends see the SNAT address and do not route through the balancer):
//! ```text
//!  client ns eth0 198.18.0.10 ── c  ─┐
//!  balancer ns lan0 198.18.0.1 ── lb ─┼─ br0 (switch ns)
//!  backend ns eth0 198.18.0.(200+N) ── bN ─┘
//! ```
//! The VIP 198.18.0.100 and the SNAT address 198.18.0.2 are answered by the balancer (xnlb adds
//! them to lan0), which has IPv4 forwarding off, as a one-arm host usually has (xnlb holds the
//! next hops then). The switch port facing the balancer carries the floor XDP program, standing
//! in for a NIC, so that frames the balancer sends back out with `XDP_TX` are delivered.
//!
//! In both, the client namespace also stands for a router with clients behind it: addresses in
//! 198.19.0.0/16 ([`Net::remote_clients`]), which the balancer routes via 198.18.0.10.
//! Test-bed settings follow `docs/testing.md`: senders have tx checksum offload off; the
//! veths that receive redirected frames (two-arm client eth0 and switch port `lb`) have GRO on.

use std::net::Ipv4Addr;

pub use crate::addresses::*;
use crate::{netns::NetNs, nic::NicStandIn};

/// The start of an `xnlb` config for the two-arm balancer, up to `services:`.
pub const TWO_ARM_CONFIG_HEAD: &str =
    "mode: two-arm\ninterfaces:\n  client: cli0\n  server: srv0\nservices:\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    TwoArm,
    OneArm,
}

/// `ns` reaches 198.19.0.0/16 through the client namespace, as through a router.
fn route_remote_clients(ns: &NetNs) {
    ns.ip(&[
        "route",
        "add",
        REMOTE_CLIENTS,
        "via",
        &CLIENT_IP.to_string(),
    ]);
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

/// Makes the bridges of switch namespace `sw` plain L2 switches (see `Net::plain_switch`).
fn plain_bridge(sw: &NetNs) {
    sw.run_in(|| {
        for table in ["iptables", "ip6tables", "arptables"] {
            let path = format!("/proc/sys/net/bridge/bridge-nf-call-{table}");
            if std::path::Path::new(&path).exists() {
                std::fs::write(&path, "0").unwrap_or_else(|e| panic!("{path}: {e}"));
            }
        }
    });
}

pub struct Net {
    pub mode: Mode,
    pub client: NetNs,
    pub lb: NetNs,
    pub switch: NetNs,
    pub backends: Vec<NetNs>,
    /// Two-arm cluster mode: the switch of the clients and every node's `cli0`.
    pub client_switch: Option<NetNs>,
    /// Detaches with the topology (one-arm only).
    _nic: Option<NicStandIn>,
    /// Two-arm cluster mode: node 1's switch ports' stand-ins.
    _node_nics: Vec<NicStandIn>,
}

/// Two-arm cluster mode: the backends' gateway, shared by the nodes (none has it: their
/// datapaths answer ARP for it with the cluster MAC).
pub const CLUSTER_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

impl Net {
    pub fn build(mode: Mode, backends: usize) -> Self {
        let net = Self {
            mode,
            client: NetNs::new("cli"),
            lb: NetNs::new("lb"),
            switch: NetNs::new("sw"),
            backends: (1..=backends).map(|_| NetNs::new("be")).collect(),
            client_switch: None,
            _nic: None,
            _node_nics: Vec::new(),
        };
        net.switch.ip(&["link", "add", "br0", "type", "bridge"]);
        net.switch.ip(&["link", "set", "br0", "up"]);
        net.plain_switch();
        let net = match mode {
            Mode::TwoArm => net.wire_two_arm(),
            Mode::OneArm => net.wire_one_arm(),
        };
        // Two-arm routes; one-arm is set up as a host is (forwarding off): it sends from its
        // own addresses only.
        let forwarding = if mode == Mode::TwoArm { "1" } else { "0" };
        net.lb.sysctl("net.ipv4.ip_forward", forwarding);
        route_remote_clients(&net.lb);
        net
    }

    /// Two-arm cluster mode: the client and every node's `cli0` on one switch, every node's
    /// `srv0` and the backends on the other (`switch`); the backends route through
    /// `CLUSTER_GATEWAY`; the client reaches the VIPs on its own segment (it asks ARP for them,
    /// and the nodes answer with the cluster MAC). `lb` is node 1; `another_two_arm_node` adds
    /// the others.
    pub fn build_two_arm_cluster(backends: usize) -> Self {
        let net = Self {
            mode: Mode::TwoArm,
            client: NetNs::new("cli"),
            lb: NetNs::new("lb"),
            switch: NetNs::new("sw"),
            backends: (1..=backends).map(|_| NetNs::new("be")).collect(),
            client_switch: Some(NetNs::new("swc")),
            _nic: None,
            _node_nics: Vec::new(),
        };
        for sw in [&net.switch, net.client_switch.as_ref().expect("built")] {
            sw.ip(&["link", "add", "br0", "type", "bridge"]);
            sw.ip(&["link", "set", "br0", "up"]);
            plain_bridge(sw);
        }
        let sw = net.client_switch.as_ref().expect("built");
        veth(sw, "c", &net.client, "eth0");
        sw.ip(&["link", "set", "c", "master", "br0", "up"]);
        let client = &net.client;
        client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"]);
        client.ip(&["link", "set", "eth0", "up"]);
        client.ip(&["route", "add", "198.18.1.0/24", "dev", "eth0"]);
        client.exec(&["ethtool", "-K", "eth0", "tx", "off", "gro", "on"]);
        let mut net = net;
        net._node_nics = net.wire_two_arm_node(&net.lb, 1);
        let via = CLUSTER_GATEWAY.to_string();
        net.wire_backends(&["route", "add", "default", "via", &via]);
        net
    }

    /// Two-arm cluster node `n` in `ns`: `cli0` at 198.18.0.1 (node 1) or .(n+1) on the client
    /// switch, `srv0` at 198.18.2.(n+1) on the server switch, forwarding on. Its switch ports
    /// carry the floor program (returned), so that the ARP answers it sends back out with
    /// `XDP_TX` are delivered.
    fn wire_two_arm_node(&self, ns: &NetNs, n: u8) -> Vec<NicStandIn> {
        let client_side = if n == 1 { 1 } else { n + 1 };
        let port = format!("lb{n}");
        let sw = self
            .client_switch
            .as_ref()
            .expect("a two-arm cluster network");
        veth(sw, &port, ns, "cli0");
        sw.ip(&["link", "set", &port, "master", "br0", "up"]);
        self.switch_port(ns, "srv0", &port);
        for (dev, addr) in [
            ("cli0", Ipv4Addr::new(198, 18, 0, client_side)),
            ("srv0", Ipv4Addr::new(198, 18, 2, n + 1)),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        // Redirects between a node's interfaces arrive on veths whose peers need GRO.
        for switch in [sw, &self.switch] {
            switch.exec(&["ethtool", "-K", &port, "gro", "on"]);
        }
        ns.sysctl("net.ipv4.ip_forward", "1");
        route_remote_clients(ns);
        vec![
            NicStandIn::attach(sw, &[&port]),
            NicStandIn::attach(&self.switch, &[&port]),
        ]
    }

    /// Two-arm cluster node `n` (2, 3, ...) in a namespace of its own, with its switch ports'
    /// stand-ins.
    pub fn another_two_arm_node(&self, n: u8) -> (NetNs, Vec<NicStandIn>) {
        let ns = NetNs::new(&format!("lb{n}"));
        let nics = self.wire_two_arm_node(&ns, n);
        (ns, nics)
    }

    fn wire_two_arm(self) -> Self {
        let Self { lb, client, .. } = &self;
        veth(lb, "cli0", client, "eth0");
        lb.ip(&["addr", "add", &format!("{LB_CLIENT_IP}/24"), "dev", "cli0"]);
        lb.ip(&["link", "set", "cli0", "up"]);
        client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"]);
        client.ip(&["link", "set", "eth0", "up"]);
        client.ip(&["route", "add", "default", "via", &LB_CLIENT_IP.to_string()]);
        client.exec(&["ethtool", "-K", "eth0", "tx", "off", "gro", "on"]);
        self.switch_port(lb, "srv0", "lb");
        lb.ip(&["addr", "add", &format!("{LB_SERVER_IP}/24"), "dev", "srv0"]);
        lb.ip(&["link", "set", "srv0", "up"]);
        self.switch.exec(&["ethtool", "-K", "lb", "gro", "on"]);
        let via = LB_SERVER_IP.to_string();
        self.wire_backends(&["route", "add", "default", "via", &via]);
        self
    }

    fn wire_one_arm(mut self) -> Self {
        self.switch_port(&self.client, "eth0", "c");
        let client = &self.client;
        client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"]);
        client.ip(&["link", "set", "eth0", "up"]);
        client.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        self.switch_port(&self.lb, "lan0", "lb");
        self.lb
            .ip(&["addr", "add", &format!("{LB_CLIENT_IP}/24"), "dev", "lan0"]);
        self.lb.ip(&["link", "set", "lan0", "up"]);
        self.wire_backends(&[]);
        self._nic = Some(NicStandIn::attach(&self.switch, &["lb"]));
        self
    }

    /// Makes the bridge a plain L2 switch. Where the host has `br_netfilter` loaded, a new
    /// namespace's bridges pass frames through the IP layer's checks, which drop malformed
    /// headers before they reach the balancer; a real switch does not look at them.
    fn plain_switch(&self) {
        plain_bridge(&self.switch);
    }

    /// A veth from `dev` in `ns` to port `port` of the switch's bridge.
    fn switch_port(&self, ns: &NetNs, dev: &str, port: &str) {
        veth(&self.switch, port, ns, dev);
        self.switch
            .ip(&["link", "set", port, "master", "br0", "up"]);
    }

    /// Addresses the backends, `route` (when given) as each one's route.
    fn wire_backends(&self, route: &[&str]) {
        for (i, be) in self.backends.iter().enumerate() {
            self.switch_port(be, "eth0", &format!("b{}", i + 1));
            let addr = format!("{}/24", self.backend_ip(i + 1));
            be.ip(&["addr", "add", &addr, "dev", "eth0"]);
            be.ip(&["link", "set", "eth0", "up"]);
            if !route.is_empty() {
                be.ip(route);
            }
            be.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        }
    }

    /// One-arm only: a second balancer namespace on the same switch, `lan0` at `addr`,
    /// routing like the first (a standby, or a neighbour on a shared segment). The returned
    /// stand-in keeps its switch port delivering `XDP_TX`.
    pub fn second_one_arm_balancer(&self, addr: Ipv4Addr) -> (NetNs, NicStandIn) {
        self.another_one_arm_balancer("lb2", addr)
    }

    /// One more balancer on the one-arm segment: namespace and switch port `port`, address
    /// `addr` on its `lan0`, forwarding off (as the first), the floor program on its port.
    pub fn another_one_arm_balancer(&self, port: &str, addr: Ipv4Addr) -> (NetNs, NicStandIn) {
        assert_eq!(
            self.mode,
            Mode::OneArm,
            "another balancer shares the one-arm segment"
        );
        let lb = NetNs::new(port);
        self.switch_port(&lb, "lan0", port);
        lb.ip(&["addr", "add", &format!("{addr}/24"), "dev", "lan0"]);
        lb.ip(&["link", "set", "lan0", "up"]);
        lb.sysctl("net.ipv4.ip_forward", "0");
        route_remote_clients(&lb);
        let nic = NicStandIn::attach(&self.switch, &[port]);
        (lb, nic)
    }

    /// IPv6 beside IPv4 (`addresses`). Two-arm: the client fd00::10, the balancer fd00::1 and
    /// fd00:2::1 forwarding, the backends fd00:2::(10+n) routing through it; the VIP
    /// fd00:1::100 reached through the client's default route. One-arm: one subnet, fd00::/64:
    /// the client ::10, the balancer ::1 (not forwarding), the backends ::(200+n); the VIP ::100
    /// and the SNAT address ::2 answered by the balancer. Addresses skip duplicate address
    /// detection, which would hold them unusable for a second.
    pub fn add_ipv6(&self) {
        let add = |ns: &NetNs, addr: std::net::Ipv6Addr, dev: &str| {
            ns.ip(&["addr", "add", &format!("{addr}/64"), "dev", dev, "nodad"]);
        };
        if self.mode == Mode::OneArm {
            add(&self.client, CLIENT_IP6, "eth0");
            add(&self.lb, LB_CLIENT_IP6, "lan0");
            for (i, be) in self.backends.iter().enumerate() {
                add(be, one_arm_backend_ip6(i + 1), "eth0");
            }
            return;
        }
        add(&self.client, CLIENT_IP6, "eth0");
        self.client.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &LB_CLIENT_IP6.to_string(),
        ]);
        add(&self.lb, LB_CLIENT_IP6, "cli0");
        add(&self.lb, LB_SERVER_IP6, "srv0");
        self.lb.sysctl("net.ipv6.conf.all.forwarding", "1");
        for (i, be) in self.backends.iter().enumerate() {
            add(be, backend_ip6(i + 1), "eth0");
            be.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &LB_SERVER_IP6.to_string(),
            ]);
        }
    }

    /// The IPv6 VIP (`add_ipv6`).
    pub fn vip6(&self) -> std::net::Ipv6Addr {
        match self.mode {
            Mode::TwoArm => VIP6,
            Mode::OneArm => ONE_ARM_VIP6,
        }
    }

    /// IPv6 backend `n` (1-based).
    pub fn backend_ip6(&self, n: usize) -> std::net::Ipv6Addr {
        match self.mode {
            Mode::TwoArm => backend_ip6(n),
            Mode::OneArm => one_arm_backend_ip6(n),
        }
    }

    /// The address a backend sees for the IPv6 client `client`.
    pub fn seen_by_backend6(&self, client: std::net::Ipv6Addr) -> std::net::Ipv6Addr {
        match self.mode {
            Mode::TwoArm => client,
            Mode::OneArm => SNAT_IP6,
        }
    }

    /// Makes the switch flood every unicast frame to every port, as a switch does for a MAC it
    /// has not learned (aged out, table full): every port stops learning and the learned
    /// entries are flushed.
    pub fn flood_unicast(&self) {
        for port in self.switch_ports() {
            self.switch
                .exec(&["bridge", "link", "set", "dev", &port, "learning", "off"]);
        }
        self.switch.exec(&["bridge", "fdb", "flush", "dev", "br0"]);
    }

    /// The switch's ports (the veths enslaved to `br0`).
    fn switch_ports(&self) -> Vec<String> {
        let out = self
            .switch
            .command("ip")
            .args(["-o", "link", "show", "master", "br0"])
            .output()
            .expect("ip link show master br0");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|name| {
                name.trim()
                    .split('@')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    pub fn vip(&self) -> Ipv4Addr {
        match self.mode {
            Mode::TwoArm => VIP,
            Mode::OneArm => ONE_ARM_VIP,
        }
    }

    /// Backend `n` (1-based).
    pub fn backend_ip(&self, n: usize) -> Ipv4Addr {
        match self.mode {
            Mode::TwoArm => backend_ip(n),
            Mode::OneArm => one_arm_backend_ip(n),
        }
    }

    /// The start of an `xnlb` config for this balancer, up to `services:`.
    pub fn config_head(&self) -> String {
        match self.mode {
            Mode::TwoArm => TWO_ARM_CONFIG_HEAD.to_string(),
            Mode::OneArm => format!(
                "mode: one-arm\ninterfaces:\n  client: lan0\nsnat:\n  addresses: [{SNAT_IP}]\nservices:\n"
            ),
        }
    }

    /// The source address a backend sees for a connection from `client`.
    pub fn seen_by_backend(&self, client: Ipv4Addr) -> Ipv4Addr {
        match self.mode {
            Mode::TwoArm => client,
            Mode::OneArm => SNAT_IP,
        }
    }

    /// The balancer's interface facing the clients.
    pub fn client_iface(&self) -> &'static str {
        match self.mode {
            Mode::TwoArm => "cli0",
            Mode::OneArm => "lan0",
        }
    }

    /// The balancer's own address on the client side (for host traffic such as ping).
    pub fn lb_address(&self) -> Ipv4Addr {
        LB_CLIENT_IP
    }

    /// Adds `n` more addresses to the client (198.18.0.11, .12, ...) and returns them with the
    /// first one (`CLIENT_IP`) in front: many clients for distribution and affinity.
    pub fn client_addresses(&self, n: usize) -> Vec<Ipv4Addr> {
        let mut all = vec![CLIENT_IP];
        for i in 0..n {
            let addr = local_client_ip(i);
            self.client
                .ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            all.push(addr);
        }
        all
    }

    /// Clients behind the client namespace's router: `per` addresses in each of the /24s
    /// 198.19.1.0 ... 198.19.`networks`.0, grouped by network.
    pub fn remote_clients(&self, networks: u8, per: u8) -> Vec<Vec<Ipv4Addr>> {
        (1..=networks)
            .map(|net| {
                (1..=per)
                    .map(|host| {
                        let addr = remote_client(net, host);
                        self.client
                            .ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
                        addr
                    })
                    .collect()
            })
            .collect()
    }
}
