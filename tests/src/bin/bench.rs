//! `cargo xtask bench`: per-packet cost of the real XDP object, measured by the kernel with
//! `BPF_PROG_TEST_RUN` in the datapath test bed. Numbers are printed, never asserted; compare
//! rows of one run, not runs on different machines.
//!
//! `repeat` re-runs the program on the packet it just rewrote, so after the first run a
//! translated packet no longer goes to the VIP. Cases that rewrite are therefore measured as
//! single runs (the kernel still times each one) averaged over many calls; the non-rewriting
//! cases are shown both ways, which shows what the single-run method adds.

use std::net::Ipv4Addr;

use lb_common::settings::DatapathSettings;
use xnlb_tests::{bed::*, packets::*};

const REPEAT: u32 = 1_000_000;
const SINGLE_RUNS: u32 = 200_000;

/// In-kernel repeat: exact for programs that leave the packet as it is.
fn repeated(bed: &Bed, name: &str, ingress: Iface, frame: &[u8], want: u32) {
    let (action, _, per_packet) = bed.run_repeat(ingress, frame, REPEAT);
    assert_eq!(action, want, "{name}: unexpected action");
    println!(
        "| {name:<46} | repeat {REPEAT:>9} | {:>8.1} |",
        per_packet.as_nanos() as f64
    );
}

/// One run per call on a fresh copy of the packet, kernel-timed, averaged.
fn single_runs(bed: &Bed, name: &str, ingress: Iface, frame: &[u8], want: u32) {
    let mut total = std::time::Duration::ZERO;
    for _ in 0..SINGLE_RUNS {
        let (action, _, took) = bed.run_repeat(ingress, frame, 1);
        assert_eq!(action, want, "{name}: unexpected action");
        total += took;
    }
    let ns = total.as_nanos() as f64 / SINGLE_RUNS as f64;
    println!("| {name:<46} | single {SINGLE_RUNS:>9} | {ns:>8.1} |");
}

fn main() {
    let mut bed = Bed::new();
    let backends = (1..=3)
        .map(|n| (n as u32 - 1, backend_ip(n), 0, 100))
        .collect();
    bed.install(&ServiceSpec::tcp(0, 443, backends));
    let client = (client_ip(1), 40_000);
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN)).bytes();
    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK)).bytes();
    let chosen = backend_ip(bed.predict(0, client.0, client.1) as u8 + 1);
    let reply = bed
        .from_backend(Pkt::tcp((chosen, 443), client, ACK), bed.server_if)
        .bytes();
    let other = bed
        .from_client(Pkt::tcp(client, (Ipv4Addr::new(198, 18, 9, 9), 443), ACK))
        .bytes();
    let no_rule = bed.from_client(Pkt::tcp(client, (VIP, 80), SYN)).bytes();

    println!("xnlb datapath, ns/packet as BPF_PROG_TEST_RUN reports it\n");
    println!("| case                                           | method           |   ns/pkt |");
    println!("|------------------------------------------------|------------------|----------|");
    repeated(
        &bed,
        "non-VIP packet (pass)",
        bed.client_if,
        &other,
        XDP_PASS,
    );
    single_runs(
        &bed,
        "non-VIP packet (pass)",
        bed.client_if,
        &other,
        XDP_PASS,
    );
    repeated(
        &bed,
        "VIP port without a rule (drop)",
        bed.client_if,
        &no_rule,
        XDP_DROP,
    );
    bed.run(bed.client_if, &syn);
    single_runs(
        &bed,
        "established flow (client → backend, redirect)",
        bed.client_if,
        &ack,
        XDP_REDIRECT,
    );
    single_runs(
        &bed,
        "reply (backend → client, reverse NAT)",
        bed.server_if,
        &reply,
        XDP_REDIRECT,
    );
    let mut s = DatapathSettings::defaults();
    s.tcp_timeout_ns = 0; // every packet finds its entry expired: the full new-flow path
    bed.settings(&s);
    single_runs(
        &bed,
        "new flow (SYN: select, claim reply, insert)",
        bed.client_if,
        &syn,
        XDP_REDIRECT,
    );
}
