//! Section 2c: the sticky table (`sticky_timeout`) under many clients. A new flow of a sticky
//! service asks `STICKY` before the ring: this measures a SYN from a client the table holds (a
//! hit: the entry decides), from one it does not hold (a miss: the ring decides, the entry is
//! written only when the flow is established), and the same SYN to a service without
//! stickiness on the same backends, in one bed, with the table filled to each size.
//! IPv6 clients: a million distinct client addresses exist only there within the test prefixes.

use std::net::{IpAddr, Ipv6Addr};

use lb_common::{
    addr::FAMILY_V6,
    service::Affinity,
    sticky::{StickyEntry, StickyKey},
};
use xnlb::{
    config::Affinity as ConfigAffinity,
    datapath::DatapathSizes,
    model::{
        plan::{member_of, seed_of},
        port_rules::addr_of,
    },
};
use xnlb_tests::{bed::*, packets::*};

use crate::{
    Budget, Progress,
    packet_cost::{SRC_IP6, SRC_PORT6, coarse_now_ns, single},
};

/// One table size's costs, ns per packet (means of single runs).
pub struct StickyRow {
    pub clients: u32,
    pub hit: f64,
    pub miss: f64,
    /// The same SYN to the service without stickiness.
    pub plain: f64,
}

/// Client `i`'s address: `fd00:19::<i>`.
fn client6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
}

/// Makes `frame` come from client `i`, source port `port`.
fn set_client6(i: u32, port: u16, frame: &mut [u8]) {
    frame[SRC_IP6].copy_from_slice(&client6(i).octets());
    frame[SRC_PORT6].copy_from_slice(&port.to_be_bytes());
}

pub fn steps(sizes: &[u32]) -> usize {
    sizes.len()
}

pub fn measure(sizes: &[u32], budget: &Budget, progress: &mut Progress) -> Vec<StickyRow> {
    let runs = budget.scale_runs;
    sizes
        .iter()
        .map(|&n| {
            progress.step(&format!("sticky: new flows with {n} clients in the table"));
            let mut bed = Bed::with_sizes(DatapathSizes {
                flows: 3 * runs + 65_536,
                half_open: 3 * runs + 65_536,
                sticky: n + 3 * runs + 65_536,
                ring_services: 4,
            });
            let backends: Vec<IpAddr> = (1..=3).map(|i| backend_ip6(i).into()).collect();
            let mut sticky = service_at("sticky6", VIP6.into(), 443, &backends);
            sticky.affinity = ConfigAffinity::Single;
            sticky.sticky_timeout = std::time::Duration::from_secs(3600);
            let table = seed_of(&sticky);
            bed.install(sticky);
            let mut plain = service_at("plain6", VIP6.into(), 80, &backends);
            plain.affinity = ConfigAffinity::Single;
            bed.install(plain);
            fill(&mut bed, table, n);

            let prog = bed.dp.program().expect("program");
            let syn = |port| {
                let client = (client6(0), 40_000);
                bed.from_client(Pkt::tcp(client, (VIP6, port), SYN)).bytes()
            };
            // Hits: the table's clients in turn, each time from another port, so every SYN is a
            // new connection (a repeated tuple would be a SYN retry of a half-open flow).
            let hit = single(
                prog,
                bed.client_if,
                &syn(443),
                runs,
                XDP_REDIRECT,
                |i, f| set_client6(i % n, 1_024 + (i / n % 60_000) as u16, f),
            );
            let miss = single(
                prog,
                bed.client_if,
                &syn(443),
                runs,
                XDP_REDIRECT,
                |i, f| set_client6(n + i, 40_000, f),
            );
            let plain = single(prog, bed.client_if, &syn(80), runs, XDP_REDIRECT, |i, f| {
                set_client6(n + runs + i, 40_000, f)
            });
            StickyRow {
                clients: n,
                hit,
                miss,
                plain,
            }
        })
        .collect()
}

/// `n` clients in the sticky table, spread over the three backends, seen just now.
fn fill(bed: &mut Bed, table: u32, n: u32) {
    let now = coarse_now_ns();
    let backends: Vec<(u32, u32)> = (1..=3)
        .map(|b| {
            let name = format!("b{b}");
            (bed.backend_id("sticky6", &name), member_of(&name))
        })
        .collect();
    let entries: Vec<(StickyKey, StickyEntry)> = (0..n)
        .map(|i| {
            let (addr, _) = addr_of(client6(i).into());
            let key = StickyKey::new(table, Affinity::Single as u8, 0, FAMILY_V6, &addr);
            let (backend_id, member) = backends[(i % 3) as usize];
            let entry = StickyEntry {
                last_seen_ns: now,
                backend_id,
                member,
            };
            (key, entry)
        })
        .collect();
    for chunk in entries.chunks(65_536) {
        bed.dp.insert_sticky(chunk).expect("fill the sticky table");
    }
}
