//! The XDP object, embedded once: the daemon, the tests and the benchmarks load these bytes.

/// The compiled `lb-ebpf` program (ELF, BTF included).
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xnlb-xdp"));

/// Name of the XDP program inside [`XDP_OBJECT`] that interfaces run (it tail-calls the
/// stages, `lb_common::programs`).
pub const XDP_PROGRAM: &str = lb_common::programs::ENTRY;

/// Name of the floor program inside [`XDP_OBJECT`]: parse Ethernet, pass. For benchmarks (the
/// cost every XDP program pays) and test beds (a NIC-like receiver on veth peers).
pub const FLOOR_PROGRAM: &str = lb_common::programs::FLOOR;
