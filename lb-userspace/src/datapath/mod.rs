//! The loaded XDP datapath: everything that calls bpf(2). `Datapath` loads (or adopts) the
//! embedded object and owns it; `maps` writes and reads what the controller owns in it;
//! `reader` reads counters and the connection table through handles of its own, so a metrics
//! scrape never waits for the controller; `reconcile` moves the maps to an image the model
//! computed; `attach` puts the program on interfaces. `batch` and `mmap` are the two fast ways
//! to move many elements.

pub mod attach;
mod batch;
mod cluster;
pub mod layout;
mod maps;
mod mmap;
mod next_hops;
pub mod object;
pub mod pins;
mod reader;
pub mod reconcile;
pub mod trace;

use std::{os::fd::AsFd, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, MapError, ProgramArray},
    programs::{ProgramError, Xdp},
};
use lb_common::{
    limits::{DEFAULT_FLOW_ENTRIES, DEFAULT_HALF_OPEN_SHARE, MIN_FLOW_ENTRIES, MIN_RING_SERVICES},
    maps as names, programs,
    service::{RING_MAX_SIZE, RING_SLOTS_PER_SERVICE},
    settings::DatapathSettings,
};

use self::{
    mmap::MappedArray,
    object::{XDP_OBJECT, XDP_PROGRAM},
};
pub use cluster::ClusterMaps;
pub use next_hops::NextHopEpoch;
pub use reader::{Counters, MapFootprint, Reader, monotonic_ns};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("ring slot {slot} is out of range (capacity {capacity} tables)")]
    RingSlot { slot: u32, capacity: u32 },
    #[error("a ring table has {0} entries; at most {RING_MAX_SIZE}")]
    RingTooLarge(usize),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, DatapathError>;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |source| DatapathError::Io { what, source }
}

/// Sizes fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct DatapathSizes {
    /// Established flows (each of `FLOWS` and `REPLIES`).
    pub flows: u32,
    /// Half-open flows (each of `HALF_OPEN` and `HALF_OPEN_REPLIES`).
    pub half_open: u32,
    /// Services that can have a ring table (two slots each, of `RING_MAX_SIZE` entries).
    pub ring_services: u32,
    /// Clients in the sticky table (`STICKY`).
    pub sticky: u32,
}

impl Default for DatapathSizes {
    fn default() -> Self {
        Self {
            flows: DEFAULT_FLOW_ENTRIES,
            half_open: DEFAULT_FLOW_ENTRIES / DEFAULT_HALF_OPEN_SHARE,
            ring_services: MIN_RING_SERVICES,
            sticky: MIN_FLOW_ENTRIES,
        }
    }
}

pub struct Datapath {
    // Field order is drop order: unmap the ring before the map goes.
    /// `RING` in our memory; `None` for a ring adopted from an xnlb that made it without
    /// `BPF_F_MMAPABLE` (then tables are written with syscalls).
    ring_view: Option<MappedArray>,
    ebpf: Ebpf,
    reader: Reader,
    ring_slots: u32,
}

impl Datapath {
    /// Loads the embedded object (maps created, program verified), not yet attached anywhere.
    pub fn load(sizes: DatapathSizes) -> Result<Self> {
        let mut dp = Self::load_with(sizes, None)?;
        dp.load_programs()?;
        dp.set_settings(&DatapathSettings::defaults())?;
        Ok(dp)
    }

