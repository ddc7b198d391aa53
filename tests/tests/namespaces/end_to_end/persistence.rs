//! Extended affinity end to end: 60 clients with `affinity: single`, a sticky timeout and a
//! persistence group of two services (`owa` on :80, `rpc` on :135, both to the backends' :80),
//! beside a service without stickiness that shows what the ring alone would do.

use super::*;

const FAST: &str = "    health:\n      http: { path: /owa/healthcheck.htm, port: 80 }\n      interval: 300ms\n      timeout: 200ms\n      rise: 2\n      fall: 2\n";
const RPC: u16 = 135;
const PLAIN: u16 = 82;
/// Long enough that no step of the test (a round of 60 requests, a health change) comes near
/// it on a loaded machine; the expiry step shortens it by reload instead of waiting it out.
const TIMEOUT: &str = "60s";

fn config(farm: &Farm, backends: &[usize], timeout: &str) -> String {
    let sticky = format!(
        "    affinity: single\n    sticky_timeout: {timeout}\n    persistence_group: cas\n"
    );
    let list = farm.backends(backends, |_| "".into());
    farm.config(&[
        farm.service("owa", HTTP, &sticky, &list) + FAST,
        farm.service("rpc", RPC, &sticky, &list) + FAST,
        farm.service("plain", PLAIN, "    affinity: single\n", &list) + FAST,
    ])
}

/// Every client's backend on VIP:`port`, one new connection each.
fn round(farm: &Farm, clients: &[Ipv4Addr], port: u16) -> Vec<String> {
    clients.iter().map(|&c| farm.get(c, port)).collect()
}

