//! Tests that need neither root nor the BPF toolchain's output loaded: the config loader and
//! `xnlb check`, and the health checker against web servers on loopback.

mod config_check;
mod health_probes;
