//! Extended affinity (`sticky_timeout`, `persistence_group`): a client's new flows go to the
//! backend its sticky entry names while that backend takes new flows, whatever the ring says
//! after a membership change; the entry is written once a flow is established and refreshed by
//! the client's packets.

use std::{net::Ipv4Addr, thread::sleep, time::Duration};

use lb_common::{backend::BackendState, stats::FlowEvent, sticky::StickyEntry};
use xnlb::config::Service;
use xnlb_tests::{bed::*, packets::*};

const CLIENTS: u16 = 60;

/// A sticky TCP service on VIP:`port` over backends 1..=`n`, affinity single.
fn sticky_service(name: &str, port: u16, n: usize, timeout: Duration) -> Service {
    let backends: Vec<Ipv4Addr> = (1..=n).map(backend_ip).collect();
    let mut s = service(name, port, &backends);
    s.sticky_timeout = timeout;
    s
}

/// The backend address a packet left for (its rewritten destination).
fn destination(out: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(out[30], out[31], out[32], out[33])
}

/// Client `n`'s connection from `port` to VIP:`vip_port`, established (SYN, then ACK): the
/// backend it went to.
fn connect(bed: &Bed, n: u16, port: u16, vip_port: u16) -> Ipv4Addr {
    let (action, out) = bed.connect((client_ip(n), port), (VIP, vip_port));
    assert_eq!(action, XDP_REDIRECT, "client {n}'s ACK is forwarded");
    destination(&out)
}

/// The backend a new flow (a SYN alone) of client `n` goes to.
fn syn_to(bed: &Bed, n: u16, port: u16, vip_port: u16) -> Ipv4Addr {
    let syn = bed.from_client(Pkt::tcp((client_ip(n), port), (VIP, vip_port), SYN));
    let (action, out) = bed.run(bed.client_if, &syn.bytes());
    assert_eq!(action, XDP_REDIRECT, "client {n}'s SYN is forwarded");
    destination(&out)
}

fn entries(bed: &Bed) -> Vec<StickyEntry> {
    let all = bed.dp.reader().sticky_entries().expect("read STICKY");
    all.into_iter().map(|(_, e)| e).collect()
}

/// How many of the clients the ring alone would now send elsewhere than `held` (their
/// backends, in client order).
fn ring_moves(bed: &Bed, service: &str, held: &[Ipv4Addr]) -> usize {
    (1..=CLIENTS)
        .filter(|&n| bed.predict(service, client_ip(n), 0) != held[n as usize - 1])
        .count()
}

/// The first connection of each client, from port 40 000: where each went.
fn first_connections(bed: &Bed, vip_port: u16) -> Vec<Ipv4Addr> {
    (1..=CLIENTS)
        .map(|n| connect(bed, n, 40_000, vip_port))
        .collect()
}

#[test]
fn a_backend_added_moves_no_sticky_client() {
    let mut bed = Bed::new();
    bed.install(sticky_service("web", 443, 3, Duration::from_secs(600)));
    let first = first_connections(&bed, 443);
    assert_eq!(bed.events(FlowEvent::StickyRecorded), CLIENTS as u64);
    assert_eq!(entries(&bed).len(), CLIENTS as usize);
    bed.install(sticky_service("web", 443, 4, Duration::from_secs(600)));
    let moves = ring_moves(&bed, "web", &first);
    assert!(
        moves >= 5,
        "the ring alone would move about a quarter of the clients ({moves} of {CLIENTS})"
    );
    for n in 1..=CLIENTS {
        assert_eq!(
            syn_to(&bed, n, 41_000, 443),
            first[n as usize - 1],
            "client {n} keeps its backend"
        );
    }
    assert_eq!(bed.events(FlowEvent::StickyHit), CLIENTS as u64);
    assert_eq!(bed.events(FlowEvent::StickyRecorded), CLIENTS as u64);
}

#[test]
fn a_client_without_an_entry_follows_the_ring_and_a_syn_alone_records_none() {
    let mut bed = Bed::new();
    bed.install(sticky_service("web", 443, 3, Duration::from_secs(600)));
    for n in 1..=CLIENTS {
        assert_eq!(
            syn_to(&bed, n, 40_000, 443),
            bed.predict("web", client_ip(n), 0)
        );
    }
    assert!(
        entries(&bed).is_empty(),
        "SYNs whose handshake never completes (a flood of spoofed ones) leave no sticky entry"
    );
    bed.install(sticky_service("web", 443, 4, Duration::from_secs(600)));
    for n in 1..=CLIENTS {
        assert_eq!(
            syn_to(&bed, n, 40_001, 443),
            bed.predict("web", client_ip(n), 0),
            "client {n} has no entry: the new ring decides"
        );
    }
    assert_eq!(bed.events(FlowEvent::StickyHit), 0);
}

