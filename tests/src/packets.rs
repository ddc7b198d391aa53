//! Packets for the tests, built with etherparse (so every checksum in an expected packet is
//! computed from scratch, independently of the datapath's incremental updates). IPv4 or IPv6,
//! by the addresses given.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: TcpFlags,
        seq: u32,
    },
    /// `zero_checksum`: send with checksum 0 ("none"), which must stay 0.
    Udp {
        sport: u16,
        dport: u16,
        zero_checksum: bool,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

pub const SYN: TcpFlags = TcpFlags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
pub const SYN_ACK: TcpFlags = TcpFlags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
pub const ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
pub const FIN_ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};
pub const RST: TcpFlags = TcpFlags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

/// An Ethernet + IPv4 or IPv6 + TCP/UDP packet, described by its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL, or hop limit.
    pub ttl: u8,
    /// Don't Fragment (set, as TCP stacks send; IPv4 only).
    pub df: bool,
    pub l4: Transport,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn tcp(
        src: (impl Into<IpAddr>, u16),
        dst: (impl Into<IpAddr>, u16),
        flags: TcpFlags,
    ) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0xaa],
            dst_mac: [0x02, 0, 0, 0, 0, 0xbb],
            src: src.0.into(),
            dst: dst.0.into(),
            ttl: 64,
            df: true,
            l4: Transport::Tcp {
                sport: src.1,
                dport: dst.1,
                flags,
                seq: 1000,
            },
            payload: b"GET /owa/ HTTP/1.1\r\n".to_vec(),
        }
    }

    pub fn udp(src: (impl Into<IpAddr> + Copy, u16), dst: (impl Into<IpAddr> + Copy, u16)) -> Self {
        Self {
            l4: Transport::Udp {
                sport: src.1,
                dport: dst.1,
                zero_checksum: false,
            },
            payload: b"kerberos?".to_vec(),
            ..Self::tcp(src, dst, ACK)
        }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// The same packet with other addresses and ports (what NAT should produce).
    pub fn addressed(
        mut self,
        src: (impl Into<IpAddr>, u16),
        dst: (impl Into<IpAddr>, u16),
    ) -> Self {
        self.src = src.0.into();
        self.dst = dst.0.into();
        match &mut self.l4 {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
                *sport = src.1;
                *dport = dst.1;
            }
        }
        self
    }

    /// The same TCP packet with other flags.
    pub fn flags(mut self, to: TcpFlags) -> Self {
        if let Transport::Tcp { flags, .. } = &mut self.l4 {
            *flags = to;
        }
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// The same packet with Don't Fragment clear.
    pub fn fragmentable(mut self) -> Self {
        self.df = false;
        self
    }

    /// The IP packet, without its Ethernet header (what an ICMP error quotes).
    pub fn ip_bytes(&self) -> Vec<u8> {
        self.bytes()[14..].to_vec()
    }

    pub fn src_port(&self) -> u16 {
        match self.l4 {
            Transport::Tcp { sport, .. } | Transport::Udp { sport, .. } => sport,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), self.ttl),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), self.ttl),
            (s, d) => panic!("a packet from {s} to {d} mixes IP versions"),
        };
        let mut out = Vec::new();
        match self.l4 {
            Transport::Tcp {
                sport,
                dport,
                flags,
                seq,
            } => {
                let mut b = ip.tcp(sport, dport, seq, 64240);
                if flags.syn {
                    b = b.syn();
                }
                if flags.ack {
                    b = b.ack(1);
                }
                if flags.fin {
                    b = b.fin();
                }
                if flags.rst {
                    b = b.rst();
                }
                b.write(&mut out, &self.payload).expect("build TCP packet");
            }
            Transport::Udp {
                sport,
                dport,
                zero_checksum,
            } => {
                ip.udp(sport, dport)
                    .write(&mut out, &self.payload)
                    .expect("build UDP packet");
                if zero_checksum {
                    let l4 = 14 + if self.src.is_ipv4() { 20 } else { 40 };
                    out[l4 + 6] = 0;
                    out[l4 + 7] = 0;
                }
            }
        }
        if !self.df && self.src.is_ipv4() {
            clear_df(&mut out);
        }
        out
    }
}

