//! The datapath test bed: a namespace holding the balancer's two interfaces, with routes and
//! static neighbours, so that `bpf_fib_lookup` inside `BPF_PROG_TEST_RUN` answers as it would
//! on a real router. The calling thread enters the namespace for the bed's lifetime.
//!
//! ```text
//!  clients (default route) ── router 198.18.0.254 ── cli0 198.18.0.1 [balancer] srv0 198.18.2.1 ── backends 198.18.2.11..
//!                           one-arm backends 198.18.0.11.. and SNAT 198.18.0.2 sit on cli0's subnet
//! ```

use std::net::Ipv4Addr;
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    backend::{BackendInfo, BackendState},
    hash::affinity_hash,
    service::{
        Affinity, Filtering, NO_BACKEND, RING_MAX_SIZE, RING_SLOTS_PER_SERVICE, ServiceInfo,
    },
    settings::{DatapathSettings, Mode},
};
use xnlb::{
    datapath::{Datapath, DatapathSizes},
    model::{
        maglev::{self, Member},
        port_rules::{RuleKey, addr_v4},
    },
};

use crate::netns::{Entered, NetNs};
use crate::packets::Pkt;

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
pub const CLIENT_IF_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
pub const SERVER_IF_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const SNAT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// A backend address the bed has no route to.
pub const UNROUTABLE_BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 10);
/// A backend address with no neighbour entry: its MAC is unknown to the kernel.
pub const UNRESOLVED_BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 99);

/// Two-arm backend `n` (1-based) behind srv0.
pub fn backend_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + n)
}

/// One-arm backend `n` (1-based) on cli0's subnet.
pub fn one_arm_backend_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + n)
}

/// The static MAC the bed gives a neighbour with this address.
pub fn neighbour_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

/// A client address beyond the router (anything in 198.19.0.0/16).
pub fn client_ip(n: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8)
}

#[derive(Clone, Copy, Debug)]
pub struct Iface {
    pub index: u32,
    pub mac: [u8; 6],
}

/// One service as a test configures it.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub id: u32,
    pub vip: Ipv4Addr,
    pub proto: u8,
    pub ports: (u16, u16),
    pub filtering: u8,
    pub affinity: u8,
    pub network_prefix: u8,
    /// (backend id, address, port (0 = keep the client's), weight). Backend `i` is named `b<id>`.
    pub backends: Vec<(u32, Ipv4Addr, u16, u32)>,
}

impl ServiceSpec {
    pub fn tcp(id: u32, port: u16, backends: Vec<(u32, Ipv4Addr, u16, u32)>) -> Self {
        Self {
            id,
            vip: VIP,
            proto: lb_common::addr::PROTO_TCP,
            ports: (port, port),
            filtering: Filtering::Multiple as u8,
            affinity: Affinity::None as u8,
            network_prefix: 24,
            backends,
        }
    }

    fn hash_seed(&self) -> u32 {
        0x5eed_0000 ^ self.id
    }
}

pub struct Bed {
    // Field order is drop order: leave the namespace before deleting it.
    _entered: Entered,
    pub ns: NetNs,
    pub dp: Datapath,
    pub client_if: Iface,
    pub server_if: Iface,
    /// Live ring table of each installed service, for predictions.
    tables: std::collections::HashMap<u32, (ServiceSpec, Vec<u32>, u32)>,
}

#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

impl Bed {
    pub fn new() -> Self {
        Self::with_sizes(DatapathSizes {
            flows: 16_384,
            ring_services: 4,
        })
    }