fn differing(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn all_up(d: &Daemon, backend: &'static str) {
    let each: Vec<(&str, &str)> = ["owa", "rpc", "plain"].map(|s| (s, backend)).to_vec();
    d.wait_state(&each, "up", LIMIT);
}

pub(super) fn persistence(mode: Mode) {
    let farm = Farm::new(mode, 4);
    let m = farm.mode();
    let mut d = Daemon::start(&farm.net.lb, &config(&farm, &[1, 2, 3], TIMEOUT));
    for b in ["b1", "b2", "b3"] {
        all_up(&d, b);
    }
    let clients = farm.net.client_addresses(59);
    let first = round(&farm, &clients, HTTP);
    let plain_before = round(&farm, &clients, PLAIN);
    assert_eq!(
        round(&farm, &clients, RPC),
        first,
        "{m}: the group's services agree"
    );

    // A backend added: no sticky client moves; the ring alone moves about a quarter.
    d.write_config(&config(&farm, &[1, 2, 3, 4], TIMEOUT));
    d.ok(&["reload"]);
    all_up(&d, "b4");
    let after_add = round(&farm, &clients, HTTP);
    let plain_moved = differing(&plain_before, &round(&farm, &clients, PLAIN));
    println!(
        "{m}: adding b4 moved {} of {} sticky clients; {plain_moved} of the same clients moved \
         without stickiness",
        differing(&first, &after_add),
        clients.len()
    );
    assert_eq!(after_add, first, "{m}: no sticky client moves");
    assert!(
        plain_moved > 0,
        "{m}: the ring alone would have moved clients"
    );
    assert_eq!(round(&farm, &clients, RPC), first, "{m}: rpc follows owa");

    // b1 down: only its clients move, once; they stay on their new backend when b1 returns.
    let on_b1 = first.iter().filter(|b| *b == "b1").count();
    farm.web[0].set(HEALTH, Answer::Status(503));
    d.wait_state(&[("owa", "b1"), ("rpc", "b1")], "down", LIMIT);
    let moved = round(&farm, &clients, HTTP);
    for (i, (was, now)) in first.iter().zip(&moved).enumerate() {
        if was == "b1" {
            assert_ne!(now, "b1", "{m}: client {} leaves down b1", clients[i]);
        } else {
            assert_eq!(now, was, "{m}: client {} is not b1's and stays", clients[i]);
        }
    }
    farm.web[0].set(HEALTH, Answer::Status(200));
    all_up(&d, "b1");
    assert_eq!(
        round(&farm, &clients, HTTP),
        moved,
        "{m}: b1's clients stay where they went"
    );
    assert_eq!(round(&farm, &clients, RPC), moved, "{m}: on rpc as well");
    println!("{m}: b1 down moved its {on_b1} clients and no other; none went back");

    // A restart (SIGTERM, as `systemctl restart` sends, then a new daemon adopting the pinned
    // maps): the sticky table survives, so b1's former clients still do not go back to it.
    let pid = d.pid().expect("running") as i32;
    // SAFETY: signals the test's own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    d.wait_exit(Duration::from_secs(30));
    d.spawn(&farm.net.lb);
    for b in ["b1", "b2", "b3", "b4"] {
        all_up(&d, b);
    }
    assert_eq!(
        round(&farm, &clients, HTTP),
        moved,
        "{m}: every client stays where it went across a restart"
    );

    // The administrator's view: 60 clients, per backend as they went.
    let listed = d.ok(&["sticky", "list", "owa"]);
    assert!(
        listed.contains(&format!("{} sticky clients", clients.len())),
        "{m}: {listed}"
    );
    let status = d.status_json();
    for b in ["b1", "b2", "b3", "b4"] {
        let held = moved.iter().filter(|x| *x == b).count() as u64;
        assert_eq!(
            backend_of(&status, "rpc", b)["sticky_clients"],
            held,
            "{m}: status counts {b}'s sticky clients"
        );
    }
    let on_b2 = moved.iter().filter(|x| *x == "b2").count();
    let cleared = d.ok(&["sticky", "clear", "owa", "--backend", "b2"]);
    assert!(
        cleared.contains(&format!("cleared {on_b2} sticky entries held to b2")),
        "{m}: {cleared}"
    );

    // Past the timeout (shortened by reload to 1 s, then 1.5 s of silence): clients are
    // balanced by the ring again, and some of b1's former clients go back to it.
    d.write_config(&config(&farm, &[1, 2, 3, 4], "1s"));
    d.ok(&["reload"]);
    thread::sleep(Duration::from_millis(1_500));
    let rehashed = round(&farm, &clients, HTTP);
    let back_on_b1 = first
        .iter()
        .zip(&rehashed)
        .filter(|(was, now)| *was == "b1" && *now == "b1")
        .count();
    println!(
        "{m}: after the timeout {} of {} clients re-hashed elsewhere, {back_on_b1} of b1's \
         first {on_b1} clients back on b1",
        differing(&moved, &rehashed),
        clients.len()
    );
    assert!(back_on_b1 > 0, "{m}: {first:?} → {rehashed:?}");
    let scrape = farm.scrape();
    assert_eq!(
        scrape.sum("xnlb_flow_events_total", &[("event", "sticky_cleared")]),
        on_b2 as f64
    );
    assert!(scrape.sum("xnlb_flow_events_total", &[("event", "sticky_expired")]) >= 1.0);
}

/// `on_backend_down`: with `keep` a transfer to a backend whose health check fails runs to its
/// end; with `reset` (the default) it is broken at the client's next packet.
pub(super) fn keep_or_reset(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let m = farm.mode();
    let list = farm.backends(&[1, 2, 3], |_| "".into());
    let keep = "    affinity: single\n    on_backend_down: keep\n";
    let config = farm.config(&[
        farm.service("kept", HTTP, keep, &list) + FAST,
        farm.service("reset", PLAIN, "    affinity: single\n", &list) + FAST,
    ]);
    let d = Daemon::start(&farm.net.lb, &config);
    let all: Vec<(&str, &str)> = ["b1", "b2", "b3"]
        .into_iter()
        .flat_map(|b| [("kept", b), ("reset", b)])
        .collect();
    d.wait_state(&all, "up", LIMIT);
    let clients = farm.net.client_addresses(59);
    let on_b1 = |port| {
        *clients
            .iter()
            .find(|&&c| farm.get(c, port) == "b1")
            .unwrap_or_else(|| panic!("{m}: no client reaches b1 on port {port}"))
    };
    // 400 ticks of 20 ms: 8 s, ten times the 0.8 s detection bound (fall 2 × 300 ms + 200 ms),
    // the slack for a loaded machine to notice b1's failure while the transfers run.
    let start = |port| {
        Transfer::start(&farm.net.client, on_b1(port), farm.vip(port), 400)
            .unwrap_or_else(|e| panic!("{m}: transfer on {port}: {e}"))
    };
    let (kept, reset) = (start(HTTP), start(PLAIN));
    assert_eq!(
        (kept.backend.as_str(), reset.backend.as_str()),
        ("b1", "b1")
    );
    assert!(
        kept.running() && reset.running(),
        "{m}: both run when b1 fails"
    );
    farm.web[0].set(HEALTH, Answer::Status(503));
    d.wait_state(&[("kept", "b1"), ("reset", "b1")], "down", LIMIT);
    // (The reset one may already be broken: the client's next ACK after the change moves it.)
    assert!(kept.running(), "{m}: the kept transfer spans the failure");
    let kept = kept
        .finish()
        .unwrap_or_else(|e| panic!("{m}: keep: the transfer to failed b1: {e}"));
    let reset = reset.finish();
    println!("{m}: b1 failed mid-transfer: keep finished {kept} bytes; reset: {reset:?}");
    assert!(reset.is_err(), "{m}: reset ends the transfer to failed b1");
}
