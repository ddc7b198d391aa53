//! The two IP versions behind one interface, so that each stage's logic is written once and
//! compiled for each version (`xnlb_to_vip` and `xnlb_to_vip6`, ...). What differs beyond the
//! header's fields (where a fragment's identification is, how a packet too big is answered) is
//! a method too.

use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, programs::XdpContext};
use lb_common::{
    addr::{Addr, AddrKey, FAMILY_V4, FAMILY_V6},
    checksum::Delta,
    flow::FlowKey,
    settings::DatapathSettings,
};

use crate::{
    Outcome, icmp, icmp6, mem,
    packet::{Ipv4Hdr, Ipv6Hdr},
    scratch,
};

/// The address-set key of an IPv6 address in the packet (copied by words: a plain copy of 16
/// bytes would be a `memmove` call).
#[inline(always)]
pub fn v6_key(addr: &Addr) -> AddrKey {
    let mut key = AddrKey::new([0; 4], FAMILY_V6);
    mem::copy(&mut key.addr, addr);
    key
}

/// Word-by-word equality (an array `==` may become a `memcmp` call, which BPF cannot make).
#[inline(always)]
pub fn same_addr(a: &Addr, b: &Addr) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

pub trait IpHeader {
    /// `FAMILY_V4` or `FAMILY_V6`.
    const FAMILY: u8;
    fn src(&self) -> Addr;
    fn dst(&self) -> Addr;
    /// TTL, or hop limit.
    fn ttl(&self) -> u8;
    /// Length of the whole IP packet, header included.
    fn packet_len(&self) -> u16;
    /// One hop less (with the header checksum, for IPv4).
    fn decrement_ttl(&mut self);
    /// Puts `src` and `dst` in the header (fixing IPv4's checksum); returns the change, for the
    /// transport checksum's pseudo-header.
    fn readdress(&mut self, src: &Addr, dst: &Addr) -> Delta;
    /// Family, addresses, TOS or flow label, and length, for a FIB lookup.
    fn fib_params(&self, fib: &mut FibParams);
    /// The identification its fragments share (IPv4's 16 bits, IPv6's 32, network order).
    fn fragment_id(&self) -> u32;
    /// A translated packet larger than its next hop's MTU `mtu`: answered, or the kernel's.
    fn too_big(
        &self,
        ctx: &XdpContext,
        sent_as: &FlowKey,
        mtu: u32,
        s: &DatapathSettings,
    ) -> Outcome;
}

impl IpHeader for Ipv4Hdr {
    const FAMILY: u8 = FAMILY_V4;

    #[inline(always)]
    fn src(&self) -> Addr {
        [self.src, 0, 0, 0]
    }

    #[inline(always)]
    fn dst(&self) -> Addr {
        [self.dst, 0, 0, 0]
    }

    #[inline(always)]
    fn ttl(&self) -> u8 {
        self.ttl
    }

    #[inline(always)]
    fn packet_len(&self) -> u16 {
        u16::from_be(self.tot_len)
    }

    #[inline(always)]
    fn decrement_ttl(&mut self) {
        // TTL and protocol share one checksum word.
        let old = u16::from_ne_bytes([self.ttl, self.proto]);
        self.ttl -= 1;
        let new = u16::from_ne_bytes([self.ttl, self.proto]);
        self.check = Delta::new().word(old, new).apply(self.check);
    }

    #[inline(always)]
    fn readdress(&mut self, src: &Addr, dst: &Addr) -> Delta {
        let addrs = Delta::new()
            .word32(self.src, src[0])
            .word32(self.dst, dst[0]);
        self.check = addrs.apply(self.check);
        self.src = src[0];
        self.dst = dst[0];
        addrs
    }

    #[inline(always)]
    fn fib_params(&self, fib: &mut FibParams) {
        fib.family = FAMILY_V4;
        fib.l4_protocol = self.proto;
        fib.__bindgen_anon_1.tot_len = u16::from_be(self.tot_len);
        fib.__bindgen_anon_2.tos = self.tos;
        fib.__bindgen_anon_3.ipv4_src = self.src;
        fib.__bindgen_anon_4.ipv4_dst = self.dst;
    }

    #[inline(always)]
    fn fragment_id(&self) -> u32 {
        self.id as u32
    }

    #[inline(always)]
    fn too_big(
        &self,
        ctx: &XdpContext,
        sent_as: &FlowKey,
        mtu: u32,
        s: &DatapathSettings,
    ) -> Outcome {
        icmp::too_big(ctx, self, sent_as, mtu, s)
    }
}

impl IpHeader for Ipv6Hdr {
    const FAMILY: u8 = FAMILY_V6;

    // Addresses are copied word by word (`mem`): a plain copy of 16 bytes becomes a call to
    // the byte-loop `memmove`, which the verifier walks byte by byte on every path.
    #[inline(always)]
    fn src(&self) -> Addr {
        let mut a = [0; 4];
        mem::copy(&mut a, &self.src);
        a
    }

    #[inline(always)]
    fn dst(&self) -> Addr {
        let mut a = [0; 4];
        mem::copy(&mut a, &self.dst);
        a
    }

    #[inline(always)]
    fn ttl(&self) -> u8 {
        self.hop_limit
    }

    #[inline(always)]
    fn packet_len(&self) -> u16 {
        u16::from_be(self.payload_len).saturating_add(40)
    }

    #[inline(always)]
    fn decrement_ttl(&mut self) {
        // No header checksum in IPv6.
        self.hop_limit -= 1;
    }

    #[inline(always)]
    fn readdress(&mut self, src: &Addr, dst: &Addr) -> Delta {
        let addrs = Delta::new().addr(&self.src, src).addr(&self.dst, dst);
        mem::copy(&mut self.src, src);
        mem::copy(&mut self.dst, dst);
        addrs
    }

    #[inline(always)]
    fn fib_params(&self, fib: &mut FibParams) {
        fib.family = FAMILY_V6;
        fib.l4_protocol = self.next_hdr;
        fib.__bindgen_anon_1.tot_len = self.packet_len();
        // The traffic class and flow label, as the kernel's own lookup takes them.
        fib.__bindgen_anon_2.flowinfo = self.vtc_flow & 0x0fff_ffffu32.to_be();
        // SAFETY: writes the union's IPv6 member, whole.
        unsafe {
            mem::copy(&mut fib.__bindgen_anon_3.ipv6_src, &self.src);
            mem::copy(&mut fib.__bindgen_anon_4.ipv6_dst, &self.dst);
        }
    }

    #[inline(always)]
    fn fragment_id(&self) -> u32 {
        // From the fragment header, which the entry's walk found (`packet::walk_ipv6`).
        scratch::get().map_or(0, |s| s.ipv6_fragment_id)
    }

    #[inline(always)]
    fn too_big(
        &self,
        ctx: &XdpContext,
        sent_as: &FlowKey,
        mtu: u32,
        s: &DatapathSettings,
    ) -> Outcome {
        icmp6::too_big(ctx, self, sent_as, mtu, s)
    }
}
