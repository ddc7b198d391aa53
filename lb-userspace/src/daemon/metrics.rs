//! Prometheus metrics at `metrics.listen`/metrics (`docs/metrics.md` lists them). Counters are
//! read from the datapath's per-CPU maps on each scrape (summed over CPUs, the connection table
//! read in batches) through the metrics' own `Reader`, so the datapath does no work for metrics;
//! names and states come from the controller's last published `View`. A scrape never waits for
//! the controller.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::warn;

use lb_model::{
    cluster::ClusterStatus, lifecycle::BackendState, rise_fall::Failure, status::Status,
};
use tokio::sync::watch;

use super::status::{View, status};
use crate::{
    datapath::{Counters, Reader},
    health::{BackendName, Report, Targets},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub service: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeResultLabels {
    pub service: String,
    pub backend: String,
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Metrics the daemon updates itself: one observation per health probe.
#[derive(Clone)]
pub struct Observed {
    pub probe_seconds: Family<ProbeLabels, Histogram>,
    pub probes: Family<ProbeResultLabels, Counter>,
    /// The (service, backend) pairs with series, so the ones no longer probed can be removed.
    seen: Arc<Mutex<BTreeSet<BackendName>>>,
}

impl Observed {
    pub fn probe(&self, report: &Report) {
        let (service, backend) = (report.target.service.clone(), report.target.backend.clone());
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((service.clone(), backend.clone()));
        let result = match &report.outcome {
            Ok(_) => "success",
            Err(Failure::Backend(_)) => "failure",
            Err(Failure::Local(_)) => "local_error",
        };
        self.probes
            .get_or_create(&ProbeResultLabels {
                service: service.clone(),
                backend: backend.clone(),
                result,
            })
            .inc();
        self.probe_seconds
            .get_or_create(&ProbeLabels { service, backend })
            .observe(report.latency.as_secs_f64());
    }

    /// Removes the probe series of backends no longer probed (gone by a reload, or their
    /// service's health block removed), so a scrape shows only what is checked.
    pub fn retain(&self, probed: &Targets) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|pair| {
            if probed.contains_key(pair) {
                return true;
            }
            let (service, backend) = pair.clone();
            for result in ["success", "failure", "local_error"] {
                self.probes.remove(&ProbeResultLabels {
                    service: service.clone(),
                    backend: backend.clone(),
                    result,
                });
            }
            self.probe_seconds.remove(&ProbeLabels { service, backend });
            false
        });
    }
}

/// Builds the registry: the datapath collector plus the daemon's own metrics.
pub fn registry(
    view: watch::Receiver<Arc<View>>,
    reader: Arc<Reader>,
    cluster: Option<watch::Receiver<Arc<ClusterStatus>>>,
) -> (Registry, Observed) {
    let mut registry = Registry::default();
    let probe_seconds = Family::<ProbeLabels, Histogram>::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.001, 2.0, 14))
    });
    registry.register(
        "xnlb_health_probe_seconds",
        "Duration of health probes (a timed-out probe counts its timeout)",
        probe_seconds.clone(),
    );
    let probes = Family::<ProbeResultLabels, Counter>::default();
    registry.register(
        "xnlb_health_probes",
        "Health probes by result",
        probes.clone(),
    );
    registry.register_collector(Box::new(DatapathCollector { view, reader }));
    if let Some(status) = cluster {
        registry.register_collector(Box::new(ClusterCollector { status }));
    }
    (
        registry,
        Observed {
            probe_seconds,
            probes,
            seen: Arc::default(),
        },
    )
}

struct DatapathCollector {
    view: watch::Receiver<Arc<View>>,
    reader: Arc<Reader>,
}

