//! xnlb's XDP programs: balance what is addressed to a VIP, undo the NAT on backends' replies,
//! and hand everything else to the kernel untouched. The entry program classifies; a stage
//! program of each kind does the work (`lb_common::programs`). Only frames sent to the balancer's own MAC
//! are acted on: a flooded frame for another host is that host's. Every outcome is counted with
//! its reason.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// Map keys go by reference: passing them by value would copy 20-40 bytes per lookup.
#![allow(clippy::needless_borrows_for_generic_args)]

mod balance;
mod cluster;
mod conntrack;
mod derived;
mod forward;
mod fragments;
mod icmp;
mod icmp6;
mod ip;
mod maps;
mod mem;
mod nat;
mod packet;
mod reset;
mod scratch;
mod select;
mod stats;
mod sticky;
mod trace;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    addr::AddrKey,
    addr::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    programs::{FROM_BACKEND, FROM_BACKEND6, ICMP, ICMP6, TO_VIP, TO_VIP6},
    settings::DatapathSettings,
    stats::{DropReason, PassReason},
    trace::TraceDirection,
};

use maps::{BACKEND_ADDRS, SETTINGS, VIPS};
use packet::{
    ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Check, Ipv4Hdr, Ipv6Hdr, check_ipv4, ipv6_valid,
    ptr_at,
};

/// What happened to a packet.
pub enum Outcome {
    /// To the kernel's stack, with why.
    Pass(PassReason),
    /// Dropped, with why (only traffic the balancer owns).
    Drop(DropReason),
    /// Forwarded by XDP: `XDP_TX` or the result of a redirect.
    Sent(u32),
    /// Translated, but larger than its next hop's MTU (`.0`): for the caller to answer
    /// (`icmp::too_big`); counted as `frag_needed` if it gets this far. (A `u32`, as every
    /// variant's: with a narrower one LLVM leaves the rest of the register undefined, which the
    /// verifier refuses to read.)
    TooBig(u32),
}

impl Outcome {
    /// This outcome, with a packet too big for its next hop left to the kernel: what is never
    /// answered with "fragmentation needed" (an ICMP error, RFC 1122; a later fragment, which
    /// the kernel may fragment again).
    #[inline(always)]
    fn unanswered(self) -> Outcome {
        match self {
            Outcome::TooBig(_) => Outcome::Pass(PassReason::FragNeeded),
            outcome => outcome,
        }
    }
}

/// The entry program, attached to the interfaces: classifies the packet and tail-calls the
/// stage that handles it (`lb_common::programs`), or passes it.
#[xdp]
pub fn xnlb(ctx: XdpContext) -> u32 {
    let outcome = process(&ctx);
    // Only drops are traced here: what this program passes is not balanced traffic, and what
    // it hands to a stage is traced there.
    if let Outcome::Drop(reason) = outcome
        && trace::armed()
    {
        used(trace::entry_drop(ctx.ctx, reason as u32));
    }
    finish(outcome)
}

/// Runs the stage's body `$stage` on the packet, traced going `$direction` when a trace is
/// armed (`trace`): otherwise a load and a branch before and after. Nothing is kept across the
/// body (its frame and its callees' fill the verifier's 512 bytes); `begin` leaves what `emit`
/// needs in scratch. A macro, not a function taking a closure: LLVM makes the closure a
/// function of its own, a frame more on the stack. (One copy of the body, not one per branch:
/// the verifier walks each.)
macro_rules! traced {
    ($ctx:expr, $direction:expr, $stage:expr) => {{
        if trace::armed() {
            used(trace::begin($ctx.ctx, $direction as u32));
        }
        let settled: u64 = $stage;
        if trace::armed() {
            used(trace::emit(
                $ctx.ctx,
                $direction as u32,
                (settled >> 32) as u32,
            ));
        }
        settled as u32
    }};
}

