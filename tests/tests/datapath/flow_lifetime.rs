//! A flow's life after its first packet: FIN and reuse, timeouts, its backend dying or
//! draining, its backend removed and the id given to another, a ring switch under it, and its
//! reply entry outliving it.

use std::{net::Ipv4Addr, time::Duration};

use super::selection::{backend_for, sent_to};
use lb_common::{
    backend::BackendState,
    flow::{FlowState, IDLE_CLASS_SHIFT},
    stats::{DropReason, FlowEvent},
};
use xnlb::config::Protocol;
use xnlb_tests::{
    bed::*,
    flow_cases::{Replies, three_backends, three_backends_shared, to_client},
    packets::*,
};

#[test]
fn fin_shortens_a_flow_and_a_new_syn_after_close_selects_again() {
    for replies in Replies::BOTH {
        fin_shortens_a_flow(replies);
    }
}

fn fin_shortens_a_flow(replies: Replies) {
    let mut bed = Bed::new();
    replies.install(&mut bed);
    let client = (client_ip(4), 40_000);
    assert_eq!(bed.connect(client, (VIP, 443)).0, XDP_REDIRECT);
    bed.run(
        bed.client_if,
        &bed.from_client(Pkt::tcp(client, (VIP, 443), FIN_ACK))
            .bytes(),
    );
    let flows = bed.dp.reader().flows().unwrap();
    assert_eq!(
        flows[0].1.state,
        FlowState::Closing as u8,
        "FIN marks the flow closing"
    );

    // A SYN on a closing tuple is a new flow, half-open beside the closing one until the
    // handshake completes.
    bed.run(
        bed.client_if,
        &bed.from_client(Pkt::tcp(client, (VIP, 443), SYN)).bytes(),
    );
    let web = bed.service_id("web");
    assert_eq!(bed.dp.reader().service_stats(web).unwrap().new_flows, 2);
    let half_open = bed.dp.reader().half_open_flows().unwrap();
    assert_eq!(half_open.len(), 1);
    assert_eq!(half_open[0].1.state, FlowState::HalfOpen as u8);
    let chosen = bed.program.address_of(half_open[0].1.backend_id);
    let reply = bed.from_backend(Pkt::tcp((chosen, 443), client, SYN_ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, to_client(&bed, &reply, 443, client));

    // The client's ACK establishes it in place of the old entries: one flow, open again, its
    // reply entry (if it claims one) that still undoes the NAT, nothing half-open.
    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
    assert_eq!(bed.run(bed.client_if, &ack.bytes()).0, XDP_REDIRECT);
    let flows = bed.dp.reader().flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].1.state, FlowState::Open as u8);
    assert_eq!(flows[0].1.backend_id, half_open[0].1.backend_id);
    assert_eq!(bed.dp.reader().replies().unwrap().len(), replies.entries());
    assert!(bed.dp.reader().half_open_flows().unwrap().is_empty());
    let (action, out) = bed.run(bed.server_if, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, to_client(&bed, &reply, 443, client));
}

#[test]
fn timeouts_expire_flows() {
    let mut bed = Bed::new();
    let mut dns = service("dns", 88, &[1, 2, 3].map(backend_ip));
    dns.protocol = Protocol::Udp;
    bed.install(dns);
    let dns = bed.service_id("dns");
    let pkt = bed
        .from_client(Pkt::udp((client_ip(1), 5000), (VIP, 88)))
        .bytes();
    bed.run(bed.client_if, &pkt);
    bed.run(bed.client_if, &pkt);
    assert_eq!(
        bed.dp.reader().service_stats(dns).unwrap().new_flows,
        1,
        "within the timeout: one flow"
    );
    bed.program.config.conntrack.udp_timeout = Duration::ZERO;
    bed.reprogram();
    std::thread::sleep(Duration::from_millis(20)); // past the coarse clock's tick
    bed.run(bed.client_if, &pkt);
    assert_eq!(
        bed.dp.reader().service_stats(dns).unwrap().new_flows,
        2,
        "after the timeout: a new flow"
    );
}

