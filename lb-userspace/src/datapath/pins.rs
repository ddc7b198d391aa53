//! What a pin directory holds, checked against this build's object before a restarted daemon
//! adopts it: a pin is never trusted blindly. Every map the object defines is looked for; a
//! missing one is created afresh (and the reply tables rebuilt from the flows), a pinned one of
//! another layout (an upgrade that changed it) is replaced by a fresh one where the controller
//! can write it again, and refused where it holds connections. The caller says what happened.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result, bail};
use aya::maps::MapInfo;
use lb_common::maps as names;

use super::{layout, object::XDP_OBJECT};

/// Maps that hold connections: nothing can write them again. A missing reply table is rebuilt
/// from its flow table; a missing flow table loses its connections.
const CONNECTIONS: &[&str] = &[
    names::FLOWS,
    names::HALF_OPEN,
    names::REPLIES,
    names::HALF_OPEN_REPLIES,
];

/// What a pinned datapath needed before it could be adopted.
#[derive(Debug, Default)]
pub struct Adoption {
    /// Maps without a pin, created afresh.
    pub missing: Vec<&'static str>,
    /// Pinned maps of another layout, replaced by fresh ones: (map, how it differed).
    pub migrated: Vec<(&'static str, String)>,
    /// Reply entries written again into each missing reply table (`replies_to_rebuild`).
    pub rebuilt: Vec<(&'static str, usize)>,
    /// `RING` made larger for the config (services it had room for, then has): its tables
    /// copied into the new one.
    pub ring_grown: Option<(u32, u32)>,
}

impl Adoption {
    /// One line per thing an administrator should know, saying what it costs.
    pub fn report(&self) -> Vec<String> {
        let mut out = Vec::new();
        for &name in &self.missing {
            let what = match self.rebuilt.iter().find(|(n, _)| *n == name) {
                Some((_, entries)) => format!("rebuilt from the flow table ({entries} entries)"),
                None => consequence(name).to_string(),
            };
            out.push(format!("{name} was not pinned: {what}"));
        }
        for (name, how) in &self.migrated {
            out.push(format!(
                "{name} was pinned with another layout ({how}): replaced, {}",
                consequence(name)
            ));
        }
        if let Some((had, has)) = self.ring_grown {
            out.push(format!(
                "RING grown from room for {had} services to {has}: its tables copied, the new \
                 programs read the new one"
            ));
        }
        out
    }

    /// The reply tables created afresh, which the caller rebuilds from their flow tables:
    /// (map, whether it is the half-open one).
    pub fn replies_to_rebuild(&self) -> impl Iterator<Item = (&'static str, bool)> + '_ {
        self.missing.iter().filter_map(|&name| match name {
            names::REPLIES => Some((name, false)),
            names::HALF_OPEN_REPLIES => Some((name, true)),
            _ => None,
        })
    }
}

/// What a map created afresh costs.
fn consequence(name: &str) -> &'static str {
    match name {
        names::FLOWS => "the established connections it held are lost",
        names::HALF_OPEN => "handshakes in progress are lost (clients send their SYN again)",
        names::REPLIES | names::HALF_OPEN_REPLIES => "its flows' replies are not recognised",
        names::FRAGMENTS => "fragments of datagrams in flight are dropped",
        names::BACKEND_STATS
        | names::SERVICE_STATS
        | names::DROPS
        | names::PASSES
        | names::FLOW_EVENTS
        | names::XDP_ACTIONS => "its counters start from zero",
        names::SERVICES | names::SERVICE_RULES | names::BACKENDS => {
            "written again from the config (ids are assigned afresh: a connection whose backend \
             id changed is balanced again)"
        }
        _ => "written again from the config",
    }
}

/// Checks every map pin under `dir` against the object. `None`: nothing is pinned (a fresh
/// start). Pins of another layout are removed here, so that the loader creates fresh maps in
/// their place; one that holds connections refuses the adoption instead.
pub fn check(dir: &Path) -> Result<Option<Adoption>> {
    if !names::ALL.iter().any(|name| dir.join(name).exists()) {
        return Ok(None);
    }
    let object = aya_obj::Object::parse(XDP_OBJECT).context("reading the embedded object")?;
    let stamped = layout::read(dir)?;
    let mut adoption = Adoption::default();
    // Every pin is checked before any is replaced: a refusal leaves the directory as it was.
    let mut outdated = Vec::new();
    for &name in names::ALL {
        let path = dir.join(name);
        if !path.exists() {
            adoption.missing.push(name);
            continue;
        }
        let want = object
            .maps
            .get(name)
            .with_context(|| format!("the object has no map {name}"))?;
        let pinned = MapInfo::from_pin(&path)
            .with_context(|| format!("reading the pinned {}", path.display()))?;
        let how = difference(&pinned, want).or_else(|| version_difference(&stamped, name));
        let Some(how) = how else {
            continue;
        };
        if CONNECTIONS.contains(&name) {
            bail!(
                "the pinned {name} has another layout than this xnlb's ({how}): the running \
                 datapath's connections cannot be adopted by this version. Start the version \
                 that made it, or take the balancer out with `xnlb stop` and start this one \
                 (forwarding stops in between, and connections are lost)"
            );
        }
        outdated.push(path);
        adoption.migrated.push((name, how));
    }
    for path in outdated {
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the outdated pin {}", path.display()))?;
    }
    Ok(Some(adoption))
}

/// How the layout version `name` was pinned with (`stamped`: `LAYOUT`'s) differs from this
/// build's, if it does: same sizes can hold other meanings.
fn version_difference(stamped: &Option<BTreeMap<String, u32>>, name: &str) -> Option<String> {
    let ours = names::version(name)?;
    let Some(stamped) = stamped else {
        return Some(format!(
            "made by an xnlb without layout versions, this xnlb's is {ours}"
        ));
    };
    match stamped.get(name) {
        Some(&v) if v == ours => None,
        Some(&v) => Some(format!("layout version {v}, this xnlb's {ours}")),
        None => Some(format!("no layout version, this xnlb's is {ours}")),
    }
}

/// How a pinned map differs from the object's definition of it, if it does. Sizes are left
/// out: a running table keeps the size it was made with.
fn difference(pinned: &MapInfo, want: &aya_obj::Map) -> Option<String> {
    // The kernel's type numbers (`bpf_map_type`), as the object states them.
    let pinned_type = pinned.map_type().ok().map(|t| t as u32);
    if pinned_type != Some(want.map_type()) {
        return Some(format!(
            "type {:?}, this xnlb's {}",
            pinned.map_type().ok(),
            want.map_type()
        ));
    }
    if (pinned.key_size(), pinned.value_size()) != (want.key_size(), want.value_size()) {
        return Some(format!(
            "keys of {} bytes and values of {}, this xnlb's {} and {}",
            pinned.key_size(),
            pinned.value_size(),
            want.key_size(),
            want.value_size()
        ));
    }
    None
}
