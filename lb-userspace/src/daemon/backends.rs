//! What happens when a backend fails, recovers, or is drained, disabled or enabled: its
//! lifecycle changes (health counts rise and fall, the administrator overrides), one log line
//! says so, and the datapath is reprogrammed: the service's consistent-hash table is rebuilt
//! without (or with) it and switched atomically, and a down backend's TCP flows re-select on
//! their next packet.

use anyhow::{Result, bail};
use lb_model::lifecycle::AdminState;
use tracing::{info, warn};

use super::controller::Controller;
use crate::health::Report;

impl Controller {
    /// Counts probe results; logs each change of health once and reprograms the datapath when
    /// a backend's state changed. Results for targets the config has since changed are stale
    /// and ignored.
    pub fn apply_probes(&mut self, reports: Vec<Report>) -> Result<()> {
        let mut changed = false;
        for r in reports {
            let key = (r.target.service.clone(), r.target.backend.clone());
            if self.targets.borrow().get(&key) != Some(&r.target) {
                continue;
            }
            let Some(life) = self.lifecycles.get_mut(&key) else {
                continue;
            };
            let before = life.state();
            let Some(tracker) = life.health.as_mut() else {
                continue;
            };
            let Some(change) = tracker.record(r.outcome, r.latency, r.at) else {
                continue;
            };
            let after = life.state();
            let (service, backend) = &key;
            let overridden = if before == after {
                format!(" (stays {}: administrator)", after.label())
            } else {
                changed = true;
                String::new()
            };
            if change.healthy {
                info!("{service}/{backend} up: {}{overridden}", change.reason);
            } else {
                warn!("{service}/{backend} down: {}{overridden}", change.reason);
            }
        }
        let result = if changed {
            self.reprogram().map(|_| ())
        } else {
            Ok(())
        };
        // The last probe of every backend is in the status, changed or not.
        self.publish();
        result
    }

    /// Sets a backend's administrative state (drain, disable, enable).
    pub fn set_admin(&mut self, service: &str, backend: &str, admin: AdminState) -> Result<String> {
        let Some(svc) = self.config.service(service) else {
            let names: Vec<&str> = self
                .config
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            bail!(
                "unknown service `{service}`; services: {}",
                names.join(", ")
            );
        };
        if svc.backend(backend).is_none() {
            let names: Vec<&str> = svc.backends.iter().map(|b| b.name.as_str()).collect();
            bail!(
                "unknown backend `{backend}` in service {service}; backends: {}",
                names.join(", ")
            );
        }
        let key = (service.to_string(), backend.to_string());
        let lifecycle = self
            .lifecycles
            .get_mut(&key)
            .expect("every backend has a lifecycle");
        let before = lifecycle.state();
        lifecycle.admin = admin;
        let after = lifecycle.state();
        self.reprogram()?;
        self.publish();
        let msg = format!(
            "{service}/{backend}: {} -> {}",
            before.label(),
            after.label()
        );
        info!("{msg} (administrator)");
        Ok(msg)
    }
}
