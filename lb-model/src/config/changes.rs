//! What a reload changes, in the words an administrator would use: services added, removed,
//! renamed or changed (which setting), backends added, removed or changed, health checks
//! changed. The datapath's own accounting (tables switched, rules written) is for the log.

use std::{collections::BTreeMap, time::Duration};

use super::{Backend, Config, Service, word};

impl Config {
    /// Every difference from `old` to `self` that a reload applies, one per line; `renamed`
    /// maps an old service name to the new one where the ids found the same service renamed.
    pub fn changes_from(&self, old: &Config, renamed: &BTreeMap<String, String>) -> Vec<String> {
        let mut out = Vec::new();
        let new_name = |old: &str| renamed.get(old).map_or(old, String::as_str).to_string();
        for was in &old.services {
            let name = new_name(&was.name);
            match self.service(&name) {
                None => out.push(format!("service {} removed", was.name)),
                Some(now) => {
                    if name != was.name {
                        out.push(format!("service {} renamed to {name}", was.name));
                    }
                    service_changes(was, now, &mut out);
                }
            }
        }
        let kept: Vec<String> = old.services.iter().map(|s| new_name(&s.name)).collect();
        for now in self.services.iter().filter(|s| !kept.contains(&s.name)) {
            out.push(format!(
                "service {} added ({} backend{})",
                now.name,
                now.backends.len(),
                if now.backends.len() == 1 { "" } else { "s" }
            ));
        }
        if old.conntrack != self.conntrack {
            out.push("conntrack timeouts changed".to_string());
        }
        if old.announce_vips != self.announce_vips {
            out.push(format!(
                "announce_vips: {} -> {}",
                old.announce_vips, self.announce_vips
            ));
        }
        if old.snat != self.snat {
            out.push("snat changed".to_string());
        }
        if old.announce != self.announce {
            out.push("announce changed".to_string());
        }
        out
    }
}

fn service_changes(was: &Service, now: &Service, out: &mut Vec<String>) {
    let name = &now.name;
    let mut setting = |what: &str, before: String, after: String| {
        if before != after {
            out.push(format!("{name}: {what} {before} -> {after}"));
        }
    };
    setting("vip", was.vip.to_string(), now.vip.to_string());
    let ports = |s: &Service| {
        s.ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    setting("ports", ports(was), ports(now));
    setting("protocol", word(&was.protocol), word(&now.protocol));
    setting("filtering", word(&was.filtering), word(&now.filtering));
    setting("affinity", word(&was.affinity), word(&now.affinity));
    setting(
        "network_prefix",
        was.network_prefix().to_string(),
        now.network_prefix().to_string(),
    );
    let lasting = |d: Duration| humantime::format_duration(d).to_string();
    setting(
        "sticky_timeout",
        lasting(was.sticky_timeout),
        lasting(now.sticky_timeout),
    );
    setting(
        "idle_timeout",
        lasting(was.idle_timeout),
        lasting(now.idle_timeout),
    );
    let group = |s: &Service| s.persistence_group.clone().unwrap_or_else(|| "none".into());
    setting("persistence_group", group(was), group(now));
    setting(
        "on_backend_down",
        word(&was.on_backend_down),
        word(&now.on_backend_down),
    );
    for b in &was.backends {
        match now.backend(&b.name) {
            None => out.push(format!("{name}: backend {} removed", b.name)),
            Some(n) => backend_changes(name, b, n, out),
        }
    }
    for b in now
        .backends
        .iter()
        .filter(|b| was.backend(&b.name).is_none())
    {
        out.push(format!("{name}: backend {} added ({})", b.name, b.address));
    }
    match (&was.health, &now.health) {
        (None, Some(_)) => out.push(format!("{name}: health check added")),
        (Some(_), None) => out.push(format!("{name}: health check removed")),
        (Some(a), Some(b)) if a != b => out.push(format!("{name}: health check changed")),
        _ => {}
    }
}

fn backend_changes(service: &str, was: &Backend, now: &Backend, out: &mut Vec<String>) {
    let mut setting = |what: &str, before: String, after: String| {
        if before != after {
            out.push(format!(
                "{service}/{}: {what} {before} -> {after}",
                now.name
            ));
        }
    };
    setting("address", was.address.to_string(), now.address.to_string());
    let port = |b: &Backend| b.port.map_or("the client's".to_string(), |p| p.to_string());
    setting("port", port(was), port(now));
    setting("weight", was.weight.to_string(), now.weight.to_string());
    let priority = |b: &Backend| {
        b.priority
            .map_or("by position".to_string(), |p| p.to_string())
    };
    setting("priority", priority(was), priority(now));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: &str) -> Config {
        serde_norway::from_str(&format!(
            "interfaces: {{ client: eth0, server: eth1 }}\nservices:\n{services}"
        ))
        .unwrap()
    }

    const WEB: &str = "  - name: web
    vip: 198.18.1.100
    ports: [80]
    backends:
      - { name: b1, address: 198.18.2.11 }
      - { name: b2, address: 198.18.2.12 }
    health:
      http: { path: /owa/healthcheck.htm, port: 80 }
";

    #[test]
    fn a_reload_is_described_as_an_administrator_would() {
        let old = config(&format!(
            "{WEB}  - name: alt\n    vip: 198.18.1.101\n    ports: [81]\n    backends:\n      - {{ name: b1, address: 198.18.2.11 }}\n"
        ));
        assert_eq!(
            old.changes_from(&old, &BTreeMap::new()),
            Vec::<String>::new()
        );
        let new = config(
            "  - name: www
    vip: 198.18.1.100
    ports: [80, 443]
    backends:
      - { name: b1, address: 198.18.2.11, weight: 50 }
      - { name: b3, address: 198.18.2.13 }
    health:
      http: { path: /ecp/healthcheck.htm, port: 80 }
  - name: ftp
    vip: 198.18.1.102
    ports: [21]
    backends:
      - { name: b1, address: 198.18.2.11 }
",
        );
        let renamed = BTreeMap::from([("web".to_string(), "www".to_string())]);
        assert_eq!(
            new.changes_from(&old, &renamed),
            [
                "service web renamed to www",
                "www: ports 80 -> 80,443",
                "www/b1: weight 100 -> 50",
                "www: backend b2 removed",
                "www: backend b3 added (198.18.2.13)",
                "www: health check changed",
                "service alt removed",
                "service ftp added (1 backend)",
            ]
        );
    }
}
