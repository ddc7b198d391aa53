//! `cargo xtask demo`: xnlb in front of three Exchange-like web servers, in network namespaces
//! made for the occasion (198.18.0.0/15 only), narrated in plain words and numbers. The
//! daemon's log goes to a file; everything is removed at the end, on error and on Ctrl-C.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use xnlb_tests::{
    apps::{http_get_from, tally},
    daemon::{Daemon, Scrape, backends_of},
    http_backend::{Answer, HttpBackend},
    topology::{Mode, Net, TWO_ARM_CONFIG_HEAD, VIP, backend_ip},
};

const HEALTH: &str = "/owa/healthcheck.htm";
const METRICS: &str = "127.0.0.1:9779";
const NAMES: [&str; 3] = ["cas1", "cas2", "cas3"];
const CLIENTS: usize = 40;
/// Health settings of the demo: quicker than the defaults (2s/1s/2/3) so nobody waits long.
const INTERVAL_MS: u64 = 1000;
const TIMEOUT_MS: u64 = 500;
const FALL: u64 = 2;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Fails with "interrupted" once Ctrl-C was pressed, so the stack unwinds and cleans up.
fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn main() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.expect("signal handler");
    }
    let result = run();
    println!("\nCleaning up: daemon stopped, namespaces removed.");
    if let Err(e) = result {
        eprintln!("demo stopped: {e:#}");
        std::process::exit(1);
    }
}

fn config() -> String {
    let backends: String = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| format!("      - {{ name: {n}, address: {} }}\n", backend_ip(i + 1)))
        .collect();
    format!(
        "{TWO_ARM_CONFIG_HEAD}  - name: owa
    vip: {VIP}
    ports: [80]
    affinity: single
    backends:
{backends}    health:
      http: {{ path: {HEALTH}, port: 80 }}
      interval: {INTERVAL_MS}ms
      timeout: {TIMEOUT_MS}ms
      rise: 2
      fall: {FALL}
metrics:
  listen: {METRICS}
"
    )
}

