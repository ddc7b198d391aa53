//! The YAML config: typed structs (`serde`, unknown keys rejected), defaults as SPEC gives them,
//! and a loader that reports every problem it can find, each with `file:line:col` and a hint.
//! Pure: nothing here touches the system except `system_problems`, which `run` and `reload` use.

mod duration;
mod locate;
mod ports;
mod validate;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use locate::Locations;
pub use ports::PortRange;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mode: Mode,
    pub interfaces: Interfaces,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default)]
    pub snat: Option<Snat>,
    #[serde(default)]
    pub conntrack: Conntrack,
    /// Make the kernel answer ARP for each VIP on the client interface (the VIP as a /32 there).
    /// Off when the upstream router already routes the VIPs to the balancer.
    #[serde(default = "yes")]
    pub announce_vips: bool,
    pub services: Vec<Service>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub admin: Admin,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    TwoArm,
    OneArm,
    Dsr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    pub client: String,
    #[serde(default)]
    pub server: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic where the driver has no XDP support.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snat {
    pub addresses: Vec<IpAddr>,
    /// Source ports the balancer claims on the SNAT addresses. Keep it clear of the kernel's
    /// own ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by default).
    #[serde(default = "default_snat_ports")]
    pub ports: PortRange,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conntrack {
    pub max_entries: u32,
    #[serde(with = "duration")]
    pub tcp_timeout: Duration,
    #[serde(with = "duration")]
    pub tcp_closing_timeout: Duration,
    #[serde(with = "duration")]
    pub udp_timeout: Duration,
}

impl Default for Conntrack {
    fn default() -> Self {
        Self {
            max_entries: 262_144,
            tcp_timeout: Duration::from_secs(2 * 3600),
            tcp_closing_timeout: Duration::from_secs(30),
            udp_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub filtering: Filtering,
    #[serde(default)]
    pub affinity: Affinity,
    #[serde(default = "default_network_prefix")]
    pub network_prefix: u8,
    #[serde(default, with = "duration")]
    pub sticky_timeout: Duration,
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub health: Option<Health>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Both,
}

impl Protocol {
    pub fn includes(self, other: Protocol) -> bool {
        self == Protocol::Both || other == Protocol::Both || self == other
    }

    /// IP protocol numbers this rule matches.
    pub fn numbers(self) -> &'static [u8] {
        use lb_common::addr::{PROTO_TCP, PROTO_UDP};
        match self {
            Protocol::Tcp => &[PROTO_TCP],
            Protocol::Udp => &[PROTO_UDP],
            Protocol::Both => &[PROTO_TCP, PROTO_UDP],
        }
    }
}

/// NLB's filtering modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filtering {
    #[default]
    Multiple,
    Single,
    Disabled,
}

/// NLB's affinity: what part of the client picks the backend. NLB's default is `single`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    None,
    #[default]
    Single,
    Network,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    pub address: IpAddr,
    /// Destination port towards the backend; `None` keeps the client's destination port.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Order for `filtering: single` (lower wins); defaults to the position in the list.
    #[serde(default)]
    pub priority: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub http: HttpCheck,
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub path: String,
    pub port: u16,
    #[serde(default)]
    pub tls: bool,
    #[serde(default = "yes")]
    pub verify_tls: bool,
    /// Host header and TLS SNI.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_expect_status")]
    pub expect_status: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9779)),
        }
    }
}

pub const DEFAULT_SOCKET: &str = "/run/xnlb/xnlb.sock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub socket: PathBuf,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_snat_ports() -> PortRange {
    PortRange {
        lo: 1024,
        hi: 32767,
    }
}
fn default_network_prefix() -> u8 {
    24
}
pub const DEFAULT_WEIGHT: u32 = 100;
pub const MAX_WEIGHT: u32 = 1000;
fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}
fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_expect_status() -> Vec<u16> {
    vec![200]
}

impl Service {
    /// The VIP as IPv4 (validation rejects anything else).
    pub fn vip_v4(&self) -> Ipv4Addr {
        v4_of(self.vip)
    }

