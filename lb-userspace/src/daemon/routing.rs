//! Where balanced packets find their next hop (`Routing`). Normally the datapath asks the
//! kernel's FIB and keeps the answers. A one-arm balancer on a host with IPv4 forwarding off
//! (the usual way to set one up: it only ever sends from its own addresses) gets no answer from
//! the FIB, so there the controller holds the next hops: it resolves each backend's itself
//! (`host::next_hops`) whenever the config or the kernel's routing changes, and clients are
//! answered the way their packets came.
//!
//! The choice is made at start and at every reload, from the client interface's forwarding
//! setting: after turning forwarding on or off, reload.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_model::{config::Mode, plan::HostFacts};
use tracing::{info, warn};

use super::controller::Controller;
use crate::host::{
    next_hops::{Resolved, Resolver},
    sysctl,
};

/// How long a start or reload waits for new backends' neighbour entries to resolve (ARP
/// answers in well under a millisecond on a LAN; a backend that is down never answers).
const RESOLVE_WAIT: Duration = Duration::from_millis(500);
const RESOLVE_POLL: Duration = Duration::from_millis(50);

/// Held routing's state: the resolver (and the managed neighbour entries it made) and its last
/// answer.
#[derive(Debug, Default)]
pub struct HeldRouting {
    resolver: Resolver,
    last: Resolved,
}

impl Controller {
    /// Held routing for one-arm on an interface that does not forward, FIB routing otherwise.
    /// Leaving held routing releases the neighbour entries it made.
    pub(super) fn choose_routing(&mut self) {
        let iface = self.config.interfaces.client.clone();
        let cluster = self.config.cluster.is_some();
        let held = cluster || (self.config.mode == Mode::OneArm && !sysctl::forwards(&iface));
        match (&mut self.held, held) {
            (None, true) => {
                let why = if cluster {
                    "cluster mode"
                } else {
                    "one-arm with forwarding off"
                };
                info!(
                    "{iface}: {why}: xnlb holds the backends' next hops and answers clients \
                     the way their packets came"
                );
                self.held = Some(HeldRouting::default());
            }
            (Some(h), false) => {
                info!("{iface}: next hops come from the kernel's FIB again");
                h.resolver.release_all();
                self.held = None;
            }
            _ => {}
        }
    }

    /// Held routing, at start and reload: resolves every configured backend's next hop, and
    /// gives the ones just asked of the kernel (a new backend's neighbour entry) up to
    /// `RESOLVE_WAIT` to answer, so that its first clients' SYNs are not lost. A backend that
    /// is down never answers; it gets its next hop when it does (the routing watch).
    pub(super) fn resolve_held_hops_waiting(&mut self) {
        let start = Instant::now();
        self.resolve_held_hops();
        while self
            .held
            .as_ref()
            .is_some_and(|h| !h.last.unresolved.is_empty())
            && start.elapsed() < RESOLVE_WAIT
        {
            std::thread::sleep(RESOLVE_POLL);
            self.resolve_held_hops();
        }
    }

    /// Held routing: resolves every configured backend's next hop again, logging each backend
    /// that gains or loses one. New flows to a backend without one go to the kernel
    /// (`no_neighbour`), which does not forward them.
    pub(super) fn resolve_held_hops(&mut self) {
        let Some(held) = &mut self.held else {
            return;
        };
        let backends: BTreeSet<IpAddr> = self
            .config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        // One-arm sends from its SNAT addresses; two-arm (a cluster) forwards the client's.
        let from = self.config.snat_addresses();
        // A two-arm cluster asks the FIB for the way to a client it did not learn from the
        // client (a connection adopted from its backend's packet): the routers towards the
        // clients are kept resolved too.
        let client_side =
            (self.config.mode == Mode::TwoArm).then(|| self.config.interfaces.client.clone());
        let now = match held
            .resolver
            .resolve(&backends, from, client_side.as_deref())
        {
            Ok(now) => now,
            Err(e) => {
                warn!("resolving the backends' next hops: {e:#}; the last ones are kept");
                return;
            }
        };
        for (addr, why) in &now.unresolved {
            if held.last.unresolved.get(addr) != Some(why) {
                warn!("backend {addr}: no next hop ({why}); its new flows wait for one");
            }
        }
        for addr in now.hops.keys() {
            if held.last.unresolved.contains_key(addr) {
                info!("backend {addr}: next hop resolved");
            }
        }
        held.last = now;
    }

    /// A routing change (from the routing watch): under held routing, the next hops are
    /// resolved again and the changed ones written.
    pub(super) fn routing_changed(&mut self) -> Result<()> {
        if self.held.is_none() {
            return Ok(());
        }
        let before = self.held.as_ref().map(|h| h.last.hops.clone());
        self.resolve_held_hops();
        if self.held.as_ref().map(|h| &h.last.hops) != before.as_ref() {
            self.reprogram()?;
        }
        Ok(())
    }

    /// What the image needs from the running system, given the interfaces' own MACs.
    pub(super) fn host_facts(&self, own_macs: Vec<lb_common::settings::OwnMac>) -> HostFacts {
        HostFacts {
            own_macs,
            held_hops: self.held.as_ref().map(|h| h.last.hops.clone()),
            ..HostFacts::default()
        }
    }

    /// Releases what held routing made on the host (`xnlb stop`).
    pub(super) fn release_routing(&mut self) {
        if let Some(h) = &mut self.held {
            h.resolver.release_all();
        }
    }
}