/// One request from `client`; returns the backend that answered.
fn ask(net: &Net, client: Ipv4Addr) -> Result<String> {
    let (status, body) = http_get_from(&net.client, client, SocketAddr::from((VIP, 80)), "/")
        .with_context(|| format!("GET http://{VIP}/ from {client}"))?;
    if status != 200 {
        bail!("HTTP {status} from the VIP");
    }
    Ok(body
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Which backend each client lands on (affinity single: one request tells).
fn placement(net: &Net, clients: &[Ipv4Addr]) -> Result<BTreeMap<Ipv4Addr, String>> {
    clients.iter().map(|&c| Ok((c, ask(net, c)?))).collect()
}

/// Copies the daemon's log out of its scratch directory when the demo ends, however it ends
/// (declared after the daemon, so it runs before the daemon's cleanup).
struct KeptLog {
    from: std::path::PathBuf,
    to: std::path::PathBuf,
}

impl Drop for KeptLog {
    fn drop(&mut self) {
        let _ = std::fs::copy(&self.from, &self.to);
    }
}

fn backends_up(d: &Daemon) -> usize {
    backends_of(&d.status_json(), "owa")
        .iter()
        .filter(|b| b["state"] == "up")
        .count()
}

fn run() -> Result<()> {
    println!("xnlb demo: a two-arm XDP load balancer in front of three Exchange-like web servers.");
    println!(
        "Everything runs in network namespaces made for this demo, addressed from 198.18.0.0/15.\n"
    );

    let net = Net::build(Mode::TwoArm, 3);
    let clients = net.client_addresses(CLIENTS - 1);
    let servers: Vec<HttpBackend> = net
        .backends
        .iter()
        .zip(NAMES)
        .map(|(ns, name)| {
            HttpBackend::start(Some(ns), (Ipv4Addr::UNSPECIFIED, 80).into(), name, None)
        })
        .collect();
    println!(
        "  clients   {CLIENTS} addresses, {} to {}",
        clients[0],
        clients[CLIENTS - 1]
    );
    println!("  balancer  xnlb, XDP on cli0 (client side) and srv0 (server side), VIP {VIP}:80");
    for (i, n) in NAMES.iter().enumerate() {
        println!(
            "  {n}      {}: a web page naming itself, and {HEALTH}",
            backend_ip(i + 1)
        );
    }
    println!(
        "  service   owa: affinity single (client IP), health check GET {HEALTH} every {INTERVAL_MS}ms,\n\
         \x20           timeout {TIMEOUT_MS}ms, up after 2 successes, down after {FALL} failures"
    );

    let started = Instant::now();
    let d = Daemon::start(&net.lb, &config());
    let log = KeptLog {
        from: d.files.log.clone(),
        to: std::env::temp_dir().join("xnlb-demo.log"),
    };
    println!("\n  daemon log: {} (kept after the demo)", log.to.display());
    println!("\n1. Starting xnlb. Backends stay out of rotation until their health pages pass.");
    while backends_up(&d) < 3 {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("backends not up after 20 s; see {}", log.to.display());
        }
        pause(Duration::from_millis(50))?;
    }
    println!(
        "   All three backends up {:.1}s after start.",
        started.elapsed().as_secs_f64()
    );

    println!("\n2. Distribution: 10 requests from each of the {CLIENTS} client addresses.");
    let mut all = Vec::new();
    let mut sticky = 0;
    for &c in &clients {
        let answers: Vec<String> = (0..10).map(|_| ask(&net, c)).collect::<Result<_>>()?;
        if answers.iter().all(|a| *a == answers[0]) {
            sticky += 1;
        }
        all.extend(answers);
        check_interrupt()?;
    }
    let per_backend = tally(&all);
    let total: usize = per_backend.values().sum();
    for (b, n) in &per_backend {
        println!(
            "   {b}: {n:>3} requests ({:.0}%)",
            *n as f64 * 100.0 / total as f64
        );
    }

    println!(
        "\n3. Affinity: with `affinity: single` a client address always reaches the same backend."
    );
    println!(
        "   {sticky} of {CLIENTS} clients had all 10 of their requests answered by one backend."
    );

    let before = placement(&net, &clients)?;
    let on_cas2: Vec<Ipv4Addr> = before
        .iter()
        .filter(|(_, b)| *b == "cas2")
        .map(|(c, _)| *c)
        .collect();
    let Some(&watcher) = on_cas2.first() else {
        bail!("no client landed on cas2");
    };
    let bound = FALL * INTERVAL_MS + TIMEOUT_MS;
    println!("\n4. cas2's health page now answers 503 (as Exchange does when OWA breaks).");
    servers[1].set(HEALTH, Answer::Status(503));
    let failed = Instant::now();
    loop {
        if ask(&net, watcher)? != "cas2" {
            break;
        }
        if failed.elapsed() > Duration::from_secs(10) {
            bail!("cas2 still chosen after 10 s; see {}", log.to.display());
        }
        pause(Duration::from_millis(50))?;
    }
    println!(
        "   cas2 left rotation {:.1}s later (bound: fall × interval + timeout = {:.1}s).",
        failed.elapsed().as_secs_f64(),
        bound as f64 / 1000.0
    );
    let after = placement(&net, &clients)?;
    let moved_others = before
        .iter()
        .filter(|(c, b)| *b != "cas2" && after[*c] != **b)
        .count();
    println!(
        "   Its {} clients moved to cas1 and cas3; of the other {} clients {} moved \
         (consistent hashing: only the failed server's share changes).",
        on_cas2.len(),
        CLIENTS - on_cas2.len(),
        moved_others
    );

    println!("\n5. cas2's page answers 200 again.");
    servers[1].set(HEALTH, Answer::Status(200));
    let recovered = Instant::now();
    loop {
        if ask(&net, watcher)? == "cas2" {
            break;
        }
        if recovered.elapsed() > Duration::from_secs(10) {
            bail!("cas2 not back after 10 s; see {}", log.to.display());
        }
        pause(Duration::from_millis(50))?;
    }
    let back = placement(&net, &clients)?;
    println!(
        "   cas2 took new connections again {:.1}s later; {} of {CLIENTS} clients are back where they started.",
        recovered.elapsed().as_secs_f64(),
        clients.iter().filter(|c| back[*c] == before[*c]).count()
    );

    println!("\n6. What an administrator sees: `xnlb status`\n");
    for line in d.ok(&["status"]).lines() {
        println!("   {line}");
    }

    println!(
        "\n7. An excerpt of the Prometheus metrics (http://{METRICS}/metrics on the balancer):\n"
    );
    let scrape = Scrape::take(&net.lb, METRICS);
    let wanted = [
        "xnlb_flows_total{",
        "xnlb_backend_up{",
        "xnlb_health_probe_seconds_count{",
        "xnlb_health_probes_total{service=\"owa\",backend=\"cas2\"",
        "xnlb_conntrack_entries ",
        "xnlb_xdp_actions_total{action=\"redirect\"}",
    ];
    for line in scrape.text.lines() {
        if wanted.iter().any(|w| line.starts_with(w)) {
            println!("   {line}");
        }
    }
    Ok(())
}
