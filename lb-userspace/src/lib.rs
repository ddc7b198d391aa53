//! The xnlb controller library: the embedded XDP object, typed access to its maps, and the pure
//! logic that decides what goes into them (consistent-hash tables, port rules).

pub mod admin;
pub mod attach;
pub mod bpf_batch;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod datapath;
pub mod ebpf_object;
pub mod health;
pub mod ids;
pub mod lifecycle;
pub mod maglev;
pub mod mapped_array;
pub mod metrics;
pub mod plan;
pub mod port_rules;
pub mod reconcile;
pub mod status;
pub mod vip_owner;
