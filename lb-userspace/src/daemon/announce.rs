//! Scale-out by routing: the controller's side of `announce:`. After every change the
//! controller publishes (probe results, admin verbs, reloads) and on a timer (a hold-down
//! ending), the VIPs this node can serve are put on the announce interface and the others taken
//! off; the routing daemon exports what it finds there. Announced only once the datapath is
//! attached (`Controller::start` attaches first), withdrawn before it detaches (`stop`).

use std::time::{Duration, Instant};

use anyhow::Result;
use lb_model::announce::{self, Announcer};
use tracing::{info, warn};

use super::controller::Controller;
use crate::host::announce::AnnounceInterface;

/// How often the controller looks for a hold-down that ended.
pub const TICK: Duration = Duration::from_millis(500);

/// The announcer and the interface it writes.
pub struct Announcing {
    pub announcer: Announcer,
    pub interface: AnnounceInterface,
}

impl Controller {
    /// Follows the config's `announce` block: opens its interface (adopting the VIPs a previous
    /// daemon left there), moves to another, or removes it when the block is gone.
    pub(super) fn follow_announce_config(&mut self) -> Result<()> {
        let wanted = self.config.announce.clone();
        match (self.announcing.take(), wanted) {
            (None, None) => {}
            (Some(old), None) => old.interface.remove()?,
            (Some(mut a), Some(settings)) if a.interface.name() == settings.interface => {
                a.announcer.configure(settings);
                self.announcing = Some(a);
            }
            (old, Some(settings)) => {
                if let Some(old) = old {
                    old.interface.remove()?;
                }
                let (interface, present) = AnnounceInterface::open(&settings.interface)?;
                let mut announcer = Announcer::new(settings);
                announcer.adopt(&present);
                if !present.is_empty() {
                    info!(
                        "announce: {} VIP(s) already on {} (a previous daemon's) stay while servable",
                        present.len(),
                        interface.name()
                    );
                }
                self.announcing = Some(Announcing {
                    announcer,
                    interface,
                });
            }
        }
        Ok(())
    }

    /// Moves each VIP's announcement on by what its services have in rotation now, and
    /// writes the interface when that changed. Returns whether anything changed.
    pub(super) fn follow_announce(&mut self) -> bool {
        let serving = announce::serving(&self.config, |s, b| self.state_of(s, b).in_rotation());
        let Some(a) = self.announcing.as_mut() else {
            return false;
        };
        let changed = a.announcer.update(&serving, Instant::now());
        for t in &changed {
            if t.announced {
                info!("announce: {} on {}: {}", t.vip, a.interface.name(), t.why);
            } else {
                warn!(
                    "announce: {} withdrawn from {}: {}",
                    t.vip,
                    a.interface.name(),
                    t.why
                );
            }
        }
        // Written only when it changes; a failure is tried again at the next change or tick.
        let want = a.announcer.announced();
        if want != *a.interface.announced()
            && let Err(e) = a.interface.sync(&want)
        {
            warn!("announce: writing {}: {e:#}", a.interface.name());
        }
        !changed.is_empty()
    }

    /// The timer's turn: republishes when a hold-down ended.
    pub(super) fn announce_tick(&mut self) {
        if self.announcing.is_some() && self.follow_announce() {
            self.publish();
        }
    }

    /// Withdraws every VIP and deletes the interface (`xnlb stop`).
    pub(super) fn withdraw_all(&mut self) -> Result<()> {
        match self.announcing.take() {
            Some(a) => a.interface.remove(),
            None => Ok(()),
        }
    }
}
