//! Per-packet cost of the real XDP object, timed by the kernel with `BPF_PROG_TEST_RUN` in the
//! datapath test bed, next to the floor program (parse Ethernet, pass) timed the same way.
//!
//! Two methods. `repeat` runs the program N times inside one syscall on the same buffer: exact,
//! but only for cases that leave the packet as it is, because a rewritten packet is no longer
//! addressed to the VIP on the second run. Every case is therefore also measured as N calls of
//! one run each: the kernel copies a fresh packet in every time and times the run itself, which
//! adds a fixed per-run overhead to every case and to the floor alike.

use aya::programs::Xdp;
use lb_common::{
    addr::{FAMILY_V4, PROTO_TCP},
    flow::{FlowEntry, FlowKey, FlowState, REPLY_DERIVED},
};
use xnlb::{datapath::DatapathSizes, model::port_rules::addr_v4};
use xnlb_tests::{
    bed::*,
    flow_cases::{self, Timing},
    nic::{floor_program, load_floor},
    packets::*,
};

use crate::{Budget, Progress};

/// One measured case.
#[derive(Clone, Debug)]
pub struct Cost {
    pub case: String,
    pub action: &'static str,
    /// ns per packet, as the mean of `runs` single runs.
    pub single_ns: f64,
    pub runs: u32,
    /// ns per packet with the in-kernel repeat, where the case allows it.
    pub repeat_ns: Option<f64>,
}

pub struct PacketCosts {
    pub floor: Cost,
    pub cases: Vec<Cost>,
}

/// Where bytes sit in an Ethernet + IPv4 (no options) + TCP frame.
const SRC_IP: std::ops::Range<usize> = 26..30;
const SRC_PORT: std::ops::Range<usize> = 34..36;
/// The same in an Ethernet + IPv6 (no extension headers) + TCP frame.
pub const SRC_IP6: std::ops::Range<usize> = 22..38;
pub const SRC_PORT6: std::ops::Range<usize> = 54..56;

fn action_name(action: u32) -> &'static str {
    ["aborted", "drop", "pass", "tx", "redirect"]
        .get(action as usize)
        .copied()
        .unwrap_or("?")
}

/// The mean of `runs` single kernel-timed runs; `vary(i, frame)` may rewrite the frame before
/// run `i` (a new 5-tuple, another established flow).
pub fn single(
    prog: &Xdp,
    ingress: Iface,
    frame: &[u8],
    runs: u32,
    want: u32,
    mut vary: impl FnMut(u32, &mut [u8]),
) -> f64 {
    let mut frame = frame.to_vec();
    let mut total = 0u128;
    for i in 0..runs {
        vary(i, &mut frame);
        let (action, _, took) = test_run(prog, ingress, &frame, 1).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, want, "run {i}: unexpected action");
        total += took.as_nanos();
    }
    total as f64 / runs as f64
}

fn repeated(prog: &Xdp, ingress: Iface, frame: &[u8], repeat: u32, want: u32) -> f64 {
    let (action, _, per_run) = test_run(prog, ingress, frame, repeat).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, want, "unexpected action");
    per_run.as_nanos() as f64
}

/// Client `i` of many: a distinct (address, port) for each `i` below 3.2 billion.
fn client(i: u32) -> ([u8; 4], u16) {
    let host = i / 50_000;
    (
        [198, 19, (host >> 8) as u8, host as u8],
        10_000 + (i % 50_000) as u16,
    )
}

