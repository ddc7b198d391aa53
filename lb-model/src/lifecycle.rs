//! What state each (service, backend) is in, and what the datapath makes of it. Administrative
//! states (drain, disable) override health; `enable` clears them.

pub use lb_common::backend::BackendState;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Health, InitialHealth},
    rise_fall::Tracker,
};

/// What the administrator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    #[default]
    Enabled,
    Draining,
    Disabled,
}

impl AdminState {
    /// The verb that asks for it.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Enabled => "enable",
            Self::Draining => "drain",
            Self::Disabled => "disable",
        }
    }
}

/// One (service, backend)'s lifecycle.
#[derive(Clone, Debug, PartialEq)]
pub struct Lifecycle {
    pub admin: AdminState,
    /// Rise/fall counting; `None` when the service has no health check (always healthy).
    pub health: Option<Tracker>,
    /// Its last change of state (`noted`); `None` while in the state it started in.
    pub last_change: Option<Change>,
}

/// A change of a backend's state: when, from what, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub at: std::time::SystemTime,
    pub from: BackendState,
    pub reason: String,
}

impl Lifecycle {
    /// A backend seen for the first time: up when its service has no health check, otherwise
    /// as `health.initial` says (by default down until it passes `rise` probes).
    pub fn new(check: Option<&Health>) -> Self {
        Self {
            admin: AdminState::Enabled,
            health: check.map(|h| Tracker::new(h.rise, h.fall, h.initial == InitialHealth::Up)),
            last_change: None,
        }
    }

    /// Records the change from `before` to the state it is in now, if there was one.
    pub fn noted(&mut self, before: BackendState, reason: impl Into<String>) {
        if self.state() != before {
            self.last_change = Some(Change {
                at: std::time::SystemTime::now(),
                from: before,
                reason: reason.into(),
            });
        }
    }

    /// A backend found in a running datapath (daemon restart): it keeps the state it had, so
    /// a restart never takes working backends out of rotation; probes take over from there.
    pub fn adopted(datapath_state: u8, check: Option<&Health>) -> Self {
        let mut l = Self::new(check);
        let was_healthy = match BackendState::from_u8(datapath_state) {
            Some(BackendState::Draining) => {
                l.admin = AdminState::Draining;
                true
            }
            Some(BackendState::Disabled) => {
                l.admin = AdminState::Disabled;
                false
            }
            Some(BackendState::Down) => false,
            Some(BackendState::Up) | None => true,
        };
        if let Some(t) = &mut l.health {
            t.healthy = was_healthy;
        }
        l
    }

    /// Follows a reloaded `health` block: new rise/fall apply from the next probe; a check
    /// added to a running service starts from "healthy" (the backend was serving, and must
    /// fail `fall` probes to leave, rather than the whole service going dark until `rise`
    /// probes pass); a removed check leaves the backend healthy.
    pub fn follow(&mut self, check: Option<&Health>) {
        match (&mut self.health, check) {
            (Some(t), Some(h)) => {
                t.rise = h.rise;
                t.fall = h.fall;
            }
            (None, Some(h)) => self.health = Some(Tracker::new(h.rise, h.fall, true)),
            (Some(_), None) => self.health = None,
            (None, None) => {}
        }
    }

    pub fn healthy(&self) -> bool {
        self.health.as_ref().is_none_or(|t| t.healthy)
    }

    /// The health column of `xnlb status`.
    pub fn health_detail(&self) -> String {
        match &self.health {
            Some(t) => t.summary(),
            None => "no health check".to_string(),
        }
    }

    pub fn state(&self) -> BackendState {
        match (self.admin, self.healthy()) {
            (AdminState::Disabled, _) => BackendState::Disabled,
            (AdminState::Draining, _) => BackendState::Draining,
            (AdminState::Enabled, true) => BackendState::Up,
            (AdminState::Enabled, false) => BackendState::Down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> Health {
        serde_norway::from_str("http: {path: /, port: 80}").unwrap()
    }

    #[test]
    fn admin_states_override_health() {
        let mut l = Lifecycle::new(Some(&check()));
        assert_eq!(l.state(), BackendState::Down);
        assert_eq!(l.health_detail(), "waiting for probes");
        l.health.as_mut().unwrap().healthy = true;
        assert_eq!(l.state(), BackendState::Up);
        l.admin = AdminState::Draining;
        assert_eq!(l.state(), BackendState::Draining);
        l.admin = AdminState::Disabled;
        assert_eq!(l.state(), BackendState::Disabled);
        l.admin = AdminState::Enabled;
        l.health.as_mut().unwrap().healthy = false;
        assert_eq!(l.state(), BackendState::Down);
        let unchecked = Lifecycle::new(None);
        assert_eq!(unchecked.state(), BackendState::Up);
        assert_eq!(unchecked.health_detail(), "no health check");
    }

    #[test]
    fn initial_up_serves_until_fall_failures() {
        let mut h = check();
        h.initial = InitialHealth::Up;
        let mut l = Lifecycle::new(Some(&h));
        assert_eq!(l.state(), BackendState::Up);
        assert_eq!(l.health_detail(), "up, waiting for probes");
        let t = l.health.as_mut().unwrap();
        let at = std::time::SystemTime::now();
        let fail = || {
            Err(crate::rise_fall::Failure::Backend(
                "connect: connection refused".into(),
            ))
        };
        for _ in 1..h.fall {
            assert_eq!(t.record(fail(), Default::default(), at), None);
        }
        assert!(t.record(fail(), Default::default(), at).is_some());
        assert_eq!(l.state(), BackendState::Down);
    }

    #[test]
    fn a_reloaded_health_block_keeps_serving_backends_serving() {
        let mut unchecked = Lifecycle::new(None);
        let mut h = check();
        h.fall = 5;
        unchecked.follow(Some(&h));
        assert_eq!(unchecked.state(), BackendState::Up);
        assert_eq!(unchecked.health.as_ref().unwrap().fall, 5);
        let mut down = Lifecycle::new(Some(&check()));
        down.follow(Some(&h));
        assert_eq!(
            down.state(),
            BackendState::Down,
            "a new threshold changes no state"
        );
        assert_eq!(down.health.as_ref().unwrap().fall, 5);
        down.follow(None);
        assert_eq!(down.state(), BackendState::Up);
        assert_eq!(down.health_detail(), "no health check");
    }

    #[test]
    fn adoption_keeps_the_datapath_state() {
        for &state in BackendState::ALL {
            assert_eq!(
                Lifecycle::adopted(state as u8, Some(&check())).state(),
                state
            );
        }
        // Without a health check nothing would ever bring a down backend back up.
        assert_eq!(
            Lifecycle::adopted(BackendState::Down as u8, None).state(),
            BackendState::Up
        );
    }
}
