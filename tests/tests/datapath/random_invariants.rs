//! Thousands of generated packets (fixed seed), IPv4 and IPv6 mixed over one dual-stack
//! configuration (each version has its own services on its own VIP; they share every table):
//! real flows in both directions, traffic that is not the balancer's, and garbage (truncations,
//! flipped header bytes, random frames), with reloads that add, remove and re-address backends
//! (ids are few, so they are reused at once) and bursts of spoofed SYNs against small tables in
//! between. After every packet the datapath's invariants must hold:
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
//! - a forwarded packet whose input had valid checksums leaves with valid checksums;
//! - a packet leaves in the IP version it came in;
//! - the program never aborts.
//!
//! `alt` (VIP:8443 on web's backends' port 443) comes and goes with reloads, so web's backend
//! ports go from serving VIP:443 alone (flows derive their replies) to serving two VIP ports
//! (flows claim reply entries) and back, with flows of both kinds alive across the change.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_common::{
    addr::{self as key_addr, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP},
    backend::BackendState,
    flow::{FlowKey, REPLY_DERIVED, SERVES_ALONE, ServedBy},
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use xnlb::{datapath::DatapathSizes, model::port_rules::ip_of};
use xnlb_tests::{bed::*, packets::*};

const PACKETS: usize = 8000;
/// A reload or a flood every this many packets.
const EVENT_EVERY: usize = 400;
/// Spoofed SYNs in one flood: more than the half-open table holds.
const FLOOD: usize = 1500;
/// Backend ids the id book may use: room for each version's services at their largest
/// (6 + 4 + 2, twice) and two more, so ids are soon handed out again.
const IDS: u32 = 26;

/// The addresses one IP version's side of the test uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Version {
    V4,
    V6,
}

impl Version {
    fn vip(self) -> IpAddr {
        match self {
            Version::V4 => VIP.into(),
            Version::V6 => VIP6.into(),
        }
    }

    /// Backend `n` (1-based; the bed knows each one's neighbour).
    fn backend(self, n: usize) -> IpAddr {
        match self {
            Version::V4 => backend_ip(n).into(),
            Version::V6 => backend_ip6(n).into(),
        }
    }

    /// Remote client `n`, of the clients' pool (`pool` 0) or the flood's (1).
    fn client(self, pool: u16, n: u16) -> IpAddr {
        match self {
            Version::V4 => client_ip(pool * 1000 + n % 20_000).into(),
            Version::V6 => remote_client6(pool + 1, n).into(),
        }
    }

    /// An address beside the VIP's that is the balancer's neither, mostly.
    fn stranger(self, rng: &mut SmallRng) -> IpAddr {
        match self {
            Version::V4 => Ipv4Addr::new(198, 18, rng.random_range(0..=3), rng.random()).into(),
            Version::V6 => {
                Ipv6Addr::new(0xfd00, rng.random_range(0..=3), 0, 0, 0, 0, 0, rng.random()).into()
            }
        }
    }

    /// This version's name of a service (both versions' services share one config).
    fn name(self, service: &str) -> String {
        match self {
            Version::V4 => service.to_string(),
            Version::V6 => format!("{service}6"),
        }
    }

    fn ethertype(self) -> [u8; 2] {
        match self {
            Version::V4 => [0x08, 0x00],
            Version::V6 => [0x86, 0xdd],
        }
    }
}

/// What the test knows of one IP version: each service's backends now, and every (client
/// address, client port, backend port, backend) it saw forwarded, for generating replies; old
/// ones too, so that backends answer for flows that have since moved or ended.
struct Side {
    version: Version,
    web: Vec<IpAddr>,
    rpc: Vec<IpAddr>,
    /// On VIP:8443, to port 443 of these (empty: no `alt`).
    alt: Vec<IpAddr>,
    seen: HashSet<(IpAddr, u16, u16, IpAddr)>,
    flows: Vec<(IpAddr, u16, u16, IpAddr)>,
    /// TCP packets forwarded to a backend on flows that claimed their reply tuple, and on
    /// flows that derive their replies.
    kinds: [usize; 2],
}

