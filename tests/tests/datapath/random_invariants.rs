//! Thousands of generated packets (fixed seed): real flows in both directions, traffic that is
//! not the balancer's, and garbage (truncations, flipped header bytes, random frames), with
//! reloads that add, remove and re-address backends (ids are few, so they are reused at once)
//! and bursts of spoofed SYNs against small tables in between. After every packet the datapath's
//! invariants must hold:
//! - a packet that is not to a VIP and not a reply of a balanced flow passes unchanged;
//! - a PASS never changes a packet (every neighbour is known here, so nothing is passed
//!   translated);
//! - a DROP only ever hits traffic addressed to a VIP;
//! - a forwarded packet to a backend goes to one of its service's current backends, with that
//!   backend's MAC;
//! - no packet leaves with an address pair that no live flow owns: one to a backend carries
//!   exactly the reply tuple (reversed) of the flow its client tuple names, that flow's backend
//!   id names that very backend of that service, and the reply entry points back at the flow
//!   (or the flow derives its replies and `SERVED_BY` names its VIP and port for that backend
//!   port); a reply leaves with exactly the client tuple (reversed) of the flow that owns its
//!   entry (or that `SERVED_BY` names);
//!
//! `alt` (VIP:8443 on web's backends' port 443) comes and goes with reloads, so web's backend
//! ports go from serving VIP:443 alone (flows derive their replies) to serving two VIP ports
//! (flows claim reply entries) and back, with flows of both kinds alive across the change.
//! - a forwarded packet whose input had valid checksums leaves with valid checksums;
//! - the program never aborts.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_common::{
    addr::{FAMILY_V4, PROTO_TCP, PROTO_UDP},
    backend::BackendState,
    flow::{FlowKey, REPLY_DERIVED, SERVES_ALONE, ServedBy},
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use xnlb::datapath::DatapathSizes;
use xnlb_tests::{bed::*, packets::*};

const PACKETS: usize = 8000;
/// A reload or a flood every this many packets.
const EVENT_EVERY: usize = 400;
/// Spoofed SYNs in one flood: more than the half-open table holds.
const FLOOD: usize = 1500;
/// Backend ids the id book may use: room for the services at their largest (6 + 4 + 2) and two
/// more, so ids are soon handed out again.
const IDS: u32 = 14;

/// What the test knows: each service's backends now, and every (client address, client port,
/// backend port, backend) it saw forwarded, for generating replies; old ones too, so that
/// backends answer for flows that have since moved or ended.
struct Model {
    web: Vec<Ipv4Addr>,
    rpc: Vec<Ipv4Addr>,
    /// On VIP:8443, to port 443 of these (empty: no `alt`).
    alt: Vec<Ipv4Addr>,
    seen: HashSet<(Ipv4Addr, u16, u16, Ipv4Addr)>,
    flows: Vec<(Ipv4Addr, u16, u16, Ipv4Addr)>,
    /// TCP packets forwarded to a backend on flows that claimed their reply tuple, and on
    /// flows that derive their replies.
    kinds: [usize; 2],
}

impl Model {
    /// The service a client packet to VIP:`port` belongs to, and its backends.
    fn service(&self, proto: u8, port: u16) -> Option<(&'static str, &[Ipv4Addr])> {
        match (proto, port) {
            (PROTO_TCP, 443) => Some(("web", &self.web)),
            (PROTO_TCP, 8443) if !self.alt.is_empty() => Some(("alt", &self.alt)),
            (PROTO_UDP, 1024..) => Some(("rpc", &self.rpc)),
            _ => None,
        }
    }
}

fn install(bed: &mut Bed, model: &Model) {
    bed.install(service("web", 443, &model.web));
    let mut rpc = service("rpc", 1024, &model.rpc);
    rpc.ports = vec![xnlb::config::PortRange {
        lo: 1024,
        hi: 65535,
    }];
    rpc.protocol = xnlb::config::Protocol::Udp;
    bed.install(rpc);
    if model.alt.is_empty() {
        bed.program.remove("alt");
        bed.program.apply(&mut bed.dp);
    } else {
        let mut alt = service("alt", 8443, &model.alt);
        for b in &mut alt.backends {
            b.port = Some(443);
        }
        bed.install(alt);
    }
}

