//! The xnlb controller library: the embedded XDP object, typed access to its maps, and the pure
//! logic that decides what goes into them (consistent-hash tables, port rules).

pub mod datapath;
pub mod ebpf_object;
pub mod maglev;
pub mod port_rules;
