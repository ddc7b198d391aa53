//! Kept next hops: the datapath keeps the FIB's answer (egress interface, MACs, MTU) per backend
//! and per flow's client, so a flow's packets skip the FIB. The answer is asked again when the
//! epoch moves (the daemon moves it on every routing change, `host::routes`), when a backend id
//! names another address, and a packet larger than the kept MTU goes to the kernel.

use std::net::Ipv4Addr;

use lb_common::stats::PassReason;
use xnlb::datapath::monotonic_ns;
use xnlb_tests::{
    bed::*,
    flow_cases::{three_backends, to_backend, to_client},
    packets::*,
};

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// `pkt` as the balancer should send it to `backend`:443 at MAC `mac`.
fn to_backend_at(bed: &Bed, pkt: &Pkt, backend: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    pkt.clone()
        .addressed((pkt.src, pkt.src_port()), (backend, 443))
        .ttl(pkt.ttl - 1)
        .macs(bed.server_if.mac, mac)
        .bytes()
}

/// Gives `ip` on `dev` the static neighbour entry `mac` (replacing the one it had).
fn set_neighbour(bed: &Bed, ip: Ipv4Addr, mac: [u8; 6], dev: &str) {
    bed.ns.ip(&[
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        &mac_text(mac),
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

/// Whether `start` and `end` (`monotonic_ns`) fall in one tick of the datapath's clock, which
/// renews every kept answer each 2^32 ns (4.3 s, `lb_common::next_hop`): only then must an
/// answer kept at `start` still stand at `end`. 10 ms of slack each side covers the coarse
/// clock the datapath reads (a few ms behind) and the test's own reading.
fn one_tick(start: u64, end: u64) -> bool {
    const SLACK_NS: u64 = 10_000_000;
    (start - SLACK_NS) >> 32 == (end + SLACK_NS) >> 32
}

fn bump(bed: &Bed) {
    bed.dp
        .next_hop_epoch()
        .expect("epoch handle")
        .bump()
        .expect("bump the epoch");
}

#[test]
fn a_backends_new_mac_is_used_once_the_epoch_moves() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let client = (client_ip(1), 40_000);
    let backend = bed.predict("web", client.0, client.1);
    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
    let kept_at = monotonic_ns();
    assert_eq!(
        bed.connect(client, (VIP, 443)),
        (XDP_REDIRECT, to_backend(&bed, &ack, (backend, 443)))
    );

    // The backend's interface is replaced: its neighbour entry now has another MAC.
    let new_mac = [0x02, 0, 0, 0x99, 0, 0x01];
    set_neighbour(&bed, backend, new_mac, "srv0");
    // Until the epoch moves the kept answer stands: the daemon moves it within milliseconds
    // of the kernel's change. (Unless the clock's tick renewed it meanwhile: then it is the
    // new MAC already.)
    let out = bed.run(bed.client_if, &ack.bytes());
    let (kept, new) = (
        to_backend(&bed, &ack, (backend, 443)),
        to_backend_at(&bed, &ack, backend, new_mac),
    );
    if one_tick(kept_at, monotonic_ns()) {
        assert_eq!(out, (XDP_REDIRECT, kept), "the kept answer stands");
    } else {
        assert!(out == (XDP_REDIRECT, kept) || out == (XDP_REDIRECT, new));
    }
    bump(&bed);
    assert_eq!(
        bed.run(bed.client_if, &ack.bytes()),
        (XDP_REDIRECT, to_backend_at(&bed, &ack, backend, new_mac)),
        "the established flow follows the new MAC"
    );
    let other = (client_ip(2), 40_000);
    let syn = bed.from_client(Pkt::tcp(other, (VIP, 443), SYN));
    let chosen = bed.predict("web", other.0, other.1);
    let want = if chosen == backend {
        to_backend_at(&bed, &syn, backend, new_mac)
    } else {
        to_backend(&bed, &syn, (chosen, 443))
    };
    assert_eq!(bed.run(bed.client_if, &syn.bytes()), (XDP_REDIRECT, want));
}

#[test]
fn a_new_route_to_the_client_is_used_once_the_epoch_moves() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let client = (client_ip(1), 40_000);
    bed.connect(client, (VIP, 443));
    let backend = bed.predict("web", client.0, client.1);
    let reply = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);
    let kept_at = monotonic_ns();
    assert_eq!(
        bed.run(bed.server_if, &reply.bytes()),
        (XDP_REDIRECT, to_client(&bed, &reply, 443, client))
    );

    // The clients' network moves behind another router on the client side.
    let router2 = local_client_ip(5);
    let router2_mac = [0x02, 0, 0, 0x98, 0, 0x02];
    set_neighbour(&bed, router2, router2_mac, "cli0");
    bed.ns.ip(&[
        "route",
        "replace",
        REMOTE_CLIENTS,
        "via",
        &router2.to_string(),
        "dev",
        "cli0",
    ]);
    let via_router2 = reply
        .clone()
        .addressed((VIP, 443), client)
        .ttl(reply.ttl - 1)
        .macs(bed.client_if.mac, router2_mac)
        .bytes();
    let out = bed.run(bed.server_if, &reply.bytes()).1;
    let kept = to_client(&bed, &reply, 443, client);
    if one_tick(kept_at, monotonic_ns()) {
        assert_eq!(out, kept, "the kept answer stands until the epoch moves");
    } else {
        // The clock's tick renewed the answer meanwhile.
        assert!(out == kept || out == via_router2);
    }
    bump(&bed);
    assert_eq!(
        bed.run(bed.server_if, &reply.bytes()),
        (XDP_REDIRECT, via_router2),
        "the flow's replies follow the new route"
    );
}