/// The IPv4 TCP/UDP tuple of a frame, as the datapath keys it.
fn tuple(frame: &[u8]) -> Option<FlowKey> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        return None;
    };
    let (proto, src_port, dst_port) = match p.transport? {
        TransportSlice::Tcp(t) => (PROTO_TCP, t.source_port(), t.destination_port()),
        TransportSlice::Udp(u) => (PROTO_UDP, u.source_port(), u.destination_port()),
        _ => return None,
    };
    let word = |a: Ipv4Addr| [u32::from_ne_bytes(a.octets()), 0, 0, 0];
    Some(FlowKey {
        src: word(ip.header().source_addr()),
        dst: word(ip.header().destination_addr()),
        src_port: src_port.to_be(),
        dst_port: dst_port.to_be(),
        proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    })
}

/// `k` seen from the other end.
fn reversed(k: &FlowKey) -> FlowKey {
    FlowKey {
        src: k.dst,
        dst: k.src,
        src_port: k.dst_port,
        dst_port: k.src_port,
        ..*k
    }
}

fn addr(word: &[u32; 4]) -> Ipv4Addr {
    Ipv4Addr::from(word[0].to_ne_bytes())
}

/// What `SERVED_BY` holds for the backend port that sends `reply`.
fn served_by(bed: &Bed, reply: &FlowKey) -> Option<ServedBy> {
    let at = lb_common::flow::BackendPort {
        addr: reply.src,
        port: reply.src_port,
        proto: reply.proto,
        _pad: 0,
    };
    let served = bed.dp.served_by().expect("SERVED_BY");
    served.into_iter().find(|(k, _)| *k == at).map(|(_, v)| v)
}

/// The client tuple a backend's `reply` answers, by `served`.
fn derived_client(served: &ServedBy, reply: &FlowKey) -> FlowKey {
    FlowKey {
        src: reply.dst,
        dst: [served.vip, 0, 0, 0],
        src_port: reply.dst_port,
        dst_port: served.vip_port,
        ..*reply
    }
}

/// Some live flow owns `out`, the translation of client packet `input`: the flow its tuple
/// names (established or half-open) translates to exactly `out`'s tuple, names under its
/// backend id the backend of `service` it was sent to, and holds the reply entry for it, or
/// derives its replies from a `SERVED_BY` entry that leads back to it.
fn owned_towards_backend(bed: &Bed, service: &str, input: &FlowKey, out: &FlowKey) -> bool {
    let r = bed.dp.reader();
    [false, true].into_iter().any(|half_open| {
        let Some(flow) = r.flow(half_open, input).expect("flow lookup") else {
            return false;
        };
        let backend = bed.dp.backend(flow.backend_id).expect("backend");
        let owns_reply = if flow.flags & REPLY_DERIVED != 0 {
            served_by(bed, &flow.reply).is_some_and(|v| derived_client(&v, &flow.reply) == *input)
        } else {
            r.reply(half_open, &flow.reply)
                .expect("reply lookup")
                .is_some_and(|owner| owner.client == *input)
        };
        flow.reply == reversed(out)
            && backend.is(bed.service_id(service), &flow.reply.src)
            && owns_reply
    })
}

/// Some live flow owns `out`, the translation of backend packet `input`: the reply entry of
/// `input`'s tuple names a flow that points back at it, or `SERVED_BY` names such a flow (one
/// that derives its replies, or any where the backend port serves its VIP and port alone); and
/// `out` carries that flow's client tuple, reversed.
fn owned_towards_client(bed: &Bed, input: &FlowKey, out: &FlowKey) -> bool {
    let r = bed.dp.reader();
    let derived = served_by(bed, input).is_some_and(|v| {
        let client = derived_client(&v, input);
        reversed(&client) == *out
            && [false, true].into_iter().any(|half_open| {
                r.flow(half_open, &client)
                    .expect("flow lookup")
                    .is_some_and(|f| {
                        f.reply == *input
                            && (v.flags & SERVES_ALONE != 0 || f.flags & REPLY_DERIVED != 0)
                    })
            })
    });
    derived
        || [false, true].into_iter().any(|half_open| {
            let Some(owner) = r.reply(half_open, input).expect("reply lookup") else {
                return false;
            };
            let flow = r.flow(half_open, &owner.client).expect("flow lookup");
            flow.is_some_and(|f| f.reply == *input) && reversed(&owner.client) == *out
        })
}

