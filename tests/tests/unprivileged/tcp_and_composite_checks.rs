//! The `tcp` check and checks combined with `require`, against real servers on loopback: a
//! mail server whose banner the test switches, and web servers with several health pages. Each
//! test drives the real prober into the real rise/fall tracker (`health_probes::Checker`).

use std::{
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use xnlb::{
    config::{Require, TcpCheck},
    health::{
        http::HttpProbe,
        probe::{CheckProbe, Failure, Outcome, Probe},
        schedule::Progress,
        tcp::TcpProbe,
    },
};
use xnlb_tests::{
    banner_server::BannerServer,
    http_backend::{Answer, HttpBackend},
};

use crate::health_probes::{Checker, check, loopback, probed_with};

const EWS: &str = "/ews/healthcheck.htm";
const OWA: &str = "/owa/healthcheck.htm";

fn smtp(addr: SocketAddr, send: &str, expect: &str) -> CheckProbe {
    CheckProbe::Tcp(TcpProbe::new(
        addr,
        TcpCheck {
            port: addr.port(),
            send: send.into(),
            expect: expect.into(),
        },
    ))
}

fn page(server: &HttpBackend, path: &str) -> CheckProbe {
    CheckProbe::Http(HttpProbe::new(
        server.addr,
        check(server.addr.port(), path, false, true, None),
    ))
}

fn probe(require: Require, checks: Vec<CheckProbe>) -> Probe {
    Probe { checks, require }
}

async fn once(p: &Probe) -> Outcome {
    tokio::time::timeout(Duration::from_secs(5), p.run(&Progress::default()))
        .await
        .expect("a probe against loopback finishes")
}

#[tokio::test]
async fn a_banner_check_sends_what_it_is_told_and_reads_the_first_line() {
    let server = BannerServer::start(None, loopback(), "cas1");
    let quit = probe(Require::All, vec![smtp(server.addr, "QUIT\r\n", "220")]);
    assert_eq!(
        once(&quit).await,
        Ok("connected, \"220 cas1 ESMTP ready\"".to_string())
    );
    assert_eq!(server.received(), ["QUIT"]);

    server.set_banner("421 4.3.2 Service not available");
    assert_eq!(
        once(&quit).await,
        Err(Failure::Backend(
            "first line \"421 4.3.2 Service not available\" does not start with \"220\"".into()
        ))
    );
    // A banner with a control character is shown escaped, never raw.
    server.set_banner("421 \u{1b}[31mbusy");
    assert_eq!(
        once(&quit).await,
        Err(Failure::Backend(
            "first line \"421 \\u{1b}[31mbusy\" does not start with \"220\"".into()
        ))
    );
    // Closed at once, without a greeting (nothing sent, so the close is a FIN, not a reset);
    // and a port nobody listens on.
    server.set_banner("");
    assert_eq!(
        once(&probe(Require::All, vec![smtp(server.addr, "", "220")])).await,
        Err(Failure::Backend(
            "the backend closed the connection without sending a line".into()
        ))
    );
    // Without `expect`, an accepted connection is enough.
    let connect = probe(Require::All, vec![smtp(server.addr, "", "")]);
    assert_eq!(once(&connect).await, Ok("connected".to_string()));
    let closed = TcpListener::bind(loopback()).unwrap().local_addr().unwrap();
    assert_eq!(
        once(&probe(Require::All, vec![smtp(closed, "", "220")])).await,
        Err(Failure::Backend("connect: connection refused".into()))
    );
}

#[tokio::test]
async fn a_failing_banner_takes_the_backend_out_and_a_good_one_brings_it_back() {
    let server = BannerServer::start(None, loopback(), "cas1");
    let t = probed_with(
        "smtp",
        "cas1",
        probe(Require::All, vec![smtp(server.addr, "QUIT\r\n", "220")]),
    );
    let mut c = Checker::new(&[t], false);
    let up = c.until("smtp", "cas1", true).await;
    assert!(
        up.reason
            .starts_with("2 successes, last: connected, \"220 cas1 ESMTP ready\" in "),
        "{}",
        up.reason
    );
    server.set_banner("421 4.3.2 Service not available");
    let down = c.until("smtp", "cas1", false).await;
    assert_eq!(
        down.reason,
        "2 failures, last: first line \"421 4.3.2 Service not available\" does not start \
         with \"220\""
    );
    server.set_banner("220 cas1 ESMTP ready");
    c.until("smtp", "cas1", true).await;
}

#[tokio::test]
async fn all_takes_a_server_out_when_one_page_fails_any_only_when_every_page_does() {
    let server = HttpBackend::start(None, loopback(), "cas1", None);
    let pages = || vec![page(&server, OWA), page(&server, EWS)];
    let targets = [
        probed_with("all", "cas1", probe(Require::All, pages())),
        probed_with("any", "cas1", probe(Require::Any, pages())),
    ];
    let mut c = Checker::new(&targets, false);
    let up = c.until("all", "cas1", true).await;
    assert!(
        up.reason
            .starts_with("2 successes, last: all 2 checks passed in "),
        "{}",
        up.reason
    );
    c.until("any", "cas1", true).await;

    // One page fails: `all` goes down naming it; `any` stays up meanwhile.
    server.set(EWS, Answer::Status(503));
    let down = c.until("all", "cas1", false).await;
    let port = server.addr.port();
    assert_eq!(
        down.reason,
        format!("2 failures, last: http {port} {EWS}: HTTP 503 Service Unavailable")
    );
    assert!(c.healthy("any", "cas1"), "any: one page still passes");

    // Every page fails: `any` goes down and says why for each.
    server.set(OWA, Answer::Status(500));
    let down = c.until("any", "cas1", false).await;
    let reason = down.reason;
    assert!(
        reason.starts_with("2 failures, last: every check failed: "),
        "{reason}"
    );
    for why in [
        format!("http {port} {OWA}: HTTP 500 Internal Server Error"),
        format!("http {port} {EWS}: HTTP 503 Service Unavailable"),
    ] {
        assert!(reason.contains(&why), "{reason} names {why}");
    }

    // Both pages recover: both services come back.
    server.set(OWA, Answer::Status(200));
    server.set(EWS, Answer::Status(200));
    c.until("all", "cas1", true).await;
    c.until("any", "cas1", true).await;
}

#[tokio::test]
async fn a_hung_check_times_out_by_name_within_one_timeout() {
    let web = HttpBackend::start(None, loopback(), "cas1", None);
    // Accepts (the kernel completes the handshake) and never sends a line.
    let hung = TcpListener::bind(loopback()).unwrap();
    let t = probed_with(
        "mail",
        "cas1",
        probe(
            Require::All,
            vec![page(&web, OWA), smtp(hung.local_addr().unwrap(), "", "220")],
        ),
    );
    let mut c = Checker::new(&[t], true);
    let down = c.until("mail", "cas1", false).await;
    assert_eq!(
        down.reason,
        format!(
            "2 failures, last: timeout after 80ms: tcp {} expect `220` waiting for the first line",
            hung.local_addr().unwrap().port()
        )
    );
}
