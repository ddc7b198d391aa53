//! Following the kernel's routing state: a netlink socket subscribed to route, neighbour, link
//! and address events. The datapath keeps the FIB's answers (next hop, MACs, MTU) for its flows,
//! so any change that could alter an answer must make them stale: `watch` calls its callback
//! for each such change, within milliseconds of the kernel's.
//!
//! Neighbour entries change state all the time without changing anything an answer holds
//! (reachable → stale → probe → reachable): only a new link-layer address, an entry that became
//! unusable, and a removed entry make answers stale. Route, link and address events always do.
//! A neighbour that becomes usable changes no kept answer (none could use it), but a next hop
//! held by the controller may have been waiting for it: that is reported as `Resolved`.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, OwnedFd},
};

use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
        socket,
    },
};
use tracing::warn;

// Multicast groups (`RTMGRP_*`) and message types (`RTM_*`) from <linux/rtnetlink.h>.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELLINK: u16 = 17;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Neighbour states whose link-layer address the FIB hands out (`NUD_*`).
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

const NLMSG_HDRLEN: usize = 16;
const NDMSG_LEN: usize = 12;

/// A neighbour entry as far as a FIB answer is concerned: its link-layer address while usable.
type NeighbourKey = (i32, Vec<u8>);
type NeighbourAnswer = Option<Vec<u8>>;

/// What a routing event means for next hops. Ordered: `Stale` says more than `Resolved`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// A neighbour became usable: no kept answer used it, but a held next hop may be waiting
    /// for it.
    Resolved,
    /// A route, link, address, or a neighbour's link-layer address changed: kept answers may
    /// be wrong.
    Stale,
}