impl Side {
    /// IPv4's side starts without `alt` (web's flows derive their replies), IPv6's with it
    /// (they claim them), so that each kind is there from the first packet.
    fn new(version: Version) -> Self {
        let web: Vec<IpAddr> = (1..=4).map(|n| version.backend(n)).collect();
        let alt = match version {
            Version::V4 => Vec::new(),
            Version::V6 => web[..2].to_vec(),
        };
        Self {
            version,
            web,
            rpc: vec![version.backend(5), version.backend(6)],
            alt,
            kinds: [0; 2],
            seen: HashSet::new(),
            flows: Vec::new(),
        }
    }

    /// The service a client packet to VIP:`port` belongs to, and its backends.
    fn service(&self, proto: u8, port: u16) -> Option<(String, &[IpAddr])> {
        let (name, backends) = match (proto, port) {
            (PROTO_TCP, 443) => ("web", &self.web),
            (PROTO_TCP, 8443) if !self.alt.is_empty() => ("alt", &self.alt),
            (PROTO_UDP, 1024..) => ("rpc", &self.rpc),
            _ => return None,
        };
        Some((self.version.name(name), backends))
    }
}

/// Both versions' sides, indexed by `Version as usize`.
type Model = [Side; 2];

/// Programs `side`'s services as they now are.
fn install(bed: &mut Bed, side: &Side) {
    let (v, vip) = (side.version, side.version.vip());
    bed.install(service_at(&v.name("web"), vip, 443, &side.web));
    let mut rpc = service_at(&v.name("rpc"), vip, 1024, &side.rpc);
    rpc.ports = vec![xnlb::config::PortRange {
        lo: 1024,
        hi: 65535,
    }];
    rpc.protocol = xnlb::config::Protocol::Udp;
    bed.install(rpc);
    if side.alt.is_empty() {
        bed.program.remove(&v.name("alt"));
        bed.program.apply(&mut bed.dp);
    } else {
        let mut alt = service_at(&v.name("alt"), vip, 8443, &side.alt);
        for b in &mut alt.backends {
            b.port = Some(443);
        }
        bed.install(alt);
    }
}

/// The TCP/UDP tuple of a frame of either version, as the datapath keys it.
fn tuple(frame: &[u8]) -> Option<FlowKey> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst, family) = match p.net? {
        NetSlice::Ipv4(ip) => (
            key_addr::v4(ip.header().source()),
            key_addr::v4(ip.header().destination()),
            FAMILY_V4,
        ),
        NetSlice::Ipv6(ip) => (
            key_addr::v6(ip.header().source()),
            key_addr::v6(ip.header().destination()),
            FAMILY_V6,
        ),
        _ => return None,
    };
    let (proto, src_port, dst_port) = match p.transport? {
        TransportSlice::Tcp(t) => (PROTO_TCP, t.source_port(), t.destination_port()),
        TransportSlice::Udp(u) => (PROTO_UDP, u.source_port(), u.destination_port()),
        _ => return None,
    };
    Some(FlowKey {
        src,
        dst,
        src_port: src_port.to_be(),
        dst_port: dst_port.to_be(),
        proto,
        family,
        _pad: [0; 2],
    })
}

