//! Held routing: one-arm on a host with IPv4 forwarding off, as one-arm balancers are usually
//! set up. The kernel's FIB refuses every lookup there (`FWD_DISABLED`), so the controller
//! holds each backend's next hop (`host::next_hops`, the same resolver the bed uses) and a
//! client is answered the way its packets came: out of the interface they arrived on, to the
//! MAC that sent them.

use std::net::Ipv4Addr;

use lb_common::stats::{FlowEvent, PassReason};
use xnlb_tests::{bed::*, packets::*};

/// A sender the FIB knows nothing about: the clients' route says `ROUTER`, so a reply to this
/// MAC can only come from the frame itself.
const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0x77, 0, 0x01];
/// Backends behind a gateway on the client-side subnet (a routed server network).
const ROUTED_BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 10);
/// A one-arm backend address nobody has resolved (outside the bed's static neighbours).
const NEW_BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A bed balancing `web` on :443 over `backend` in one-arm, with forwarding off.
fn held_bed(backend: Ipv4Addr) -> Bed {
    let mut bed = Bed::new();
    bed.one_arm_held((30_000, 30_999));
    bed.install(service("web", 443, &[backend]));
    bed
}

/// The one flow's SNAT source (address, port).
fn snat_of_the_flow(bed: &Bed) -> (Ipv4Addr, u16) {
    let reader = bed.dp.reader();
    let mut flows = reader.flows().expect("flows");
    flows.extend(reader.half_open_flows().expect("half-open flows"));
    assert_eq!(flows.len(), 1, "one flow");
    let reply = flows[0].1.reply;
    (
        Ipv4Addr::from(lb_common::addr::v4_octets(&reply.dst)),
        u16::from_be(reply.dst_port),
    )
}

/// `pkt` from the client as the balancer should send it to `backend`:443 at `mac`.
fn snatted(bed: &Bed, pkt: &Pkt, backend: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    pkt.clone()
        .addressed(snat_of_the_flow(bed), (backend, 443))
        .ttl(pkt.ttl - 1)
        .macs(bed.client_if.mac, mac)
        .bytes()
}

/// A backend's packet to the flow's SNAT source, arriving from `mac`.
fn from_backend_at(bed: &Bed, backend: Ipv4Addr, mac: [u8; 6], flags: TcpFlags) -> Pkt {
    Pkt::tcp((backend, 443), snat_of_the_flow(bed), flags).macs(mac, bed.client_if.mac)
}

/// `reply` un-NATed towards `client`, out of cli0 to `mac`.
fn unnatted(bed: &Bed, reply: &Pkt, client: (Ipv4Addr, u16), mac: [u8; 6]) -> Vec<u8> {
    reply
        .clone()
        .addressed((VIP, 443), client)
        .ttl(reply.ttl - 1)
        .macs(bed.client_if.mac, mac)
        .bytes()
}

#[test]
fn without_held_next_hops_a_host_that_does_not_forward_balances_nothing() {
    // What one-arm did before held routing (issue 13, finding 4): the FIB refuses.
    let mut bed = Bed::new();
    bed.forwarding(false);
    bed.one_arm((30_000, 30_999));
    bed.install(service("web", 443, &[one_arm_backend_ip(1)]));
    let syn = bed.from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN));
    assert_eq!(bed.run(bed.client_if, &syn.bytes()).0, XDP_PASS);
    assert_eq!(bed.passes(PassReason::NoFastRoute), 1);
}

#[test]
fn one_arm_with_forwarding_off_balances_on_held_next_hops() {
    let backend = one_arm_backend_ip(1);
    let bed = held_bed(backend);
    let client = (client_ip(1), 40_000);
    let syn = Pkt::tcp(client, (VIP, 443), SYN).macs(SENDER_MAC, bed.client_if.mac);
    assert_eq!(
        bed.run(bed.client_if, &syn.bytes()),
        (XDP_TX, snatted(&bed, &syn, backend, neighbour_mac(backend))),
        "to the backend's MAC the controller resolved"
    );
    let syn_ack = from_backend_at(&bed, backend, neighbour_mac(backend), SYN_ACK);
    assert_eq!(
        bed.run(bed.client_if, &syn_ack.bytes()),
        (XDP_TX, unnatted(&bed, &syn_ack, client, SENDER_MAC)),
        "back to the MAC the SYN came from, not the FIB's router"
    );
    let ack = Pkt::tcp(client, (VIP, 443), ACK).macs(SENDER_MAC, bed.client_if.mac);
    assert_eq!(
        bed.run(bed.client_if, &ack.bytes()),
        (XDP_TX, snatted(&bed, &ack, backend, neighbour_mac(backend)))
    );
    assert_eq!(bed.dp.reader().flows().unwrap().len(), 1, "established");
    let data = from_backend_at(&bed, backend, neighbour_mac(backend), ACK);
    assert_eq!(
        bed.run(bed.client_if, &data.bytes()),
        (XDP_TX, unnatted(&bed, &data, client, SENDER_MAC)),
        "the established flow keeps the way back it had at its SYN"
    );
    for reason in [
        PassReason::NoFastRoute,
        PassReason::NoNeighbour,
        PassReason::FragNeeded,
    ] {
        assert_eq!(bed.passes(reason), 0, "{reason:?}");
    }
}

