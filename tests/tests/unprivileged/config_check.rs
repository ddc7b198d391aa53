//! `xnlb check` and the config loader: a table of good and bad files with the exact problems
//! expected (location, path, message), and the binary's exit codes and output.

use std::process::Command;

use xnlb::config;
use xnlb_tests::daemon::xnlb_bin;

/// A complete, valid two-arm config; bad cases are edits of it.
const GOOD: &str = "mode: two-arm
interfaces:
  client: eth0
  server: eth1
xdp_mode: auto
conntrack:
  max_entries: 262144
  tcp_timeout: 2h
  tcp_closing_timeout: 30s
  udp_timeout: 60s
services:
  - name: owa
    vip: 198.18.0.100
    ports: [\"443\"]
    protocol: tcp
    filtering: multiple
    affinity: single
    backends:
      - { name: cas1, address: 198.18.2.11, weight: 100, priority: 1 }
      - { name: cas2, address: 198.18.2.12, port: 8443 }
    health:
      http:
        path: /owa/healthcheck.htm
        port: 443
        tls: true
        verify_tls: false
        host: mail.contoso.com
        expect_status: [200]
      interval: 2s
      timeout: 1s
      rise: 2
      fall: 3
  - name: rpc
    vip: 198.18.0.100
    ports: [\"135\", \"1024-65535\"]
    affinity: network
    backends:
      - { name: cas1, address: 198.18.2.11 }
metrics:
  listen: 127.0.0.1:9779
admin:
  socket: /run/xnlb/xnlb.sock
";

/// Replaces `from` (which must occur) in GOOD.
fn edit(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "case edits text not in GOOD: {from}");
    GOOD.replacen(from, to, 1)
}

/// `xnlb check --config FILE`, run.
fn check(file: &std::path::Path) -> std::process::Output {
    Command::new(xnlb_bin())
        .args(["check", "--config"])
        .arg(file)
        .output()
        .unwrap()
}

/// Each problem line `check` prints, without the file name prefix.
fn problems(text: &str) -> Vec<String> {
    match config::parse(text, "f.yaml") {
        Ok(_) => vec![],
        Err(e) => e
            .to_string()
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("    hint:"))
            .map(|l| l.strip_prefix("f.yaml:").unwrap_or(l).to_string())
            .collect(),
    }
}

#[test]
fn good_files_pass_and_defaults_apply() {
    let loaded = config::parse(GOOD, "f.yaml").expect("GOOD is valid");
    let c = loaded.config;
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.services[0].backends[1].weight, config::DEFAULT_WEIGHT);
    assert_eq!(c.services[0].priority_of(1), 2);
    assert_eq!(
        c.services[1].ports[1],
        config::PortRange {
            lo: 1024,
            hi: 65535
        }
    );
    let minimal = "interfaces: { client: a, server: b }
services:
  - name: web
    vip: 198.18.1.1
    ports: [80]
    backends: [{ name: w1, address: 198.18.2.1 }]
    health: { http: { path: /, port: 80 } }
";
    let c = config::parse(minimal, "m.yaml")
        .expect("minimal config")
        .config;
    let h = c.services[0].health.as_ref().unwrap();
    assert_eq!(
        (h.interval.as_secs(), h.timeout.as_secs(), h.rise, h.fall),
        (2, 1, 2, 3)
    );
    assert_eq!(h.http.as_ref().unwrap().expect_status, vec![200]);
    assert_eq!(c.services[0].affinity, config::Affinity::Single);
    assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9779");
    assert_eq!(c.admin.socket.to_str(), Some("/run/xnlb/xnlb.sock"));
    assert_eq!(c.conntrack.tcp_timeout.as_secs(), 7200);
    let one_arm = "mode: one-arm
interfaces: { client: eth0 }
snat: { addresses: [198.18.0.2] }
services:
  - { name: u, vip: 198.18.0.100, ports: [53], protocol: udp, backends: [{ name: d1, address: 198.18.0.11 }] }
";
    assert!(config::parse(one_arm, "o.yaml").is_ok());
}

