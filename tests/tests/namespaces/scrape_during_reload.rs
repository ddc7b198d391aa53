//! A metrics scrape does not hold up a reload: the controller owns its state and metrics read
//! the maps through their own handles, so scrapes run while a reload of 100 services does.
//!
//! The connection table is filled (through the daemon's pinned maps, as an adopting daemon
//! opens them) so that every scrape reads many flows. Then scrapes run back to back while the
//! reload runs. With a lock shared by the reload and the scrapes, no scrape could start after
//! the reload began and finish before it ended; here scrapes must do exactly that. The
//! durations are printed (run with `--nocapture`) for comparison, not asserted; `XNLB_BIN`
//! runs the same test against another build.
//!
//! Slack: the reload builds 100 Maglev tables and takes several times as long as a scrape
//! (about 500 ms against 65 ms on the project's 2-core machines, debug builds); one scrape
//! inside needs only twice, so a machine slowed down evenly keeps the margin.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use lb_common::{
    addr::{FAMILY_V4, PROTO_TCP},
    flow::{FlowEntry, FlowKey, FlowState},
    limits::MIN_FLOW_ENTRIES,
};
use xnlb::{
    datapath::{Datapath, DatapathSizes, monotonic_ns},
    model::port_rules::addr_v4,
};
use xnlb_tests::{
    daemon::{Daemon, Scrape},
    topology::{Mode, Net, TWO_ARM_CONFIG_HEAD, VIP, backend_ip, client_ip},
};

const METRICS: &str = "127.0.0.1:9779";
const SERVICES: u16 = 100;
/// Flows put in the table: enough that a scrape does real work (every flow is read).
const FLOWS: u32 = 50_000;

/// 100 services on VIP ports 1001..=1100, each over backends 1..=`backends`.
fn config(backends: usize) -> String {
    let mut text = TWO_ARM_CONFIG_HEAD.to_string();
    for s in 1..=SERVICES {
        text += &format!(
            "  - name: s{s}\n    vip: {VIP}\n    ports: [{}]\n    backends:\n",
            1000 + s
        );
        for b in 1..=backends {
            text += &format!("      - {{ name: b{b}, address: {} }}\n", backend_ip(b));
        }
    }
    text + &format!(
        "conntrack:\n  max_entries: {}\nmetrics:\n  listen: {METRICS}\n",
        2 * FLOWS
    )
}

/// Open flows from distinct clients to service s1's port, written into the daemon's pinned
/// connection table.
fn fill_flows(d: &Daemon) {
    let sizes = DatapathSizes {
        flows: 2 * FLOWS,
        half_open: MIN_FLOW_ENTRIES,
        ring_services: SERVICES as u32,
        ..Default::default()
    };
    let (mut dp, adopted) =
        Datapath::load_pinned(sizes, &d.files.pin_dir).expect("open the daemon's maps");
    let adopted = adopted.expect("the daemon's maps are pinned");
    assert!(adopted.report().is_empty(), "{:?}", adopted.report());
    let now = monotonic_ns();
    let flows: Vec<(FlowKey, FlowEntry)> = (0..FLOWS)
        .map(|i| {
            let key = FlowKey {
                src: addr_v4(client_ip((i / 500) as u16)),
                dst: addr_v4(VIP),
                src_port: (10_000 + (i % 500) as u16).to_be(),
                dst_port: 1001u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            };
            let entry = FlowEntry {
                last_seen_ns: now,
                reply: FlowKey {
                    src: addr_v4(backend_ip(1)),
                    dst: key.src,
                    src_port: key.dst_port,
                    dst_port: key.src_port,
                    ..key
                },
                backend_id: 0,
                state: FlowState::Open as u8,
                ..Default::default()
            };
            (key, entry)
        })
        .collect();
    dp.insert_flows(&flows).expect("fill the connection table");
}

/// Times one `xnlb reload`.
fn reload(d: &Daemon) -> (Instant, Instant) {
    let start = Instant::now();
    let out = d.ok(&["reload"]);
    let end = Instant::now();
    assert!(out.contains("reloaded"), "reload: {out}");
    (start, end)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn a_metrics_scrape_does_not_hold_up_a_reload_of_100_services() {
    let net = Net::build(Mode::TwoArm, 3);
    let d = Daemon::start(&net.lb, &config(2));
    fill_flows(&d);
    let scrape = Scrape::take(&net.lb, METRICS);
    assert!(
        scrape.sum("xnlb_conntrack_entries", &[]) >= FLOWS as f64,
        "the scrape sees the filled table"
    );

    // The same reload (a third backend in every service: 100 new tables) twice: alone, then,
    // after going back, with scrapes running back to back.
    d.write_config(&config(3));
    let (start, end) = reload(&d);
    let alone = end - start;
    d.write_config(&config(2));
    reload(&d);

    d.write_config(&config(3));
    let stop = AtomicBool::new(false);
    let (spans, (start, end)) = thread::scope(|scope| {
        let scraper = scope.spawn(|| {
            let mut spans = Vec::new();
            // Bounded: at most 10 000 scrapes, and it stops when told.
            for _ in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let begun = Instant::now();
                Scrape::take(&net.lb, METRICS);
                spans.push((begun, Instant::now()));
            }
            spans
        });
        thread::sleep(Duration::from_millis(200)); // the scrapes are under way
        let reloaded = reload(&d);
        thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        (scraper.join().expect("scraper"), reloaded)
    });
    let during = end - start;

    let inside = spans
        .iter()
        .filter(|(b, e)| *b >= start && *e <= end)
        .count();
    let scrape_times: Vec<f64> = spans.iter().map(|(b, e)| ms(*e - *b)).collect();
    let mean = scrape_times.iter().sum::<f64>() / scrape_times.len() as f64;
    println!(
        "reload of {SERVICES} services with {FLOWS} flows in the table: alone {:.0} ms, \
         under back-to-back scrapes {:.0} ms; {} scrapes (mean {mean:.0} ms), {inside} of them \
         started and finished while the reload ran",
        ms(alone),
        ms(during),
        spans.len()
    );
    assert!(
        inside >= 1,
        "scrapes must run while the reload does: a scrape that waited for the reload could \
         not start after it and finish before it ({} scrapes, mean {mean:.0} ms; reload {:.0} ms)",
        spans.len(),
        ms(during)
    );
}
