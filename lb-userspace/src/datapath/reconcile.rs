//! Moves the kernel's maps from what they hold to a wanted `Image`, in an order in which every
//! intermediate state is one a packet may safely see:
//!
//! 1. settings; backends (new ids, state changes) and, under held routing, their next hops;
//!    backend addresses and VIPs that appear;
//! 2. each changed service: its new table goes into the ring slot it is *not* using, then one
//!    `SERVICES` write switches it (the kernel swaps the element under RCU);
//! 3. port rules that appear or move, then those that go;
//! 4. services that go;
//! 5. when a backend id goes or now names another backend, or a port rule goes or moves to
//!    another service (and once after a restart, for what a killed daemon may have left), every
//!    flow follows its backend (`plan::flow_fates`): one
//!    whose tuple now belongs to another service that has the backend it went to (a split or a
//!    merge of services) is re-pointed at that service's id for it; one that no longer belongs
//!    to the backend it went to is removed. The datapath already never follows an id to
//!    another address and port; this keeps flows alive across a regrouping of services, and
//!    the table, `xnlb status` and the metrics to flows that can still go where they went;
//! 6. backends that go are retired (state down, so their remaining flows are re-selected),
//!    then addresses and VIPs that go.
//!
//! `Programmed` is the controller's record of what the maps hold; after a daemon restart it is
//! read back from the pinned maps (`Programmed::read`).

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{
    backend::BackendState,
    service::{RING_MAX_SIZE, RING_SLOTS_PER_SERVICE},
};
use lb_model::plan::{self, FlowFate, Image, ServicePlan};

use super::{Datapath, DatapathError};

#[derive(Clone, Debug)]
pub struct Programmed {
    pub image: Image,
    /// Ring slot holding each service's live table.
    pub slots: BTreeMap<u32, u32>,
    /// Services whose live table is not known (adopted from a previous daemon): their table is
    /// rewritten and switched on the next apply.
    pub unknown_tables: BTreeSet<u32>,
    /// The connection table has not been checked against the backend ids since the maps were
    /// read: done on the next apply.
    pub flows_unchecked: bool,
}

/// What an apply changed, for the log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub tables_switched: usize,
    pub services_removed: usize,
    pub rules_added: usize,
    pub rules_removed: usize,
    pub backends_written: usize,
    pub backends_retired: usize,
    pub foreign_flows_removed: usize,
    pub flows_repointed: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tables switched, {} services removed, {} rules added, {} rules removed, {} backends written, {} retired, {} flows re-pointed, {} foreign flows removed",
            self.tables_switched,
            self.services_removed,
            self.rules_added,
            self.rules_removed,
            self.backends_written,
            self.backends_retired,
            self.flows_repointed,
            self.foreign_flows_removed
        )
    }
}

impl Programmed {
    /// What a running datapath's maps hold (daemon restart).
    pub fn read(dp: &Datapath) -> Result<Self, DatapathError> {
        let mut image = Image {
            settings: dp.settings()?,
            ..Default::default()
        };
        image.vips = dp.vips()?.into_iter().collect();
        image.backend_addrs = dp.backend_addrs()?.into_iter().collect();
        image.served_by = dp.served_by()?.into_iter().collect();
        image.sticky_members = dp.sticky_members()?.into_iter().collect();
        image.rules = dp.rules()?.into_iter().collect();
        let mut slots = BTreeMap::new();
        let mut unknown_tables = BTreeSet::new();
        for (sid, info) in dp.services()? {
            slots.insert(sid, info.ring_base / RING_MAX_SIZE);
            unknown_tables.insert(sid);
            image.services.insert(
                sid,
                ServicePlan {
                    info,
                    table: Vec::new(),
                },
            );
        }
        for (id, b) in dp.backends()?.into_iter().enumerate() {
            if b.family != 0 {
                image.backends.insert(id as u32, b);
            }
        }
        Ok(Self {
            image,
            slots,
            unknown_tables,
            flows_unchecked: true,
        })
    }

