//! Port ranges as longest-prefix-match rules: any range `lo..=hi` is the union of at most 30
//! aligned power-of-two blocks, so the datapath finds the rule in one LPM lookup however wide
//! the range is.

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
