//! Health checking. The controller publishes what to probe (`Targets`, from the config); the
//! `Prober` keeps one task per target running (`schedule` decides when, `probe` runs the
//! target's checks, each an `http` (HTTP or HTTPS) or `tcp` one, and combines their results)
//! and sends every result back as a `Report`; the controller counts them with
//! each backend's `tracker` (rise/fall) and reprograms the datapath when a backend's state
//! changes. Probes never touch the controller's lock, so a hung backend stalls nothing.

pub mod http;
pub mod probe;
pub mod schedule;
pub mod tcp;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    task::AbortHandle,
};

use crate::config::Config;
pub use lb_model::rise_fall::Outcome;
use probe::Probe;
use schedule::{Timing, probe_forever};

/// (service, backend) names.
pub type BackendName = (String, String);

/// One backend to probe, as the config asks for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub service: String,
    pub backend: String,
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
}

pub type Targets = BTreeMap<BackendName, Target>;

/// Every backend of every service with a `health` block, probed on its own address.
pub fn targets(config: &Config) -> Targets {
    let mut out = Targets::new();
    for s in &config.services {
        let Some(h) = &s.health else { continue };
        for b in &s.backends {
            out.insert(
                (s.name.clone(), b.name.clone()),
                Target {
                    service: s.name.clone(),
                    backend: b.name.clone(),
                    probe: Probe::new(b.address, h),
                    interval: h.interval,
                    timeout: h.timeout,
                },
            );
        }
    }
    out
}

/// One probe's result, sent from its task to the controller.
#[derive(Clone, Debug)]
pub struct Report {
    /// The target as probed: a report for a target the config has since changed is stale.
    pub target: Target,
    pub outcome: Outcome,
    pub latency: Duration,
    pub at: SystemTime,
}

/// The running probe tasks, one per target.
pub struct Prober {
    running: HashMap<BackendName, (Target, AbortHandle)>,
    reports: mpsc::UnboundedSender<Report>,
}

impl Prober {
    pub fn new(reports: mpsc::UnboundedSender<Report>) -> Self {
        Self {
            running: HashMap::new(),
            reports,
        }
    }

    /// Starts, restarts and stops tasks so that exactly `targets` are probed; a target whose
    /// probe did not change keeps its task and its rhythm.
    pub fn sync(&mut self, targets: &Targets) {
        self.running.retain(|key, (target, task)| {
            let keep = targets.get(key) == Some(target);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, target) in targets {
            if !self.running.contains_key(key) {
                let task = self.spawn(target.clone());
                self.running.insert(key.clone(), (target.clone(), task));
            }
        }
    }

    fn spawn(&self, target: Target) -> AbortHandle {
        let timing = Timing::spread(
            target.interval,
            target.timeout,
            (&target.service, &target.backend),
        );
        let reports = self.reports.clone();
        let probe = target.probe.clone();
        tokio::spawn(async move {
            probe_forever(
                timing,
                |progress| {
                    let probe = probe.clone();
                    async move { probe.run(&progress).await }
                },
                |outcome, latency| {
                    let _ = reports.send(Report {
                        target: target.clone(),
                        outcome,
                        latency,
                        at: SystemTime::now(),
                    });
                },
            )
            .await
        })
        .abort_handle()
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

/// Keeps a `Prober` in step with the targets the controller publishes, until the controller
/// goes away.
pub async fn follow(mut targets: watch::Receiver<Targets>, reports: mpsc::UnboundedSender<Report>) {
    let mut prober = Prober::new(reports);
    loop {
        prober.sync(&targets.borrow_and_update());
        if targets.changed().await.is_err() {
            return;
        }
    }
}
