//! `xnlb`: the balancer's daemon and CLI.

use clap::Parser;

/// xnlb — an XDP layer-4 load balancer.
///
/// The daemon (`xnlb run`) and the administration verbs (`check`, `status`, `drain`, `disable`,
/// `enable`, `reload`, `stop`) arrive with the controller issue; this build carries the
/// datapath and its library.
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() {
    Cli::parse();
    eprintln!(
        "xnlb {}: no command is available yet (the controller is not built); see --help",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
