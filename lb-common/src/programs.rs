//! The datapath's XDP programs by name. Interfaces run [`ENTRY`], which classifies a packet and
//! tail-calls the stage that handles it through the `STAGES` program array. Each program is
//! verified on its own, so the verifier's budget (a million instructions per program) holds for
//! each stage, not for the whole datapath.

/// The program attached to the interfaces: parse, classify, pass what is not ours.
pub const ENTRY: &str = "xnlb";

/// Parse Ethernet, pass: the cost every XDP program pays (benchmarks), and a NIC-like receiver
/// on veth peers (test beds).
pub const FLOOR: &str = "xnlb_floor";

/// `STAGES` slot of the stage for packets addressed to a VIP.
pub const TO_VIP: u32 = 0;
/// `STAGES` slot of the stage for packets from a backend's address.
pub const FROM_BACKEND: u32 = 1;

/// `STAGES` slot of the stage for ICMP sent to the balancer: errors about balanced flows,
/// echo requests to VIPs.
pub const ICMP: u32 = 2;

/// `STAGES` slots of the IPv6 stages for packets addressed to a VIP and from a backend.
pub const TO_VIP6: u32 = 3;
pub const FROM_BACKEND6: u32 = 4;

/// `STAGES` slot of the ICMPv6 stage.
pub const ICMP6: u32 = 5;

/// Every stage: its `STAGES` slot and its program's name.
pub const STAGES: [(u32, &str); 6] = [
    (TO_VIP, "xnlb_to_vip"),
    (FROM_BACKEND, "xnlb_from_backend"),
    (ICMP, "xnlb_icmp"),
    (TO_VIP6, "xnlb_to_vip6"),
    (FROM_BACKEND6, "xnlb_from_backend6"),
    (ICMP6, "xnlb_icmp6"),
];