/// A frame's IP version and its source and destination addresses, read from the bytes where
/// they would be (garbage included); `None` when it is not IP or too short.
fn addresses(frame: &[u8]) -> Option<(Version, IpAddr, IpAddr)> {
    let at = |range: std::ops::Range<usize>| frame.get(range);
    match frame.get(12..14)? {
        [0x08, 0x00] => {
            let src: [u8; 4] = at(26..30)?.try_into().ok()?;
            let dst: [u8; 4] = at(30..34)?.try_into().ok()?;
            Some((Version::V4, src.into(), dst.into()))
        }
        [0x86, 0xdd] => {
            let src: [u8; 16] = at(22..38)?.try_into().ok()?;
            let dst: [u8; 16] = at(38..54)?.try_into().ok()?;
            Some((Version::V6, src.into(), dst.into()))
        }
        _ => None,
    }
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
        dst: served.vip,
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
        flow.reply == out.reversed()
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
        client.reversed() == *out
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
            flow.is_some_and(|f| f.reply == *input) && owner.client.reversed() == *out
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
    let ip = addresses(frame);
    let to_vip = ip.is_some_and(|(v, _, dst)| dst == v.vip());
    let from_backend =
        ip.is_some_and(|(v, src, _)| (1..=MAX_BED_BACKENDS).any(|n| v.backend(n) == src));

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
            assert_eq!(
                out_key.family,
                input.family,
                "left in another IP version: {}",
                ctx()
            );
            let side = &mut model[ip.expect("IP").0 as usize];
            if to_vip {
                let (name, current) = side
                    .service(input.proto, u16::from_be(input.dst_port))
                    .unwrap_or_else(|| panic!("forwarded to no service: {}", ctx()));
                let out_dst = ip_of(&out_key.dst, out_key.family);
                assert!(
                    current.contains(&out_dst),
                    "sent to {out_dst}, not one of {name}'s backends {current:?}: {}",
                    ctx()
                );
                assert_eq!(
                    out[0..6],
                    neighbour_mac_of(out_dst),
                    "wrong next-hop MAC: {}",
                    ctx()
                );
                assert!(
                    owned_towards_backend(bed, &name, &input, &out_key),
                    "no live flow owns {out_key:?}: {}{}",
                    ctx(),
                    state_of(bed, &input)
                );
                if input.proto == PROTO_TCP {
                    let pair = (
                        ip_of(&input.src, input.family),
                        u16::from_be(input.src_port),
                        u16::from_be(out_key.dst_port),
                        out_dst,
                    );
                    if side.seen.insert(pair) {
                        side.flows.push(pair);
                    }
                    let r = bed.dp.reader();
                    let flow = r.flow(false, &input).expect("flow lookup");
                    let flow = flow.or_else(|| r.flow(true, &input).expect("flow lookup"));
                    let derived = flow.is_some_and(|f| f.flags & REPLY_DERIVED != 0);
                    side.kinds[derived as usize] += 1;
                }
            } else {
                assert_eq!(
                    ip_of(&out_key.src, out_key.family),
                    side.version.vip(),
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

/// A reload of one version's services: one gains a backend it lacks or loses one (never its
/// last), or `alt` comes or goes. Backends are named by position, so a removal also
/// re-addresses the names after it.
fn reload(bed: &mut Bed, side: &mut Side, rng: &mut SmallRng) {
    let v = side.version;
    if rng.random_bool(0.25) {
        side.alt = if side.alt.is_empty() {
            side.web.iter().copied().take(2).collect()
        } else {
            Vec::new()
        };
        install(bed, side);
        return;
    }
    let (set, pool): (&mut Vec<IpAddr>, Vec<IpAddr>) = if rng.random_bool(0.6) {
        (&mut side.web, (1..=6).map(|n| v.backend(n)).collect())
    } else {
        (&mut side.rpc, (5..=8).map(|n| v.backend(n)).collect())
    };
    let missing: Vec<IpAddr> = pool.into_iter().filter(|b| !set.contains(b)).collect();
    if set.len() > 1 && (missing.is_empty() || rng.random_bool(0.5)) {
        set.remove(rng.random_range(0..set.len()));
    } else if !missing.is_empty() {
        set.push(missing[rng.random_range(0..missing.len())]);
    }
    install(bed, side);
}

/// One generated packet of version `v`: its ingress, its bytes and its kind.
fn generate(bed: &Bed, side: &Side, rng: &mut SmallRng) -> (Iface, Vec<u8>, &'static str) {
    let v = side.version;
    let vip = v.vip();
    // Half the clients come from a small pool, so that tuples come round again: after a FIN, a
    // reload, a backend going down.
    let client = if rng.random_bool(0.5) {
        (
            v.client(0, rng.random_range(1..20)),
            rng.random_range(40_000..40_016),
        )
    } else {
        (
            v.client(0, rng.random_range(1..400)),
            rng.random_range(1024..65535),
        )
    };
    match rng.random_range(0..10) {
        0..=2 => {
            let flags = if rng.random_bool(0.3) {
                SYN
            } else {
                [ACK, FIN_ACK, RST][rng.random_range(0..3)]
            };
            let port = if rng.random_bool(0.7) { 443 } else { 8443 };
            (
                bed.client_if,
                bed.from_client(Pkt::tcp(client, (vip, port), flags))
                    .bytes(),
                "tcp to VIP",
            )
        }
        3 => (
            bed.client_if,
            bed.from_client(Pkt::udp(client, (vip, rng.random_range(1..65535))))
                .bytes(),
            "udp to VIP",
        ),
        4 if !side.flows.is_empty() => {
            let (c, cport, vport, backend) = side.flows[rng.random_range(0..side.flows.len())];
            let flags = [SYN_ACK, ACK, FIN_ACK][rng.random_range(0..3)];
            (
                bed.server_if,
                bed.from_backend(Pkt::tcp((backend, vport), (c, cport), flags), bed.server_if)
                    .bytes(),
                "reply",
            )
        }
        4 | 5 => {
            let dst = v.stranger(rng);
            let pkt = if rng.random_bool(0.5) {
                Pkt::tcp(client, (dst, 443), ACK)
            } else {
                Pkt::udp(client, (dst, 53))
            };
            (bed.client_if, bed.from_client(pkt).bytes(), "not ours")
        }
        6 | 7 => {
            let mut f = bed.from_client(Pkt::tcp(client, (vip, 443), SYN)).bytes();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(12..f.len());
                f[at] = rng.random();
            }
            (bed.client_if, f, "flipped header bytes")
        }
        8 => {
            let f = bed.from_client(Pkt::tcp(client, (vip, 443), SYN)).bytes();
            let cut = rng.random_range(14..f.len());
            (bed.client_if, f[..cut].to_vec(), "truncated")
        }
        _ => {
            let len = rng.random_range(14..200);
            let mut f: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) {
                f[12..14].copy_from_slice(&v.ethertype());
            }
            (bed.client_if, f, "random frame")
        }
    }
}

#[test]
fn datapath_invariants_hold_for_generated_traffic() {
    let mut rng = SmallRng::seed_from_u64(0x786e_6c62);
    let mut bed = Bed::with_sizes(DatapathSizes {
        flows: 2048,
        half_open: 1024,
        ring_services: 8,
        ..Default::default()
    });
    bed.program.backend_capacity = IDS;
    let mut model: Model = [Side::new(Version::V4), Side::new(Version::V6)];
    for side in &model {
        install(&mut bed, side);
    }
    let mut tally: HashMap<(&str, Version), usize> = HashMap::new();

    for i in 0..PACKETS {
        // Each packet, and each event, is of one version or the other.
        let v = [Version::V4, Version::V6][rng.random_range(0..2)];
        if i % EVENT_EVERY == EVENT_EVERY - 1 {
            if rng.random_bool(0.25) {
                *tally.entry(("flood", v)).or_default() += 1;
                for n in 0..FLOOD {
                    let spoofed = (v.client(1, n as u16), 1024 + i as u16);
                    let syn = bed.from_client(Pkt::tcp(spoofed, (v.vip(), 443), SYN));
                    check(&bed, &mut model, i, "flood", bed.client_if, &syn.bytes());
                }
            } else if rng.random_bool(0.3) {
                // A web backend goes down, or comes back (health, or an administrator).
                *tally.entry(("state", v)).or_default() += 1;
                let n = rng.random_range(0..model[v as usize].web.len());
                let state = [BackendState::Down, BackendState::Up][rng.random_range(0..2)];
                bed.set_state(&v.name("web"), &format!("b{}", n + 1), state);
            } else {
                *tally.entry(("reload", v)).or_default() += 1;
                reload(&mut bed, &mut model[v as usize], &mut rng);
            }
        }
        let (ingress, frame, kind) = generate(&bed, &model[v as usize], &mut rng);
        *tally.entry((kind, v)).or_default() += 1;
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
    let [v4, v6] = &model;
    println!(
        "TCP packets to backends on flows that claim / derive their replies: IPv4 {:?}, IPv6 {:?}; flows answered: {} / {}",
        v4.kinds,
        v6.kinds,
        v4.flows.len(),
        v6.flows.len()
    );
    for side in &model {
        assert!(
            side.kinds.iter().all(|&n| n > 100),
            "{:?}: flows that claim and flows that derive their replies, by packets: {:?}",
            side.version,
            side.kinds
        );
        assert!(
            side.flows.len() > 100,
            "{:?}: replies were generated for {} flows",
            side.version,
            side.flows.len()
        );
    }
    for v in [Version::V4, Version::V6] {
        assert!(
            tally.get(&("reload", v)).is_some_and(|&n| n >= 3)
                && tally.get(&("flood", v)).is_some_and(|&n| n >= 1),
            "the generator must exercise reloads and floods of {v:?}: {tally:?}"
        );
    }
}