#[test]
fn a_down_backends_clients_move_once_and_stay_when_it_returns() {
    let mut bed = Bed::new();
    bed.install(sticky_service("web", 443, 3, Duration::from_secs(600)));
    let first = first_connections(&bed, 443);
    let b1 = backend_ip(1);
    let on_b1: Vec<u16> = (1..=CLIENTS)
        .filter(|&n| first[n as usize - 1] == b1)
        .collect();
    assert!(on_b1.len() >= 5, "b1 has clients ({})", on_b1.len());
    // The datapath alone first: b1 marked down before the controller rebuilds the ring.
    let b1_id = bed.backend_id("web", "b1");
    bed.dp.set_backend_state(b1_id, BackendState::Down).unwrap();
    bed.set_state("web", "b1", BackendState::Down);
    let mut moved_to = Vec::new();
    for &n in &on_b1 {
        let (action, out) = bed.connect((client_ip(n), 41_000), (VIP, 443));
        assert_eq!(action, XDP_REDIRECT);
        let now = destination(&out);
        assert_ne!(now, b1, "client {n} leaves its down backend");
        moved_to.push(now);
    }
    assert_eq!(bed.events(FlowEvent::StickyMoved), on_b1.len() as u64);
    bed.set_state("web", "b1", BackendState::Up);
    for n in 1..=CLIENTS {
        let expected = match on_b1.iter().position(|&m| m == n) {
            Some(i) => moved_to[i],
            None => first[n as usize - 1],
        };
        assert_eq!(
            syn_to(&bed, n, 42_000, 443),
            expected,
            "client {n} sticks to its backend after b1 came back"
        );
    }
}

#[test]
fn a_drained_backend_keeps_its_connections_but_takes_no_new_ones() {
    let mut bed = Bed::new();
    bed.install(sticky_service("web", 443, 3, Duration::from_secs(600)));
    let first = first_connections(&bed, 443);
    let n = (1..=CLIENTS)
        .find(|&n| first[n as usize - 1] == backend_ip(1))
        .expect("a client on b1");
    bed.set_state("web", "b1", BackendState::Draining);
    let ack = bed.from_client(Pkt::tcp((client_ip(n), 40_000), (VIP, 443), ACK));
    let (action, out) = bed.run(bed.client_if, &ack.bytes());
    assert_eq!((action, destination(&out)), (XDP_REDIRECT, backend_ip(1)));
    assert_ne!(
        syn_to(&bed, n, 41_000, 443),
        backend_ip(1),
        "a new connection of the client leaves the draining backend"
    );
}

#[test]
fn an_entry_past_its_timeout_is_balanced_again() {
    let mut bed = Bed::new();
    // 200 ms, far below what a config allows (1 s), so that the test waits little.
    let timeout = Duration::from_millis(200);
    bed.install(sticky_service("web", 443, 3, timeout));
    let first = first_connections(&bed, 443);
    bed.install(sticky_service("web", 443, 4, timeout));
    // Twice the timeout: the coarse clock's steps (a few ms) are far inside the slack.
    sleep(timeout * 2);
    for n in 1..=CLIENTS {
        assert_eq!(
            syn_to(&bed, n, 41_000, 443),
            bed.predict("web", client_ip(n), 0),
            "client {n}'s entry has expired: the ring decides"
        );
    }
    let moved = ring_moves(&bed, "web", &first);
    assert!(moved >= 5, "some clients did move ({moved})");
    assert_eq!(bed.events(FlowEvent::StickyExpired), CLIENTS as u64);
    assert_eq!(bed.events(FlowEvent::StickyHit), 0);
}

#[test]
fn the_clients_packets_refresh_its_entry() {
    let mut bed = Bed::new();
    bed.install(sticky_service("web", 443, 3, Duration::from_secs(600)));
    connect(&bed, 1, 40_000, 443);
    let recorded = entries(&bed)[0].last_seen_ns;
    // A flow refreshes its client's entry once per 2^30 ns period: wait into the next one.
    sleep(Duration::from_millis(1_100));
    let ack = bed.from_client(Pkt::tcp((client_ip(1), 40_000), (VIP, 443), ACK));
    assert_eq!(bed.run(bed.client_if, &ack.bytes()).0, XDP_REDIRECT);
    let refreshed = entries(&bed)[0].last_seen_ns;
    assert!(
        refreshed >= recorded + 1_000_000_000,
        "an established flow's packet refreshed the entry ({recorded} → {refreshed})"
    );
}

#[test]
fn a_persistence_group_sends_a_client_to_one_backend_on_every_service() {
    let mut bed = Bed::new();
    let timeout = Duration::from_secs(600);
    let grouped = |name: &str, port: u16, n: usize| {
        let mut s = sticky_service(name, port, n, timeout);
        s.persistence_group = Some("cas".into());
        s
    };
    bed.install(grouped("owa", 443, 3));
    bed.install(grouped("rpc", 135, 3));
    assert_ne!(
        bed.backend_id("owa", "b1"),
        bed.backend_id("rpc", "b1"),
        "each service has its own backend ids: the entry is translated"
    );
    let owa = first_connections(&bed, 443);
    bed.install(grouped("owa", 443, 4));
    bed.install(grouped("rpc", 135, 4));
    let moves = ring_moves(&bed, "rpc", &owa);
    assert!(moves >= 5, "the ring alone would move clients ({moves})");
    for n in 1..=CLIENTS {
        assert_eq!(
            connect(&bed, n, 41_000, 135),
            owa[n as usize - 1],
            "client {n} reaches its owa backend on rpc"
        );
    }
    assert_eq!(
        entries(&bed).len(),
        CLIENTS as usize,
        "one entry per client for the group"
    );
}

#[test]
fn services_of_a_group_share_their_hash_without_a_timeout() {
    let mut bed = Bed::new();
    for (name, port) in [("owa", 443), ("rpc", 135)] {
        let mut s = service(name, port, &[1, 2, 3, 4].map(backend_ip));
        s.persistence_group = Some("cas".into());
        bed.install(s);
    }
    for n in 1..=CLIENTS {
        assert_eq!(syn_to(&bed, n, 40_000, 135), syn_to(&bed, n, 40_000, 443));
    }
    assert!(entries(&bed).is_empty());
}
