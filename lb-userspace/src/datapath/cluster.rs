//! Cluster mode's maps, through handles of their own for the cluster agent's thread: the bucket
//! table (written whole into the table the datapath is not reading, then switched) and the
//! node's lease on it.

use aya::maps::{Array, MapData};
use lb_common::{
    cluster::{ACTIVE_TABLE, BUCKET_TABLES, BUCKETS, LEASE_UNTIL},
    maps as names,
};

use super::{Datapath, Result, map_err, reader::duplicate};

pub struct ClusterMaps {
    buckets: Array<MapData, u32>,
    state: Array<MapData, u64>,
}

impl ClusterMaps {
    /// The live table's flags, if the lease on it still holds at `now` (monotonic ns): what a
    /// restarted daemon takes over. An expired table is nobody's.
    pub fn live_table(&self, now: u64) -> Result<Option<Vec<u32>>> {
        let name = names::CLUSTER_STATE;
        let lease = self.state.get(&LEASE_UNTIL, 0).map_err(map_err(name))?;
        if lease <= now {
            return Ok(None);
        }
        let table = (self.state.get(&ACTIVE_TABLE, 0).map_err(map_err(name))? & 1) as u32;
        let name = names::BUCKETS;
        (0..BUCKETS)
            .map(|b| {
                self.buckets
                    .get(&(table * BUCKETS + b), 0)
                    .map_err(map_err(name))
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    /// Makes `flags` (one per bucket) the live table: written into the other table, then
    /// switched with one write, so a packet sees the old table or the new one.
    pub fn switch_table(&mut self, flags: &[u32]) -> Result<()> {
        let name = names::CLUSTER_STATE;
        let live = self.state.get(&ACTIVE_TABLE, 0).map_err(map_err(name))? & 1;
        let next = ((live + 1) % BUCKET_TABLES as u64) as u32;
        for (b, &f) in flags.iter().enumerate().take(BUCKETS as usize) {
            self.buckets
                .set(next * BUCKETS + b as u32, f, 0)
                .map_err(map_err(names::BUCKETS))?;
        }
        self.state
            .set(ACTIVE_TABLE, next as u64, 0)
            .map_err(map_err(name))
    }

    /// The bucket table stands until `until` (monotonic ns); past it the node owns nothing.
    pub fn renew_lease(&mut self, until: u64) -> Result<()> {
        self.state
            .set(LEASE_UNTIL, until, 0)
            .map_err(map_err(names::CLUSTER_STATE))
    }
}

impl Datapath {
    /// Handles on the cluster maps for the cluster agent.
    pub fn cluster_maps(&self) -> Result<ClusterMaps> {
        let handle = |name| -> Result<_> {
            let map = duplicate(self.map(name)?, name)?;
            Ok(map)
        };
        Ok(ClusterMaps {
            buckets: Array::try_from(handle(names::BUCKETS)?).map_err(map_err(names::BUCKETS))?,
            state: Array::try_from(handle(names::CLUSTER_STATE)?)
                .map_err(map_err(names::CLUSTER_STATE))?,
        })
    }
}
