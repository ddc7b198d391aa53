//! A NIC stand-in for veth test beds: the floor XDP program (parse Ethernet, pass) attached in
//! native mode to veths, so that frames a balancer on the peer sends back out with `XDP_TX` are
//! delivered (`docs/testing.md`: XDP_TX on veth needs a native program on the peer).

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, xdp::XdpMode},
};
use xnlb::datapath::object::{FLOOR_PROGRAM, XDP_OBJECT};

use crate::netns::NetNs;

/// The floor program attached to some devices; detached when dropped.
pub struct NicStandIn {
    _ebpf: Ebpf,
}

impl NicStandIn {
    pub fn attach(ns: &NetNs, devs: &[&str]) -> Self {
        let mut ebpf = load_floor();
        let prog = floor_program(&mut ebpf);
        ns.run_in(|| {
            for dev in devs {
                prog.attach(dev, XdpMode::Driver)
                    .unwrap_or_else(|e| panic!("attach the floor program to {dev}: {e}"));
            }
        });
        Self { _ebpf: ebpf }
    }
}

/// The object with its floor program loaded (the balancer's maps made as small as they go,
/// since only the floor runs).
pub fn load_floor() -> Ebpf {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("FLOWS", 1)
        .map_max_entries("REPLIES", 1)
        .map_max_entries("RING", 1)
        .load(XDP_OBJECT)
        .expect("load the XDP object");
    floor_program(&mut ebpf)
        .load()
        .expect("verify the floor program");
    ebpf
}

/// The floor program inside an object from [`load_floor`].
pub fn floor_program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(FLOOR_PROGRAM)
        .expect("the floor program is in the object")
        .try_into()
        .expect("an XDP program")
}
