//! The real `xnlb` binary run as a daemon inside a test namespace, with its own config file,
//! admin socket and pin directory, so tests can run side by side. Dropping the handle stops the
//! daemon and removes whatever it pinned, also after a `kill -9`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{apps::http_exchange, netns::NetNs};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The `xnlb` binary beside this executable: in its directory (a binary such as the demo) or
/// one up (a test in `deps/`). `cargo xtask test` and `demo` build it first. `XNLB_BIN`
/// names another build instead (to compare builds with the same tests).
pub fn xnlb_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("XNLB_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    let candidates = [dir.join("xnlb"), dir.parent().unwrap_or(dir).join("xnlb")];
    candidates
        .iter()
        .find(|b| b.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} is missing: build it first (`cargo build`, or run `cargo xtask test`)",
                candidates[1].display()
            )
        })
}

/// Where one daemon keeps its files.
pub struct DaemonFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
}

impl Default for DaemonFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl DaemonFiles {
    pub fn new() -> Self {
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("xnlb-test-{id}"));
        fs::create_dir_all(&dir).expect("test dir");
        Self {
            config: dir.join("xnlb.yaml"),
            socket: dir.join("xnlb.sock"),
            log: dir.join("daemon.log"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/xnlb-test-{id}")),
            dir,
        }
    }
}

pub struct Daemon {
    pub files: DaemonFiles,
    ns_name: String,
    child: Option<Child>,
    /// Environment for the daemon process (e.g. `SSL_CERT_FILE`).
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes `config` and starts `xnlb run` in `ns`; returns once the admin socket answers.
    pub fn start(ns: &NetNs, config: &str) -> Self {
        Self::start_with_env(ns, config, &[])
    }

    /// `start`, with extra environment variables for the daemon.
    pub fn start_with_env(ns: &NetNs, config: &str, env: &[(&str, &str)]) -> Self {
        let mut d = Self::unstarted(ns, config);
        for (k, v) in env {
            d.set_env(k, v);
        }
        d.spawn(ns);
        d
    }

    /// A daemon's files and config, not started yet (`spawn` or `launch` starts it).
    pub fn unstarted(ns: &NetNs, config: &str) -> Self {
        let d = Self {
            files: DaemonFiles::new(),
            ns_name: ns.name().to_string(),
            child: None,
            env: Vec::new(),
        };
        d.write_config(config);
        d
    }

    /// An environment variable for the daemon's next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the daemon process (again) and waits until it answers.
    pub fn spawn(&mut self, ns: &NetNs) {
        self.launch(ns);
        self.wait_answering();
    }

    /// Starts the daemon process (again) without waiting for it.
    pub fn launch(&mut self, ns: &NetNs) {
        assert_eq!(ns.name(), self.ns_name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.files.log)
            .expect("daemon log");
        let child = ns
            .command(xnlb_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.files.config)
            .arg("--pin-dir")
            .arg(&self.files.pin_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn xnlb run");
        self.child = Some(child);
    }

    /// Waits until the daemon answers `status` (30 s at most: a start takes well under a
    /// second; the rest is slack for a loaded machine).
    pub fn wait_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("xnlb run exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "xnlb run did not answer within 30 s:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs an `xnlb` client verb against this daemon's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.client(args).output().expect("run xnlb")
    }

    /// Starts an `xnlb` client verb without waiting for it (output discarded).
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        self.client(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run xnlb")
    }

    /// `cli_spawn` with stdout piped, for a verb that streams (`xnlb trace`).
    pub fn cli_piped(&self, args: &[&str]) -> Child {
        self.client(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run xnlb")
    }

    fn client(&self, args: &[&str]) -> Command {
        let mut command = Command::new(xnlb_bin());
        command.args(args).arg("--socket").arg(&self.files.socket);
        command
    }

    /// `cli`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "xnlb {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }

    /// Writes the config file, pointing `admin.socket` at this daemon's own socket.
    pub fn write_config(&self, config: &str) {
        assert!(
            !config.contains("\nadmin:"),
            "the harness sets admin.socket itself"
        );
        let text = format!(
            "{config}\nadmin:\n  socket: {}\n",
            self.files.socket.display()
        );
        fs::write(&self.files.config, text).expect("write config");
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) for the daemon to exit by itself; returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not exit within {limit:?}:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `xnlb status` until every listed backend is in `state`; returns how long it took.
    pub fn wait_state(&self, backends: &[(&str, &str)], state: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let status = self.status_json();
            let pending: Vec<String> = backends
                .iter()
                .map(|(s, b)| (s, b, backend_of(&status, s, b)))
                .filter(|(_, _, json)| json["state"] != state)
                .map(|(s, b, json)| format!("{s}/{b}: {}", json["health"]))
                .collect();
            if pending.is_empty() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "not {state} within {limit:?}: {pending:?}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.files.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.cli(&["stop"]);
            self.kill9();
        }
        // After a kill -9 the pins keep the program attached: removing them detaches it.
        if let Ok(entries) = fs::read_dir(&self.files.pin_dir) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(&self.files.pin_dir);
        let _ = fs::remove_dir_all(&self.files.dir);
    }
}

/// GET `path` from `addr` inside `ns` with a plain HTTP/1.0 request; returns the body of the
/// 200 it must answer.
pub fn http_get(ns: &NetNs, addr: std::net::SocketAddr, path: &str) -> String {
    let stream = ns
        .run_in(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, body) =
        http_exchange(stream, addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}");
    body
}

/// Runs `xnlb run --config config [--pin-dir pin_dir]` in `ns`, which must refuse to start;
/// its stderr, which says why.
pub fn refused_run(ns: &NetNs, config: &Path, pin_dir: Option<&Path>) -> String {
    let mut run = ns.command(xnlb_bin());
    run.arg("run").arg("--config").arg(config);
    if let Some(dir) = pin_dir {
        run.arg("--pin-dir").arg(dir);
    }
    let out = run.output().expect("run xnlb run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "xnlb run started: {err}");
    err
}

/// The backends of `service` in a `status --json` document.
pub fn backends_of<'a>(status: &'a serde_json::Value, service: &str) -> &'a [serde_json::Value] {
    status["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("service {service} in status"))["backends"]
        .as_array()
        .expect("backends")
}

/// One backend of `service` in a `status --json` document.
pub fn backend_of<'a>(
    status: &'a serde_json::Value,
    service: &str,
    backend: &str,
) -> &'a serde_json::Value {
    backends_of(status, service)
        .iter()
        .find(|b| b["name"] == backend)
        .unwrap_or_else(|| panic!("backend {backend} in {service}"))
}

/// One scrape of the daemon's `/metrics` (served inside `ns` at `listen`), parsed.
pub struct Scrape {
    pub text: String,
    pub samples: Vec<prometheus_parse::Sample>,
}

impl Scrape {
    pub fn take(ns: &NetNs, listen: &str) -> Self {
        let addr = listen.parse().expect("metrics address");
        let text = http_get(ns, addr, "/metrics");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed =
            prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
        Self {
            text,
            samples: parsed.samples,
        }
    }

    /// How much `name` (summed as `sum` does) grew since the `earlier` scrape.
    pub fn since(&self, earlier: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels) - earlier.sum(name, labels)
    }

    /// Sum of `name` over samples whose labels include all of `labels` (histograms: their
    /// sample count).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                _ => 0.0,
            })
            .sum()
    }
}

/// A process a test started (a daemon in a namespace of its own, a Prometheus), killed and
/// reaped on drop, also on panic.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
