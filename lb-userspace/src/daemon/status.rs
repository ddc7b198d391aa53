//! `xnlb status` and the metrics read the same thing: the controller's last published `View`
//! (names, ids, states) joined with the datapath's counters, read through a `Reader` of their
//! own. Neither asks the controller, so neither waits for a reload or a health change. The
//! status's rates come from `Samples` of the counters, taken once a second.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use lb_common::{
    maps as names,
    settings::{DatapathSettings, Routing},
    stats::{BackendStats, FlowEvent, ServiceStats},
};
use lb_model::{
    announce::Announcer,
    config::{self, Config, Mode},
    ids::IdBook,
    lifecycle::Lifecycle,
    status::{
        self, AnnounceStatus, BackendStatus, ChangeStatus, ConntrackStatus, HealthStatus,
        InterfaceStatus, Rates, ServiceStatus, Status,
    },
    sticky::{self, StickyRow},
};

use crate::{
    datapath::{Reader, monotonic_ns},
    health::BackendName,
};

/// How the program sits on one interface.
#[derive(Clone, Debug, Default)]
pub struct Attachment {
    pub name: String,
    /// `client` or `server`.
    pub role: &'static str,
    /// `native`, `generic` or `adopted`.
    pub how: String,
}

/// What the controller decided, as of its last change.
#[derive(Clone, Debug)]
pub struct View {
    pub mode: Mode,
    pub config: Arc<Config>,
    pub config_path: String,
    pub ids: IdBook,
    pub lifecycles: BTreeMap<BackendName, Lifecycle>,
    pub attached: Vec<Attachment>,
    pub settings: DatapathSettings,
    /// When the daemon started.
    pub started: SystemTime,
    /// Scale-out by routing: the announce interface and its announcer's state.
    pub announce: Option<(String, Announcer)>,
}

impl View {
    /// Before the controller has programmed anything.
    pub fn starting(config: &Config, config_path: String) -> Self {
        Self {
            mode: config.mode,
            config: Arc::new(config.clone()),
            config_path,
            ids: IdBook::default(),
            lifecycles: BTreeMap::new(),
            attached: Vec::new(),
            settings: DatapathSettings::defaults(),
            started: SystemTime::now(),
            announce: None,
        }
    }
}

/// How far back the status's rates reach.
pub const RATE_SPAN: Duration = Duration::from_secs(5);

/// Counters as they were at one moment: packets, bytes and new flows by backend id and by
/// service id.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    backends: HashMap<u32, Counts>,
    services: HashMap<u32, Counts>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    packets: u64,
    bytes: u64,
    new_flows: u64,
}

impl Counts {
    fn of_backend(st: &BackendStats) -> Self {
        Self {
            packets: st.to_backend_packets + st.to_client_packets,
            bytes: st.to_backend_bytes + st.to_client_bytes,
            new_flows: st.new_flows,
        }
    }

    fn of_service(st: &ServiceStats) -> Self {
        Self {
            packets: st.packets,
            bytes: st.bytes,
            new_flows: st.new_flows,
        }
    }

    /// Per second since `then`, `secs` ago. A counter that went back (an id given to a new
    /// backend, whose counters start at zero) counts from zero.
    fn rates_since(&self, then: Option<&Counts>, secs: f64) -> Rates {
        let then = then.copied().unwrap_or_default();
        let per_sec = |now: u64, was: u64| {
            let grown = if now >= was { now - was } else { now };
            grown as f64 / secs
        };
        Rates {
            packets: per_sec(self.packets, then.packets),
            bytes: per_sec(self.bytes, then.bytes),
            new_flows: per_sec(self.new_flows, then.new_flows),
        }
    }
}

/// The counter samples the rates are measured from: one a second (`take`), those of the last
/// `RATE_SPAN` kept.
#[derive(Debug, Default)]
pub struct Samples(Mutex<VecDeque<Sample>>);

impl Samples {
    /// Reads the counters of every backend and service in `view` now.
    pub fn take(&self, view: &View, reader: &Reader) -> Result<()> {
        let mut sample = Sample {
            at: Instant::now(),
            backends: HashMap::new(),
            services: HashMap::new(),
        };
        for s in &view.config.services {
            let Some(&sid) = view.ids.services.get(&s.name) else {
                continue;
            };
            let counts = Counts::of_service(&reader.service_stats(sid)?);
            sample.services.insert(sid, counts);
            for b in &s.backends {
                if let Some(id) = view.ids.backend_id(&s.name, &b.name) {
                    let counts = Counts::of_backend(&reader.backend_stats(id)?);
                    sample.backends.insert(id, counts);
                }
            }
        }
        let mut kept = self.0.lock().expect("samples lock");
        kept.push_back(sample);
        while kept.front().is_some_and(|s| s.at.elapsed() > RATE_SPAN) {
            kept.pop_front();
        }
        Ok(())
    }

    /// The oldest sample kept, if it is old enough to measure a rate against.
    fn oldest(&self) -> Option<Sample> {
        let kept = self.0.lock().expect("samples lock");
        kept.front()
            .filter(|s| s.at.elapsed() >= Duration::from_millis(500))
            .cloned()
    }
}

/// `xnlb sticky list SERVICE [--client ADDR]`: the service's live sticky entries.
pub fn sticky_rows(
    view: &View,
    reader: &Reader,
    service: &str,
    client: Option<IpAddr>,
) -> Result<Vec<StickyRow>> {
    let service = sticky::sticky_service(&view.config, service).map_err(anyhow::Error::msg)?;
    let entries = reader.sticky_entries()?;
    Ok(sticky::rows(service, &entries, client, monotonic_ns()))
}