/// A service's `idle_timeout` replaces the protocol's for its open flows, longer or shorter,
/// and leaves other services' flows on the protocol's: each flow carries its service's idle
/// class.
#[test]
fn a_services_idle_timeout_replaces_the_protocols() {
    let mut bed = Bed::new();
    for (name, port) in [("dns", 88), ("ntp", 123)] {
        let mut s = service(name, port, &[1, 2, 3].map(backend_ip));
        s.protocol = Protocol::Udp;
        bed.install(s);
    }
    let mut web = service("web", 443, &[1, 2, 3].map(backend_ip));
    web.idle_timeout = Duration::from_secs(3600);
    bed.install(web);
    let set_idle = |bed: &mut Bed, name: &str, t: Duration| {
        let s = bed
            .program
            .config
            .services
            .iter_mut()
            .find(|s| s.name == name);
        s.expect("installed").idle_timeout = t;
    };
    set_idle(&mut bed, "dns", Duration::from_secs(3 * 3600));
    bed.reprogram();
    let ask = |bed: &Bed, port: u16| {
        let pkt = bed.from_client(Pkt::udp((client_ip(1), 5000), (VIP, port)));
        bed.run(bed.client_if, &pkt.bytes());
    };
    let new_flows = |bed: &Bed, name: &str| {
        let id = bed.service_id(name);
        bed.dp.reader().service_stats(id).unwrap().new_flows
    };
    ask(&bed, 88);
    ask(&bed, 123);
    let client = (client_ip(2), 40_000);
    bed.connect(client, (VIP, 443));
    // Classes by timeout, shortest first: web's 1h is 1, dns's 3h is 2, ntp has none.
    let class_of = |bed: &Bed, port: u16| {
        let flows = bed.dp.reader().flows().unwrap();
        let (_, e) = flows
            .iter()
            .find(|(k, _)| k.dst_port == port.to_be())
            .expect("a flow to the port");
        e.flags >> IDLE_CLASS_SHIFT
    };
    assert_eq!(
        [class_of(&bed, 443), class_of(&bed, 88), class_of(&bed, 123)],
        [1, 2, 0]
    );

    // UDP's own timeout gone: ntp's flow ends, dns's (3h of its own) goes on.
    bed.program.config.conntrack.udp_timeout = Duration::ZERO;
    bed.reprogram();
    std::thread::sleep(Duration::from_millis(20)); // past the coarse clock's tick
    ask(&bed, 88);
    ask(&bed, 123);
    assert_eq!(new_flows(&bed, "dns"), 1, "dns keeps its flow");
    assert_eq!(new_flows(&bed, "ntp"), 2, "ntp's flow expired");

    // A reload that adds a value shorter than every other (ntp's 30 min) and changes web's
    // (1 h to 1 ms) renumbers nothing: each open flow's class still names the timeout it
    // started with (dns 3 h, web 1 h), so web's flow goes on and its backend's next packet is
    // still translated. A new web flow takes the 1 ms and ends.
    let timeout_of = |bed: &Bed, port: u16| {
        let settings = bed.dp.settings().unwrap();
        settings.idle_timeouts_ns[class_of(bed, port) as usize]
    };
    let hour = Duration::from_secs(3600).as_nanos() as u64;
    assert_eq!(
        [timeout_of(&bed, 443), timeout_of(&bed, 88)],
        [hour, 3 * hour]
    );
    let backend = bed.predict("web", client.0, client.1);
    let answer = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);
    set_idle(&mut bed, "ntp", Duration::from_secs(1800));
    set_idle(&mut bed, "web", Duration::from_millis(1));
    bed.reprogram();
    assert_eq!(
        [timeout_of(&bed, 443), timeout_of(&bed, 88)],
        [hour, 3 * hour]
    );
    std::thread::sleep(Duration::from_millis(20)); // past the coarse clock's tick and 1 ms
    assert_eq!(bed.run(bed.server_if, &answer.bytes()).0, XDP_REDIRECT);
    let late = (client_ip(3), 40_001);
    bed.connect(late, (VIP, 443));
    let flows = bed.dp.reader().flows().unwrap();
    let (_, e) = flows
        .iter()
        .find(|(k, _)| k.src_port == late.1.to_be())
        .expect("the new web flow");
    let class = (e.flags >> IDLE_CLASS_SHIFT) as usize;
    let ms = Duration::from_millis(1).as_nanos() as u64;
    assert_eq!(bed.dp.settings().unwrap().idle_timeouts_ns[class], ms);
    let backend = bed.predict("web", late.0, late.1);
    let answer = bed.from_backend(Pkt::tcp((backend, 443), late, ACK), bed.server_if);
    std::thread::sleep(Duration::from_millis(20));
    let (action, out) = bed.run(bed.server_if, &answer.bytes());
    assert_eq!(action, XDP_PASS, "the new flow idled out: not ours");
    assert_eq!(out, answer.bytes());
}

