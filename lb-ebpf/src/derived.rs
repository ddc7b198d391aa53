//! Derived replies (two-arm; `lb_common::flow`): a backend port that `SERVED_BY` names says
//! which VIP and port its packets answer, so the client tuple of their flow follows from the
//! packet itself and the flow needs no reply entry.

use lb_common::{
    flow::{FlowEntry, FlowKey, REPLY_DERIVED, SERVES_ALONE, ServedBy},
    settings::DatapathSettings,
};

use crate::{
    maps::{FLOWS, HALF_OPEN, SERVED_BY},
    mem, scratch,
};

/// What `SERVED_BY` says of the backend port that sends `reply` (its source). A frame of its
/// own: the paths that ask are near the verifier's stack bound.
#[inline(never)]
pub fn served_by(reply: &FlowKey) -> Option<&'static ServedBy> {
    let scratch = scratch::get()?;
    let at = &mut scratch.backend_port;
    mem::copy(&mut at.addr, &reply.src);
    at.port = reply.src_port;
    at.proto = reply.proto;
    at._pad = 0;
    // SAFETY: the element stays valid for this program run (RCU).
    unsafe { SERVED_BY.get(&*at) }
}

/// Whether a new flow from `client` derives its replies from `served`: the backend port serves
/// the flow's VIP and port alone.
#[inline(always)]
pub fn derives(served: &ServedBy, client: &FlowKey) -> bool {
    served.flags & SERVES_ALONE != 0
        && served.family == client.family
        && served.vip[0] == client.dst[0]
        && served.vip[1] == client.dst[1]
        && served.vip[2] == client.dst[2]
        && served.vip[3] == client.dst[3]
        && served.vip_port == client.dst_port
}

/// Writes into `client` the client tuple of the flow that `reply` answers, by `served`. (A
/// reply of the other version than `served`'s gets a tuple no flow has: its family is the
/// reply's.)
#[inline(always)]
pub fn client_of(client: &mut FlowKey, served: &ServedBy, reply: &FlowKey) {
    mem::copy(&mut client.src, &reply.dst);
    mem::copy(&mut client.dst, &served.vip);
    client.src_port = reply.dst_port;
    client.dst_port = served.vip_port;
    client.proto = reply.proto;
    client.family = reply.family;
    client._pad = [0; 2];
}

/// Whether a live flow other than the new flow that scratch holds (its reply tuple in the
/// entry, its client in the owner) holds that reply tuple by derivation from `served` (an entry
/// that a reload left to a backend port that serves more now): the new flow must not claim it.
/// Reads its inputs from scratch: a frame with fewer of them to keep is smaller.
#[inline(never)]
pub fn holds(served: &ServedBy, s: &DatapathSettings, now: u64) -> bool {
    let Some(scratch) = scratch::get() else {
        return false;
    };
    let (reply, client, other) = (
        &scratch.entry.reply,
        &scratch.owner.client,
        &mut scratch.derived,
    );
    client_of(other, served, reply);
    if other.same(client) {
        return false;
    }
    // SAFETY: the elements stay valid for this program run (RCU); writers replace whole
    // elements or store single fields, so a read sees old or new values, never freed memory.
    if let Some(f) = unsafe { FLOWS.get(&*other) }
        && holds_live(f, reply, s, now)
    {
        return true;
    }
    // SAFETY: as above.
    unsafe { HALF_OPEN.get(&*other) }.is_some_and(|f| holds_live(f, reply, s, now))
}

/// `f` derives its replies, is alive and its reply tuple is `reply`. (A flow that claimed the
/// tuple has a reply entry, which the claim itself weighs.) A closing one keeps the tuple too:
/// taken over, its replies would still find it first.
#[inline(always)]
fn holds_live(f: &FlowEntry, reply: &FlowKey, s: &DatapathSettings, now: u64) -> bool {
    f.flags & REPLY_DERIVED != 0 && f.reply.same(reply) && !f.expired(reply.proto, s, now)
}
