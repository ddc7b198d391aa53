//! Distribution, weights, affinity and UDP; the address backends see.

use super::*;

pub(super) fn balancing(mode: Mode) {
    let farm = Farm::new(mode, 3);
    let all = [1, 2, 3];
    let weight = |n| format!(", weight: {}", if n == 2 { 200 } else { 100 });
    let config = farm.config(&[
        farm.service(
            "web",
            HTTP,
            "    affinity: none\n",
            &farm.backends(&all, |_| "".into()),
        ),
        farm.service(
            "weighted",
            81,
            "    affinity: none\n",
            &farm.backends(&all, weight),
        ),
        farm.service(
            "sticky",
            82,
            "    affinity: single\n",
            &farm.backends(&all, |_| "".into()),
        ),
        farm.service(
            "subnet",
            83,
            "    affinity: network\n    network_prefix: 24\n",
            &farm.backends(&all, |_| "".into()),
        ),
        farm.service(
            "echo",
            ECHO,
            "    protocol: udp\n    affinity: none\n",
            &farm
                .backends(&all, |_| "".into())
                .replace(&format!("port: {HTTP}"), &format!("port: {ECHO}")),
        ),
    ]);
    let _d = Daemon::start(&farm.net.lb, &config);
    let clients = farm.net.client_addresses(39);
    let mode_name = farm.mode();

    // 1000 requests from 40 clients over three equal backends.
    let answered: Vec<String> = (0..1000)
        .map(|i| farm.get(clients[i % clients.len()], HTTP))
        .collect();
    let counts = tally(&answered);
    println!(
        "{mode_name}: 1000 requests, 40 clients, 3 equal backends: {}",
        shares(&counts)
    );
    assert_shares(&format!("{mode_name} equal"), &counts, &[1, 1, 1]);

    // Weights 100:200:100.
    let answered: Vec<String> = (0..2000)
        .map(|i| farm.get(clients[i % clients.len()], 81))
        .collect();
    let counts = tally(&answered);
    println!(
        "{mode_name}: 2000 requests, weights 1:2:1: {}",
        shares(&counts)
    );
    assert_shares(&format!("{mode_name} weighted"), &counts, &[1, 2, 1]);

    // Affinity none: one client's connections spread over every backend.
    let one: Vec<String> = (0..30).map(|_| farm.get(clients[0], HTTP)).collect();
    assert_eq!(
        tally(&one).len(),
        3,
        "{mode_name}: affinity none, one client: {one:?}"
    );

    // Affinity single: each client address sticks to one backend; the clients still spread.
    let mut sticky = BTreeMap::new();
    for &c in &clients {
        let seen: BTreeSet<String> = (0..5).map(|_| farm.get(c, 82)).collect();
        assert_eq!(
            seen.len(),
            1,
            "{mode_name}: affinity single, client {c}: {seen:?}"
        );
        sticky.insert(c, seen.into_iter().next().unwrap());
    }
    let spread = tally(sticky.values());
    println!("{mode_name}: affinity single, 40 clients: {spread:?}");
    assert!(
        spread.len() >= 2,
        "{mode_name}: all clients on one backend: {spread:?}"
    );

    // Affinity network /24: the clients of one network (behind a router) share a backend.
    let networks = farm.net.remote_clients(8, 4);
    let mut per_network = Vec::new();
    for hosts in &networks {
        let seen: BTreeSet<String> = hosts
            .iter()
            .flat_map(|&h| [farm.get(h, 83), farm.get(h, 83)])
            .collect();
        assert_eq!(
            seen.len(),
            1,
            "{mode_name}: affinity network, {hosts:?}: {seen:?}"
        );
        per_network.extend(seen);
    }
    println!("{mode_name}: affinity network, 8 /24s of 4 clients: {per_network:?}");
    assert!(
        tally(&per_network).len() >= 2,
        "{mode_name}: {per_network:?}"
    );

    // UDP: every datagram answered, from every backend, with the right source address.
    let mut echoes = Vec::new();
    for i in 0..60 {
        let src = clients[i % clients.len()];
        let (backend, seen) = udp_ask(&farm.net.client, src, farm.vip(ECHO))
            .unwrap_or_else(|e| panic!("{mode_name}: UDP from {src}: {e}"));
        assert_eq!(seen, farm.net.seen_by_backend(src).to_string());
        echoes.push(backend);
    }
    let counts = tally(&echoes);
    println!("{mode_name}: 60 UDP exchanges: {}", shares(&counts));
    assert_eq!(counts.len(), 3, "{mode_name}: {counts:?}");
}