/// `on_backend_down: keep`: a failed backend's established flows go on (its page failing does
/// not end an Outlook session mid-transfer); new flows avoid it; disabling it still moves them.
#[test]
fn with_keep_a_failed_backends_flows_stay_until_it_is_disabled() {
    let mut bed = Bed::new();
    let mut web = service("web", 443, &[1, 2, 3].map(backend_ip));
    web.affinity = xnlb::config::Affinity::None;
    web.on_backend_down = xnlb::config::OnBackendDown::Keep;
    bed.install(web);
    let port = (40_000..)
        .find(|&p| bed.predict("web", client_ip(1), p) == backend_ip(1))
        .unwrap();
    assert_eq!(backend_for(&bed, (client_ip(1), port)), backend_ip(1));
    bed.set_state("web", "b1", BackendState::Down);
    let ack_to = |bed: &Bed| sent_to(bed, (client_ip(1), port), ACK);
    assert_eq!(
        ack_to(&bed),
        backend_ip(1),
        "the failed backend keeps its flow"
    );
    assert_eq!(bed.events(FlowEvent::ReselectedDown), 0);
    for p in 50_000..50_020 {
        assert_ne!(
            backend_for(&bed, (client_ip(2), p)),
            backend_ip(1),
            "no new flow"
        );
    }
    bed.set_state("web", "b1", BackendState::Disabled);
    assert_ne!(
        ack_to(&bed),
        backend_ip(1),
        "a disabled backend's flow moves"
    );
    assert_eq!(bed.events(FlowEvent::ReselectedDown), 1);
}

#[test]
fn established_flows_leave_a_dead_backend_but_stay_on_a_draining_one() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    // One flow per backend.
    let mut flows = Vec::new();
    for port in 40_000.. {
        let chosen = bed.predict("web", client_ip(1), port);
        if flows.iter().all(|&(_, c)| c != chosen) {
            backend_for(&bed, (client_ip(1), port));
            flows.push((port, chosen));
        }
        if flows.len() == 3 {
            break;
        }
    }
    let ack_to = |bed: &Bed, port| sent_to(bed, (client_ip(1), port), ACK);
    let (drain_port, draining) = flows[0];
    let (dead_port, dead) = flows[1];
    let name_of = |addr: Ipv4Addr| format!("b{}", addr.octets()[3] - 10);
    bed.set_state("web", &name_of(draining), BackendState::Draining);
    bed.set_state("web", &name_of(dead), BackendState::Down);

    assert_eq!(
        ack_to(&bed, drain_port),
        (draining),
        "draining keeps its established flow"
    );
    let moved = ack_to(&bed, dead_port);
    assert_ne!(moved, (dead), "a dead backend's flow is re-selected");
    assert_eq!(bed.events(FlowEvent::ReselectedDown), 1);
    for port in 50_000..50_020 {
        let got = backend_for(&bed, (client_ip(2), port));
        assert_ne!(got, (draining), "no new flow to a draining backend");
        assert_ne!(got, (dead), "no new flow to a dead backend");
    }
}

