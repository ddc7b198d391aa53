//! Cluster mode's agent: a thread of its own that sends this node's heartbeat every interval,
//! listens to the other nodes', decides with `lb_model::cluster` which buckets this node owns
//! and which it is still finishing connections in, writes that into the datapath (`BUCKETS`,
//! switched whole) and renews the node's lease on it. It reads the config from the published
//! view, so a reload reaches it; `xnlb cluster drainstop|stop|start` reach it through its
//! handle, and `cluster query`, status and metrics read what it publishes.
//!
//! A node that starts listens for two intervals before it takes buckets (it must know who owns
//! what). A daemon restarted while its datapath's lease still holds takes the running bucket
//! table over and keeps serving it, so a restart or an upgrade moves nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_common::{
    addr::PROTO_TCP,
    cluster::{
        BUCKET_FINISHING, BUCKET_MINE, BUCKETS, MacMode, bucket_of, cluster_mac, igmp_group,
    },
};
use lb_model::{
    cluster::{
        Buckets, ClusterStatus, Heartbeat, Live, NodeState, NodeStatus, digest, digest_text, flags,
        members, owned_now, owners, winning_digest,
    },
    config::{Cluster, Config},
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::status::View;
use crate::{
    datapath::{ClusterMaps, Reader, monotonic_ns},
    host::{
        heartbeats::{GroupMembership, HeartbeatSocket},
        interfaces,
    },
};

/// What the administrator asks of the cluster agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Take no new flows, finish the connections, then stop.
    Drainstop,
    /// Leave the cluster now.
    Stop,
    /// Join again after a stop.
    Start,
}

/// How the daemon talks to the agent.
#[derive(Clone)]
pub struct ClusterHandle {
    verbs: mpsc::Sender<Verb>,
    pub status: watch::Receiver<Arc<ClusterStatus>>,
}

impl ClusterHandle {
    pub fn ask(&self, verb: Verb) -> Result<()> {
        self.verbs
            .send(verb)
            .map_err(|_| anyhow::anyhow!("the cluster agent has stopped"))
    }
}

/// Periods a starting node listens before it takes buckets.
const LISTEN_INTERVALS: u32 = 2;

struct Peer {
    heartbeat: Heartbeat,
    mac: [u8; 6],
    heard: Instant,
}

struct Agent {
    me: u8,
    mac: [u8; 6],
    socket: HeartbeatSocket,
    maps: ClusterMaps,
    reader: Arc<Reader>,
    view: watch::Receiver<Arc<View>>,
    status: watch::Sender<Arc<ClusterStatus>>,
    verbs: mpsc::Receiver<Verb>,
    _group: Option<GroupMembership>,
    state: NodeState,
    started: Instant,
    peers: BTreeMap<u8, Peer>,
    /// Node ids heard from two MACs, with when.
    conflicts: BTreeMap<u8, Instant>,
    owned: Buckets,
    /// Buckets given up with connections still in them, and since when.
    finishing: BTreeMap<u32, Instant>,
    finishing_now: Buckets,
    last_flags: Vec<u32>,
    last_owners: Vec<u8>,
    seq: u32,
    convergences: u64,
    sent: u64,
    received: u64,
}

