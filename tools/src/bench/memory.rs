//! Section 4: what every map costs at the sizes a default config gives (262144 flows, ring
//! slots for 16 services), as the kernel charges it.

use xnlb::datapath::{Datapath, DatapathSizes, MapFootprint};

use crate::Progress;

pub fn footprints(progress: &mut Progress) -> (DatapathSizes, Vec<MapFootprint>) {
    progress.step("memory: map sizes");
    let sizes = DatapathSizes::default();
    let dp = Datapath::load(sizes).expect("load the XDP object");
    (sizes, dp.reader().footprints().expect("map footprints"))
}