#[test]
fn switching_a_ring_moves_new_flows_only() {
    let mut bed = Bed::new();
    assert!(
        bed.dp.ring_mapped(),
        "ring tables are written through the mmap-ed map"
    );
    three_backends(&mut bed);
    let established: Vec<(u16, Ipv4Addr)> = (40_000..40_050)
        .map(|p| (p, backend_for(&bed, (client_ip(1), p))))
        .collect();
    let mut web = bed.program.service("web").clone();
    web.backends.push(backend("b4", backend_ip(4)));
    bed.install(web);
    for (port, backend) in established {
        let (_, out) = bed.run(
            bed.client_if,
            &bed.from_client(Pkt::tcp((client_ip(1), port), (VIP, 443), ACK))
                .bytes(),
        );
        assert_eq!(
            &out[30..34],
            &backend.octets(),
            "established flow on port {port} keeps its backend"
        );
    }
    let new: Vec<Ipv4Addr> = (60_000..60_100)
        .map(|p| backend_for(&bed, (client_ip(1), p)))
        .collect();
    assert!(
        new.contains(&backend_ip(4)),
        "new flows reach the added backend"
    );
}

#[test]
fn a_reply_entry_whose_flow_expired_never_rewrites_the_backends_own_traffic() {
    for replies in Replies::BOTH {
        an_expired_flow_never_rewrites(replies);
    }
}

