//! Section 3: the same HTTP load through each balancer on the same two-arm namespace network,
//! one after the other in one run: nftables DNAT (`numgen` map), HAProxy `mode tcp`, and xnlb
//! with native XDP and with generic (skb) XDP. On veth, native XDP pays for turning every
//! kernel-built packet into an XDP frame and back (a copy), which a NIC driver does not; the
//! generic row shows how much of the cost that is. The load generator is wrk in the client
//! namespace; the backends are the tests' HTTP servers.
//!
//! Over 400 lines on purpose: the four balancers' set-ups side by side, so they are easy to
//! compare.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::{programs::ProgramInfo, sys::Stats};
use xnlb_tests::{
    apps::http_get_from,
    daemon::Daemon,
    http_backend::HttpBackend,
    netns::NetNs,
    topology::{CLIENT_IP, Mode, Net, TWO_ARM_CONFIG_HEAD, VIP, backend_ip},
};

use crate::{Budget, Progress};

pub const BALANCERS: [&str; 4] = ["nftables", "haproxy", "xnlb", "xnlb (generic XDP)"];
pub const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "keep-alive requests",
        close: false,
    },
    Workload {
        name: "new connections",
        close: true,
    },
];
const CONNECTIONS: u32 = 32;

#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub name: &'static str,
    /// `Connection: close` on every request: one TCP connection per request.
    pub close: bool,
}

/// One balancer under one workload.
#[derive(Clone, Debug)]
pub struct Run {
    pub balancer: &'static str,
    pub workload: &'static str,
    pub requests: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors and non-2xx answers wrk reported.
    pub errors: u64,
    /// Busy CPU of the whole machine (all namespaces: client, balancer, backends) per request.
    pub machine_us_per_request: f64,
    /// The balancer's own CPU per request where it can be isolated: HAProxy's process time,
    /// xnlb's XDP run time (BPF run-time statistics, from a second run with them on).
    pub balancer_us_per_request: Option<f64>,
}

/// What wrk printed, parsed.
struct WrkResult {
    requests: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Option<WrkResult> {
    let field = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let socket_errors: u64 = field("Socket errors:")
        .map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let non_2xx: u64 = field("Non-2xx or 3xx responses:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some(WrkResult {
        requests,
        per_second: field("Requests/sec:")?.parse().ok()?,
        p50_ms: duration_ms(field("50%")?)?,
        p99_ms: duration_ms(field("99%")?)?,
        errors: socket_errors + non_2xx,
    })
}

fn wrk(client: &NetNs, workload: Workload, secs: u32) -> WrkResult {
    let mut cmd = client.command("wrk");
    cmd.args([
        "-t2",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if workload.close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("http://{VIP}/"))
        .output()
        .expect("run wrk (cargo xtask bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).unwrap_or_else(|| panic!("cannot read wrk's output:\n{text}"))
}

/// Busy jiffies of the whole machine (`/proc/stat`: all but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum::<u64>() - fields[3] - fields[4]
}

/// utime + stime of a process, in jiffies.
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ticks_to_us(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 * 1e6 / hz
}

/// The load and the machine's CPU around it.
fn measure(client: &NetNs, workload: Workload, secs: u32) -> (WrkResult, f64) {
    let busy = machine_busy_ticks();
    let result = wrk(client, workload, secs);
    let us = ticks_to_us(machine_busy_ticks() - busy) / result.requests.max(1) as f64;
    (result, us)
}

/// A balancer set up in the balancer namespace (`tear_down` removes it; a panic leaves it to
/// the namespace's deletion, and the processes are killed on drop).
enum Setup {
    Nftables,
    Haproxy(KillOnDrop),
    Xnlb(Box<Daemon>),
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xnlb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run_in(ns: &NetNs, program: &str, args: &[&str]) {
    let out = ns.command(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft_ruleset() -> String {
    let map: Vec<String> = (1..=3)
        .map(|b| format!("{} : {}", b - 1, backend_ip(b)))
        .collect();
    format!(
        "table ip xnlb_bench {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} tcp dport 80 dnat to numgen inc mod 3 map {{ {} }}
  }}
}}
",
        map.join(", ")
    )
}

fn haproxy_config() -> String {
    let servers: String = (1..=3)
        .map(|b| format!("  server b{b} {}:80\n", backend_ip(b)))
        .collect();
    format!(
        "global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend vip
  bind {VIP}:80
  default_backend web
backend web
  balance roundrobin
{servers}"
    )
}

fn xnlb_config(xdp_mode: &str) -> String {
    let backends: String = (1..=3)
        .map(|b| format!("      - {{ name: b{b}, address: {} }}\n", backend_ip(b)))
        .collect();
    format!(
        "xdp_mode: {xdp_mode}\n{TWO_ARM_CONFIG_HEAD}  - name: web\n    vip: {VIP}\n    ports: [80]\n    affinity: none\n    backends:\n{backends}"
    )
}