/// Uses the result of a function of its own, in one instruction. LLVM turns a function whose
/// result no caller uses into one that returns nothing, and may then leave a stack pointer in
/// the return register, which the verifier refuses ("cannot return stack pointer").
#[inline(always)]
fn used(result: u32) {
    // (BPF assembly: the host build, for clippy only, has no such instruction.)
    #[cfg(target_arch = "bpf")]
    // SAFETY: a register moved onto itself.
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) result as u64 => _, options(nomem, nostack))
    };
    #[cfg(not(target_arch = "bpf"))]
    let _ = result;
}

/// A stage body's outcome counted (`finish`): its XDP action in the low half, and in the high
/// half the outcome as `trace::emit` takes it. One word, which a function of its own returns
/// in a register: an enum comes back through the caller's stack, and the stage's frame leaves
/// no room for that.
#[inline(always)]
fn settled(outcome: Outcome) -> u64 {
    let word = trace::outcome_word(&outcome);
    (word as u64) << 32 | finish(outcome) as u64
}

/// The stage for a packet to a VIP that was sent to this host (checked by `xnlb`).
#[xdp]
pub fn xnlb_to_vip(ctx: XdpContext) -> u32 {
    traced!(ctx, TraceDirection::ToVip, to_vip(ctx.ctx))
}

/// The body of `xnlb_to_vip`, in a frame of its own: the trace's functions, called beside it,
/// would not fit the verifier's 512 bytes on top of it.
#[inline(never)]
fn to_vip(raw: *mut aya_ebpf::bindings::xdp_md) -> u64 {
    let ctx = packet::own_context(raw);
    settled(match stage_input(&ctx) {
        // SAFETY: `stage_input` checked that the headers lie inside the packet, which outlives
        // this call.
        Some((eth, ip, settings)) => unsafe {
            balance::to_vip_v4(&ctx, &mut *eth, &mut *ip, settings)
        },
        None => Outcome::Drop(DropReason::MalformedIp),
    })
}

/// The stage for a packet from a backend's address that was sent to this host (checked by
/// `xnlb`).
#[xdp]
pub fn xnlb_from_backend(ctx: XdpContext) -> u32 {
    traced!(ctx, TraceDirection::FromBackend, from_backend(ctx.ctx))
}

/// The body of `xnlb_from_backend`, in a frame of its own (as `to_vip`).
#[inline(never)]
fn from_backend(raw: *mut aya_ebpf::bindings::xdp_md) -> u64 {
    let ctx = packet::own_context(raw);
    settled(match stage_input(&ctx) {
        // SAFETY: as in `to_vip`.
        Some((eth, ip, settings)) => unsafe {
            balance::from_backend_v4(&ctx, &mut *eth, &mut *ip, settings)
        },
        None => Outcome::Pass(PassReason::Malformed),
    })
}

/// `xnlb_to_vip` for IPv6. A packet too big for its next hop is answered here, after the
/// stage's body has returned (`icmp6::answer`): the two frames together would pass the
/// verifier's bound on the stack.
#[xdp]
pub fn xnlb_to_vip6(ctx: XdpContext) -> u32 {
    traced!(ctx, TraceDirection::ToVip, answered6(ctx.ctx, to_vip6))
}

/// An IPv6 stage's body (`to_vip6`, `from_backend6`) run, a packet too big answered
/// (`icmp6::answer`), settled: in a frame of its own, as `to_vip`.
/// (Generic, not a function pointer: BPF has no indirect calls.)
#[inline(never)]
fn answered6<F: FnOnce(*mut aya_ebpf::bindings::xdp_md) -> Outcome>(
    raw: *mut aya_ebpf::bindings::xdp_md,
    body: F,
) -> u64 {
    let ctx = packet::own_context(raw);
    settled(icmp6::answer(&ctx, body(raw)))
}

