//! Where a translated packet leaves by: the kernel FIB's answer for its destination, kept by the
//! datapath so that a flow's packets do not each pay a FIB lookup (the biggest single cost of a
//! forwarded packet). A kept answer is used only while it is current: the controller bumps
//! `NEXT_HOP_EPOCH` when a route, neighbour, link or address changes, and the datapath mixes in
//! a coarse clock tick, so an answer is never older than about four seconds even when no
//! controller runs (fail-static).

use crate::addr::Addr;

/// One FIB answer. All zero (`ifindex` 0) means never looked up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// The epoch (see [`current_epoch`]) the FIB gave this answer in; any other: ask again.
    pub epoch: u32,
    /// Egress interface.
    pub ifindex: u32,
    /// The route's MTU: a larger packet goes to the kernel, which fragments it or answers with
    /// ICMP "fragmentation needed".
    pub mtu: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 24);

/// A backend's next hop (`BACKEND_HOPS`, by backend id), with the address it was looked up for:
/// an id given to another backend finds an answer for another address and asks again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendHop {
    pub addr: Addr,
    pub hop: NextHop,
}
const _: () = assert!(core::mem::size_of::<BackendHop>() == 40);

/// The epoch of every next hop under held routing (`settings::Routing::Held`): written by the
/// controller (backends) or from the client's own frame (a flow's client), and current until
/// replaced. The FIB's epochs never reach it in practice (counting from zero, bumps plus
/// 4.3 s ticks would take centuries), so an answer held before a switch to FIB routing is
/// asked again.
pub const HELD_EPOCH: u32 = u32::MAX;

/// The clock's share of the epoch: it ticks every 2^32 ns (about 4.3 s).
const CLOCK_TICK_SHIFT: u32 = 32;

/// The epoch an answer must carry to be used at `now_ns`: the controller's count of routing
/// changes plus the clock's ticks. Both only grow, so their sum never comes back to an old
/// value (short of wrapping 2^32).
#[inline(always)]
pub fn current_epoch(controller_epoch: u32, now_ns: u64) -> u32 {
    controller_epoch.wrapping_add((now_ns >> CLOCK_TICK_SHIFT) as u32)
}

impl NextHop {
    /// Never looked up.
    pub const NONE: Self = Self {
        epoch: 0,
        ifindex: 0,
        mtu: 0,
        dmac: [0; 6],
        smac: [0; 6],
        _pad: 0,
    };

    /// Whether this answer may be used in `epoch`.
    #[inline(always)]
    pub fn current(&self, epoch: u32) -> bool {
        self.ifindex != 0 && self.epoch == epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_moves_with_the_controller_and_the_clock_and_never_comes_back() {
        const TICK: u64 = 1 << CLOCK_TICK_SHIFT;
        let start = current_epoch(7, 5 * TICK + 1);
        assert_eq!(current_epoch(7, 6 * TICK - 1), start, "within one tick");
        assert_ne!(current_epoch(7, 6 * TICK), start, "the next tick");
        assert_ne!(current_epoch(8, 5 * TICK + 1), start, "a routing change");
        // Bumps and ticks in any order never land on a value used before.
        let steps = [(0, 0), (0, 1), (1, 1), (1, 2), (3, 2), (3, 9)];
        let epochs = steps.map(|(bumps, ticks)| current_epoch(bumps, ticks * TICK));
        for (i, e) in epochs.iter().enumerate() {
            assert!(!epochs[..i].contains(e), "step {i} repeats an epoch");
        }
    }

    #[test]
    fn a_hop_never_looked_up_is_never_current() {
        assert!(!NextHop::NONE.current(0));
        let hop = NextHop {
            epoch: 3,
            ifindex: 2,
            ..NextHop::NONE
        };
        assert!(hop.current(3));
        assert!(!hop.current(4));
    }
}
