//! A backend's probe: its checks (`http`, `tcp`) run side by side on each tick of the schedule
//! and `require` combines their results. `all` fails at the first check the backend fails
//! (naming it) and passes when every check passed; `any` passes at the first check that passes
//! and fails when every check failed. A check the balancer itself could not make
//! (`Failure::Local`) decides nothing about the backend unless another check does.

use std::net::{IpAddr, SocketAddr};

use futures_util::{StreamExt, stream::FuturesUnordered};

use super::{http::HttpProbe, schedule::Progress, tcp::TcpProbe};
use crate::config::{Check, Health, Require};
pub use lb_model::rise_fall::{Failure, Outcome};

/// What one (service, backend) is probed with. Two probes are equal exactly when they check
/// the same, so a reload restarts only the probes it changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub checks: Vec<CheckProbe>,
    pub require: Require,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CheckProbe {
    Http(HttpProbe),
    Tcp(TcpProbe),
}

impl Probe {
    /// `health`'s checks against the backend at `ip`.
    pub fn new(ip: IpAddr, health: &Health) -> Self {
        Self {
            checks: health
                .checks()
                .into_iter()
                .map(|check| CheckProbe::new(ip, check))
                .collect(),
            require: health.require(),
        }
    }

    /// Runs every check once, noting in `progress` what each waits for.
    pub async fn run(&self, progress: &Progress) -> Outcome {
        if let [one] = self.checks.as_slice() {
            return one.run(progress).await;
        }
        let each = progress.per_check(self.checks.iter().map(CheckProbe::label));
        let mut running: FuturesUnordered<_> = self
            .checks
            .iter()
            .zip(each)
            .map(|(check, (label, progress))| async move {
                let outcome = check.run(progress).await;
                progress.done();
                (label, outcome)
            })
            .collect();
        let mut verdict = Verdict::new(self.require, self.checks.len());
        while let Some((label, outcome)) = running.next().await {
            if let Some(decided) = verdict.add(label, outcome) {
                return decided;
            }
        }
        verdict.finish()
    }
}

impl CheckProbe {
    pub fn new(ip: IpAddr, check: Check) -> Self {
        let addr = SocketAddr::new(ip, check.port());
        match check {
            Check::Http(http) => CheckProbe::Http(HttpProbe::new(addr, http)),
            Check::Tcp(tcp) => CheckProbe::Tcp(TcpProbe::new(addr, tcp)),
        }
    }

    pub fn label(&self) -> String {
        match self {
            CheckProbe::Http(p) => p.check.label(),
            CheckProbe::Tcp(p) => p.check.label(),
        }
    }

    pub async fn run(&self, progress: &Progress) -> Outcome {
        match self {
            CheckProbe::Http(p) => p.run(progress).await,
            CheckProbe::Tcp(p) => p.run(progress).await,
        }
    }
}

/// The results of one probe's checks so far, and what they decide.
struct Verdict {
    require: Require,
    checks: usize,
    /// Failures that did not decide on their own, as `label: why`.
    failed: Vec<String>,
    /// Whether any of them was the balancer's own.
    local: bool,
}

impl Verdict {
    fn new(require: Require, checks: usize) -> Self {
        Self {
            require,
            checks,
            failed: Vec::new(),
            local: false,
        }
    }

    /// One check's result; `Some` once the probe's outcome is decided.
    fn add(&mut self, label: &str, outcome: Outcome) -> Option<Outcome> {
        match (self.require, outcome) {
            (Require::Any, Ok(said)) => Some(Ok(format!("{label}: {said}"))),
            (Require::All, Err(Failure::Backend(why))) => {
                Some(Err(Failure::Backend(format!("{label}: {why}"))))
            }
            (_, Ok(_)) => None,
            (_, Err(failure)) => {
                self.local |= matches!(failure, Failure::Local(_));
                self.failed.push(format!("{label}: {failure}"));
                None
            }
        }
    }

    /// The outcome once every check has ended without deciding.
    fn finish(self) -> Outcome {
        let failed = self.failed.join("; ");
        match self.require {
            _ if self.local => Err(Failure::Local(failed)),
            Require::All => Ok(format!("all {} checks passed", self.checks)),
            Require::Any => Err(Failure::Backend(format!("every check failed: {failed}"))),
        }
    }
}

