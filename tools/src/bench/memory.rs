//! Section 4: what every map costs at the sizes a default config gives (262144 flows, ring
//! slots for 16 services), as the kernel charges it; and how much of the verifier's budget each
//! program uses.

use lb_common::{maps as names, sticky::DEFAULT_STICKY_ENTRIES};
use xnlb::datapath::{Datapath, DatapathSizes, MapFootprint};

use crate::Progress;

/// The default sizes, each map's footprint, each program's verified instructions, and the
/// sticky table at the size a config with a sticky service gets.
pub struct Footprints {
    pub sizes: DatapathSizes,
    pub maps: Vec<MapFootprint>,
    pub verified: Vec<(&'static str, u32)>,
    pub sticky: MapFootprint,
}

pub fn footprints(progress: &mut Progress) -> Footprints {
    progress.step("memory: map sizes");
    let sizes = DatapathSizes::default();
    let dp = Datapath::load(sizes).expect("load the XDP object");
    let maps = dp.reader().footprints().expect("map footprints");
    let verified = dp.verified_instructions().expect("verified instructions");
    drop(dp);
    let sticky_sizes = DatapathSizes {
        sticky: DEFAULT_STICKY_ENTRIES,
        ..sizes
    };
    let dp = Datapath::load(sticky_sizes).expect("load the XDP object");
    let sticky = dp
        .reader()
        .footprints()
        .expect("map footprints")
        .into_iter()
        .find(|m| m.name == names::STICKY)
        .expect("a STICKY map");
    Footprints {
        sizes,
        maps,
        verified,
        sticky,
    }
}
