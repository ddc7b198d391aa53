//! Makes the kernel answer ARP and neighbour discovery for the VIPs (and, in one-arm, the SNAT
//! addresses): each becomes a /32 or /128 address on the client interface. IPv6 ones skip
//! duplicate address detection, which would hold them tentative, unusable, for a second, and
//! are deprecated from the start (`preferred_lft 0`): they answer neighbour discovery and take
//! traffic, but the host never picks them as the source of its own connections (a health
//! probe from the VIP would have its answer balanced as VIP traffic). Only addresses the
//! daemon added (or, after a restart, adopted) are removed again.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::Result;

use super::ip;

#[derive(Debug)]
pub struct VipOwner {
    iface: String,
    owned: BTreeSet<IpAddr>,
}

impl VipOwner {
    pub fn new(iface: &str) -> Self {
        Self {
            iface: iface.to_string(),
            owned: BTreeSet::new(),
        }
    }

    /// Adds the VIPs in `want` that are missing and removes owned ones no longer wanted. With
    /// `adopt`, VIPs already present count as ours (a previous daemon added them).
    pub fn sync(&mut self, want: &BTreeSet<IpAddr>, adopt: bool) -> Result<()> {
        let present = self.present()?;
        for vip in want {
            if present.contains(vip) {
                if adopt {
                    self.owned.insert(*vip);
                } else if !self.owned.contains(vip) {
                    tracing::info!(
                        "{vip} is already an address of {}; leaving it as it is",
                        self.iface
                    );
                }
                continue;
            }
            let mut add = vec!["addr", "add"];
            let prefix = host_prefix(*vip);
            add.extend([prefix.as_str(), "dev", &self.iface]);
            if vip.is_ipv6() {
                add.extend(["nodad", "preferred_lft", "0"]);
            }
            ip(&add)?;
            self.owned.insert(*vip);
        }
        for vip in self.owned.clone().difference(want) {
            ip(&["addr", "del", &host_prefix(*vip), "dev", &self.iface])?;
            self.owned.remove(vip);
        }
        Ok(())
    }

    /// Counts `addrs` (present on the interface) as ours, to remove when no longer wanted.
    pub fn adopt(&mut self, addrs: &BTreeSet<IpAddr>) {
        self.owned.extend(addrs);
    }

    /// The addresses this owner added or adopted.
    pub fn owned(&self) -> &BTreeSet<IpAddr> {
        &self.owned
    }

    pub fn release_all(&mut self) -> Result<()> {
        self.sync(&BTreeSet::new(), false)
    }

    /// The addresses on the interface now.
    pub fn present(&self) -> Result<BTreeSet<IpAddr>> {
        let out = ip(&["-j", "addr", "show", "dev", &self.iface])?;
        let links: serde_json::Value = serde_json::from_str(&out)?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
            .collect())
    }
}

/// `addr` as a host prefix: `/32` or `/128`.
fn host_prefix(addr: IpAddr) -> String {
    let len = if addr.is_ipv4() { 32 } else { 128 };
    format!("{addr}/{len}")
}
