//! The xnlb controller library. Its folders are its layers; imports go one way, down:
//!
//! - `model` (the `lb-model` crate, re-exported; `config` is part of it): pure — the config,
//!   ids, lifecycles, Maglev tables, port rules and the map image. No I/O, no aya, no tokio.
//! - `datapath`: everything that calls bpf(2) — the embedded object, the maps, reconcile,
//!   attach, batched and mmap-ed writes, the counter reader.
//! - `host`: the rest of the system — interfaces, sysctls, bpffs, VIP addresses.
//! - `health`: HTTP/HTTPS probes and their schedule.
//! - `daemon`: `xnlb run` — the controller's thread, reloads, backend state changes, the admin
//!   socket, status and metrics.
//! - `admin`: the admin protocol and the CLI's client.
//! - `cli`: the command line's shape, shared by the binary and its man page and completions.

pub use lb_model as model;
pub use lb_model::config;

pub mod admin;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod host;