#[test]
fn a_backend_without_a_mac_waits_for_its_managed_neighbour_entry() {
    let mut bed = held_bed(NEW_BACKEND);
    let syn = bed.from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN));
    assert_eq!(bed.run(bed.client_if, &syn.bytes()).0, XDP_PASS);
    assert_eq!(
        bed.passes(PassReason::NoNeighbour),
        1,
        "counted, not sent blind"
    );
    // The resolver asked the kernel to resolve it and keep it resolved.
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            bed.ns.name(),
            "neigh",
            "show",
            &NEW_BACKEND.to_string(),
        ])
        .output()
        .expect("ip neigh show");
    let entry = String::from_utf8_lossy(&out.stdout);
    assert!(entry.contains("managed"), "a managed entry: {entry}");

    // It answers (here: an entry with its MAC), the watch reports it, the hops are resolved
    // again.
    let mac = [0x02, 0, 0, 0x66, 0, 0x01];
    bed.ns.ip(&[
        "neigh",
        "replace",
        &NEW_BACKEND.to_string(),
        "lladdr",
        &mac_text(mac),
        "dev",
        "cli0",
    ]);
    bed.reprogram();
    let retry = bed.from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), SYN));
    assert_eq!(
        bed.run(bed.client_if, &retry.bytes()),
        (XDP_TX, snatted(&bed, &retry, NEW_BACKEND, mac))
    );
}

#[test]
fn held_next_hops_follow_the_route_to_a_backend() {
    let gateway1 = one_arm_backend_ip(2);
    let gateway2 = one_arm_backend_ip(3);
    let route = |via: Ipv4Addr, extra: &[&str]| {
        let mut args = vec!["route", "replace", "198.18.4.0/24", "via"];
        let via = via.to_string();
        args.push(&via);
        args.extend(["dev", "cli0"]);
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let mut bed = Bed::new();
    let args = route(gateway1, &[]);
    bed.ns
        .ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
    bed.one_arm_held((30_000, 30_999));
    bed.install(service("web", 443, &[ROUTED_BACKEND]));
    let client = (client_ip(1), 40_000);
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN));
    assert_eq!(
        bed.run(bed.client_if, &syn.bytes()),
        (
            XDP_TX,
            snatted(&bed, &syn, ROUTED_BACKEND, neighbour_mac(gateway1))
        ),
        "to the gateway's MAC"
    );

    // The server network moves behind another gateway, with a smaller (locked) MTU.
    let args = route(gateway2, &["mtu", "lock", "1000"]);
    bed.ns
        .ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
    bed.reprogram();
    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
    assert_eq!(
        bed.run(bed.client_if, &ack.bytes()),
        (
            XDP_TX,
            snatted(&bed, &ack, ROUTED_BACKEND, neighbour_mac(gateway2))
        ),
        "the open flow follows the route"
    );
    // DF clear: the kernel may fragment it (with DF it is answered, `icmp`).
    let mut big = bed
        .from_client(Pkt::tcp(client, (VIP, 443), ACK))
        .fragmentable();
    big.payload = vec![b'x'; 1000];
    assert_eq!(bed.run(bed.client_if, &big.bytes()).0, XDP_PASS);
    assert_eq!(
        bed.passes(PassReason::FragNeeded),
        1,
        "over the route's MTU: to the kernel"
    );
}