#[test]
fn bad_files_list_every_problem_with_its_location() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown top-level key",
            edit("xdp_mode: auto", "xdp_mode: auto\nlogging: verbose"),
            vec!["6:1: logging: unknown field `logging`, expected one of"],
        ),
        (
            "unknown key in a backend",
            edit("port: 8443 }", "port: 8443, wieght: 5 }"),
            vec!["20:57: services[0].backends[1].wieght: unknown field `wieght`"],
        ),
        (
            "wrong type",
            edit("rise: 2", "rise: twice"),
            vec!["31:7: services[0].health.rise: invalid type: string \"twice\", expected u32"],
        ),
        (
            "bad duration",
            edit("interval: 2s", "interval: 2 parsecs"),
            vec!["29:7: services[0].health.interval: `2 parsecs` is not a duration"],
        ),
        (
            "bad address",
            edit("address: 198.18.2.12", "address: 198.18.2.300"),
            vec!["20:23: services[0].backends[1].address: invalid IP address syntax"],
        ),
        (
            "bad port range",
            edit("\"1024-65535\"", "\"65535-1024\""),
            vec!["35:20: services[1].ports[1]: range `65535-1024` runs backwards"],
        ),
        (
            "port zero",
            edit("ports: [\"443\"]", "ports: [0]"),
            vec!["14:13: services[0].ports[0]: port 0 cannot be balanced"],
        ),
        (
            "overlapping rules on one VIP",
            edit("\"135\", \"1024-65535\"", "\"135\", \"400-500\""),
            vec![
                "35:20: services[1].ports[1]: rpc port 400-500 overlaps port 443 of service `owa` on the same VIP 198.18.0.100",
            ],
        ),
        (
            "overlap within a service",
            edit("ports: [\"443\"]", "ports: [\"443\", \"440-450\"]"),
            vec![
                "14:20: services[0].ports[1]: port rule 440-450 overlaps 443 (ports[0]) of the same service",
            ],
        ),
        (
            "duplicate service name",
            edit("name: rpc", "name: owa"),
            vec!["33:5: services[1].name: service name `owa` is already used by services[0]"],
        ),
        (
            "duplicate backend name",
            edit("name: cas2", "name: cas1"),
            vec![
                "20:11: services[0].backends[1].name: backend name `cas1` is already used by backends[0]",
            ],
        ),
        (
            "weight out of range",
            edit("weight: 100", "weight: 1001"),
            vec!["19:45: services[0].backends[0].weight: weight 1001 is out of range 0..=1000"],
        ),
        (
            "negative weight",
            edit("weight: 100", "weight: -1"),
            vec![
                "19:45: services[0].backends[0].weight: invalid value: integer `-1`, expected u32",
            ],
        ),
        (
            "one-arm without SNAT, with a server interface",
            edit("mode: two-arm", "mode: one-arm"),
            vec![
                "4:3: interfaces.server: one-arm mode uses only interfaces.client",
                "snat: one-arm mode needs snat.addresses",
            ],
        ),
        (
            "two-arm without a server interface",
            edit("  server: eth1\n", ""),
            vec!["2:1: interfaces: two-arm mode needs interfaces.server"],
        ),
        (
            "IPv6 VIP over IPv4 backends, an IPv6 prefix too long",
            edit(
                "vip: 198.18.0.100\n    ports: [\"443\"]",
                "vip: fd00::100\n    network_prefix: 129\n    ports: [\"443\"]",
            ),
            vec![
                "14:5: services[0].network_prefix: /129 is not an IPv6 prefix length (1-128)",
                "20:23: services[0].backends[0].address: 198.18.2.11 is IPv4, the VIP fd00::100 is IPv6: a service balances one IP version",
                "21:23: services[0].backends[1].address: 198.18.2.12 is IPv4, the VIP fd00::100 is IPv6: a service balances one IP version",
            ],
        ),
        (
            "one-arm with an IPv6 service and only an IPv4 SNAT address",
            edit("mode: two-arm", "mode: one-arm")
                .replace("  server: eth1\n", "")
                .replace(
                    "xdp_mode: auto\n",
                    "xdp_mode: auto\nsnat: { addresses: [198.18.0.2] }\n",
                )
                .replace(
                    "vip: 198.18.0.100\n    ports: [\"443\"]",
                    "vip: fd00::100\n    ports: [\"443\"]",
                )
                .replace(
                    "address: 198.18.2.11, weight",
                    "address: fd00::2:11, weight",
                )
                .replace("address: 198.18.2.12, port", "address: fd00::2:12, port"),
            vec![
                "13:5: services[0].vip: one-arm mode needs an IPv6 SNAT address for this IPv6 VIP",
            ],
        ),
        (
            "health timeout longer than interval, zero fall, relative path",
            edit("path: /owa/healthcheck.htm", "path: owa/healthcheck.htm")
                .replace("timeout: 1s\n      rise", "timeout: 5s\n      rise")
                .replace("fall: 3", "fall: 0"),
            vec![
                "30:7: services[0].health.timeout: timeout 5s is longer than interval 2s",
                "32:7: services[0].health.fall: fall must be at least 1",
                "23:9: services[0].health.http.path: `owa/healthcheck.htm` is not an absolute path",
            ],
        ),
        (
            "health path with a space, host that is no name",
            edit("path: /owa/healthcheck.htm", "path: /owa/health check.htm")
                .replace("host: mail.contoso.com", "host: mail contoso"),
            vec![
                "23:9: services[0].health.http.path: `/owa/health check.htm` is not a valid request path",
                "27:9: services[0].health.http.host: `mail contoso` is not a host name",
            ],
        ),
        (
            "health block without a check",
            edit(
                "      http:\n        path: /owa/healthcheck.htm\n        port: 443\n        tls: true\n        verify_tls: false\n        host: mail.contoso.com\n        expect_status: [200]\n",
                "",
            ),
            vec!["21:5: services[0].health: no check: the health block says how often, not what"],
        ),
        (
            "health with both http and tcp, require without a list, a line end in expect",
            edit(
                "    health:\n",
                "    health:\n      tcp: { port: 25, expect: \"220\\r\\n\" }\n      require: any\n",
            ),
            vec![
                "21:5: services[0].health: give one of `http`, `tcp` or `checks`, not several",
                "23:7: services[0].health.require: `require` combines a `checks` list; here there is one check",
                "22:24: services[0].health.tcp.expect: `expect` is matched against one line, without its line end",
            ],
        ),
        (
            "checks list: an empty entry, one with two kinds, port 0",
            edit(
                "      http:\n        path: /owa/healthcheck.htm\n        port: 443\n        tls: true\n        verify_tls: false\n        host: mail.contoso.com\n        expect_status: [200]\n",
                "      checks:\n        - http: { path: /owa/healthcheck.htm, port: 443 }\n        - {}\n        - { tcp: { port: 25 }, http: { path: /, port: 80 } }\n        - tcp: { port: 0 }\n      require: all\n",
            ),
            vec![
                "24:11: services[0].health.checks[1]: an empty check",
                "25:13: services[0].health.checks[2]: one entry holds both an `http` and a `tcp` check",
                "26:18: services[0].health.checks[3].tcp.port: port 0 is not a port",
            ],
        ),
        (
            "an idle timeout below a second",
            edit(
                "    affinity: network\n",
                "    affinity: network\n    idle_timeout: 500ms\n",
            ),
            vec!["37:5: services[1].idle_timeout: 500ms is out of range 1s..=30days"],
        ),
        (
            "mistakes in two services are all reported",
            edit("rise: 2", "rise: -2").replace("affinity: network", "affinity: nearby"),
            vec![
                "31:7: services[0].health.rise: invalid value: integer `-2`, expected u32",
                "36:5: services[1].affinity: unknown variant `nearby`, expected one of `none`, `single`, `network`",
            ],
        ),
        (
            "unknown enum value at the top level",
            edit("mode: two-arm", "mode: three-arm"),
            vec![
                "1:1: mode: unknown variant `three-arm`, expected one of `two-arm`, `one-arm`, `dsr`",
            ],
        ),
        (
            "YAML syntax error",
            edit("  client: eth0", "  client: [eth0"),
            vec!["not valid YAML"],
        ),
        (
            "conntrack too small and a zero timeout",
            edit("max_entries: 262144", "max_entries: 10")
                .replace("udp_timeout: 60s", "udp_timeout: 0s"),
            vec![
                "7:3: conntrack.max_entries: 10 is out of range 1024..=16777216",
                "10:3: conntrack.udp_timeout: 0s is out of range 1s..=30days",
            ],
        ),
        (
            "backend is the VIP, service without backends",
            edit(
                "address: 198.18.2.11, weight",
                "address: 198.18.0.100, weight",
            )
            .replace("      - { name: cas1, address: 198.18.2.11 }\n", "")
            .replace(
                "affinity: network\n    backends:",
                "affinity: network\n    backends: []",
            ),
            vec![
                "19:23: services[0].backends[0].address: a backend cannot be the VIP itself",
                "37:5: services[1].backends: no backends",
                "34:5: services[1].vip: 198.18.0.100 is also the address of backend owa/cas1",
            ],
        ),
        (
            "several type errors in one service, each found",
            edit("rise: 2", "rise: twice")
                .replace("interval: 2s", "interval: 5")
                .replace("weight: 100,", "weight: lots,")
                .replace("\"1024-65535\"", "\"1024-\""),
            vec![
                "31:7: services[0].health.rise: invalid type: string \"twice\", expected u32",
                "29:7: services[0].health.interval: `5` has no unit; write 5s for seconds",
                "19:45: services[0].backends[0].weight: invalid type: string \"lots\"",
                "35:20: services[1].ports[1]: range `1024-` lacks a last port",
            ],
        ),
        (
            "a missing required key is said beside another block's error",
            edit("affinity: single", "afinity: single").replace("        port: 443\n", ""),
            vec![
                "17:5: services[0].afinity: unknown field `afinity`",
                "22:7: services[0].health.http: missing field `port`",
            ],
        ),
        (
            "absurd durations",
            edit("interval: 2s", "interval: 584y").replace("tcp_timeout: 2h", "tcp_timeout: 1ns"),
            vec![
                "8:3: conntrack.tcp_timeout: 1ns is out of range 1s..=30days",
                "29:7: services[0].health.interval: 584years is out of range 100ms..=1h",
            ],
        ),
        (
            "a number past 64 bits",
            edit("weight: 100,", "weight: 99999999999999999999,"),
            vec!["a number too large for any setting"],
        ),
        (
            "addresses with two roles, weights all 0, a socket that cannot be",
            edit(
                "vip: 198.18.0.100\n    ports: [\"135\"",
                "vip: 198.18.2.11\n    ports: [\"135\"",
            )
            .replace(
                "- { name: cas1, address: 198.18.2.11 }\n",
                "- { name: cas1, address: 198.18.2.13, weight: 0 }\n",
            )
            .replace("socket: /run/xnlb/xnlb.sock", "socket: /"),
            vec![
                "services[1].vip: 198.18.2.11 is also the address of backend owa/cas1",
                "services[1].backends: every backend has weight 0",
                "admin.socket: `/` cannot be the admin socket",
            ],
        ),
        (
            "stickiness where it cannot hold",
            edit(
                "affinity: single",
                "affinity: none\n    sticky_timeout: 20m",
            )
            .replace(
                "affinity: network\n",
                "affinity: network\n    filtering: single\n    sticky_timeout: 500ms\n",
            ),
            vec![
                "services[0].sticky_timeout: a sticky client needs affinity single or network",
                "services[1].sticky_timeout: 500ms is out of range 1s..=30days",
                "services[1].sticky_timeout: filtering single sends no client to a backend of its own choosing",
            ],
        ),
        (
            "a persistence group whose services disagree",
            edit(
                "affinity: single",
                "affinity: single\n    sticky_timeout: 20m\n    persistence_group: cas",
            )
            .replace(
                "affinity: network\n",
                "affinity: network\n    sticky_timeout: 30m\n    persistence_group: cas\n",
            ),
            vec![
                "services[1].sticky_timeout: sticky_timeout is 30m here and 20m in owa (services[0]) of persistence_group cas",
                "services[1].affinity: affinity is network here and single in owa (services[0])",
                "services[1].backends: the backends differ from those of owa (services[0])",
            ],
        ),
        (
            "an announce block that cannot work",
            edit(
                "metrics:",
                "announce:\n  interface: eth1\n  min_backends: 3\n  hold_down: 2h\nmetrics:",
            ),
            vec![
                "announce.interface: eth1 carries traffic; the VIPs are announced on an interface of their own",
                "announce.hold_down: more than an hour",
                "announce.min_backends: 3 but 198.18.0.100's services have at most 2 backend(s)",
            ],
        ),
        (
            "an announce block with a bad name and no backends to ask for",
            edit(
                "metrics:",
                "announce: { interface: vips/0, min_backends: 0 }\nmetrics:",
            ),
            vec![
                "announce.interface: \"vips/0\" is not an interface name",
                "announce.min_backends: 0 would announce a VIP nothing serves",
            ],
        ),
    ];
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (name, text, expected) in &cases {
        let got = problems(text);
        let matches = got.len() == expected.len()
            && expected.iter().all(|e| got.iter().any(|g| g.contains(e)));
        if !matches {
            failures.push(format!("{name}:\n  expected {expected:#?}\n  got {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let err = config::parse(&edit("port: 8443 }", "port: 8443, wieght: 5 }"), "f").unwrap_err();
    assert_eq!(
        err.problems[0].hint.as_deref(),
        Some("did you mean `weight`?")
    );
}

#[test]
fn check_prints_a_summary_or_the_problems() {
    let dir = std::env::temp_dir().join(format!("xnlb-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    let bad = dir.join("bad.yaml");
    std::fs::write(&good, GOOD).unwrap();
    std::fs::write(
        &bad,
        edit("weight: 100", "weight: 5000").replace("name: rpc", "name: owa"),
    )
    .unwrap();

    let out = check(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK") && stdout.contains("2 service(s)") && stdout.contains("owa"),
        "{stdout}"
    );

    let out = check(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:19:45:", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");

    let out = check(std::path::Path::new("/nonexistent.yaml"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the package ships (`packaging/xnlb.yaml`, `examples/`) passes `xnlb check` with no
/// warning: an administrator's starting points must not start with a problem.
#[test]
fn the_shipped_config_and_every_example_pass_check() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let mut files = vec![repo.join("packaging/xnlb.yaml")];
    let mut examples: Vec<_> = std::fs::read_dir(repo.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "{examples:?}");
    files.extend(examples);
    for file in files {
        let out = check(&file);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {said}{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains(": OK: "), "{}: {said}", file.display());
        assert!(!said.contains("warning"), "{}: {said}", file.display());
    }
}
