//! The host around the datapath: interfaces that must exist, sysctls, the BPF filesystem, the
//! VIP addresses the kernel answers ARP for, and the routing changes the datapath's kept next
//! hops must follow. No bpf(2) here.

pub mod addresses;
pub mod bpffs;
pub mod interfaces;
pub mod routes;
pub mod sysctl;
