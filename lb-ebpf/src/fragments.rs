//! Fragments of a balanced datagram (`lb_common::fragment`). The first fragment carries the
//! ports: it is balanced, or reverse-translated, like any packet, and keeps the translation it
//! got in `FRAGMENTS` ([`record`]). The datagram's later fragments carry none: they take that
//! translation, addresses only (the transport checksum lies in the first fragment, whose update
//! covers the whole datagram), and the same next hop ([`follow`]).

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, programs::XdpContext};
use lb_common::{
    flow::FlowKey,
    fragment::FRAGMENT_TIMEOUT_NS,
    next_hop::NextHop,
    settings::DatapathSettings,
    stats::{FlowEvent, PassReason},
};

use crate::{
    Outcome, cluster, forward,
    ip::IpHeader,
    maps::FRAGMENTS,
    mem,
    packet::{EthHdr, IP_MF, IP_OFFSET, Ipv4Hdr, Ports},
    scratch, stats,
};

/// A fragment after the first of its datagram: it carries no transport header.
#[inline(always)]
pub fn is_later(ip: &Ipv4Hdr) -> bool {
    u16::from_be(ip.frag_off) & IP_OFFSET != 0
}

/// The first fragment of a datagram that has more.
#[inline(always)]
pub fn is_first(ip: &Ipv4Hdr) -> bool {
    u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) == IP_MF
}

/// Keeps the translation of the first fragment `ip` (already translated; `sent_as` is the tuple
/// it arrived with) for its datagram's later fragments: its new addresses, its next hop `hop`,
/// its backend `backend_id`, and whether it goes `to_client`. A frame of its own, off the
/// stages' stacks; the entry is built in scratch.
#[inline(never)]
pub fn record<I: IpHeader>(
    sent_as: &FlowKey,
    ip: &I,
    hop: *const NextHop,
    backend_id: u32,
    to_client: bool,
) {
    let Some(scratch) = scratch::get() else {
        return;
    };
    let (key, e) = (&mut scratch.fragment_key, &mut scratch.fragment);
    mem::copy(&mut key.src, &sent_as.src);
    mem::copy(&mut key.dst, &sent_as.dst);
    key.id = ip.fragment_id();
    key.proto = sent_as.proto;
    key.family = I::FAMILY;
    key._pad = 0;
    // SAFETY: a helper that takes no arguments.
    e.last_seen_ns = unsafe { bpf_ktime_get_coarse_ns() };
    e.src = ip.src();
    e.dst = ip.dst();
    // SAFETY: a pointer to a live map element or scratch (valid for this run).
    mem::copy(&mut e.hop, unsafe { &*hop });
    e.backend_id = backend_id;
    e.to_client = to_client as u8;
    e._pad0 = 0;
    e._pad1 = 0;
    // A datagram whose ID its sender used again meanwhile replaces the old one's entry.
    if FRAGMENTS.insert(&*key, &*e, 0).is_ok() {
        stats::flow_event(FlowEvent::FragmentTracked);
    }
}

/// The later fragment `ip` (of a datagram of protocol `proto`), given its datagram's
/// translation and sent by its next hop; None when its first fragment was not seen (came later,
/// never, or too long ago).
#[inline(always)]
pub fn follow<I: IpHeader>(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut I,
    proto: u8,
    s: &DatapathSettings,
) -> Option<Outcome> {
    let scratch = scratch::get()?;
    let key = &mut scratch.fragment_key;
    key.src = ip.src();
    key.dst = ip.dst();
    key.id = ip.fragment_id();
    key.proto = proto;
    key.family = I::FAMILY;
    key._pad = 0;
    let e = FRAGMENTS.get_ptr_mut(&*key)?;
    // SAFETY: a pointer to a live LRU element (valid for this run under RCU); fields get plain
    // stores of values this packet decided.
    let e = unsafe { &mut *e };
    // SAFETY: a helper that takes no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.saturating_sub(e.last_seen_ns) >= FRAGMENT_TIMEOUT_NS {
        return None;
    }
    e.last_seen_ns = now;
    if ip.ttl() <= 1 {
        return Some(Outcome::Pass(PassReason::TtlExceeded));
    }
    // (Later fragments carry no transport header: the pseudo-header's change is not needed.)
    let _ = ip.readdress(&e.src, &e.dst);
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let to_client = e.to_client != 0;
    if to_client {
        stats::to_client(e.backend_id, bytes);
    } else {
        stats::to_backend(e.backend_id, bytes);
    }
    stats::flow_event(FlowEvent::FragmentFollowed);
    let epoch = forward::epoch(now, s);
    let ask_fib = to_client && s.asks_fib_for_client_hops();
    let no_ports = Ports { src: 0, dst: 0 };
    // A fragment may be fragmented again (it has no DF): the kernel does it.
    let sent = forward::send(ctx, eth, ip, &no_ports, &mut e.hop, epoch, ask_fib).unanswered();
    Some(cluster::to_kernel_as_own(ctx, s, sent))
}
