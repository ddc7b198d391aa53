//! The flow hash: one function, used by the datapath to pick a ring slot and by the controller
//! to predict (and test) that choice.

use crate::addr::{Addr, network};
use crate::service::Affinity;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 (x86, 32-bit) over the five words `addr ++ [port]`, unrolled for the verifier.
#[inline(always)]
pub const fn hash_addr_port(addr: &Addr, port: u16, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, addr[0]);
    h = mix(h, addr[1]);
    h = mix(h, addr[2]);
    h = mix(h, addr[3]);
    h = mix(h, port as u32);
    finish(h ^ 20)
}

/// The hash that selects a backend for a new flow, following the service's NLB affinity:
/// `none` = client address and port, `single` = client address, `network` = the client's
/// network (its first `network_prefix` bits). `client_port` is in network byte order.
#[inline(always)]
pub const fn affinity_hash(
    affinity: u8,
    network_prefix: u8,
    client: &Addr,
    client_port: u16,
    seed: u32,
) -> u32 {
    if affinity == Affinity::None as u8 {
        hash_addr_port(client, client_port, seed)
    } else if affinity == Affinity::Network as u8 {
        hash_addr_port(&network(client, network_prefix), 0, seed)
    } else {
        // `single` and anything unknown: the client address alone is the safe choice.
        hash_addr_port(client, 0, seed)
    }
}
