//! Maglev consistent hashing (Eisenbud et al., NSDI '16), weighted: the table the datapath
//! indexes with `hash % size`. Built here so the kernel does no more than one array read.
//!
//! Each backend walks its own permutation of the table (from a stable hash of its name, so a
//! backend's slots do not depend on its id or on the other backends) and claims the next free
//! slot on each of its turns; turns come in proportion to weight. Removing one of N backends
//! therefore frees only its own slots, and the others mostly keep theirs.

use lb_common::service::NO_BACKEND;

/// Default table size: a prime, so every `skip` visits every slot.
pub const DEFAULT_TABLE_SIZE: u32 = lb_common::service::RING_MAX_SIZE;

/// A backend as the table sees it.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    /// Written into the table.
    pub id: u32,
    /// Stable identity: decides the backend's permutation.
    pub name: &'a str,
    /// Relative share; 0 = not in the table.
    pub weight: u32,
}

/// Builds a table of `size` slots (`size` must be prime). Members with weight 0 get no slots;
/// with no member of positive weight, every slot is `NO_BACKEND`.
pub fn build(members: &[Member<'_>], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    let m = size as u64;
    let mut table = vec![NO_BACKEND; size as usize];
    let mut live: Vec<&Member<'_>> = members.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() {
        return table;
    }
    // Order by name so the table does not depend on the order of the config file.
    live.sort_by(|a, b| a.name.cmp(b.name));
    let max_weight = live.iter().map(|b| b.weight as u64).max().unwrap_or(1);
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|b| {
            let offset = stable_hash(b.name, 0x6d61_676c) % m;
            let skip = stable_hash(b.name, 0x6576_0001) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut filled = 0u64;
    while filled < m {
        for (i, member) in live.iter().enumerate() {
            credit[i] += member.weight as u64;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let (offset, skip) = perms[i];
            let mut slot = (offset + next[i] * skip) % m;
            while table[slot as usize] != NO_BACKEND {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            table[slot as usize] = member.id;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break;
            }
        }
    }
    table
}

/// FNV-1a over the name with a seed, finished with splitmix64: stable across builds and hosts.
fn stable_hash(name: &str, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("cas{i}")).collect()
    }

    fn members<'a>(names: &'a [String], weights: &[u32]) -> Vec<Member<'a>> {
        names
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (name, &weight))| Member {
                id: i as u32,
                name,
                weight,
            })
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &id in table {
            counts[id as usize] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / table.len() as f64)
            .collect()
    }

    #[test]
    fn equal_weights_share_the_table_within_two_percent() {
        for n in [2usize, 3, 7, 10, 50] {
            let names = names(n);
            let table = build(&members(&names, &vec![100; n]), DEFAULT_TABLE_SIZE);
            assert!(
                table.iter().all(|&id| (id as usize) < n),
                "every slot is filled"
            );
            for (i, share) in shares(&table, n).iter().enumerate() {
                let want = 1.0 / n as f64;
                assert!(
                    (share - want).abs() <= 0.02,
                    "n={n} backend {i}: share {share:.4}, want {want:.4}"
                );
            }
        }
    }

    #[test]
    fn shares_follow_weights_within_two_percent() {
        for weights in [
            vec![1, 2, 1],
            vec![100, 300, 600],
            vec![1000, 1, 500, 250],
            vec![5, 0, 5],
        ] {
            let names = names(weights.len());
            let table = build(&members(&names, &weights), DEFAULT_TABLE_SIZE);
            let total: u32 = weights.iter().sum();
            for (i, share) in shares(&table, weights.len()).iter().enumerate() {
                let want = weights[i] as f64 / total as f64;
                assert!(
                    (share - want).abs() <= 0.02,
                    "weights {weights:?} backend {i}: share {share:.4}, want {want:.4}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [3usize, 5, 10, 30] {
            let names = names(n);
            let before = build(&members(&names, &vec![100; n]), DEFAULT_TABLE_SIZE);
            for removed in [0, n / 2, n - 1] {
                let mut weights = vec![100; n];
                weights[removed] = 0;
                let after = build(&members(&names, &weights), DEFAULT_TABLE_SIZE);
                let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let fraction = moved as f64 / before.len() as f64;
                let bound = 1.0 / n as f64 + 0.02;
                assert!(
                    fraction <= bound,
                    "n={n} removing {removed}: {fraction:.4} of slots moved, bound {bound:.4}"
                );
                // Only the removed backend's slots may change hands... plus a little churn.
                assert!(after.iter().all(|&id| id as usize != removed));
            }
        }
    }

    #[test]
    fn adding_one_backend_moves_about_its_share() {
        let names = names(4);
        let before = build(&members(&names[..3], &[100; 3]), DEFAULT_TABLE_SIZE);
        let after = build(&members(&names, &[100; 4]), DEFAULT_TABLE_SIZE);
        let moved =
            before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / before.len() as f64;
        assert!(
            moved <= 0.25 + 0.02,
            "adding a 4th backend moved {moved:.4} of the table"
        );
    }

    #[test]
    fn the_table_does_not_depend_on_member_order_or_ids_of_others() {
        let names = names(5);
        let forward = members(&names, &[100; 5]);
        let mut reversed = forward.clone();
        reversed.reverse();
        assert_eq!(build(&forward, 65537), build(&reversed, 65537));
    }

    #[test]
    fn no_member_with_weight_gives_an_empty_table() {
        let names = names(2);
        assert!(
            build(&members(&names, &[0, 0]), 251)
                .iter()
                .all(|&id| id == NO_BACKEND)
        );
        assert!(build(&[], 251).iter().all(|&id| id == NO_BACKEND));
    }

    #[test]
    #[should_panic(expected = "not prime")]
    fn a_non_prime_size_is_refused() {
        build(&[], 65536);
    }

    #[test]
    fn build_time_for_65537_slots_and_100_backends() {
        let names = names(100);
        let members = members(&names, &vec![100; 100]);
        let start = std::time::Instant::now();
        let table = build(&members, DEFAULT_TABLE_SIZE);
        let elapsed = start.elapsed();
        assert_eq!(table.len(), 65537);
        println!(
            "maglev: built 65537 slots x 100 backends in {elapsed:?} (debug build: see `cargo xtask bench` for release)"
        );
    }
}