/// A connection that could not be made: the backend's fault (refused, unreachable host, reset),
/// or the balancer's own (out of files, buffers, memory or local ports; no route of its own; its
/// own firewall, which makes connect(2) fail with EPERM), which must not take the backend out.
pub(super) fn connect_failure(e: &std::io::Error) -> Failure {
    let reason = format!("connect: {}", io_cause(e));
    let local = [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOBUFS,
        libc::ENOMEM,
        libc::EADDRNOTAVAIL,
        libc::ENETUNREACH,
        libc::EPERM,
        libc::EACCES,
    ];
    match e.raw_os_error() {
        Some(code) if local.contains(&code) => Failure::Local(reason),
        _ => Failure::Backend(reason),
    }
}

/// `connection refused`, not `Connection refused (os error 111)`.
pub(super) fn io_cause(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(why: &str) -> Outcome {
        Err(Failure::Backend(why.into()))
    }

    fn local(why: &str) -> Outcome {
        Err(Failure::Local(why.into()))
    }

    /// Feeds `results` in order; the outcome and how many results it took.
    fn decide(require: Require, results: Vec<(&str, Outcome)>) -> (Outcome, usize) {
        let mut verdict = Verdict::new(require, results.len());
        for (i, (label, outcome)) in results.into_iter().enumerate() {
            if let Some(decided) = verdict.add(label, outcome) {
                return (decided, i + 1);
            }
        }
        let n = verdict.checks;
        (verdict.finish(), n)
    }

    #[test]
    fn all_fails_at_the_first_failing_check_and_names_it() {
        let ok = || Ok("HTTP 200 OK".to_string());
        assert_eq!(
            decide(Require::All, vec![("owa", ok()), ("ews", ok())]),
            (Ok("all 2 checks passed".into()), 2)
        );
        assert_eq!(
            decide(
                Require::All,
                vec![("owa", ok()), ("ews", fails("HTTP 503")), ("oab", ok())]
            ),
            (fails("ews: HTTP 503"), 2)
        );
    }

    #[test]
    fn any_passes_at_the_first_passing_check_and_fails_only_when_every_one_did() {
        assert_eq!(
            decide(
                Require::Any,
                vec![
                    ("smtp", fails("refused")),
                    ("owa", Ok("HTTP 200 OK".into()))
                ]
            ),
            (Ok("owa: HTTP 200 OK".into()), 2)
        );
        assert_eq!(
            decide(
                Require::Any,
                vec![("smtp", fails("refused")), ("owa", fails("HTTP 503"))]
            ),
            (fails("every check failed: smtp: refused; owa: HTTP 503"), 2)
        );
    }

    #[test]
    fn the_balancers_own_failure_decides_nothing_unless_the_backend_failed_too() {
        // all: one check the balancer could not make, the others passed: undecided (local).
        assert_eq!(
            decide(
                Require::All,
                vec![("owa", local("out of files")), ("ews", Ok("200".into()))]
            ),
            (local("owa: out of files"), 2)
        );
        // all: the backend failed a check: down, whatever the balancer's own trouble.
        assert_eq!(
            decide(
                Require::All,
                vec![("owa", local("out of files")), ("ews", fails("HTTP 503"))]
            ),
            (fails("ews: HTTP 503"), 2)
        );
        // any: no check passed, one could not be made: undecided.
        assert_eq!(
            decide(
                Require::Any,
                vec![("owa", local("out of files")), ("ews", fails("HTTP 503"))]
            ),
            (local("owa: out of files; ews: HTTP 503"), 2)
        );
    }

    #[test]
    fn a_connection_the_balancer_could_not_make_is_its_own_fault() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(io_cause(&refused), "connection refused");
        let failure = |code| connect_failure(&std::io::Error::from_raw_os_error(code));
        for (code, says) in [
            (libc::EMFILE, "connect: too many open files"),
            (libc::ENOBUFS, "connect: no buffer space available"),
            (libc::ENETUNREACH, "connect: network is unreachable"),
            (libc::EPERM, "connect: operation not permitted"),
        ] {
            assert_eq!(failure(code), Failure::Local(says.into()));
        }
        for (code, says) in [
            (libc::ECONNREFUSED, "connect: connection refused"),
            (libc::EHOSTUNREACH, "connect: no route to host"),
            (libc::ETIMEDOUT, "connect: connection timed out"),
        ] {
            assert_eq!(failure(code), Failure::Backend(says.into()));
        }
    }
}