/// What the maps hold for client tuple `key`, for a failure message.
fn state_of(bed: &Bed, key: &FlowKey) -> String {
    let r = bed.dp.reader();
    let mut out = String::new();
    for half_open in [false, true] {
        let flow = r.flow(half_open, key).expect("flow lookup");
        let reply = flow.map(|f| r.reply(half_open, &f.reply).expect("reply lookup"));
        out += &format!(
            "\n  {}: flow {flow:?}\n    its reply entry {reply:?}",
            if half_open {
                "half-open"
            } else {
                "established"
            }
        );
    }
    out
}

/// Runs one frame and checks every invariant; records forwarded TCP flows in `model`.
fn check(bed: &Bed, model: &mut Model, i: usize, kind: &str, ingress: Iface, frame: &[u8]) {
    let (action, out) = bed.run(ingress, frame);
    let ctx = || format!("packet {i} ({kind}): {frame:02x?}");
    let input = tuple(frame);
    let to_vip = frame.len() >= 34
        && frame[12..14] == [0x08, 0x00]
        && Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]) == VIP;
    let all_backends: Vec<Ipv4Addr> = (1..=MAX_BED_BACKENDS).map(backend_ip).collect();
    let from_backend = frame.len() >= 34
        && frame[12..14] == [0x08, 0x00]
        && all_backends.contains(&Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]));

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
            let input = input.unwrap_or_else(|| panic!("forwarded a non-TCP/UDP: {}", ctx()));
            let out_key = tuple(&out).expect("forwarded TCP/UDP");
            if to_vip {
                let (name, current) = model
                    .service(input.proto, u16::from_be(input.dst_port))
                    .unwrap_or_else(|| panic!("forwarded to no service: {}", ctx()));
                let out_dst = addr(&out_key.dst);
                assert!(
                    current.contains(&out_dst),
                    "sent to {out_dst}, not one of {name}'s backends {current:?}: {}",
                    ctx()
                );
                assert_eq!(
                    out[0..6],
                    neighbour_mac(out_dst),
                    "wrong next-hop MAC: {}",
                    ctx()
                );
                assert!(
                    owned_towards_backend(bed, name, &input, &out_key),
                    "no live flow owns {out_key:?}: {}{}",
                    ctx(),
                    state_of(bed, &input)
                );
                if input.proto == PROTO_TCP {
                    let pair = (
                        addr(&input.src),
                        u16::from_be(input.src_port),
                        u16::from_be(out_key.dst_port),
                        out_dst,
                    );
                    if model.seen.insert(pair) {
                        model.flows.push(pair);
                    }
                    let r = bed.dp.reader();
                    let flow = r.flow(false, &input).expect("flow lookup");
                    let flow = flow.or_else(|| r.flow(true, &input).expect("flow lookup"));
                    let derived = flow.is_some_and(|f| f.flags & REPLY_DERIVED != 0);
                    model.kinds[derived as usize] += 1;
                }
            } else {
                assert_eq!(
                    addr(&out_key.src),
                    VIP,
                    "a reply leaves from the VIP: {}",
                    ctx()
                );
                assert!(
                    owned_towards_client(bed, &input, &out_key),
                    "no live flow owns {out_key:?}: {}",
                    ctx()
                );
            }
            if verify_checksums(frame).is_ok() {
                verify_checksums(&out).unwrap_or_else(|e| panic!("{e}: {}", ctx()));
            }
        }
        other => panic!("unexpected action {other}: {}", ctx()),
    }
    if !to_vip && !from_backend {
        assert_eq!(
            (action, out.as_slice()),
            (XDP_PASS, frame),
            "not ours, must pass unchanged: {}",
            ctx()
        );
    }
}

/// A reload: one service gains a backend it lacks or loses one (never its last), or `alt` comes
/// or goes. Backends are named by position, so a removal also re-addresses the names after it.
fn reload(bed: &mut Bed, model: &mut Model, rng: &mut SmallRng) {
    if rng.random_bool(0.25) {
        model.alt = if model.alt.is_empty() {
            model.web.iter().copied().take(2).collect()
        } else {
            Vec::new()
        };
        install(bed, model);
        return;
    }
    let (set, pool): (&mut Vec<Ipv4Addr>, Vec<Ipv4Addr>) = if rng.random_bool(0.6) {
        (&mut model.web, (1..=6).map(backend_ip).collect())
    } else {
        (&mut model.rpc, (5..=8).map(backend_ip).collect())
    };
    let missing: Vec<Ipv4Addr> = pool.into_iter().filter(|b| !set.contains(b)).collect();
    if set.len() > 1 && (missing.is_empty() || rng.random_bool(0.5)) {
        set.remove(rng.random_range(0..set.len()));
    } else if !missing.is_empty() {
        set.push(missing[rng.random_range(0..missing.len())]);
    }
    install(bed, model);
}

