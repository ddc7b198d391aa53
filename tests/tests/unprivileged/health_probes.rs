//! The health checker against real web servers on loopback: HTTP and HTTPS (certificates made
//! here), statuses switched at run time, slow, hung, refusing and resetting servers. Each test
//! drives the real `Prober` (fixed-rate schedule, timeouts) into the real rise/fall `Tracker`,
//! with a short interval so the whole file runs in seconds; waits are bounded, never timed.
//!
//! Over 400 lines on purpose: one short test per server behaviour, sharing the servers and the
//! prober set-up at the top.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::OnceLock,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;
use xnlb::{
    config::{HttpCheck, Require},
    health::{
        BackendName, Prober, Report, Target, Targets,
        http::HttpProbe,
        probe::{CheckProbe, Failure, Outcome, Probe},
        schedule::Progress,
    },
    model::rise_fall::{Change, Tracker},
};
use xnlb_tests::{
    certs::{TestCa, self_signed},
    http_backend::{Answer, HttpBackend},
};

pub(crate) const HEALTH: &str = "/owa/healthcheck.htm";
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);
pub(crate) const TIMEOUT: Duration = Duration::from_millis(80);
/// Generous: the expected wait is a few intervals.
const WITHIN: Duration = Duration::from_secs(10);
const NAME: &str = "mail.contoso.test";

/// The test CA, trusted by the prober through `SSL_CERT_FILE` (set once, before any probe of
/// this process builds its trust store).
fn ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        // Under the build's own scratch directory: a static is never dropped, so a directory
        // in /tmp would be left behind by every run.
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("health-ca");
        let ca = TestCa::new(&dir);
        // SAFETY: runs once, inside the OnceLock, before any test reads the environment.
        unsafe { std::env::set_var("SSL_CERT_FILE", &ca.pem_file) };
        ca
    })
}

pub(crate) fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

pub(crate) fn check(
    port: u16,
    path: &str,
    tls: bool,
    verify_tls: bool,
    host: Option<&str>,
) -> HttpCheck {
    HttpCheck {
        path: path.into(),
        port,
        tls,
        verify_tls,
        host: host.map(String::from),
        expect_status: vec![200],
    }
}

fn target(service: &str, backend: &str, addr: SocketAddr, check: HttpCheck) -> Target {
    let probe = Probe {
        checks: vec![CheckProbe::Http(HttpProbe::new(addr, check))],
        require: Require::All,
    };
    probed_with(service, backend, probe)
}

/// A target probed by `probe` at the test's fast rate.
pub(crate) fn probed_with(service: &str, backend: &str, probe: Probe) -> Target {
    Target {
        service: service.into(),
        backend: backend.into(),
        probe,
        interval: INTERVAL,
        timeout: TIMEOUT,
    }
}

/// The reason of a failure that is the backend's (not the balancer's own).
fn backend_fault(outcome: Outcome) -> String {
    match outcome {
        Err(Failure::Backend(why)) => why,
        other => panic!("expected the backend's failure: {other:?}"),
    }
}

async fn probe_once(addr: SocketAddr, check: HttpCheck) -> Outcome {
    let probe = HttpProbe::new(addr, check);
    tokio::time::timeout(Duration::from_secs(5), probe.run(&Progress::default()))
        .await
        .expect("a probe against loopback finishes")
}

/// The real prober feeding one rise 2 / fall 2 tracker per target.
pub(crate) struct Checker {
    _prober: Prober,
    reports: mpsc::UnboundedReceiver<Report>,
    trackers: HashMap<BackendName, Tracker>,
    /// Changes seen while waiting for another target.
    seen: Vec<(BackendName, Change)>,
}

impl Checker {
    pub(crate) fn new(targets: &[Target], initially_healthy: bool) -> Self {
        let (tx, reports) = mpsc::unbounded_channel();
        let mut prober = Prober::new(tx);
        let map: Targets = targets
            .iter()
            .map(|t| ((t.service.clone(), t.backend.clone()), t.clone()))
            .collect();
        prober.sync(&map);
        let trackers = map
            .keys()
            .map(|k| (k.clone(), Tracker::new(2, 2, initially_healthy)))
            .collect();
        Self {
            _prober: prober,
            reports,
            trackers,
            seen: Vec::new(),
        }
    }

    /// Waits until (service, backend) changes to `healthy`; returns the change.
    pub(crate) async fn until(&mut self, service: &str, backend: &str, healthy: bool) -> Change {
        let key = (service.to_string(), backend.to_string());
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(i) = self
                .seen
                .iter()
                .position(|(k, c)| *k == key && c.healthy == healthy)
            {
                return self.seen.remove(i).1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let report = match tokio::time::timeout(left, self.reports.recv()).await {
                Ok(Some(r)) => r,
                _ => panic!(
                    "{service}/{backend} not {} within {WITHIN:?}; last: {:?}",
                    if healthy { "up" } else { "down" },
                    self.trackers[&key].last
                ),
            };
            let k = (report.target.service.clone(), report.target.backend.clone());
            let tracker = self.trackers.get_mut(&k).expect("known target");
            if let Some(change) = tracker.record(report.outcome, report.latency, SystemTime::now())
            {
                self.seen.push((k, change));
            }
        }
    }

