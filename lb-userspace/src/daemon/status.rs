//! `xnlb status` and the metrics read the same thing: the controller's last published `View`
//! (names, ids, states) joined with the datapath's counters, read through a `Reader` of their
//! own. Neither asks the controller, so neither waits for a reload or a health change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Result;
use lb_common::{
    maps as names,
    settings::{DatapathSettings, Routing},
    stats::FlowEvent,
};
use lb_model::{
    config::{self, Config, Mode},
    ids::IdBook,
    lifecycle::Lifecycle,
    status::{
        self, BackendStatus, ConntrackStatus, HealthStatus, InterfaceStatus, ServiceStatus, Status,
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
        }
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

/// The status document: the view's names and states with the datapath's counters.
pub fn status(view: &View, reader: &Reader) -> Result<Status> {
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
        let mut backends = Vec::new();
        for (i, b) in s.backends.iter().enumerate() {
            let (Some(id), Some(life)) = (
                view.ids.backend_id(&s.name, &b.name),
                view.lifecycles.get(&(s.name.clone(), b.name.clone())),
            ) else {
                continue;
            };
            let st = reader.backend_stats(id)?;
            backends.push(BackendStatus {
                name: b.name.clone(),
                address: b.address.to_string(),
                port: b.port,
                state: life.state(),
                weight: b.weight,
                priority: s.priority_of(i),
                health: HealthStatus::of(life),
                active_flows: per_backend.get(&id).copied().unwrap_or(0),
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
        conntrack: ConntrackStatus {
            entries: live,
            max_entries: reader.max_entries(names::FLOWS)?,
            half_open: half_open_live,
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
