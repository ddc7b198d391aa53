//! Health, drain, and adding a backend by reload, with transfers that must survive.

use super::*;

const FAST: &str = "    health:\n      http: { path: /owa/healthcheck.htm, port: 80 }\n      interval: 300ms\n      timeout: 200ms\n      rise: 2\n      fall: 2\n";
/// fall × interval + timeout + 1 s, the bound for the fast settings.
const DETECTION_BOUND: Duration = Duration::from_millis(2 * 300 + 200 + 1000);

fn owa(farm: &Farm, backends: &[usize]) -> String {
    let rest = "    affinity: single\n";
    let service = farm.service("owa", HTTP, rest, &farm.backends(backends, |_| "".into()));
    farm.config(&[service + FAST])
}

/// The client (of `clients`) whose connections go to `backend` under affinity single.
fn client_of(farm: &Farm, clients: &[Ipv4Addr], backend: &str) -> Ipv4Addr {
    *clients
        .iter()
        .find(|&&c| farm.get(c, HTTP) == backend)
        .unwrap_or_else(|| panic!("no client reaches {backend}"))
}

pub(super) fn lifecycle(mode: Mode) {
    let farm = Farm::new(mode, 4);
    let mode_name = farm.mode();
    let d = Daemon::start(&farm.net.lb, &owa(&farm, &[1, 2, 3]));
    let backends = [("owa", "b1"), ("owa", "b2"), ("owa", "b3")];
    d.wait_state(&backends, "up", LIMIT);
    let clients = farm.net.client_addresses(59);

    // 3. Health. A transfer to b1 runs throughout while b2's page fails and comes back.
    let held = farm.transfer(client_of(&farm, &clients, "b1"), 300);
    assert_eq!(held.backend, "b1");
    let failed_at = Instant::now();
    farm.web[1].set(HEALTH, Answer::Status(503));
    let mut last_hit = None;
    let mut after_down = 0;
    let mut race = xnlb_tests::apps::RemovalRace::default();
    let mut i = 0;
    // New connections until b2 is shown down, then 40 more: none may reach it.
    while after_down < 40 {
        assert!(
            failed_at.elapsed() < LIMIT,
            "{mode_name}: b2 never went down\n{}",
            d.log()
        );
        let src = clients[i % clients.len()];
        i += 1;
        let backend = match farm.try_get(src, HTTP) {
            Ok(backend) => backend,
            Err(e) if race.tolerate(mode_name, &e, after_down > 0) => continue,
            Err(e) => panic!(
                "{mode_name}: GET from {src}: {e} ({} resets before)",
                race.resets()
            ),
        };
        if backend == "b2" {
            assert_eq!(
                after_down, 0,
                "{mode_name}: b2 got a connection after it was shown down"
            );
            last_hit = Some(failed_at.elapsed());
        }
        if after_down > 0 || backend_of(&d.status_json(), "owa", "b2")["state"] == "down" {
            after_down += 1;
        }
    }
    let last_hit = last_hit.expect("b2 took connections before it failed");
    println!(
        "{mode_name}: last new connection to b2 {:.2}s after its page failed (bound {:.1}s)",
        last_hit.as_secs_f64(),
        DETECTION_BOUND.as_secs_f64()
    );
    assert!(last_hit <= DETECTION_BOUND, "{mode_name}: {last_hit:?}");
    farm.web[1].set(HEALTH, Answer::Status(200));
    let back = d.wait_state(&[("owa", "b2")], "up", LIMIT);
    let b2_client = client_of(&farm, &clients, "b2");
    assert!(
        held.running(),
        "{mode_name}: the transfer must span the failure and the return"
    );
    println!(
        "{mode_name}: b2 back in rotation {:.2}s after its page recovered (client {b2_client})",
        back.as_secs_f64()
    );
    let held = held
        .finish()
        .unwrap_or_else(|e| panic!("{mode_name}: transfer to b1: {e}"));
    println!("{mode_name}: the transfer to b1 ran throughout: {held} bytes");

    // 4. Drain: the transfer to b3 completes; no new connection reaches b3.
    let draining = farm.transfer(client_of(&farm, &clients, "b3"), 100);
    d.ok(&["drain", "owa", "b3"]);
    let after: Vec<String> = clients.iter().map(|&c| farm.get(c, HTTP)).collect();
    assert!(
        draining.running(),
        "{mode_name}: the transfer must span the drain"
    );
    assert!(
        !after.contains(&"b3".to_string()),
        "{mode_name}: drained b3 got new connections"
    );
    draining
        .finish()
        .unwrap_or_else(|e| panic!("{mode_name}: transfer to drained b3: {e}"));
    d.ok(&["enable", "owa", "b3"]);
    d.wait_state(&[("owa", "b3")], "up", LIMIT);

    // 5. Reload adding b4: transfers to b1..b3 survive; affinity clients that move go to b4.
    let before: Vec<String> = clients.iter().map(|&c| farm.get(c, HTTP)).collect();
    let transfers: Vec<Transfer> = ["b1", "b2", "b3"]
        .iter()
        .map(|b| farm.transfer(client_of(&farm, &clients, b), 150))
        .collect();
    d.write_config(&owa(&farm, &[1, 2, 3, 4]));
    d.ok(&["reload"]);
    d.wait_state(&[("owa", "b4")], "up", LIMIT);
    let after: Vec<String> = clients.iter().map(|&c| farm.get(c, HTTP)).collect();
    assert!(
        transfers.iter().all(Transfer::running),
        "{mode_name}: the transfers must span the reload"
    );
    let moved: Vec<(&String, &String)> =
        before.iter().zip(&after).filter(|(a, b)| a != b).collect();
    println!(
        "{mode_name}: adding b4 moved {} of {} affinity clients ({:.0}%; ideal 25%)",
        moved.len(),
        clients.len(),
        100.0 * moved.len() as f64 / clients.len() as f64
    );
    assert!(
        moved.iter().all(|(_, to)| *to == "b4"),
        "{mode_name}: {moved:?}"
    );
    assert!(
        !moved.is_empty() && moved.len() * 2 < clients.len(),
        "{mode_name}: {moved:?}"
    );
    for t in transfers {
        let b = t.backend.clone();
        t.finish()
            .unwrap_or_else(|e| panic!("{mode_name}: transfer to {b} across the reload: {e}"));
    }
}