impl std::fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatapathCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        if labels.is_empty() {
            ConstGauge::new(*value).encode(family)?;
            return Ok(());
        }
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Cluster mode's metrics, from what the cluster agent last published.
struct ClusterCollector {
    status: watch::Receiver<Arc<ClusterStatus>>,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCollector")
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = self.status.borrow().clone();
        gauge(
            &mut e,
            "xnlb_cluster_members",
            "Converged members of the cluster, this node included",
            &[(vec![], c.members as i64)],
        )?;
        gauge(
            &mut e,
            "xnlb_cluster_buckets_owned",
            "Buckets this node owns",
            &[(vec![], c.owned as i64)],
        )?;
        gauge(
            &mut e,
            "xnlb_cluster_buckets_finishing",
            "Buckets this node gave up but still carries connections in",
            &[(vec![], c.finishing as i64)],
        )?;
        gauge(
            &mut e,
            "xnlb_cluster_conflicts",
            "Conflicts seen (a node id used twice, a config that differs)",
            &[(vec![], c.problems.len() as i64)],
        )?;
        counter(
            &mut e,
            "xnlb_cluster_convergences",
            "Times the division of the buckets changed",
            &[(vec![], c.convergences)],
        )?;
        let direction = |d: &str| vec![("direction", d.to_string())];
        counter(
            &mut e,
            "xnlb_cluster_heartbeats",
            "Heartbeats sent and received",
            &[
                (direction("sent"), c.heartbeats_sent),
                (direction("received"), c.heartbeats_received),
            ],
        )
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.view.borrow().clone();
        let (Ok(status), Ok(counters)) =
            (status(&view, &self.reader, None), self.reader.counters())
        else {
            return Ok(());
        };
        encode_snapshot(&mut encoder, &status, &counters)
    }
}

