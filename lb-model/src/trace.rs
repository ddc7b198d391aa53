//! `xnlb trace`: what the daemon streams for each traced packet (`lb_common::trace::TraceEvent`
//! with its ids named), and the line the CLI prints for it.

use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use lb_common::{
    addr::{Addr, PROTO_TCP, PROTO_UDP},
    flow::FlowKey,
    service::Affinity,
    stats::{DropReason, PassReason, XDP_ACTION_LABELS},
    trace::{ANY, TraceDecision, TraceDirection, TraceEvent, TraceVerdict},
};
use serde::{Deserialize, Serialize};

use crate::port_rules::ip_of;

/// What the ids in an event stand for: the running config's services and backends, and the
/// host's interfaces.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub services: BTreeMap<u32, String>,
    pub backends: BTreeMap<u32, String>,
    pub interfaces: BTreeMap<u32, String>,
}

/// One line of a trace stream (`--json` prints these as they come).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TraceMessage {
    /// A traced packet.
    Event(Box<TraceRecord>),
    /// Events the datapath could not write since the trace began, when that grew.
    Missed(Missed),
    /// The trace ended (the count reached, or the daemon stopping), with its totals.
    End {
        events: u64,
        #[serde(flatten)]
        missed: Missed,
        why: String,
    },
}

/// Events the datapath could not write: over the rate limit, or the buffer full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missed {
    pub limited: u64,
    pub lost: u64,
}

/// A traced packet, its ids named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// When the datapath decided it (RFC 3339, UTC, milliseconds).
    pub time: String,
    pub direction: TraceDirection,
    /// "tcp", "udp", or the IP protocol's number.
    pub protocol: String,
    /// The client's address and port, and the VIP's, as the client sees the flow.
    pub client: String,
    pub vip: String,
    /// The service whose rule took the packet (none: no rule did).
    pub service: Option<String>,
    pub decision: TraceDecision,
    /// The service's affinity (for a new flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// The affinity hash and the ring slot it chose (a new flow from the ring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_slot: Option<u32>,
    /// The backend (its name; its id when the running config has no such id any more).
    pub backend: Option<String>,
    /// The packet as it left, when it was translated: addresses and ports after translation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Sent>,
    pub verdict: TraceVerdict,
    /// Why: the drop's or pass's reason, or the forwarding action ("redirect", "tx").
    pub reason: String,
    pub in_interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_interface: Option<String>,
    /// The TCP flags, as "SYN", "SYN|ACK" (empty for UDP).
    pub tcp_flags: String,
}

/// A forwarded packet's addresses as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub src: String,
    pub dst: String,
}

impl TraceRecord {
    /// The record of `event`, decided `monotonic_offset` nanoseconds after the Unix epoch's
    /// CLOCK_MONOTONIC zero (the wall clock minus the monotonic one).
    pub fn of(event: &TraceEvent, names: &Names, realtime_minus_monotonic_ns: i128) -> Self {
        let at_ns = event.time_ns as i128 + realtime_minus_monotonic_ns;
        let at = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_nanos(at_ns.clamp(0, u64::MAX as i128) as u64);
        let direction = TraceDirection::from_u8(event.direction).unwrap_or(TraceDirection::ToVip);
        let decision = TraceDecision::from_u8(event.decision).unwrap_or_default();
        let verdict = TraceVerdict::from_u8(event.verdict).unwrap_or_default();
        let c = &event.client;
        let new_flow = matches!(
            decision,
            TraceDecision::NewFlow | TraceDecision::Reselected | TraceDecision::Sticky
        );
        let id = |id: u32, book: &BTreeMap<u32, String>| {
            (id != ANY).then(|| book.get(&id).cloned().unwrap_or_else(|| format!("#{id}")))
        };
        Self {
            time: humantime::format_rfc3339_millis(at).to_string(),
            direction,
            protocol: match c.proto {
                PROTO_TCP => "tcp".into(),
                PROTO_UDP => "udp".into(),
                other => other.to_string(),
            },
            client: endpoint(c.family, &c.src, c.src_port),
            vip: endpoint(c.family, &c.dst, c.dst_port),
            service: id(event.service_id, &names.services),
            decision,
            affinity: (new_flow && event.service_id != ANY)
                .then(|| affinity_label(event.affinity).to_string()),
            hash: (event.hash != 0 || event.ring_slot != 0).then_some(event.hash),
            ring_slot: (event.hash != 0 || event.ring_slot != 0).then_some(event.ring_slot),
            backend: id(event.backend_id, &names.backends),
            sent: (event.sent.family != 0).then(|| sent(&event.sent)),
            verdict,
            reason: reason_label(verdict, event.reason),
            in_interface: interface(event.in_ifindex, names),
            out_interface: interface(event.out_ifindex, names),
            tcp_flags: if c.proto == PROTO_TCP {
                tcp_flags(event.tcp_flags)
            } else {
                String::new()
            },
        }
    }

