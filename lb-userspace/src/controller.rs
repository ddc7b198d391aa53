//! The controller: owns the loaded datapath and everything decided about it (config, ids,
//! backend lifecycles, what the maps hold), and turns administrator actions into map writes.
//! The daemon calls it from its event loop; nothing here knows about sockets or signals.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use lb_common::stats::{DropReason, FlowEvent, PassReason};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    attach::{self, Attached},
    config::{self, Config, Mode},
    datapath::{BACKEND_SLOTS, Datapath, DatapathSizes},
    health::{self, BackendName, Report, Targets},
    ids::IdBook,
    lifecycle::{AdminState, BackendState, Lifecycle},
    plan,
    reconcile::{Changes, Programmed},
    status::{
        self, BackendStatus, ConntrackStatus, HealthStatus, InterfaceStatus, ServiceStatus, Status,
    },
    vip_owner::VipOwner,
};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xnlb";
const PROGRAM_PIN: &str = "program";

pub struct Controller {
    dp: Datapath,
    config: Config,
    config_path: PathBuf,
    pin_dir: PathBuf,
    ids: IdBook,
    lifecycles: BTreeMap<BackendName, Lifecycle>,
    programmed: Programmed,
    /// (interface, role, how attached).
    attached: Vec<(String, &'static str, String)>,
    vips: VipOwner,
    /// What the health checker probes, published to it.
    targets: watch::Sender<Targets>,
    /// Maglev tables of the last image, reused while their members stay.
    tables: plan::TableCache,
}

/// Datapath counters that are not per service or backend, labelled for metrics.
pub struct Counters {
    pub drops: Vec<(DropReason, u64)>,
    pub passes: Vec<(PassReason, u64)>,
    pub flow_events: Vec<(FlowEvent, u64)>,
    pub actions: Vec<(&'static str, u64)>,
}

fn sizes_for(config: &Config) -> DatapathSizes {
    DatapathSizes {
        flows: config.conntrack.max_entries,
        // Room to grow by reload: twice the services configured at start, at least 16.
        ring_services: (config.services.len() as u32 * 2).clamp(16, 256),
    }
}

impl Controller {
    /// Loads (or adopts) the datapath under `pin_dir`, programs it from `config`, attaches it
    /// and announces the VIPs.
    pub fn start(config: Config, config_path: &Path, pin_dir: &Path) -> Result<Self> {
        let (dp, adopted) = Datapath::load_pinned(sizes_for(&config), pin_dir)
            .context("loading the XDP datapath")?;
        // What the maps hold, even when just created (all zero): the record must never assume.
        let programmed = Programmed::read(&dp).context("reading the datapath's maps")?;
        let mut ids = IdBook::default();
        let mut lifecycles = BTreeMap::new();
        if adopted {
            ids = IdBook::recover(&config, &programmed.image.rules, &programmed.image.backends);
            for s in &config.services {
                for b in &s.backends {
                    if let Some(id) = ids.backend_id(&s.name, &b.name) {
                        let state = programmed.image.backends[&id].state;
                        lifecycles.insert(
                            (s.name.clone(), b.name.clone()),
                            Lifecycle::adopted(state, s.health.as_ref()),
                        );
                    }
                }
            }
            let running = dp.max_entries("FLOWS")?;
            if running != config.conntrack.max_entries {
                warn!(
                    "conntrack.max_entries is {} in the config but the running table has {running}; \
                     the running table (and its flows) is kept until `xnlb stop` and a fresh start",
                    config.conntrack.max_entries
                );
            }
            info!(
                "adopted the running datapath at {}: {} services, {} backends",
                pin_dir.display(),
                programmed.image.services.len(),
                ids.backends.len()
            );
        }
        let (targets, _) = watch::channel(health::targets(&config));
        let mut ctl = Controller {
            dp,
            targets,
            tables: plan::TableCache::default(),
            vips: VipOwner::new(&config.interfaces.client),
            config,
            config_path: config_path.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
            ids,
            lifecycles,
            programmed,
            attached: Vec::new(),
        };
        let changes = ctl.reprogram().context("programming the datapath")?;
        info!("datapath programmed: {changes}");
        ctl.attach()?;
        ctl.dp.pin_program(&pin_dir.join(PROGRAM_PIN))?;
        if ctl.config.announce_vips {
            ctl.vips
                .sync(&ctl.announced(), adopted)
                .context("adding the VIPs (and one-arm SNAT addresses) to the client interface")?;
        }
        Ok(ctl)
    }

    /// The addresses the client interface must answer ARP for: the VIPs and, in one-arm, the
    /// SNAT addresses (backends send their replies there).
    fn announced(&self) -> BTreeSet<Ipv4Addr> {
        let mut addrs = self.programmed.image.vips.clone();
        if self.config.mode == Mode::OneArm {
            addrs.extend(self.config.snat_v4());
        }
        addrs
    }

