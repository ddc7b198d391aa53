//! When probes run: one every `interval` at a fixed rate, each cut off at `timeout`, starting
//! after a per-backend offset so a hundred backends are not probed in the same millisecond.
//! A fixed rate (not "interval after the last probe ended") is what makes the detection bound
//! hold: a backend failing at T has had `fall` probes fail by T + fall × interval + timeout.

use std::{
    future::Future,
    hash::{BuildHasher, Hash},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, timeout};

use lb_model::rise_fall::Failure;

use super::probe::Outcome;

/// When one backend is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    /// Delay before the first probe.
    pub offset: Duration,
}

/// The most the first probes are spread over: enough to spread a large farm, short enough
/// that backends come up soon after the daemon starts.
const MAX_SPREAD: Duration = Duration::from_secs(1);

impl Timing {
    /// `interval`/`timeout` with an offset in [0, min(interval, 1s)) drawn from `key` with this
    /// process's random hash keys: spread evenly, different on every start.
    pub fn spread(interval: Duration, timeout: Duration, key: impl Hash) -> Self {
        let span = interval.min(MAX_SPREAD).as_nanos().max(1) as u64;
        let draw = std::hash::RandomState::new().hash_one(key);
        Self {
            interval,
            timeout,
            offset: Duration::from_nanos(draw % span),
        }
    }
}

/// What a probe in flight is waiting for, so a timeout can say it (`connecting`, ...); a probe
/// of several checks keeps one per check, each cleared when its check ends.
#[derive(Debug, Default)]
pub struct Progress {
    step: Mutex<&'static str>,
    checks: OnceLock<Vec<(String, Progress)>>,
}

impl Progress {
    pub fn at(&self, step: &'static str) {
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = step;
    }

    /// This check has ended: a timeout no longer names it.
    pub fn done(&self) {
        self.at("");
    }

    /// One progress per check, named by `labels` (the first call decides them).
    pub fn per_check(&self, labels: impl IntoIterator<Item = String>) -> &[(String, Progress)] {
        self.checks.get_or_init(|| {
            labels
                .into_iter()
                .map(|l| (l, Progress::default()))
                .collect()
        })
    }

    fn step(&self) -> &'static str {
        *self.step.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How a timeout ends its sentence: ` waiting for the response`, or for several checks
    /// `: https 443 /ews/healthcheck.htm waiting for the response`.
    fn unfinished(&self) -> String {
        let Some(checks) = self.checks.get() else {
            return match self.step() {
                "" => String::new(),
                step => format!(" {step}"),
            };
        };
        let waiting: Vec<String> = checks
            .iter()
            .filter(|(_, p)| !p.step().is_empty())
            .map(|(label, p)| format!("{label} {}", p.step()))
            .collect();
        if waiting.is_empty() {
            String::new()
        } else {
            format!(": {}", waiting.join(", "))
        }
    }
}