/// Starts the agent for `cluster` (the config's block) on the cluster interface.
pub fn spawn(
    cluster: &Cluster,
    maps: ClusterMaps,
    reader: Arc<Reader>,
    view: watch::Receiver<Arc<View>>,
) -> Result<ClusterHandle> {
    let (ifindex, mac) = interfaces::link(&cluster.interface)?;
    let socket = HeartbeatSocket::open(&cluster.interface, ifindex, mac)?;
    let config = view.borrow().config.clone();
    let group = match (cluster.mac_mode, config.cluster_vip()) {
        (MacMode::Igmp, Some(vip)) => Some(
            GroupMembership::join(igmp_group(vip.octets()), ifindex)
                .context("joining the cluster's IGMP group")?,
        ),
        _ => None,
    };
    let (verbs_tx, verbs) = mpsc::channel();
    let (status_tx, status) = watch::channel(Arc::new(ClusterStatus::default()));
    let mut agent = Agent {
        me: cluster.node_id,
        mac,
        socket,
        maps,
        reader,
        view,
        status: status_tx,
        verbs,
        _group: group,
        state: NodeState::Joining,
        started: Instant::now(),
        peers: BTreeMap::new(),
        conflicts: BTreeMap::new(),
        owned: Buckets::default(),
        finishing: BTreeMap::new(),
        finishing_now: Buckets::default(),
        last_flags: Vec::new(),
        last_owners: Vec::new(),
        seq: 0,
        convergences: 0,
        sent: 0,
        received: 0,
    };
    agent.take_over_running_table()?;
    std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || agent.run())?;
    Ok(ClusterHandle {
        verbs: verbs_tx,
        status,
    })
}

impl Agent {
    fn config(&self) -> Arc<Config> {
        self.view.borrow().config.clone()
    }

    fn cluster(&self) -> Cluster {
        self.config()
            .cluster
            .clone()
            .expect("cluster mode stays on until a restart")
    }

    /// A daemon restarted while its datapath's lease holds keeps the buckets it served.
    fn take_over_running_table(&mut self) -> Result<()> {
        let Some(table) = self.maps.live_table(monotonic_ns())? else {
            return Ok(());
        };
        for (b, f) in table.iter().enumerate() {
            if f & BUCKET_MINE != 0 {
                self.owned.insert(b as u32);
            }
            if f & BUCKET_FINISHING != 0 {
                self.finishing.insert(b as u32, Instant::now());
            }
        }
        info!(
            "cluster: took over the running bucket table ({} owned, {} finishing)",
            self.owned.len(),
            self.finishing.len()
        );
        self.last_flags = table;
        Ok(())
    }

    fn run(mut self) {
        let mut next = Instant::now();
        loop {
            let interval = self.cluster().heartbeat.interval;
            while let Some(wait) = next.checked_duration_since(Instant::now()) {
                match self.socket.recv(wait) {
                    Ok(Some(r)) => self.heard(r.from, &r.payload),
                    Ok(None) => {}
                    Err(e) => {
                        warn!("cluster: {e:#}");
                        std::thread::sleep(wait.min(Duration::from_millis(100)));
                    }
                }
            }
            while let Ok(verb) = self.verbs.try_recv() {
                self.apply(verb);
            }
            next += interval;
            let now = Instant::now();
            if next < now {
                next = now + interval;
            }
            if let Err(e) = self.tick() {
                warn!("cluster: {e:#}");
            }
        }
    }

    fn heard(&mut self, from: [u8; 6], payload: &[u8]) {
        let Some(h) = Heartbeat::decode(payload) else {
            return;
        };
        self.received += 1;
        let now = Instant::now();
        if h.node_id == self.me {
            if from != self.mac {
                self.conflicts.insert(h.node_id, now);
            }
            return;
        }
        if let Some(p) = self.peers.get(&h.node_id)
            && p.mac != from
            && now.duration_since(p.heard) < self.cluster().heartbeat.dead_after()
        {
            self.conflicts.insert(h.node_id, now);
        }
        self.peers.insert(
            h.node_id,
            Peer {
                heartbeat: h,
                mac: from,
                heard: now,
            },
        );
    }

    fn apply(&mut self, verb: Verb) {
        let before = self.state;
        self.state = match (verb, self.state) {
            (Verb::Drainstop, NodeState::Converged | NodeState::Joining) => NodeState::Draining,
            (Verb::Stop, _) => NodeState::Stopped,
            (Verb::Start, NodeState::Stopped | NodeState::Draining) => {
                self.started = Instant::now();
                NodeState::Joining
            }
            (_, state) => state,
        };
        if self.state != before {
            info!("cluster: {before:?} -> {:?} (administrator)", self.state);
        }
        if self.state == NodeState::Stopped {
            self.owned = Buckets::default();
            self.finishing.clear();
        }
    }