fn encode_snapshot(
    e: &mut DescriptorEncoder,
    status: &Status,
    counters: &Counters,
) -> Result<(), std::fmt::Error> {
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    let mut flows = Vec::new();
    let mut active = Vec::new();
    let mut connections = Vec::new();
    let mut up = Vec::new();
    let mut sticky = Vec::new();
    let mut state = Vec::new();
    let mut svc_packets = Vec::new();
    let mut svc_dropped = Vec::new();
    for s in &status.services {
        svc_packets.push((vec![("service", s.name.clone())], s.packets));
        svc_dropped.push((vec![("service", s.name.clone())], s.dropped));
        for b in &s.backends {
            let sb = || vec![("service", s.name.clone()), ("backend", b.name.clone())];
            let dir = |d: &str| {
                let mut l = sb();
                l.push(("direction", d.to_string()));
                l
            };
            packets.push((dir("to_backend"), b.packets_to_backend));
            packets.push((dir("to_client"), b.packets_to_client));
            bytes.push((dir("to_backend"), b.bytes_to_backend));
            bytes.push((dir("to_client"), b.bytes_to_client));
            flows.push((sb(), b.new_flows));
            active.push((sb(), b.active_flows as i64));
            connections.push((sb(), b.active_connections as i64));
            if s.sticky_timeout.is_some() {
                sticky.push((sb(), b.sticky_clients as i64));
            }
            up.push((sb(), i64::from(b.state == BackendState::Up)));
            for &st in BackendState::ALL {
                let mut l = sb();
                l.push(("state", st.label().to_string()));
                state.push((l, i64::from(b.state == st)));
            }
        }
    }
    counter(
        e,
        "xnlb_packets",
        "Packets forwarded, per backend and direction",
        &packets,
    )?;
    counter(
        e,
        "xnlb_bytes",
        "Bytes forwarded, per backend and direction",
        &bytes,
    )?;
    counter(e, "xnlb_flows", "New flows sent to each backend", &flows)?;
    counter(
        e,
        "xnlb_service_packets",
        "Packets matched to each service",
        &svc_packets,
    )?;
    counter(
        e,
        "xnlb_service_dropped",
        "Packets of each service dropped",
        &svc_dropped,
    )?;
    gauge(
        e,
        "xnlb_backend_up",
        "1 when the backend takes new flows",
        &up,
    )?;
    gauge(
        e,
        "xnlb_backend_state",
        "1 for the backend's current state",
        &state,
    )?;
    gauge(
        e,
        "xnlb_backend_active_flows",
        "Live flows to each backend",
        &active,
    )?;
    gauge(
        e,
        "xnlb_backend_active_connections",
        "Open connections to each backend with a packet in the last minute",
        &connections,
    )?;
    gauge(
        e,
        "xnlb_backend_sticky_clients",
        "Clients whose sticky entry names the backend (sticky services)",
        &sticky,
    )?;
    if let Some(a) = &status.announce {
        let announced: Vec<_> = a
            .vips
            .iter()
            .map(|v| (vec![("vip", v.vip.to_string())], i64::from(v.announced)))
            .collect();
        gauge(
            e,
            "xnlb_vip_announced",
            "1 while the VIP is on the announce interface for the routing daemon to export",
            &announced,
        )?;
    }
    let ct = &status.conntrack;
    gauge(
        e,
        "xnlb_conntrack_entries",
        "Live established flows in the connection table",
        &[(vec![], ct.entries as i64)],
    )?;
    gauge(
        e,
        "xnlb_conntrack_max_entries",
        "Size of the established-flow table",
        &[(vec![], ct.max_entries as i64)],
    )?;
    gauge(
        e,
        "xnlb_conntrack_half_open_entries",
        "Live half-open TCP flows (SYN seen, handshake not completed)",
        &[(vec![], ct.half_open as i64)],
    )?;
    gauge(
        e,
        "xnlb_conntrack_half_open_max_entries",
        "Size of the half-open table",
        &[(vec![], ct.half_open_max_entries as i64)],
    )?;
    gauge(
        e,
        "xnlb_sticky_entries",
        "Sticky clients whose entry holds, over all sticky tables",
        &[(vec![], ct.sticky_entries as i64)],
    )?;
    gauge(
        e,
        "xnlb_sticky_max_entries",
        "Size of the sticky table",
        &[(vec![], ct.sticky_max_entries as i64)],
    )?;
    counter(
        e,
        "xnlb_sticky_evictions",
        "Sticky clients forgotten by a full table to make room for new ones",
        &[(vec![], ct.sticky_evicted)],
    )?;
    let table = |t: &str| vec![("table", t.to_string())];
    counter(
        e,
        "xnlb_conntrack_evictions",
        "Flows evicted from a full table to make room for new ones",
        &[
            (table("established"), ct.evicted),
            (table("half_open"), ct.half_open_evicted),
        ],
    )?;
    let labelled = |key: &'static str, rows: Vec<(&'static str, u64)>| -> Vec<(Labels, u64)> {
        rows.into_iter()
            .map(|(l, v)| (vec![(key, l.to_string())], v))
            .collect()
    };
    counter(
        e,
        "xnlb_drops",
        "Packets dropped, by reason",
        &labelled(
            "reason",
            counters
                .drops
                .iter()
                .map(|(r, v)| (r.label(), *v))
                .collect(),
        ),
    )?;
    counter(
        e,
        "xnlb_passes",
        "Packets passed to the kernel, by reason",
        &labelled(
            "reason",
            counters
                .passes
                .iter()
                .map(|(r, v)| (r.label(), *v))
                .collect(),
        ),
    )?;
    counter(
        e,
        "xnlb_flow_events",
        "Connection-table events",
        &labelled(
            "event",
            counters
                .flow_events
                .iter()
                .map(|(r, v)| (r.label(), *v))
                .collect(),
        ),
    )?;
    counter(
        e,
        "xnlb_xdp_actions",
        "XDP verdicts",
        &labelled("action", counters.actions.clone()),
    )?;
    Ok(())
}

/// Serves `/metrics` until the process ends.
/// Connections served at once; more wait in the kernel's backlog, holding none of the
/// daemon's files. Prometheus needs one.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends no complete request headers within this is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer (a scraper reconnects).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Serves `/metrics` until the process ends. Connections are bounded in number and in time,
/// so that idle ones cannot use up the daemon's files (its health probes and admin socket
/// need them) nor keep a slot for ever.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .context("metrics slots")?;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: the backlog keeps the client until a file is free.
                warn!("metrics: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

async fn scrape(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    // Reading the maps is a few hundred syscalls: keep it off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        encode(&mut out, &registry).map(|()| out)
    })
    .await;
    match body {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}
