//! `xnlb run`: the daemon's life. Checks the config, claims the admin socket and the metrics
//! address (so a second daemon fails before touching the datapath), starts the controller,
//! then serves requests and signals until told to stop. SIGHUP reloads; SIGTERM, SIGINT and
//! `xnlb stop` detach and remove the pins. A `kill -9` leaves the pinned datapath forwarding.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, anyhow};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    admin::{self, Request, Shared},
    config,
    controller::Controller,
    health, metrics,
};

pub fn run(config_path: &Path, pin_dir: &Path) -> Result<()> {
    let loaded = config::load_for_run(config_path).map_err(|e| anyhow!("{e}"))?;
    for w in &loaded.warnings {
        warn!("{w}");
    }
    raise_memlock();
    ensure_bpffs(pin_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(loaded.config, config_path, pin_dir))
}

async fn serve(config: config::Config, config_path: &Path, pin_dir: &Path) -> Result<()> {
    let socket_path = config.admin.socket.clone();
    let admin_listener = admin::bind(&socket_path)?;
    let metrics_listener = TcpListener::bind(config.metrics.listen)
        .await
        .with_context(|| format!("metrics.listen {}", config.metrics.listen))?;

    let ctl = {
        let (config_path, pin_dir) = (config_path.to_path_buf(), pin_dir.to_path_buf());
        tokio::task::spawn_blocking(move || Controller::start(config, &config_path, &pin_dir))
            .await??
    };
    let (targets, probed) = (ctl.health_targets(), ctl.health_targets());
    let shared: Shared = Arc::new(Mutex::new(Some(ctl)));
    let (registry, observed) = metrics::registry(shared.clone());
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    tokio::spawn(health::follow(targets, reports_tx));
    tokio::spawn(apply_health(reports_rx, probed, shared.clone(), observed));
    let (stopped_tx, mut stopped_rx) = mpsc::channel(1);
    tokio::spawn(admin::serve(admin_listener, shared.clone(), stopped_tx));
    let metrics_addr = metrics_listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_listener, Arc::new(registry)).await {
            error!("{e:#}");
        }
    });
    info!(
        "xnlb running: admin socket {}, metrics http://{metrics_addr}/metrics",
        socket_path.display()
    );

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                info!("SIGHUP: reloading {}", config_path.display());
                let shared = shared.clone();
                let answer = tokio::task::spawn_blocking(move || admin::handle(&shared, Request::Reload)).await?;
                if !answer.ok {
                    error!("reload failed; the previous config keeps running");
                }
            }
            _ = terminate.recv() => { info!("SIGTERM: stopping"); break; }
            _ = interrupt.recv() => { info!("SIGINT: stopping"); break; }
            _ = stopped_rx.recv() => {
                let _ = std::fs::remove_file(&socket_path);
                info!("stopped by `xnlb stop`");
                return Ok(());
            }
        }
    }
    let answer = tokio::task::spawn_blocking(move || admin::handle(&shared, Request::Stop)).await?;
    let _ = std::fs::remove_file(&socket_path);
    if answer.ok {
        Ok(())
    } else {
        Err(anyhow!("stopping: {}", answer.message.unwrap_or_default()))
    }
}

/// Hands probe results to the controller in batches (one reprogram for many changes), off
/// the async workers because the controller writes maps. Counts them in the metrics, whose
/// series follow what is `probed`.
async fn apply_health(
    mut reports: mpsc::UnboundedReceiver<health::Report>,
    mut probed: watch::Receiver<health::Targets>,
    shared: Shared,
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
        let (shared, batch) = (shared.clone(), std::mem::take(&mut batch));
        let applied = tokio::task::spawn_blocking(move || {
            let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_mut() {
                Some(ctl) => ctl.apply_probes(batch),
                None => Ok(()),
            }
        })
        .await;
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!("applying health results: {e:#}"),
            Err(e) => error!("applying health results: {e}"),
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (newer ones use memory cgroups):
/// raise the soft limit to unlimited if allowed, else to the hard limit.
fn raise_memlock() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit);
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) != 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
        }
    }
}

/// The BPF filesystem's magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_FS_ROOT: &str = "/sys/fs/bpf";

fn on_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills one struct statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// Pins need a BPF filesystem. Systems that boot without one at /sys/fs/bpf get it mounted
/// there, as systemd and Cilium do; anywhere else it must already exist.
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if on_bpffs(parent) {
        return Ok(());
    }
    if parent != Path::new(BPF_FS_ROOT) {
        return Err(anyhow!(
            "{} is not on a BPF filesystem; choose a --pin-dir under {BPF_FS_ROOT}",
            parent.display()
        ));
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype, opts) = (c("bpf"), c(BPF_FS_ROOT), c("bpf"), c("mode=0700"));
    // SAFETY: plain mount(2) with NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(anyhow!(
            "mounting the BPF filesystem at {BPF_FS_ROOT}: {}",
            std::io::Error::last_os_error()
        ));
    }
    info!("mounted the BPF filesystem at {BPF_FS_ROOT}");
    Ok(())
}