#[test]
fn turning_forwarding_on_moves_open_flows_to_the_fib() {
    let backend = one_arm_backend_ip(1);
    let mut bed = held_bed(backend);
    let client = (client_ip(1), 40_000);
    let syn = Pkt::tcp(client, (VIP, 443), SYN).macs(SENDER_MAC, bed.client_if.mac);
    assert_eq!(bed.run(bed.client_if, &syn.bytes()).0, XDP_TX);

    // Forwarding on, and a reload: the daemon chooses FIB routing again.
    bed.forwarding(true);
    bed.program.hold_next_hops(false);
    bed.reprogram();
    let syn_ack = from_backend_at(&bed, backend, neighbour_mac(backend), SYN_ACK);
    assert_eq!(
        bed.run(bed.client_if, &syn_ack.bytes()),
        (XDP_TX, unnatted(&bed, &syn_ack, client, ROUTER_MAC)),
        "a held way back is not current under the FIB: asked again, the FIB says the router"
    );
    let retry = Pkt::tcp(client, (VIP, 443), SYN).macs(SENDER_MAC, bed.client_if.mac);
    assert_eq!(
        bed.run(bed.client_if, &retry.bytes()),
        (
            XDP_TX,
            snatted(&bed, &retry, backend, neighbour_mac(backend))
        )
    );
}

#[test]
fn a_flow_learns_its_way_back_from_its_clients_next_packet() {
    let backend = one_arm_backend_ip(1);
    let mut bed = held_bed(backend);
    let client = (client_ip(1), 40_000);
    let from_sender =
        |flags| Pkt::tcp(client, (VIP, 443), flags).macs(SENDER_MAC, bed.client_if.mac);
    bed.run(bed.client_if, &from_sender(SYN).bytes());
    bed.run(bed.client_if, &from_sender(ACK).bytes());
    // The LRU evicts the established flow; the backend's next packet re-adopts it, but a
    // backend's packet does not say the way to the client.
    let data = from_backend_at(&bed, backend, neighbour_mac(backend), ACK);
    let (key, _) = bed.dp.reader().flows().unwrap()[0];
    bed.dp.evict_flow(&key).unwrap();
    assert_eq!(bed.run(bed.client_if, &data.bytes()).0, XDP_PASS);
    assert_eq!(bed.passes(PassReason::NoNeighbour), 1);
    assert_eq!(bed.events(FlowEvent::Readopted), 1);
    // The client's next packet does.
    let ack = from_sender(ACK);
    assert_eq!(
        bed.run(bed.client_if, &ack.bytes()),
        (XDP_TX, snatted(&bed, &ack, backend, neighbour_mac(backend)))
    );
    assert_eq!(
        bed.run(bed.client_if, &data.bytes()),
        (XDP_TX, unnatted(&bed, &data, client, SENDER_MAC))
    );

    // A flow opened under FIB routing, then forwarding turned off and a reload: the same.
    bed.forwarding(true);
    bed.program.hold_next_hops(false);
    bed.reprogram();
    let other = (client_ip(2), 40_000);
    let syn = bed.from_client(Pkt::tcp(other, (VIP, 443), SYN));
    assert_eq!(bed.run(bed.client_if, &syn.bytes()).0, XDP_TX);
    let ack = bed.from_client(Pkt::tcp(other, (VIP, 443), ACK));
    assert_eq!(bed.run(bed.client_if, &ack.bytes()).0, XDP_TX);
    bed.forwarding(false);
    bed.program.hold_next_hops(true);
    bed.reprogram();
    let ack = Pkt::tcp(other, (VIP, 443), ACK).macs(SENDER_MAC, bed.client_if.mac);
    assert_eq!(bed.run(bed.client_if, &ack.bytes()).0, XDP_TX);
    let flows = bed.dp.reader().flows().unwrap();
    let (_, flow) = flows
        .iter()
        .find(|(k, _)| {
            u16::from_be(k.src_port) == 40_000 && k.src == lb_common::addr::v4(other.0.octets())
        })
        .unwrap();
    let snat = (
        Ipv4Addr::from(lb_common::addr::v4_octets(&flow.reply.dst)),
        u16::from_be(flow.reply.dst_port),
    );
    let reply = Pkt::tcp((backend, 443), snat, ACK).macs(neighbour_mac(backend), bed.client_if.mac);
    assert_eq!(
        bed.run(bed.client_if, &reply.bytes()),
        (XDP_TX, unnatted(&bed, &reply, other, SENDER_MAC))
    );
}
