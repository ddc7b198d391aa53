//! The checks of one service on its own: name, VIP, ports, backends, health.

use super::*;

pub fn service_problems(s: &Service, path: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let at = |field: &str| format!("{path}.{field}");
    out.extend(name_problem(&s.name, &at("name")));
    out.extend(unicast_problem(s.vip, &at("vip")));
    if s.ports.is_empty() {
        out.push(Problem::new(at("ports"), "no ports").hint("e.g. ports: [\"443\"]"));
    }
    for (i, a) in s.ports.iter().enumerate() {
        for (j, b) in s.ports.iter().enumerate().skip(i + 1) {
            if a.overlaps(b) {
                out.push(Problem::new(
                    format!("{path}.ports[{j}]"),
                    format!("port rule {b} overlaps {a} (ports[{i}]) of the same service"),
                ));
            }
        }
    }
    let (family, longest) = if s.vip.is_ipv6() {
        ("IPv6", 128)
    } else {
        ("IPv4", 32)
    };
    if let Some(prefix) = s.network_prefix
        && (prefix == 0 || prefix > longest)
    {
        out.push(Problem::new(
            at("network_prefix"),
            format!("/{prefix} is not an {family} prefix length (1-{longest})"),
        ));
    }
    if s.backends.is_empty() && s.filtering != Filtering::Disabled {
        out.push(
            Problem::new(at("backends"), "no backends")
                .hint("list at least one, or set filtering: disabled to drop this traffic"),
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut targets: HashMap<(IpAddr, Option<u16>), usize> = HashMap::new();
    let mut priorities: HashMap<u32, usize> = HashMap::new();
    for (i, b) in s.backends.iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        out.extend(name_problem(&b.name, &format!("{bpath}.name")));
        if let Some(first) = names.insert(&b.name, i) {
            out.push(Problem::new(
                format!("{bpath}.name"),
                format!(
                    "backend name `{}` is already used by backends[{first}]",
                    b.name
                ),
            ));
        }
        if let Some(p) = unicast_problem(b.address, &format!("{bpath}.address")) {
            out.push(p);
        } else if b.address.is_ipv6() != s.vip.is_ipv6() {
            out.push(
                Problem::new(
                    format!("{bpath}.address"),
                    format!(
                        "{} is {}, the VIP {} is {}: a service balances one IP version",
                        b.address,
                        family_name(b.address),
                        s.vip,
                        family_name(s.vip)
                    ),
                )
                .hint("give an IPv6 service its own VIP and IPv6 backends (a dual-stack pair is two services)"),
            );
        } else if b.address == s.vip {
            out.push(Problem::new(
                format!("{bpath}.address"),
                "a backend cannot be the VIP itself",
            ));
        }
        if let Some(first) = targets.insert((b.address, b.port), i) {
            out.push(Problem::new(
                format!("{bpath}.address"),
                format!("backends[{first}] already sends to this address and port"),
            ));
        }
        if b.port == Some(0) {
            out.push(
                Problem::new(format!("{bpath}.port"), "port 0 is not a port")
                    .hint("omit port to keep the client's destination port"),
            );
        }
        if b.weight > MAX_WEIGHT {
            out.push(
                Problem::new(
                    format!("{bpath}.weight"),
                    format!("weight {} is out of range 0..={MAX_WEIGHT}", b.weight),
                )
                .hint("weights are relative: 100 is the default, 0 takes no new flows"),
            );
        }
        let priority = s.priority_of(i);
        if let Some(first) = priorities.insert(priority, i) {
            out.push(
                Problem::new(
                    format!("{bpath}.priority"),
                    format!("priority {priority} is already held by backends[{first}]"),
                )
                .hint("filtering: single needs a distinct priority per backend"),
            );
        }
    }
    if !s.backends.is_empty() && s.backends.iter().all(|b| b.weight == 0) {
        out.push(
            Problem::new(format!("{path}.backends"), "every backend has weight 0")
                .hint("the service would take no new flow; give one a weight, e.g. 100"),
        );
    }
    sticky_problems(s, path, &mut out);
    if let Some(h) = &s.health {
        let hp = |field: &str| format!("{path}.health.{field}");
        let interval_ok = super::duration_in(
            &hp("interval"),
            h.interval,
            PROBE_INTERVALS,
            "probes every 100ms load the backends; once an hour detects nothing in time",
            &mut out,
        );
        let timeout_ok = super::duration_in(
            &hp("timeout"),
            h.timeout,
            PROBE_TIMEOUTS,
            "a probe needs at least a round trip and a handshake",
            &mut out,
        );
        if interval_ok && timeout_ok && h.timeout > h.interval {
            out.push(
                Problem::new(
                    hp("timeout"),
                    format!(
                        "timeout {} is longer than interval {}",
                        humantime::format_duration(h.timeout),
                        humantime::format_duration(h.interval)
                    ),
                )
                .hint("a probe must finish before the next one starts"),
            );
        }
        if h.rise == 0 {
            out.push(Problem::new(hp("rise"), "rise must be at least 1"));
        }
        if h.fall == 0 {
            out.push(Problem::new(hp("fall"), "fall must be at least 1"));
        }
        check_problems(h, &format!("{path}.health"), &mut out);
    }
    out
}

/// What a health block probes with: exactly one of `http`, `tcp` and `checks`, each check
/// sound, and `require` only beside a list.
fn check_problems(h: &Health, at: &str, out: &mut Vec<Problem>) {
    let hp = |field: &str| format!("{at}.{field}");
    let given = [h.http.is_some(), h.tcp.is_some(), !h.checks.is_empty()];
    match given.iter().filter(|g| **g).count() {
        0 => out.push(
            Problem::new(at, "no check: the health block says how often, not what")
                .hint("add `http: { path: /owa/healthcheck.htm, port: 443, tls: true }`, `tcp: { port: 25, expect: \"220\" }` or a `checks:` list"),
        ),
        1 => {}
        _ => out.push(
            Problem::new(at, "give one of `http`, `tcp` or `checks`, not several")
                .hint("to combine checks, list each under `checks:` with `require: all` or `any`"),
        ),
    }
    if h.require.is_some() && h.checks.is_empty() {
        out.push(
            Problem::new(
                hp("require"),
                "`require` combines a `checks` list; here there is one check",
            )
            .hint("remove it, or list the checks under `checks:`"),
        );
    }
    if let Some(http) = &h.http {
        http_problems(http, &hp("http"), out);
    }
    if let Some(tcp) = &h.tcp {
        tcp_problems(tcp, &hp("tcp"), out);
    }
    for (i, listed) in h.checks.iter().enumerate() {
        let at = hp(&format!("checks[{i}]"));
        match (&listed.http, &listed.tcp) {
            (Some(http), None) => http_problems(http, &format!("{at}.http"), out),
            (None, Some(tcp)) => tcp_problems(tcp, &format!("{at}.tcp"), out),
            (None, None) => out.push(
                Problem::new(at, "an empty check").hint("give it `http: {...}` or `tcp: {...}`"),
            ),
            (Some(_), Some(_)) => out.push(
                Problem::new(at, "one entry holds both an `http` and a `tcp` check")
                    .hint("make them two entries of the list"),
            ),
        }
    }
}

fn http_problems(http: &HttpCheck, at: &str, out: &mut Vec<Problem>) {
    let field = |name: &str| format!("{at}.{name}");
    if !http.path.starts_with('/') {
        out.push(
            Problem::new(
                field("path"),
                format!("`{}` is not an absolute path", http.path),
            )
            .hint("e.g. /owa/healthcheck.htm"),
        );
    } else if http.path.parse::<http::uri::PathAndQuery>().is_err() {
        out.push(
            Problem::new(
                field("path"),
                format!("`{}` is not a valid request path", http.path),
            )
            .hint("spaces and other special characters must be percent-encoded"),
        );
    }
    if let Some(host) = &http.host
        && (rustls_pki_types::ServerName::try_from(host.as_str()).is_err()
            || host.parse::<http::uri::Authority>().is_err())
    {
        out.push(
            Problem::new(field("host"), format!("`{host}` is not a host name")).hint(
                "the name the backend's certificate and virtual host answer to, e.g. mail.contoso.com",
            ),
        );
    }
    if http.port == 0 {
        out.push(Problem::new(field("port"), "port 0 is not a port"));
    }
    if http.expect_status.is_empty() {
        out.push(Problem::new(
            field("expect_status"),
            "no status would count as healthy",
        ));
    }
    for (i, code) in http.expect_status.iter().enumerate() {
        if !(100..=599).contains(code) {
            out.push(Problem::new(
                format!("{at}.expect_status[{i}]"),
                format!("{code} is not an HTTP status"),
            ));
        }
    }
}

fn tcp_problems(tcp: &TcpCheck, at: &str, out: &mut Vec<Problem>) {
    if tcp.port == 0 {
        out.push(Problem::new(format!("{at}.port"), "port 0 is not a port"));
    }
    for (name, text) in [("send", &tcp.send), ("expect", &tcp.expect)] {
        if text.len() > MAX_TCP_CHECK_TEXT {
            out.push(
                Problem::new(
                    format!("{at}.{name}"),
                    format!(
                        "{} bytes, more than the {MAX_TCP_CHECK_TEXT} a banner check handles",
                        text.len()
                    ),
                )
                .hint("a check sends a short command and reads one line"),
            );
        }
    }
    if tcp.expect.contains(['\r', '\n']) {
        out.push(
            Problem::new(
                format!("{at}.expect"),
                "`expect` is matched against one line, without its line end",
            )
            .hint("write the start of the line only, e.g. \"220\""),
        );
    }
}

/// `health.interval` and `health.timeout`: what a health check can sensibly use.
const PROBE_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);
const PROBE_TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(3600);

/// `sticky_timeout` and `persistence_group` on their own (a group's services together are
/// checked by `persistence_groups`).
fn sticky_problems(s: &Service, path: &str, out: &mut Vec<Problem>) {
    let at = |field: &str| format!("{path}.{field}");
    if let Some(group) = &s.persistence_group {
        out.extend(name_problem(group, &at("persistence_group")));
    }
    if !s.sticky() {
        return;
    }
    super::duration_in(
        &at("sticky_timeout"),
        s.sticky_timeout,
        FLOW_TIMEOUTS,
        "e.g. 20m, above the clients' idle time between connections",
        out,
    );
    if s.affinity == Affinity::None {
        out.push(
            Problem::new(
                at("sticky_timeout"),
                "a sticky client needs affinity single or network (affinity none keys each connection apart)",
            )
            .hint("affinity: single"),
        );
    }
    if s.filtering != Filtering::Multiple {
        out.push(
            Problem::new(
                at("sticky_timeout"),
                format!(
                    "filtering {} sends no client to a backend of its own choosing: there is nothing to keep",
                    s.filtering.label()
                ),
            )
            .hint("remove sticky_timeout, or use filtering: multiple"),
        );
    }
}
