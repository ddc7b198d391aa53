//! Port ranges as longest-prefix-match rules: any range `lo..=hi` is the union of at most 30
//! aligned power-of-two blocks, so the datapath finds the rule in one LPM lookup however wide
//! the range is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    addr::{Addr, FAMILY_V4, FAMILY_V6, octets, v4, v6},
    service::{RULE_FIXED_BITS, ServiceRuleKey},
};

/// One port-rule prefix of a VIP: the key of `SERVICE_RULES` in the controller's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleKey {
    pub vip: IpAddr,
    pub proto: u8,
    /// First port of the prefix (host order).
    pub port: u16,
    /// Port bits that must match (16 = exactly `port`).
    pub port_bits: u8,
}

impl RuleKey {
    /// The prefixes that together cover `vip`:`lo..=hi`/`proto`.
    pub fn covering(vip: IpAddr, proto: u8, lo: u16, hi: u16) -> Vec<RuleKey> {
        prefixes(lo, hi)
            .into_iter()
            .map(|p| RuleKey {
                vip,
                proto,
                port: p.port,
                port_bits: p.bits,
            })
            .collect()
    }

    /// The LPM key as the datapath holds it: (prefix length in bits, key data).
    pub fn to_kernel(self) -> (u32, ServiceRuleKey) {
        let (vip, family) = addr_of(self.vip);
        let data = ServiceRuleKey::new(family, self.proto, vip, self.port.to_be());
        (RULE_FIXED_BITS + self.port_bits as u32, data)
    }

    /// Whether this prefix covers `proto` traffic to `vip`:`port`.
    pub fn covers(&self, vip: IpAddr, proto: u8, port: u16) -> bool {
        let shift = 16 - u32::from(self.port_bits);
        let high = |p: u16| u32::from(p).checked_shr(shift).unwrap_or(0);
        self.vip == vip && self.proto == proto && high(self.port) == high(port)
    }

    /// The rule an LPM key read back from the datapath stands for.
    pub fn from_kernel(prefix_len: u32, data: &ServiceRuleKey) -> RuleKey {
        RuleKey {
            vip: ip_of(&data.vip, data.family),
            proto: data.proto,
            port: u16::from_be(data.port),
            port_bits: (prefix_len - RULE_FIXED_BITS) as u8,
        }
    }
}

/// The IPv4 address as the datapath stores it.
pub fn addr_v4(addr: Ipv4Addr) -> Addr {
    v4(addr.octets())
}

/// An address as the datapath stores it, with its family.
pub fn addr_of(addr: IpAddr) -> (Addr, u8) {
    match addr {
        IpAddr::V4(a) => (v4(a.octets()), FAMILY_V4),
        IpAddr::V6(a) => (v6(a.octets()), FAMILY_V6),
    }
}

/// The address the datapath stores as `addr` of `family`.
pub fn ip_of(addr: &Addr, family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::V6(Ipv6Addr::from(octets(addr)))
    } else {
        IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes()))
    }
}

/// One aligned block: the `bits` high bits of `port` (0..=16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPrefix {
    pub port: u16,
    pub bits: u8,
}

impl PortPrefix {
    pub fn first(&self) -> u16 {
        self.port
    }
    pub fn last(&self) -> u16 {
        (self.port as u32 + (1u32 << (16 - self.bits)) - 1) as u16
    }
}

/// The minimal set of prefixes covering exactly `lo..=hi`.
pub fn prefixes(lo: u16, hi: u16) -> Vec<PortPrefix> {
    assert!(lo <= hi, "empty port range {lo}-{hi}");
    let mut out = Vec::new();
    let (mut start, end) = (lo as u32, hi as u32);
    while start <= end {
        // Largest block aligned at `start` that stays within the range.
        let mut size = if start == 0 {
            1 << 16
        } else {
            1u32 << start.trailing_zeros()
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        out.push(PortPrefix {
            port: start as u16,
            bits: (16 - size.trailing_zeros()) as u8,
        });
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(ps: &[PortPrefix]) -> Vec<u32> {
        let mut v: Vec<u32> = ps
            .iter()
            .flat_map(|p| p.first() as u32..=p.last() as u32)
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_single_port_is_one_exact_prefix() {
        assert_eq!(
            prefixes(443, 443),
            vec![PortPrefix {
                port: 443,
                bits: 16
            }]
        );
    }

    #[test]
    fn the_exchange_dynamic_rpc_range_is_six_prefixes() {
        let ps = prefixes(1024, 65535);
        assert_eq!(ps.len(), 6);
        assert_eq!(covered(&ps), (1024..=65535).collect::<Vec<_>>());
    }

    #[test]
    fn every_range_is_covered_exactly_and_compactly() {
        let samples = [
            (0, 65535),
            (0, 0),
            (65535, 65535),
            (1, 65534),
            (135, 139),
            (1000, 1999),
            (8080, 8090),
        ];
        for (lo, hi) in samples {
            let ps = prefixes(lo, hi);
            assert!(ps.len() <= 30, "{lo}-{hi}: {} prefixes", ps.len());
            assert_eq!(
                covered(&ps),
                (lo as u32..=hi as u32).collect::<Vec<_>>(),
                "{lo}-{hi}"
            );
        }
    }
}
