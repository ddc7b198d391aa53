//! What a reload does: re-read the file, refuse what needs a restart, check the ids fit, then
//! move the datapath to the new image; on any error put the old config, ids and states back and
//! move the maps back to them, so the old config keeps running.

use anyhow::{Result, bail};
use std::collections::BTreeMap;

use lb_model::{
    config::{self, Config},
    lifecycle::Lifecycle,
};
use tracing::{info, warn};

use super::controller::Controller;
use crate::{
    health::{self, BackendName},
    host::interfaces,
};
use lb_common::limits::MAX_BACKENDS;

impl Controller {
    /// Re-reads the config file and applies the difference. On any error nothing changes.
    pub fn reload(&mut self) -> Result<String> {
        let loaded =
            interfaces::load_for_run(&self.config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let new = loaded.config;
        let problems = restart_only_changes(&self.config, &new);
        if !problems.is_empty() {
            let err = config::ConfigError {
                file: self.config_path.display().to_string(),
                problems,
            };
            bail!("{err}");
        }
        for w in &loaded.warnings {
            warn!("{w}");
        }
        super::controller::warn_if_sticky_table_small(&self.dp, &new)?;
        // Fail before touching anything if the ids do not fit.
        let old_ids = self.ids.clone();
        let mut new_ids = old_ids.clone();
        new_ids.assign(&new, self.dp.ring_capacity(), MAX_BACKENDS)?;

        let old_lifecycles = self.lifecycles.clone();
        let old_config = std::mem::replace(&mut self.config, std::sync::Arc::new(new));
        // A backend keeps its lifecycle (drain, health) while it keeps its id, under its
        // service's new name if the service was renamed; `reprogram` makes it follow a changed
        // health block.
        self.lifecycles = old_lifecycles
            .iter()
            .filter_map(|((s, b), life)| {
                let service = new_ids.renamed.get(s).unwrap_or(s);
                let id = old_ids.backend_id(s, b)?;
                (new_ids.backend_id(service, b) == Some(id))
                    .then(|| ((service.clone(), b.clone()), life.clone()))
            })
            .collect();
        inherit_lifecycles(
            &old_config,
            &old_lifecycles,
            &self.config,
            &mut self.lifecycles,
        );
        self.choose_routing();
        self.resolve_held_hops_waiting();
        match self.reprogram() {
            Ok(changes) => {
                self.targets.send_replace(health::targets(&self.config));
                if self.config.announce_vips {
                    self.vips.sync(&self.announced(), false)?;
                } else {
                    self.vips.release_all()?;
                }
                // The new config is running by now: a failure here is said, not a refusal.
                if let Err(e) = self.follow_announce_config() {
                    warn!("reload: the announce block: {e:#}");
                }
                self.publish();
                if !changes.is_empty() {
                    info!("reload: datapath {changes}");
                }
                let said = self.config.changes_from(&old_config, &new_ids.renamed);
                Ok(if said.is_empty() {
                    "reloaded: nothing changed".to_string()
                } else {
                    format!("reloaded:\n  {}", said.join("\n  "))
                })
            }
            Err(e) => {
                // `programmed` records exactly what the failed apply wrote.
                self.config = old_config;
                self.ids = old_ids;
                self.lifecycles = old_lifecycles;
                if let Err(again) = self.reprogram() {
                    warn!("restoring the previous config after a failed reload: {again:#}");
                }
                self.publish();
                Err(e.context("applying the new config (the old one keeps running)"))
            }
        }
    }
}

/// A backend new to its service (by name) that some old service overlapping it had at the same
/// address and port starts from that backend's lifecycle (health, drain) instead of from
/// scratch: when a reload splits or merges services over the same backends, the flows that
/// move to the new service find their backend in the state it was in, not down until its
/// first probes pass. The new service's health block applies from the next probe.
fn inherit_lifecycles(
    old: &Config,
    old_lifecycles: &BTreeMap<BackendName, Lifecycle>,
    new: &Config,
    lifecycles: &mut BTreeMap<BackendName, Lifecycle>,
) {
    for service in &new.services {
        for backend in &service.backends {
            let name = (service.name.clone(), backend.name.clone());
            if lifecycles.contains_key(&name) {
                continue;
            }
            let inherited = old
                .services
                .iter()
                .filter(|s| s.overlaps(service))
                .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
                .filter(|(_, b)| b.address == backend.address && b.port == backend.port)
                .find_map(|(s, b)| old_lifecycles.get(&(s.name.clone(), b.name.clone())));
            if let Some(life) = inherited {
                lifecycles.insert(name, life.clone());
            }
        }
    }
}

/// Settings a running daemon cannot change. Those of the daemon itself take a restart, which
/// costs nothing (the next `xnlb run` adopts the datapath); those of the datapath's shape take
/// `xnlb stop` and a new `xnlb run`, because an adopted datapath keeps them.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<config::Problem> {
    let mut out = Vec::new();
    let mut check = |changed: bool, path: &str| {
        if changed {
            out.push(
                config::Problem::new(path, "cannot change while running").hint(
                    "the datapath keeps it: apply it with `xnlb stop`, then `xnlb run` \
                     (forwarding stops in between)",
                ),
            );
        }
    };
    check(old.mode != new.mode, "mode");
    check(old.interfaces != new.interfaces, "interfaces");
    check(old.xdp_mode != new.xdp_mode, "xdp_mode");
    check(
        old.conntrack.max_entries != new.conntrack.max_entries,
        "conntrack.max_entries",
    );
    check(
        old.conntrack.half_open_entries() != new.conntrack.half_open_entries(),
        "conntrack.half_open_entries",
    );
    check(
        old.conntrack.sticky_entries != new.conntrack.sticky_entries,
        "conntrack.sticky_entries",
    );
    check(old.cluster != new.cluster, "cluster");
    // The first service's VIP names the cluster MAC that clients hold in their ARP caches.
    check(
        old.cluster.is_some() && old.cluster_vip() != new.cluster_vip(),
        "services[0].vip (it names the cluster MAC)",
    );
    let mut restart = |changed: bool, path: &str| {
        if changed {
            out.push(
                config::Problem::new(path, "cannot change while running").hint(
                    "restart the daemon to apply it (`systemctl restart xnlb`, or SIGTERM and \
                     `xnlb run`): the datapath forwards on and is adopted",
                ),
            );
        }
    };
    restart(old.metrics != new.metrics, "metrics");
    restart(old.admin != new.admin, "admin");
    out
}