    /// Loads the object's maps, each pinned under `dir`, and not yet its programs
    /// (`load_programs`, once the maps are programmed). Maps already pinned there (a
    /// previous daemon's) are reused as they are, contents and sizes included: that is how a
    /// restarted daemon adopts a running datapath. The pins are checked first (`pins::check`):
    /// a missing reply table is rebuilt from its flows here. Returns what adopting took, or
    /// `None` for a fresh start.
    pub fn load_pinned(
        sizes: DatapathSizes,
        dir: &Path,
    ) -> anyhow::Result<(Self, Option<pins::Adoption>)> {
        std::fs::create_dir_all(dir).map_err(io_err("creating the pin directory"))?;
        let mut adoption = pins::check(dir)?;
        // A smaller pinned RING is set aside for a larger one (its tables copied once loaded):
        // the running programs keep reading the old one until the new ones take over.
        let ring_before = match &adoption {
            Some(_) => ring_to_grow(dir, sizes.ring_services)?,
            None => None,
        };
        let mut dp = Self::load_with(sizes, Some(dir))?;
        layout::write(dir)?;
        if let (Some(a), Some(tables)) = (&mut adoption, ring_before) {
            let view = dp
                .ring_view
                .as_mut()
                .expect("a RING made by this build is mapped");
            view.write(0, &tables);
            let had = tables.len() as u32 / RING_MAX_SIZE / RING_SLOTS_PER_SERVICE;
            a.ring_grown = Some((had, dp.ring_capacity()));
        }
        if let Some(a) = &mut adoption {
            let rebuild: Vec<(&'static str, bool)> = a.replies_to_rebuild().collect();
            for (name, half_open) in rebuild {
                a.rebuilt.push((name, dp.rebuild_replies(half_open)?));
            }
        }
        Ok((dp, adoption))
    }

    /// Creates (or opens the pinned) maps; the programs are loaded by `load_programs`.
    fn load_with(sizes: DatapathSizes, pin_dir: Option<&Path>) -> Result<Self> {
        let ring_slots = sizes.ring_services * RING_SLOTS_PER_SERVICE;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::FLOWS, sizes.flows)
            .map_max_entries(names::REPLIES, sizes.flows)
            .map_max_entries(names::HALF_OPEN, sizes.half_open)
            .map_max_entries(names::HALF_OPEN_REPLIES, sizes.half_open)
            .map_max_entries(names::RING, ring_slots * RING_MAX_SIZE)
            .map_max_entries(names::STICKY, sizes.sticky);
        if let Some(dir) = pin_dir {
            for &name in names::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let ebpf = loader.load(XDP_OBJECT)?;
        let reader = Reader::of(&ebpf)?;
        let mut dp = Self {
            ring_view: None,
            ebpf,
            reader,
            ring_slots,
        };
        // An adopted RING keeps the size (and flags) it was created with.
        let ring_entries = dp.reader.max_entries(names::RING)?;
        dp.ring_slots = ring_entries / RING_MAX_SIZE;
        dp.ring_view = MappedArray::map(dp.map_data(names::RING)?.fd().as_fd(), ring_entries);
        Ok(dp)
    }

    /// Loads the entry program and the stages into the kernel, and puts the stages in `STAGES`.
    /// An adopted `STAGES` gets this process's stages in place of the previous daemon's, and
    /// the running entry program calls them at once: so, adopting, only once the maps they
    /// read are programmed (a map created afresh is empty until then).
    pub fn load_programs(&mut self) -> Result<()> {
        load_verified(self.program_mut()?)?;
        for (slot, name) in programs::STAGES {
            let stage = self.xdp_mut(name)?;
            load_verified(stage)?;
            let fd = stage
                .fd()?
                .try_clone()
                .map_err(io_err("duplicating a stage's fd"))?;
            let mut stages = ProgramArray::try_from(self.map_mut(names::STAGES)?)
                .map_err(map_err(names::STAGES))?;
            stages.set(slot, &fd, 0).map_err(map_err(names::STAGES))?;
        }
        Ok(())
    }

    /// Counters, statistics and the connection table, read through this datapath's handles.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// A reader with handles of its own, for another thread (metrics, status).
    pub fn share_reader(&self) -> Result<Reader> {
        self.reader.try_clone()
    }

    /// Whether ring tables are written through the mmap-ed `RING` (false only for a ring adopted
    /// from an older xnlb).
    pub fn ring_mapped(&self) -> bool {
        self.ring_view.is_some()
    }

    /// Services that can have a ring table.
    pub fn ring_capacity(&self) -> u32 {
        self.ring_slots / RING_SLOTS_PER_SERVICE
    }

    /// Pins the loaded program at `path` (replacing an older pin).
    pub fn pin_program(&mut self, path: &Path) -> Result<()> {
        let _ = std::fs::remove_file(path);
        Ok(self.program_mut()?.pin(path)?)
    }

    pub fn program(&self) -> Result<&Xdp> {
        let prog = self
            .ebpf
            .program(XDP_PROGRAM)
            .ok_or(DatapathError::MissingMap(XDP_PROGRAM))?;
        Ok(prog.try_into()?)
    }

    pub fn program_mut(&mut self) -> Result<&mut Xdp> {
        self.xdp_mut(XDP_PROGRAM)
    }

    /// For the entry program and each stage, how many instructions the verifier processed
    /// (its limit is a million per program): the headroom the datapath has left to grow.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>> {
        let stages = programs::STAGES.iter().map(|&(_, name)| name);
        std::iter::once(XDP_PROGRAM)
            .chain(stages)
            .map(|name| {
                let prog: &Xdp = self
                    .ebpf
                    .program(name)
                    .ok_or(DatapathError::MissingMap(name))?
                    .try_into()?;
                let count = prog.info()?.verified_instruction_count().unwrap_or(0);
                Ok((name, count))
            })
            .collect()
    }