    fn attach(&mut self) -> Result<()> {
        let ifaces: Vec<(String, &'static str)> = self
            .config
            .attach_interfaces()
            .into_iter()
            .zip(["client", "server"])
            .map(|(i, r)| (i.to_string(), r))
            .collect();
        let keep: Vec<&str> = ifaces.iter().map(|(i, _)| i.as_str()).collect();
        for stale in attach::stale_links(&self.pin_dir, &keep) {
            info!("detaching from {stale}: the config no longer names it");
            attach::detach(&self.pin_dir, &stale)?;
        }
        let mode = self.config.xdp_mode;
        for (iface, role) in ifaces {
            let how = attach::attach_or_adopt(self.dp.program_mut()?, &self.pin_dir, &iface, mode)?;
            let how = match how {
                Attached::New(m) => m.to_string(),
                Attached::Adopted => "adopted".to_string(),
            };
            info!("XDP on {iface} ({role} side): {how}");
            if let Err(e) = attach::accept_local_sources(&iface) {
                warn!("{e:#}: a client the balancer has not resolved yet may fail to connect");
            }
            if !attach::forwards(&iface) {
                warn!(
                    "{iface}: IPv4 forwarding is off, so balanced packets cannot be forwarded \
                     (xnlb_passes_total{{reason=\"no_fast_route\"}}) and the kernel drops them; \
                     enable it with sysctl -w net.ipv4.conf.{iface}.forwarding=1"
                );
            }
            self.attached.push((iface, role, how));
        }
        Ok(())
    }

    /// Rebuilds the image from config and lifecycles and applies it.
    fn reprogram(&mut self) -> Result<Changes> {
        let fresh = self
            .ids
            .assign(&self.config, self.dp.ring_capacity(), BACKEND_SLOTS)?;
        for s in &self.config.services {
            for b in &s.backends {
                self.lifecycles
                    .entry((s.name.clone(), b.name.clone()))
                    .or_insert_with(|| Lifecycle::new(s.health.as_ref()))
                    .follow(s.health.as_ref());
            }
        }
        let lifecycles = &self.lifecycles;
        let image = plan::image(
            &self.config,
            &self.ids,
            |s, b| lifecycles[&(s.to_string(), b.to_string())].state(),
            &mut self.tables,
        );
        let serving_before = self.serving();
        let changes = self.programmed.apply(&mut self.dp, &image, &fresh)?;
        self.log_service_transitions(&serving_before);
        Ok(changes)
    }

    /// Services with at least one backend taking new flows, by name.
    fn serving(&self) -> BTreeMap<String, bool> {
        self.config
            .services
            .iter()
            .map(|s| {
                let serving = self.ids.services.get(&s.name).is_some_and(|sid| {
                    self.programmed
                        .image
                        .services
                        .get(sid)
                        .is_some_and(|p| p.serving())
                });
                (s.name.clone(), serving)
            })
            .collect()
    }

    /// One log line when a service loses its last backend in rotation or gets one back, not one
    /// per dropped packet.
    fn log_service_transitions(&self, before: &BTreeMap<String, bool>) {
        for (name, now) in self.serving() {
            let was = before.get(&name).copied().unwrap_or(false);
            if was && !now {
                warn!(
                    "service {name}: no backend in rotation; new flows are dropped \
                     (xnlb_drops_total{{reason=\"no_backend\"}})"
                );
            } else if !was && now {
                let n = self
                    .config
                    .service(&name)
                    .map(|s| {
                        s.backends
                            .iter()
                            .filter(|b| self.state_of(&name, &b.name).in_rotation())
                            .count()
                    })
                    .unwrap_or(0);
                info!("service {name}: in service with {n} backend(s) in rotation");
            }
        }
    }

    fn state_of(&self, service: &str, backend: &str) -> BackendState {
        self.lifecycles[&(service.to_string(), backend.to_string())].state()
    }

    /// What the health checker should probe; it follows every reload.
    pub fn health_targets(&self) -> watch::Receiver<Targets> {
        self.targets.subscribe()
    }

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
        if changed {
            self.reprogram()?;
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Re-reads the config file and applies the difference. On any error nothing changes.
    pub fn reload(&mut self) -> Result<String> {
        let loaded = config::load_for_run(&self.config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        // Fail before touching anything if the ids do not fit.
        self.ids
            .clone()
            .assign(&new, self.dp.ring_capacity(), BACKEND_SLOTS)?;

        let old_ids = self.ids.clone();
        let old_lifecycles = self.lifecycles.clone();
        let old_config = std::mem::replace(&mut self.config, new);
        let mut new_ids = old_ids.clone();
        new_ids.assign(&self.config, self.dp.ring_capacity(), BACKEND_SLOTS)?;
        // A backend keeps its lifecycle (drain, health) while it keeps its id; `reprogram`
        // makes it follow a changed health block.
        self.lifecycles.retain(|(s, b), _| {
            old_ids.backend_id(s, b).is_some()
                && old_ids.backend_id(s, b) == new_ids.backend_id(s, b)
        });
        match self.reprogram() {
            Ok(changes) => {
                self.targets.send_replace(health::targets(&self.config));
                if self.config.announce_vips {
                    self.vips.sync(&self.announced(), false)?;
                } else {
                    self.vips.release_all()?;
                }
                Ok(if changes.is_empty() {
                    "reloaded: nothing changed".to_string()
                } else {
                    format!("reloaded: {changes}")
                })
            }
            Err(e) => {
                // Put the old config, ids and states back and move the maps back to them;
                // `programmed` records exactly what the failed apply wrote.
                self.config = old_config;
                self.ids = old_ids;
                self.lifecycles = old_lifecycles;
                if let Err(again) = self.reprogram() {
                    warn!("restoring the previous config after a failed reload: {again:#}");
                }
                Err(e.context("applying the new config (the old one keeps running)"))
            }
        }
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
        let msg = format!(
            "{service}/{backend}: {} -> {}",
            before.label(),
            after.label()
        );
        info!("{msg} (administrator)");
        Ok(msg)
    }

    pub fn status(&self) -> Result<Status> {
        let settings = self.programmed.image.settings;
        let flows = self.dp.flows()?;
        let (live, per_backend) = status::flow_census(&flows, &settings, status::monotonic_ns());
        let mut services = Vec::new();
        for s in &self.config.services {
            let sid = self.ids.services[&s.name];
            let stats = self.dp.service_stats(sid)?;
            let mut backends = Vec::new();
            for (i, b) in s.backends.iter().enumerate() {
                let id = self.ids.backend_id(&s.name, &b.name).expect("assigned");
                let st = self.dp.backend_stats(id)?;
                let life = &self.lifecycles[&(s.name.clone(), b.name.clone())];
                backends.push(BackendStatus {
                    name: b.name.clone(),
                    address: b.address.to_string(),
                    port: b.port,
                    state: life.state(),
                    weight: b.weight,
                    priority: s.priority_of(i),
                    health: HealthStatus::of(life),
                    active_flows: per_backend.get(&id).copied().unwrap_or(0),
                    new_flows: st.new_flows,
                    packets: st.to_backend_packets + st.to_client_packets,
                    bytes: st.to_backend_bytes + st.to_client_bytes,
                    packets_to_backend: st.to_backend_packets,
                    bytes_to_backend: st.to_backend_bytes,
                    packets_to_client: st.to_client_packets,
                    bytes_to_client: st.to_client_bytes,
                });
            }
            services.push(ServiceStatus {
                name: s.name.clone(),
                vip: s.vip.to_string(),
                ports: s.ports.iter().map(|p| p.to_string()).collect(),
                protocol: config::word(&s.protocol),
                filtering: config::word(&s.filtering),
                affinity: config::word(&s.affinity),
                packets: stats.packets,
                bytes: stats.bytes,
                dropped: stats.dropped,
                backends,
            });
        }
        Ok(Status {
            mode: match self.config.mode {
                Mode::TwoArm => "two-arm",
                Mode::OneArm => "one-arm",
                Mode::Dsr => "dsr",
            }
            .to_string(),
            interfaces: self
                .attached
                .iter()
                .map(|(name, role, how)| InterfaceStatus {
                    name: name.clone(),
                    role: role.to_string(),
                    attached: how.clone(),
                })
                .collect(),
            config: self.config_path.display().to_string(),
            conntrack: ConntrackStatus {
                entries: live,
                max_entries: self.dp.max_entries("FLOWS")?,
            },
            services,
        })
    }

    pub fn counters(&self) -> Result<Counters> {
        Ok(Counters {
            drops: self.dp.drop_counts()?,
            passes: self.dp.pass_counts()?,
            flow_events: self.dp.flow_event_counts()?,
            actions: self.dp.action_counts()?,
        })
    }

    /// Detaches from every interface, removes the VIPs and every pin. Forwarding stops.
    pub fn stop(mut self) -> Result<()> {
        for (iface, _, _) in &self.attached {
            attach::detach(&self.pin_dir, iface)?;
        }
        self.vips.release_all()?;
        let _ = std::fs::remove_file(self.pin_dir.join(PROGRAM_PIN));
        for name in crate::datapath::MAP_NAMES {
            let _ = std::fs::remove_file(self.pin_dir.join(name));
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
        info!("detached and unpinned");
        Ok(())
    }
}

/// Settings a running daemon cannot change: they need `xnlb stop` and a new `xnlb run`.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<config::Problem> {
    let mut out = Vec::new();
    let mut check = |changed: bool, path: &str| {
        if changed {
            out.push(
                config::Problem::new(path, "cannot change while running")
                    .hint("restart xnlb to apply it (`xnlb stop`, then `xnlb run`)"),
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
    check(old.metrics != new.metrics, "metrics");
    check(old.admin != new.admin, "admin");
    out
}
