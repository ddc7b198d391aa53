//! xnlb's pure model: the config and everything decided from it, without touching the system.
//!
//! `config` parses and checks the YAML; `ids`, `lifecycle` and `rise_fall` keep what the
//! controller knows about each service and backend; `plan` turns all of it into the image of the
//! datapath's maps (with `maglev` tables and `port_rules` prefixes); `status` is what `xnlb
//! status` shows. Nothing here opens a file descriptor to the kernel: `lb-userspace` writes the
//! image (`datapath::reconcile`) and runs the daemon around it. These modules' unit tests run on
//! stable Rust, without root and without the BPF toolchain (`cargo test -p lb-model`).

pub mod announce;
pub mod cluster;
pub mod config;
pub mod ids;
pub mod lifecycle;
pub mod maglev;
pub mod plan;
pub mod port_rules;
pub mod rise_fall;
pub mod status;
pub mod sticky;
pub mod trace;