/// Makes `frame` come from client `i`: an IPv4 frame with its header checksum resealed (the
/// datapath drops a VIP packet whose header does not verify), an IPv6 one from client `i`'s
/// IPv4 address within the remote clients' IPv6 prefix.
fn set_client(i: u32, frame: &mut [u8]) {
    let (addr, port) = client(i);
    if frame[12..14] == [0x86, 0xdd] {
        let [a, b, c, d] = addr;
        let addr6 = std::net::Ipv6Addr::new(
            0xfd00,
            0x19,
            0,
            0,
            0,
            0,
            u16::from_be_bytes([a, b]),
            u16::from_be_bytes([c, d]),
        );
        frame[SRC_IP6].copy_from_slice(&addr6.octets());
        frame[SRC_PORT6].copy_from_slice(&port.to_be_bytes());
        return;
    }
    frame[SRC_IP].copy_from_slice(&addr);
    frame[SRC_PORT].copy_from_slice(&port.to_be_bytes());
    reseal_ipv4(frame);
}

fn cost(case: &str, action: u32, single_ns: f64, runs: u32, repeat_ns: Option<f64>) -> Cost {
    Cost {
        case: case.to_string(),
        action: action_name(action),
        single_ns,
        runs,
        repeat_ns,
    }
}

/// A bed with room for every new flow of `runs` runs without eviction.
fn bed_for(runs: u32) -> Bed {
    Bed::with_sizes(DatapathSizes {
        flows: runs + 65_536,
        half_open: runs + 65_536,
        ring_services: 4,
        ..Default::default()
    })
}

/// Progress steps of `measure`: the floor, three untouched packets, the reused tuple, the rows.
pub fn steps() -> usize {
    5 + flow_cases::all().len() + TRACED.len()
}

/// Section 1: the floor, the packets the balancer refuses or leaves alone, and every golden
/// flow case (`xnlb_tests::flow_cases`, the rows the golden tests prove correct), each on a
/// fresh bed set up by the row.
pub fn measure(budget: &Budget, progress: &mut Progress) -> PacketCosts {
    let runs = budget.single_runs;
    let repeat = budget.repeat;
    let mut bed = bed_for(runs);
    flow_cases::three_backends(&mut bed);
    let mut floor_obj = load_floor();
    let floor = floor_program(&mut floor_obj);
    let prog = bed.dp.program().expect("program");

    let first = flow_cases::CLIENT;
    let syn = bed.from_client(Pkt::tcp(first, (VIP, 443), SYN)).bytes();
    let ack = bed.from_client(Pkt::tcp(first, (VIP, 443), ACK)).bytes();
    let other = bed
        .from_client(Pkt::tcp(first, (STRANGER, 443), ACK))
        .bytes();
    let no_rule = bed.from_client(Pkt::tcp(first, (VIP, 80), SYN)).bytes();
    let mut malformed = syn.clone();
    malformed[14] = 0x43; // IHL 3

    progress.step("per packet: the floor");
    let floor_cost = cost(
        "floor: parse Ethernet, pass",
        XDP_PASS,
        single(floor, bed.client_if, &ack, runs, XDP_PASS, |_, _| {}),
        runs,
        Some(repeated(floor, bed.client_if, &ack, repeat, XDP_PASS)),
    );
    let mut cases = Vec::new();
    let unchanged: [(&str, &[u8], u32); 3] = [
        ("non-VIP packet (to the kernel)", &other, XDP_PASS),
        ("VIP port without a rule (drop)", &no_rule, XDP_DROP),
        ("malformed IPv4 to the VIP (drop)", &malformed, XDP_DROP),
    ];
    for (case, frame, want) in unchanged {
        progress.step(&format!("per packet: {case}"));
        let one = single(prog, bed.client_if, frame, runs, want, |_, _| {});
        let rep = repeated(prog, bed.client_if, frame, repeat, want);
        cases.push(cost(case, want, one, runs, Some(rep)));
    }

    progress.step("per packet: new flow on a reused tuple");
    // A client reusing a source port after its connection closed (a NATed client, a busy
    // load generator): FIN (not timed), then the SYN that starts the next connection.
    let fin = bed
        .from_client(Pkt::tcp(first, (VIP, 443), FIN_ACK))
        .bytes();
    let reused = 1_000;
    let (mut f, mut s) = (fin, syn.clone());
    let mut total = 0u128;
    for i in 0..runs {
        set_client(i % reused, &mut f);
        set_client(i % reused, &mut s);
        test_run(prog, bed.client_if, &f, 1).expect("FIN");
        let (action, _, took) = test_run(prog, bed.client_if, &s, 1).expect("SYN");
        assert_eq!(action, XDP_REDIRECT);
        total += took.as_nanos();
    }
    let one = total as f64 / runs as f64;
    cases.push(cost(
        "new flow on a reused tuple (SYN after FIN)",
        XDP_REDIRECT,
        one,
        runs,
        None,
    ));
    drop(bed);

    for case in flow_cases::all() {
        progress.step(&format!("per packet: {}", case.name));
        let mut bed = bed_for(runs);
        (case.setup)(&mut bed);
        let (ingress, pkt) = (case.input)(&bed);
        let prog = bed.dp.program().expect("program");
        let frame = pkt.bytes();
        let one = match case.timing {
            Timing::SameFlow => single(prog, ingress, &frame, runs, case.action, |_, _| {}),
            Timing::NewClientEachRun => {
                single(prog, ingress, &frame, runs, case.action, set_client)
            }
        };
        cases.push(cost(case.name, case.action, one, runs, None));
    }

    for (case, traced_client) in TRACED {
        progress.step(&format!("per packet: {case}"));
        cases.push(cost(
            case,
            XDP_REDIRECT,
            traced(runs, traced_client),
            runs,
            None,
        ));
    }

    PacketCosts {
        floor: floor_cost,
        cases,
    }
}

