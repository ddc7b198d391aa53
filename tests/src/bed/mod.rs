//! The datapath test bed: a namespace holding the balancer's two interfaces, with routes and
//! static neighbours, so that `bpf_fib_lookup` inside `BPF_PROG_TEST_RUN` answers as it would
//! on a real router. The calling thread enters the namespace for the bed's lifetime. Its maps
//! are programmed by the controller's own model and reconcile code (`program`).
//!
//! ```text
//!  clients 198.19.0.0/16 ── router 198.18.0.10 ── cli0 198.18.0.1 [balancer] srv0 198.18.2.1 ──
//! backends 198.18.2.(10+n)
//!                           one-arm backends 198.18.0.(200+n) and SNAT 198.18.0.2 sit on cli0's
//! subnet
//! ```

mod program;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::backend::BackendState;
use xnlb::{
    config::Service,
    datapath::{Datapath, DatapathSizes},
};

pub use crate::addresses::*;
use crate::netns::{Entered, NetNs};
use crate::packets::{ACK, Pkt, SYN};
pub use program::{Programmer, backend, backend_at, service, service_at};

/// The router in front of the clients: the plan's client namespace address.
pub const ROUTER: Ipv4Addr = CLIENT_IP;
pub const ROUTER_MAC: [u8; 6] = neighbour_mac(ROUTER);

#[derive(Clone, Copy, Debug)]
pub struct Iface {
    pub index: u32,
    pub mac: [u8; 6],
}