// 6. Fail-static.

/// A reload that renames the service (same VIP, protocol, ports and backends): the service is
/// the same to the datapath, so its connections go on and its backends stay in rotation with
/// the health they had, under the new name. Before, the renamed service's backends got new ids:
/// its connections were reset and, with a health check, its backends started down.
/// Finishes transfers started before a reload: each that completes must have been running
/// after it (`spanning`, taken right after the reload); returns the errors of those that broke.
fn finish_across_reload(
    transfers: Vec<Transfer>,
    spanning: Vec<bool>,
    mode_name: &str,
) -> Vec<String> {
    let mut broken = Vec::new();
    for (t, spanned) in transfers.into_iter().zip(spanning) {
        match t.finish() {
            Ok(_) => assert!(spanned, "{mode_name}: the transfers must span the reload"),
            Err(e) => broken.push(e),
        }
    }
    broken
}

pub(super) fn rename(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let mode_name = farm.mode();
    let d = Daemon::start(&farm.net.lb, &owa(&farm, &[1, 2, 3]));
    d.wait_state(&[("owa", "b1"), ("owa", "b2"), ("owa", "b3")], "up", LIMIT);
    let clients = farm.net.client_addresses(19);
    // 20 transfers of 300 ticks (6 s); the reload and the checks after it take well under a
    // second here, so a machine several times slower still reloads during them.
    let transfers: Vec<Transfer> = clients.iter().map(|&c| farm.transfer(c, 300)).collect();
    let before = farm.scrape();
    d.write_config(&owa(&farm, &[1, 2, 3]).replace("name: owa", "name: mail"));
    d.ok(&["reload"]);
    let status = d.status_json();
    let states: Vec<&str> = status["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["state"].as_str().unwrap_or("?"))
        .collect();
    let spanning: Vec<bool> = transfers.iter().map(Transfer::running).collect();
    let served = farm.try_get(clients[0], HTTP);
    let broken = finish_across_reload(transfers, spanning, mode_name);
    let after = farm.scrape();
    let delta = |event: &str| after.since(&before, "xnlb_flow_events_total", &[("event", event)]);
    println!(
        "{mode_name}: renamed owa to mail under 20 transfers: {} broken; backends {states:?}; \
         a new connection right after: {}; re-selected {}, removed {}",
        broken.len(),
        if served.is_ok() { "answered" } else { "failed" },
        delta("backend_retired") + delta("reselected_down"),
        delta("foreign_removed")
    );
    assert_eq!(status["services"][0]["name"], "mail");
    assert_eq!(states, ["up", "up", "up"], "{mode_name}: still in rotation");
    assert!(
        served.is_ok(),
        "{mode_name}: a new connection right after the reload: {served:?}"
    );
    assert!(broken.is_empty(), "{mode_name}: {broken:?}");
    assert_eq!(
        delta("foreign_removed"),
        0.0,
        "{mode_name}: no flow removed"
    );
    assert_eq!(
        delta("backend_retired") + delta("reselected_down"),
        0.0,
        "{mode_name}: no flow re-selected"
    );
}

/// The alternate port of `regroup`'s services (the backends serve both on :80).
const ALT: u16 = 8081;

/// A reload that splits a service in two over the same backends, then one that merges them
/// back, each under 20 transfers (10 on each port) with health checks: no transfer breaks, the
/// backends stay in rotation in every service, new connections are answered at once, and the
/// flows are re-pointed at their new service's backends, never re-selected or removed.
pub(super) fn regroup(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let mode_name = farm.mode();
    let backends = farm.backends(&[1, 2, 3], |_| "".into());
    let service = |name: &str, ports: &str| {
        farm.service(name, HTTP, "    affinity: single\n", &backends)
            .replace(&format!("ports: [{HTTP}]"), &format!("ports: [{ports}]"))
            + FAST
    };
    let merged = farm.config(&[service("mail", &format!("{HTTP}, {ALT}"))]);
    let split = farm.config(&[
        service("web", &HTTP.to_string()),
        service("alt", &ALT.to_string()),
    ]);
    let d = Daemon::start(&farm.net.lb, &merged);
    d.wait_state(
        &[("mail", "b1"), ("mail", "b2"), ("mail", "b3")],
        "up",
        LIMIT,
    );
    let clients = farm.net.client_addresses(9);
    for (what, config, names) in [
        ("split mail into web and alt", &split, &["web", "alt"][..]),
        ("merged web and alt into mail", &merged, &["mail"][..]),
    ] {
        // 20 transfers of 300 ticks (6 s); the reload and the checks after it take well under
        // a second here, so a machine several times slower still reloads during them.
        let transfers: Vec<Transfer> = clients
            .iter()
            .flat_map(|&c| [HTTP, ALT].map(|port| (c, port)))
            .map(|(c, port)| {
                Transfer::start(&farm.net.client, c, farm.vip(port), 300)
                    .unwrap_or_else(|e| panic!("{mode_name}: transfer from {c} to :{port}: {e}"))
            })
            .collect();
        let before = farm.scrape();
        d.write_config(config);
        d.ok(&["reload"]);
        let status = d.status_json();
        let served = [HTTP, ALT].map(|port| farm.try_get(clients[0], port));
        let spanning: Vec<bool> = transfers.iter().map(Transfer::running).collect();
        let broken = finish_across_reload(transfers, spanning, mode_name);
        let after = farm.scrape();
        let delta =
            |event: &str| after.since(&before, "xnlb_flow_events_total", &[("event", event)]);
        let dropped = after.since(&before, "xnlb_drops_total", &[]);
        println!(
            "{mode_name}: {what} under 20 transfers: {} broken; {} flows re-pointed, \
             re-selected {}, removed {}, packets dropped {dropped}",
            broken.len(),
            delta("repointed"),
            delta("backend_retired") + delta("reselected_down"),
            delta("foreign_removed") + delta("half_open_foreign_removed"),
        );
        let services = status["services"].as_array().expect("services");
        assert_eq!(services.len(), names.len());
        for s in services {
            assert!(names.contains(&s["name"].as_str().unwrap_or("?")));
            for b in s["backends"].as_array().expect("backends") {
                assert_eq!(
                    b["state"], "up",
                    "{mode_name}: {what}: {} keeps its state in {}",
                    b["name"], s["name"]
                );
            }
        }
        for (port, answer) in [HTTP, ALT].iter().zip(&served) {
            assert!(
                answer.is_ok(),
                "{mode_name}: {what}: a new connection to :{port} right after: {answer:?}"
            );
        }
        assert!(broken.is_empty(), "{mode_name}: {what}: {broken:?}");
        assert!(
            delta("repointed") >= 20.0,
            "{mode_name}: {what}: every transfer's flow re-pointed"
        );
        assert_eq!(
            delta("backend_retired") + delta("reselected_down"),
            0.0,
            "{mode_name}: {what}: no flow re-selected"
        );
        assert_eq!(
            delta("foreign_removed") + delta("half_open_foreign_removed"),
            0.0,
            "{mode_name}: {what}: no flow removed"
        );
        assert_eq!(dropped, 0.0, "{mode_name}: {what}: no packet dropped");
    }
}
