//! `cargo xtask bench`: what xnlb costs per packet and end to end, measured in one run side by
//! side with the floor (an XDP program that only parses Ethernet) and with what a user would
//! pick instead (nftables DNAT, HAProxy `mode tcp`), so the numbers that matter are ratios.
//! Writes `target/bench/report.md` and SVG plots beside it; `--publish` also copies them to
//! `docs/bench/`. `--quick` is a one-minute subset. Numbers are reported, never asserted.

mod control;
mod end_to_end;
mod memory;
mod packet_cost;
mod plots;
mod report;
mod sticky_cost;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

/// How long each measurement runs.
pub struct Budget {
    pub quick: bool,
    /// Single kernel-timed runs per per-packet case.
    pub single_runs: u32,
    /// In-kernel repeat for the cases that allow it.
    pub repeat: u32,
    /// Single runs per point of the scaling curves.
    pub scale_runs: u32,
    pub table_builds: usize,
    pub reloads: usize,
    /// Seconds of load per balancer and workload.
    pub e2e_secs: u32,
}

impl Budget {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                single_runs: 100_000,
                repeat: 1_000_000,
                scale_runs: 50_000,
                table_builds: 3,
                reloads: 2,
                e2e_secs: 2,
            }
        } else {
            Self {
                quick,
                single_runs: 1_000_000,
                repeat: 1_000_000,
                scale_runs: 300_000,
                table_builds: 7,
                reloads: 5,
                e2e_secs: 8,
            }
        }
    }
}

/// One line per step on stderr: `[ 5/26  0:42] what`.
pub struct Progress {
    step: usize,
    total: usize,
    start: Instant,
}

impl Progress {
    pub fn step(&mut self, what: &str) {
        self.step += 1;
        let t = self.start.elapsed().as_secs();
        eprintln!(
            "[{:>2}/{}  {}:{:02}] {what}",
            self.step,
            self.total,
            t / 60,
            t % 60
        );
    }
}

pub const TABLE_SIZES: [u32; 3] = [1_000, 100_000, 1_000_000];
pub const BACKEND_COUNTS: [u32; 3] = [3, 100, 1_000];
pub const STICKY_CLIENTS: [u32; 2] = [1_000, 1_000_000];

/// Everything one run measured.
pub struct Results {
    pub packet: packet_cost::PacketCosts,
    /// Established-flow cost by connection-table fill.
    pub by_table_size: packet_cost::Curve,
    /// New-flow (SYN) cost by connection-table fill.
    pub new_by_table_size: packet_cost::Curve,
    pub by_backends: packet_cost::Curve,
    pub sticky: Vec<sticky_cost::StickyRow>,
    pub table_builds: Vec<(u32, Duration)>,
    pub reload: control::Reload,
    pub memory: memory::Footprints,
    pub end_to_end: Vec<end_to_end::Run>,
    pub took: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let unknown: Vec<&String> = args
        .iter()
        .filter(|a| *a != "--quick" && *a != "--publish")
        .collect();
    if !unknown.is_empty() {
        eprintln!("usage: xnlb-bench [--quick] [--publish]   (unknown: {unknown:?})");
        std::process::exit(2);
    }
    let budget = Budget::new(args.iter().any(|a| a == "--quick"));
    let publish = args.iter().any(|a| a == "--publish");
    let mut progress = Progress {
        step: 0,
        total: packet_cost::steps()
            + TABLE_SIZES.len()
            + 2 * BACKEND_COUNTS.len()
            + sticky_cost::steps(&STICKY_CLIENTS)
            + 2
            + end_to_end::BALANCERS.len() * end_to_end::WORKLOADS.len(),
        start: Instant::now(),
    };

    let packet = packet_cost::measure(&budget, &mut progress);
    let (by_table_size, new_by_table_size) =
        packet_cost::by_table_size(&TABLE_SIZES, &budget, &mut progress);
    let by_backends = packet_cost::new_flow_by_backends(&BACKEND_COUNTS, &budget, &mut progress);
    let sticky = sticky_cost::measure(&STICKY_CLIENTS, &budget, &mut progress);
    let table_builds = control::maglev_build(&BACKEND_COUNTS, &budget, &mut progress);
    let reload = control::reload(&budget, &mut progress);
    let memory = memory::footprints(&mut progress);
    let end_to_end = end_to_end::measure_all(&budget, &mut progress);
    let results = Results {
        packet,
        by_table_size,
        new_by_table_size,
        by_backends,
        sticky,
        table_builds,
        reload,
        memory,
        end_to_end,
        took: progress.start.elapsed(),
    };

    let out = workspace_root().join("target/bench");
    report::write(&out, &results, &budget).expect("write the report");
    println!("{}", report::summary(&results));
    println!("report: {}", out.join("report.md").display());
    if publish {
        let docs = workspace_root().join("docs/bench");
        report::copy(&out, &docs).expect("copy the report to docs/bench");
        println!("published: {}", docs.display());
    }
}

/// The checkout: two levels above this crate's manifest.
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