fn an_expired_flow_never_rewrites(replies: Replies) {
    // A client once reached the backend through the VIP from port P; later it connects to the
    // backend's own address from the same port. The backend's answer carries the same tuple as
    // the old flow's replies, but it is not the balancer's: it must pass byte for byte.
    let mut bed = Bed::new();
    replies.install(&mut bed);
    let client = (client_ip(12), 45_000);
    let backend = bed.predict("web", client.0, client.1);
    assert_eq!(bed.connect(client, (VIP, 443)).0, XDP_REDIRECT);
    let answer = bed.from_backend(Pkt::tcp((backend, 443), client, SYN_ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &answer.bytes());
    assert_eq!(
        action, XDP_REDIRECT,
        "while the flow lives, its replies are translated"
    );
    assert_eq!(out, to_client(&bed, &answer, 443, client));

    bed.program.config.conntrack.tcp_timeout = Duration::ZERO;
    bed.reprogram();
    std::thread::sleep(Duration::from_millis(20)); // past the coarse clock's tick
    let stamped = bed.dp.reader().flows().unwrap()[0].1.last_seen_ns;
    for round in 1..=2 {
        let (action, out) = bed.run(bed.server_if, &answer.bytes());
        assert_eq!(
            action, XDP_PASS,
            "round {round}: the flow expired, so not ours"
        );
        assert_eq!(out, answer.bytes(), "round {round}: untouched");
    }
    assert_eq!(
        bed.events(FlowEvent::StaleReply),
        replies.entries() as u64,
        "a stale entry is counted once and removed"
    );
    assert!(bed.dp.reader().replies().unwrap().is_empty());
    assert_eq!(
        bed.dp.reader().flows().unwrap()[0].1.last_seen_ns,
        stamped,
        "the expired flow is not refreshed by the backend's packet"
    );
}

/// A client port of `web` whose new flow goes to `target`.
fn port_to(bed: &Bed, client: Ipv4Addr, target: Ipv4Addr) -> u16 {
    (40_000..)
        .find(|&p| bed.predict("web", client, p) == target)
        .expect("some port hashes to every backend")
}

/// Reload churn reuses backend ids: here at once, with room for three ids. The flow to b3 keeps
/// id 2 in its entry; a reload removes b3 and gives id 2 to a backend of another service. The
/// reload removes the flow (it can never go where it went); and should it survive (a daemon
/// killed between writing the id and that clean-up), the flow must not follow the id (to that
/// backend) nor keep going to the removed b3: it is re-selected among web's backends and
/// counted.
#[test]
fn a_flow_never_follows_its_backend_id_to_another_backend() {
    let mut bed = Bed::new();
    bed.program.backend_capacity = 3;
    three_backends(&mut bed);
    let b3 = backend_ip(3);
    let client = client_ip(7);
    let port = port_to(&bed, client, b3);
    let (action, out) = bed.connect((client, port), (VIP, 443));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[30..34], &b3.octets(), "established to b3");
    let b3_id = bed.backend_id("web", "b3");
    let to_b3 = bed.dp.reader().flows().unwrap();
    assert_eq!(to_b3.len(), 1);
    assert_eq!(to_b3[0].1.backend_id, b3_id);

    let mut web = bed.program.service("web").clone();
    web.backends.retain(|b| b.name != "b3");
    bed.install(web);
    let stranger = backend_ip(8);
    bed.install(service("rpc", 135, &[stranger]));
    assert_eq!(
        bed.backend_id("rpc", "b1"),
        b3_id,
        "the id book gave b3's id to rpc's backend"
    );
    assert!(
        bed.dp.reader().flows().unwrap().is_empty(),
        "the reload removed the flow whose id now names another backend"
    );
    assert!(bed.dp.reader().replies().unwrap().is_empty());
    assert_eq!(bed.events(FlowEvent::ForeignRemoved), 1, "and counted it");

    // As a daemon killed mid-reload would leave it: the old flow, its id already reused.
    bed.dp.insert_flows(&to_b3).unwrap();
    for flags in [ACK, SYN] {
        let before = bed.events(FlowEvent::BackendRetired);
        let got = sent_to(&bed, (client, port), flags);
        assert!(
            got == backend_ip(1) || got == backend_ip(2),
            "{flags:?}: sent to {got}, not to one of web's backends"
        );
        if flags == ACK {
            assert_eq!(bed.events(FlowEvent::BackendRetired), before + 1);
        }
    }
}

/// A reload writes a reused id before it switches the old table away from it. A new flow
/// hashed to that slot in between must not reach the other service's backend: the datapath
/// tries other slots, as for a backend just marked down, and drops (`no_backend`) when every
/// try lands on such a slot.
#[test]
fn a_new_flow_skips_a_slot_whose_id_belongs_to_another_service() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let b3 = backend_ip(3);
    let b3_id = bed.backend_id("web", "b3");
    let mut other = bed.dp.backend(b3_id).unwrap();
    other.addr = lb_common::addr::v4(backend_ip(8).octets());
    other.service_id = bed.service_id("web") + 1;
    bed.dp.set_backend(b3_id, &other).unwrap();
    let mut redirected = 0;
    for n in 0..20 {
        let client = client_ip(20 + n);
        let port = port_to(&bed, client, b3);
        let drops = bed.drops(DropReason::NoBackend);
        let syn = bed.from_client(Pkt::tcp((client, port), (VIP, 443), SYN));
        let (action, out) = bed.run(bed.client_if, &syn.bytes());
        if action == XDP_DROP {
            assert_eq!(bed.drops(DropReason::NoBackend), drops + 1);
            continue;
        }
        assert_eq!(action, XDP_REDIRECT);
        let got = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        assert!(
            got == backend_ip(1) || got == backend_ip(2),
            "client {client}: sent to {got}"
        );
        redirected += 1;
    }
    // Each try avoids the slot with probability 2/3: most of the 20 find another backend.
    assert!(
        redirected >= 10,
        "{redirected} of 20 re-hashed to web's backends"
    );
}

