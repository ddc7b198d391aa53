//! The one address plan of every test bed: the datapath bed (`bed`), the namespace networks
//! (`topology`), the demo and the bench. Everything is in 198.18.0.0/15, the range set aside
//! for benchmarking networks, and exists only inside namespaces the tests create.
//!
//! ```text
//!  remote clients 198.19.0.0/16
//!        │ (routed via the client namespace)
//!  client / router 198.18.0.10 ── 198.18.0.1 [balancer] 198.18.2.1 ── backends 198.18.2.(10+n)
//!                                 │  VIP 198.18.1.100 (two-arm)
//!                                 └─ one-arm: VIP 198.18.0.100, SNAT 198.18.0.2 (and .151-.165),
//!                                    backends 198.18.0.(200+n)
//! ```
//!
//! IPv6 mirrors it in fd00::/8: the client side fd00::/64 (balancer ::1, router ::10, one-arm
//! SNAT ::2, one-arm backends ::(200+n)), the VIP fd00:1::100, the server side fd00:2::/64
//! (balancer ::1, backends ::(10+n)), remote clients fd00:19::/64.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The two-arm VIP, reached through the client's default route; the datapath bed uses it in
/// both modes (there it is only a map key).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
/// The one-arm VIP, on the shared subnet.
pub const ONE_ARM_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The balancer's client-side address (`cli0`, or `lan0` in one-arm).
pub const LB_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The balancer's server-side address (`srv0`).
pub const LB_SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// The one-arm SNAT address.
pub const SNAT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The client namespace, which is also the router the remote clients sit behind.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// An address nothing answers: traffic to it is not the balancer's.
pub const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 9);
/// A backend address the datapath bed has no route to (198.18.3.0/24 is unreachable there).
pub const UNROUTABLE_BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 10);
/// A backend address on the server subnet with no neighbour entry in the datapath bed.
pub const UNRESOLVED_BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 99);
/// How many backends of each kind the beds give neighbour entries and namespaces to at most.
pub const MAX_BED_BACKENDS: usize = 8;

/// Two-arm backend `n` (1-based), behind the server-side interface.
pub fn backend_ip(n: usize) -> Ipv4Addr {
    assert!((1..=40).contains(&n), "backend {n} outside the plan");
    Ipv4Addr::new(198, 18, 2, 10 + n as u8)
}

/// One-arm backend `n` (1-based), on the client-side subnet.
pub fn one_arm_backend_ip(n: usize) -> Ipv4Addr {
    assert!(
        (1..=50).contains(&n),
        "one-arm backend {n} outside the plan"
    );
    Ipv4Addr::new(198, 18, 0, 200 + n as u8)
}

/// Extra client address `n` (0-based) on the client namespace's own subnet: 198.18.0.11 up
/// to .90, below the VIP and the one-arm backends.
pub fn local_client_ip(n: usize) -> Ipv4Addr {
    assert!(n < 80, "local client {n} outside the plan");
    Ipv4Addr::new(198, 18, 0, 11 + n as u8)
}

/// Remote client `n` behind the client router (198.19.0.0/16).
pub fn client_ip(n: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8)
}

/// Remote client `host` in /24 network `net` (198.19.`net`.`host`).
pub fn remote_client(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, net, host)
}

/// The prefix the remote clients live in, as a route.
pub const REMOTE_CLIENTS: &str = "198.19.0.0/16";

/// The static MAC the beds give a neighbour with this address.
pub const fn neighbour_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

/// `neighbour_mac` for an address of either version (IPv6: its last two bytes).
pub fn neighbour_mac_of(ip: std::net::IpAddr) -> [u8; 6] {
    match ip {
        std::net::IpAddr::V4(a) => neighbour_mac(a),
        std::net::IpAddr::V6(a) => {
            let o = a.octets();
            [0x02, 0, 0, 0x06, o[14], o[15]]
        }
    }
}

/// Another host on the balancer's segment: frames sent to it reach the balancer only when a
/// switch floods them or an interface is promiscuous, and must pass untouched.
pub const OTHER_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xee, 0xee];

/// SNAT address `n` (0-based) of up to 16: the plan's `SNAT_IP`, then 198.18.0.151 upwards.
pub fn snat_ip(n: usize) -> Ipv4Addr {
    assert!(n < 16, "SNAT address {n} outside the plan");
    if n == 0 {
        SNAT_IP
    } else {
        Ipv4Addr::new(198, 18, 0, 150 + n as u8)
    }
}

/// The IPv6 VIP (two-arm; the datapath bed uses it in both modes).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x100);
/// The one-arm IPv6 VIP, on the shared subnet.
pub const ONE_ARM_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
/// The balancer's client-side and server-side IPv6 addresses.
pub const LB_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const LB_SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
/// The client namespace (the router in front of the remote clients), IPv6.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
/// The one-arm IPv6 SNAT address.
pub const SNAT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// The remote clients' IPv6 prefix, as a route.
pub const REMOTE_CLIENTS6: &str = "fd00:19::/64";

/// Two-arm IPv6 backend `n` (1-based).
pub fn backend_ip6(n: usize) -> Ipv6Addr {
    assert!((1..=40).contains(&n), "backend {n} outside the plan");
    Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10 + n as u16)
}

/// One-arm IPv6 backend `n` (1-based), on the client-side subnet.
pub fn one_arm_backend_ip6(n: usize) -> Ipv6Addr {
    assert!(
        (1..=50).contains(&n),
        "one-arm backend {n} outside the plan"
    );
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x200 + n as u16)
}

/// Remote IPv6 client `host` of network `net`, behind the client router.
pub fn remote_client6(net: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, net, host)
}
