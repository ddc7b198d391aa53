//! The XDP object, embedded once: the daemon, the tests and the benchmarks load these bytes.

/// The compiled `lb-ebpf` program (ELF, BTF included).
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xnlb-xdp"));

/// Name of the XDP program inside [`XDP_OBJECT`].
pub const XDP_PROGRAM: &str = "xnlb";
