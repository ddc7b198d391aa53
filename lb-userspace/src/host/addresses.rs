//! Makes the kernel answer ARP for the VIPs (and, in one-arm, the SNAT addresses): each becomes
//! a /32 address on the client interface. Only addresses the daemon added (or, after a restart,
//! adopted) are removed again.

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::Result;

use super::ip;

#[derive(Debug)]
pub struct VipOwner {
    iface: String,
    owned: BTreeSet<Ipv4Addr>,
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
    pub fn sync(&mut self, want: &BTreeSet<Ipv4Addr>, adopt: bool) -> Result<()> {
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
            ip(&["addr", "add", &format!("{vip}/32"), "dev", &self.iface])?;
            self.owned.insert(*vip);
        }
        for vip in self.owned.clone().difference(want) {
            ip(&["addr", "del", &format!("{vip}/32"), "dev", &self.iface])?;
            self.owned.remove(vip);
        }
        Ok(())
    }

    pub fn release_all(&mut self) -> Result<()> {
        self.sync(&BTreeSet::new(), false)
    }

    fn present(&self) -> Result<BTreeSet<Ipv4Addr>> {
        let out = ip(&["-j", "-4", "addr", "show", "dev", &self.iface])?;
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
