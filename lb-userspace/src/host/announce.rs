//! The announce interface (`announce:`): an interface of the VIPs' own, which xnlb creates and
//! a routing daemon watches (BIRD's `protocol direct`, FRR's `redistribute connected`), so that
//! a VIP's /32 or /128 is exported exactly while it is there. A dummy interface where the kernel
//! has the driver, else an ifb (which, like a dummy, carries no traffic of its own). Everything
//! on it is xnlb's: the addresses found at start are a previous daemon's, and a restart keeps
//! them (the pinned datapath serves them meanwhile); `xnlb stop` deletes it.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context, Result};
use tracing::info;

use super::{addresses::VipOwner, ip};

pub struct AnnounceInterface {
    name: String,
    vips: VipOwner,
}

impl AnnounceInterface {
    /// The interface `name`, created and brought up if missing, and the VIPs already on it.
    pub fn open(name: &str) -> Result<(Self, BTreeSet<IpAddr>)> {
        if ip(&["link", "show", "dev", name]).is_err() {
            let kind = ["dummy", "ifb"]
                .into_iter()
                .find(|kind| ip(&["link", "add", name, "type", kind]).is_ok())
                .with_context(|| {
                    format!("creating the announce interface {name}: no dummy or ifb driver")
                })?;
            // No IPv6 link-local address: nothing but VIPs for the routing daemon to find.
            // (Fails only where IPv6 is off, which has no such address to avoid.)
            let _ = ip(&["link", "set", "dev", name, "addrgenmode", "none"]);
            info!("created the announce interface {name} ({kind})");
        }
        ip(&["link", "set", "dev", name, "up"])?;
        let mut vips = VipOwner::new(name);
        let present: BTreeSet<IpAddr> = vips
            .present()?
            .into_iter()
            .filter(|a| !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect();
        vips.adopt(&present);
        Ok((
            Self {
                name: name.to_string(),
                vips,
            },
            present,
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The VIPs on the interface (as last written, or adopted).
    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        self.vips.owned()
    }

    /// Puts exactly the VIPs of `announced` on the interface.
    pub fn sync(&mut self, announced: &BTreeSet<IpAddr>) -> Result<()> {
        self.vips.sync(announced, true)
    }

    /// Withdraws every VIP and deletes the interface (`xnlb stop`, or a reload that names
    /// another).
    pub fn remove(mut self) -> Result<()> {
        self.vips.release_all()?;
        ip(&["link", "del", "dev", &self.name])?;
        info!("deleted the announce interface {}", self.name);
        Ok(())
    }
}
