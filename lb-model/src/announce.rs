//! Scale-out by routing (`announce:`): which VIPs this node offers its routing daemon, and why.
//!
//! A VIP is servable while at least one of its services has `min_backends` backends in
//! rotation (one servable service is worth attracting the VIP's traffic: withdrawing it would
//! take the others down with it on every node that sees the same failure). A servable VIP is
//! announced at once the first time; once withdrawn, it must stay servable for `hold_down`
//! before it is announced again, so a flapping backend does not flap the route.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::config::{Announce, Config};

/// What the services of one VIP have in rotation, for `Announcer::update`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Serving {
    /// The most backends in rotation of any of the VIP's services, and that service's name.
    pub best: usize,
    pub service: String,
}

/// Per VIP: the best-served of its services (`best` backends in rotation: up, weight above 0).
pub fn serving(
    config: &Config,
    in_rotation: impl Fn(&str, &str) -> bool,
) -> BTreeMap<IpAddr, Serving> {
    let mut out: BTreeMap<IpAddr, Serving> = BTreeMap::new();
    for s in &config.services {
        let n = s
            .backends
            .iter()
            .filter(|b| b.weight > 0 && in_rotation(&s.name, &b.name))
            .count();
        let entry = out.entry(s.vip).or_insert_with(|| Serving {
            best: n,
            service: s.name.clone(),
        });
        if n > entry.best {
            *entry = Serving {
                best: n,
                service: s.name.clone(),
            };
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Announced,
    Withdrawn,
    /// Servable again since this instant; announced once `hold_down` has passed.
    HoldingDown(Instant),
}

#[derive(Clone, Debug)]
struct Vip {
    state: State,
    /// Announced at some point: a later withdrawal holds down before announcing again.
    was_announced: bool,
    serving: Serving,
}

/// One VIP's announcement, as `status` and the metrics show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipAnnouncement {
    pub vip: IpAddr,
    pub announced: bool,
    /// Why, in words: the best-served service's backends in rotation, the hold-down left.
    pub why: String,
}

/// A VIP announced or withdrawn, for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub vip: IpAddr,
    pub announced: bool,
    pub why: String,
}

#[derive(Clone, Debug)]
pub struct Announcer {
    settings: Announce,
    vips: BTreeMap<IpAddr, Vip>,
}

impl Announcer {
    pub fn new(settings: Announce) -> Self {
        Self {
            settings,
            vips: BTreeMap::new(),
        }
    }

    /// Takes new settings (a reload); the VIPs keep their state.
    pub fn configure(&mut self, settings: Announce) {
        self.settings = settings;
    }

    /// VIPs a previous daemon announced (found on the interface at start): they stay announced
    /// while servable, without a hold-down, so a restart does not move traffic.
    pub fn adopt(&mut self, present: &BTreeSet<IpAddr>) {
        for vip in present {
            self.vips.insert(
                *vip,
                Vip {
                    state: State::Announced,
                    was_announced: true,
                    serving: Serving::default(),
                },
            );
        }
    }

    /// Moves each VIP on by what its services have in rotation at `now`; VIPs no longer in
    /// `serving` are forgotten (withdrawn). Returns what changed.
    pub fn update(&mut self, serving: &BTreeMap<IpAddr, Serving>, now: Instant) -> Vec<Transition> {
        let min = self.settings.min_backends as usize;
        let hold_down = self.settings.hold_down;
        let mut changed: Vec<Transition> = self
            .vips
            .iter()
            .filter(|(vip, v)| v.state == State::Announced && !serving.contains_key(vip))
            .map(|(vip, _)| Transition {
                vip: *vip,
                announced: false,
                why: "no service has this VIP any more".to_string(),
            })
            .collect();
        self.vips.retain(|vip, _| serving.contains_key(vip));
        for (vip, s) in serving {
            let servable = s.best >= min;
            let v = self.vips.entry(*vip).or_insert(Vip {
                state: State::Withdrawn,
                was_announced: false,
                serving: s.clone(),
            });
            v.serving = s.clone();
            let before = v.state;
            v.state = match (v.state, servable) {
                (_, false) => State::Withdrawn,
                (State::Announced, true) => State::Announced,
                (State::Withdrawn, true) if v.was_announced && !hold_down.is_zero() => {
                    State::HoldingDown(now)
                }
                (State::Withdrawn, true) => State::Announced,
                (State::HoldingDown(since), true) if now.duration_since(since) >= hold_down => {
                    State::Announced
                }
                (held @ State::HoldingDown(_), true) => held,
            };
            if v.state == State::Announced {
                v.was_announced = true;
            }
            let announced = v.state == State::Announced;
            if announced != (before == State::Announced) {
                changed.push(Transition {
                    vip: *vip,
                    announced,
                    why: why(&self.settings, v, now),
                });
            }
        }
        changed
    }

    /// The VIPs to have on the interface.
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.vips
            .iter()
            .filter(|(_, v)| v.state == State::Announced)
            .map(|(vip, _)| *vip)
            .collect()
    }

    /// The soonest a held-down VIP may be announced, for the caller's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.vips
            .values()
            .filter_map(|v| match v.state {
                State::HoldingDown(since) => Some(since + self.settings.hold_down),
                _ => None,
            })
            .min()
    }

    pub fn report(&self, now: Instant) -> Vec<VipAnnouncement> {
        self.vips
            .iter()
            .map(|(vip, v)| VipAnnouncement {
                vip: *vip,
                announced: v.state == State::Announced,
                why: why(&self.settings, v, now),
            })
            .collect()
    }
}

