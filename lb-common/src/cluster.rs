//! Cluster mode, NLB's model: every node receives every packet for the VIPs through a shared
//! cluster MAC, maps it to a bucket by the client (the same affinity key as the backend choice,
//! so a client's flows stay on one node), and keeps only the packets of the buckets it owns.
//! What the datapath and the controller agree on: the cluster MACs, a client's bucket, the
//! flags of a bucket, the cluster state words and the heartbeat's EtherType.

use crate::{addr::Addr, hash::affinity_hash, kernel_enum::kernel_enum};

/// Buckets the hash space is divided into (NLB has 60; more give finer shares).
pub const BUCKETS: u32 = 256;

/// `BUCKETS` holds two tables of `BUCKETS` flags; `CLUSTER_STATE[ACTIVE_TABLE]` says which one
/// the datapath reads. The controller writes the other, then switches, as with Maglev tables.
pub const BUCKET_TABLES: u32 = 2;

/// This node owns the bucket: it takes new flows in it and carries its own.
pub const BUCKET_MINE: u32 = 1;
/// This node owned the bucket before the last convergence and still has TCP connections in it:
/// it carries them to their end and takes nothing new.
pub const BUCKET_FINISHING: u32 = 2;
/// (With `BUCKET_MINE`.) Another live node is finishing connections in the bucket: only new
/// flows are taken (a SYN, or a UDP packet), never a TCP packet of a connection this node does
/// not know, which is that node's.
pub const BUCKET_HANDOVER: u32 = 4;

/// Words of `CLUSTER_STATE`.
/// Monotonic time (ns) until which this node's bucket table stands. The controller renews it
/// with each heartbeat; past it (the controller died or hung) the node owns nothing, because
/// the other nodes are about to take its buckets.
pub const LEASE_UNTIL: u32 = 0;
/// Which of the two bucket tables is live (0 or 1).
pub const ACTIVE_TABLE: u32 = 1;
pub const CLUSTER_STATE_WORDS: u32 = 2;

/// Hashes a client the same way on every node, whatever the service's own seed.
const CLUSTER_SEED: u32 = 0x6e6c_6221;

/// The bucket of a client of a service with `affinity` (and `network_prefix`); `client_port` in
/// network byte order.
#[inline(always)]
pub const fn bucket_of(affinity: u8, network_prefix: u8, client: &Addr, client_port: u16) -> u32 {
    affinity_hash(affinity, network_prefix, client, client_port, CLUSTER_SEED) % BUCKETS
}

/// The EtherType of xnlb's heartbeats (IEEE 802 local experimental EtherType 1; not NLB's).
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88b5;

kernel_enum! {
    /// How the VIPs' shared MAC reaches every node.
    MacMode {
        /// `02-BF-a-b-c-d`: a unicast MAC no node ever sends from, so switches flood it.
        Unicast = 0 => "unicast",
        /// `03-BF-a-b-c-d`: a multicast MAC, flooded by switches.
        Multicast = 1 => "multicast",
        /// `01-00-5E-7F-c-d`: the MAC of group 239.255.c.d, which the nodes join, so a snooping
        /// switch floods it only to their ports.
        Igmp = 2 => "igmp",
    }
    default Unicast
}

/// The cluster MAC for address `ip` (a.b.c.d) in `mode`.
pub const fn cluster_mac(mode: MacMode, ip: [u8; 4]) -> [u8; 6] {
    let [a, b, c, d] = ip;
    match mode {
        MacMode::Unicast => [0x02, 0xbf, a, b, c, d],
        MacMode::Multicast => [0x03, 0xbf, a, b, c, d],
        MacMode::Igmp => [0x01, 0x00, 0x5e, 0x7f, c, d],
    }
}

/// The IGMP group whose MAC is `cluster_mac(Igmp, ip)`.
pub const fn igmp_group(ip: [u8; 4]) -> [u8; 4] {
    [239, 255, ip[2], ip[3]]
}

/// Cluster mode's part of the datapath settings. All zero: cluster mode off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterSettings {
    /// 1: cluster mode on.
    pub enabled: u8,
    pub node_id: u8,
    pub _pad: u16,
    /// The cluster interface: ARP requests for a VIP arriving there are answered with
    /// `vip_mac`.
    pub client_ifindex: u32,
    pub vip_mac: [u8; 6],
    /// Two-arm: the shared gateway's MAC, answered for `gateway` on `server_ifindex`.
    pub gateway_mac: [u8; 6],
    /// Two-arm: the backends' gateway address (network order); 0 for none.
    pub gateway: u32,
    pub server_ifindex: u32,
    /// This node's own MACs on the two interfaces: the source of its ARP answers.
    pub own_client_mac: [u8; 6],
    pub own_server_mac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<ClusterSettings>() == 40);

impl ClusterSettings {
    /// Cluster mode off.
    pub const OFF: Self = Self {
        enabled: 0,
        node_id: 0,
        _pad: 0,
        client_ifindex: 0,
        vip_mac: [0; 6],
        gateway_mac: [0; 6],
        gateway: 0,
        server_ifindex: 0,
        own_client_mac: [0; 6],
        own_server_mac: [0; 6],
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::v4;

    #[test]
    fn cluster_macs_follow_nlb() {
        let vip = [198, 18, 1, 100];
        assert_eq!(
            cluster_mac(MacMode::Unicast, vip),
            [0x02, 0xbf, 198, 18, 1, 100]
        );
        assert_eq!(
            cluster_mac(MacMode::Multicast, vip),
            [0x03, 0xbf, 198, 18, 1, 100]
        );
        assert_eq!(
            cluster_mac(MacMode::Igmp, vip),
            [0x01, 0x00, 0x5e, 0x7f, 1, 100]
        );
        assert_eq!(igmp_group(vip), [239, 255, 1, 100]);
        // The group's MAC is the IGMP cluster MAC: 01-00-5E and the group's low 23 bits.
        let g = igmp_group(vip);
        assert_eq!(
            [0x01, 0x00, 0x5e, g[1] & 0x7f, g[2], g[3]],
            cluster_mac(MacMode::Igmp, vip)
        );
    }

    #[test]
    fn buckets_spread_clients_and_follow_affinity() {
        let mut seen = [0u32; BUCKETS as usize];
        for n in 0..25_600u32 {
            let client = v4([198, 19, (n >> 8) as u8, n as u8]);
            seen[bucket_of(1, 24, &client, 0) as usize] += 1;
        }
        // 100 clients per bucket on average; none empty, none more than twice the mean.
        assert!(seen.iter().all(|&c| c > 0 && c < 200), "{seen:?}");
        // Affinity single ignores the port; none does not.
        let client = v4([198, 19, 0, 1]);
        assert_eq!(bucket_of(1, 24, &client, 1), bucket_of(1, 24, &client, 2));
        let by_port: [u32; 8] = core::array::from_fn(|p| bucket_of(0, 24, &client, p as u16));
        assert!(by_port.iter().any(|&b| b != by_port[0]));
    }
}
