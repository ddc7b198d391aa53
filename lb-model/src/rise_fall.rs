//! Rise and fall: the health state machine of one (service, backend). Down until `rise`
//! consecutive successes, then up until `fall` consecutive failures. It only counts; when
//! probes run is the scheduler's business, what the datapath does with it the lifecycle's.

use std::time::{Duration, SystemTime};

/// What one probe found: `Ok("HTTP 200 OK")`, or why it failed and whose fault that is.
pub type Outcome = Result<String, Failure>;

/// A failed probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The backend's: refused, reset, timed out, a wrong status, a bad certificate.
    Backend(String),
    /// The balancer's own: it could not probe (out of files or buffers, no route of its own, its
    /// own firewall). Never counted against the backend, whose health stays as it was.
    Local(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Backend(reason) | Failure::Local(reason) => f.write_str(reason),
        }
    }
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure::Backend(reason)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tracker {
    pub rise: u32,
    pub fall: u32,
    pub healthy: bool,
    /// Consecutive successes (0 after a failure).
    pub successes: u32,
    /// Consecutive failures (0 after a success).
    pub failures: u32,
    pub last: Option<LastProbe>,
    /// Why the balancer cannot probe this backend now (`Failure::Local`); cleared by the next
    /// probe that reaches it.
    pub local_fault: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LastProbe {
    pub ok: bool,
    /// `HTTP 200 OK`, `connect: connection refused`, ...
    pub result: String,
    pub latency: Duration,
    pub at: SystemTime,
}

/// A change of health, with the reason for the log (`3 failures, last: HTTP 503 ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub healthy: bool,
    pub reason: String,
}

fn count(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn millis(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

impl Tracker {
    pub fn new(rise: u32, fall: u32, healthy: bool) -> Self {
        Self {
            rise,
            fall,
            healthy,
            successes: 0,
            failures: 0,
            last: None,
            local_fault: None,
        }
    }

    /// Counts one probe's outcome; returns the change of health it caused, if any. A failure
    /// of the balancer's own is noted, not counted: the counts and the health stay.
    pub fn record(
        &mut self,
        outcome: Outcome,
        latency: Duration,
        at: SystemTime,
    ) -> Option<Change> {
        let (ok, result) = match outcome {
            Ok(r) => (true, r),
            Err(Failure::Backend(r)) => (false, r),
            Err(Failure::Local(r)) => {
                self.local_fault = Some(r);
                return None;
            }
        };
        self.local_fault = None;
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let change = if ok && !self.healthy && self.successes >= self.rise {
            self.healthy = true;
            Some(Change {
                healthy: true,
                reason: format!(
                    "{}, last: {result} in {}",
                    count(self.successes, "success", "successes"),
                    millis(latency)
                ),
            })
        } else if !ok && self.healthy && self.failures >= self.fall {
            self.healthy = false;
            Some(Change {
                healthy: false,
                reason: format!(
                    "{}, last: {result}",
                    count(self.failures, "failure", "failures")
                ),
            })
        } else {
            None
        };
        self.last = Some(LastProbe {
            ok,
            result,
            latency,
            at,
        });
        change
    }

    /// One line for `xnlb status`.
    pub fn summary(&self) -> String {
        if let Some(fault) = &self.local_fault {
            let state = if self.healthy { "up" } else { "down" };
            return format!("{state}, not probed: the balancer cannot ({fault})");
        }
        let Some(last) = &self.last else {
            return if self.healthy {
                "up, waiting for probes"
            } else {
                "waiting for probes"
            }
            .to_string();
        };
        match (self.healthy, last.ok) {
            (true, true) => format!("{} in {}", last.result, millis(last.latency)),
            (true, false) => format!("failing {}/{}: {}", self.failures, self.fall, last.result),
            (false, false) => format!(
                "{}, last: {}",
                count(self.failures, "failure", "failures"),
                last.result
            ),
            (false, true) => format!(
                "recovering {}/{}: {}",
                self.successes, self.rise, last.result
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Outcome {
        Ok("HTTP 200 OK".into())
    }
    fn fail() -> Outcome {
        Err(Failure::Backend("HTTP 503 Service Unavailable".into()))
    }

    /// Feeds outcomes one by one; returns the health after each.
    fn run(t: &mut Tracker, outcomes: &[Outcome]) -> Vec<bool> {
        outcomes
            .iter()
            .map(|o| {
                t.record(o.clone(), Duration::from_millis(2), SystemTime::UNIX_EPOCH);
                t.healthy
            })
            .collect()
    }

    #[test]
    fn rise_and_fall_count_consecutive_results_only() {
        let mut t = Tracker::new(2, 3, false);
        assert_eq!(t.summary(), "waiting for probes");
        // A success interrupted by a failure does not count towards rise.
        assert_eq!(
            run(&mut t, &[ok(), fail(), ok(), ok()]),
            [false, false, false, true]
        );
        // Two failures then a success: the failures start over.
        assert_eq!(
            run(&mut t, &[fail(), fail(), ok(), fail(), fail(), fail()]),
            [true, true, true, true, true, false]
        );
        assert_eq!(
            t.summary(),
            "3 failures, last: HTTP 503 Service Unavailable"
        );
        run(&mut t, &[ok()]);
        assert_eq!(t.summary(), "recovering 1/2: HTTP 200 OK");
        run(&mut t, &[ok(), fail()]);
        assert_eq!(t.summary(), "failing 1/3: HTTP 503 Service Unavailable");
    }

    #[test]
    fn each_change_is_reported_once_with_its_reason() {
        let mut t = Tracker::new(1, 2, true);
        let at = SystemTime::UNIX_EPOCH;
        let ms = Duration::from_millis(3);
        assert_eq!(t.record(fail(), ms, at), None);
        let down = t.record(fail(), ms, at).expect("down after fall");
        assert_eq!(
            down,
            Change {
                healthy: false,
                reason: "2 failures, last: HTTP 503 Service Unavailable".into()
            }
        );
        assert_eq!(t.record(fail(), ms, at), None, "already down");
        let up = t.record(ok(), ms, at).expect("up after rise 1");
        assert_eq!(up.reason, "1 success, last: HTTP 200 OK in 3.0ms");
        assert_eq!(t.record(ok(), ms, at), None);
        assert_eq!(t.summary(), "HTTP 200 OK in 3.0ms");
    }

    #[test]
    fn rise_one_and_fall_one_flip_on_every_change() {
        let mut t = Tracker::new(1, 1, false);
        assert_eq!(
            run(&mut t, &[ok(), fail(), ok(), ok(), fail()]),
            [true, false, true, true, false]
        );
    }
}
