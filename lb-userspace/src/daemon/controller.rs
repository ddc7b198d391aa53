//! The controller: owns the loaded datapath and everything decided about it (config, ids,
//! backend lifecycles, what the maps hold), and turns decisions into map writes. It runs on one
//! thread of its own (`control`); nothing else touches its state. After every change it
//! publishes a `View` that status and metrics read without asking it.
//!
//! Here: starting (load or adopt, program, attach, announce) and stopping. What a reload does
//! is `reload.rs`; what happens when a backend fails, recovers or is drained is `backends.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use lb_common::limits::{MAX_BACKENDS, MAX_SERVICES, MIN_RING_SERVICES};
use lb_model::{
    config::{Config, Mode},
    ids::IdBook,
    lifecycle::{BackendState, Lifecycle},
    plan,
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    announce::Announcing,
    routing::HeldRouting,
    status::{Attachment, View},
};
use crate::{
    datapath::{
        self, Datapath, DatapathSizes, NextHopEpoch, Reader,
        attach::{self, Attached},
        reconcile::{Changes, Programmed},
    },
    health::{self, BackendName, Targets},
    host::{addresses::VipOwner, interfaces, sysctl},
};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xnlb";
const PROGRAM_PIN: &str = "program";

pub struct Controller {
    pub(super) dp: Datapath,
    /// Shared with the published view: a health batch republishes without copying it.
    pub(super) config: Arc<Config>,
    pub(super) config_path: PathBuf,
    pin_dir: PathBuf,
    pub(super) ids: IdBook,
    pub(super) lifecycles: BTreeMap<BackendName, Lifecycle>,
    programmed: Programmed,
    attached: Vec<Attachment>,
    pub(super) vips: VipOwner,
    /// Held routing's state (one-arm on a host that does not forward); `None` under FIB routing.
    pub(super) held: Option<HeldRouting>,
    /// What the health checker probes, published to it.
    pub(super) targets: watch::Sender<Targets>,
    /// What status and metrics show, published to them.
    view: watch::Sender<Arc<View>>,
    /// Maglev tables of the last image, reused while their members stay.
    tables: plan::TableCache,
    /// Scale-out by routing (`announce:`): the VIPs offered to the routing daemon.
    pub(super) announcing: Option<Announcing>,
}

/// The running sticky table is smaller than `config` asks for (an adopted datapath, or a reload
/// that adds the first sticky service): it keeps its size, and says so.
pub(super) fn warn_if_sticky_table_small(dp: &Datapath, config: &Config) -> Result<()> {
    let room = dp.reader().max_entries(lb_common::maps::STICKY)?;
    if config.sticky_entries() > room {
        warn!(
            "the sticky table holds {room} clients (sized when the datapath was loaded) and the \
             config asks for {}: the least recently seen clients are forgotten first until \
             `xnlb stop` and a fresh start",
            config.sticky_entries()
        );
    }
    Ok(())
}

fn sizes_for(config: &Config) -> DatapathSizes {
    DatapathSizes {
        flows: config.conntrack.max_entries,
        half_open: config.conntrack.half_open_entries(),
        // Room to grow by reload: twice the services configured at start.
        ring_services: (config.services.len() as u32 * 2).clamp(MIN_RING_SERVICES, MAX_SERVICES),
        sticky: config.sticky_entries(),
    }
}

