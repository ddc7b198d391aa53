//! What state each (service, backend) is in, and what the datapath makes of it. Administrative
//! states (drain, disable) override health; `enable` clears them.

use lb_common::backend::{BACKEND_DISABLED, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP};
use serde::{Deserialize, Serialize};

/// What the administrator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    #[default]
    Enabled,
    Draining,
    Disabled,
}

/// The state a backend is shown and programmed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Up,
    Down,
    Draining,
    Disabled,
}

impl BackendState {
    pub const ALL: [BackendState; 4] = [Self::Up, Self::Down, Self::Draining, Self::Disabled];

    pub fn label(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Draining => "draining",
            Self::Disabled => "disabled",
        }
    }

    /// The `BACKEND_*` byte the datapath acts on.
    pub fn datapath(self) -> u8 {
        match self {
            Self::Up => BACKEND_UP,
            Self::Down => BACKEND_DOWN,
            Self::Draining => BACKEND_DRAINING,
            Self::Disabled => BACKEND_DISABLED,
        }
    }

    /// Takes new flows.
    pub fn in_rotation(self) -> bool {
        self == Self::Up
    }
}

/// One (service, backend)'s lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub admin: AdminState,
    pub healthy: bool,
    /// Why it is healthy or not, in words (`no health check`, `waiting for probes`, ...).
    pub health_detail: String,
}

impl Lifecycle {
    /// A backend seen for the first time: up when its service has no health check, otherwise
    /// down until it passes `rise` probes.
    pub fn new(health_checked: bool) -> Self {
        Self {
            admin: AdminState::Enabled,
            healthy: !health_checked,
            health_detail: if health_checked {
                "waiting for probes".into()
            } else {
                "no health check".into()
            },
        }
    }

    /// A backend found in a running datapath (daemon restart): it keeps the state it had, so
    /// a restart never takes working backends out of rotation.
    pub fn adopted(datapath_state: u8, health_checked: bool) -> Self {
        let mut l = Self::new(health_checked);
        match datapath_state {
            BACKEND_DRAINING => {
                l.admin = AdminState::Draining;
                l.healthy = true;
            }
            BACKEND_DISABLED => l.admin = AdminState::Disabled,
            // Without a health check nothing would ever bring it back up.
            BACKEND_DOWN => l.healthy = !health_checked,
            _ => l.healthy = true,
        }
        if health_checked {
            l.health_detail = "adopted from the running datapath; waiting for probes".into();
        }
        l
    }

    pub fn state(&self) -> BackendState {
        match (self.admin, self.healthy) {
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

    #[test]
    fn admin_states_override_health() {
        let mut l = Lifecycle::new(false);
        assert_eq!(l.state(), BackendState::Up);
        l.healthy = false;
        assert_eq!(l.state(), BackendState::Down);
        l.admin = AdminState::Draining;
        assert_eq!(l.state(), BackendState::Draining);
        l.admin = AdminState::Disabled;
        l.healthy = true;
        assert_eq!(l.state(), BackendState::Disabled);
        assert_eq!(Lifecycle::new(true).state(), BackendState::Down);
    }

    #[test]
    fn adoption_keeps_the_datapath_state() {
        for state in BackendState::ALL {
            assert_eq!(Lifecycle::adopted(state.datapath(), true).state(), state);
        }
        assert_eq!(
            Lifecycle::adopted(BackendState::Down.datapath(), false).state(),
            BackendState::Up
        );
    }
}
