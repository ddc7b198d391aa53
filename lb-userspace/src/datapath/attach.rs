//! Attaching the program to interfaces through pinned bpf_links, so forwarding outlives the
//! daemon (fail-static), and adopting such links after a restart without a gap: the new
//! program replaces the old one under the link in one `bpf_link_update`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::programs::{
    Xdp,
    links::{FdLink, PinnedLink},
    xdp::{XdpLink, XdpMode as AyaMode},
};
use tracing::{info, warn};

use crate::config::XdpMode;

/// How a program came to be on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link in this XDP mode (`native` or `generic`).
    New(&'static str),
    /// A pinned link of a previous daemon, now running this daemon's program.
    Adopted,
}

pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link-{iface}"))
}

/// Puts `prog` on `iface`: adopts a pinned link if there is one, otherwise attaches in `mode`
/// and pins the new link.
pub fn attach_or_adopt(
    prog: &mut Xdp,
    pin_dir: &Path,
    iface: &str,
    mode: XdpMode,
) -> Result<Attached> {
    let pin = link_pin(pin_dir, iface);
    if pin.exists() {
        match adopt(prog, &pin) {
            Ok(()) => return Ok(Attached::Adopted),
            Err(e) => {
                // The interface was deleted and re-created, or the pin is stale: start afresh.
                warn!("cannot adopt the pinned link on {iface} ({e:#}); attaching anew");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let (id, used) = match mode {
        XdpMode::Native => (attach(prog, iface, AyaMode::Driver)?, "native"),
        XdpMode::Generic => (attach(prog, iface, AyaMode::Skb)?, "generic"),
        XdpMode::Auto => match attach(prog, iface, AyaMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                info!(
                    "native XDP is not available on {iface} ({e:#}); falling back to generic mode"
                );
                (attach(prog, iface, AyaMode::Skb)?, "generic")
            }
        },
    };
    let link = prog.take_link(id)?;
    let fd_link = FdLink::try_from(link).context(
        "the kernel gave a netlink XDP attachment, which cannot be pinned (kernel < 5.9?)",
    )?;
    fd_link
        .pin(&pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(Attached::New(used))
}

fn attach(prog: &mut Xdp, iface: &str, mode: AyaMode) -> Result<aya::programs::xdp::XdpLinkId> {
    prog.attach(iface, mode)
        .with_context(|| format!("attaching XDP to {iface}"))
}

fn adopt(prog: &mut Xdp, pin: &Path) -> Result<()> {
    let link = FdLink::from(PinnedLink::from_pin(pin)?);
    let link = XdpLink::try_from(link)?;
    prog.attach_to_link(link)?;
    Ok(())
}

/// Detaches the program from `iface` by removing its pinned link.
pub fn detach(pin_dir: &Path, iface: &str) -> Result<()> {
    let pin = link_pin(pin_dir, iface);
    if !pin.exists() {
        bail!("no pinned link for {iface} at {}", pin.display());
    }
    let link = PinnedLink::from_pin(&pin)?.unpin()?;
    drop(link);
    Ok(())
}

/// Pinned links of interfaces not in `keep` (the config no longer names them).
pub fn stale_links(pin_dir: &Path, keep: &[&str]) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("link-"))
                .map(str::to_string)
        })
        .filter(|iface| !keep.contains(&iface.as_str()))
        .collect()
}
