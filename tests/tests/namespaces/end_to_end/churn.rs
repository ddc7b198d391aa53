//! Reload churn that recycles backend ids, with a `kill -9` in the middle of one reload. Under
//! steady new connections and long transfers, the config alternates between `web` over b1-b3 and
//! `web` over b1-b2 plus `big`, a service of 1,000 backends on another port that gets no
//! traffic: each swap retires a thousand ids and the id book soon hands them out again, b3's
//! among them. No connection may reach a backend it was not balanced to, and afterwards every
//! flow in the pinned maps must name, under its backend id, the backend it was translated to,
//! one of its service's current ones.

use super::*;
use aya::maps::{Array, HashMap as AyaHashMap, LpmTrie, Map, MapData};
use lb_common::{
    addr::PROTO_TCP,
    backend::BackendInfo,
    flow::{FlowEntry, FlowKey},
    maps as names,
    service::{ServiceRule, ServiceRuleKey},
};
use xnlb::model::port_rules::{RuleKey, addr_v4};

/// Backends of `big`: 198.18.4.1 onwards (no host has them; nothing is sent there).
const BIG: usize = 1000;
/// Reloads: B, A, B, A, B; the `kill -9` lands in the third.
const RELOADS: usize = 5;
const KILLED_IN: usize = 3;
/// Transfers across the whole churn: 1,500 ticks of 20 ms (30 s), several times the churn (4 s
/// seen here alone, 8-9 s beside the other mode's run, so a machine three times slower still
/// churns within them); each is checked to still run when the churn ends.
const TICKS: usize = 1500;

fn big_backend(i: usize) -> Ipv4Addr {
    let n = 4 * 256 + 1 + i;
    Ipv4Addr::new(198, 18, (n / 256) as u8, (n % 256) as u8)
}

fn config(farm: &Farm, with_big: bool) -> String {
    let mut services = Vec::new();
    let web: &[usize] = if with_big { &[1, 2] } else { &[1, 2, 3] };
    services.push(farm.service(
        "web",
        HTTP,
        "    affinity: none\n",
        &farm.backends(web, |_| "".into()),
    ));
    if with_big {
        let backends: String = (0..BIG)
            .map(|i| format!("      - {{ name: x{i}, address: {} }}\n", big_backend(i)))
            .collect();
        services.push(farm.service("big", 8080, "", &backends));
    }
    farm.config(&services)
}

pub(super) fn churn(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let mode_name = farm.mode();
    let mut d = Daemon::start(&farm.net.lb, &config(&farm, false));
    let clients = farm.net.client_addresses(8);
    let transfers: Vec<Transfer> = (0..30)
        .map(|i| farm.transfer(clients[i % clients.len()], TICKS))
        .collect();

    let churning = std::sync::atomic::AtomicBool::new(true);
    let (answers, failures, (cut_reload, took)) = thread::scope(|s| {
        // Steady new connections: every answer must come from one of web's backends.
        let traffic = s.spawn(|| {
            let (mut answers, mut failures) = (Vec::new(), Vec::new());
            let mut i = 0;
            while churning.load(std::sync::atomic::Ordering::Relaxed) && i < 50_000 {
                let src = clients[i % clients.len()];
                i += 1;
                match farm.try_get(src, HTTP) {
                    Ok(backend) => answers.push(backend),
                    Err(e) => failures.push((Instant::now(), e)),
                }
                // Steady, not flat out: the churn needs the CPU too.
                thread::sleep(Duration::from_millis(2));
            }
            (answers, failures)
        });
        let mut cut_reload = None;
        let start = Instant::now();
        for n in 1..=RELOADS {
            let with_big = n % 2 == 1;
            d.write_config(&config(&farm, with_big));
            if n == KILLED_IN {
                // The reload is asked for, and the daemon killed while it works on a thousand
                // backends (or just after, on a fast machine: either must leave sane maps).
                let mut reload = d.cli_spawn(&["reload"]);
                thread::sleep(Duration::from_millis(5));
                d.kill9();
                let out = reload.wait().expect("xnlb reload");
                cut_reload = Some(out.success());
                d.spawn(&farm.net.lb);
            } else {
                d.ok(&["reload"]);
            }
        }
        let took = start.elapsed();
        churning.store(false, std::sync::atomic::Ordering::Relaxed);
        let (answers, failures) = traffic.join().expect("traffic");
        (answers, failures, (cut_reload, took))
    });
    // Those on b3 end when a reload removes it (their client times out); the others must still
    // be going, so that the churn happened during them.
    assert!(
        transfers.iter().all(|t| t.backend == "b3" || t.running()),
        "{mode_name}: the transfers must span the churn (raise TICKS for this machine)"
    );

    // Transfers on b1 and b2 lived through every reload and the restart; those on b3 ended
    // with it (it left at the first reload).
    let mut broken = Vec::new();
    let mut kept = 0;
    for t in transfers {
        let b = t.backend.clone();
        let result = t.finish();
        if b != "b3" {
            kept += 1;
            if let Err(e) = result {
                broken.push(format!("{b}: {e}"));
            }
        }
    }
    let counts = tally(&answers);
    let misrouted: Vec<&String> = answers
        .iter()
        .filter(|b| !["b1", "b2", "b3"].contains(&b.as_str()))
        .collect();
    // A connection still open to b3 when a reload removes it is reset: tolerated, and only
    // then. A misrouted one would time out (nothing answers at big's addresses).
    let timeouts: Vec<_> = failures
        .iter()
        .filter(|(_, e)| e.kind() == std::io::ErrorKind::TimedOut)
        .collect();
    let status = d.status_json();
    let scrape = farm.scrape();
    let removed = scrape.sum("xnlb_flow_events_total", &[("event", "foreign_removed")]);
    let (check, wrong) = check_maps(&d, farm.net.vip(), &[1, 2].map(|n| farm.net.backend_ip(n)));
    println!(
        "{mode_name}: {RELOADS} reloads in {took:.1?} (kill -9 during #{KILLED_IN}: reload \
         {}), {} new connections ({}), {} failed ({} timed out); {} of {kept} transfers on \
         b1/b2 broken; {removed} flows of removed backends removed; maps: {check}; status \
         conntrack: {}",
        match cut_reload {
            Some(true) => "had finished",
            _ => "was cut",
        },
        answers.len(),
        shares(&counts),
        failures.len(),
        timeouts.len(),
        broken.len(),
        status["conntrack"]
    );
    assert!(
        wrong.is_empty(),
        "{mode_name}: flows on the wrong backend: {wrong:?}"
    );
    assert!(
        misrouted.is_empty(),
        "{mode_name}: misrouted: {misrouted:?}"
    );
    assert!(timeouts.is_empty(), "{mode_name}: timed out: {timeouts:?}");
    // The traffic is one connection at a time, so each reload can cut at most the one in flight.
    assert!(
        failures.len() <= RELOADS,
        "{mode_name}: {} connections failed in {RELOADS} reloads: {failures:?}",
        failures.len()
    );
    assert!(broken.is_empty(), "{mode_name}: {broken:?}");
    assert!(
        answers.len() >= 20,
        "{mode_name}: only {} connections during the churn",
        answers.len()
    );
    let big_packets = farm
        .scrape()
        .sum("xnlb_packets_total", &[("service", "big")]);
    assert_eq!(
        big_packets, 0.0,
        "{mode_name}: nothing was sent to big's backends"
    );
}