    pub fn with_sizes(sizes: DatapathSizes) -> Self {
        let ns = NetNs::new("dp");
        for (dev, addr) in [("cli0", "198.18.0.1/24"), ("srv0", "198.18.2.1/24")] {
            let peer = format!("{dev}p");
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
            ns.ip(&["addr", "add", addr, "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&["link", "set", &peer, "up"]);
            // GRO registers the veth's XDP receive queue, which BPF_PROG_TEST_RUN needs to
            // accept the interface as ingress.
            ns.exec(&["ethtool", "-K", dev, "gro", "on"]);
        }
        ns.sysctl("net.ipv4.conf.all.forwarding", "1");
        ns.sysctl("net.ipv4.conf.cli0.forwarding", "1");
        ns.sysctl("net.ipv4.conf.srv0.forwarding", "1");
        // Like a real router: everything not local goes towards the clients' side; one prefix
        // is unreachable so the no-route path can be tested.
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "198.18.0.254",
            "dev",
            "cli0",
        ]);
        ns.ip(&["route", "add", "unreachable", "198.18.3.0/24"]);
        let mut neighbours = vec![(ROUTER, "cli0")];
        neighbours.extend((1..=8).map(|n| (backend_ip(n), "srv0")));
        neighbours.extend((1..=8).map(|n| (one_arm_backend_ip(n), "cli0")));
        for (ip, dev) in neighbours {
            let mac = neighbour_mac(ip).map(|b| format!("{b:02x}")).join(":");
            ns.ip(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        let client_if = Iface {
            index: ns.ifindex("cli0"),
            mac: ns.mac("cli0"),
        };
        let server_if = Iface {
            index: ns.ifindex("srv0"),
            mac: ns.mac("srv0"),
        };
        let entered = ns.enter();
        let dp = Datapath::load(sizes).expect("load the XDP object");
        Self {
            _entered: entered,
            ns,
            dp,
            client_if,
            server_if,
            tables: Default::default(),
        }
    }

    /// Switches the datapath to one-arm mode with the bed's SNAT address and `ports`.
    pub fn one_arm(&mut self, ports: (u16, u16)) {
        let mut s = DatapathSettings::defaults();
        s.mode = Mode::OneArm as u8;
        s.snat_addrs[0] = addr_v4(SNAT_ADDR);
        s.snat_count = 1;
        s.snat_port_min = ports.0;
        s.snat_port_max = ports.1;
        self.dp.set_settings(&s).expect("settings");
    }

    pub fn settings(&mut self, s: &DatapathSettings) {
        self.dp.set_settings(s).expect("settings");
    }

    /// Programs a service the way the controller does: VIP, backends, a ring table in a free
    /// slot, then the service (one write), then its port rules.
    pub fn install(&mut self, spec: &ServiceSpec) {
        self.dp.add_vip(spec.vip).expect("vip");
        for &(id, addr, port, _) in &spec.backends {
            let info = BackendInfo {
                addr: addr_v4(addr),
                port: port.to_be(),
                family: lb_common::addr::FAMILY_V4,
                state: BackendState::Up as u8,
                service_id: spec.id,
            };
            self.dp.set_backend(id, &info).expect("backend");
            self.dp.add_backend_addr(addr).expect("backend addr");
        }
        self.publish(spec);
        let (lo, hi) = spec.ports;
        for key in RuleKey::covering(spec.vip, spec.proto, lo, hi) {
            self.dp.insert_rule(key, spec.id).expect("rule");
        }
    }

    /// (Re)builds the service's table from `spec` into the slot it does not use, and switches.
    pub fn publish(&mut self, spec: &ServiceSpec) {
        let names: Vec<String> = spec.backends.iter().map(|b| format!("b{}", b.0)).collect();
        let members: Vec<Member<'_>> = spec
            .backends
            .iter()
            .zip(&names)
            .map(|(b, name)| Member {
                id: b.0,
                name,
                weight: b.3,
            })
            .collect();
        let table = maglev::build(&members, maglev::DEFAULT_TABLE_SIZE);
        let previous = self.tables.get(&spec.id).map(|t| t.2);
        let slot = spec.id * RING_SLOTS_PER_SERVICE
            + previous.map_or(0, |p| (p / RING_MAX_SIZE + 1) % RING_SLOTS_PER_SERVICE);
        let base = self.dp.write_ring(slot, &table).expect("ring");
        let single = spec
            .backends
            .iter()
            .find(|b| b.3 > 0)
            .map_or(NO_BACKEND, |b| b.0);
        let info = ServiceInfo {
            ring_base: base,
            ring_size: table.len() as u32,
            single_backend: if spec.filtering == Filtering::Single as u8 {
                single
            } else {
                NO_BACKEND
            },
            hash_seed: spec.hash_seed(),
            filtering: spec.filtering,
            affinity: spec.affinity,
            network_prefix: spec.network_prefix,
            _pad: 0,
        };
        self.dp.set_service(spec.id, &info).expect("service");
        self.tables.insert(spec.id, (spec.clone(), table, base));
    }

    /// The backend userspace predicts for a new flow from `client:port` (all backends up).
    pub fn predict(&self, service_id: u32, client: Ipv4Addr, port: u16) -> u32 {
        let (spec, table, _) = &self.tables[&service_id];
        let h = affinity_hash(
            spec.affinity,
            spec.network_prefix,
            &addr_v4(client),
            port.to_be(),
            spec.hash_seed(),
        );
        table[(h % table.len() as u32) as usize]
    }

    /// Runs one packet through the real program as if it arrived on `ingress`.
    pub fn run(&self, ingress: Iface, frame: &[u8]) -> (u32, Vec<u8>) {
        let (action, out, _) = self.run_repeat(ingress, frame, 1);
        (action, out)
    }

    /// Runs `repeat` times in the kernel; returns the action, the output and the average time.
    pub fn run_repeat(
        &self,
        ingress: Iface,
        frame: &[u8],
        repeat: u32,
    ) -> (u32, Vec<u8>, Duration) {
        self.try_run(ingress, frame, repeat).unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN failed for a {}-byte frame: {e}",
                frame.len()
            )
        })
    }

    /// Like [`Bed::run_repeat`], but returns the kernel's refusal instead of panicking.
    pub fn try_run(
        &self,
        ingress: Iface,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, Duration), aya::programs::ProgramError> {
        test_run(self.dp.program().expect("program"), ingress, frame, repeat)
    }
}

