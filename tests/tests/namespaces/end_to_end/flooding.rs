//! Two balancers on one segment whose switch floods unicast: an active one that owns the VIP and
//! a standby with the same services that does not announce it (as with keepalived, or a second
//! box being brought in). Both see every frame; only the one the frame is addressed to may act
//! on it. Before the datapath checked destination MACs, the standby balanced every flooded SYN
//! as well, and each backend connection was attempted twice.

use xnlb_tests::{
    addresses::{CLIENT_IP, SNAT_IP, snat_ip},
    netns::NetNs,
};

use xnlb_tests::wire::ping;

use super::*;

/// New connections through the active balancer.
const REQUESTS: usize = 60;
/// The standby's own address on the segment.
const STANDBY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

pub fn standby_on_a_flooding_switch() {
    let farm = Farm::new(Mode::OneArm, 3);
    let (standby_ns, _nic) = farm.net.second_one_arm_balancer(STANDBY_IP);
    let active_snat = SNAT_IP;
    let standby_snat = snat_ip(1);
    let config = farm.web_config();
    let standby_config = format!("announce_vips: false\n{config}")
        .replace(&format!("[{active_snat}]"), &format!("[{standby_snat}]"));
    assert_ne!(standby_config, format!("announce_vips: false\n{config}"));
    let _active = Daemon::start(&farm.net.lb, &config);
    let _standby = Daemon::start(&standby_ns, &standby_config);
    let syns: Vec<SynCounters> = farm
        .net
        .backends
        .iter()
        .map(|be| SynCounters::install(be, &[active_snat, standby_snat]))
        .collect();
    // The standby knows its backends' MACs, as after its own health probes: a frame it
    // wrongly balanced would go straight out by XDP, not through its kernel (which drops
    // frames addressed to other hosts).
    for n in 1..=farm.net.backends.len() {
        let backend = farm.net.backend_ip(n);
        assert!(
            ping(&standby_ns, backend, LIMIT),
            "standby reaches {backend}"
        );
    }
    farm.net.flood_unicast();
    let retransmits_before = syn_retransmits(&farm.net.client);

    for _ in 0..REQUESTS {
        farm.get(CLIENT_IP, HTTP);
    }

    let retransmits = syn_retransmits(&farm.net.client) - retransmits_before;
    let through = |snat: Ipv4Addr| -> u64 { syns.iter().map(|c| c.read(snat)).sum() };
    let standby = Scrape::take(&standby_ns, METRICS);
    let not_for_us = standby.sum("xnlb_passes_total", &[("reason", "not_for_us")]);
    let standby_flows = standby.sum("xnlb_flows_total", &[]);
    println!(
        "flooding switch: {REQUESTS} requests; SYNs at the backends via the active balancer {}, \
         via the standby {}; client SYN retransmissions {retransmits}; the standby passed {} \
         frames not addressed to it and started {standby_flows} flows",
        through(active_snat),
        through(standby_snat),
        not_for_us
    );
    assert_eq!(
        standby_flows, 0.0,
        "the standby balanced frames sent to the active one"
    );
    assert_eq!(
        through(standby_snat),
        0,
        "no backend may receive a connection attempt from the standby"
    );
    // Each request's SYN reached a backend exactly once (a retransmitted SYN once more).
    assert_eq!(through(active_snat), REQUESTS as u64 + retransmits);
    assert!(
        not_for_us >= REQUESTS as f64,
        "the standby must have seen the flooded SYNs (else the switch did not flood): {not_for_us}"
    );
}

/// nftables counters on a backend: SYNs to the HTTP port from each of some source addresses
/// (what reached its TCP stack, after the kernel dropped frames for other hosts).
pub(super) struct SynCounters<'a> {
    ns: &'a NetNs,
}

impl<'a> SynCounters<'a> {
    const TABLE: &'static str = "xnlbtest";

    pub(super) fn install(ns: &'a NetNs, sources: &[Ipv4Addr]) -> Self {
        let nft = |args: &[&str]| {
            let mut cmd = vec!["nft"];
            cmd.extend_from_slice(args);
            ns.exec(&cmd);
        };
        nft(&["add", "table", "inet", Self::TABLE]);
        let hook = "{ type filter hook input priority 0 ; }";
        nft(&["add", "chain", "inet", Self::TABLE, "input", hook]);
        for src in sources {
            let name = Self::counter(*src);
            nft(&["add", "counter", "inet", Self::TABLE, &name]);
            let rule = format!(
                "ip saddr {src} tcp dport {HTTP} tcp flags & (syn | ack) == syn counter name {name}"
            );
            nft(&["add", "rule", "inet", Self::TABLE, "input", &rule]);
        }
        Self { ns }
    }

    fn counter(src: Ipv4Addr) -> String {
        format!("syn_from_{}", src.to_string().replace('.', "_"))
    }

    pub(super) fn read(&self, src: Ipv4Addr) -> u64 {
        let out = self
            .ns
            .command("nft")
            .args(["list", "counter", "inet", Self::TABLE, &Self::counter(src)])
            .output()
            .expect("nft list counter");
        let text = String::from_utf8_lossy(&out.stdout);
        let packets = text
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .unwrap_or_else(|| panic!("no packet count in {text}"));
        packets.parse().expect("a packet count")
    }
}

/// The client namespace's count of retransmitted SYNs (`TcpExtTCPSynRetrans`).
pub(super) fn syn_retransmits(ns: &NetNs) -> u64 {
    let out = ns
        .command("cat")
        .arg("/proc/net/netstat")
        .output()
        .expect("read /proc/net/netstat");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = (lines[0], lines[1]);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPSynRetrans")
        .map(|(_, v)| v.parse().expect("a count"))
        .expect("TCPSynRetrans in /proc/net/netstat")
}