/// Watches routing changes on a thread of its own and calls `changed` for each that could alter
/// a next hop (and once at the start, `Stale`, for whatever changed before the watch began).
/// Runs until the process ends.
pub fn watch(mut changed: impl FnMut(Change) + Send + 'static) -> std::io::Result<()> {
    let fd = subscribe()?;
    std::thread::Builder::new()
        .name("route-watch".into())
        .spawn(move || {
            let mut neighbours = Neighbours::default();
            changed(Change::Stale);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    Ok(n) => {
                        if let Some(change) = neighbours.changes_in(&buf[..n]) {
                            changed(change);
                        }
                    }
                    // The kernel dropped events: anything may have changed.
                    Err(Errno::ENOBUFS) => changed(Change::Stale),
                    Err(Errno::EINTR) => {}
                    Err(e) => {
                        warn!("routing changes are no longer followed: netlink: {e}");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

/// A netlink route socket subscribed to the groups that matter, with a dump of the neighbour
/// table requested (so that later neighbour events can be told from what was already there).
fn subscribe() -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let groups = RTMGRP_LINK
        | RTMGRP_NEIGH
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    let mut request = Vec::with_capacity(NLMSG_HDRLEN + NDMSG_LEN);
    request.extend_from_slice(&((NLMSG_HDRLEN + NDMSG_LEN) as u32).to_ne_bytes());
    request.extend_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    request.extend_from_slice(&[0u8; NDMSG_LEN]); // ndmsg: every family, every interface
    send(fd.as_raw_fd(), &request, MsgFlags::empty())?;
    Ok(fd)
}

/// One netlink message: its type and payload.
struct Message<'a> {
    kind: u16,
    payload: &'a [u8],
}

/// The messages in one datagram; a truncated one ends it.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let message = Message {
            kind: u16::from_ne_bytes(buf[4..6].try_into().ok()?),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(message)
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// What the watch knows of the neighbour table.
#[derive(Default)]
struct Neighbours {
    known: HashMap<NeighbourKey, NeighbourAnswer>,
}

impl Neighbours {
    /// The largest change any message of a datagram makes. Every message is read, so that
    /// the neighbour table stays up to date past the first change.
    fn changes_in(&mut self, datagram: &[u8]) -> Option<Change> {
        messages(datagram).fold(None, |most, m| self.changes(&m).max(most))
    }

    /// What message `m` changes for next hops.
    fn changes(&mut self, m: &Message) -> Option<Change> {
        match m.kind {
            RTM_NEWROUTE | RTM_DELROUTE | RTM_NEWLINK | RTM_DELLINK | RTM_NEWADDR | RTM_DELADDR => {
                Some(Change::Stale)
            }
            RTM_NEWNEIGH | RTM_DELNEIGH => {
                let Some((key, answer)) = neighbour(m.payload) else {
                    return Some(Change::Stale);
                };
                if m.kind == RTM_DELNEIGH {
                    let had = self.known.remove(&key).flatten().is_some();
                    return had.then_some(Change::Stale);
                }
                let usable = answer.is_some();
                match self.known.insert(key, answer.clone()) {
                    Some(Some(old)) if Some(&old) != answer.as_ref() => Some(Change::Stale),
                    Some(Some(_)) => None,
                    // Usable now and not before (or first seen: from the dump, or new). No kept
                    // answer can have used it.
                    Some(None) | None => usable.then_some(Change::Resolved),
                }
            }
            _ => None,
        }
    }
}

/// A neighbour message's entry: (interface, address) and its link-layer address while usable.
fn neighbour(payload: &[u8]) -> Option<(NeighbourKey, NeighbourAnswer)> {
    if payload.len() < NDMSG_LEN {
        return None;
    }
    let ifindex = i32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let state = u16::from_ne_bytes(payload[8..10].try_into().ok()?);
    let (mut dst, mut lladdr) = (None, None);
    let mut attrs = &payload[NDMSG_LEN..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes(attrs[0..2].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().ok()?);
        if len < 4 || len > attrs.len() {
            break;
        }
        let value = attrs[4..len].to_vec();
        match kind {
            NDA_DST => dst = Some(value),
            NDA_LLADDR => lladdr = Some(value),
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    let usable = state & NUD_USABLE != 0;
    Some(((ifindex, dst?), lladdr.filter(|_| usable)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neigh_msg(
        kind: u16,
        ifindex: i32,
        state: u16,
        dst: [u8; 4],
        mac: Option<[u8; 6]>,
    ) -> Vec<u8> {
        let mut payload = vec![2u8, 0, 0, 0];
        payload.extend_from_slice(&ifindex.to_ne_bytes());
        payload.extend_from_slice(&state.to_ne_bytes());
        payload.extend_from_slice(&[0, 0]);
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&NDA_DST.to_ne_bytes());
        payload.extend_from_slice(&dst);
        if let Some(mac) = mac {
            payload.extend_from_slice(&10u16.to_ne_bytes());
            payload.extend_from_slice(&NDA_LLADDR.to_ne_bytes());
            payload.extend_from_slice(&mac);
            payload.extend_from_slice(&[0, 0]);
        }
        let mut msg = ((NLMSG_HDRLEN + payload.len()) as u32)
            .to_ne_bytes()
            .to_vec();
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&payload);
        msg
    }

    /// Whether the datagram makes kept answers stale.
    fn changes(n: &mut Neighbours, datagram: &[u8]) -> bool {
        n.changes_in(datagram) == Some(Change::Stale)
    }

    /// A message of type `kind` with no payload.
    fn bare_msg(kind: u16) -> Vec<u8> {
        let mut msg = (NLMSG_HDRLEN as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg
    }

    const REACHABLE: u16 = 0x02;
    const STALE: u16 = 0x04;
    const FAILED: u16 = 0x20;
    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn only_neighbour_changes_that_alter_an_answer_count() {
        let mut n = Neighbours::default();
        let ip = [198, 18, 0, 1];
        // A new entry: nothing can have kept it.
        assert!(!changes(
            &mut n,
            &neigh_msg(RTM_NEWNEIGH, 3, REACHABLE, ip, Some(A))
        ));
        // Reachable → stale, same address: no change.
        assert!(!changes(
            &mut n,
            &neigh_msg(RTM_NEWNEIGH, 3, STALE, ip, Some(A))
        ));
        // Another link-layer address: a change.
        assert!(changes(
            &mut n,
            &neigh_msg(RTM_NEWNEIGH, 3, REACHABLE, ip, Some(B))
        ));
        // Failed: a change; removed after that: nothing more.
        assert!(changes(
            &mut n,
            &neigh_msg(RTM_NEWNEIGH, 3, FAILED, ip, Some(B))
        ));
        assert!(!changes(
            &mut n,
            &neigh_msg(RTM_DELNEIGH, 3, FAILED, ip, None)
        ));
        // The same address on another interface is another entry.
        assert!(!changes(
            &mut n,
            &neigh_msg(RTM_NEWNEIGH, 4, REACHABLE, ip, Some(A))
        ));
        assert!(changes(
            &mut n,
            &neigh_msg(RTM_DELNEIGH, 4, REACHABLE, ip, Some(A))
        ));
    }

    #[test]
    fn a_neighbour_that_becomes_usable_is_reported_resolved() {
        let mut n = Neighbours::default();
        let ip = [198, 18, 0, 5];
        const INCOMPLETE: u16 = 0x01;
        assert_eq!(
            n.changes_in(&neigh_msg(RTM_NEWNEIGH, 3, INCOMPLETE, ip, None)),
            None,
            "asked for, not answered yet"
        );
        assert_eq!(
            n.changes_in(&neigh_msg(RTM_NEWNEIGH, 3, REACHABLE, ip, Some(A))),
            Some(Change::Resolved)
        );
        assert_eq!(
            n.changes_in(&neigh_msg(RTM_NEWNEIGH, 3, STALE, ip, Some(A))),
            None
        );
        // Failed, then answered again with the same address: usable again.
        assert_eq!(
            n.changes_in(&neigh_msg(RTM_NEWNEIGH, 3, FAILED, ip, Some(A))),
            Some(Change::Stale)
        );
        assert_eq!(
            n.changes_in(&neigh_msg(RTM_NEWNEIGH, 3, REACHABLE, ip, Some(A))),
            Some(Change::Resolved)
        );
        // An entry first seen resolved (a static one added, or one from the start's dump).
        assert_eq!(
            n.changes_in(&neigh_msg(
                RTM_NEWNEIGH,
                3,
                REACHABLE,
                [198, 18, 0, 6],
                Some(B)
            )),
            Some(Change::Resolved)
        );
    }

    #[test]
    fn route_link_and_address_events_always_count() {
        let mut n = Neighbours::default();
        for kind in [
            RTM_NEWROUTE,
            RTM_DELROUTE,
            RTM_NEWLINK,
            RTM_DELLINK,
            RTM_NEWADDR,
            RTM_DELADDR,
        ] {
            assert!(changes(&mut n, &bare_msg(kind)), "message type {kind}");
        }
    }

    #[test]
    fn every_message_of_a_datagram_is_read_after_the_first_change() {
        let mut n = Neighbours::default();
        let ip = [198, 18, 0, 1];
        assert!(!changes(
            &mut n,
            &neigh_msg(RTM_NEWNEIGH, 3, REACHABLE, ip, Some(A))
        ));
        // A route change and the neighbour's new address in one datagram.
        let both = [
            bare_msg(RTM_NEWROUTE),
            neigh_msg(RTM_NEWNEIGH, 3, REACHABLE, ip, Some(B)),
        ]
        .concat();
        assert!(changes(&mut n, &both));
        // Back to the first address: a change, since the second was recorded.
        assert!(changes(
            &mut n,
            &neigh_msg(RTM_NEWNEIGH, 3, REACHABLE, ip, Some(A))
        ));
    }

    #[test]
    fn a_truncated_datagram_ends_the_messages() {
        let msg = neigh_msg(RTM_NEWNEIGH, 3, REACHABLE, [198, 18, 0, 1], Some(A));
        assert_eq!(messages(&msg[..msg.len() - 1]).count(), 0);
        let two = [msg.clone(), msg].concat();
        assert_eq!(messages(&two).count(), 2);
    }
}
