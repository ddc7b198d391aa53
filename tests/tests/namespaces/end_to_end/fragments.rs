//! Fragmented UDP datagrams through the VIP, end to end: the client's stack fragments datagrams
//! of 4000 and 9000 bytes (its links carry 1500), the balancer must send every fragment of a
//! datagram to the backend its first went to, and the backend's answer, as large, comes back
//! fragmented the other way. A fragment sent elsewhere, or dropped, loses the datagram.

use xnlb_tests::apps::udp_ask_sized;

use super::*;

const SIZES: [usize; 2] = [4000, 9000];
const DATAGRAMS_PER_SIZE: usize = 30;

pub(super) fn fragmented_datagrams(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let config = farm.config(&[farm.service(
        "echo",
        ECHO,
        "    protocol: udp\n    affinity: none\n",
        &farm
            .backends(&[1, 2, 3], |_| "".into())
            .replace(&format!("port: {HTTP}"), &format!("port: {ECHO}")),
    )]);
    let _d = Daemon::start(&farm.net.lb, &config);
    let clients: Vec<Ipv4Addr> = farm.net.remote_clients(2, 5).concat();
    let mut answered = Vec::new();
    for size in SIZES {
        for i in 0..DATAGRAMS_PER_SIZE {
            let src = clients[i % clients.len()];
            let (backend, seen, len) = udp_ask_sized(&farm.net.client, src, farm.vip(ECHO), size)
                .unwrap_or_else(|e| {
                    panic!("{}: {size}-byte datagram from {src}: {e}", farm.mode())
                });
            assert_eq!(seen, farm.net.seen_by_backend(src).to_string());
            assert_eq!(len, size, "{}: the answer came back whole", farm.mode());
            answered.push(backend);
        }
    }
    let counts = tally(&answered);
    println!(
        "{}: {} fragmented datagrams answered: {}",
        farm.mode(),
        answered.len(),
        shares(&counts)
    );
    assert_eq!(counts.len(), 3, "{}: {counts:?}", farm.mode());
    let scrape = farm.scrape();
    let tracked = scrape.sum("xnlb_flow_events_total", &[("event", "fragment_tracked")]);
    let followed = scrape.sum("xnlb_flow_events_total", &[("event", "fragment_followed")]);
    println!(
        "{}: fragments tracked {tracked}, followed {followed}",
        farm.mode()
    );
    // Each datagram and each answer: one first fragment, and 2 (4000 bytes) or 6 (9000) more.
    let n = DATAGRAMS_PER_SIZE as f64;
    assert!(tracked >= 4.0 * n, "{}: {tracked} tracked", farm.mode());
    assert!(
        followed >= 2.0 * (2.0 + 6.0) * n,
        "{}: {followed} followed",
        farm.mode()
    );
}
