//! The host around the datapath: interfaces that must exist, sysctls, the BPF filesystem, and
//! the VIP addresses the kernel answers ARP for. No bpf(2) here.

pub mod addresses;
pub mod bpffs;
pub mod interfaces;
pub mod sysctl;