    fn tick(&mut self) -> Result<()> {
        let config = self.config();
        let cluster = self.cluster();
        let dead_after = cluster.heartbeat.dead_after();
        let now = Instant::now();
        self.peers
            .retain(|_, p| now.duration_since(p.heard) < dead_after);
        self.conflicts
            .retain(|_, at| now.duration_since(*at) < dead_after);
        let conflicted: BTreeSet<u8> = self.conflicts.keys().copied().collect();
        let my_digest = digest(&digest_text(&config));

        // This node's state for this round: a conflict (its node id heard from another MAC, or
        // a config that differs from the cluster's) takes it out until it clears; then it
        // listens again before it takes buckets.
        let mut live: Live = self
            .peers
            .values()
            .map(|p| (p.heartbeat.node_id, p.heartbeat.clone()))
            .collect();
        live.insert(self.me, self.heartbeat(&cluster, my_digest));
        let id_conflict = conflicted.contains(&self.me);
        let digest_ok = winning_digest(&live, &conflicted) == Some(my_digest);
        let listened =
            now.duration_since(self.started) >= cluster.heartbeat.interval * LISTEN_INTERVALS;
        let before = self.state;
        self.state = match self.state {
            NodeState::Draining | NodeState::Stopped => self.state,
            _ if id_conflict || !digest_ok => NodeState::Conflict,
            NodeState::Conflict => {
                self.started = now;
                NodeState::Joining
            }
            NodeState::Joining if listened => NodeState::Converged,
            state => state,
        };
        if self.state != before {
            match self.state {
                NodeState::Conflict if id_conflict => warn!(
                    "cluster: another node uses node id {}: this node owns no buckets",
                    self.me
                ),
                NodeState::Conflict => {
                    warn!(
                        "cluster: this node's config differs from the cluster's: it owns no buckets"
                    )
                }
                state => info!("cluster: {before:?} -> {state:?}"),
            }
        }
        live.insert(self.me, self.heartbeat(&cluster, my_digest));

        let members = members(&live, &conflicted);
        let owners = owners(&members);
        if owners != self.last_owners {
            if !self.last_owners.is_empty() {
                self.convergences += 1;
                info!(
                    "cluster: converged on {} members: {:?}",
                    members.len(),
                    members.iter().map(|m| m.0).collect::<Vec<_>>()
                );
            }
            self.last_owners = owners.clone();
        }
        // A joining node keeps what a restart took over until it may decide.
        let owned = match self.state {
            NodeState::Joining => self.owned,
            state => owned_now(self.me, &owners, &live, state == NodeState::Converged),
        };
        for b in self.owned.iter().filter(|&b| !owned.contains(b)) {
            self.finishing.entry(b).or_insert(now);
        }
        for b in owned.iter() {
            self.finishing.remove(&b);
        }
        self.owned = owned;
        self.finishing_now = self.still_finishing(&config)?;
        let flags = flags(self.me, &self.owned, &self.finishing_now, &live);
        if flags != self.last_flags {
            self.maps.switch_table(&flags)?;
            self.last_flags = flags;
        }
        if self.state == NodeState::Draining && self.finishing_now.is_empty() {
            info!("cluster: drained: every connection has ended; stopped");
            self.state = NodeState::Stopped;
        }
        self.seq = self.seq.wrapping_add(1);
        self.publish(&config, &cluster, my_digest, members.len() as u32, &live);
        // The lease is renewed only for a heartbeat that went out: a node the others stop
        // hearing lets go of its buckets before they take them.
        self.socket
            .send(&self.heartbeat(&cluster, my_digest).encode())?;
        self.sent += 1;
        self.maps
            .renew_lease(monotonic_ns() + cluster.heartbeat.lease().as_nanos() as u64)?;
        Ok(())
    }

    fn heartbeat(&self, cluster: &Cluster, digest: u64) -> Heartbeat {
        Heartbeat {
            node_id: self.me,
            state: self.state,
            share: cluster.share,
            digest,
            owned: self.owned,
            finishing: self.finishing_now,
            seq: self.seq,
        }
    }

