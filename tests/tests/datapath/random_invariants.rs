//! Thousands of generated packets (fixed seed): real flows in both directions, traffic that is
//! not the balancer's, and garbage (truncations, flipped header bytes, random frames). After
//! every packet the datapath's invariants must hold:
//! - a packet that is not to a VIP and not a reply of a balanced flow passes unchanged;
//! - a PASS never changes a packet (every neighbour is known here, so nothing is passed
//!   translated);
//! - a DROP only ever hits traffic addressed to a VIP;
//! - a forwarded packet to a backend goes to a live backend, with that backend's MAC;
//! - a forwarded packet whose input had valid checksums leaves with valid checksums;
//! - the program never aborts.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use xnlb_tests::{bed::*, packets::*};

const PACKETS: usize = 6000;

fn dst_of(frame: &[u8]) -> Option<Ipv4Addr> {
    (frame.len() >= 34 && frame[12..14] == [0x08, 0x00])
        .then(|| Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]))
}

fn src_of(frame: &[u8]) -> Option<Ipv4Addr> {
    (frame.len() >= 34 && frame[12..14] == [0x08, 0x00])
        .then(|| Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]))
}

#[test]
fn datapath_invariants_hold_for_generated_traffic() {
    let mut rng = SmallRng::seed_from_u64(0x786e_6c62);
    let mut bed = Bed::new();
    let live: Vec<Ipv4Addr> = (1..=4).map(backend_ip).collect();
    bed.install(service("web", 443, &live));
    let mut range = service("rpc", 1024, &[backend_ip(5), backend_ip(6)]);
    range.ports = vec![xnlb::config::PortRange {
        lo: 1024,
        hi: 65535,
    }];
    range.protocol = xnlb::config::Protocol::Udp;
    bed.install(range);
    let backends: Vec<Ipv4Addr> = (1..=6).map(backend_ip).collect();

    // Client tuple → backend it was sent to, for generating replies.
    let mut flows: HashMap<(Ipv4Addr, u16, u16), Ipv4Addr> = HashMap::new();
    let mut tally: HashMap<&str, usize> = HashMap::new();

    for i in 0..PACKETS {
        let client = (
            client_ip(rng.random_range(1..400)),
            rng.random_range(1024..65535),
        );
        let (ingress, frame, kind) = match rng.random_range(0..10) {
            0..=2 => {
                let flags = if rng.random_bool(0.3) {
                    SYN
                } else {
                    [ACK, FIN_ACK, RST][rng.random_range(0..3)]
                };
                (
                    bed.client_if,
                    bed.from_client(Pkt::tcp(client, (VIP, 443), flags)).bytes(),
                    "tcp to VIP",
                )
            }
            3 => (
                bed.client_if,
                bed.from_client(Pkt::udp(client, (VIP, rng.random_range(1..65535))))
                    .bytes(),
                "udp to VIP",
            ),
            4 if !flows.is_empty() => {
                let n = rng.random_range(0..flows.len());
                let (&(c, cport, vport), &backend) = flows.iter().nth(n).unwrap();
                (
                    bed.server_if,
                    bed.from_backend(Pkt::tcp((backend, vport), (c, cport), ACK), bed.server_if)
                        .bytes(),
                    "reply",
                )
            }
            4 | 5 => {
                let dst = Ipv4Addr::new(198, 18, rng.random_range(0..=3), rng.random());
                let pkt = if rng.random_bool(0.5) {
                    Pkt::tcp(client, (dst, 443), ACK)
                } else {
                    Pkt::udp(client, (dst, 53))
                };
                (bed.client_if, bed.from_client(pkt).bytes(), "not ours")
            }
            6 | 7 => {
                let mut f = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN)).bytes();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(12..f.len());
                    f[at] = rng.random();
                }
                (bed.client_if, f, "flipped header bytes")
            }
            8 => {
                let f = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN)).bytes();
                let cut = rng.random_range(14..f.len());
                (bed.client_if, f[..cut].to_vec(), "truncated")
            }
            _ => {
                let len = rng.random_range(14..200);
                let mut f: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if rng.random_bool(0.5) {
                    f[12..14].copy_from_slice(&[0x08, 0x00]);
                }
                (bed.client_if, f, "random frame")
            }
        };
        *tally.entry(kind).or_default() += 1;
        let (action, out) = bed.run(ingress, &frame);
        let ctx = || format!("packet {i} ({kind}): {frame:02x?}");
        let to_vip = dst_of(&frame) == Some(VIP);
        let from_backend = src_of(&frame).is_some_and(|s| backends.contains(&s));

        assert_ne!(action, XDP_ABORTED, "{}", ctx());
        match action {
            XDP_PASS => assert_eq!(out, frame, "PASS changed the packet: {}", ctx()),
            XDP_DROP => assert!(to_vip, "dropped a packet that is not to a VIP: {}", ctx()),
            XDP_REDIRECT | XDP_TX => {
                assert!(
                    to_vip || from_backend,
                    "forwarded a packet that is not ours: {}",
                    ctx()
                );
                let out_dst = dst_of(&out).expect("forwarded IPv4");
                if to_vip {
                    assert!(
                        backends.contains(&out_dst),
                        "sent to {out_dst}, not a backend: {}",
                        ctx()
                    );
                    assert_eq!(
                        out[0..6],
                        neighbour_mac(out_dst),
                        "wrong next-hop MAC: {}",
                        ctx()
                    );
                    if out[14 + 9] == 6 && out.len() >= 54 {
                        let vport = u16::from_be_bytes([frame[36], frame[37]]);
                        let cport = u16::from_be_bytes([frame[34], frame[35]]);
                        flows.insert((src_of(&frame).unwrap(), cport, vport), out_dst);
                    }
                } else {
                    assert_eq!(
                        src_of(&out),
                        Some(VIP),
                        "a reply leaves from the VIP: {}",
                        ctx()
                    );
                }
                if verify_checksums(&frame).is_ok() {
                    verify_checksums(&out).unwrap_or_else(|e| panic!("{e}: {}", ctx()));
                }
            }
            other => panic!("unexpected action {other}: {}", ctx()),
        }
        if !to_vip && !from_backend {
            assert_eq!(
                (action, &out),
                (XDP_PASS, &frame),
                "not ours, must pass unchanged: {}",
                ctx()
            );
        }
    }
    let actions = bed.dp.reader().action_counts().unwrap();
    println!("{PACKETS} packets: {tally:?}; actions {actions:?}");
    let forwarded: u64 = actions
        .iter()
        .filter(|(a, _)| *a == "redirect" || *a == "tx")
        .map(|(_, n)| n)
        .sum();
    assert!(
        forwarded > (PACKETS / 5) as u64,
        "the generator must exercise real flows, forwarded {forwarded}"
    );
    assert!(
        flows.len() > 100,
        "replies were generated for {} flows",
        flows.len()
    );
}