/// The body of `xnlb_to_vip6`, in a frame of its own.
#[inline(never)]
fn to_vip6(raw: *mut aya_ebpf::bindings::xdp_md) -> Outcome {
    let ctx = packet::own_context(raw);
    match stage_input6(&ctx) {
        // SAFETY: as in `to_vip`.
        Some((eth, ip, settings)) => unsafe {
            balance::to_vip_v6(&ctx, &mut *eth, &mut *ip, settings)
        },
        None => Outcome::Drop(DropReason::MalformedIp),
    }
}

/// `xnlb_from_backend` for IPv6 (too big: as in `xnlb_to_vip6`).
#[xdp]
pub fn xnlb_from_backend6(ctx: XdpContext) -> u32 {
    traced!(
        ctx,
        TraceDirection::FromBackend,
        answered6(ctx.ctx, from_backend6)
    )
}

/// The body of `xnlb_from_backend6`, in a frame of its own.
#[inline(never)]
fn from_backend6(raw: *mut aya_ebpf::bindings::xdp_md) -> Outcome {
    let ctx = packet::own_context(raw);
    match stage_input6(&ctx) {
        // SAFETY: as in `to_vip`.
        Some((eth, ip, settings)) => unsafe {
            balance::from_backend_v6(&ctx, &mut *eth, &mut *ip, settings)
        },
        None => Outcome::Pass(PassReason::Malformed),
    }
}

/// The stage for ICMP sent to this host (checked by `xnlb`): errors about balanced flows,
/// echo requests to VIPs.
#[xdp]
pub fn xnlb_icmp(ctx: XdpContext) -> u32 {
    finish(match stage_input(&ctx) {
        // SAFETY: as in `to_vip`.
        Some((eth, ip, settings)) => unsafe { icmp::stage(&ctx, &mut *eth, &mut *ip, settings) },
        None => Outcome::Pass(PassReason::Malformed),
    })
}

/// The stage for ICMPv6 sent to this host (checked by `xnlb`).
#[xdp]
pub fn xnlb_icmp6(ctx: XdpContext) -> u32 {
    finish(match stage_input6(&ctx) {
        // SAFETY: as in `to_vip`.
        Some((eth, ip, settings)) => unsafe { icmp6::stage(&ctx, &mut *eth, &mut *ip, settings) },
        None => Outcome::Pass(PassReason::Malformed),
    })
}

/// Counts an outcome and gives its XDP action.
#[inline(always)]
fn finish(outcome: Outcome) -> u32 {
    let action = match outcome {
        Outcome::Pass(reason) => {
            stats::pass_reason(reason);
            xdp_action::XDP_PASS
        }
        Outcome::Drop(reason) => {
            stats::drop_reason(reason);
            xdp_action::XDP_DROP
        }
        Outcome::Sent(action) => action,
        Outcome::TooBig(_) => {
            stats::pass_reason(PassReason::FragNeeded);
            xdp_action::XDP_PASS
        }
    };
    stats::xdp_action(action);
    action
}

/// The headers `xnlb` checked, found again by a stage (a tail call passes nothing but the
/// packet), with the settings.
#[inline(always)]
fn stage_input(ctx: &XdpContext) -> Option<(*mut EthHdr, *mut Ipv4Hdr, &'static DatapathSettings)> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    Some((eth, ip, SETTINGS.get(0)?))
}

/// `stage_input` for IPv6.
#[inline(always)]
fn stage_input6(
    ctx: &XdpContext,
) -> Option<(*mut EthHdr, *mut Ipv6Hdr, &'static DatapathSettings)> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    Some((eth, ip, SETTINGS.get(0)?))
}

/// The floor: parse Ethernet, pass. Not part of balancing. Benchmarks measure the balancer
/// against it, and the one-arm test bed attaches it to the veth facing the balancer, standing in
/// for a real NIC's receive path so that `XDP_TX` on veth is delivered (`docs/testing.md`).
#[xdp]
pub fn xnlb_floor(ctx: XdpContext) -> u32 {
    match ptr_at::<EthHdr>(&ctx, 0) {
        Some(eth) => {
            // Read the EtherType so the floor pays for the one header every program parses.
            // SAFETY: `ptr_at` checked that the header lies inside the packet, which outlives this
            // call.
            let _ = unsafe { core::ptr::read_volatile(&(*eth).proto) };
            xdp_action::XDP_PASS
        }
        None => xdp_action::XDP_PASS,
    }
}

