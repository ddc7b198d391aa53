//! Counters: per-CPU arrays indexed by the enums below. The same enums give the Prometheus labels,
//! so a reason counted in the kernel is the reason an administrator reads.

/// Defines a `#[repr(u32)]` reason enum with its label for metrics, and `COUNT`/`ALL`.
macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $label:literal,)+ }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            pub const COUNT: u32 = Self::ALL.len() as u32;
            /// The metrics label.
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }
        }
    };
}

reasons! {
    /// Why a packet was dropped. Only traffic the balancer owns (addressed to a VIP) is dropped.
    DropReason {
        /// IP header to a VIP is invalid (IPv4: version, IHL < 5, total length; IPv6: version,
        /// payload length).
        MalformedIp = "malformed_ip",
        /// IPv4 header to a VIP fails its checksum: corrupted on the way, never balanced.
        IpChecksum = "ip_checksum",
        /// TCP/UDP header to a VIP is truncated or has a bad data offset.
        MalformedL4 = "malformed_l4",
        /// A later fragment to a VIP (not the first of its datagram) whose first fragment was not
        /// seen (it came later, or never, or longer ago than `FRAGMENT_TIMEOUT_NS`): it carries
        /// no ports to balance it by, so it is dropped rather than misrouted.
        Fragment = "fragment",
        /// VIP traffic matching no port rule.
        NoService = "no_service",
        /// The rule's filtering mode is `disabled`.
        FilteringDisabled = "filtering_disabled",
        /// No healthy backend for a new flow.
        NoBackend = "no_backend",
        /// One-arm: no free SNAT port for this backend after every attempt.
        SnatExhausted = "snat_exhausted",
        /// Two-arm: another live flow already owns this flow's reply tuple.
        ReplyCollision = "reply_collision",
        /// The connection table refused an insert (out of memory).
        FlowTableFull = "flow_table_full",
        /// Cluster mode: the packet's bucket is another node's (every node sees every packet;
        /// not an error).
        NotMyBucket = "not_my_bucket",
        /// The stage that handles the packet is not in `STAGES` (a datapath loaded in part):
        /// dropped rather than half handled.
        NoStage = "no_stage",
        /// IPv6 to a VIP whose extension headers the datapath does not walk (more than four, or
        /// one cut short): its transport header cannot be found.
        Ipv6Headers = "ipv6_headers",
    }
}

reasons! {
    /// Why a packet went to the kernel's stack instead of being forwarded by XDP.
    PassReason {
        /// Not IPv4 or IPv6 (ARP, LLDP, ...).
        NotIp = "not_ip",
        /// Neither to a VIP nor a reply of a balanced flow (IPv6 neighbour discovery and router
        /// advertisements among them).
        NotOurs = "not_ours",
        /// Frame too short for the headers it claims.
        Truncated = "truncated",
        /// Invalid IP header (or IPv6 extension headers not walked), not to a VIP: the kernel's
        /// own checks decide.
        Malformed = "malformed",
        /// A fragment not to a VIP, or a backend's later fragment of a datagram whose first
        /// fragment was not a balanced flow's reply (the kernel's).
        Fragment = "fragment",
        /// ICMP to a VIP that is neither an echo request nor an error about a flow the
        /// balancer keeps (or an echo request another cluster node answers): the kernel's.
        IcmpToVip = "icmp_to_vip",
        /// TTL would expire: the kernel sends the ICMP time-exceeded.
        TtlExceeded = "ttl_exceeded",
        /// Translated, but the next hop's MAC is unknown: the kernel forwards and resolves it.
        NoNeighbour = "no_neighbour",
        /// Translated, but larger than the egress MTU, and not answered with an ICMP
        /// "fragmentation needed" (`too_big_answered`): its DF bit is clear (the kernel
        /// fragments it), it is larger than the interface it came in on allows (a GRO-merged
        /// packet in generic mode: the kernel segments it), or it is itself an ICMP error.
        FragNeeded = "frag_needed",
        /// Translated, but the route lookup did not give a direct next hop (forwarding off,
        /// unreachable, local): the kernel decides and answers with ICMP where due.
        NoFastRoute = "no_fast_route",
        /// To a VIP or from a backend, but sent to another host's MAC (flooded unicast, a
        /// promiscuous interface) or to a broadcast/multicast MAC: that host's to act on.
        NotForUs = "not_for_us",
        /// Cluster mode: ARP for another address than a VIP (or the shared gateway): the
        /// kernel's.
        Arp = "arp",
    }
}

