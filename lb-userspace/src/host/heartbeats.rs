//! Cluster heartbeats on the wire: Ethernet broadcast frames of xnlb's own EtherType on the
//! cluster interface, sent and received with an AF_PACKET socket bound to that interface and
//! EtherType (the datapath passes them to the kernel as non-IP). In IGMP mode the node also
//! joins the cluster's multicast group, so that a snooping switch delivers the cluster MAC to
//! its port. Raw `libc`: nix 0.29 cannot build a `sockaddr_ll` to bind or send to (its
//! `LinkAddr` has no constructor), nor join a group by interface index (`ip_mreqn`).

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use lb_common::cluster::HEARTBEAT_ETHERTYPE;

/// The smallest Ethernet frame without its FCS: shorter ones are padded.
const MIN_FRAME: usize = 60;
const BROADCAST: [u8; 6] = [0xff; 6];

pub struct HeartbeatSocket {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

/// A heartbeat payload and the MAC that sent it.
pub struct Received {
    pub from: [u8; 6],
    pub payload: Vec<u8>,
}

impl HeartbeatSocket {
    /// A socket on interface `iface` (index `ifindex`, MAC `mac`).
    pub fn open(iface: &str, ifindex: u32, mac: [u8; 6]) -> Result<Self> {
        let proto = HEARTBEAT_ETHERTYPE.to_be() as i32;
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error())
                .context("opening the heartbeat socket (AF_PACKET)");
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set are plain integers.
        let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        at.sll_family = libc::AF_PACKET as u16;
        at.sll_protocol = HEARTBEAT_ETHERTYPE.to_be();
        at.sll_ifindex = ifindex as i32;
        // SAFETY: `at` is a valid sockaddr_ll for the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&at as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("binding the heartbeat socket to {iface}"));
        }
        Ok(Self {
            fd,
            ifindex: ifindex as i32,
            mac,
        })
    }

    /// Broadcasts one heartbeat.
    pub fn send(&self, payload: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(MIN_FRAME.max(14 + payload.len()));
        frame.extend_from_slice(&BROADCAST);
        frame.extend_from_slice(&self.mac);
        frame.extend_from_slice(&HEARTBEAT_ETHERTYPE.to_be_bytes());
        frame.extend_from_slice(payload);
        frame.resize(frame.len().max(MIN_FRAME), 0);
        send_frame(self.fd.as_fd(), self.ifindex, &frame).context("sending a heartbeat")
    }

    /// The next heartbeat from another host within `wait`, if one comes. This host's own
    /// frames, which the socket also sees leaving, are skipped.
    pub fn recv(&self, wait: Duration) -> Result<Option<Received>> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e).context("waiting for heartbeats");
        }
        if ready == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 2048];
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: `buf` and `from` are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e).context("reading a heartbeat");
        }
        let n = n as usize;
        if from.sll_pkttype == libc::PACKET_OUTGOING || n < 14 {
            return Ok(None);
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&buf[6..12]);
        Ok(Some(Received {
            from: mac,
            payload: buf[14..n].to_vec(),
        }))
    }
}

/// Membership of an IPv4 multicast group on one interface, held while this lives (IGMP mode:
/// the kernel answers the switch's queries for it).
pub struct GroupMembership {
    _fd: OwnedFd,
}

impl GroupMembership {
    pub fn join(group: [u8; 4], ifindex: u32) -> Result<Self> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("opening a socket to join");
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let request = libc::ip_mreqn {
            imr_multiaddr: libc::in_addr {
                s_addr: u32::from_ne_bytes(group),
            },
            imr_address: libc::in_addr { s_addr: 0 },
            imr_ifindex: ifindex as i32,
        };
        // SAFETY: `request` is a valid ip_mreqn for the length given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_ADD_MEMBERSHIP,
                (&request as *const libc::ip_mreqn).cast(),
                std::mem::size_of::<libc::ip_mreqn>() as u32,
            )
        };
        if rc != 0 {
            let [a, b, c, d] = group;
            bail!(
                "joining group {a}.{b}.{c}.{d}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { _fd: fd })
    }
}

/// Sends `frame` (Ethernet, destination MAC first) out of interface `ifindex` through the
/// AF_PACKET socket `fd`. The tests' raw-frame sender uses it too.
pub fn send_frame(fd: BorrowedFd<'_>, ifindex: i32, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set are plain integers.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `to` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