    /// Backends with their effective priority (explicit, or 1-based position).
    pub fn priority_of(&self, index: usize) -> u32 {
        self.backends[index].priority.unwrap_or(index as u32 + 1)
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

impl Backend {
    pub fn address_v4(&self) -> Ipv4Addr {
        v4_of(self.address)
    }
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Interfaces the program attaches to: the client side, and in two-arm the server side.
    pub fn attach_interfaces(&self) -> Vec<&str> {
        let mut out = vec![self.interfaces.client.as_str()];
        if let (Mode::TwoArm, Some(server)) = (self.mode, &self.interfaces.server) {
            out.push(server.as_str());
        }
        out
    }

    /// What `xnlb check` prints for a good file: what would run.
    pub fn summary(&self, file: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mode = match self.mode {
            Mode::TwoArm => format!(
                "two-arm, clients on {}, backends on {}",
                self.interfaces.client,
                self.interfaces.server.as_deref().unwrap_or("?")
            ),
            Mode::OneArm => format!(
                "one-arm on {}, SNAT from {}",
                self.interfaces.client,
                self.snat_v4()
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Mode::Dsr => "dsr".to_string(),
        };
        let backends: usize = self.services.iter().map(|s| s.backends.len()).sum();
        let _ = writeln!(
            out,
            "{file}: OK: {mode}; {} service(s), {backends} backend(s); conntrack {} entries",
            self.services.len(),
            self.conntrack.max_entries
        );
        for s in &self.services {
            let ports: Vec<String> = s.ports.iter().map(|p| p.to_string()).collect();
            let health = match &s.health {
                Some(h) => format!(
                    "{} {}:{} every {}",
                    if h.http.tls { "https" } else { "http" },
                    h.http.port,
                    h.http.path,
                    humantime::format_duration(h.interval)
                ),
                None => "no health check".to_string(),
            };
            let names: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{} {}", b.name, b.address))
                .collect();
            let _ = writeln!(
                out,
                "  {} {}:{} {}, filtering {}, affinity {}: {} ({health})",
                s.name,
                s.vip,
                ports.join(","),
                word(&s.protocol),
                word(&s.filtering),
                word(&s.affinity),
                names.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  metrics on http://{}/metrics, admin socket {}",
            self.metrics.listen,
            self.admin.socket.display()
        );
        out
    }

    pub fn snat_v4(&self) -> Vec<Ipv4Addr> {
        self.snat
            .iter()
            .flat_map(|s| s.addresses.iter().map(|&a| v4_of(a)))
            .collect()
    }
}

/// The word a config uses for an enum value (`single`, `two-arm`, ...).
pub fn word<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn v4_of(addr: IpAddr) -> Ipv4Addr {
    match addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => unreachable!("validation admits only IPv4 addresses, got {a}"),
    }
}

/// One thing wrong with a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where in the document, e.g. `services[0].backends[1].weight`; empty for the whole file.
    pub path: String,
    pub at: Option<(usize, usize)>,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            at: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Every problem of one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            match p.at {
                Some((line, col)) => write!(f, "{}:{line}:{col}: ", self.file)?,
                None => write!(f, "{}: ", self.file)?,
            }
            if !p.path.is_empty() {
                write!(f, "{}: ", p.path)?;
            }
            writeln!(f, "{}", p.message)?;
            if let Some(hint) = &p.hint {
                writeln!(f, "    hint: {hint}")?;
            }
        }
        Ok(())
    }
}

/// A config that passed every check, with what is allowed but worth saying.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Reads and checks `path`. Does not look at the system (see `system_problems`).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        problems: vec![Problem::new("", format!("cannot read the file: {e}"))],
    })?;
    parse(&text, &file)
}

