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
            let fault_before = tracker.local_fault.is_some();
            let change = tracker.record(r.outcome, r.latency, r.at);
            let (service, backend) = &key;
            // The balancer's own fault: logged when it starts and when it ends, never counted.
            match (fault_before, &tracker.local_fault) {
                (false, Some(fault)) => warn!(
                    "{service}/{backend}: the balancer cannot probe it ({fault}); its health \
                     stays {}, not counted against it",
                    if tracker.healthy { "up" } else { "down" }
                ),
                (true, None) => info!("{service}/{backend}: probed again"),
                _ => {}
            }
            let Some(change) = change else {
                continue;
            };
            life.noted(before, &change.reason);
            let after = life.state();
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

    /// Sets a backend's administrative state (drain, disable, enable) in `service`, or in
    /// every service that has a backend of that name (`None`: NLB's host-wide drainstop);
    /// one reprogram for all. Says what changed, and what already was so.
    pub fn set_admin(
        &mut self,
        service: Option<&str>,
        backend: &str,
        admin: AdminState,
    ) -> Result<String> {
        let services = self.services_with(service, backend)?;
        let mut changes = Vec::new();
        for service in &services {
            let key = (service.clone(), backend.to_string());
            let lifecycle = self
                .lifecycles
                .get_mut(&key)
                .expect("every backend has a lifecycle");
            let before = lifecycle.state();
            lifecycle.admin = admin;
            lifecycle.noted(before, format!("administrator: {}", admin.verb()));
            changes.push((service, before, lifecycle.state()));
        }
        if changes.iter().any(|(_, before, after)| before != after) {
            self.reprogram()?;
            self.publish();
        }
        let lines: Vec<String> = changes
            .iter()
            .map(|(service, before, after)| match before == after {
                true => format!("{service}/{backend}: {} (no change)", after.label()),
                false => format!(
                    "{service}/{backend}: {} -> {}",
                    before.label(),
                    after.label()
                ),
            })
            .collect();
        for line in &lines {
            info!("{line} (administrator)");
        }
        Ok(lines.join("\n"))
    }

    /// The services a verb applies to: `service` if it has `backend`, or every service that
    /// has it; an error names what exists.
    fn services_with(&self, service: Option<&str>, backend: &str) -> Result<Vec<String>> {
        let services = &self.config.services;
        let Some(name) = service else {
            let having: Vec<String> = services
                .iter()
                .filter(|s| s.backend(backend).is_some())
                .map(|s| s.name.clone())
                .collect();
            if having.is_empty() {
                let mut names: Vec<&str> = services
                    .iter()
                    .flat_map(|s| s.backends.iter().map(|b| b.name.as_str()))
                    .collect();
                names.sort_unstable();
                names.dedup();
                bail!(
                    "no service has a backend `{backend}`; backends: {}",
                    names.join(", ")
                );
            }
            return Ok(having);
        };
        let Some(svc) = self.config.service(name) else {
            let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
            bail!("unknown service `{name}`; services: {}", names.join(", "));
        };
        if svc.backend(backend).is_none() {
            let names: Vec<&str> = svc.backends.iter().map(|b| b.name.as_str()).collect();
            bail!(
                "unknown backend `{backend}` in service {name}; backends: {}",
                names.join(", ")
            );
        }
        Ok(vec![name.to_string()])
    }
}
