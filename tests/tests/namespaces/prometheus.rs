//! `dashboards/` against the real tools: promtool checks the alerting rules; a real Prometheus
//! (Debian's, unpacked by `cargo xtask setup`) scrapes a real xnlb in the test network every
//! second while traffic runs, one backend fails its health page and the balancer cannot probe
//! another; then every PromQL expression of the Grafana dashboard and of the rules is asked of
//! that Prometheus over its HTTP API and must return data, and the alerts for those two
//! backends must fire. The daemon runs as a one-node cluster, so the cluster panels have data.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use xnlb_tests::{
    apps::{line_servers, spread},
    daemon::{Daemon, KillOnDrop},
    http_backend::{Answer, HttpBackend, web_servers},
    netns::NetNs,
    topology::{Mode, Net},
};

const HEALTH: &str = "/owa/healthcheck.htm";
const METRICS: &str = "127.0.0.1:9779";
const PROMETHEUS: &str = "127.0.0.1:9090";
/// What waits here waits for a few scrapes and evaluations at one per second; the rest is
/// slack for a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn tool(name: &str) -> PathBuf {
    let path = repo().join(".tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// GET `path` from Prometheus inside `ns`; the JSON it answers.
fn api(ns: &NetNs, path: &str) -> serde_json::Value {
    let addr: SocketAddr = PROMETHEUS.parse().unwrap();
    let mut stream = ns
        .run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("connect to Prometheus");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {PROMETHEUS}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {answer}"))
}

/// `text` for a URL's query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("dashboards/xnlb.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

/// Every rule's (alert name, expression) in the rules file's text.
fn rule_exprs(rules: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in rules.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert: ") {
            name = n.to_string();
        } else if let Some(e) = line.strip_prefix("expr: ") {
            out.push((name.clone(), e.to_string()));
        }
    }
    out
}

/// An alert's quantity: its expression without the final `OP NUMBER` (every rule is written
/// so), which has data whenever the metrics it reads are there.
fn quantity(expr: &str) -> String {
    let parts: Vec<&str> = expr.rsplitn(3, ' ').collect();
    assert!(
        parts.len() == 3
            && parts[0].parse::<f64>().is_ok()
            && ["==", "!=", ">", "<", ">=", "<="].contains(&parts[1]),
        "a rule that is not `quantity OP number`: {expr}"
    );
    parts[2].to_string()
}

#[test]
fn dashboard_and_alerts_have_data_in_a_real_prometheus() {
    let scratch =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let rules_file = repo().join("dashboards/alerts.yaml");
    let check = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .unwrap();
    assert!(check.status.success(), "promtool check rules: {check:?}");
    // The rules as shipped, with every `for:` shortened to 1s so that they fire within the
    // test; the expressions are untouched.
    let shipped = std::fs::read_to_string(&rules_file).unwrap();
    let rules: String = shipped
        .lines()
        .map(|l| match l.trim_start().starts_with("for: ") {
            true => format!("{}for: 1s\n", &l[..l.len() - l.trim_start().len()]),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(scratch.join("rules.yaml"), &rules).unwrap();

    let net = Net::build(Mode::OneArm, 3);
    let _lines = line_servers(&net.backends, 80);
    let web: Vec<HttpBackend> = web_servers(&net.backends, 8080, "b");
    let backends: String = (1..=3)
        .map(|n| format!("      - {{ name: b{n}, address: {} }}\n", net.backend_ip(n)))
        .collect();
    let config = format!(
        "cluster:\n  node_id: 1\n  interface: lan0\n{}  - name: web
    vip: {}
    ports: [80]
    affinity: none
    backends:
{backends}    health:
      http: {{ path: {HEALTH}, port: 8080 }}
      interval: 300ms
      timeout: 200ms
      fall: 2
metrics:
  listen: {METRICS}
",
        net.config_head(),
        net.vip()
    );
    let d = Daemon::start(&net.lb, &config);
    d.wait_state(&[("web", "b1"), ("web", "b2"), ("web", "b3")], "up", LIMIT);

    let prometheus_config = format!(
        "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
rule_files: [{}]
scrape_configs:
  - job_name: xnlb
    static_configs: [{{ targets: ['{METRICS}'] }}]
",
        scratch.join("rules.yaml").display()
    );
    std::fs::write(scratch.join("prometheus.yml"), prometheus_config).unwrap();
    let check = Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(scratch.join("prometheus.yml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "promtool check config: {check:?}");
    let log = std::fs::File::create(scratch.join("prometheus.log")).unwrap();
    let _prometheus = KillOnDrop(
        net.lb
            .command(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                scratch.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // Traffic, then b3's page fails (down) and the balancer's own policy forbids probing b2
    // (local errors; b2 stays up), with traffic going on.
    assert_eq!(spread(&net.client, net.vip(), 80, 40).len(), 40);
    web[2].set(HEALTH, Answer::Status(503));
    d.wait_state(&[("web", "b3")], "down", LIMIT);
    let b2 = format!("{}/32", net.backend_ip(2));
    net.lb.ip(&[
        "rule", "add", "to", &b2, "ipproto", "tcp", "dport", "8080", "prohibit",
    ]);
    assert_eq!(spread(&net.client, net.vip(), 80, 40).len(), 40);

    // The two alerts fire, for those backends.
    let deadline = Instant::now() + LIMIT;
    let firing = |alerts: &serde_json::Value, name: &str, backend: &str| {
        alerts["data"]["alerts"].as_array().is_some_and(|list| {
            list.iter().any(|a| {
                a["labels"]["alertname"] == name
                    && a["labels"]["backend"] == backend
                    && a["state"] == "firing"
            })
        })
    };
    loop {
        let alerts = api(&net.lb, "/api/v1/alerts");
        if firing(&alerts, "XnlbBackendDown", "b3") && firing(&alerts, "XnlbCannotProbe", "b2") {
            println!("firing: XnlbBackendDown (b3), XnlbCannotProbe (b2)");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alerts did not fire: {alerts}"
        );
        thread::sleep(Duration::from_millis(500));
    }

    // Every expression has data: the dashboard's as written, the rules' quantities.
    let mut asked: Vec<(String, String)> = dashboard_exprs()
        .into_iter()
        .map(|e| ("dashboard".to_string(), e))
        .collect();
    asked.extend(
        rule_exprs(&shipped)
            .into_iter()
            .map(|(n, e)| (n, quantity(&e))),
    );
    assert!(asked.len() >= 20, "{asked:?}");
    let mut empty = Vec::new();
    for (from, expr) in &asked {
        let answer = api(&net.lb, &format!("/api/v1/query?query={}", encode(expr)));
        assert_eq!(answer["status"], "success", "{from}: {expr}: {answer}");
        if answer["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty())
        {
            empty.push(format!("{from}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "expressions without data:\n{}",
        empty.join("\n")
    );
    println!("{} expressions returned data", asked.len());
    net.lb.ip(&[
        "rule", "del", "to", &b2, "ipproto", "tcp", "dport", "8080", "prohibit",
    ]);
    drop(_prometheus);
    let _ = std::fs::remove_dir_all(&scratch);
}