/// `load`, plus the checks only the running system can answer (`run` and `reload`).
pub fn load_for_run(path: &Path) -> Result<Loaded, ConfigError> {
    let loaded = load(path)?;
    let mut problems = system_problems(&loaded.config);
    if problems.is_empty() {
        return Ok(loaded);
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let at = Locations::index(&text);
    for p in &mut problems {
        p.at = at.find(&p.path);
    }
    Err(ConfigError {
        file: path.display().to_string(),
        problems,
    })
}

/// Parses and checks a config held in memory; `file` names it in messages.
pub fn parse(text: &str, file: &str) -> Result<Loaded, ConfigError> {
    let fail = |problems| ConfigError {
        file: file.to_string(),
        problems,
    };
    let doc: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(serde_yaml::Value::Null) => {
            return Err(fail(vec![
                Problem::new("", "the file is empty").hint("start from the example in the README"),
            ]));
        }
        Ok(doc) => doc,
        Err(e) => {
            let mut p = Problem::new("", format!("not valid YAML: {e}"));
            p.at = e.location().map(|l| (l.line(), l.column()));
            return Err(fail(vec![p]));
        }
    };
    let at = Locations::index(text);
    let mut problems = Vec::new();
    let config = typed(&doc, &mut problems);
    if let Some(config) = &config {
        problems.extend(validate::problems(config));
    }
    for p in &mut problems {
        if p.at.is_none() {
            p.at = at.find(&p.path);
        }
    }
    match config {
        Some(config) if problems.is_empty() => Ok(Loaded {
            warnings: validate::warnings(&config),
            config,
        }),
        _ => Err(fail(problems)),
    }
}

/// The typed config, or `None` with every type error found: the top level, then each service
/// on its own so that a mistake in one does not hide mistakes in the next.
fn typed(doc: &serde_yaml::Value, problems: &mut Vec<Problem>) -> Option<Config> {
    if let Ok(config) = deserialize::<Config>(doc, "", problems) {
        return Some(config);
    }
    problems.clear();
    let mut top = doc.clone();
    let services = match &mut top {
        serde_yaml::Value::Mapping(m) => {
            m.insert("services".into(), serde_yaml::Value::Sequence(vec![]))
        }
        _ => None,
    };
    let _ = deserialize::<Config>(&top, "", problems);
    if let Some(serde_yaml::Value::Sequence(services)) = services {
        for (i, service) in services.iter().enumerate() {
            let path = format!("services[{i}]");
            if let Ok(service) = deserialize::<Service>(service, &path, problems) {
                problems.extend(validate::service_problems(&service, &path));
            }
        }
    }
    None
}

fn deserialize<T: DeserializeOwned>(
    value: &serde_yaml::Value,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> Result<T, ()> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix, inner.as_str()) {
            (p, ".") => p.to_string(),
            ("", i) => i.to_string(),
            (p, i) if i.starts_with('[') => format!("{p}{i}"),
            (p, i) => format!("{p}.{i}"),
        };
        let message = e.into_inner().to_string();
        let hint = did_you_mean(&message);
        let mut problem = Problem::new(path, message);
        problem.hint = hint;
        problems.push(problem);
    })
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and variants): the closest
/// expected word, when it is close.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (wrong, expected) = rest.split_once('`')?;
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|w| (strsim::levenshtein(wrong, w), w))
        .min()?;
    (best.0 <= 2 || best.0 * 3 <= wrong.len()).then(|| format!("did you mean `{}`?", best.1))
}

/// Problems only the running system can show (interfaces that do not exist). `check` skips
/// these because it may run on another machine; `run` and `reload` refuse such a config.
fn system_problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut check = |name: &str, path: &str| {
        let c = std::ffi::CString::new(name).unwrap_or_default();
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            problems.push(
                Problem::new(
                    path,
                    format!("interface `{name}` does not exist on this system"),
                )
                .hint("`ip link` lists the interfaces"),
            );
        }
    };
    check(&config.interfaces.client, "interfaces.client");
    if let (Mode::TwoArm, Some(server)) = (config.mode, &config.interfaces.server) {
        check(server, "interfaces.server");
    }
    problems
}