reasons! {
    /// Connection-table events worth watching.
    FlowEvent {
        /// A TCP packet other than a SYN started a flow: state was lost (LRU eviction, restart).
        NonSynMiss = "non_syn_miss",
        /// An established flow's backend is down: the flow was re-selected.
        ReselectedDown = "reselected_down",
        /// An SNAT port was taken; the next candidate was tried.
        SnatPortRetry = "snat_port_retry",
        /// A flow's reply entry was missing or stolen and was claimed again.
        ReplyReclaimed = "reply_reclaimed",
        /// A backend's packet matched a reply entry whose flow is gone, expired or elsewhere:
        /// the packet went to the kernel untouched and the entry was removed.
        StaleReply = "stale_reply",
        /// A flow's backend id now names another backend (a reload removed its backend and
        /// the id was given to a new one, perhaps of another service): the flow was
        /// re-selected instead of following the id.
        BackendRetired = "backend_retired",
        /// A SYN recorded a new half-open flow (a new `HALF_OPEN` element).
        HalfOpenNew = "half_open_new",
        /// A half-open flow completed its handshake and moved to the established table (its
        /// `HALF_OPEN` element removed).
        Established = "established",
        /// A new `FLOWS` element: a flow that completed its handshake, or one that started
        /// established (UDP, a TCP packet other than a SYN).
        EstablishedNew = "established_new",
        /// Established flows the controller removed after a reload because their backend id
        /// now names another backend (counted by the controller, never by the datapath).
        ForeignRemoved = "foreign_removed",
        /// The same for half-open flows.
        HalfOpenForeignRemoved = "half_open_foreign_removed",
        /// A SYN no SNAT port could be found for was answered with a RST from the VIP (it is
        /// also counted as the drop `snat_exhausted`).
        SnatExhaustedReset = "snat_exhausted_reset",
        /// Flows (either stage) the controller re-pointed after a reload at the id their
        /// backend has in the service their tuple now belongs to: a split or merge of services
        /// over the same backends (counted by the controller).
        Repointed = "repointed",
        /// A backend's packet (TCP, past the handshake) found its reply entry but not its flow,
        /// which the LRU had evicted: the flow was recorded again from the entry and the
        /// packet translated, instead of reaching the client from the backend's own address.
        Readopted = "readopted",
        /// Two-arm cluster mode: a backend's packet of a connection whose node died was taken
        /// by the new owner of its bucket, which recorded the flow and carried it on.
        Adopted = "adopted",
        /// An ICMP error (unreachable, fragmentation needed, time exceeded, parameter problem)
        /// from the client's side about a balanced flow was translated to the flow's backend:
        /// outer and quoted addresses, ports and checksums.
        IcmpErrorToBackend = "icmp_error_to_backend",
        /// The same from the backend's side (the backend, or a router on its way), translated
        /// to the flow's client.
        IcmpErrorToClient = "icmp_error_to_client",
        /// A packet of a flow, larger than its next hop's MTU and with DF set, was answered
        /// with an ICMP "fragmentation needed" to its sender about the packet as the sender sent
        /// it, so that path MTU discovery works through the NAT.
        TooBigAnswered = "too_big_answered",
        /// An echo request to a VIP was answered by the datapath.
        EchoAnswered = "echo_answered",
        /// The first fragment of a datagram (client's or backend's) was balanced or
        /// reverse-translated and its translation kept for the datagram's later fragments.
        FragmentTracked = "fragment_tracked",
        /// A later fragment followed its datagram's first fragment.
        FragmentFollowed = "fragment_followed",
        /// A new flow went to the backend its client's sticky entry names (`sticky_timeout`).
        StickyHit = "sticky_hit",
        /// A client without a sticky entry got one (a new `STICKY` element).
        StickyRecorded = "sticky_recorded",
        /// A client's sticky entry named a backend that takes no new flows (down, disabled,
        /// draining, removed): the new flow was balanced by the ring and the entry moved to its
        /// backend.
        StickyMoved = "sticky_moved",
        /// A client's sticky entry had run past its timeout: the new flow was balanced by the
        /// ring and the entry started again with its backend.
        StickyExpired = "sticky_expired",
        /// Sticky entries the administrator cleared (`xnlb sticky clear`; counted by the
        /// controller, never by the datapath).
        StickyCleared = "sticky_cleared",
    }
}

/// XDP actions, indexed by their kernel values (`XDP_ABORTED` = 0 ... `XDP_REDIRECT` = 4).
pub const XDP_ACTION_LABELS: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

/// Per-backend counters (per CPU; the controller sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Client → backend direction.
    pub to_backend_packets: u64,
    pub to_backend_bytes: u64,
    /// Backend → client direction (replies).
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// Flows this backend was selected for.
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<BackendStats>() == 40);

/// Per-service counters (per CPU): everything that matched the service's rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Dropped because of the service (filtering disabled, no healthy backend, SNAT exhausted).
    pub dropped: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 32);