/// A VIP's state in words.
fn why(settings: &Announce, v: &Vip, now: Instant) -> String {
    let min = settings.min_backends;
    let s = &v.serving;
    let rotation = format!(
        "{} backend{} of {} in rotation",
        s.best,
        if s.best == 1 { "" } else { "s" },
        s.service
    );
    match v.state {
        State::Announced => format!("{rotation} (needs {min})"),
        State::Withdrawn => format!("{rotation}, needs {min}"),
        State::HoldingDown(since) => {
            let left = (since + settings.hold_down).saturating_duration_since(now);
            format!(
                "{rotation}; held down {} more (servable again since {} ago)",
                seconds(left),
                seconds(now.saturating_duration_since(since))
            )
        }
    }
}

/// A duration as whole seconds rounded up, `3s`.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_millis().div_ceil(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: &str = "198.18.1.100";

    fn settings(min_backends: u32, hold_down_secs: u64) -> Announce {
        Announce {
            min_backends,
            hold_down: Duration::from_secs(hold_down_secs),
            ..Announce::default()
        }
    }

    fn with(best: usize) -> BTreeMap<IpAddr, Serving> {
        BTreeMap::from([(
            VIP.parse().unwrap(),
            Serving {
                best,
                service: "owa".into(),
            },
        )])
    }

    fn announced(a: &Announcer) -> bool {
        a.announced().contains(&VIP.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn a_servable_vip_is_announced_at_once_the_first_time() {
        let mut a = Announcer::new(settings(1, 5));
        let t0 = Instant::now();
        assert!(
            a.update(&with(0), t0).is_empty(),
            "never announced: nothing changes"
        );
        assert!(!announced(&a));
        let changed = a.update(&with(1), t0 + Duration::from_secs(1));
        assert_eq!(changed.len(), 1);
        assert!(changed[0].announced);
        assert!(announced(&a));
    }

    #[test]
    fn below_min_backends_withdraws_and_recovery_waits_out_the_hold_down() {
        let mut a = Announcer::new(settings(2, 5));
        let t0 = Instant::now();
        a.update(&with(2), t0);
        assert!(announced(&a));
        let changed = a.update(&with(1), t0 + Duration::from_secs(1));
        assert_eq!(changed[0].why, "1 backend of owa in rotation, needs 2");
        assert!(!announced(&a));
        a.update(&with(2), t0 + Duration::from_secs(2));
        assert!(!announced(&a), "held down");
        assert_eq!(a.next_deadline(), Some(t0 + Duration::from_secs(7)));
        let report = a.report(t0 + Duration::from_secs(4));
        assert_eq!(
            report[0].why,
            "2 backends of owa in rotation; held down 3s more (servable again since 2s ago)"
        );
        assert!(
            a.update(&with(2), t0 + Duration::from_millis(6900))
                .is_empty()
        );
        let changed = a.update(&with(2), t0 + Duration::from_secs(7));
        assert!(changed[0].announced);
        assert!(announced(&a));
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn a_flap_during_the_hold_down_starts_it_again() {
        let mut a = Announcer::new(settings(1, 5));
        let t0 = Instant::now();
        a.update(&with(1), t0);
        a.update(&with(0), t0 + Duration::from_secs(1));
        a.update(&with(1), t0 + Duration::from_secs(2));
        a.update(&with(0), t0 + Duration::from_secs(4));
        a.update(&with(1), t0 + Duration::from_secs(5));
        a.update(&with(1), t0 + Duration::from_secs(8));
        assert!(!announced(&a), "5 s from t0+5, not from t0+2");
        a.update(&with(1), t0 + Duration::from_secs(10));
        assert!(announced(&a));
    }

    #[test]
    fn adopted_vips_stay_announced_and_are_withdrawn_when_not_servable() {
        let mut a = Announcer::new(settings(1, 5));
        let t0 = Instant::now();
        a.adopt(&BTreeSet::from([VIP.parse().unwrap()]));
        assert!(a.update(&with(1), t0).is_empty(), "no hold-down, no change");
        assert!(announced(&a));
        let changed = a.update(&with(0), t0);
        assert!(!changed[0].announced);
    }

    #[test]
    fn a_vip_no_longer_configured_is_withdrawn() {
        let mut a = Announcer::new(settings(1, 0));
        let t0 = Instant::now();
        a.update(&with(1), t0);
        let changed = a.update(&BTreeMap::new(), t0);
        assert_eq!(changed[0].why, "no service has this VIP any more");
        assert!(a.announced().is_empty());
        assert!(a.report(t0).is_empty());
    }

    #[test]
    fn no_hold_down_announces_again_at_once() {
        let mut a = Announcer::new(settings(1, 0));
        let t0 = Instant::now();
        a.update(&with(1), t0);
        a.update(&with(0), t0);
        a.update(&with(1), t0);
        assert!(announced(&a));
    }

    #[test]
    fn a_vip_is_served_by_its_best_served_service() {
        let config: Config = crate::config::parse(
            "interfaces: { client: a, server: b }\n\
             services:\n\
             - { name: owa, vip: 198.18.1.100, ports: [443], backends: [\
                 { name: c1, address: 198.18.2.11 }, { name: c2, address: 198.18.2.12 }] }\n\
             - { name: smtp, vip: 198.18.1.100, ports: [25], backends: [\
                 { name: c1, address: 198.18.2.11 }, { name: c2, address: 198.18.2.12, weight: 0 }] }\n",
            "test.yaml",
        )
        .unwrap()
        .config;
        let up = |s: &str, b: &str| !(s == "owa" && b == "c1");
        let serving = serving(&config, up);
        assert_eq!(
            serving[&VIP.parse::<IpAddr>().unwrap()],
            Serving {
                best: 1,
                service: "owa".into()
            },
            "owa: c2 up; smtp: c1 up, c2 weight 0 (not in rotation): 1 each, the first wins"
        );
    }
}