pub struct Bed {
    // Field order is drop order: leave the namespace before deleting it.
    _entered: Entered,
    pub ns: NetNs,
    pub dp: Datapath,
    pub client_if: Iface,
    pub server_if: Iface,
    pub program: Programmer,
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

/// Loads the object. Beds load in parallel on a 2-core machine, and one load failed once in a
/// full run for a reason the run did not keep (kernel memory for maps or the verifier, most
/// likely). Up to 3 tries, 200 ms apart, every failure printed: a real fault (a verifier
/// rejection) fails all three and the test with it.
fn load_with_retries(sizes: DatapathSizes) -> Datapath {
    let mut errors = Vec::new();
    for _ in 0..3 {
        match Datapath::load(sizes) {
            Ok(dp) => return dp,
            Err(e) => {
                eprintln!("loading the XDP object failed: {e:?}");
                errors.push(format!("{e:?}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    panic!("load the XDP object: {errors:#?}");
}

/// IPv4 forwarding on or off on every interface of the bed's namespace.
fn set_forwarding(ns: &NetNs, on: bool) {
    let value = if on { "1" } else { "0" };
    for conf in ["all", "cli0", "srv0"] {
        ns.sysctl(&format!("net.ipv4.conf.{conf}.forwarding"), value);
    }
}

impl Bed {
    pub fn new() -> Self {
        Self::with_sizes(DatapathSizes {
            flows: 16_384,
            half_open: 4096,
            ring_services: 4,
            ..Default::default()
        })
    }

    pub fn with_sizes(sizes: DatapathSizes) -> Self {
        let ns = NetNs::new("dp");
        for (dev, ip) in [("cli0", LB_CLIENT_IP), ("srv0", LB_SERVER_IP)] {
            let addr = format!("{ip}/24");
            let peer = format!("{dev}p");
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
            ns.ip(&["addr", "add", &addr, "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&["link", "set", &peer, "up"]);
            // GRO registers the veth's XDP receive queue, which BPF_PROG_TEST_RUN needs to
            // accept the interface as ingress.
            ns.exec(&["ethtool", "-K", dev, "gro", "on"]);
        }
        set_forwarding(&ns, true);
        for (dev, ip) in [("cli0", LB_CLIENT_IP6), ("srv0", LB_SERVER_IP6)] {
            ns.ip(&["addr", "add", &format!("{ip}/64"), "dev", dev, "nodad"]);
        }
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &CLIENT_IP6.to_string(),
            "dev",
            "cli0",
        ]);
        // Like a real router: everything not local goes towards the clients' side; one prefix
        // is unreachable so the no-route path can be tested.
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &ROUTER.to_string(),
            "dev",
            "cli0",
        ]);
        ns.ip(&["route", "add", "unreachable", "198.18.3.0/24"]);
        let mut neighbours: Vec<(IpAddr, &str)> =
            vec![(ROUTER.into(), "cli0"), (CLIENT_IP6.into(), "cli0")];
        for n in 1..=MAX_BED_BACKENDS {
            neighbours.push((backend_ip(n).into(), "srv0"));
            neighbours.push((one_arm_backend_ip(n).into(), "cli0"));
            neighbours.push((backend_ip6(n).into(), "srv0"));
            neighbours.push((one_arm_backend_ip6(n).into(), "cli0"));
        }
        for (ip, dev) in neighbours {
            let mac = neighbour_mac_of(ip).map(|b| format!("{b:02x}")).join(":");
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
        let dp = load_with_retries(sizes);
        let program = Programmer::new(&dp);
        Self {
            _entered: entered,
            ns,
            dp,
            client_if,
            server_if,
            program,
        }
    }

    /// Switches to one-arm mode with the plan's SNAT address and source ports `ports`.
    pub fn one_arm(&mut self, ports: (u16, u16)) {
        self.program
            .one_arm(&[SNAT_IP.into(), SNAT_IP6.into()], ports);
        self.program.apply(&mut self.dp);
    }

    /// One-arm as on a host: IPv4 forwarding off, so the FIB answers nothing and the next hops
    /// are held (the daemon's choice there).
    pub fn one_arm_held(&mut self, ports: (u16, u16)) {
        self.forwarding(false);
        self.program
            .one_arm(&[SNAT_IP.into(), SNAT_IP6.into()], ports);
        self.program.hold_next_hops(true);
        self.program.apply(&mut self.dp);
    }

    /// Cluster mode, as node `node_id` in `mac_mode`, on cli0 (the config's block, through the
    /// daemon's plan). The bucket table is empty until `own_buckets`.
    pub fn cluster(&mut self, node_id: u8, mac_mode: lb_common::cluster::MacMode) {
        let text = format!(
            "{{ node_id: {node_id}, interface: cli0, mac_mode: {} }}",
            mac_mode.label()
        );
        self.program.config.cluster = Some(serde_norway::from_str(&text).expect("a cluster block"));
        self.program.apply(&mut self.dp);
    }

    /// Makes `flags(bucket)` this node's bucket table, with a lease for `lease` from now.
    pub fn own_buckets(&mut self, flags: impl Fn(u32) -> u32, lease: Duration) {
        let table: Vec<u32> = (0..lb_common::cluster::BUCKETS).map(flags).collect();
        let mut maps = self.dp.cluster_maps().expect("cluster maps");
        maps.switch_table(&table).expect("write the bucket table");
        let until = xnlb::datapath::monotonic_ns() + lease.as_nanos() as u64;
        maps.renew_lease(until).expect("renew the lease");
    }

    /// Ends this node's lease on its bucket table, as a controller that stopped renewing it.
    pub fn expire_lease(&mut self) {
        let mut maps = self.dp.cluster_maps().expect("cluster maps");
        maps.renew_lease(1).expect("write the lease");
    }

    /// Turns IPv4 forwarding on or off on every interface of the bed.
    pub fn forwarding(&self, on: bool) {
        set_forwarding(&self.ns, on);
    }

    /// Adds or replaces `service` (by name) and programs the maps as a reload would.
    pub fn install(&mut self, service: Service) {
        self.program.put(service);
        self.program.apply(&mut self.dp);
    }

    /// Sets a backend's state and programs the maps as a health change or admin verb would.
    pub fn set_state(&mut self, service: &str, backend: &str, state: BackendState) {
        self.program.set_state(service, backend, state);
        self.program.apply(&mut self.dp);
    }

    /// The address of the backend a new flow of `service` from `client:port` goes to,
    /// predicted from the programmed table.
    pub fn predict(&self, service: &str, client: Ipv4Addr, port: u16) -> Ipv4Addr {
        self.program
            .address_of(self.program.predict(service, client, port))
    }

    /// `predict` for a client of either IP version.
    pub fn predict_ip(&self, service: &str, client: IpAddr, port: u16) -> IpAddr {
        self.program
            .ip_address_of(self.program.predict(service, client, port))
    }

    /// Programs the maps from `program` after a test changed it directly.
    pub fn reprogram(&mut self) {
        self.program.apply(&mut self.dp);
    }

    pub fn service_id(&self, name: &str) -> u32 {
        self.program.service_id(name)
    }

    pub fn backend_id(&self, service: &str, backend: &str) -> u32 {
        self.program.backend_id(service, backend)
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

    /// The client's half of a TCP handshake to `to`: its SYN (a half-open flow), then its ACK
    /// (the flow established). The backend's SYN-ACK between them changes no state, so it is
    /// left out. Returns the ACK's output.
    pub fn connect(&self, client: (Ipv4Addr, u16), to: (Ipv4Addr, u16)) -> (u32, Vec<u8>) {
        let syn = self.from_client(Pkt::tcp(client, to, SYN));
        let (action, _) = self.run(self.client_if, &syn.bytes());
        assert!(
            action == XDP_REDIRECT || action == XDP_TX,
            "the SYN from {client:?} to {to:?} is forwarded (action {action})"
        );
        let ack = self.from_client(Pkt::tcp(client, to, ACK));
        self.run(self.client_if, &ack.bytes())
    }

    /// A backend's packet as it reaches the balancer (on srv0 for two-arm backends, cli0 for
    /// one-arm).
    pub fn from_backend(&self, pkt: Pkt, via: Iface) -> Pkt {
        let mac = neighbour_mac_of(pkt.src);
        pkt.macs(mac, via.mac)
    }
}
