//! `xnlb trace`'s side in the datapath (`lb_common::trace`): arming and clearing the filter,
//! reading the events from the ring buffer, and what the CPUs could not write.

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use lb_common::{
    maps as names,
    trace::{TraceBudget, TraceEvent, TraceFilter},
};

use super::{DatapathError, Reader, Result, map_err};

/// Handles to the trace maps of one datapath: one tap per running trace.
pub struct Tap {
    filter: Array<MapData, TraceFilter>,
    budget: PerCpuArray<MapData, TraceBudget>,
    events: RingBuf<MapData>,
}

/// What the CPUs could not write since the tap was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Missed {
    /// Over the rate limit.
    pub limited: u64,
    /// The ring buffer was full (the reader behind).
    pub lost: u64,
}

impl Tap {
    /// Opens the trace maps of the datapath `reader` reads.
    pub fn open(reader: &Reader) -> Result<Self> {
        let filter =
            Array::try_from(reader.own_handle(names::TRACE)?).map_err(map_err(names::TRACE))?;
        let budget = PerCpuArray::try_from(reader.own_handle(names::TRACE_BUDGET)?)
            .map_err(map_err(names::TRACE_BUDGET))?;
        let events = match reader.own_handle(names::TRACE_EVENTS)? {
            map @ Map::RingBuf(_) => {
                RingBuf::try_from(map).map_err(map_err(names::TRACE_EVENTS))?
            }
            _ => return Err(DatapathError::MissingMap(names::TRACE_EVENTS)),
        };
        Ok(Self {
            filter,
            budget,
            events,
        })
    }

    /// Sets the filter: the datapath traces what it matches from the next packet on.
    pub fn arm(&mut self, filter: &TraceFilter) -> Result<()> {
        self.filter.set(0, filter, 0).map_err(map_err(names::TRACE))
    }

    /// Clears the filter: the datapath traces nothing from the next packet on.
    pub fn disarm(&mut self) -> Result<()> {
        self.arm(&TraceFilter::default())
    }

    /// The next event waiting, if any.
    pub fn next_event(&mut self) -> Option<TraceEvent> {
        let item = self.events.next()?;
        if item.len() < size_of::<TraceEvent>() {
            return None;
        }
        // SAFETY: the datapath writes whole `TraceEvent`s (plain integers, any bytes valid);
        // the read is unaligned-safe.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceEvent>()) })
    }

    /// What the CPUs could not write, summed (since the datapath was loaded).
    pub fn missed(&self) -> Result<Missed> {
        let per_cpu = self
            .budget
            .get(&0, 0)
            .map_err(map_err(names::TRACE_BUDGET))?;
        Ok(per_cpu.iter().fold(Missed::default(), |m, b| Missed {
            limited: m.limited + b.limited,
            lost: m.lost + b.lost,
        }))
    }
}
