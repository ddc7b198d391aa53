//! What only the running system knows about the configured interfaces: whether they exist
//! (`xnlb check` skips that, it may run on another machine; `run` and `reload` refuse such a
//! config), and their MAC addresses, which the datapath acts on.

use std::path::Path;

use anyhow::Context;
use lb_common::settings::OwnMac;
use lb_model::config::{Config, ConfigError, Loaded, Locations, Mode, Problem, load};

/// `load`, plus the checks only the running system can answer (`run` and `reload`).
pub fn load_for_run(path: &Path) -> Result<Loaded, ConfigError> {
    let loaded = load(path)?;
    let mut problems = system_problems(&loaded.config);
    if problems.is_empty() {
        return Ok(loaded);
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let at = Locations::index(&text);
    for p in &mut problems {
        p.at = at.find(&p.path);
    }
    Err(ConfigError {
        file: path.display().to_string(),
        problems,
    })
}

/// Problems only the running system can show (interfaces that do not exist). `check` skips
/// these because it may run on another machine; `run` and `reload` refuse such a config.
pub fn system_problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut check = |name: &str, path: &str| {
        if nix::net::if_::if_nametoindex(name).is_err() {
            problems.push(
                Problem::new(
                    path,
                    format!("interface `{name}` does not exist on this system"),
                )
                .hint("`ip link` lists the interfaces"),
            );
        }
    };
    check(&config.interfaces.client, "interfaces.client");
    if let (Mode::TwoArm, Some(server)) = (config.mode, &config.interfaces.server) {
        check(server, "interfaces.server");
    }
    problems
}

/// The frames the datapath may act on: each attached interface's own MAC, with its MTU, read
/// from the kernel in the calling thread's network namespace (`getifaddrs` asks over netlink,
/// the MTU an ioctl on a socket of that namespace; `/sys` would show the namespace it was
/// mounted in).
pub fn own_macs(config: &Config) -> anyhow::Result<Vec<OwnMac>> {
    let links = links()?;
    config
        .attach_interfaces()
        .into_iter()
        .map(|name| {
            let (ifindex, mac) = find_link(&links, name)?;
            Ok(OwnMac {
                ifindex,
                mac,
                mtu: mtu(name)?,
            })
        })
        .collect()
}

/// Interface `name`'s MTU (`SIOCGIFMTU`), at most 65535.
fn mtu(name: &str) -> anyhow::Result<u16> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("a socket to ask interface MTUs with")?;
    // SAFETY: `ifreq` is plain integers and arrays: all zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    anyhow::ensure!(
        bytes.len() < req.ifr_name.len(),
        "interface name `{name}` is too long"
    );
    for (to, &b) in req.ifr_name.iter_mut().zip(bytes) {
        *to = b as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the NUL-terminated name from `req` and writes the MTU into it; the
    // socket and `req` outlive the call. (nix has no wrapper for this request.)
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the MTU of `{name}`"));
    }
    // SAFETY: SIOCGIFMTU answered in the union's `ifru_mtu` member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.clamp(0, u16::MAX as i32) as u16)
}

/// Interface `name`'s index and MAC.
pub fn link(name: &str) -> anyhow::Result<(u32, [u8; 6])> {
    find_link(&links()?, name)
}

/// Every interface with a link-layer address: (name, index, MAC).
fn links() -> anyhow::Result<Vec<(String, usize, [u8; 6])>> {
    Ok(nix::ifaddrs::getifaddrs()
        .context("listing the interfaces (getifaddrs)")?
        .filter_map(|a| {
            let link = a.address.as_ref()?.as_link_addr()?;
            Some((a.interface_name.clone(), link.ifindex(), link.addr()?))
        })
        .collect())
}

fn find_link(links: &[(String, usize, [u8; 6])], name: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let (_, ifindex, mac) = links
        .iter()
        .find(|(n, _, _)| n == name)
        .with_context(|| format!("interface `{name}` has no link-layer address"))?;
    Ok((*ifindex as u32, *mac))
}
