//! Cluster mode's decisions, without the network: who is a member, which buckets each member
//! owns, and what this node's datapath flags are. Every node computes the same answer from the
//! same heartbeats, so there is no leader.
//!
//! - **Members** are the live nodes (heard within `tolerance` heartbeats) that announce the
//!   same config digest as the largest group (ties: the group with the lowest node id), are not
//!   draining or stopped, and whose node id no other node uses.
//! - **Owners**: each bucket goes to the member with the highest score for it, a weighted
//!   rendezvous hash: a node's score is the largest of `share` hashes of (node, bucket, i), so a
//!   node's chance of winning is proportional to its share, and a membership change moves only
//!   the buckets of the nodes that came or went.
//! - **Taking and giving up**: a node gives a bucket up as soon as the owners say it is
//!   another's, and takes one only when no live node still announces owning it, so no two
//!   nodes own a bucket at once (a bucket in transit has no owner for up to one heartbeat).
//! - **Finishing**: a node that gave a bucket up while it still carried TCP connections there
//!   announces it as finishing until they end; the new owner then takes only new flows there.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::cluster::{BUCKET_FINISHING, BUCKET_HANDOVER, BUCKET_MINE, BUCKETS};
use serde::{Deserialize, Serialize};

/// A set of buckets (256 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Buckets(pub [u8; (BUCKETS / 8) as usize]);

impl Buckets {
    pub fn contains(&self, b: u32) -> bool {
        self.0[(b / 8) as usize] & (1 << (b % 8)) != 0
    }

    pub fn insert(&mut self, b: u32) {
        self.0[(b / 8) as usize] |= 1 << (b % 8);
    }

    pub fn remove(&mut self, b: u32) {
        self.0[(b / 8) as usize] &= !(1 << (b % 8));
    }

    pub fn len(&self) -> u32 {
        self.0.iter().map(|byte| byte.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..BUCKETS).filter(|&b| self.contains(b))
    }
}

/// What a node says it is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Started (or restarted, or `cluster start`): listening before it takes any bucket.
    Joining,
    /// A member: owns its buckets.
    Converged,
    /// `cluster drainstop`: takes no new flows, finishes its connections, then stops.
    Draining,
    /// `cluster stop`, or drained: owns nothing.
    Stopped,
    /// Its config digest or node id conflicts with the cluster's: owns nothing.
    Conflict,
}

impl NodeState {
    pub fn byte(self) -> u8 {
        match self {
            NodeState::Joining => 0,
            NodeState::Converged => 1,
            NodeState::Draining => 2,
            NodeState::Stopped => 3,
            NodeState::Conflict => 4,
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => NodeState::Joining,
            1 => NodeState::Converged,
            2 => NodeState::Draining,
            3 => NodeState::Stopped,
            4 => NodeState::Conflict,
            _ => return None,
        })
    }

    /// A member: takes buckets. A joining node is not yet (it keeps only what a restart took
    /// over), so the others keep its share until it has listened and converged.
    fn wants_buckets(self) -> bool {
        self == NodeState::Converged
    }
}

/// One heartbeat: what a node tells the others every interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub node_id: u8,
    pub state: NodeState,
    pub share: u32,
    /// Digest of what must match on every node (`digest`).
    pub digest: u64,
    /// Buckets it owns now.
    pub owned: Buckets,
    /// Buckets it gave up but still carries TCP connections in.
    pub finishing: Buckets,
    pub seq: u32,
}

const MAGIC: &[u8; 4] = b"XNLB";
const VERSION: u8 = 1;
/// Encoded size: magic, version, node id, state, share, digest, owned, finishing, seq.
pub const HEARTBEAT_LEN: usize = 4 + 1 + 1 + 1 + 4 + 8 + 32 + 32 + 4;

impl Heartbeat {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEARTBEAT_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.node_id);
        out.push(self.state.byte());
        out.extend_from_slice(&self.share.to_be_bytes());
        out.extend_from_slice(&self.digest.to_be_bytes());
        out.extend_from_slice(&self.owned.0);
        out.extend_from_slice(&self.finishing.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// A heartbeat from `bytes`, or `None` for anything else (another protocol on the same
    /// EtherType, a newer version, a truncated frame).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEARTBEAT_LEN || &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return None;
        }
        let take = |from: usize, n: usize| &bytes[from..from + n];
        let bitmap = |from: usize| Buckets(take(from, 32).try_into().expect("32 bytes"));
        Some(Heartbeat {
            node_id: bytes[5],
            state: NodeState::from_byte(bytes[6])?,
            share: u32::from_be_bytes(take(7, 4).try_into().ok()?),
            digest: u64::from_be_bytes(take(11, 8).try_into().ok()?),
            owned: bitmap(19),
            finishing: bitmap(51),
            seq: u32::from_be_bytes(take(83, 4).try_into().ok()?),
        })
    }
}