    /// Makes the maps hold `want`. `fresh` are backend ids given out since the last apply (their
    /// counters are zeroed first). On error the record reflects exactly what was written.
    pub fn apply(
        &mut self,
        dp: &mut Datapath,
        want: &Image,
        fresh: &[u32],
    ) -> Result<Changes, DatapathError> {
        let mut changes = Changes::default();
        let now = &mut self.image;

        if now.settings != want.settings {
            dp.set_settings(&want.settings)?;
            now.settings = want.settings;
        }
        for &id in fresh {
            dp.reset_backend_stats(id)?;
        }
        // Whether every flow must be given its fate again (step 5).
        let mut fates_due = self.flows_unchecked;
        if self.flows_unchecked {
            // Adopted maps, perhaps from an xnlb that kept no next hops: label every backend's.
            for (&id, b) in &want.backends {
                dp.label_backend_hop(id, &b.addr)?;
            }
        }
        for (&id, b) in &want.backends {
            if let Some(old) = now.backends.get(&id) {
                fates_due |= !old.is(b.service_id, &b.addr);
            }
            if now.backends.get(&id) != Some(b) {
                dp.set_backend(id, b)?;
                now.backends.insert(id, *b);
                // A new address relabels the element, emptying it.
                now.held_hops.remove(&id);
                changes.backends_written += 1;
            }
            if let Some(hop) = want.held_hops.get(&id)
                && now.held_hops.get(&id) != Some(hop)
            {
                dp.hold_backend_hop(id, &b.addr, hop)?;
                now.held_hops.insert(id, *hop);
            }
        }
        // Under FIB routing nothing is held: the datapath keeps what the FIB answers.
        now.held_hops
            .retain(|id, _| want.held_hops.contains_key(id));
        for &addr in want.backend_addrs.difference(&now.backend_addrs.clone()) {
            dp.add_backend_addr(addr)?;
            now.backend_addrs.insert(addr);
        }
        for (key, value) in &want.served_by {
            if now.served_by.get(key) != Some(value) {
                dp.set_served_by(key, value)?;
                now.served_by.insert(*key, *value);
            }
        }
        for key in absent_from(&now.served_by, &want.served_by) {
            dp.remove_served_by(&key)?;
            now.served_by.remove(&key);
        }
        // Before the services that use them, and removed after.
        for (at, &id) in &want.sticky_members {
            if now.sticky_members.get(at) != Some(&id) {
                dp.set_sticky_member(at, id)?;
                now.sticky_members.insert(*at, id);
            }
        }
        for &vip in want.vips.difference(&now.vips.clone()) {
            dp.add_vip(vip)?;
            now.vips.insert(vip);
        }

        for (&sid, plan) in &want.services {
            let current = now.services.get(&sid);
            let table_changed =
                self.unknown_tables.contains(&sid) || current.is_none_or(|c| c.table != plan.table);
            let mut info = plan.info;
            let mut slot = self.slots.get(&sid).copied();
            if table_changed && !plan.table.is_empty() {
                let next = match slot {
                    Some(s) => sid * RING_SLOTS_PER_SERVICE + (s + 1) % RING_SLOTS_PER_SERVICE,
                    None => sid * RING_SLOTS_PER_SERVICE,
                };
                dp.write_ring(next, &plan.table)?;
                slot = Some(next);
            }
            info.ring_base = slot.map_or(0, |s| s * RING_MAX_SIZE);
            if current.map(|c| c.info) != Some(info) || table_changed {
                dp.set_service(sid, &info)?;
                changes.tables_switched += 1;
            }
            if let Some(s) = slot {
                self.slots.insert(sid, s);
            }
            self.unknown_tables.remove(&sid);
            now.services.insert(
                sid,
                ServicePlan {
                    info,
                    table: plan.table.clone(),
                },
            );
        }

        for (&key, &sid) in &want.rules {
            if now.rules.get(&key) != Some(&sid) {
                // A rule that moves to another service moves its flows (step 5).
                fates_due |= now.rules.contains_key(&key);
                dp.insert_rule(key, sid)?;
                now.rules.insert(key, sid);
                changes.rules_added += 1;
            }
        }
        let gone = absent_from(&now.rules, &want.rules);
        // The datapath asks the rules only for packets without an established flow (an
        // established one has its service from its backend): the flows of a port whose rule
        // goes are removed here (step 5), not at their next packet.
        fates_due |= !gone.is_empty();
        for key in gone {
            dp.remove_rule(key)?;
            now.rules.remove(&key);
            changes.rules_removed += 1;
        }

        let gone = absent_from(&now.services, &want.services);
        for sid in gone {
            dp.remove_service(sid)?;
            now.services.remove(&sid);
            self.slots.remove(&sid);
            self.unknown_tables.remove(&sid);
            changes.services_removed += 1;
        }
        let gone = absent_from(&now.backends, &want.backends);
        fates_due |= !gone.is_empty();
        if fates_due {
            // Before the retired ids go down: a flow whose backend now serves its tuple under
            // another id moves to it while its old id still holds.
            flows_follow(dp, want, &mut changes)?;
        }
        for id in gone {
            let mut b = now.backends[&id];
            if b.state != BackendState::Down as u8 {
                b.state = BackendState::Down as u8;
                dp.set_backend(id, &b)?;
                changes.backends_retired += 1;
            }
            now.backends.remove(&id);
        }
        for at in absent_from(&now.sticky_members, &want.sticky_members) {
            dp.remove_sticky_member(&at)?;
            now.sticky_members.remove(&at);
        }
        for addr in now.backend_addrs.clone().difference(&want.backend_addrs) {
            dp.remove_backend_addr(*addr)?;
            now.backend_addrs.remove(addr);
        }
        for vip in now.vips.clone().difference(&want.vips) {
            dp.remove_vip(*vip)?;
            now.vips.remove(vip);
        }
        if fates_due {
            self.flows_unchecked = false;
        }
        Ok(changes)
    }
}

/// Moves every flow in both stages to its fate under `want` (`plan::flow_fates`):
/// re-pointed at its backend's id in the service its tuple now belongs to, or removed.
fn flows_follow(
    dp: &mut Datapath,
    want: &Image,
    changes: &mut Changes,
) -> Result<(), DatapathError> {
    for half_open in [false, true] {
        let flows = dp.reader().flows_in(half_open)?;
        let (mut repoint, mut foreign) = (Vec::new(), Vec::new());
        for (flow, fate) in flows.iter().zip(plan::flow_fates(want, &flows)) {
            match fate {
                FlowFate::Keep => {}
                FlowFate::Repoint(id) => repoint.push((*flow, id)),
                FlowFate::Foreign => foreign.push(*flow),
            }
        }
        changes.flows_repointed += dp.repoint_flows(half_open, &repoint)?;
        changes.foreign_flows_removed += dp.remove_flows(half_open, &foreign)?;
    }
    Ok(())
}

/// Keys of `have` that `want` lacks (collected, so `have` can be changed while they are removed).
fn absent_from<K: Ord + Copy, A, B>(have: &BTreeMap<K, A>, want: &BTreeMap<K, B>) -> Vec<K> {
    have.keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect()
}
