//! A BPF array of u32 created with `BPF_F_MMAPABLE`, mapped into the daemon's memory. A
//! 65537-entry consistent-hash table is then written with one pass over memory; through
//! `BPF_MAP_UPDATE_BATCH` the kernel applies it element by element (6.2 ms per table measured,
//! most of a 100-service reload).
//!
//! The kernel lays array elements out 8 bytes apart (`round_up(value_size, 8)`), so each u32
//! sits in the first four bytes of a u64 slot. Raw `libc` mmap: the mapping's lifetime is tied
//! to the map's descriptor by hand here, which nix's safe wrappers would not make simpler.

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{Ordering, fence},
};

pub struct MappedArray {
    slots: NonNull<u64>,
    entries: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is written only through
// `&mut self` and unmapped once, on drop.
unsafe impl Send for MappedArray {}

impl MappedArray {
    /// Maps the `entries` u32 values of the array map behind `fd`. `None` when the kernel
    /// refuses, as it does for a map created without `BPF_F_MMAPABLE` (pinned by an older xnlb).
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> Option<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (entries as usize * size_of::<u64>()).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's own memory; the kernel checks the size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(Self {
            slots: NonNull::new(ptr.cast())?,
            entries: entries as usize,
            bytes,
        })
    }

    /// Every value, in order.
    pub fn read(&self) -> Vec<u32> {
        // SAFETY: the whole mapping, which lives as long as self.
        let slots = unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), self.entries) };
        slots
            .iter()
            .map(|s| {
                let b = s.to_ne_bytes();
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
            })
            .collect()
    }

    /// Writes `values` from index `first` on. The fence orders the copy before whatever the
    /// caller publishes next (the service entry that switches to this table).
    pub fn write(&mut self, first: usize, values: &[u32]) {
        assert!(
            first + values.len() <= self.entries,
            "write past the end of the array"
        );
        // SAFETY: the range is inside the mapping (checked above), which lives as long as self.
        let slots = unsafe { std::slice::from_raw_parts_mut(self.slots.as_ptr(), self.entries) };
        for (slot, &v) in slots[first..first + values.len()].iter_mut().zip(values) {
            // The u32 in the slot's first four bytes, as the kernel reads the element.
            *slot = u64::from_ne_bytes(widen(v));
        }
        fence(Ordering::SeqCst);
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.bytes) };
    }
}

/// A u32's bytes first, then zeros: an 8-byte element holding the value.
fn widen(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_ne_bytes());
    b
}