/// The live nodes' last heartbeats, this node's included, by node id.
pub type Live = BTreeMap<u8, Heartbeat>;

/// Nodes that may own buckets: those of the winning digest group (the largest; on a tie the
/// one holding the lowest node id) that want buckets. `conflicted` node ids (used by two nodes)
/// are left out.
pub fn members(live: &Live, conflicted: &BTreeSet<u8>) -> Vec<(u8, u32)> {
    let winning = winning_digest(live, conflicted);
    live.values()
        .filter(|h| Some(h.digest) == winning && !conflicted.contains(&h.node_id))
        .filter(|h| h.state.wants_buckets() && h.share > 0)
        .map(|h| (h.node_id, h.share))
        .collect()
}

/// The digest of the largest group of live nodes (ties: the group with the lowest node id).
pub fn winning_digest(live: &Live, conflicted: &BTreeSet<u8>) -> Option<u64> {
    let mut groups: BTreeMap<u64, (usize, u8)> = BTreeMap::new();
    for h in live.values().filter(|h| !conflicted.contains(&h.node_id)) {
        let g = groups.entry(h.digest).or_insert((0, u8::MAX));
        g.0 += 1;
        g.1 = g.1.min(h.node_id);
    }
    groups
        .into_iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
        .map(|(digest, _)| digest)
}

/// The owner of each bucket among `members` (node id, share); 0 when there are none.
pub fn owners(members: &[(u8, u32)]) -> Vec<u8> {
    (0..BUCKETS)
        .map(|b| {
            members
                .iter()
                .map(|&(id, share)| (score(id, share, b), id))
                .max()
                .map_or(0, |(_, id)| id)
        })
        .collect()
}

/// A node's score for a bucket: the largest of `share` independent hashes, so that the chance
/// of having the largest score of all is proportional to the share.
fn score(node: u8, share: u32, bucket: u32) -> u64 {
    (0..share)
        .map(|i| mix64(((node as u64) << 48) | ((bucket as u64) << 24) | i as u64))
        .max()
        .unwrap_or(0)
}

/// SplitMix64's finaliser: a well-spread 64-bit hash of a 64-bit key.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The buckets `me` owns after this round: those the owners give it that no other live node
/// still announces owning (it waits for them to give them up), plus none at all while it may
/// not take any (`may_take` false: still listening, draining, stopped, in conflict).
pub fn owned_now(me: u8, owners: &[u8], live: &Live, may_take: bool) -> Buckets {
    let mut mine = Buckets::default();
    if !may_take {
        return mine;
    }
    for b in 0..BUCKETS {
        if owners[b as usize] != me {
            continue;
        }
        let claimed = live
            .values()
            .any(|h| h.node_id != me && h.owned.contains(b));
        if !claimed {
            mine.insert(b);
        }
    }
    mine
}

/// This node's datapath flags for each bucket: `BUCKET_MINE` (with `BUCKET_HANDOVER` where
/// another live node is finishing there) or `BUCKET_FINISHING`.
pub fn flags(me: u8, owned: &Buckets, finishing: &Buckets, live: &Live) -> Vec<u32> {
    (0..BUCKETS)
        .map(|b| {
            if owned.contains(b) {
                let others_finishing = live
                    .values()
                    .any(|h| h.node_id != me && h.finishing.contains(b));
                BUCKET_MINE | if others_finishing { BUCKET_HANDOVER } else { 0 }
            } else if finishing.contains(b) {
                BUCKET_FINISHING
            } else {
                0
            }
        })
        .collect()
}

/// FNV-1a over `text`: the config digest every node must share (`lb-userspace` hashes the
/// parts of the config that decide where packets go).
pub fn digest(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What `xnlb cluster query` shows (and `xnlb status` sums up), as the agent last saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: u8,
    pub state: String,
    pub mac_mode: String,
    pub cluster_mac: String,
    /// This node's config digest (hex).
    pub digest: String,
    pub buckets: u32,
    /// Buckets this node owns, and those it is finishing connections in.
    pub owned: u32,
    pub finishing: u32,
    /// Converged members, this node included.
    pub members: u32,
    pub convergences: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    /// This node first, then every node heard within the tolerance.
    pub nodes: Vec<NodeStatus>,
    /// Conflicts: a node id used twice, a config digest that differs.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: u8,
    pub mac: String,
    pub state: String,
    pub share: u32,
    pub owned: u32,
    pub finishing: u32,
    /// Since its last heartbeat (0 for this node).
    pub last_heard_ms: u64,
    pub digest_matches: bool,
}