// The literal slots of `tail_call!`'s uses.
const _: () = assert!(
    TO_VIP == 0
        && FROM_BACKEND == 1
        && ICMP == 2
        && TO_VIP6 == 3
        && FROM_BACKEND6 == 4
        && ICMP6 == 5
);

/// Hands the packet to the stage in `STAGES` slot `$slot` (a literal); goes on only if that
/// slot is empty. A tail call with a constant slot becomes a direct jump; LLVM would merge two
/// calls of the helper into one with the slot in a register (an indirect jump through a
/// retpoline, about 15 ns more per packet), so each call is written out with its slot in the
/// instruction text, which it cannot merge.
macro_rules! tail_call {
    ($ctx:expr, $slot:literal) => {
        // (BPF assembly: the host build, for clippy only, has no such call.)
        #[cfg(target_arch = "bpf")]
        // SAFETY: `bpf_tail_call(ctx, STAGES, slot)` (helper 12): on success the stage runs in
        // place of this program and nothing after the call runs; on failure it returns with
        // the registers it clobbers declared.
        unsafe {
            core::arch::asm!(
                concat!("r3 = ", $slot),
                "call 12",
                in("r1") aya_ebpf::EbpfContext::as_ptr($ctx),
                in("r2") &maps::STAGES as *const aya_ebpf::maps::ProgramArray,
                lateout("r0") _,
                lateout("r1") _,
                lateout("r2") _,
                lateout("r3") _,
                lateout("r4") _,
                lateout("r5") _,
            )
        }
    };
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Outcome {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Outcome::Pass(PassReason::Truncated);
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet, which outlives this call.
    let eth = unsafe { &mut *eth };
    match u16::from_be(eth.proto) {
        ETH_P_IP => {}
        ETH_P_IPV6 => return process_v6(ctx, eth),
        _ => {
            if cluster::is_arp(eth)
                && let Some(settings) = SETTINGS.get(0)
                && settings.cluster.enabled != 0
            {
                return cluster::answer_arp(ctx, eth, settings);
            }
            return Outcome::Pass(PassReason::NotIp);
        }
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Outcome::Pass(PassReason::Truncated);
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet, which outlives this call.
    let ip = unsafe { &mut *ip };
    let ip_valid = matches!(
        check_ipv4(ip, ctx.data_end() - ctx.data() - ETH_HLEN),
        Ipv4Check::Valid
    );
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole elements or
    // store single fields, so a read sees old or new values, never freed memory.
    if unsafe { VIPS.get(&AddrKey::v4_word(ip.dst)) }.is_some() {
        // Another host's frame passes untouched, however malformed: it is not ours to judge.
        if sent_to_us(ctx, eth).is_none() {
            return Outcome::Pass(PassReason::NotForUs);
        }
        if !ip_valid {
            return Outcome::Drop(DropReason::MalformedIp);
        }
        if !packet::ipv4_checksum_ok(ctx, packet::ipv4_header_len(ip)) {
            return Outcome::Drop(DropReason::IpChecksum);
        }
        if ip.proto == PROTO_ICMP {
            tail_call!(ctx, 2);
        } else {
            tail_call!(ctx, 0);
        }
        return Outcome::Drop(DropReason::NoStage);
    }
    if !ip_valid {
        return Outcome::Pass(PassReason::Malformed);
    }
    // An ICMP error about a flow may come from any address (a router on either side).
    if ip.proto == PROTO_ICMP {
        if sent_to_us(ctx, eth).is_none() {
            return Outcome::Pass(PassReason::NotForUs);
        }
        tail_call!(ctx, 2);
        return Outcome::Pass(PassReason::NotOurs);
    }
    // SAFETY: the element stays valid for this program run (RCU); writers replace whole elements or
    // store single fields, so a read sees old or new values, never freed memory.
    if unsafe { BACKEND_ADDRS.get(&AddrKey::v4_word(ip.src)) }.is_some() {
        if sent_to_us(ctx, eth).is_none() {
            return Outcome::Pass(PassReason::NotForUs);
        }
        tail_call!(ctx, 1);
        return Outcome::Drop(DropReason::NoStage);
    }
    Outcome::Pass(PassReason::NotOurs)
}

/// `process` for IPv6: to a VIP, or from a backend's address, to the stage; everything else
/// (neighbour discovery and router advertisements among it) to the kernel untouched.
#[inline(always)]
fn process_v6(ctx: &XdpContext, eth: &EthHdr) -> Outcome {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return Outcome::Pass(PassReason::Truncated);
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet, which outlives this call.
    let ip = unsafe { &*ip };
    let valid = ipv6_valid(ip, ctx.data_end() - ctx.data() - ETH_HLEN);
    // SAFETY: the element stays valid for this program run (RCU).
    if unsafe { VIPS.get(&ip::v6_key(&ip.dst)) }.is_some() {
        if sent_to_us(ctx, eth).is_none() {
            return Outcome::Pass(PassReason::NotForUs);
        }
        if !valid {
            return Outcome::Drop(DropReason::MalformedIp);
        }
        if leave_ipv6_transport(ctx, ip) == PROTO_ICMPV6 {
            tail_call!(ctx, 5);
        } else {
            tail_call!(ctx, 3);
        }
        return Outcome::Drop(DropReason::NoStage);
    }
    if !valid {
        return Outcome::Pass(PassReason::Malformed);
    }
    // An ICMPv6 error about a flow may come from any address (a router on either side);
    // neighbour discovery sent to this host passes through the stage untouched.
    if ip.next_hdr == PROTO_ICMPV6 {
        if sent_to_us(ctx, eth).is_none() {
            return Outcome::Pass(PassReason::NotOurs);
        }
        leave_ipv6_transport(ctx, ip);
        tail_call!(ctx, 5);
        return Outcome::Pass(PassReason::NotOurs);
    }
    // SAFETY: as above.
    if unsafe { BACKEND_ADDRS.get(&ip::v6_key(&ip.src)) }.is_some() {
        if sent_to_us(ctx, eth).is_none() {
            return Outcome::Pass(PassReason::NotForUs);
        }
        leave_ipv6_transport(ctx, ip);
        tail_call!(ctx, 4);
        return Outcome::Drop(DropReason::NoStage);
    }
    Outcome::Pass(PassReason::NotOurs)
}

/// Walks the IPv6 packet's extension headers for the stage it goes to (`packet::walk_ipv6`);
/// returns its transport protocol. Plain TCP and UDP are not walked: the stage reads where
/// their header is from the IPv6 header (`packet::ipv6_transport`).
#[inline(always)]
fn leave_ipv6_transport(ctx: &XdpContext, ip: &Ipv6Hdr) -> u8 {
    if matches!(ip.next_hdr, PROTO_TCP | PROTO_UDP) {
        return ip.next_hdr;
    }
    let Some(s) = scratch::get() else {
        return 0;
    };
    s.ipv6_transport = packet::walk_ipv6(ctx, ip, &mut s.ipv6_fragment_id);
    (s.ipv6_transport >> 16) as u8
}

/// The datapath's settings, if the frame was sent to the receiving interface's own MAC;
/// otherwise it is another host's to act on (flooded, broadcast, multicast).
#[inline(always)]
fn sent_to_us(ctx: &XdpContext, eth: &EthHdr) -> Option<&'static DatapathSettings> {
    let settings = SETTINGS.get(0)?;
    settings
        .addressed_to_us(ctx.ingress_ifindex() as u32, &eth.dst)
        .then_some(settings)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