    pub(crate) fn healthy(&self, service: &str, backend: &str) -> bool {
        self.trackers[&(service.to_string(), backend.to_string())].healthy
    }
}

#[tokio::test]
async fn the_status_code_decides_and_every_failure_says_why() {
    let server = HttpBackend::start(None, loopback(), "cas1", None);
    let t = target(
        "owa",
        "cas1",
        server.addr,
        check(server.addr.port(), HEALTH, false, true, None),
    );
    let mut c = Checker::new(&[t], false);

    let up = c.until("owa", "cas1", true).await;
    assert!(
        up.reason.starts_with("2 successes, last: HTTP 200 OK in "),
        "{}",
        up.reason
    );

    let cases = [
        (
            Answer::Status(503),
            "2 failures, last: HTTP 503 Service Unavailable",
        ),
        (Answer::Status(404), "2 failures, last: HTTP 404 Not Found"),
        (
            Answer::Status(500),
            "2 failures, last: HTTP 500 Internal Server Error",
        ),
        (
            Answer::Redirect("/owa/".into()),
            "2 failures, last: HTTP 302 Found (Location: /owa/)",
        ),
        (
            Answer::Slow(Duration::from_millis(400)),
            "2 failures, last: timeout after 80ms waiting for the response",
        ),
    ];
    for (answer, reason) in cases {
        server.set(HEALTH, answer.clone());
        let down = c.until("owa", "cas1", false).await;
        assert_eq!(down.reason, reason, "{answer:?}");
        // Recovery after rise.
        server.set(HEALTH, Answer::Status(200));
        c.until("owa", "cas1", true).await;
    }
    // Without `host`, the Host header is the backend's address and port.
    let hosts = server.hosts_seen(HEALTH);
    assert!(
        hosts.iter().all(|h| *h == server.addr.to_string()),
        "{hosts:?}"
    );
}

#[tokio::test]
async fn health_is_per_service_on_the_same_server() {
    let server = HttpBackend::start(None, loopback(), "cas1", None);
    let port = server.addr.port();
    server.set("/ecp/healthcheck.htm", Answer::Status(503));
    let owa = target(
        "owa",
        "cas1",
        server.addr,
        check(port, HEALTH, false, true, None),
    );
    let ecp = target(
        "ecp",
        "cas1",
        server.addr,
        check(port, "/ecp/healthcheck.htm", false, true, None),
    );
    let mut c = Checker::new(&[owa, ecp], true);
    let down = c.until("ecp", "cas1", false).await;
    assert_eq!(
        down.reason,
        "2 failures, last: HTTP 503 Service Unavailable"
    );
    assert!(c.healthy("owa", "cas1"), "owa stays up while ecp fails");
}

#[tokio::test]
async fn refused_reset_and_hung_connections_are_failures() {
    // Refused: a port nobody listens on.
    let closed = TcpListener::bind(loopback()).unwrap().local_addr().unwrap();
    assert_eq!(
        probe_once(closed, check(closed.port(), HEALTH, false, true, None)).await,
        Err(Failure::Backend("connect: connection refused".to_string()))
    );

    // Reset: accepts, then aborts the connection (SO_LINGER 0) without answering.
    let resetting = TcpListener::bind(loopback()).unwrap();
    let reset_addr = resetting.local_addr().unwrap();
    let resetter = std::thread::spawn(move || {
        let (s, _) = resetting.accept().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: sets SO_LINGER on a socket this thread owns.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
    });
    let reset = probe_once(
        reset_addr,
        check(reset_addr.port(), HEALTH, false, true, None),
    )
    .await;
    resetter.join().unwrap();
    let why = backend_fault(reset);
    assert!(why.starts_with("HTTP: "), "{why}");
    assert!(why.contains("reset"), "{why}");

    // Hung: accepts (the kernel completes the handshake) and never answers: one timeout each,
    // naming the step it hung in.
    let hung = TcpListener::bind(loopback()).unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let plain = target(
        "web",
        "b1",
        hung_addr,
        check(hung_addr.port(), HEALTH, false, true, None),
    );
    let tls = target(
        "owa",
        "b1",
        hung_addr,
        check(hung_addr.port(), HEALTH, true, false, None),
    );
    let mut c = Checker::new(&[plain, tls], true);
    let down = c.until("web", "b1", false).await;
    assert_eq!(
        down.reason,
        "2 failures, last: timeout after 80ms waiting for the response"
    );
    let down = c.until("owa", "b1", false).await;
    assert_eq!(
        down.reason,
        "2 failures, last: timeout after 80ms in the TLS handshake"
    );
    drop(hung);
}

