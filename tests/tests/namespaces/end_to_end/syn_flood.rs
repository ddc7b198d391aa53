//! A spoofed-SYN flood against a small connection table, with long-lived transfers and new
//! connections going on. SYNs that never complete stay half-open, in a table of their own: they
//! evict each other, never an established flow. Before half-open flows were kept apart, such a
//! flood evicted established flows and their replies left untranslated, resetting the client.

use xnlb_tests::addresses::remote_client;

use super::*;

/// The smallest table a config allows (`conntrack.max_entries`, and the half-open table it
/// derives).
const TABLE: usize = 1024;
/// Spoofed SYNs: 40 times the table (the bar is 20 times).
const FLOOD: usize = 40 * TABLE;
/// Long-lived transfers through the flood.
const TRANSFERS: usize = 200;
/// The flood is paced: bursts of this many SYNs, one per `BURST_GAP` at most (25,000 SYNs/s,
/// about 1.6 s in all; the adversarial run that found the problem used 12,500/s and 77,000/s).
/// Unpaced, the client's veth outruns what the balancer's side can queue and drops most of it.
const BURST: usize = 256;
const BURST_GAP: Duration = Duration::from_millis(10);
/// Each transfer lasts this many 20 ms ticks (10 s): six times the paced flood, so a slow, shared
/// machine still floods while every transfer is running (checked, not assumed).
const TICKS: usize = 500;
/// New connections during the flood, one after another, at most this many: with the transfers
/// and each closed connection's entry (kept `tcp_closing_timeout`), well inside the table, so
/// any established eviction would be the flood's.
const REAL: usize = 300;
/// At most this long for the flood, however slow the machine.
const FLOOD_LIMIT: Duration = Duration::from_secs(8);

pub(super) fn syn_flood(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let mode_name = farm.mode();
    let config = format!("{}conntrack:\n  max_entries: {TABLE}\n", farm.web_config());
    let d = Daemon::start(&farm.net.lb, &config);
    let clients = farm.net.client_addresses(20);
    let transfers: Vec<Transfer> = (0..TRANSFERS)
        .map(|i| farm.transfer(clients[i % clients.len()], TICKS))
        .collect();

    // Spoofed sources: 198.19.128.0/17, routed to the client namespace, which owns none of
    // them and drops what the backends answer (forwarding is off there).
    let vip = farm.net.vip();
    let frame = farm.on_the_wire();
    let spoofed = |i: usize| {
        let src = remote_client(128 + (i / 250 % 128) as u8, 1 + (i % 250) as u8);
        let port = 1024 + (i / 32_000) as u16;
        frame(Pkt::tcp((src, port), (vip, HTTP), SYN))
    };
    let frames: Vec<Vec<u8>> = (0..FLOOD).map(spoofed).collect();

    let before = farm.scrape();
    let flooding = std::sync::atomic::AtomicBool::new(true);
    let (sent, elapsed, attempts, failures) = thread::scope(|s| {
        // New connections while the flood lasts.
        let real = s.spawn(|| {
            let (mut attempts, mut failures) = (0usize, Vec::new());
            while attempts < REAL && flooding.load(std::sync::atomic::Ordering::Relaxed) {
                let src = clients[attempts % clients.len()];
                attempts += 1;
                if let Err(e) = farm.try_get(src, HTTP) {
                    failures.push(format!("{src}: {e}"));
                }
            }
            (attempts, failures)
        });
        let sender = FrameSender::open(&farm.net.client, "eth0");
        let start = Instant::now();
        let mut sent = 0;
        for burst in frames.chunks(BURST) {
            let due = start + BURST_GAP * (sent / BURST) as u32;
            thread::sleep(due.saturating_duration_since(Instant::now()));
            assert!(
                transfers.iter().all(Transfer::running),
                "{mode_name}: a transfer ended after {sent} SYNs: the flood must run while \
                 they all do (raise TICKS for this machine)"
            );
            for f in burst {
                sender.send(f).expect("send a spoofed SYN");
            }
            sent += burst.len();
            if start.elapsed() > FLOOD_LIMIT {
                break;
            }
        }
        let elapsed = start.elapsed();
        flooding.store(false, std::sync::atomic::Ordering::Relaxed);
        let (attempts, failures) = real.join().expect("real connections");
        (sent, elapsed, attempts, failures)
    });
    let during = farm.scrape();
    // SYNs that reached the datapath and became half-open flows (the flood's, and the real
    // connections').
    let arrived = during.since(
        &before,
        "xnlb_flow_events_total",
        &[("event", "half_open_new")],
    ) as usize;

    let mut broken = Vec::new();
    for (i, t) in transfers.into_iter().enumerate() {
        if let Err(e) = t.finish() {
            broken.push(format!("transfer {i}: {e}"));
        }
    }
    let after = farm.scrape();
    let evicted = |table: &str| after.sum("xnlb_conntrack_evictions_total", &[("table", table)]);
    let status = d.status_json();
    println!(
        "{mode_name}: {sent} spoofed SYNs in {elapsed:.1?} ({:.0}/s), {arrived} half-open \
         flows made; {} of {TRANSFERS} transfers broken; {} of {attempts} new connections \
         failed; evicted: {} established, {} half-open; half-open entries during the flood: \
         {}; status conntrack: {}",
        sent as f64 / elapsed.as_secs_f64(),
        broken.len(),
        failures.len(),
        evicted("established"),
        evicted("half_open"),
        during.sum("xnlb_conntrack_half_open_entries", &[]),
        status["conntrack"]
    );
    assert!(
        broken.is_empty(),
        "{mode_name}: transfers broken by the flood: {broken:?}"
    );
    assert!(
        arrived >= 20 * TABLE,
        "{mode_name}: only {arrived} of {sent} SYNs reached the balancer in {FLOOD_LIMIT:?}"
    );
    assert!(
        attempts >= 20,
        "{mode_name}: only {attempts} new connections while flooding: not a measurement"
    );
    assert!(
        failures.len() * 100 <= attempts,
        "{mode_name}: {} of {attempts} new connections failed during the flood: {failures:?}",
        failures.len()
    );
    assert_eq!(
        evicted("established"),
        0.0,
        "{mode_name}: no established flow evicted"
    );
    assert!(
        evicted("half_open") >= (arrived - attempts - TABLE) as f64,
        "{mode_name}: the flood's SYNs evicted each other"
    );
    assert_eq!(
        status["conntrack"]["half_open_max_entries"], TABLE,
        "{mode_name}: status reports the half-open table"
    );
    assert!(
        during.sum("xnlb_conntrack_half_open_entries", &[]) > 0.0,
        "{mode_name}: half-open entries are counted"
    );
}
