//! Sending a translated packet: the kernel's FIB gives the next hop and its MAC; XDP_TX when it
//! leaves by the interface it came in on, a redirect otherwise. Anything the FIB cannot answer
//! directly goes to the kernel, already translated, so the kernel forwards it (resolving ARP,
//! fragmenting, or answering with ICMP) instead of it being dropped silently.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{addr::FAMILY_V4, stats::PassReason};

use crate::{
    Outcome, nat,
    packet::{EthHdr, Ipv4Hdr, L4},
};

#[inline(always)]
pub fn send(ctx: &XdpContext, eth: &mut EthHdr, ip: &mut Ipv4Hdr, l4: &L4) -> Outcome {
    // SAFETY: `parse_l4` checked that these bytes lie inside the packet, which outlives this call.
    let ports = unsafe { &*l4.ports };
    // SAFETY: `bpf_fib_lookup`'s parameters are plain integers: all zero is a valid value.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = FAMILY_V4;
    fib.l4_protocol = ip.proto;
    fib.sport = ports.src;
    fib.dport = ports.dst;
    fib.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len);
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = ip.src;
    fib.__bindgen_anon_4.ipv4_dst = ip.dst;
    let ingress = ctx.ingress_ifindex() as u32;
    fib.ifindex = ingress;

    // SAFETY: `fib` is a live, initialised struct of exactly the size passed, and `ctx.ctx` is this
    // program's own context.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Outcome::Pass(PassReason::NoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Outcome::Pass(PassReason::FragNeeded),
        _ => return Outcome::Pass(PassReason::NoFastRoute),
    }
    nat::decrement_ttl(ip);
    eth.dst = fib.dmac;
    eth.src = fib.smac;
    if fib.ifindex == ingress {
        Outcome::Sent(xdp_action::XDP_TX)
    } else {
        // SAFETY: a helper that takes plain integers.
        Outcome::Sent(unsafe { bpf_redirect(fib.ifindex, 0) } as u32)
    }
}
