//! Tests that need neither root nor the BPF toolchain's output loaded: the config loader and
//! `xnlb check`, the health checker (`http`, `tcp` and combined checks) against servers on
//! loopback, and the CLI against an admin socket that fails it.

mod admin_client;
mod config_check;
mod health_probes;
mod tcp_and_composite_checks;
