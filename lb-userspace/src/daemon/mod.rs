//! `xnlb run`: the daemon's life. Checks the config, claims the admin socket and the metrics
//! address (so a second daemon fails before touching the datapath), starts the controller on
//! its own thread, then serves requests and signals until told to stop. A thread of its own
//! follows routing changes, so that the datapath's kept next hops do too. SIGHUP reloads.
//! SIGTERM and SIGINT (what `systemctl stop` and `restart` send) end the daemon and leave the
//! pinned datapath forwarding, exactly as a crash or `kill -9` does: the next `xnlb run` adopts
//! it, so a restart or an upgrade costs nothing. Only `xnlb stop` detaches, removes the VIPs
//! and the pins.
//!
//! ```text
//!  admin socket ──verbs──▶ ┌─────────────┐ ──map writes──▶ datapath
//!  SIGHUP ───────reload──▶ │ controller  │
//!  health probes ─batch──▶ │  (thread)   │ ──View──┐
//!                          └─────────────┘         ▼
//!  admin `status`, /metrics ◀── View + Reader (counters, connection table)
//! ```

pub mod admin_socket;
mod announce;
mod backends;
pub mod cluster;
pub mod control;
pub mod controller;
pub mod metrics;
mod reload;
mod routing;
pub mod status;
mod sticky;
mod trace;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result, anyhow};
use lb_model::config::Config;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use self::{admin_socket::Answerer, control::Handle, controller::Controller};
use crate::{
    admin::Request,
    datapath::NextHopEpoch,
    health,
    host::{bpffs, interfaces, limits, routes, systemd},
};

pub fn run(config_path: &Path, pin_dir: &Path) -> Result<()> {
    let loaded = interfaces::load_for_run(config_path).map_err(|e| anyhow!("{e}"))?;
    for w in &loaded.warnings {
        warn!("{w}");
    }
    limits::raise_memlock();
    limits::raise_file_limit();
    bpffs::ensure_bpffs(pin_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(loaded.config, config_path, pin_dir))
}

async fn serve(config: Config, config_path: &Path, pin_dir: &Path) -> Result<()> {
    let socket_path = config.admin.socket.clone();
    let admin_listener = admin_socket::bind(&socket_path)?;
    // Held until the daemon ends. Taken after the socket, whose check names a running daemon
    // without creating anything; a refusal removes the socket this daemon made.
    let _pin_lock = bpffs::lock_pin_dir(pin_dir).inspect_err(|_| {
        let _ = std::fs::remove_file(&socket_path);
    })?;
    let metrics_listener = TcpListener::bind(config.metrics.listen)
        .await
        .with_context(|| format!("metrics.listen {}", config.metrics.listen))?;

    let ctl = {
        let (config_path, pin_dir) = (config_path.to_path_buf(), pin_dir.to_path_buf());
        tokio::task::spawn_blocking(move || Controller::start(config, &config_path, &pin_dir))
            .await??
    };
    let (targets, probed, view) = (ctl.health_targets(), ctl.health_targets(), ctl.view());
    let reader = Arc::new(ctl.reader()?);
    // A daemon that ended mid-trace left the (pinned) filter armed: nobody reads its events.
    if let Err(e) = crate::datapath::trace::Tap::open(&reader).and_then(|mut t| t.disarm()) {
        warn!("clearing a trace filter left armed: {e}");
    }
    let epoch = ctl.next_hop_epoch()?;
    let cluster = match &ctl.config.cluster {
        Some(block) => Some(
            cluster::spawn(block, ctl.dp.cluster_maps()?, reader.clone(), view.clone())
                .context("starting cluster mode")?,
        ),
        None => None,
    };
    let (controller, controller_thread) = control::spawn(ctl)?;
    follow_routing(epoch, controller.clone());
    tokio::spawn(announce_ticks(controller.clone()));

    let (registry, observed) = metrics::registry(
        view.clone(),
        reader.clone(),
        cluster.as_ref().map(|c| c.status.clone()),
    );
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    tokio::spawn(health::follow(targets, reports_tx));
    tokio::spawn(forward_health(
        reports_rx,
        probed,
        controller.clone(),
        observed,
    ));
    let samples = Arc::new(status::Samples::default());
    tokio::spawn(sample_counters(
        view.clone(),
        reader.clone(),
        samples.clone(),
    ));
    let answerer = Answerer {
        controller: controller.clone(),
        view,
        reader,
        samples,
        cluster,
        tracing: Arc::default(),
    };
    let (stopped_tx, mut stopped_rx) = mpsc::channel(1);
    tokio::spawn(admin_socket::serve(admin_listener, answerer, stopped_tx));
    let metrics_addr = metrics_listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_listener, Arc::new(registry)).await {
            error!("{e:#}");
        }
    });
    let running = format!(
        "admin socket {}, metrics http://{metrics_addr}/metrics",
        socket_path.display()
    );
    info!("xnlb running: {running}");
    // Only now: the datapath is attached, its maps programmed, the socket answers.
    systemd::ready(&format!("balancing; {running}"));
    // With no watchdog set the timer still runs, rarely, and pings nobody.
    let watchdog_period = systemd::watchdog_period();
    let mut watchdog = tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // The signal that ends the daemon, or `None` when `xnlb stop` did (and has detached).
    let signalled = loop {
        tokio::select! {
            _ = hangup.recv() => {
                info!("SIGHUP: reloading {}", config_path.display());
                // The controller logs the outcome; a failed reload keeps the old config.
                let controller = controller.clone();
                tokio::spawn(async move { controller.ask(Request::Reload).await });
            }
            _ = watchdog.tick(), if watchdog_period.is_some() => {
                // Alive means the controller, which does the work, takes commands; a stuck one
                // misses the pings and systemd restarts the daemon (fail-static: lossless).
                let controller = controller.clone();
                tokio::spawn(async move {
                    if controller.alive().await {
                        systemd::watchdog();
                    }
                });
            }
            _ = terminate.recv() => break Some("SIGTERM"),
            _ = interrupt.recv() => break Some("SIGINT"),
            _ = stopped_rx.recv() => break None,
        }
    };
    systemd::stopping(match signalled {
        Some(_) => "exiting; the datapath keeps forwarding",
        None => "stopped: detached and unpinned",
    });
    match signalled {
        Some(signal) => info!(
            "{signal}: exiting; the datapath keeps forwarding (pinned in {}) and the next \
             `xnlb run` adopts it; `xnlb stop` removes it",
            pin_dir.display()
        ),
        None => info!("stopped by `xnlb stop`"),
    }
    let _ = std::fs::remove_file(&socket_path);
    controller.exit();
    let _ = tokio::task::spawn_blocking(move || controller_thread.join()).await;
    Ok(())
}