#[test]
fn datapath_invariants_hold_for_generated_traffic() {
    let mut rng = SmallRng::seed_from_u64(0x786e_6c62);
    let mut bed = Bed::with_sizes(DatapathSizes {
        flows: 2048,
        half_open: 1024,
        ring_services: 4,
    });
    bed.program.backend_capacity = IDS;
    let mut model = Model {
        web: (1..=4).map(backend_ip).collect(),
        rpc: vec![backend_ip(5), backend_ip(6)],
        alt: Vec::new(),
        kinds: [0; 2],
        seen: HashSet::new(),
        flows: Vec::new(),
    };
    install(&mut bed, &model);
    let mut tally: HashMap<&str, usize> = HashMap::new();

    for i in 0..PACKETS {
        if i % EVENT_EVERY == EVENT_EVERY - 1 {
            if rng.random_bool(0.25) {
                *tally.entry("flood").or_default() += 1;
                for n in 0..FLOOD {
                    let spoofed = (client_ip(1000 + (n % 20_000) as u16), 1024 + i as u16);
                    let syn = bed.from_client(Pkt::tcp(spoofed, (VIP, 443), SYN));
                    check(&bed, &mut model, i, "flood", bed.client_if, &syn.bytes());
                }
            } else if rng.random_bool(0.3) {
                // A web backend goes down, or comes back (health, or an administrator).
                *tally.entry("state").or_default() += 1;
                let n = rng.random_range(0..model.web.len());
                let state = [BackendState::Down, BackendState::Up][rng.random_range(0..2)];
                bed.set_state("web", &format!("b{}", n + 1), state);
            } else {
                *tally.entry("reload").or_default() += 1;
                reload(&mut bed, &mut model, &mut rng);
            }
        }
        // Half the clients come from a small pool, so that tuples come round again: after a
        // FIN, a reload, a backend going down.
        let client = if rng.random_bool(0.5) {
            (
                client_ip(rng.random_range(1..20)),
                rng.random_range(40_000..40_016),
            )
        } else {
            (
                client_ip(rng.random_range(1..400)),
                rng.random_range(1024..65535),
            )
        };
        let (ingress, frame, kind) = match rng.random_range(0..10) {
            0..=2 => {
                let flags = if rng.random_bool(0.3) {
                    SYN
                } else {
                    [ACK, FIN_ACK, RST][rng.random_range(0..3)]
                };
                let port = if rng.random_bool(0.7) { 443 } else { 8443 };
                (
                    bed.client_if,
                    bed.from_client(Pkt::tcp(client, (VIP, port), flags))
                        .bytes(),
                    "tcp to VIP",
                )
            }
            3 => (
                bed.client_if,
                bed.from_client(Pkt::udp(client, (VIP, rng.random_range(1..65535))))
                    .bytes(),
                "udp to VIP",
            ),
            4 if !model.flows.is_empty() => {
                let (c, cport, vport, backend) =
                    model.flows[rng.random_range(0..model.flows.len())];
                let flags = [SYN_ACK, ACK, FIN_ACK][rng.random_range(0..3)];
                (
                    bed.server_if,
                    bed.from_backend(Pkt::tcp((backend, vport), (c, cport), flags), bed.server_if)
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
        check(&bed, &mut model, i, kind, ingress, &frame);
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
        model.kinds.iter().all(|&n| n > 100),
        "flows that claim and flows that derive their replies, by packets: {:?}",
        model.kinds
    );
    assert!(
        model.flows.len() > 100,
        "replies were generated for {} flows",
        model.flows.len()
    );
    assert!(
        tally.get("reload").is_some_and(|&n| n >= 5) && tally.get("flood").is_some_and(|&n| n >= 2),
        "the generator must exercise reloads and floods: {tally:?}"
    );
}
