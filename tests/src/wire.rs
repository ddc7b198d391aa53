//! Raw traffic from inside a namespace: whole Ethernet frames sent with an AF_PACKET socket
//! (packets no normal socket would send: malformed headers, strangers' addresses), and ICMP echo
//! to check that the host's own traffic still flows.

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::NetNs;

/// An AF_PACKET socket bound to one device: frames go out exactly as given.
pub struct FrameSender {
    fd: OwnedFd,
    ifindex: i32,
}

impl FrameSender {
    pub fn open(ns: &NetNs, dev: &str) -> Self {
        let ifindex = ns.ifindex(dev) as i32;
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let raw = ns.run_in(|| unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) });
        assert!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Self { fd, ifindex }
    }

    /// Sends one frame. A veth whose peer's backlog is full refuses a frame (`ENOBUFS`) when
    /// the machine is busy, as a NIC's full queue would make a driver wait: that is retried,
    /// 1 ms apart, at most 200 times (0.2 s), so the burst arrives whole; other errors return.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut refused = 0;
        loop {
            match self.send_once(frame) {
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && refused < 200 => {
                    refused += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                other => return other,
            }
        }
    }

    fn send_once(&self, frame: &[u8]) -> std::io::Result<()> {
        xnlb::host::heartbeats::send_frame(self.fd.as_fd(), self.ifindex, frame)
    }
}

/// Sends one ICMP echo request from `ns` to `dst`; true when the reply came within `limit`.
pub fn ping(ns: &NetNs, dst: Ipv4Addr, limit: Duration) -> bool {
    let socket = ns
        .run_in(|| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)))
        .expect("raw ICMP socket");
    let id = std::process::id() as u16;
    let mut request = [
        8u8,
        0,
        0,
        0,
        (id >> 8) as u8,
        id as u8,
        0,
        1,
        b'x',
        b'n',
        b'l',
        b'b',
    ];
    let sum = checksum(&request);
    request[2..4].copy_from_slice(&sum.to_be_bytes());
    let to: SocketAddr = (dst, 0).into();
    if socket.send_to(&request, &to.into()).is_err() {
        return false;
    }
    let deadline = Instant::now() + limit;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = socket.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let Ok(n) = socket.recv(&mut buf) else {
            return false;
        };
        // SAFETY: `recv` initialised the first `n` bytes.
        let packet: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let icmp = &packet[((packet[0] & 0x0f) as usize * 4).min(n)..];
        let from = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        if from == dst && icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == request[4..6] {
            return true;
        }
    }
    false
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