/// Runs `prog` `repeat` times in the kernel (`BPF_PROG_TEST_RUN`) on `frame` as if it arrived
/// on `ingress`; returns the action, the output and the kernel's average time per run.
pub fn test_run(
    prog: &aya::programs::Xdp,
    ingress: Iface,
    frame: &[u8],
    repeat: u32,
) -> Result<(u32, Vec<u8>, Duration), aya::programs::ProgramError> {
    let md = XdpMd {
        data: 0,
        data_end: frame.len() as u32,
        data_meta: 0,
        ingress_ifindex: ingress.index,
        rx_queue_index: 0,
        egress_ifindex: 0,
    };
    // SAFETY: XdpMd is plain old data with no padding.
    let md_bytes = unsafe {
        std::slice::from_raw_parts(
            &md as *const XdpMd as *const u8,
            std::mem::size_of::<XdpMd>(),
        )
    };
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(md_bytes),
        repeat,
        ..Default::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out, result.duration))
}

impl Default for Bed {
    fn default() -> Self {
        Self::new()
    }
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

impl Bed {
    pub fn drops(&self, reason: lb_common::stats::DropReason) -> u64 {
        self.dp.reader().drop_count(reason).expect("drop counter")
    }

    pub fn passes(&self, reason: lb_common::stats::PassReason) -> u64 {
        self.dp.reader().pass_count(reason).expect("pass counter")
    }

    pub fn events(&self, event: lb_common::stats::FlowEvent) -> u64 {
        self.dp
            .reader()
            .flow_event_count(event)
            .expect("flow event counter")
    }

    /// A client packet as the router hands it to cli0.
    pub fn from_client(&self, pkt: Pkt) -> Pkt {
        pkt.macs(ROUTER_MAC, self.client_if.mac)
    }

    /// A backend's packet as it reaches the balancer (on srv0 for two-arm backends, cli0 for one-arm).
    pub fn from_backend(&self, pkt: Pkt, via: Iface) -> Pkt {
        let mac = neighbour_mac(pkt.src);
        pkt.macs(mac, via.mac)
    }
}
