//! Scale-out's promise that every node makes the same choice (`docs/scale-out.md`): two daemons
//! started from equivalent configs written differently (services, backends and their keys in
//! another order) and with different histories (the second had one backend more, removed by a
//! reload, so its backend ids differ) hold the same Maglev table for each service, slot for
//! slot naming the same backend address, under the same hash seed.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{Array, Map, MapData};
use lb_common::maps as names;
use xnlb::{
    datapath::{Datapath, DatapathSizes, reconcile::Programmed},
    model::port_rules::ip_of,
};
use xnlb_tests::{
    daemon::Daemon,
    topology::{Mode, Net, TWO_ARM_CONFIG_HEAD, VIP, backend_ip},
};

/// Each service's live table as the running daemon holds it (read from its pinned maps), by
/// hash seed: the backend address in every slot.
fn tables(d: &Daemon) -> BTreeMap<u32, Vec<IpAddr>> {
    let (dp, adopted) = Datapath::load_pinned(DatapathSizes::default(), &d.files.pin_dir)
        .expect("open the daemon's maps");
    assert!(adopted.is_some(), "the daemon's maps are pinned");
    let image = Programmed::read(&dp).expect("read the maps").image;
    let ring: Array<MapData, u32> = Array::try_from(Map::Array(
        MapData::from_pin(d.files.pin_dir.join(names::RING)).expect("the pinned ring"),
    ))
    .expect("ring array");
    image
        .services
        .values()
        .map(|plan| {
            let info = plan.info;
            let addresses = (info.ring_base..info.ring_base + info.ring_size)
                .map(|slot| {
                    let id = ring.get(&slot, 0).expect("ring slot");
                    let b = &image.backends[&id];
                    ip_of(&b.addr, b.family)
                })
                .collect();
            (info.hash_seed, addresses)
        })
        .collect()
}

fn backend(i: usize, extra: &str) -> String {
    format!(
        "      - {{ name: b{i}, address: {}{extra} }}\n",
        backend_ip(i)
    )
}

#[test]
fn equivalent_configs_give_every_node_the_same_tables() {
    let net = Net::build(Mode::TwoArm, 4);
    let web = |order: &[usize], weighted: bool| -> String {
        let list: String = order
            .iter()
            .map(|&i| {
                backend(
                    i,
                    if weighted && i == 1 {
                        ", weight: 200"
                    } else {
                        ""
                    },
                )
            })
            .collect();
        format!(
            "  - name: web\n    vip: {VIP}\n    ports: [80]\n    affinity: none\n    backends:\n{list}"
        )
    };
    let mail = |order: &[usize]| -> String {
        let list: String = order.iter().map(|&i| backend(i, "")).collect();
        format!(
            "  - name: mail\n    affinity: single\n    ports: [25]\n    vip: {VIP}\n    backends:\n{list}"
        )
    };

    let first = format!(
        "{TWO_ARM_CONFIG_HEAD}{}{}",
        web(&[1, 2, 3], true),
        mail(&[1, 2])
    );
    let d = Daemon::start(&net.lb, &first);
    let want = tables(&d);
    assert_eq!(want.len(), 2, "two services");
    assert!(
        want.values().all(|t| t.len() > 1000),
        "full-size tables: {:?}",
        want.values().map(Vec::len).collect::<Vec<_>>()
    );
    drop(d);

    // Another order, and a history: backend 4 first (it takes ids), then removed by a reload.
    let with_four = format!(
        "{TWO_ARM_CONFIG_HEAD}{}{}",
        mail(&[2, 1]),
        web(&[4, 3, 1, 2], true)
    );
    let d = Daemon::start(&net.lb, &with_four);
    let before = tables(&d);
    assert_ne!(before, want, "backend 4 takes slots while it is there");
    let second = format!(
        "{TWO_ARM_CONFIG_HEAD}{}{}",
        mail(&[2, 1]),
        web(&[3, 1, 2], true)
    );
    d.write_config(&second);
    let said = d.ok(&["reload"]);
    assert!(said.contains("b4"), "{said}");
    let got = tables(&d);
    for (seed, table) in &want {
        let other = got.get(seed).expect("the same seed on both");
        let differing = table.iter().zip(other).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing,
            0,
            "service with seed {seed:#x}: {differing} of {} slots differ",
            table.len()
        );
    }
    assert_eq!(got.len(), want.len());
}
