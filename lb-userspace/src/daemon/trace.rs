//! `xnlb trace` in the daemon: arms the datapath's filter for one client connection, streams
//! the events it reads back as JSON lines (`lb_model::trace::TraceMessage`), and clears the
//! filter when the count is reached or the client goes (Ctrl-C). One trace at a time: the
//! datapath has one filter.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, anyhow, bail};
use lb_common::{
    addr::{FAMILY_V4, network},
    trace::{ANY, TraceFilter, WINDOW_NS},
};
use lb_model::trace::{Missed, Names, TraceMessage, TraceRecord};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    sync::mpsc,
};
use tracing::{info, warn};

use super::{admin_socket::Answerer, status::View};
use crate::{
    admin::{Response, TraceRequest},
    datapath::{Reader, monotonic_ns, trace::Tap},
};

/// Events per second a trace asks for when it names no rate: enough to follow a few clients'
/// connections, little next to what the datapath forwards.
pub const DEFAULT_RATE: u32 = 1000;

/// How often the reader drains the ring and checks for a gone client. The datapath writes
/// events without waking a reader (a wakeup per event costs a traced packet microseconds), so
/// the reader looks on this tick. The ring holds 2,048 events: 20 ms lets a trace keep up
/// with about 100,000 a second before the datapath counts events lost.
const TICK: Duration = Duration::from_millis(20);
/// How often it reports events the datapath could not write, when their count grew.
const MISSED_EVERY: Duration = Duration::from_secs(1);

/// What the datapath traces for a request, and what the daemon filters after it (a backend
/// name that several services have: the datapath's filter holds one id).
struct Plan {
    filter: TraceFilter,
    backends: Option<BTreeSet<u32>>,
}

/// Serves a `trace` request on its connection until its count is reached or the client goes.
pub async fn stream(
    answerer: &Answerer,
    request: TraceRequest,
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
) {
    let view = answerer.view.borrow().clone();
    let started = plan(&request, &view).and_then(|plan| {
        if answerer.tracing.swap(true, Ordering::AcqRel) {
            bail!("a trace is already running (the datapath has one filter): end it first");
        }
        let tap = open(&answerer.reader, &plan.filter);
        if tap.is_err() {
            answerer.tracing.store(false, Ordering::Release);
        }
        Ok((plan, tap?))
    });
    let (plan, tap) = match started {
        Ok(started) => started,
        Err(e) => {
            let _ = write_line(&mut write, &Response::error(&e)).await;
            return;
        }
    };
    info!(
        "trace started: {}",
        serde_json::to_string(&request).unwrap_or_default()
    );
    if write_line(&mut write, &Response::ok("tracing".into()))
        .await
        .is_err()
    {
        finish(tap, answerer);
        return;
    }
    let (events, mut received) = mpsc::channel(1024);
    let gone = Arc::new(AtomicBool::new(false));
    let reading = {
        let gone = gone.clone();
        let view = answerer.view.clone();
        let count = request.count;
        tokio::task::spawn_blocking(move || read_events(tap, plan, count, &view, &events, &gone))
    };
    let mut byte = [0u8; 1];
    loop {
        tokio::select! {
            message = received.recv() => match message {
                Some(message) => {
                    if write_line(&mut write, &message).await.is_err() {
                        gone.store(true, Ordering::Release);
                    }
                }
                None => break,
            },
            // The client sends nothing after its request: a read returning means it went.
            _ = read.read(&mut byte), if !gone.load(Ordering::Acquire) => {
                gone.store(true, Ordering::Release);
            }
        }
    }
    match reading.await {
        Ok(tap) => finish(tap, answerer),
        Err(e) => {
            // Its tap went with it: clear the filter through another, so that the next trace
            // can start.
            warn!("trace: the reader ended abnormally: {e}");
            match Tap::open(&answerer.reader) {
                Ok(tap) => finish(tap, answerer),
                Err(e) => warn!("trace: clearing the datapath's filter: {e}"),
            }
        }
    }
    let _ = write.shutdown().await;
}

/// Clears the filter and lets the next trace start.
fn finish(mut tap: Tap, answerer: &Answerer) {
    if let Err(e) = tap.disarm() {
        warn!("trace: clearing the datapath's filter: {e}");
    }
    answerer.tracing.store(false, Ordering::Release);
    info!("trace ended");
}

async fn write_line<T: serde::Serialize>(write: &mut OwnedWriteHalf, value: &T) -> Result<()> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    Ok(())
}

/// Opens the trace maps, empties what an earlier trace left unread, and arms `filter` with a
/// generation of its own.
fn open(reader: &Reader, filter: &TraceFilter) -> Result<Tap> {
    let mut tap = Tap::open(reader).context("opening the trace maps")?;
    while tap.next_event().is_some() {}
    let generation = (monotonic_ns() / 1000) as u32 | 1;
    tap.arm(&TraceFilter {
        armed: generation,
        ..*filter
    })
    .context("arming the trace filter")?;
    Ok(tap)
}