/// Splits an Ethernet + IPv4 frame (no IP options, DF clear) into fragments of at most `size`
/// payload bytes (a multiple of 8), with IP identification `id`, as a sender's stack would.
pub fn fragment(frame: &[u8], size: usize, id: u16) -> Vec<Vec<u8>> {
    assert_eq!(size % 8, 0, "fragment payloads are multiples of 8 bytes");
    let (head, payload) = frame.split_at(14 + 20);
    let chunks: Vec<&[u8]> = payload.chunks(size).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.to_vec();
            f.extend_from_slice(chunk);
            let total = (20 + chunk.len()) as u16;
            f[14 + 2..14 + 4].copy_from_slice(&total.to_be_bytes());
            f[14 + 4..14 + 6].copy_from_slice(&id.to_be_bytes());
            let more = if i + 1 < chunks.len() { 0x2000 } else { 0 };
            let offset = (i * size / 8) as u16;
            f[14 + 6..14 + 8].copy_from_slice(&(more | offset).to_be_bytes());
            reseal_ipv4(&mut f);
            f
        })
        .collect()
}

/// `fragment` for an Ethernet + IPv6 frame (no extension headers): each fragment is the IPv6
/// header, a fragment header (identification `id`) and up to `size` bytes of the payload.
pub fn fragment6(frame: &[u8], size: usize, id: u32) -> Vec<Vec<u8>> {
    assert_eq!(size % 8, 0, "fragment payloads are multiples of 8 bytes");
    let (head, payload) = frame.split_at(14 + 40);
    let next = head[14 + 6];
    let chunks: Vec<&[u8]> = payload.chunks(size).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.to_vec();
            f[14 + 6] = 44;
            f[14 + 4..14 + 6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
            let more = u16::from(i + 1 < chunks.len());
            let offset_m = ((i * size / 8) as u16) << 3 | more;
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&offset_m.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

/// Clears an Ethernet + IPv4 frame's Don't Fragment bit, and reseals its header.
fn clear_df(frame: &mut [u8]) {
    frame[14 + 6] &= !0x40;
    reseal_ipv4(frame);
}

/// An ICMP message of type `kind` carrying `payload`, in an Ethernet + IPv4 frame from
/// `macs.0` to `macs.1`, with every checksum computed from scratch and Don't Fragment clear (as
/// routers and hosts send ICMP).
pub fn icmp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    kind: Icmpv4Type,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.octets(), dst.octets(), ttl)
        .icmpv4(kind)
        .write(&mut out, payload)
        .expect("build ICMP message");
    clear_df(&mut out);
    out
}

/// "Fragmentation needed, next hop MTU `mtu`".
pub fn frag_needed(mtu: u16) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
    )
}

/// Checks a packet's IPv4 header checksum and TCP/UDP checksum against values recomputed from
/// scratch. A UDP checksum of 0 ("none") is accepted.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let sliced =
        SlicedPacket::from_ethernet(frame).map_err(|e| format!("unparseable output: {e}"))?;
    let header = match sliced.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => {
            let header = ip.header().to_header();
            if header.calc_header_checksum() != header.header_checksum {
                return Err(format!("bad IPv4 checksum {:#06x}", header.header_checksum));
            }
            Header::V4(header)
        }
        Some(etherparse::NetSlice::Ipv6(ip)) => Header::V6(ip.header().to_header()),
        _ => return Err("output is not IP".into()),
    };
    match sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let want = match &header {
                Header::V4(h) => tcp.to_header().calc_checksum_ipv4(h, tcp.payload()),
                Header::V6(h) => tcp.to_header().calc_checksum_ipv6(h, tcp.payload()),
            }
            .map_err(|e| e.to_string())?;
            if want != tcp.checksum() {
                return Err(format!(
                    "bad TCP checksum {:#06x}, want {want:#06x}",
                    tcp.checksum()
                ));
            }
        }
        Some(TransportSlice::Udp(udp)) => {
            let got = udp.checksum();
            let want = match &header {
                Header::V4(h) => udp.to_header().calc_checksum_ipv4(h, udp.payload()),
                Header::V6(h) => udp.to_header().calc_checksum_ipv6(h, udp.payload()),
            }
            .map_err(|e| e.to_string())?;
            if got != 0 && got != want {
                return Err(format!("bad UDP checksum {got:#06x}, want {want:#06x}"));
            }
        }
        _ => {}
    }
    Ok(())
}

enum Header {
    V4(etherparse::Ipv4Header),
    V6(etherparse::Ipv6Header),
}

/// Recomputes the IPv4 header checksum of an Ethernet frame after a test edited the header, so
/// that the edit, not the checksum, is what the datapath sees.
pub fn reseal_ipv4(frame: &mut [u8]) {
    let ihl = (frame[14] & 0x0f) as usize * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum = frame[14..14 + ihl]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}
