//! Protocol-aware health end to end: the real daemon probes a mail service with a `tcp` banner
//! check (`send: "QUIT\r\n"`, `expect: "220"`) and a web service with two health pages that
//! must both pass (`checks` with `require: all`, Exchange 2013/2016's one namespace). A bad
//! banner or one failing page takes that backend out of that service only, real connections
//! through the VIP stop reaching it, and it comes back when the check passes again. Two-arm
//! only: probing goes from the balancer straight to the backends in either mode.

use xnlb_tests::banner_server::{BannerServer, greeted_by};

use super::*;

const SMTP: u16 = 25;
const EWS: &str = "/ews/healthcheck.htm";
const TIMING: &str = "      interval: 300ms\n      timeout: 200ms\n      rise: 2\n      fall: 2\n";
/// New connections per round: with three equal backends and `affinity: none`, a round misses
/// a backend in rotation with probability (2/3)^30, about 5 in a million.
const ROUND: usize = 30;

fn config(farm: &Farm) -> String {
    let on_client_port: String = (1..=3)
        .map(|n| {
            format!(
                "      - {{ name: b{n}, address: {} }}\n",
                farm.net.backend_ip(n)
            )
        })
        .collect();
    let smtp = farm.service("smtp", SMTP, "    affinity: none\n", &on_client_port)
        + "    health:\n      tcp: { port: 25, send: \"QUIT\\r\\n\", expect: \"220\" }\n"
        + TIMING;
    let pages = format!(
        "    health:\n      checks:\n        - http: {{ path: {HEALTH}, port: 80 }}\n        \
         - http: {{ path: {EWS}, port: 80 }}\n      require: all\n{TIMING}"
    );
    let mail = farm.service(
        "mail",
        HTTP,
        "    affinity: none\n",
        &farm.backends(&[1, 2, 3], |_| "".into()),
    ) + &pages;
    farm.config(&[smtp, mail])
}

/// Which backend greeted each of `ROUND` new connections to VIP:25.
fn smtp_round(farm: &Farm) -> BTreeSet<String> {
    (0..ROUND)
        .map(|i| {
            greeted_by(&farm.net.client, farm.vip(SMTP))
                .unwrap_or_else(|e| panic!("smtp connection {i}: {e}"))
        })
        .collect()
}

/// Which backend answered each client's new request to VIP:80.
fn mail_round(farm: &Farm, clients: &[Ipv4Addr]) -> BTreeSet<String> {
    clients.iter().map(|&c| farm.get(c, HTTP)).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn detail(d: &Daemon, service: &str, backend: &str) -> serde_json::Value {
    backend_of(&d.status_json(), service, backend)["health"]["detail"].clone()
}

#[test]
fn tcp_banner_and_composite_checks_take_backends_out_and_back() {
    let farm = Farm::new(Mode::TwoArm, 3);
    let banners: Vec<BannerServer> = farm
        .net
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let addr = SocketAddr::from((farm.net.backend_ip(i + 1), SMTP));
            BannerServer::start(Some(ns), addr, &format!("b{}", i + 1))
        })
        .collect();
    let clients = farm.net.client_addresses(ROUND - 1);
    let d = Daemon::start(&farm.net.lb, &config(&farm));
    let every: Vec<(&str, &str)> = ["smtp", "mail"]
        .iter()
        .flat_map(|s| ["b1", "b2", "b3"].map(|b| (*s, b)))
        .collect();
    d.wait_state(&every, "up", LIMIT);
    let b1 = backend_of(&d.status_json(), "smtp", "b1").clone();
    assert_eq!(
        b1["health"]["last_probe"]["result"],
        "connected, \"220 b1 ESMTP ready\""
    );
    assert!(
        banners[0].received().iter().any(|l| l == "QUIT"),
        "the check said QUIT"
    );
    assert_eq!(
        backend_of(&d.status_json(), "mail", "b1")["health"]["last_probe"]["result"],
        "all 2 checks passed"
    );
    let all = set(&["b1", "b2", "b3"]);
    assert_eq!(smtp_round(&farm), all);
    assert_eq!(mail_round(&farm, &clients), all);

    // A bad banner takes b1 out of smtp only; connections stop reaching it.
    banners[0].set_banner("421 4.3.2 Service not available");
    d.wait_state(&[("smtp", "b1")], "down", LIMIT);
    assert_eq!(
        detail(&d, "smtp", "b1"),
        "2 failures, last: first line \"421 4.3.2 Service not available\" does not start with \
         \"220\""
    );
    assert_eq!(smtp_round(&farm), set(&["b2", "b3"]));
    assert_eq!(backend_of(&d.status_json(), "mail", "b1")["state"], "up");
    banners[0].set_banner("220 b1 ESMTP ready");
    d.wait_state(&[("smtp", "b1")], "up", LIMIT);
    assert_eq!(smtp_round(&farm), all);

    // One of b2's two pages fails: out of mail, naming the page; smtp keeps it.
    farm.web[1].set(EWS, Answer::Status(503));
    d.wait_state(&[("mail", "b2")], "down", LIMIT);
    assert_eq!(
        detail(&d, "mail", "b2"),
        format!("2 failures, last: http 80 {EWS}: HTTP 503 Service Unavailable")
    );
    assert_eq!(mail_round(&farm, &clients), set(&["b1", "b3"]));
    assert_eq!(backend_of(&d.status_json(), "smtp", "b2")["state"], "up");
    farm.web[1].set(EWS, Answer::Status(200));
    d.wait_state(&[("mail", "b2")], "up", LIMIT);
    assert_eq!(mail_round(&farm, &clients), all);
    let log = d.log();
    assert!(
        log.contains("smtp/b1 down: 2 failures, last: first line"),
        "{log}"
    );
    assert!(
        log.contains(&format!("mail/b2 down: 2 failures, last: http 80 {EWS}")),
        "{log}"
    );
}