impl Controller {
    /// Loads (or adopts) the datapath under `pin_dir`, programs it from `config`, attaches it
    /// and announces the VIPs.
    pub fn start(config: Config, config_path: &Path, pin_dir: &Path) -> Result<Self> {
        let (dp, adoption) = Datapath::load_pinned(sizes_for(&config), pin_dir)
            .context("loading the XDP datapath")?;
        let adopted = adoption.is_some();
        for line in adoption.iter().flat_map(|a| a.report()) {
            warn!("adopting the datapath at {}: {line}", pin_dir.display());
        }
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
            let running = dp.reader().max_entries(lb_common::maps::FLOWS)?;
            if running != config.conntrack.max_entries {
                warn!(
                    "conntrack.max_entries is {} in the config but the running table has {running}; \
                     the running table (and its flows) is kept until `xnlb stop` and a fresh start",
                    config.conntrack.max_entries
                );
            }
            warn_if_sticky_table_small(&dp, &config)?;
            info!(
                "adopted the running datapath at {}: {} services, {} backends",
                pin_dir.display(),
                programmed.image.services.len(),
                ids.backends.len()
            );
        }
        let (targets, _) = watch::channel(health::targets(&config));
        let (view, _) = watch::channel(Arc::new(View::starting(
            &config,
            config_path.display().to_string(),
        )));
        let mut ctl = Controller {
            dp,
            targets,
            view,
            tables: plan::TableCache::default(),
            vips: VipOwner::new(&config.interfaces.client),
            config: Arc::new(config),
            config_path: config_path.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
            ids,
            lifecycles,
            programmed,
            attached: Vec::new(),
            held: None,
            announcing: None,
        };
        ctl.choose_routing();
        ctl.resolve_held_hops_waiting();
        let changes = ctl.reprogram().context("programming the datapath")?;
        info!("datapath programmed: {changes}");
        ctl.dp.load_programs().context("loading the XDP programs")?;
        ctl.attach(adopted)?;
        // Flows the previous entry program's stages promoted after the first rebuild, before
        // this daemon's stages took over, claimed their replies in the table that lost its
        // pin: written now.
        for (name, half_open) in adoption.iter().flat_map(|a| a.replies_to_rebuild()) {
            let more = ctl.dp.rebuild_replies(half_open)?;
            if more > 0 {
                info!("{name}: {more} more reply entries rebuilt after the program took over");
            }
        }
        ctl.dp.pin_program(&pin_dir.join(PROGRAM_PIN))?;
        if ctl.config.announce_vips {
            ctl.vips
                .sync(&ctl.announced(), adopted)
                .context("adding the VIPs (and one-arm SNAT addresses) to the client interface")?;
        }
        // Only now that the datapath is attached.
        ctl.follow_announce_config()
            .context("opening the announce interface")?;
        ctl.publish();
        Ok(ctl)
    }

    /// The addresses the client interface must answer ARP for: the VIPs and, in one-arm, the
    /// SNAT addresses (backends send their replies there).
    pub(super) fn announced(&self) -> BTreeSet<IpAddr> {
        // Cluster mode: the datapath answers ARP for the VIPs with the cluster MAC; the kernel
        // must never answer for them with this node's own.
        let mut addrs = if self.config.cluster.is_some() {
            BTreeSet::new()
        } else {
            self.programmed.image.vips.clone()
        };
        if self.config.mode == Mode::OneArm {
            addrs.extend(self.config.snat_addresses());
        }
        addrs
    }

    /// Puts the program on the config's interfaces; `adopting` a pinned datapath, an interface
    /// without a pinned link is one that lost it (the pin removed by hand), and is said so.
    fn attach(&mut self, adopting: bool) -> Result<()> {
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
                Attached::New(m) => {
                    if adopting {
                        warn!(
                            "adopting the datapath at {}: {iface} had no pinned link (it was \
                             removed?), so it was not balanced until now: attached anew",
                            self.pin_dir.display()
                        );
                    }
                    m.to_string()
                }
                Attached::Adopted => "adopted".to_string(),
            };
            info!("XDP on {iface} ({role} side): {how}");
            if let Err(e) = sysctl::accept_local_sources(&iface) {
                warn!("{e:#}: a client the balancer has not resolved yet may fail to connect");
            }
            if self.config.cluster.is_some()
                && let Err(e) = sysctl::announce_own_addresses_only(&iface)
            {
                warn!("{e:#}: this node's ARP requests might name a VIP");
            }
            if self.held.is_none() && !sysctl::forwards(&iface) {
                warn!(
                    "{iface}: IPv4 forwarding is off, so balanced packets cannot be forwarded \
                     (xnlb_passes_total{{reason=\"no_fast_route\"}}) and the kernel drops them; \
                     enable it with sysctl -w net.ipv4.conf.{iface}.forwarding=1"
                );
            }
            self.attached.push(Attachment {
                name: iface,
                role,
                how,
            });
        }
        Ok(())
    }

    /// Rebuilds the image from config and lifecycles and applies it.
    pub(super) fn reprogram(&mut self) -> Result<Changes> {
        let fresh = self
            .ids
            .assign(&self.config, self.dp.ring_capacity(), MAX_BACKENDS)?;
        for s in &self.config.services {
            for b in &s.backends {
                self.lifecycles
                    .entry((s.name.clone(), b.name.clone()))
                    .or_insert_with(|| Lifecycle::new(s.health.as_ref()))
                    .follow(s.health.as_ref());
            }
        }
        let own_macs = match interfaces::own_macs(&self.config) {
            Ok(macs) => macs,
            Err(e) => {
                // Keep acting on the addresses already programmed rather than on nothing.
                warn!("{e:#}: the datapath keeps the interface addresses it had");
                let had = self.programmed.image.settings.own_macs;
                had.into_iter().filter(|m| m.ifindex != 0).collect()
            }
        };
        let host = plan::HostFacts {
            served_by: self.programmed.image.served_by.clone(),
            idle_timeouts_ns: self.programmed.image.settings.idle_timeouts_ns,
            ..self.host_facts(own_macs)
        };
        let lifecycles = &self.lifecycles;
        let image = plan::image(
            &self.config,
            &self.ids,
            |s, b| lifecycles[&(s.to_string(), b.to_string())].state(),
            &host,
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

    pub(super) fn state_of(&self, service: &str, backend: &str) -> BackendState {
        self.lifecycles[&(service.to_string(), backend.to_string())].state()
    }

    /// What the health checker should probe; it follows every reload.
    pub fn health_targets(&self) -> watch::Receiver<Targets> {
        self.targets.subscribe()
    }

    /// What status and metrics show; it follows every change.
    pub fn view(&self) -> watch::Receiver<Arc<View>> {
        self.view.subscribe()
    }

    /// A reader of the datapath's counters for another thread.
    pub fn reader(&self) -> Result<Reader> {
        Ok(self.dp.share_reader()?)
    }

    /// A handle that makes the datapath's kept next hops stale, for the routing watch.
    pub fn next_hop_epoch(&self) -> Result<NextHopEpoch> {
        Ok(self.dp.next_hop_epoch()?)
    }

    /// Brings the announced VIPs up to date and publishes the current state to status and
    /// metrics.
    pub(super) fn publish(&mut self) {
        self.follow_announce();
        // Read before `send_replace`: a borrow alive in its argument would hold the lock it
        // takes.
        let started = self.view.borrow().started;
        self.view.send_replace(Arc::new(View {
            mode: self.config.mode,
            config: self.config.clone(),
            config_path: self.config_path.display().to_string(),
            ids: self.ids.clone(),
            lifecycles: self.lifecycles.clone(),
            attached: self.attached.clone(),
            settings: self.programmed.image.settings,
            started,
            announce: self
                .announcing
                .as_ref()
                .map(|a| (a.interface.name().to_string(), a.announcer.clone())),
        }));
    }

    /// Detaches from every interface, removes the VIPs and every pin. Forwarding stops.
    pub fn stop(mut self) -> Result<()> {
        // Routes first: the upstream stops sending before the datapath stops forwarding. A
        // failure is said and does not keep the datapath attached.
        if let Err(e) = self.withdraw_all() {
            warn!("withdrawing the announced VIPs: {e:#}");
        }
        for a in &self.attached {
            attach::detach(&self.pin_dir, &a.name)?;
        }
        self.vips.release_all()?;
        self.release_routing();
        let _ = std::fs::remove_file(self.pin_dir.join(PROGRAM_PIN));
        datapath::unpin_maps(&self.pin_dir);
        let _ = std::fs::remove_dir(&self.pin_dir);
        info!("detached and unpinned");
        Ok(())
    }
}