    /// The one line `xnlb trace` prints:
    /// `14:02:11.532 198.18.0.10:51234 → owa 198.18.1.100:443 new flow, affinity single, hash
    /// 0x1f3a → cas2 (ring slot 40213), DNAT → 198.18.2.12:443, redirect srv0`.
    pub fn render(&self) -> String {
        // HH:MM:SS.mmm of the RFC 3339 time.
        let clock = self.time.get(11..23).unwrap_or(&self.time);
        let flags = if self.tcp_flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.tcp_flags)
        };
        let service = self
            .service
            .as_deref()
            .map(|s| format!("{s} "))
            .unwrap_or_default();
        let arrow = if self.direction == TraceDirection::FromBackend {
            "←"
        } else {
            "→"
        };
        let mut line = format!(
            "{clock} {} {arrow} {service}{} {}{flags}",
            self.client, self.vip, self.protocol
        );
        let backend = self.backend.as_deref().unwrap_or("?");
        match self.decision {
            TraceDecision::None => {}
            TraceDecision::Reply => line += &format!(" reply from {backend}"),
            decision => {
                line += &format!(" {}", decision.label());
                if let Some(affinity) = &self.affinity {
                    line += &format!(", affinity {affinity}");
                }
                match (self.hash, self.ring_slot) {
                    (Some(hash), Some(slot)) => {
                        line += &format!(", hash {hash:#x} → {backend} (ring slot {slot})")
                    }
                    _ => line += &format!(" → {backend}"),
                }
            }
        }
        if let Some(sent) = &self.sent {
            line += &self.translation(sent);
        }
        match self.verdict {
            TraceVerdict::Sent => {
                line += &format!(", {}", self.reason);
                if let Some(out) = &self.out_interface {
                    line += &format!(" {out}");
                }
            }
            TraceVerdict::Drop => line += &format!(", dropped ({})", self.reason),
            TraceVerdict::Pass => line += &format!(", passed to the kernel ({})", self.reason),
        }
        line
    }

    /// ", DNAT → backend[, SNAT → address]" for a client's packet; ", reverse NAT → client"
    /// for a reply.
    fn translation(&self, sent: &Sent) -> String {
        if self.direction == TraceDirection::FromBackend {
            return format!(", reverse NAT {} → {}", sent.src, sent.dst);
        }
        let mut out = String::new();
        if sent.dst != self.vip {
            out += &format!(", DNAT → {}", sent.dst);
        }
        if sent.src != self.client {
            out += &format!(", SNAT → {}", sent.src);
        }
        out
    }
}

impl TraceMessage {
    /// The line `xnlb trace` prints for it (without `--json`).
    pub fn render(&self) -> String {
        match self {
            TraceMessage::Event(record) => record.render(),
            TraceMessage::Missed(m) => format!(
                "-- {} events not written so far: {} over the rate limit, {} with the buffer full",
                m.limited + m.lost,
                m.limited,
                m.lost
            ),
            TraceMessage::End {
                events,
                missed,
                why,
            } => format!(
                "-- trace ended ({why}): {events} events, {} over the rate limit, {} lost to a full buffer",
                missed.limited, missed.lost
            ),
        }
    }
}

/// An address and port as written in a URL: `198.18.0.10:51234`, `[fd00::1]:443`.
fn endpoint(family: u8, addr: &Addr, port_be: u16) -> String {
    let port = u16::from_be(port_be);
    match ip_of(addr, family) {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn sent(key: &FlowKey) -> Sent {
    Sent {
        src: endpoint(key.family, &key.src, key.src_port),
        dst: endpoint(key.family, &key.dst, key.dst_port),
    }
}

fn affinity_label(byte: u8) -> &'static str {
    Affinity::from_u8(byte).map_or("?", |a| a.label())
}

fn reason_label(verdict: TraceVerdict, reason: u8) -> String {
    match verdict {
        TraceVerdict::Drop => DropReason::ALL
            .get(reason as usize)
            .map_or("?", |r| r.label()),
        TraceVerdict::Pass => PassReason::ALL
            .get(reason as usize)
            .map_or("?", |r| r.label()),
        TraceVerdict::Sent => XDP_ACTION_LABELS
            .get(reason as usize)
            .copied()
            .unwrap_or("?"),
    }
    .to_string()
}

fn interface(index: u32, names: &Names) -> Option<String> {
    (index != 0).then(|| {
        names
            .interfaces
            .get(&index)
            .cloned()
            .unwrap_or_else(|| format!("if{index}"))
    })
}

/// "SYN|ACK".
fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join("|")
}