    fn xdp_mut(&mut self, name: &'static str) -> Result<&mut Xdp> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        Ok(prog.try_into()?)
    }

    /// The names of the maps the loaded object holds (`lb_common::maps::ALL`, no more, no less:
    /// a datapath test checks it).
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_string()).collect()
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map> {
        self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))
    }

    fn map_data(&self, name: &'static str) -> Result<&MapData> {
        reader::data_of(self.map(name)?, name)
    }
}

/// Loads `prog` into the kernel. The verifier works on it for seconds and gives up with EAGAIN
/// when a signal reaches the loading thread meanwhile (seen in the test suite, where beds load
/// in parallel); that is retried, as libbpf does.
fn load_verified(prog: &mut Xdp) -> Result<()> {
    const ATTEMPTS: u32 = 5;
    for attempt in 1.. {
        match prog.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS => {}
            other => return Ok(other?),
        }
    }
    unreachable!("the last attempt returns")
}

/// The tables of the `RING` pinned under `dir` when it has room for fewer than `services`,
/// with its pin removed so that the loader makes one of the size asked for; `None` (and the
/// pin kept) when it has the room, or cannot be read in one mapping (a `RING` made without
/// `BPF_F_MMAPABLE` by an older xnlb keeps its size).
fn ring_to_grow(dir: &Path, services: u32) -> anyhow::Result<Option<Vec<u32>>> {
    let path = dir.join(names::RING);
    if !path.exists() {
        return Ok(None);
    }
    let map = aya::maps::MapData::from_pin(&path).map_err(map_err(names::RING))?;
    let info = map.info().map_err(map_err(names::RING))?;
    let entries = info.max_entries();
    if entries >= services * RING_SLOTS_PER_SERVICE * RING_MAX_SIZE {
        return Ok(None);
    }
    let Some(view) = MappedArray::map(map.fd().as_fd(), entries) else {
        return Ok(None);
    };
    let tables = view.read();
    std::fs::remove_file(&path).map_err(io_err("removing the smaller RING's pin"))?;
    Ok(Some(tables))
}

/// Removes every map pin of the datapath under `dir` (after `xnlb stop` detached it).
pub fn unpin_maps(dir: &Path) {
    for &name in names::ALL.iter().chain(&[names::LAYOUT]) {
        let _ = std::fs::remove_file(dir.join(name));
    }
}