/// The datapath keeps next hops (the FIB's answers) per backend and per flow: every routing
/// change that could alter one makes them all stale, and under held routing the controller
/// resolves the backends' again. Without the watch (no netlink socket) balancing goes on: kept
/// answers are renewed by the datapath's clock every few seconds, and held ones by a timer.
fn follow_routing(mut epoch: NextHopEpoch, controller: Handle) {
    let handle = controller.clone();
    let watching = routes::watch(move |change| {
        if change == routes::Change::Stale
            && let Err(e) = epoch.bump()
        {
            warn!("kept next hops not refreshed after a routing change: {e}");
        }
        handle.routing_changed();
    });
    if let Err(e) = watching {
        warn!(
            "routing changes are not watched (netlink: {e}): the datapath follows them only \
             when it renews its kept next hops, every 4.3 s, and held next hops are resolved \
             again every {HELD_HOPS_FALLBACK_PERIOD:?}"
        );
        let _ = std::thread::Builder::new()
            .name("route-timer".into())
            .spawn(move || {
                while controller.routing_changed() {
                    std::thread::sleep(HELD_HOPS_FALLBACK_PERIOD);
                }
            });
    }
}

/// Ends the hold-downs of `announce:` on time (the controller otherwise acts only on
/// events); stops with the controller.
async fn announce_ticks(controller: Handle) {
    let mut tick = tokio::time::interval(announce::TICK);
    loop {
        tick.tick().await;
        if !controller.announce_tick().await {
            break;
        }
    }
}

/// How often held next hops are resolved again when routing changes cannot be watched.
const HELD_HOPS_FALLBACK_PERIOD: std::time::Duration = std::time::Duration::from_secs(4);

/// Hands probe results to the controller in batches (one reprogram for many changes), and
/// counts them in the metrics, whose series follow what is `probed`.
async fn forward_health(
    mut reports: mpsc::UnboundedReceiver<health::Report>,
    mut probed: watch::Receiver<health::Targets>,
    controller: Handle,
    observed: metrics::Observed,
) {
    let mut batch = Vec::new();
    let mut watching = true;
    loop {
        tokio::select! {
            changed = probed.changed(), if watching => {
                // The controller is gone when the sender is: nothing more to follow.
                watching = changed.is_ok();
                observed.retain(&probed.borrow_and_update());
                continue;
            }
            n = reports.recv_many(&mut batch, 512) => if n == 0 { break },
        }
        {
            // A result from a probe a reload just removed would bring its series back.
            let current = probed.borrow();
            for r in &batch {
                if current.contains_key(&(r.target.service.clone(), r.target.backend.clone())) {
                    observed.probe(r);
                }
            }
        }
        if !controller.health(std::mem::take(&mut batch)) {
            break;
        }
    }
}

/// Samples the counters once a second for the status's rates. A failed read (the datapath's
/// maps are the daemon's own: not expected) leaves a gap; the rates span the samples there are.
async fn sample_counters(
    view: watch::Receiver<Arc<status::View>>,
    reader: Arc<crate::datapath::Reader>,
    samples: Arc<status::Samples>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut failing = false;
    loop {
        tick.tick().await;
        let (view, reader, samples) = (view.borrow().clone(), reader.clone(), samples.clone());
        let taken = tokio::task::spawn_blocking(move || samples.take(&view, &reader)).await;
        // Said once when it starts failing, not every second.
        match taken {
            Ok(Err(e)) if !failing => {
                warn!("sampling the counters for the status's rates: {e:#}");
                failing = true;
            }
            Ok(Ok(())) => failing = false,
            _ => {}
        }
    }
}