/// The status document: the view's names and states with the datapath's counters, and their
/// rates since the oldest of `samples` (none without).
pub fn status(view: &View, reader: &Reader, samples: Option<&Samples>) -> Result<Status> {
    let since = samples.and_then(Samples::oldest);
    let secs = since.as_ref().map_or(0.0, |s| s.at.elapsed().as_secs_f64());
    let rates = |now: Counts, then: Option<&Counts>| match &since {
        Some(_) => now.rates_since(then, secs),
        None => Rates::default(),
    };
    let now = monotonic_ns();
    let flows = reader.flows()?;
    let (live, per_backend) = status::flow_census(&flows, &view.settings, now);
    let half_open = reader.half_open_flows()?;
    let (half_open_live, _) = status::flow_census(&half_open, &view.settings, now);
    let event = |e| reader.flow_event_count(e);
    let sticky_entries = reader.sticky_entries()?;
    let sticky_clients = sticky::census(&view.config, &sticky_entries, now);
    let mut services = Vec::new();
    for s in &view.config.services {
        let Some(&sid) = view.ids.services.get(&s.name) else {
            continue;
        };
        let stats = reader.service_stats(sid)?;
        let mut active_connections = 0;
        let mut backends = Vec::new();
        for (i, b) in s.backends.iter().enumerate() {
            let (Some(id), Some(life)) = (
                view.ids.backend_id(&s.name, &b.name),
                view.lifecycles.get(&(s.name.clone(), b.name.clone())),
            ) else {
                continue;
            };
            let st = reader.backend_stats(id)?;
            let flows = per_backend.get(&id).copied().unwrap_or_default();
            active_connections += flows.active;
            let counts = Counts::of_backend(&st);
            backends.push(BackendStatus {
                name: b.name.clone(),
                address: b.address.to_string(),
                port: b.port,
                state: life.state(),
                weight: b.weight,
                priority: s.priority_of(i),
                health: HealthStatus::of(life),
                last_change: life.last_change.as_ref().map(ChangeStatus::of),
                active_flows: flows.live,
                active_connections: flows.active,
                sticky_clients: sticky_clients
                    .get(&(s.name.clone(), b.name.clone()))
                    .copied()
                    .unwrap_or(0),
                new_flows: st.new_flows,
                packets: st.to_backend_packets + st.to_client_packets,
                bytes: st.to_backend_bytes + st.to_client_bytes,
                packets_to_backend: st.to_backend_packets,
                bytes_to_backend: st.to_backend_bytes,
                packets_to_client: st.to_client_packets,
                bytes_to_client: st.to_client_bytes,
                rates: rates(counts, since.as_ref().and_then(|s| s.backends.get(&id))),
            });
        }
        services.push(ServiceStatus {
            name: s.name.clone(),
            vip: s.vip.to_string(),
            ports: s.ports.iter().map(|p| p.to_string()).collect(),
            protocol: config::word(&s.protocol),
            filtering: s.filtering.label().to_string(),
            affinity: s.affinity.label().to_string(),
            sticky_timeout: s
                .sticky()
                .then(|| humantime::format_duration(s.sticky_timeout).to_string()),
            persistence_group: s.persistence_group.clone(),
            packets: stats.packets,
            bytes: stats.bytes,
            dropped: stats.dropped,
            active_connections,
            rates: rates(
                Counts::of_service(&stats),
                since.as_ref().and_then(|s| s.services.get(&sid)),
            ),
            backends,
        });
    }
    Ok(Status {
        mode: view.mode.label().to_string(),
        routing: Routing::from_u8(view.settings.routing)
            .unwrap_or_default()
            .label()
            .to_string(),
        cluster: None,
        announce: view
            .announce
            .as_ref()
            .map(|(interface, announcer)| AnnounceStatus {
                interface: interface.clone(),
                vips: announcer.report(Instant::now()),
            }),
        interfaces: view
            .attached
            .iter()
            .map(|a| InterfaceStatus {
                name: a.name.clone(),
                role: a.role.to_string(),
                attached: a.how.clone(),
            })
            .collect(),
        config: view.config_path.clone(),
        uptime_secs: view.started.elapsed().map_or(0, |d| d.as_secs()),
        rates_over_secs: secs,
        conntrack: ConntrackStatus {
            entries: live.live,
            active: live.active,
            max_entries: reader.max_entries(names::FLOWS)?,
            half_open: half_open_live.live,
            half_open_max_entries: reader.max_entries(names::HALF_OPEN)?,
            // Added, less moved out or removed by the controller, less held now.
            evicted: event(FlowEvent::EstablishedNew)?
                .saturating_sub(event(FlowEvent::ForeignRemoved)?)
                .saturating_sub(flows.len() as u64),
            half_open_evicted: event(FlowEvent::HalfOpenNew)?
                .saturating_sub(event(FlowEvent::Established)?)
                .saturating_sub(event(FlowEvent::HalfOpenForeignRemoved)?)
                .saturating_sub(half_open.len() as u64),
            sticky_entries: sticky::live(&view.config, &sticky_entries, now),
            sticky_max_entries: reader.max_entries(names::STICKY)?,
            sticky_evicted: event(FlowEvent::StickyRecorded)?
                .saturating_sub(event(FlowEvent::StickyCleared)?)
                .saturating_sub(sticky_entries.len() as u64),
        },
        services,
    })
}