fn set_up(net: &Net, balancer: &str) -> Setup {
    match balancer {
        "nftables" => {
            let path = scratch_dir().join("nft.conf");
            std::fs::write(&path, nft_ruleset()).expect("write ruleset");
            run_in(&net.lb, "nft", &["-f", path.to_str().unwrap()]);
            Setup::Nftables
        }
        "haproxy" => {
            net.lb
                .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "cli0"]);
            let path = scratch_dir().join("haproxy.cfg");
            std::fs::write(&path, haproxy_config()).expect("write haproxy.cfg");
            let child = net
                .lb
                .command("haproxy")
                .args(["-db", "-f"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(scratch_dir().join("haproxy.log")).expect("log"))
                .spawn()
                .expect("start haproxy (cargo xtask bench installs it)");
            Setup::Haproxy(KillOnDrop(child))
        }
        "xnlb" => Setup::Xnlb(Box::new(Daemon::start(&net.lb, &xnlb_config("native")))),
        _ => Setup::Xnlb(Box::new(Daemon::start(&net.lb, &xnlb_config("generic")))),
    }
}

fn tear_down(net: &Net, setup: Setup) {
    match setup {
        Setup::Nftables => run_in(&net.lb, "nft", &["delete", "table", "ip", "xnlb_bench"]),
        Setup::Haproxy(child) => {
            drop(child);
            net.lb
                .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "cli0"]);
        }
        Setup::Xnlb(daemon) => drop(daemon), // `xnlb stop`: detaches, removes the VIP
    }
}

/// Waits (bounded) until a request through the balancer is answered by a backend.
fn wait_serving(net: &Net, balancer: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let vip = SocketAddr::from((VIP, 80));
    loop {
        match http_get_from(&net.client, CLIENT_IP, vip, "/") {
            Ok((200, body)) if body.starts_with('b') => return,
            other => assert!(
                Instant::now() < deadline,
                "{balancer} does not balance: {other:?} (HAProxy's log: {})",
                scratch_dir().join("haproxy.log").display()
            ),
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// XDP run time of xnlb's program per request, from a separate run with BPF run-time
/// statistics on (they cost a little on every packet, so the measured run has them off).
fn xnlb_us_per_request(net: &Net, d: &Daemon, workload: Workload, secs: u32) -> f64 {
    let program = d.files.pin_dir.join("program");
    let stats = aya::sys::enable_stats(Stats::RunTime).expect("enable BPF run-time stats");
    let before = ProgramInfo::from_pin(&program)
        .expect("pinned program")
        .run_time();
    let result = wrk(&net.client, workload, secs);
    let after = ProgramInfo::from_pin(&program)
        .expect("pinned program")
        .run_time();
    drop(stats);
    (after - before).as_nanos() as f64 / 1000.0 / result.requests.max(1) as f64
}

pub fn measure_all(budget: &Budget, progress: &mut Progress) -> Vec<Run> {
    let net = Net::build(Mode::TwoArm, 3);
    // A load generator's usual setting: one client address opens tens of thousands of
    // connections to VIP:80 per run, and without TIME_WAIT reuse its connect() searches an
    // ever fuller port space (measured: xnlb fell from 15k to 600 new connections/s when it ran
    // within a minute after HAProxy, with the balancer idle and the client burning CPU).
    net.client.sysctl("net.ipv4.tcp_tw_reuse", "1");
    let _servers: Vec<HttpBackend> = net
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let addr = SocketAddr::from((backend_ip(i + 1), 80));
            HttpBackend::start(Some(ns), addr, &format!("b{}", i + 1), None)
        })
        .collect();
    let mut runs = Vec::new();
    for balancer in BALANCERS {
        let setup = set_up(&net, balancer);
        wait_serving(&net, balancer);
        for workload in WORKLOADS {
            progress.step(&format!("end to end: {balancer}, {}", workload.name));
            wrk(&net.client, workload, 1); // warm-up: caches, neighbours, backends' pools
            let haproxy_ticks = match &setup {
                Setup::Haproxy(child) => Some((child.0.id(), process_ticks(child.0.id()))),
                _ => None,
            };
            let (result, machine_us) = measure(&net.client, workload, budget.e2e_secs);
            let per_request = |us: f64| us / result.requests.max(1) as f64;
            let balancer_us = match (&setup, haproxy_ticks) {
                (Setup::Haproxy(_), Some((pid, before))) => {
                    Some(per_request(ticks_to_us(process_ticks(pid) - before)))
                }
                (Setup::Xnlb(d), _) => {
                    Some(xnlb_us_per_request(&net, d, workload, budget.e2e_secs))
                }
                _ => None,
            };
            runs.push(Run {
                balancer,
                workload: workload.name,
                requests: result.requests,
                per_second: result.per_second,
                p50_ms: result.p50_ms,
                p99_ms: result.p99_ms,
                errors: result.errors,
                machine_us_per_request: machine_us,
                balancer_us_per_request: balancer_us,
            });
        }
        tear_down(&net, setup);
    }
    let _ = std::fs::remove_dir_all(scratch_dir());
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 2s test @ http://198.18.1.100/
  2 threads and 32 connections
  Latency Distribution
     50%  250.00us
     75%  500.00us
     90%    0.90ms
     99%    1.23ms
  48000 requests in 2.00s, 4.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  24000.50
Transfer/sec:      2.00MB
";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 48000);
        assert_eq!(r.per_second, 24000.5);
        assert!((r.p50_ms - 0.25).abs() < 1e-9);
        assert_eq!(r.p99_ms, 1.23);
        assert_eq!(r.errors, 10);
    }
}