/// The established flow's cost while `xnlb trace` runs: its client not the filter's (the
/// packet pays the filter's check), and its client traced (an event written per packet).
const TRACED: [(&str, bool); 2] = [
    ("established flow, a trace armed for another client", false),
    ("established flow, traced (one event each)", true),
];

/// The mean cost of an established flow's packet with a trace armed, for its client or for
/// another; the events are read between runs (untimed), as the daemon reads them meanwhile.
fn traced(runs: u32, its_client: bool) -> f64 {
    let mut bed = bed_for(runs);
    flow_cases::three_backends(&mut bed);
    let first = flow_cases::CLIENT;
    bed.connect(first, (VIP, 443));
    let mut tap = xnlb::datapath::trace::Tap::open(bed.dp.reader()).expect("trace maps");
    let client = if its_client { first.0 } else { client_ip(200) };
    tap.arm(&lb_common::trace::TraceFilter {
        armed: 1,
        per_cpu_window: u32::MAX,
        client: lb_common::addr::v4(client.octets()),
        client_family: FAMILY_V4,
        client_prefix: 32,
        service_id: lb_common::trace::ANY,
        backend_id: lb_common::trace::ANY,
        ..Default::default()
    })
    .expect("arm");
    let ack = bed.from_client(Pkt::tcp(first, (VIP, 443), ACK)).bytes();
    let prog = bed.dp.program().expect("program");
    let mut events = 0u32;
    let cost = single(prog, bed.client_if, &ack, runs, XDP_REDIRECT, |_, _| {
        while tap.next_event().is_some() {
            events += 1;
        }
    });
    while tap.next_event().is_some() {
        events += 1;
    }
    let want = if its_client { runs } else { 0 };
    assert_eq!(
        events, want,
        "one event per traced packet, none for another client's"
    );
    cost
}

/// `(x, ns per packet)` points of one scaling curve.
pub type Curve = Vec<(u32, f64)>;

