//! The `health` block: how often and how strictly backends are probed (`interval`, `timeout`,
//! `rise`, `fall`, `initial`) and with what: one `http` or `tcp` check, or a `checks` list whose
//! results `require` combines (`all` pass, or `any` passes). Validation (`validate::service`)
//! makes sure exactly one of the three is given.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Several checks per backend, each probed every `interval` (Exchange 2013/2016's one
    /// namespace: one `/<vdir>/healthcheck.htm` per protocol behind one VIP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<ListedCheck>,
    /// How the results of `checks` combine; only with `checks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<Require>,
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// The health a backend starts with when the daemon first sees it (a cold start, or a
    /// backend a reload adds); a restart that adopts a running datapath keeps its states.
    #[serde(default)]
    pub initial: InitialHealth,
}

/// One entry of `health.checks`: exactly one kind (validated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListedCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
}

/// One check, whichever way it was written.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    Http(HttpCheck),
    Tcp(TcpCheck),
}

/// `require`: a backend is healthy when `all` its checks pass (the default: one failing page
/// takes the server out), or when `any` of them does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    #[default]
    All,
    Any,
}

/// `health.initial`: `down` waits for `rise` passing probes before a new backend takes
/// traffic; `up` puts it in rotation at once, to leave after `fall` failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialHealth {
    #[default]
    Down,
    Up,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub path: String,
    pub port: u16,
    #[serde(default)]
    pub tls: bool,
    #[serde(default = "yes")]
    pub verify_tls: bool,
    /// Host header and TLS SNI.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_expect_status")]
    pub expect_status: Vec<u16>,
}

/// A TCP connect, then optionally `send` (as written; YAML's `"\r\n"` escapes in double
/// quotes), then optionally the first line the backend sends must start with `expect` (a
/// banner: SMTP `220`, POP3 `+OK`, IMAP `* OK`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    pub port: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub send: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expect: String,
}

/// The longest `send` or `expect`, and the most of a line a probe reads: a banner check, not a
/// protocol.
pub const MAX_TCP_CHECK_TEXT: usize = 512;

impl Health {
    /// The checks to run, in the order written (none only in a config validation refuses).
    pub fn checks(&self) -> Vec<Check> {
        let single = ListedCheck {
            http: self.http.clone(),
            tcp: self.tcp.clone(),
        };
        std::iter::once(&single)
            .chain(&self.checks)
            .flat_map(ListedCheck::kinds)
            .collect()
    }

    pub fn require(&self) -> Require {
        self.require.unwrap_or_default()
    }
}

impl ListedCheck {
    /// Every kind given (validation wants exactly one).
    pub fn kinds(&self) -> Vec<Check> {
        let http = self.http.clone().map(Check::Http);
        let tcp = self.tcp.clone().map(Check::Tcp);
        http.into_iter().chain(tcp).collect()
    }
}

impl Check {
    pub fn port(&self) -> u16 {
        match self {
            Check::Http(h) => h.port,
            Check::Tcp(t) => t.port,
        }
    }

    /// How messages name the check: `https 443 /ews/healthcheck.htm`, `tcp 25`.
    pub fn label(&self) -> String {
        match self {
            Check::Http(h) => h.label(),
            Check::Tcp(t) => t.label(),
        }
    }
}

impl HttpCheck {
    pub fn label(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme} {} {}", self.port, self.path)
    }
}

impl TcpCheck {
    pub fn label(&self) -> String {
        if self.expect.is_empty() {
            format!("tcp {}", self.port)
        } else {
            format!("tcp {} expect `{}`", self.port, self.expect)
        }
    }
}

fn yes() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_expect_status() -> Vec<u16> {
    vec![200]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(yaml: &str) -> Health {
        serde_norway::from_str(yaml).expect(yaml)
    }

    #[test]
    fn one_check_or_a_list_reads_as_the_same_checks() {
        let one = health("http: { path: /owa/healthcheck.htm, port: 443, tls: true }");
        assert_eq!(one.require(), Require::All);
        let checks = one.checks();
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].label(), "https 443 /owa/healthcheck.htm");

        let list = health(
            "checks:
  - http: { path: /owa/healthcheck.htm, port: 443, tls: true }
  - tcp: { port: 25, send: \"QUIT\\r\\n\", expect: \"220\" }
require: any",
        );
        assert_eq!(list.require(), Require::Any);
        let checks = list.checks();
        assert_eq!(checks[0], one.checks()[0]);
        let Check::Tcp(tcp) = &checks[1] else {
            panic!("{checks:?}")
        };
        assert_eq!(tcp.send, "QUIT\r\n");
        assert_eq!(checks[1].label(), "tcp 25 expect `220`");
        assert_eq!(checks[1].port(), 25);
    }

    #[test]
    fn a_list_entry_with_two_kinds_is_both_and_validation_refuses_it() {
        let h = health("checks: [ { tcp: { port: 25 }, http: { path: /, port: 80 } } ]");
        assert_eq!(h.checks[0].kinds().len(), 2);
        assert!(serde_norway::from_str::<Health>("checks: [ { smtp: { port: 25 } } ]").is_err());
    }
}