#[tokio::test]
async fn tls_verification_is_switchable_and_the_name_is_checked() {
    let ca = ca();
    let trusted = HttpBackend::start(None, loopback(), "cas1", Some(ca.server(&[NAME])));
    let self_signed = HttpBackend::start(None, loopback(), "cas2", Some(self_signed(&[NAME])));
    let (tp, sp) = (trusted.addr.port(), self_signed.addr.port());

    // A certificate from a trusted CA for the configured name: healthy, and the name went out
    // as SNI (else verification would fail) and as the Host header.
    assert_eq!(
        probe_once(trusted.addr, check(tp, HEALTH, true, true, Some(NAME))).await,
        Ok("HTTP 200 OK".to_string())
    );
    assert_eq!(trusted.hosts_seen(HEALTH), [format!("{NAME}:{tp}")]);

    // Wrong name, or a self-signed certificate: failures while verifying, fine when not.
    let wrong_name = probe_once(
        trusted.addr,
        check(tp, HEALTH, true, true, Some("wrong.contoso.test")),
    )
    .await;
    let why = backend_fault(wrong_name);
    assert_eq!(
        why,
        "TLS: the backend's certificate is not valid for the name probed \
         (`health.http.host`, else the backend's address)"
    );
    let unknown_ca = probe_once(self_signed.addr, check(sp, HEALTH, true, true, Some(NAME))).await;
    let why = backend_fault(unknown_ca);
    assert_eq!(
        why,
        "TLS: the backend's certificate is signed by an authority this host does not trust \
         (not in its CA store; `verify_tls: false` accepts it)"
    );

    // Through the prober: verify_tls true keeps both down, false brings both up.
    let targets = [
        target(
            "owa",
            "wrong-name",
            trusted.addr,
            check(tp, HEALTH, true, true, Some("wrong.contoso.test")),
        ),
        target(
            "owa",
            "self-signed",
            self_signed.addr,
            check(sp, HEALTH, true, true, Some(NAME)),
        ),
        target(
            "owa-noverify",
            "wrong-name",
            trusted.addr,
            check(tp, HEALTH, true, false, Some("wrong.contoso.test")),
        ),
        target(
            "owa-noverify",
            "self-signed",
            self_signed.addr,
            check(sp, HEALTH, true, false, None),
        ),
    ];
    let mut c = Checker::new(&targets, false);
    c.until("owa-noverify", "wrong-name", true).await;
    c.until("owa-noverify", "self-signed", true).await;
    // By now each verifying target has failed several probes in a row.
    assert!(!c.healthy("owa", "wrong-name"));
    assert!(!c.healthy("owa", "self-signed"));
    for name in ["wrong-name", "self-signed"] {
        let last = c.trackers[&("owa".to_string(), name.to_string())]
            .last
            .clone()
            .expect("probed");
        assert!(
            !last.ok && last.result.starts_with("TLS: "),
            "{name}: {last:?}"
        );
    }

    // TLS towards a plain HTTP port is a TLS failure, not a hang.
    let plain = HttpBackend::start(None, loopback(), "cas3", None);
    let why = probe_once(
        plain.addr,
        check(plain.addr.port(), HEALTH, true, false, None),
    )
    .await;
    let why = backend_fault(why);
    assert!(why.starts_with("TLS: "), "{why}");
}

#[tokio::test]
async fn the_prober_follows_the_targets_it_is_given() {
    let server = HttpBackend::start(None, loopback(), "cas1", None);
    let port = server.addr.port();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut prober = Prober::new(tx);
    let a = target(
        "owa",
        "a",
        server.addr,
        check(port, HEALTH, false, true, None),
    );
    let b = target(
        "owa",
        "b",
        server.addr,
        check(port, HEALTH, false, true, None),
    );
    let key = |t: &Target| (t.service.clone(), t.backend.clone());
    prober.sync(&Targets::from([(key(&a), a.clone()), (key(&b), b.clone())]));
    assert_eq!(prober.len(), 2);
    // A changed probe (new path) replaces the old task; b is no longer probed.
    let mut a2 = a.clone();
    let CheckProbe::Http(http) = &mut a2.probe.checks[0] else {
        unreachable!("an HTTP target")
    };
    http.check.path = "/owa/healthcheck.htm?v=2".into();
    prober.sync(&Targets::from([(key(&a2), a2.clone())]));
    assert_eq!(prober.len(), 1);
    // Drain what the old tasks sent, then only the new target reports.
    tokio::time::sleep(INTERVAL).await;
    while rx.try_recv().is_ok() {}
    for _ in 0..5 {
        let r = tokio::time::timeout(WITHIN, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.target, a2);
    }
}
