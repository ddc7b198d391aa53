//! The connection table: two LRU maps. `FLOWS` is keyed by the client's tuple and says where the
//! flow goes; `REPLIES` is keyed by the tuple the backend's replies carry and says how to undo
//! the NAT. A reply key is claimed with `BPF_NOEXIST`, so two flows never share one (in one-arm
//! mode that is what makes an SNAT port unique).

use crate::addr::Addr;

/// A directional 5-tuple. Ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// TCP life of a flow, for timeouts.
pub const FLOW_OPEN: u8 = 0;
/// A FIN or RST was seen: the entry lives `tcp_closing_timeout` after its last packet.
pub const FLOW_CLOSING: u8 = 1;

/// Value in `FLOWS`: the translation applied to the client's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// `bpf_ktime_get_coarse_ns` of the last packet in either direction.
    pub last_seen_ns: u64,
    /// The reply tuple this flow owns in `REPLIES` (backend → client or SNAT address).
    pub reply: FlowKey,
    pub backend_id: u32,
    /// `FLOW_OPEN` or `FLOW_CLOSING`.
    pub state: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 56);

/// Value in `REPLIES`: the client's original tuple, to restore on the backend's replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyEntry {
    /// The client's tuple as it reached the VIP (`FLOWS` key of the owning flow).
    pub client: FlowKey,
    pub backend_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ReplyEntry>() == 48);

impl FlowKey {
    /// Field-by-field equality (derived `==` may become a `memcmp` call, which BPF cannot make).
    #[inline(always)]
    pub fn same(&self, o: &FlowKey) -> bool {
        self.src[0] == o.src[0]
            && self.src[1] == o.src[1]
            && self.src[2] == o.src[2]
            && self.src[3] == o.src[3]
            && self.dst[0] == o.dst[0]
            && self.dst[1] == o.dst[1]
            && self.dst[2] == o.dst[2]
            && self.dst[3] == o.dst[3]
            && self.src_port == o.src_port
            && self.dst_port == o.dst_port
            && self.proto == o.proto
            && self.family == o.family
    }
}
