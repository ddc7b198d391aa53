//! The datapath keeps the FIB's answer for each backend and each flow's client
//! (`lb_common::next_hop`). When routing changes, those answers may be wrong: bumping
//! `NEXT_HOP_EPOCH` makes the datapath look every one of them up again on its next packet.

use std::borrow::{Borrow, BorrowMut};

use aya::maps::{Array, MapData};
use lb_common::maps as names;

use super::{Datapath, Result, map_err, reader::duplicate};

/// A handle of its own on `NEXT_HOP_EPOCH`, for the thread that follows routing changes.
pub struct NextHopEpoch {
    map: Array<MapData, u32>,
}

impl NextHopEpoch {
    /// Makes every kept next hop stale; returns the new epoch.
    pub fn bump(&mut self) -> Result<u32> {
        bump(&mut self.map)
    }
}

/// Moves the epoch held by `map` (`NEXT_HOP_EPOCH`, through any handle) on by one.
fn bump<T: Borrow<MapData> + BorrowMut<MapData>>(map: &mut Array<T, u32>) -> Result<u32> {
    let name = names::NEXT_HOP_EPOCH;
    let epoch = map.get(&0, 0).map_err(map_err(name))?.wrapping_add(1);
    map.set(0, epoch, 0).map_err(map_err(name))?;
    Ok(epoch)
}

impl Datapath {
    /// Makes every kept next hop stale, through the datapath's own handle.
    pub(super) fn bump_next_hop_epoch(&mut self) -> Result<u32> {
        let name = names::NEXT_HOP_EPOCH;
        bump(&mut Array::try_from(self.map_mut(name)?).map_err(map_err(name))?)
    }

    /// A handle that makes the datapath's kept next hops stale.
    pub fn next_hop_epoch(&self) -> Result<NextHopEpoch> {
        let name = names::NEXT_HOP_EPOCH;
        let map = duplicate(self.map(name)?, name)?;
        Ok(NextHopEpoch {
            map: Array::try_from(map).map_err(map_err(name))?,
        })
    }
}
