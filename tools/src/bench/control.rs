//! The controller's side of scaling: building a consistent-hash table, and a reload of a
//! 100-service config from the file change to the new tables being live.

use std::time::{Duration, Instant};

use xnlb::model::maglev::{self, DEFAULT_TABLE_SIZE, Member};
use xnlb_tests::{
    daemon::Daemon,
    topology::{Mode, Net, TWO_ARM_CONFIG_HEAD, VIP, backend_ip},
};

use crate::{Budget, Progress};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Time to build one table of `DEFAULT_TABLE_SIZE` entries for each backend count (median).
pub fn maglev_build(
    counts: &[u32],
    budget: &Budget,
    progress: &mut Progress,
) -> Vec<(u32, Duration)> {
    counts
        .iter()
        .map(|&n| {
            progress.step(&format!("scaling: consistent-hash table, {n} backends"));
            let names: Vec<String> = (0..n).map(|i| format!("cas{i}")).collect();
            let members: Vec<Member<'_>> = names
                .iter()
                .enumerate()
                .map(|(i, name)| Member {
                    id: i as u32,
                    name,
                    weight: 100,
                })
                .collect();
            let samples = (0..budget.table_builds)
                .map(|_| {
                    let start = Instant::now();
                    let table = maglev::build(&members, DEFAULT_TABLE_SIZE);
                    let took = start.elapsed();
                    assert_eq!(table.len(), DEFAULT_TABLE_SIZE as usize);
                    took
                })
                .collect();
            (n, median(samples))
        })
        .collect()
}

pub struct Reload {
    pub services: usize,
    /// Median time of `xnlb reload` (the reply comes once the maps are written) when one
    /// service's weights changed, and when every service's did.
    pub one_changed: Duration,
    pub all_changed: Duration,
}

const SERVICES: usize = 100;

/// A config of `SERVICES` services on VIP ports 10000.., three backends each; `weight_of(s)`
/// is the first backend's weight in service `s`.
fn config(weight_of: impl Fn(usize) -> u32) -> String {
    let mut text = TWO_ARM_CONFIG_HEAD.to_string();
    for s in 0..SERVICES {
        text += &format!(
            "  - name: svc{s}\n    vip: {VIP}\n    ports: [{}]\n    backends:\n",
            10_000 + s
        );
        for b in 1..=3 {
            let weight = if b == 1 { weight_of(s) } else { 100 };
            text += &format!(
                "      - {{ name: b{b}, address: {}, weight: {weight} }}\n",
                backend_ip(b)
            );
        }
    }
    text
}

/// Reload latency: the real daemon in the two-arm namespaces, the file rewritten, `xnlb reload`
/// timed until it answers; each reply must report the number of tables switched.
pub fn reload(budget: &Budget, progress: &mut Progress) -> Reload {
    progress.step("scaling: reload of a 100-service config");
    let net = Net::build(Mode::TwoArm, 3);
    let d = Daemon::start(&net.lb, &config(|_| 100));
    let mut one = Vec::new();
    let mut all = Vec::new();
    let mut weight = 100;
    for _ in 0..budget.reloads {
        // All services are at `old`: move service 0 to `w`, then the other 99.
        let old = weight;
        let w = if old == 100 { 150 } else { 100 };
        weight = w;
        d.write_config(&config(|s| if s == 0 { w } else { old }));
        let start = Instant::now();
        let reply = d.ok(&["reload"]);
        one.push(start.elapsed());
        // The reply says what changed, one line each.
        let changed = |reply: &str| reply.matches(&format!("weight {old} -> {w}")).count();
        assert_eq!(changed(&reply), 1, "{reply}");

        d.write_config(&config(|_| w));
        let start = Instant::now();
        let reply = d.ok(&["reload"]);
        all.push(start.elapsed());
        assert_eq!(changed(&reply), SERVICES - 1, "{reply}");
    }
    Reload {
        services: SERVICES,
        one_changed: median(one),
        all_changed: median(all),
    }
}