/// `CLOCK_MONOTONIC_COARSE`, the clock `bpf_ktime_get_coarse_ns` reads.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Section 2a: with `sizes` flows already in the table, the cost of an established flow's packet
/// (each run the next packet of a flow picked at random from the whole table, so lookups touch
/// memory all over it as real traffic would) and of a new flow's SYN (a client the table has
/// never seen). Returns the two curves.
pub fn by_table_size(sizes: &[u32], budget: &Budget, progress: &mut Progress) -> (Curve, Curve) {
    let (mut established, mut new) = (Vec::new(), Vec::new());
    for &n in sizes {
        progress.step(&format!(
            "scaling: established flow, {n} flows in the table"
        ));
        let mut bed = Bed::with_sizes(DatapathSizes {
            flows: n + 65_536,
            half_open: n + 65_536,
            ring_services: 4,
            ..Default::default()
        });
        flow_cases::three_backends(&mut bed);
        let now = coarse_now_ns();
        let flows: Vec<(FlowKey, FlowEntry)> = (0..n)
            .map(|i| {
                let (addr, port) = client(i);
                let key = FlowKey {
                    src: addr_v4(addr.into()),
                    dst: addr_v4(VIP),
                    src_port: port.to_be(),
                    dst_port: 443u16.to_be(),
                    proto: PROTO_TCP,
                    family: FAMILY_V4,
                    _pad: [0; 2],
                };
                let backend = backend_ip(1 + (i % 3) as usize);
                let reply = FlowKey {
                    src: addr_v4(backend),
                    dst: key.src,
                    src_port: key.dst_port,
                    dst_port: key.src_port,
                    ..key
                };
                // `web`'s backend ports serve VIP:443 alone: its flows derive their replies, as
                // the datapath's own would.
                let entry = FlowEntry {
                    last_seen_ns: now,
                    reply,
                    backend_id: bed.program.backend_id_at("web", backend),
                    state: FlowState::Open as u8,
                    flags: REPLY_DERIVED,
                    ..Default::default()
                };
                (key, entry)
            })
            .collect();
        bed.dp
            .insert_flows(&flows)
            .expect("fill the connection table");
        let prog = bed.dp.program().expect("program");
        let ack = bed
            .from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), ACK))
            .bytes();
        let mut pick = Lcg::seeded(n);
        let ns = single(
            prog,
            bed.client_if,
            &ack,
            budget.scale_runs,
            XDP_REDIRECT,
            |_, frame| set_client(pick.below(n), frame),
        );
        established.push((n, ns));
        new.push((n, new_flows(&bed, budget.scale_runs, n)));
    }
    (established, new)
}

/// The mean cost of `runs` SYNs to VIP:443, each from a new client (clients `first`,
/// `first` + 1, ...), so that the connection table always misses.
fn new_flows(bed: &Bed, runs: u32, first: u32) -> f64 {
    let prog = bed.dp.program().expect("program");
    let syn = bed
        .from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN))
        .bytes();
    single(prog, bed.client_if, &syn, runs, XDP_REDIRECT, |i, frame| {
        set_client(first + i, frame)
    })
}

/// Section 2b: new-flow cost with `counts` backends in the service. Backends share the bed's
/// eight neighbour addresses, on distinct ports, so every choice has a next hop.
pub fn new_flow_by_backends(counts: &[u32], budget: &Budget, progress: &mut Progress) -> Curve {
    let mut curve = Vec::new();
    for &n in counts {
        progress.step(&format!("scaling: new flow, {n} backends"));
        let mut bed = Bed::with_sizes(DatapathSizes {
            flows: budget.scale_runs + 65_536,
            half_open: budget.scale_runs + 65_536,
            ring_services: 4,
            ..Default::default()
        });
        let mut web = service("web", 443, &[]);
        web.backends = (0..n as usize)
            .map(|i| {
                let mut b = backend(&format!("b{i}"), backend_ip(1 + i % MAX_BED_BACKENDS));
                b.port = Some(10_000 + i as u16);
                b
            })
            .collect();
        bed.install(web);
        curve.push((n, new_flows(&bed, budget.scale_runs, 0)));
    }
    curve
}

/// A small deterministic generator (the same flows are picked in every run of the bench).
struct Lcg(u64);

impl Lcg {
    fn seeded(seed: u32) -> Self {
        Self(0x9e37_79b9_7f4a_7c15 ^ seed as u64)
    }

    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as u32
    }
}
