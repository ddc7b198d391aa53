//! `LAYOUT`: the layout version each pinned map was made with (`lb_common::maps::VERSIONS`),
//! pinned beside the maps. A restarted daemon compares it with its own before adopting a map
//! (`pins::check`): same size is not same meaning.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use aya::maps::{Array, MapData, MapInfo};
use lb_common::maps::{self as names, LayoutStamp, MAX_LAYOUT_STAMPS};

/// The versions stamped under `dir`, by map name. `None`: no `LAYOUT` pin that this xnlb can
/// read (a datapath made by an xnlb from before layout versions).
pub fn read(dir: &Path) -> Result<Option<BTreeMap<String, u32>>> {
    let path = dir.join(names::LAYOUT);
    if !path.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
    if info.value_size() as usize != size_of::<LayoutStamp>() {
        return Ok(None);
    }
    let map = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let stamps: Array<MapData, LayoutStamp> =
        Array::try_from(aya::maps::Map::Array(map)).context("LAYOUT as an array")?;
    let mut versions = BTreeMap::new();
    for stamp in stamps.iter() {
        let stamp = stamp.context("reading LAYOUT")?;
        if !stamp.name().is_empty() {
            versions.insert(stamp.name().to_string(), stamp.version);
        }
    }
    Ok(Some(versions))
}

/// Stamps every map under `dir` with this build's version (after they were adopted, or made
/// afresh where their pins did not fit), unless `LAYOUT` says so already.
pub fn write(dir: &Path) -> Result<()> {
    let ours = names::VERSIONS.iter().map(|&(n, v)| (n.to_string(), v));
    if read(dir)? == Some(ours.collect()) {
        return Ok(());
    }
    stamp(dir, names::VERSIONS)
}

/// Pins a `LAYOUT` under `dir` that holds exactly `versions`.
pub fn stamp(dir: &Path, versions: &[(&str, u32)]) -> Result<()> {
    let mut stamps: Array<MapData, LayoutStamp> =
        Array::create(MAX_LAYOUT_STAMPS, 0).context("creating LAYOUT")?;
    for (i, &(name, version)) in versions.iter().enumerate() {
        stamps
            .set(i as u32, LayoutStamp::new(name, version), 0)
            .context("writing LAYOUT")?;
    }
    let path = dir.join(names::LAYOUT);
    // bpffs cannot replace a pin in one step; a daemon dying in between leaves no LAYOUT,
    // and the next one refuses the connections it cannot vouch for rather than misreading.
    let _ = std::fs::remove_file(&path);
    stamps
        .pin(&path)
        .with_context(|| format!("pinning {}", path.display()))
}
