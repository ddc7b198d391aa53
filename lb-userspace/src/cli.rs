//! The command line's shape (clap), shared by the `xnlb` binary and by what is generated from
//! it (man page, shell completions), and where a client verb finds the daemon's socket.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use clap::{Parser, Subcommand};

use crate::{
    config::{DEFAULT_CONFIG, DEFAULT_SOCKET},
    daemon::controller::DEFAULT_PIN_DIR,
};

/// The environment variable a client verb takes its socket from when `--socket` is not given.
pub const SOCKET_ENV: &str = "XNLB_SOCKET";

#[derive(Parser)]
#[command(
    name = "xnlb",
    version,
    about = "XDP load balancer for server farms (NLB-style affinity, health-checked backends)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
pub struct SocketArg {
    /// Admin socket of the daemon to talk to [default: $XNLB_SOCKET, else the config's
    /// admin.socket, else /run/xnlb/xnlb.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The config whose admin.socket names the daemon's socket (when neither --socket nor
    /// $XNLB_SOCKET is given).
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// `SERVICE BACKEND`, or `--backend BACKEND` for every service that has it.
#[derive(clap::Args)]
pub struct Target {
    /// Service name as in the config.
    #[arg(required_unless_present = "everywhere", requires = "backend")]
    pub service: Option<String>,
    /// Backend name as in the config.
    pub backend: Option<String>,
    /// The backend in every service that has it (NLB's host-wide drainstop), instead of
    /// SERVICE BACKEND.
    #[arg(long = "backend", value_name = "BACKEND", conflicts_with = "service")]
    pub everywhere: Option<String>,
    #[command(flatten)]
    pub socket: SocketArg,
}

impl Target {
    /// (service, backend): no service means every service that has the backend.
    pub fn names(&self) -> (Option<String>, String) {
        match &self.everywhere {
            Some(backend) => (None, backend.clone()),
            None => (
                self.service.clone(),
                self.backend
                    .clone()
                    .expect("clap requires BACKEND with SERVICE"),
            ),
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the balancer in the foreground (SIGHUP reloads; SIGTERM/SIGINT exit and leave the
    /// datapath forwarding for the next `run` to adopt; `xnlb stop` removes it).
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Where programs, links and maps are pinned (fail-static state).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Validate a config without touching the system.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// A running daemon's socket [default: $XNLB_SOCKET, else the config's admin.socket,
        /// else /run/xnlb/xnlb.sock]: when one answers, the config is also checked against
        /// what it can reload into.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Services, backends, states, flows and counters.
    Status {
        /// One JSON object (schema in docs/cli.md).
        #[arg(long)]
        json: bool,
        /// Only this service.
        service: Option<String>,
        /// Redraw every SECONDS (2 without a number) until Ctrl-C, like `watch ipvsadm -Ln
        /// --rate`.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2",
              conflicts_with = "json", value_parser = watch_period)]
        watch: Option<std::time::Duration>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// No new flows to the backend; established flows continue (`--backend NAME`: in every
    /// service).
    Drain(Target),
    /// Take the backend out of rotation now (`--backend NAME`: in every service).
    Disable(Target),
    /// Clear drain/disable (`--backend NAME`: in every service).
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
    /// Extended affinity: the clients a sticky service (`sticky_timeout`) holds to backends.
    Sticky {
        #[command(subcommand)]
        action: StickyCommand,
    },
    /// The datapath's decision for each packet matching the filters, live, one line each:
    /// service, affinity hash, backend and why, translation, verdict. Ctrl-C or --count ends it
    /// (and clears the filter); with no filter, every packet to a VIP or from a backend.
    Trace {
        /// Only this client: ADDR, or ADDR/LEN for a network.
        #[arg(long, value_name = "ADDR[/LEN]")]
        client: Option<String>,
        /// Only this service's packets.
        #[arg(long)]
        service: Option<String>,
        /// Only packets that go to or come from this backend.
        #[arg(long)]
        backend: Option<String>,
        /// End after N packets.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Events per second at most, over all CPUs; the rest are counted and reported, never
        /// delaying a packet [default: 1000].
        #[arg(long, value_name = "PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
        /// One JSON object per line (schema in docs/cli.md).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Subcommand)]
pub enum StickyCommand {
    /// The service's sticky clients: backend, idle time, time left (a persistence group's
    /// services share theirs).
    List {
        /// Service name as in the config.
        service: String,
        /// Only this client (under `affinity: network`, any address of its network).
        #[arg(long)]
        client: Option<IpAddr>,
        /// One JSON array.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Forget sticky clients (all of the service's, one client, or one backend's): their next
    /// flows are balanced by the ring; established flows are untouched.
    Clear {
        /// Service name as in the config.
        service: String,
        /// Only this client.
        #[arg(long, conflicts_with = "backend")]
        client: Option<IpAddr>,
        /// Only the clients held to this backend.
        #[arg(long)]
        backend: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Subcommand)]
pub enum ClusterCommand {
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

/// The socket a client verb talks to, and where that choice came from (said when no daemon
/// answers there, so a wrong guess is easy to see).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    pub path: PathBuf,
    pub from: String,
}

impl SocketArg {
    /// `--socket`, else `$XNLB_SOCKET`, else the config's `admin.socket`, else the default.
    pub fn resolve(&self) -> Socket {
        let env = std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty());
        resolve_socket(
            self.socket.as_deref(),
            env.as_deref().map(Path::new),
            &self.config,
        )
    }
}

/// `--watch`'s period: seconds, a tenth of a second to an hour.
fn watch_period(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!("{secs} s is outside 0.1 to 3600"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn resolve_socket(flag: Option<&Path>, env: Option<&Path>, config: &Path) -> Socket {
    let socket = |path: &Path, from: String| Socket {
        path: path.to_path_buf(),
        from,
    };
    if let Some(path) = flag {
        return socket(path, "--socket".into());
    }
    if let Some(path) = env {
        return socket(path, format!("${SOCKET_ENV}"));
    }
    match configured_socket(config) {
        Some(path) => socket(&path, format!("admin.socket in {}", config.display())),
        None => socket(Path::new(DEFAULT_SOCKET), "the default".into()),
    }
}

/// `admin.socket` of the config file, read leniently: a client verb must still find the
/// daemon while the file holds an edit that does not pass `check` yet.
fn configured_socket(config: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(config).ok()?;
    let document: serde_norway::Value = serde_norway::from_str(&text).ok()?;
    let socket = document.get("admin")?.get("socket")?.as_str()?;
    Some(PathBuf::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_comes_from_the_flag_then_the_environment_then_the_config() {
        let dir = std::env::temp_dir().join(format!("xnlb-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("xnlb.yaml");
        std::fs::write(&config, "services: [\nadmin:\n  socket: /run/a.sock\n").unwrap();
        // Not YAML (an edit in progress): the default, not an error.
        assert_eq!(
            resolve_socket(None, None, &config),
            Socket {
                path: DEFAULT_SOCKET.into(),
                from: "the default".into()
            }
        );
        std::fs::write(&config, "services: []\nadmin:\n  socket: /run/a.sock\n").unwrap();
        let from_config = resolve_socket(None, None, &config);
        assert_eq!(from_config.path, Path::new("/run/a.sock"));
        assert_eq!(
            from_config.from,
            format!("admin.socket in {}", config.display())
        );
        let from_env = resolve_socket(None, Some(Path::new("/run/e.sock")), &config);
        assert_eq!(
            (from_env.path.as_path(), from_env.from.as_str()),
            (Path::new("/run/e.sock"), "$XNLB_SOCKET")
        );
        let flag = Path::new("/run/f.sock");
        let from_flag = resolve_socket(Some(flag), Some(Path::new("/run/e.sock")), &config);
        assert_eq!(
            (from_flag.path.as_path(), from_flag.from.as_str()),
            (flag, "--socket")
        );
        let missing = resolve_socket(None, None, &dir.join("absent.yaml"));
        assert_eq!(missing.path, Path::new(DEFAULT_SOCKET));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
