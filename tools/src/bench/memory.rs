//! Section 4: what every map costs at the sizes a default config gives (262144 flows, ring
//! slots for 16 services), as the kernel charges it; and how much of the verifier's budget each
//! program uses.

use xnlb::datapath::{Datapath, DatapathSizes, MapFootprint};

use crate::Progress;

/// The default sizes, each map's footprint, and each program's verified instructions.
pub type Footprints = (DatapathSizes, Vec<MapFootprint>, Vec<(&'static str, u32)>);

pub fn footprints(progress: &mut Progress) -> Footprints {
    progress.step("memory: map sizes");
    let sizes = DatapathSizes::default();
    let dp = Datapath::load(sizes).expect("load the XDP object");
    let maps = dp.reader().footprints().expect("map footprints");
    let verified = dp.verified_instructions().expect("verified instructions");
    (sizes, maps, verified)
}
