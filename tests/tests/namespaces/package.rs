//! The Debian package as an administrator gets it. `cargo xtask test` builds it from the tests'
//! own build (`cargo xtask package --debug`); here dpkg installs it into a clean root, its
//! files and checksums are checked, systemd verifies its unit, and the packaged binary runs
//! the unit's own command line on the packaged config, with the unit's capabilities only, in a
//! test network whose interfaces and addresses are the ones that config ships with. Then the
//! next version is installed over it and the daemon restarted as `postinst` asks systemd to,
//! with requests running: none fails.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use xnlb_tests::{
    daemon::{KillOnDrop, http_get},
    http_backend::{HttpBackend, web_servers},
    topology::{Mode, Net, VIP},
};

/// The package `cargo xtask package --debug` wrote.
fn deb() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let dir = target.join("debian/debug");
    std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| {
            panic!(
                "no package in {}: run `cargo xtask package --debug` (`cargo xtask test` does)",
                dir.display()
            )
        })
}

/// A directory to install into, removed on drop (also on panic).
struct Root(PathBuf);

impl Root {
    fn new() -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("package-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
        Self(dir)
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.0.join(inside.trim_start_matches('/'))
    }

    /// `dpkg -i` of `deb` into this root: its maintainer scripts run on the host with
    /// DPKG_ROOT set, and touch nothing there. The root has no libc6 or iproute2 packages to
    /// satisfy Depends.
    fn install(&self, deb: &Path) {
        let root_arg = format!("--root={}", self.0.display());
        let args = [
            &root_arg,
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
            "-i",
            deb.to_str().unwrap(),
        ];
        ok(run("dpkg", &args), &format!("dpkg -i {}", deb.display()));
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `key=` in the unit's `[Service]` section.
fn unit_setting(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_string()
}

#[test]
fn the_package_installs_verifies_and_balances_with_its_own_config() {
    let root = Root::new();
    let root_arg = format!("--root={}", root.0.display());
    let deb = deb();
    root.install(&deb);
    for file in [
        "/usr/sbin/xnlb",
        "/usr/lib/systemd/system/xnlb.service",
        "/etc/xnlb/xnlb.yaml",
        "/usr/share/man/man8/xnlb.8.gz",
        "/usr/share/man/man8/xnlb-run.8.gz",
        "/usr/share/man/man8/xnlb-cluster-query.8.gz",
        "/usr/share/man/man5/xnlb.yaml.5.gz",
        "/usr/share/bash-completion/completions/xnlb",
        "/usr/share/zsh/vendor-completions/_xnlb",
        "/usr/share/fish/vendor_completions.d/xnlb.fish",
        "/usr/share/doc/xnlb/copyright",
        "/usr/share/doc/xnlb/config.md",
        "/usr/share/doc/xnlb/examples/exchange-2016-single-namespace.yaml",
    ] {
        assert!(root.path(file).is_file(), "{file} is not installed");
    }
    let conffiles = ok(
        run("dpkg-query", &[&root_arg, "-W", "-f=${Conffiles}", "xnlb"]),
        "dpkg-query",
    );
    assert!(conffiles.contains("/etc/xnlb/xnlb.yaml "), "{conffiles:?}");
    let verified = ok(
        run("dpkg", &[&root_arg, "--verify", "xnlb"]),
        "dpkg --verify",
    );
    assert_eq!(
        verified, "",
        "installed files differ from the package's checksums"
    );
    // Man pages are roff; the bash completion parses.
    for page in ["man8/xnlb.8.gz", "man5/xnlb.yaml.5.gz"] {
        let path = root.path(&format!("/usr/share/man/{page}"));
        let text = ok(run("gzip", &["-dc", path.to_str().unwrap()]), "gzip -dc");
        assert!(
            text.lines().any(|l| l.starts_with(".TH ")),
            "{page}: {text:.200}"
        );
        assert!(text.contains(".SH"), "{page} has no sections");
    }
    let config_page = ok(
        run(
            "gzip",
            &[
                "-dc",
                root.path("/usr/share/man/man5/xnlb.yaml.5.gz")
                    .to_str()
                    .unwrap(),
            ],
        ),
        "gzip",
    );
    assert!(
        config_page.contains("initial"),
        "the config page follows docs/config.md"
    );
    let completion = root.path("/usr/share/bash-completion/completions/xnlb");
    ok(
        run("bash", &["-n", completion.to_str().unwrap()]),
        "bash -n",
    );

    // The unit, as systemd reads it, in a root that has systemd's own units (its targets)
    // as a Debian root with systemd has: verify passes; the hardening's exposure is printed.
    let units = root.path("/usr/lib/systemd/system");
    ok(
        run(
            "cp",
            &["-rn", "/lib/systemd/system/.", units.to_str().unwrap()],
        ),
        "copying systemd's units",
    );
    ok(
        run(
            "systemd-analyze",
            &["verify", &root_arg, "--man=no", "xnlb.service"],
        ),
        "systemd-analyze verify",
    );
    let security = run(
        "systemd-analyze",
        &[
            "security",
            "--offline=yes",
            &root_arg,
            "--no-pager",
            "xnlb.service",
        ],
    );
    let security = String::from_utf8_lossy(&security.stdout);
    let exposure = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for xnlb.service: ").nth(1))
        .expect("an exposure level");
    println!("systemd-analyze security: {exposure}");
    let level: f64 = exposure.split_whitespace().next().unwrap().parse().unwrap();
    // systemd calls up to 5.0 "OK"; above it, "MEDIUM".
    assert!(level <= 5.0, "the unit's hardening slipped: {exposure}");

    // The packaged binary checks the packaged config.
    let xnlb = root.path("/usr/sbin/xnlb");
    let config = root.path("/etc/xnlb/xnlb.yaml");
    let xnlb_s = xnlb.to_str().unwrap();
    let config_s = config.to_str().unwrap();
    ok(run(xnlb_s, &["check", "--config", config_s]), "xnlb check");

    // The test network the shipped config describes: clients on eth0, servers on eth1, the
    // VIP 198.18.1.100, servers 198.18.2.11 and .12 with the health page on port 80.
    let net = Net::build(Mode::TwoArm, 2);
    for (from, to) in [("cli0", "eth0"), ("srv0", "eth1")] {
        net.lb.ip(&["link", "set", from, "down"]);
        net.lb.ip(&["link", "set", from, "name", to]);
        net.lb.ip(&["link", "set", to, "up"]);
    }
    let _web: Vec<HttpBackend> = web_servers(&net.backends, 80, "cas");

    // The unit's ExecStart, its paths taken from the root, with the unit's capabilities
    // only, in a mount namespace of its own (a private /run for the default socket, a
    // private bpffs for the default pin directory). A holder process keeps that namespace,
    // and with it the pins, alive across a restart, as a host's own mounts do.
    let unit = std::fs::read_to_string(root.path("/usr/lib/systemd/system/xnlb.service")).unwrap();
    let exec_start: Vec<String> = unit_setting(&unit, "ExecStart")
        .split_whitespace()
        .map(|a| match a.starts_with('/') {
            true => root.path(a).display().to_string(),
            false => a.to_string(),
        })
        .collect();
    let caps: Vec<String> = unit_setting(&unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let setpriv: Vec<String> = [
        "setpriv".to_string(),
        format!("--bounding-set=-all,{}", caps.join(",")),
        "--inh-caps=-all".to_string(),
        "--ambient-caps=-all".to_string(),
        "--".to_string(),
    ]
    .into_iter()
    .chain(exec_start)
    .collect();
    // Killed on drop: with it go its private mounts, the pins and the datapath.
    let holder = KillOnDrop(
        net.lb
            .command("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mount -t tmpfs tmpfs /run && mount -t bpf bpf /sys/fs/bpf \
                 && touch /run/holder-ready && exec sleep 3600",
            )
            .spawn()
            .unwrap(),
    );
    let holder_pid = holder.0.id().to_string();
    // Inside the holder's mounts and the balancer's network.
    let inside = |program: &[String]| {
        let mut c = Command::new("nsenter");
        c.args(["--target", &holder_pid, "--mount", "--net", "--"])
            .args(program);
        c
    };
    // The holder's mounts are in place once its own /run has the file it makes last.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !inside(&["test".into(), "-e".into(), "/run/holder-ready".into()])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "the holder's mounts never came");
        thread::sleep(Duration::from_millis(50));
    }
    let log = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("package-daemon-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).unwrap();
    let start = || {
        let log = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        KillOnDrop(
            inside(&setpriv)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    drop(log_file);
    let mut daemon = start();
    // A client verb inside the daemon's namespaces, finding the socket from the config.
    let client = |args: &[&str]| {
        let mut program: Vec<String> = vec![xnlb_s.into()];
        program.extend(args.iter().map(|a| a.to_string()));
        program.extend(["--config".into(), config_s.into()]);
        inside(&program).output().unwrap()
    };
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Both servers pass rise (2) probes every 2 s: up within about 4 s; 60 s is slack.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(exited) = daemon.0.try_wait().unwrap() {
            panic!("the packaged daemon exited ({exited}):\n{}", daemon_log());
        }
        let status = client(&["status", "--json"]);
        if status.status.success() {
            let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
            let states: Vec<&str> = json["services"][0]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["state"].as_str().unwrap())
                .collect();
            if states == ["up", "up"] {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the packaged daemon did not bring both servers up: {}\n{}",
            String::from_utf8_lossy(&status.stderr),
            daemon_log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    // Every request served; `affinity: single` (as shipped) keeps the one client on one server.
    let seen: std::collections::BTreeSet<String> = (0..12)
        .map(|_| {
            let body = http_get(&net.client, SocketAddr::from((VIP, 80)), "/");
            body.split_whitespace().next().unwrap().to_string()
        })
        .collect();
    assert!(
        seen.len() == 1 && ["cas1", "cas2"].contains(&seen.first().unwrap().as_str()),
        "{seen:?}"
    );
    println!("12 requests served by {seen:?} through the packaged daemon");

    // The upgrade, with requests running throughout: the next version installed over this one
    // (an administrator's edit of the conffile kept), then the restart `postinst` asks
    // systemd for (`try-restart`: SIGTERM, then the unit's ExecStart, now the new binary),
    // which adopts the running datapath. No request may fail.
    let edited = format!(
        "# edited by the administrator\n{}",
        std::fs::read_to_string(&config).unwrap()
    );
    std::fs::write(&config, &edited).unwrap();
    let next = next_version(&deb, &root.path("/tmp/next"));
    let done = std::sync::atomic::AtomicBool::new(false);
    let (requests, upgraded) = thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut answers = Vec::new();
            // Bounded: at most 2,000 requests, 20 ms apart (40 s), however long the upgrade.
            while !done.load(std::sync::atomic::Ordering::Relaxed) && answers.len() < 2000 {
                answers.push(try_get(&net.client, SocketAddr::from((VIP, 80))));
                thread::sleep(Duration::from_millis(20));
            }
            answers
        });
        thread::sleep(Duration::from_millis(300));
        root.install(&next);
        let pid = nix::unistd::Pid::from_raw(daemon.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let exited = daemon.0.wait().unwrap();
        assert!(exited.success(), "SIGTERM: {exited}\n{}", daemon_log());
        daemon = start();
        // Answering again: adopted (the holder's pins) and serving.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client(&["status"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "not answering after the upgrade:\n{}",
                daemon_log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        thread::sleep(Duration::from_millis(500));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let version = ok(
            run("dpkg-query", &[&root_arg, "-W", "-f=${Version}", "xnlb"]),
            "dpkg-query",
        );
        (traffic.join().unwrap(), version)
    });
    assert!(upgraded.ends_with("+next"), "installed: {upgraded}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        edited,
        "conffile kept"
    );
    assert!(
        daemon_log().contains("adopted the running datapath"),
        "{}",
        daemon_log()
    );
    let failed: Vec<&String> = requests.iter().filter_map(|r| r.as_ref().err()).collect();
    println!(
        "upgrade to {upgraded} with requests running: {} requests, {} failed",
        requests.len(),
        failed.len()
    );
    assert!(requests.len() >= 20, "{} requests", requests.len());
    assert!(failed.is_empty(), "{failed:?}");

    // `xnlb stop` (what removal does) detaches and ends the daemon.
    ok(client(&["stop"]), "xnlb stop");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit on stop");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(exited.success(), "{exited}: {}", daemon_log());
    assert!(!net.lb.xdp_attached("eth0"), "still attached after stop");
    drop(holder);
    let _ = std::fs::remove_file(&log);
}

/// The package again as the next version (`+next`): what an upgrade installs over it.
fn next_version(deb: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let tree = dir.join("tree");
    let (deb_s, tree_s) = (deb.to_str().unwrap(), tree.to_str().unwrap());
    ok(run("dpkg-deb", &["-R", deb_s, tree_s]), "dpkg-deb -R");
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {v}+next\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&control, text).unwrap();
    let out = dir.join("xnlb-next.deb");
    ok(
        run(
            "dpkg-deb",
            &["--root-owner-group", "-b", tree_s, out.to_str().unwrap()],
        ),
        "dpkg-deb -b",
    );
    out
}

/// One GET of `/` from the client namespace: the body, or why there is none.
fn try_get(ns: &xnlb_tests::netns::NetNs, addr: SocketAddr) -> Result<String, String> {
    ns.run_in(|| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| format!("read: {e}"))?;
        match answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
            true => Ok(answer),
            false => Err(format!("answered {:.40}", answer)),
        }
    })
}
