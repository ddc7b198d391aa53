//! `cargo xtask <verb>`: the commands a newcomer types. Building the eBPF object is not here: it
//! is `lb-userspace/build.rs`, so a plain `cargo build` does it too.

mod package;
mod setup;
mod workspace;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xnlb development tasks")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install what a fresh machine lacks (nightly rust-src, bpf-linker, Debian packages).
    /// Idempotent.
    Setup,
    /// Set up, build, and run every test (unit, datapath via BPF_PROG_TEST_RUN, namespaces). Needs
    /// root.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and show the balancer at work on a demo network (namespaces). Needs root.
    Demo,
    /// Set up, build in release mode, and write the Debian package to target/debian/release/.
    Package {
        /// Package the debug build instead (what the tests install), in target/debian/debug/.
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build, and run the benchmarks. Needs root.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.verb {
        Verb::Setup => setup::run(),
        Verb::Test { args } => {
            setup::run()?;
            workspace::require_root("the tests load XDP programs and create network namespaces")?;
            workspace::cargo(&["build", "--all-targets"])?;
            // Format and lints are part of the test: a difference or a warning fails it, for
            // the host crates and for the datapath's sources (checked on the host target).
            workspace::cargo(&["fmt", "--all", "--check"])?;
            workspace::cargo(&["clippy", "-q", "--all-targets", "--", "-D", "warnings"])?;
            workspace::cargo(&["clippy", "-q", "-p", "lb-ebpf", "--", "-D", "warnings"])?;
            // The install test installs the package of this very build.
            package::run(package::Build::Debug)?;
            let mut test = vec!["test", "--no-fail-fast"];
            test.extend(args.iter().map(String::as_str));
            workspace::cargo(&test)
        }
        Verb::Package { debug } => {
            setup::run()?;
            package::run(if debug {
                package::Build::Debug
            } else {
                package::Build::Release
            })
            .map(drop)
        }
        Verb::Demo => {
            setup::run()?;
            workspace::require_root("the demo loads XDP programs and creates network namespaces")?;
            println!("Building xnlb and the demo (release)...");
            run_release("xnlb-demo", &[])
        }
        Verb::Bench { args } => {
            setup::run_for_bench()?;
            workspace::require_root(
                "the benchmarks load XDP programs and create network namespaces",
            )?;
            println!("Building xnlb and the benchmarks (release)...");
            run_release("xnlb-bench", &args)
        }
    }
}

/// Builds the daemon in release mode (the demo and the benchmarks start it), then runs the
/// program `bin` of `tools/` in release mode with `args`.
fn run_release(bin: &str, args: &[String]) -> Result<()> {
    workspace::cargo(&[
        "build",
        "--release",
        "-q",
        "-p",
        "lb-userspace",
        "--bin",
        "xnlb",
    ])?;
    let mut run = vec![
        "run",
        "--release",
        "-q",
        "-p",
        "xnlb-tools",
        "--bin",
        bin,
        "--",
    ];
    run.extend(args.iter().map(String::as_str));
    workspace::cargo(&run)
}