#[test]
fn a_backend_id_given_another_address_never_uses_the_old_next_hop() {
    let mut bed = Bed::new();
    bed.install(service("one", 443, &[backend_ip(1)]));
    let client = (client_ip(1), 40_000);
    let syn = bed.from_client(Pkt::tcp(client, (VIP, 443), SYN));
    assert_eq!(
        bed.run(bed.client_if, &syn.bytes()),
        (XDP_REDIRECT, to_backend(&bed, &syn, (backend_ip(1), 443)))
    );

    // The same id now names backend 4 (as after a reload that reuses it); no epoch change.
    let id = bed.backend_id("one", "b1");
    let mut info = bed.dp.backend(id).expect("backend");
    info.addr = [u32::from_ne_bytes(backend_ip(4).octets()), 0, 0, 0];
    bed.dp.set_backend(id, &info).expect("set backend");
    let other = (client_ip(2), 40_000);
    let syn = bed.from_client(Pkt::tcp(other, (VIP, 443), SYN));
    assert_eq!(
        bed.run(bed.client_if, &syn.bytes()),
        (XDP_REDIRECT, to_backend(&bed, &syn, (backend_ip(4), 443))),
        "backend 4's own MAC, not backend 1's kept one"
    );
}

#[test]
fn a_packet_larger_than_the_kept_mtu_goes_to_the_kernel() {
    let mut bed = Bed::new();
    bed.install(service("one", 443, &[backend_ip(1)]));
    bed.ns.ip(&[
        "route",
        "add",
        &format!("{}/32", backend_ip(1)),
        "dev",
        "srv0",
        // Locked: a forwarding lookup uses a route's MTU only then.
        "mtu",
        "lock",
        "1000",
    ]);
    let client = (client_ip(1), 40_000);
    assert_eq!(bed.connect(client, (VIP, 443)).0, XDP_REDIRECT);
    // DF clear: the kernel may fragment it (with DF it is answered, `icmp`).
    let mut big = bed
        .from_client(Pkt::tcp(client, (VIP, 443), ACK))
        .fragmentable();
    big.payload = vec![b'x'; 1200];
    let before = bed.passes(PassReason::FragNeeded);
    let (action, out) = bed.run(bed.client_if, &big.bytes());
    assert_eq!(
        action, XDP_PASS,
        "to the kernel, which fragments or answers ICMP"
    );
    assert_eq!(bed.passes(PassReason::FragNeeded), before + 1);
    assert_eq!(
        out,
        big.clone()
            .addressed((big.src, big.src_port()), (backend_ip(1), 443))
            .bytes(),
        "translated, its TTL and MACs left to the kernel, which forwards it"
    );
}