/// A reload that renames a service (same VIP, protocol, ports and backends) changes nothing the
/// datapath sees: the service keeps its id and its backends theirs, so its flows go on, neither
/// re-selected nor removed.
#[test]
fn a_renamed_service_keeps_its_flows() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let client = (client_ip(31), 42_000);
    let (action, out) = bed.connect(client, (VIP, 443));
    assert_eq!(action, XDP_REDIRECT);
    let backend = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    let flows = bed.dp.reader().flows().unwrap();

    let mut owa = bed.program.service("web").clone();
    owa.name = "owa".into();
    bed.program.remove("web");
    bed.install(owa);
    assert_eq!(
        bed.dp.reader().flows().unwrap(),
        flows,
        "the flow is untouched"
    );
    assert_eq!(bed.events(FlowEvent::ForeignRemoved), 0);

    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
    let (action, out) = bed.run(bed.client_if, &ack.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[30..34], &backend.octets(), "still to its backend");
    assert_eq!(bed.events(FlowEvent::BackendRetired), 0);
    assert_eq!(bed.events(FlowEvent::NonSynMiss), 0);
    let reply = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);
    let (action, out) = bed.run(bed.server_if, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, to_client(&bed, &reply, 443, client));
}

/// A reload that splits a service in two over the same backends, then merges them back: every
/// flow goes on to the backend it went to, re-pointed at the id its backend has in the service
/// its port now belongs to, and is never re-selected.
#[test]
fn split_and_merged_services_keep_their_flows() {
    let mut bed = Bed::new();
    let backends = [1, 2, 3].map(backend_ip);
    let mut mail = service("mail", 443, &backends);
    mail.affinity = xnlb::config::Affinity::None;
    mail.ports = vec![
        xnlb::config::PortRange { lo: 443, hi: 443 },
        xnlb::config::PortRange { lo: 8443, hi: 8443 },
    ];
    bed.install(mail.clone());
    // Ten flows on each port, each to the backend the table gave it.
    let clients: Vec<((Ipv4Addr, u16), u16)> = (0..20u16)
        .map(|n| ((client_ip(40 + n), 42_000), if n < 10 { 443 } else { 8443 }))
        .collect();
    let mut went_to = Vec::new();
    for &(client, port) in &clients {
        let (action, out) = bed.connect(client, (VIP, port));
        assert_eq!(action, XDP_REDIRECT);
        went_to.push(Ipv4Addr::new(out[30], out[31], out[32], out[33]));
    }
    // Every flow's next packet, and its backend's reply, go where they went before.
    let still_there = |bed: &Bed, stage: &str| {
        for (&(client, port), &backend) in clients.iter().zip(&went_to) {
            let ack = bed.from_client(Pkt::tcp(client, (VIP, port), ACK));
            let (action, out) = bed.run(bed.client_if, &ack.bytes());
            assert_eq!(action, XDP_REDIRECT, "{stage}: {client:?}");
            assert_eq!(
                &out[30..34],
                &backend.octets(),
                "{stage}: still to its backend"
            );
            let reply = bed.from_backend(Pkt::tcp((backend, port), client, ACK), bed.server_if);
            let (action, out) = bed.run(bed.server_if, &reply.bytes());
            assert_eq!(
                (action, out),
                (XDP_REDIRECT, to_client(bed, &reply, port, client)),
                "{stage}: its reply"
            );
        }
        for event in [
            FlowEvent::BackendRetired,
            FlowEvent::ReselectedDown,
            FlowEvent::NonSynMiss,
            FlowEvent::ForeignRemoved,
        ] {
            assert_eq!(bed.events(event), 0, "{stage}: {event:?}");
        }
    };
    // Each flow's backend id names its backend in the service that answers for its port.
    let ids_follow = |bed: &Bed, service_of: &dyn Fn(u16) -> &'static str| {
        let flows = bed.dp.reader().flows().unwrap();
        assert_eq!(flows.len(), clients.len());
        for (key, entry) in flows {
            let port = u16::from_be(key.dst_port);
            let backend = Ipv4Addr::from(lb_common::addr::v4_octets(&entry.reply.src));
            assert_eq!(
                entry.backend_id,
                bed.program.backend_id_at(service_of(port), backend),
                "the flow to port {port} is under its service's id for {backend}"
            );
        }
    };

    // Split: `web` takes 443, `alt` 8443.
    bed.program.remove("mail");
    for (name, port) in [("web", 443), ("alt", 8443)] {
        let mut half = mail.clone();
        half.name = name.into();
        half.ports = vec![xnlb::config::PortRange { lo: port, hi: port }];
        bed.program.put(half);
    }
    let changes = bed.program.apply(&mut bed.dp);
    assert_eq!(changes.flows_repointed, 20, "{changes}");
    assert_eq!(bed.events(FlowEvent::Repointed), 20);
    ids_follow(&bed, &|port| if port == 443 { "web" } else { "alt" });
    still_there(&bed, "after the split");

    // Merge: `mail` answers for both again.
    bed.program.remove("web");
    bed.program.remove("alt");
    bed.program.put(mail.clone());
    let changes = bed.program.apply(&mut bed.dp);
    assert_eq!(changes.flows_repointed, 20, "{changes}");
    ids_follow(&bed, &|_| "mail");
    still_there(&bed, "after the merge");
}