impl ClusterStatus {
    /// The table `xnlb cluster query` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "node {} {}   {} MAC {}   {} of {} buckets owned, {} finishing   {} members   {} convergences",
            self.node_id,
            self.state,
            self.mac_mode,
            self.cluster_mac,
            self.owned,
            self.buckets,
            self.finishing,
            self.members,
            self.convergences
        );
        let _ = writeln!(
            out,
            "{:>4}  {:<17}  {:<9}  {:>5}  {:>5}  {:>9}  {:>10}  digest",
            "node", "mac", "state", "share", "owned", "finishing", "heard"
        );
        for n in &self.nodes {
            let heard = if n.last_heard_ms == 0 && n.node_id == self.node_id {
                "this node".to_string()
            } else {
                format!("{} ms ago", n.last_heard_ms)
            };
            let _ = writeln!(
                out,
                "{:>4}  {:<17}  {:<9}  {:>5}  {:>5}  {:>9}  {:>10}  {}",
                n.node_id,
                n.mac,
                n.state,
                n.share,
                n.owned,
                n.finishing,
                heard,
                if n.digest_matches {
                    "matches"
                } else {
                    "DIFFERS"
                }
            );
        }
        for p in &self.problems {
            let _ = writeln!(out, "problem: {p}");
        }
        out
    }
}