    /// The buckets given up that still hold this node's live TCP connections (a bucket is let
    /// go after `tcp_timeout`, the longest a connection can stay idle).
    fn still_finishing(&mut self, config: &Config) -> Result<Buckets> {
        let limit = config.conntrack.tcp_timeout;
        self.finishing.retain(|_, since| since.elapsed() < limit);
        let mut holding = Buckets::default();
        if self.finishing.is_empty() {
            return Ok(holding);
        }
        let settings = self.view.borrow().settings;
        let now = monotonic_ns();
        let service_of = |vip: Ipv4Addr, port: u16| {
            config
                .services
                .iter()
                .find(|s| s.vip_v4() == vip && s.ports.iter().any(|r| r.lo <= port && port <= r.hi))
        };
        for half_open in [false, true] {
            for (key, entry) in self.reader.flows_in(half_open)? {
                if key.proto != PROTO_TCP || entry.expired(key.proto, &settings, now) {
                    continue;
                }
                let vip = Ipv4Addr::from(key.dst[0].to_ne_bytes());
                let Some(s) = service_of(vip, u16::from_be(key.dst_port)) else {
                    continue;
                };
                let b = bucket_of(s.affinity as u8, s.network_prefix(), &key.src, key.src_port);
                if self.finishing.contains_key(&b) {
                    holding.insert(b);
                }
            }
        }
        let done: Vec<u32> = self
            .finishing
            .keys()
            .copied()
            .filter(|&b| !holding.contains(b))
            .collect();
        for b in done {
            self.finishing.remove(&b);
        }
        Ok(holding)
    }

    fn publish(
        &self,
        config: &Config,
        cluster: &Cluster,
        my_digest: u64,
        members: u32,
        live: &Live,
    ) {
        let mac_text = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
        let now = Instant::now();
        let mut nodes = vec![NodeStatus {
            node_id: self.me,
            mac: mac_text(self.mac),
            state: state_word(self.state).into(),
            share: cluster.share,
            owned: self.owned.len(),
            finishing: self.finishing_now.len(),
            last_heard_ms: 0,
            digest_matches: true,
        }];
        nodes.extend(self.peers.values().map(|p| NodeStatus {
            node_id: p.heartbeat.node_id,
            mac: mac_text(p.mac),
            state: state_word(p.heartbeat.state).into(),
            share: p.heartbeat.share,
            owned: p.heartbeat.owned.len(),
            finishing: p.heartbeat.finishing.len(),
            last_heard_ms: now.duration_since(p.heard).as_millis() as u64,
            digest_matches: p.heartbeat.digest == my_digest,
        }));
        let mut problems: Vec<String> = self
            .conflicts
            .keys()
            .map(|id| format!("node id {id} is used by two nodes: neither owns buckets"))
            .collect();
        problems.extend(live.values().filter(|h| h.digest != my_digest).map(|h| {
            format!(
                "node {} has a different config (digest {:016x})",
                h.node_id, h.digest
            )
        }));
        let cluster_mac = config
            .cluster_vip()
            .map(|vip| mac_text(cluster_mac(cluster.mac_mode, vip.octets())))
            .unwrap_or_default();
        self.status.send_replace(Arc::new(ClusterStatus {
            node_id: self.me,
            state: state_word(self.state).into(),
            mac_mode: cluster.mac_mode.label().into(),
            cluster_mac,
            digest: format!("{my_digest:016x}"),
            buckets: BUCKETS,
            owned: self.owned.len(),
            finishing: self.finishing_now.len(),
            members,
            convergences: self.convergences,
            heartbeats_sent: self.sent,
            heartbeats_received: self.received,
            nodes,
            problems,
        }));
    }
}

fn state_word(s: NodeState) -> &'static str {
    match s {
        NodeState::Joining => "joining",
        NodeState::Converged => "converged",
        NodeState::Draining => "draining",
        NodeState::Stopped => "stopped",
        NodeState::Conflict => "conflict",
    }
}
