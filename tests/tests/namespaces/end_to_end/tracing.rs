//! `xnlb trace` during real traffic: the lines are all about the traced client and name the
//! backend that answered its request; a flood of matching packets is rate-limited in the
//! datapath without costing the real traffic anything, and what was held back is reported.

use std::{
    io::{BufRead, BufReader},
    process::Child,
    sync::atomic::{AtomicBool, Ordering},
};

use xnlb_tests::apps::http_get_from_port;

use super::*;

/// How long the trace may take to be armed, and to end, on a slow shared machine (each is a
/// few milliseconds when idle).
const ARMED_WITHIN: Duration = Duration::from_secs(20);

/// Waits until the daemon logged that a trace started (the filter is armed then).
fn wait_armed(d: &Daemon, traces: usize) {
    let start = Instant::now();
    while d.log().matches("trace started").count() < traces {
        assert!(
            start.elapsed() < ARMED_WITHIN,
            "trace not armed: {}",
            d.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The trace's JSON lines, once the CLI has ended (bounded: it is killed after `limit`).
fn lines_of(mut cli: Child, limit: Duration) -> Vec<serde_json::Value> {
    let start = Instant::now();
    while cli.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = cli.kill();
            panic!("xnlb trace did not end within {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    BufReader::new(cli.stdout.take().expect("piped"))
        .lines()
        .map(|l| serde_json::from_str(&l.expect("a line")).expect("JSON"))
        .collect()
}

pub(super) fn trace_one_client() {
    let farm = Farm::new(Mode::TwoArm, 3);
    let d = Daemon::start(&farm.net.lb, &farm.web_config());
    let clients = farm.net.client_addresses(39);
    let traced = clients[7];
    let traced_arg = traced.to_string();
    let cli = d.cli_piped(&["trace", "--client", &traced_arg, "--count", "20", "--json"]);
    wait_armed(&d, 1);

    // 200 requests from 40 clients; the traced one's from known ports, each remembered with
    // the backend that answered it (its own name, in its answer).
    let mut answered_by = BTreeMap::new();
    for i in 0..200u16 {
        let src = clients[i as usize % clients.len()];
        if src == traced {
            let port = 51_000 + i;
            let (status, body) =
                http_get_from_port(&farm.net.client, (src, port).into(), farm.vip(HTTP), "/")
                    .expect("the traced client's request");
            assert_eq!(status, 200);
            let backend = body.split_whitespace().next().expect("<backend> <client>");
            answered_by.insert(port, backend.to_string());
        } else {
            farm.get(src, HTTP);
        }
    }
    let lines = lines_of(cli, ARMED_WITHIN);
    let (events, end): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l["type"] == "event");
    assert_eq!(events.len(), 20, "--count 20: {lines:#?}");
    assert_eq!(
        end.last().map(|e| &e["type"]),
        Some(&"end".into()),
        "{lines:#?}"
    );
    for e in &events {
        let client = e["client"].as_str().expect("client");
        let (addr, port) = client.rsplit_once(':').expect("addr:port");
        assert_eq!(addr, traced_arg, "every line is the traced client's: {e}");
        let port: u16 = port.parse().expect("port");
        let backend = answered_by
            .get(&port)
            .unwrap_or_else(|| panic!("{client} made no request: {e}"));
        assert_eq!(
            e["backend"].as_str(),
            Some(backend.as_str()),
            "the line names the backend that answered: {e}"
        );
        assert_eq!(e["service"], "web");
    }
    let decisions: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["decision"].as_str())
        .collect();
    println!("trace: 20 lines for {traced}, decisions {decisions:?}");
    assert!(
        decisions.contains("new flow") && decisions.contains("reply"),
        "{decisions:?}"
    );

    // A flood of matching packets (UDP to a port without a rule, dropped) while the other
    // clients' requests go on: the trace is held to 10 events a second, the rest counted.
    let cli = d.cli_piped(&[
        "trace",
        "--client",
        &traced_arg,
        "--rate",
        "10",
        "--count",
        "30",
        "--json",
    ]);
    wait_armed(&d, 2);
    let frame = farm.on_the_wire();
    let flood: Vec<Vec<u8>> = (0..1000u16)
        .map(|i| frame(Pkt::udp((traced, 20_000 + i), (farm.net.vip(), 9))))
        .collect();
    let flooding = AtomicBool::new(true);
    /// The flood's bound: long enough for 30 events at 10 a second, with slack.
    const FLOOD_LIMIT: Duration = Duration::from_secs(30);
    let (requests, failures, sent) = thread::scope(|s| {
        let real = s.spawn(|| {
            let (mut requests, mut failures) = (0usize, Vec::new());
            while flooding.load(Ordering::Relaxed) && requests < 2000 {
                let src = clients[requests % clients.len()];
                requests += 1;
                if src == traced {
                    continue;
                }
                if let Err(e) = farm.try_get(src, HTTP) {
                    failures.push(format!("{src}: {e}"));
                }
            }
            (requests, failures)
        });
        let sender = FrameSender::open(&farm.net.client, "eth0");
        let start = Instant::now();
        let mut sent = 0usize;
        let mut cli = Some(cli);
        let mut ended = None;
        while start.elapsed() < FLOOD_LIMIT {
            for f in &flood {
                sender.send(f).expect("send a flood frame");
            }
            sent += flood.len();
            if let Some(c) = cli.as_mut()
                && c.try_wait().expect("wait").is_some()
            {
                ended = cli.take();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        flooding.store(false, Ordering::Relaxed);
        let (requests, failures) = real.join().expect("real requests");
        let lines = lines_of(ended.or(cli).expect("the trace"), ARMED_WITHIN);
        let end = lines.last().expect("an end line").clone();
        assert_eq!(end["type"], "end", "{lines:#?}");
        assert_eq!(end["events"], 30);
        let limited = end["limited"].as_u64().expect("limited");
        println!("trace under a flood: {sent} frames, 30 events, {limited} held back by the limit");
        assert!(limited > 0, "the flood exceeded 10 events a second: {end}");
        (requests, failures, sent)
    });
    println!(
        "trace under a flood: {requests} real requests, {} failed",
        failures.len()
    );
    assert!(sent > 0);
    assert!(
        failures.is_empty(),
        "real traffic during the traced flood: {failures:?}"
    );
}