/// The LRU evicts an established flow while its reply entry stays (the two maps age apart): the
/// backend's next packet re-adopts the flow from the entry and is translated, instead of reaching
/// the client from the backend's own address; the client's packets then find the flow again.
#[test]
fn an_evicted_flow_is_readopted_by_its_backends_next_packet() {
    let mut bed = Bed::new();
    three_backends_shared(&mut bed);
    let client = (client_ip(61), 42_000);
    bed.connect(client, (VIP, 443));
    let (key, before) = bed.dp.reader().flows().unwrap()[0];
    let backend = Ipv4Addr::from(lb_common::addr::v4_octets(&before.reply.src));
    assert!(bed.dp.evict_flow(&key).unwrap());

    let data = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);
    assert_eq!(
        bed.run(bed.server_if, &data.bytes()),
        (XDP_REDIRECT, to_client(&bed, &data, 443, client)),
        "translated, not passed from the backend's address"
    );
    assert_eq!(bed.events(FlowEvent::Readopted), 1);
    let flows = bed.dp.reader().flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        (flows[0].0, flows[0].1.reply, flows[0].1.backend_id),
        (key, before.reply, before.backend_id),
        "the same flow again"
    );
    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
    let (action, out) = bed.run(bed.client_if, &ack.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        &out[30..34],
        &backend.octets(),
        "the client's packets still go there"
    );
    assert_eq!(bed.events(FlowEvent::NonSynMiss), 0);
}

/// A flow that derives its replies has nothing left once the LRU evicts it: its backend's next
/// packet passes untouched (it cannot be told from the backend's own connection from that
/// client port), and the client's next packet starts the flow again, on the same backend.
#[test]
fn an_evicted_flow_that_derived_its_replies_starts_again_from_the_client() {
    let mut bed = Bed::new();
    three_backends(&mut bed);
    let client = (client_ip(61), 42_000);
    bed.connect(client, (VIP, 443));
    let (key, before) = bed.dp.reader().flows().unwrap()[0];
    assert_eq!(before.flags, Replies::Derived.flags());
    let backend = Ipv4Addr::from(lb_common::addr::v4_octets(&before.reply.src));
    assert!(bed.dp.evict_flow(&key).unwrap());

    let data = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);
    assert_eq!(
        bed.run(bed.server_if, &data.bytes()),
        (XDP_PASS, data.bytes())
    );
    assert_eq!(bed.events(FlowEvent::Readopted), 0);
    let ack = bed.from_client(Pkt::tcp(client, (VIP, 443), ACK));
    let (action, out) = bed.run(bed.client_if, &ack.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[30..34], &backend.octets(), "the same backend again");
    assert_eq!(bed.events(FlowEvent::NonSynMiss), 1);
    assert_eq!(
        bed.run(bed.server_if, &data.bytes()),
        (XDP_REDIRECT, to_client(&bed, &data, 443, client)),
        "its replies are translated again"
    );
}