/// Reads events until `count` were sent, the client is `gone`, or the channel closes; sends
/// each matching one named, and what the datapath missed when that grew; ends with the totals.
/// Returns the tap for `finish`.
fn read_events(
    mut tap: Tap,
    plan: Plan,
    count: Option<u64>,
    view: &tokio::sync::watch::Receiver<Arc<View>>,
    events: &mpsc::Sender<TraceMessage>,
    gone: &AtomicBool,
) -> Tap {
    let missed_before = tap.missed().unwrap_or_default();
    let missed_since = |tap: &Tap| {
        let now = tap.missed().unwrap_or_default();
        Missed {
            limited: now.limited.saturating_sub(missed_before.limited),
            lost: now.lost.saturating_sub(missed_before.lost),
        }
    };
    let clock_offset = realtime_minus_monotonic_ns();
    let mut names = names_of(&view.borrow());
    let mut sent = 0u64;
    let mut reported = Missed::default();
    let mut last_check = Instant::now();
    let why = 'reading: loop {
        if gone.load(Ordering::Acquire) {
            break "the client ended it";
        }
        std::thread::sleep(TICK);
        if view.has_changed().unwrap_or(false) {
            names = names_of(&view.borrow());
        }
        while let Some(event) = tap.next_event() {
            if let Some(backends) = &plan.backends
                && !backends.contains(&event.backend_id)
            {
                continue;
            }
            let record = TraceRecord::of(&event, &names, clock_offset);
            if events
                .blocking_send(TraceMessage::Event(Box::new(record)))
                .is_err()
            {
                break 'reading "the client ended it";
            }
            sent += 1;
            if count.is_some_and(|c| sent >= c) {
                break 'reading "count reached";
            }
        }
        if last_check.elapsed() >= MISSED_EVERY {
            last_check = Instant::now();
            let missed = missed_since(&tap);
            if missed != reported {
                reported = missed;
                let _ = events.blocking_send(TraceMessage::Missed(missed));
            }
        }
    };
    let _ = tap.disarm();
    let _ = events.blocking_send(TraceMessage::End {
        events: sent,
        missed: missed_since(&tap),
        why: why.to_string(),
    });
    tap
}

/// The wall clock minus CLOCK_MONOTONIC (which the datapath's `bpf_ktime_get_ns` reads).
fn realtime_minus_monotonic_ns() -> i128 {
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    wall - monotonic_ns() as i128
}

/// The names of the running config's ids and of the host's interfaces.
fn names_of(view: &View) -> Names {
    let interfaces = nix::net::if_::if_nameindex()
        .map(|all| {
            all.iter()
                .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    Names {
        services: view
            .ids
            .services
            .iter()
            .map(|(name, &id)| (id, name.clone()))
            .collect(),
        backends: view
            .ids
            .backends
            .iter()
            .map(|(key, &id)| (id, key.name.clone()))
            .collect(),
        interfaces,
    }
}

/// The datapath's filter for `request` under the running config, or why there is none.
fn plan(request: &TraceRequest, view: &View) -> Result<Plan> {
    let mut filter = TraceFilter {
        service_id: ANY,
        backend_id: ANY,
        per_cpu_window: per_cpu_window(request.rate.unwrap_or(DEFAULT_RATE))?,
        ..TraceFilter::default()
    };
    if let Some(client) = &request.client {
        let (addr, prefix) = parse_client(client)?;
        let (words, family) = lb_model::port_rules::addr_of(addr);
        let max = if family == FAMILY_V4 { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            bail!("--client {client}: a prefix of at most {max} bits");
        }
        filter.client_family = family;
        filter.client_prefix = prefix;
        filter.client = network(&words, prefix);
    }
    if let Some(service) = &request.service {
        filter.service_id =
            *view.ids.services.get(service).ok_or_else(|| {
                anyhow!("--service {service}: no such service in the running config")
            })?;
    }
    let mut backends = None;
    if let Some(backend) = &request.backend {
        let ids: BTreeSet<u32> = view
            .ids
            .backends
            .iter()
            .filter(|(key, _)| {
                key.name == *backend && request.service.as_ref().is_none_or(|s| key.service == *s)
            })
            .map(|(_, &id)| id)
            .collect();
        match ids.len() {
            0 => bail!("--backend {backend}: no such backend in the running config"),
            1 => filter.backend_id = *ids.first().expect("one id"),
            _ => backends = Some(ids),
        }
    }
    Ok(Plan { filter, backends })
}

/// `ADDR` or `ADDR/LEN`.
fn parse_client(text: &str) -> Result<(IpAddr, Option<u8>)> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| anyhow!("--client {text}: not an address or ADDR/LEN"))?;
    let len = len
        .map(|l| l.parse::<u8>())
        .transpose()
        .map_err(|_| anyhow!("--client {text}: the prefix length is not a number"))?;
    Ok((addr, len))
}

/// Each CPU's share of `rate` events a second, per `WINDOW_NS`.
fn per_cpu_window(rate: u32) -> Result<u32> {
    if rate == 0 {
        bail!("--rate 0 would trace nothing");
    }
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u64;
    let windows_per_second = 1_000_000_000 / WINDOW_NS;
    Ok((rate as u64).div_ceil(windows_per_second * cpus).max(1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_parse_as_an_address_or_a_prefix() {
        assert_eq!(
            parse_client("198.18.0.10").unwrap(),
            ("198.18.0.10".parse().unwrap(), None)
        );
        assert_eq!(
            parse_client("fd00::/64").unwrap(),
            ("fd00::".parse().unwrap(), Some(64))
        );
        assert!(parse_client("198.18.0.300").is_err());
        assert!(parse_client("198.18.0.0/x").is_err());
    }

    #[test]
    fn the_rate_is_shared_between_cpus_and_windows() {
        let cpus = aya::util::nr_cpus().unwrap() as u32;
        assert_eq!(per_cpu_window(10 * cpus).unwrap(), 1);
        assert_eq!(per_cpu_window(100 * cpus).unwrap(), 10);
        assert_eq!(per_cpu_window(1).unwrap(), 1);
        assert!(per_cpu_window(0).is_err());
    }
}