/// The text whose digest every node must share: what decides where a packet goes (mode, MAC
/// mode, heartbeat timing, and each service's VIP, ports, protocol, filtering, affinity and
/// backends). Written out field by field, so that it does not change between xnlb versions
/// that decide alike (a rolling upgrade keeps the cluster together).
pub fn digest_text(config: &crate::config::Config) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = write!(t, "mode={};", config.mode.label());
    if let Some(c) = &config.cluster {
        let _ = write!(
            t,
            "mac_mode={};interval_ms={};tolerance={};gateway={:?};",
            c.mac_mode.label(),
            c.heartbeat.interval.as_millis(),
            c.heartbeat.tolerance,
            c.gateway
        );
    }
    for s in &config.services {
        let ports: Vec<String> = s.ports.iter().map(|p| p.to_string()).collect();
        let _ = write!(
            t,
            "service={};vip={};ports={};protocol={:?};filtering={};affinity={};prefix={};",
            s.name,
            s.vip,
            ports.join(","),
            s.protocol,
            s.filtering.label(),
            s.affinity.label(),
            s.network_prefix()
        );
        for b in &s.backends {
            let _ = write!(
                t,
                "backend={},{},{:?},{},{:?};",
                b.name, b.address, b.port, b.weight, b.priority
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node_id: u8, state: NodeState, digest: u64) -> Heartbeat {
        Heartbeat {
            node_id,
            state,
            share: 100,
            digest,
            owned: Buckets::default(),
            finishing: Buckets::default(),
            seq: 1,
        }
    }

    fn live(beats: Vec<Heartbeat>) -> Live {
        beats.into_iter().map(|h| (h.node_id, h)).collect()
    }

    #[test]
    fn the_digest_follows_what_decides_where_packets_go_and_nothing_else() {
        let text = "interfaces: { client: lan0 }\nmode: one-arm\nsnat: { addresses: [198.18.0.2] }\ncluster: { node_id: 1, interface: lan0 }\nservices:\n  - name: web\n    vip: 198.18.0.100\n    ports: [80]\n    backends:\n      - { name: b1, address: 198.18.0.201 }\n";
        let base = crate::config::parse(text, "t").unwrap().config;
        let of = |c: &crate::config::Config| digest(&digest_text(c));
        let mut other_node = base.clone();
        other_node.cluster.as_mut().unwrap().node_id = 2;
        other_node.cluster.as_mut().unwrap().share = 300;
        other_node.snat.as_mut().unwrap().addresses = vec!["198.18.0.3".parse().unwrap()];
        assert_eq!(of(&base), of(&other_node), "per-node settings do not count");
        let mut other_backend = base.clone();
        other_backend.services[0].backends[0].weight = 50;
        assert_ne!(of(&base), of(&other_backend));
        let mut other_affinity = base.clone();
        other_affinity.services[0].affinity = crate::config::Affinity::None;
        assert_ne!(of(&base), of(&other_affinity));
    }

    #[test]
    fn a_heartbeat_survives_the_wire_and_garbage_is_refused() {
        let mut h = beat(7, NodeState::Draining, 0x1234_5678_9abc_def0);
        h.owned.insert(3);
        h.owned.insert(255);
        h.finishing.insert(17);
        h.share = 250;
        h.seq = 99;
        let bytes = h.encode();
        assert_eq!(bytes.len(), HEARTBEAT_LEN);
        assert_eq!(Heartbeat::decode(&bytes), Some(h));
        assert_eq!(Heartbeat::decode(&bytes[..HEARTBEAT_LEN - 1]), None);
        let mut other = bytes.clone();
        other[0] = b'Y';
        assert_eq!(Heartbeat::decode(&other), None);
        let mut newer = bytes;
        newer[4] = VERSION + 1;
        assert_eq!(Heartbeat::decode(&newer), None);
    }

    #[test]
    fn shares_divide_the_buckets_in_proportion() {
        let owners = owners(&[(1, 100), (2, 100), (3, 200)]);
        let count = |id| owners.iter().filter(|&&o| o == id).count() as f64;
        // Expected 64, 64, 128 of 256; a binomial's 3 standard deviations are about 21 and 24.
        assert!((count(1) - 64.0).abs() < 22.0, "{}", count(1));
        assert!((count(2) - 64.0).abs() < 22.0, "{}", count(2));
        assert!((count(3) - 128.0).abs() < 25.0, "{}", count(3));
        assert_eq!(owners.iter().filter(|&&o| o == 0).count(), 0);
        assert!(super::owners(&[]).iter().all(|&o| o == 0));
    }

    #[test]
    fn a_node_leaving_moves_only_its_buckets_and_a_node_joining_takes_only_new_ones() {
        let three = owners(&[(1, 100), (2, 100), (3, 100)]);
        let two = owners(&[(1, 100), (2, 100)]);
        for b in 0..BUCKETS as usize {
            if three[b] != 3 {
                assert_eq!(
                    two[b], three[b],
                    "bucket {b} moved although its owner stayed"
                );
            }
        }
        // The reverse: node 3 joining takes buckets only for itself.
        for b in 0..BUCKETS as usize {
            assert!(three[b] == two[b] || three[b] == 3);
        }
    }

    #[test]
    fn the_largest_digest_group_wins_and_only_nodes_that_want_buckets_are_members() {
        let l = live(vec![
            beat(1, NodeState::Converged, 7),
            beat(2, NodeState::Converged, 7),
            beat(3, NodeState::Converged, 9),
            beat(4, NodeState::Draining, 7),
        ]);
        assert_eq!(members(&l, &BTreeSet::new()), vec![(1, 100), (2, 100)]);
        // A tie: the group with the lowest node id.
        let tie = live(vec![
            beat(2, NodeState::Converged, 7),
            beat(1, NodeState::Converged, 9),
        ]);
        assert_eq!(members(&tie, &BTreeSet::new()), vec![(1, 100)]);
        // A node id used twice owns nothing.
        assert_eq!(members(&l, &BTreeSet::from([1])), vec![(2, 100)]);
    }

    #[test]
    fn a_bucket_is_taken_only_once_its_old_owner_gave_it_up() {
        let owners = owners(&[(1, 100), (2, 100)]);
        let b = owners.iter().position(|&o| o == 2).unwrap() as u32;
        let mut old = beat(1, NodeState::Converged, 7);
        old.owned.insert(b);
        let l = live(vec![old.clone(), beat(2, NodeState::Converged, 7)]);
        assert!(
            !owned_now(2, &owners, &l, true).contains(b),
            "1 still announces it"
        );
        old.owned.remove(b);
        old.finishing.insert(b);
        let l = live(vec![old, beat(2, NodeState::Converged, 7)]);
        let mine = owned_now(2, &owners, &l, true);
        assert!(mine.contains(b));
        assert!(
            owned_now(2, &owners, &l, false).is_empty(),
            "not while listening"
        );
        let f = flags(2, &mine, &Buckets::default(), &l);
        assert_eq!(
            f[b as usize],
            BUCKET_MINE | BUCKET_HANDOVER,
            "1 is finishing there"
        );
        let mut finishing = Buckets::default();
        finishing.insert(b);
        assert_eq!(
            flags(1, &Buckets::default(), &finishing, &l)[b as usize],
            BUCKET_FINISHING
        );
    }
}
