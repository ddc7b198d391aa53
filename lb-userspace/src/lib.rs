//! The xnlb controller library: the embedded XDP object, typed access to its maps, and the pure
//! logic that decides what goes into them (consistent-hash tables, port rules).

pub mod bpf_batch;
pub mod config;
pub mod datapath;
pub mod ebpf_object;
pub mod ids;
pub mod lifecycle;
pub mod maglev;
pub mod plan;
pub mod port_rules;
