//! What `xnlb check` prints for a good file: what would run.

use std::fmt::Write as _;

use super::{Config, Mode, word};

impl Config {
    pub fn summary(&self, file: &str) -> String {
        let mut out = String::new();
        let mode = match self.mode {
            Mode::TwoArm => format!(
                "two-arm, clients on {}, backends on {}",
                self.interfaces.client,
                self.interfaces.server.as_deref().unwrap_or("?")
            ),
            Mode::OneArm => format!(
                "one-arm on {}, SNAT from {}",
                self.interfaces.client,
                self.snat_addresses()
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Mode::Dsr => "dsr".to_string(),
        };
        let backends: usize = self.services.iter().map(|s| s.backends.len()).sum();
        let _ = writeln!(
            out,
            "{file}: OK: {mode}; {} service(s), {backends} backend(s); conntrack {} entries \
             (+{} half-open), sticky table {} clients",
            self.services.len(),
            self.conntrack.max_entries,
            self.conntrack.half_open_entries(),
            self.sticky_entries()
        );
        for s in &self.services {
            let ports: Vec<String> = s.ports.iter().map(|p| p.to_string()).collect();
            let health = match &s.health {
                Some(h) => {
                    let checks: Vec<String> = h.checks().iter().map(|c| c.label()).collect();
                    let what = match checks.as_slice() {
                        [one] => one.clone(),
                        many => format!("{} of {}", word(&h.require()), many.join(", ")),
                    };
                    format!("{what} every {}", humantime::format_duration(h.interval))
                }
                None => "no health check".to_string(),
            };
            let names: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{} {}", b.name, b.address))
                .collect();
            let mut affinity = word(&s.affinity);
            if s.sticky() {
                affinity += &format!(" sticky {}", humantime::format_duration(s.sticky_timeout));
            }
            if let Some(group) = &s.persistence_group {
                affinity += &format!(" (persistence group {group})");
            }
            if !s.idle_timeout.is_zero() {
                affinity += &format!(
                    ", idle timeout {}",
                    humantime::format_duration(s.idle_timeout)
                );
            }
            let _ = writeln!(
                out,
                "  {} {}:{} {}, filtering {}, affinity {}: {} ({health})",
                s.name,
                s.vip,
                ports.join(","),
                word(&s.protocol),
                word(&s.filtering),
                affinity,
                names.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  metrics on http://{}/metrics, admin socket {}",
            self.metrics.listen,
            self.admin.socket.display()
        );
        out
    }
}
