//! `xnlb`: the daemon (`run`), the config checker (`check`) and the administrator's CLI.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use xnlb::{
    admin::{self, ClusterAction, Request},
    config::{self, DEFAULT_SOCKET},
    daemon::{self, controller::DEFAULT_PIN_DIR},
};

#[derive(Parser)]
#[command(
    name = "xnlb",
    version,
    about = "XDP load balancer for server farms (NLB-style affinity, health-checked backends)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct SocketArg {
    /// Admin socket of the daemon to talk to.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(clap::Args)]
struct Target {
    /// Service name as in the config.
    service: String,
    /// Backend name as in the config.
    backend: String,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer in the foreground (SIGHUP reloads; SIGTERM/SIGINT exit and leave the
    /// datapath forwarding for the next `run` to adopt; `xnlb stop` removes it).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Where programs, links and maps are pinned (fail-static state).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Validate a config without touching the system.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Services, backends, states, flows and counters.
    Status {
        /// One JSON object (schema in the README).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// No new flows to the backend; established flows continue.
    Drain(Target),
    /// Take the backend out of rotation now.
    Disable(Target),
    /// Clear drain/disable.
    Enable(Target),
    /// Re-read the config file and apply it; on any error the running config stays.
    Reload(SocketArg),
    /// Detach from the interfaces, remove the pins and exit.
    Stop(SocketArg),
    /// Cluster mode: this node's view of the cluster, and its part in it.
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, their states and buckets, last heartbeats, config digests.
    Query {
        /// One JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Take no new flows, let this node's connections finish, then stop.
    Drainstop(SocketArg),
    /// Leave the cluster now: the other nodes take this node's buckets.
    Stop(SocketArg),
    /// Join the cluster again.
    Start(SocketArg),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, pin_dir } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                // Colours only on a terminal, not in journald or a log file.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            match daemon::run(&config, &pin_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xnlb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match config::load(&config) {
            Ok(loaded) => {
                print!("{}", loaded.config.summary(&config.display().to_string()));
                for w in &loaded.warnings {
                    println!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Status { json, socket } => call(&socket.socket, Request::Status, |r| {
            let status = r.status.expect("status answers carry a status");
            if json {
                serde_json::to_string_pretty(&status).expect("status serializes")
            } else {
                status.render()
            }
        }),
        Command::Drain(t) => target(t, |service, backend| Request::Drain { service, backend }),
        Command::Disable(t) => target(t, |service, backend| Request::Disable { service, backend }),
        Command::Enable(t) => target(t, |service, backend| Request::Enable { service, backend }),
        Command::Reload(s) => call(&s.socket, Request::Reload, message),
        Command::Stop(s) => call(&s.socket, Request::Stop, message),
        Command::Cluster { action } => {
            let (socket, action, json) = match action {
                ClusterCommand::Query { json, socket } => (socket, ClusterAction::Query, json),
                ClusterCommand::Drainstop(s) => (s, ClusterAction::Drainstop, false),
                ClusterCommand::Stop(s) => (s, ClusterAction::Stop, false),
                ClusterCommand::Start(s) => (s, ClusterAction::Start, false),
            };
            call(&socket.socket, Request::Cluster { action }, |r| {
                match r.cluster {
                    Some(c) if json => serde_json::to_string_pretty(&c).expect("status serializes"),
                    Some(c) => c.render(),
                    None => r.message.unwrap_or_default(),
                }
            })
        }
    }
}

fn message(r: admin::Response) -> String {
    r.message.unwrap_or_default()
}

fn target(t: Target, make: impl Fn(String, String) -> Request) -> ExitCode {
    call(&t.socket.socket, make(t.service, t.backend), message)
}

/// Sends a request; prints the answer, or the error as one line (a reload's config problems
/// keep their own lines), with a non-zero exit.
fn call(
    socket: &std::path::Path,
    request: Request,
    show: impl Fn(admin::Response) -> String,
) -> ExitCode {
    match admin::request(socket, &request) {
        Ok(r) if r.ok => {
            let text = show(r);
            if text.ends_with('\n') {
                print!("{text}");
            } else {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("xnlb: {}", r.message.unwrap_or_default().trim_end());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xnlb: {e}");
            ExitCode::FAILURE
        }
    }
}