/// Reads the daemon's pinned maps by path (no program loaded, so any xnlb's maps can be read):
/// every flow (established and half-open) to the VIP's web port must find, under its backend id,
/// the web backend at the address it was translated to, and that address must be one of `web`'s.
/// Returns what it checked, for the log, and the flows that break the rule.
fn check_maps(d: &Daemon, vip: Ipv4Addr, web: &[Ipv4Addr]) -> (String, Vec<String>) {
    let pinned = |name: &str| MapData::from_pin(d.files.pin_dir.join(name));
    let rules: LpmTrie<MapData, ServiceRuleKey, ServiceRule> =
        LpmTrie::try_from(Map::LpmTrie(pinned(names::SERVICE_RULES).expect("rules")))
            .expect("rules map");
    let web_id = rules
        .iter()
        .map(|r| r.expect("rule"))
        .find(|(key, _)| {
            RuleKey::from_kernel(key.prefix_len(), &key.data()).covers(vip.into(), PROTO_TCP, HTTP)
        })
        .map(|(_, rule)| rule.service_id)
        .expect("web's rule");
    let backends: Array<MapData, BackendInfo> =
        Array::try_from(Map::Array(pinned(names::BACKENDS).expect("backends"))).expect("array");
    let mut flows = Vec::new();
    let mut established = 0;
    for (name, required) in [(names::FLOWS, true), (names::HALF_OPEN, false)] {
        let Ok(data) = pinned(name) else {
            assert!(!required, "{name} is pinned");
            continue;
        };
        let map: AyaHashMap<MapData, FlowKey, FlowEntry> =
            AyaHashMap::try_from(Map::LruHashMap(data)).expect("flow map");
        let entries: Vec<(FlowKey, FlowEntry)> = map.iter().map(|e| e.expect("flow")).collect();
        if name == names::FLOWS {
            established = entries.len();
        }
        flows.extend(entries);
    }
    let mut wrong = Vec::new();
    for (key, flow) in &flows {
        let backend = backends.get(&flow.backend_id, 0).expect("backend");
        let addr = Ipv4Addr::from(flow.reply.src[0].to_ne_bytes());
        if key.dst != addr_v4(vip) || u16::from_be(key.dst_port) != HTTP {
            wrong.push(format!("a flow to a port nobody uses: {key:?}"));
        } else if !backend.is(web_id, &flow.reply.src) {
            wrong.push(format!(
                "flow to {addr} under id {} which holds {backend:?}",
                flow.backend_id
            ));
        } else if !web.contains(&addr) {
            wrong.push(format!("flow to {addr}, not one of web's backends"));
        }
    }
    let summary = format!(
        "{} flows ({established} established), {} wrong",
        flows.len(),
        wrong.len()
    );
    (summary, wrong)
}
