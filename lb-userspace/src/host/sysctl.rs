//! The kernel settings xnlb relies on, per interface.

use anyhow::{Context, Result};
use tracing::info;

/// Lets the kernel forward the translated packets the datapath hands it when the next hop's
/// MAC is not known yet (`no_neighbour`): their source is a local address (the VIP on replies,
/// the SNAT address in one-arm), which the kernel otherwise drops as martian, so the neighbour
/// would never be resolved and a client new to the balancer could not connect.
pub fn accept_local_sources(iface: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, "1").with_context(|| format!("setting {path} to 1"))?;
    info!("{iface}: accept_local=1 (translated packets waiting for ARP carry a local source)");
    Ok(())
}

/// Cluster mode: the kernel's own ARP requests name the interface's own address, never
/// another local one (a VIP on some interface, whose MAC must stay the cluster MAC in every
/// neighbour's cache).
pub fn announce_own_addresses_only(iface: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/arp_announce");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "2") {
        return Ok(());
    }
    std::fs::write(&path, "2").with_context(|| format!("setting {path} to 2"))?;
    info!("{iface}: arp_announce=2 (ARP requests name only this node's own address)");
    Ok(())
}

/// Whether the kernel forwards IPv4 that arrives on `iface`. Without it `bpf_fib_lookup` gives
/// no next hop, so every balanced packet goes to the kernel (`no_fast_route`), which drops it.
pub fn forwards(iface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
        .is_ok_and(|v| v.trim() == "1")
}
