//! Sending a translated packet: by the next hop kept for its destination (`lb_common::next_hop`),
//! or the kernel's FIB when none is current, whose answer is then kept. XDP_TX when it leaves by
//! the interface it came in on, a redirect otherwise. Anything the FIB cannot answer directly
//! goes to the kernel already translated, so the kernel forwards it (resolving ARP, or
//! answering with ICMP) instead of it being dropped silently. A packet larger than the route's
//! MTU is the caller's to handle (`Outcome::TooBig`): `icmp::too_big` answers it or hands it to
//! the kernel.
//!
//! Under held routing (one-arm on a host that does not forward, where the FIB refuses to
//! answer) the FIB is never asked: the controller holds backends' next hops and a flow's client
//! is answered the way its packets came. A hop not held yet goes to the kernel as
//! `no_neighbour`.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    next_hop::{HELD_EPOCH, NextHop, current_epoch},
    settings::DatapathSettings,
    stats::PassReason,
};

use crate::{
    Outcome,
    ip::IpHeader,
    maps::NEXT_HOP_EPOCH,
    mem,
    packet::{EthHdr, Ports},
    scratch,
};

/// The smallest MTU an IPv4 route can have (the kernel's `min_pmtu`; IPv6's is larger).
const MIN_ROUTE_MTU: u16 = 552;

/// The epoch kept next hops must carry at `now`. Read before anything that decides which hop
/// to use: a hop the controller replaces after this read is then stale by its bump.
#[inline(always)]
pub fn epoch(now: u64, s: &DatapathSettings) -> u32 {
    if s.holds_next_hops() {
        return HELD_EPOCH;
    }
    current_epoch(NEXT_HOP_EPOCH.get(0).copied().unwrap_or(0), now)
}

/// The next hop back to where the frame `eth` came from, held for its flow: out of the
/// interface it arrived on, to the MAC that sent it (the client, or the router it came
/// through), from `smac` (`cluster::answering_mac`). The frame fitted that interface, so its
/// replies get no MTU of their own.
#[inline(always)]
pub fn return_to_sender(ctx: &XdpContext, eth: &EthHdr, smac: &[u8; 6], hop: &mut NextHop) {
    hop.epoch = HELD_EPOCH;
    hop.ifindex = ctx.ingress_ifindex() as u32;
    hop.mtu = u16::MAX;
    mem::copy_mac(&mut hop.dmac, &eth.src);
    mem::copy_mac(&mut hop.smac, smac);
    hop._pad = 0;
}

/// Sends the translated packet by `hop`, the next hop kept for its destination (looked up and
/// kept first when it is not current in `epoch`). Under held routing a hop not held goes to the
/// kernel, unless `ask_fib_when_not_held` (a two-arm cluster, which forwards: the FIB's answer
/// is then held for the flow). `ports` are the packet's (or zero), for the FIB's multipath
/// hash.
#[inline(always)]
pub fn send<I: IpHeader>(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut I,
    ports: &Ports,
    hop: *mut NextHop,
    epoch: u32,
    ask_fib_when_not_held: bool,
) -> Outcome {
    // SAFETY: a pointer to a live map element (valid for this run under RCU). Fields get plain
    // stores of the FIB's answer, the epoch last: a CPU that sees the epoch current sees the
    // answer it was written with.
    let hop = unsafe { &mut *hop };
    if !hop.current(epoch) {
        if epoch == HELD_EPOCH && !ask_fib_when_not_held {
            return Outcome::Pass(PassReason::NoNeighbour);
        }
        if let Err(outcome) = look_up(ctx, ip, ports, hop, epoch) {
            return outcome;
        }
    }
    if ip.packet_len() > hop.mtu {
        return Outcome::TooBig(hop.mtu as u32);
    }
    ip.decrement_ttl();
    mem::copy_mac(&mut eth.dst, &hop.dmac);
    mem::copy_mac(&mut eth.src, &hop.smac);
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        Outcome::Sent(xdp_action::XDP_TX)
    } else {
        // SAFETY: a helper that takes plain integers.
        Outcome::Sent(unsafe { bpf_redirect(hop.ifindex, 0) } as u32)
    }
}

/// Asks the FIB where the packet goes and keeps the answer in `hop` for `epoch`. An answer it
/// cannot give directly (no neighbour entry yet, no route) is not kept: the packet goes to the
/// kernel, and the next one asks again. Nor is "fragmentation needed", which only says the
/// route's MTU (`Outcome::TooBig`).
#[inline(always)]
fn look_up<I: IpHeader>(
    ctx: &XdpContext,
    ip: &I,
    ports: &Ports,
    hop: &mut NextHop,
    epoch: u32,
) -> Result<(), Outcome> {
    let Some(scratch) = scratch::get() else {
        return Err(Outcome::Pass(PassReason::NoFastRoute));
    };
    let fib = &mut scratch.fib;
    // SAFETY: `bpf_fib_lookup`'s parameters are plain integers: all zero is a valid value.
    unsafe { mem::zero(fib) };
    ip.fib_params(fib);
    fib.sport = ports.src;
    fib.dport = ports.dst;
    fib.ifindex = ctx.ingress_ifindex() as u32;

    // SAFETY: `fib` is a live, initialised struct of exactly the size passed, and `ctx.ctx` is this
    // program's own context.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Outcome::Pass(PassReason::NoNeighbour)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            // SAFETY: the FIB wrote the route's MTU over `tot_len` (the same union).
            let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
            return Err(Outcome::TooBig(mtu as u32));
        }
        _ => return Err(Outcome::Pass(PassReason::NoFastRoute)),
    }
    hop.ifindex = fib.ifindex;
    // SAFETY: on success the FIB wrote the route's MTU over `tot_len` (the same union).
    let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
    // No IPv4 route has an MTU below 552 (`min_pmtu`): a smaller value is this packet's own
    // length, left by a kernel that does not report the MTU (before 5.12); then only the egress
    // device checks the size, and drops an oversized frame.
    hop.mtu = if mtu < MIN_ROUTE_MTU { u16::MAX } else { mtu };
    mem::copy_mac(&mut hop.dmac, &fib.dmac);
    mem::copy_mac(&mut hop.smac, &fib.smac);
    // SAFETY: a field of a live map element (see `send`); volatile so the compiler keeps it last.
    unsafe { core::ptr::write_volatile(&mut hop.epoch, epoch) };
    Ok(())
}