/// What is not re-adopted: a SYN-ACK (a backend answering a new direct connection from the
/// evicted flow's client port, which must pass untouched, and clears the entry so that the rest
/// of that connection does too), a UDP reply, and a packet whose backend has gone down.
#[test]
fn a_direct_connection_udp_or_a_down_backend_is_never_readopted() {
    for replies in Replies::BOTH {
        never_readopted(replies);
    }
}

fn never_readopted(replies: Replies) {
    let mut bed = Bed::new();
    replies.install(&mut bed);
    let client = (client_ip(62), 42_000);
    bed.connect(client, (VIP, 443));
    let (key, flow) = bed.dp.reader().flows().unwrap()[0];
    let backend = Ipv4Addr::from(lb_common::addr::v4_octets(&flow.reply.src));
    bed.dp.evict_flow(&key).unwrap();
    let syn_ack = bed.from_backend(Pkt::tcp((backend, 443), client, SYN_ACK), bed.server_if);
    assert_eq!(
        bed.run(bed.server_if, &syn_ack.bytes()),
        (XDP_PASS, syn_ack.bytes())
    );
    let ack = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);
    assert_eq!(
        bed.run(bed.server_if, &ack.bytes()),
        (XDP_PASS, ack.bytes())
    );
    assert_eq!(bed.events(FlowEvent::Readopted), 0);
    assert_eq!(
        bed.events(FlowEvent::StaleReply),
        replies.entries() as u64,
        "the entry (if the flow claimed one) was cleared"
    );

    let mut dns = service("dns", 53, &[backend_ip(1)]);
    dns.protocol = Protocol::Udp;
    bed.install(dns);
    let udp_client = (client_ip(63), 5353);
    let query = bed.from_client(Pkt::udp(udp_client, (VIP, 53)));
    assert_eq!(bed.run(bed.client_if, &query.bytes()).0, XDP_REDIRECT);
    let udp_key = bed
        .dp
        .reader()
        .flows()
        .unwrap()
        .into_iter()
        .find(|(k, _)| u16::from_be(k.dst_port) == 53)
        .unwrap()
        .0;
    bed.dp.evict_flow(&udp_key).unwrap();
    let answer = bed.from_backend(Pkt::udp((backend_ip(1), 53), udp_client), bed.server_if);
    assert_eq!(
        bed.run(bed.server_if, &answer.bytes()),
        (XDP_PASS, answer.bytes())
    );

    let client = (client_ip(64), 42_000);
    bed.connect(client, (VIP, 443));
    let (key, flow) = *bed
        .dp
        .reader()
        .flows()
        .unwrap()
        .iter()
        .find(|(k, _)| k.src == lb_common::addr::v4(client.0.octets()))
        .unwrap();
    let backend = Ipv4Addr::from(lb_common::addr::v4_octets(&flow.reply.src));
    let name = ["b1", "b2", "b3"]
        .into_iter()
        .find(|b| bed.program.address_of(bed.backend_id("web", b)) == backend)
        .unwrap();
    bed.set_state("web", name, BackendState::Down);
    bed.dp.evict_flow(&key).unwrap();
    let ack = bed.from_backend(Pkt::tcp((backend, 443), client, ACK), bed.server_if);
    assert_eq!(
        bed.run(bed.server_if, &ack.bytes()),
        (XDP_PASS, ack.bytes())
    );
    assert_eq!(bed.events(FlowEvent::Readopted), 0);
}