/// Probes forever (until the task is aborted) and hands each outcome and its latency to
/// `report`. A probe that hangs costs its timeout, never the schedule.
pub async fn probe_forever<P, F>(
    timing: Timing,
    mut probe: P,
    mut report: impl FnMut(Outcome, Duration),
) where
    P: FnMut(Arc<Progress>) -> F,
    F: Future<Output = Outcome>,
{
    sleep(timing.offset).await;
    let mut ticks = interval_at(Instant::now(), timing.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let progress = Arc::new(Progress::default());
        let started = Instant::now();
        let outcome = match timeout(timing.timeout, probe(progress.clone())).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Backend(format!(
                "timeout after {}{}",
                humantime::format_duration(timing.timeout),
                progress.unfinished()
            ))),
        };
        report(outcome, started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_model::rise_fall::Tracker;

    const INTERVAL: Duration = Duration::from_secs(2);
    const TIMEOUT: Duration = Duration::from_secs(1);

    /// Runs a prober on tokio's paused clock against a backend that answers `healthy(t)` at
    /// virtual time t (or hangs when it is not healthy and `hang` is set) and returns the
    /// virtual times at which the tracker changed state.
    async fn transitions(
        offset: Duration,
        healthy: impl Fn(Duration) -> bool + 'static,
        hang: bool,
        run_for: Duration,
    ) -> Vec<(Duration, bool)> {
        let start = Instant::now();
        let timing = Timing {
            interval: INTERVAL,
            timeout: TIMEOUT,
            offset,
        };
        let changes = Arc::new(Mutex::new(Vec::new()));
        let mut tracker = Tracker::new(2, 3, false);
        let seen = changes.clone();
        let prober = probe_forever(
            timing,
            |progress: Arc<Progress>| {
                let ok = healthy(start.elapsed());
                async move {
                    progress.at("waiting for the response");
                    if ok {
                        sleep(Duration::from_millis(3)).await;
                        Ok("HTTP 200 OK".to_string())
                    } else if hang {
                        std::future::pending().await
                    } else {
                        Err(Failure::Backend("HTTP 503 Service Unavailable".into()))
                    }
                }
            },
            move |outcome, latency| {
                if let Some(change) = tracker.record(outcome, latency, std::time::SystemTime::now())
                {
                    seen.lock().unwrap().push((start.elapsed(), change.healthy));
                }
            },
        );
        let _ = timeout(run_for, prober).await;
        changes.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn up_after_rise_then_down_within_the_detection_bound() {
        let fail_at = Duration::from_millis(10_300);
        for offset_ms in [0, 250, 999] {
            let offset = Duration::from_millis(offset_ms);
            let changes =
                transitions(offset, move |t| t < fail_at, true, Duration::from_secs(30)).await;
            assert_eq!(changes.len(), 2, "offset {offset_ms}ms: {changes:?}");
            // Up at the second probe: offset + 1 interval + the probe's 3 ms.
            assert!(changes[0].1);
            assert_eq!(changes[0].0, offset + INTERVAL + Duration::from_millis(3));
            // Down: three hung probes, the last one ending one timeout after it started.
            assert!(!changes[1].1);
            let detected = changes[1].0 - fail_at;
            assert!(detected <= 3 * INTERVAL + TIMEOUT, "{detected:?}");
            assert!(detected >= 2 * INTERVAL + TIMEOUT, "{detected:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_probe_costs_one_timeout_not_the_schedule() {
        let changes = transitions(Duration::ZERO, |_| false, true, Duration::from_secs(20)).await;
        assert!(changes.is_empty(), "never up: {changes:?}");
        // Ten probes in 20 s, each cut at 1 s: the schedule held although every probe hung.
        let mut count = 0;
        let prober = probe_forever(
            Timing {
                interval: INTERVAL,
                timeout: TIMEOUT,
                offset: Duration::ZERO,
            },
            |_| std::future::pending::<Outcome>(),
            |outcome, latency| {
                assert_eq!(
                    outcome,
                    Err(Failure::Backend("timeout after 1s".to_string()))
                );
                assert_eq!(latency, TIMEOUT);
                count += 1;
            },
        );
        let _ = timeout(Duration::from_millis(19_999), prober).await;
        assert_eq!(count, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn back_in_rotation_after_rise_successes() {
        let (down, up) = (Duration::from_secs(5), Duration::from_secs(15));
        let changes = transitions(
            Duration::ZERO,
            move |t| t < down || t >= up,
            false,
            Duration::from_secs(30),
        )
        .await;
        let states: Vec<bool> = changes.iter().map(|c| c.1).collect();
        assert_eq!(states, [true, false, true], "{changes:?}");
        // Probes at 0, 2, 4, 6, 8, 10 s: 503 from 6 s, the third failure at 10 s.
        assert_eq!(changes[1].0, Duration::from_secs(10));
        // 200 again from 16 s: rise 2 needs 16 and 18 s.
        assert_eq!(
            changes[2].0,
            Duration::from_secs(18) + Duration::from_millis(3)
        );
    }

    #[test]
    fn offsets_spread_over_the_first_second() {
        let offsets: Vec<Duration> = (0..100)
            .map(|i| Timing::spread(INTERVAL, TIMEOUT, ("owa", i)).offset)
            .collect();
        assert!(offsets.iter().all(|o| *o < MAX_SPREAD));
        let mut millis: Vec<u128> = offsets.iter().map(|o| o.as_millis()).collect();
        millis.sort();
        millis.dedup();
        assert!(
            millis.len() > 50,
            "100 backends in {} distinct ms",
            millis.len()
        );
        let short = Timing::spread(Duration::from_millis(200), TIMEOUT, "x");
        assert!(short.offset < Duration::from_millis(200));
    }
}
