//! Zeroing and copying that compile to plain loads and stores. LLVM turns the zeroing of a
//! struct, or a copy between two map elements, into a call to `memset`/`memmove`, which in BPF
//! are byte-at-a-time loops; volatile stores are never merged back into such a call.

/// Words of a `T` that is plain 4-byte-aligned data.
#[inline(always)]
const fn words<T>() -> usize {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(4) && core::mem::align_of::<T>() >= 4) };
    core::mem::size_of::<T>() / 4
}

/// Sets every byte of `dst` to zero, in place, as 4-byte stores.
///
/// # Safety
/// All zero must be a valid `T` (plain integers and arrays of them).
#[inline(always)]
pub unsafe fn zero<T>(dst: &mut T) {
    let out = dst as *mut T as *mut u32;
    for i in 0..words::<T>() {
        // SAFETY: word `i` lies inside `dst`, which is aligned for `u32`.
        unsafe { core::ptr::write_volatile(out.add(i), 0) };
    }
}

/// `*dst = *src`, as 4-byte loads and stores.
#[inline(always)]
pub fn copy<T: Copy>(dst: &mut T, src: &T) {
    let (out, from) = (dst as *mut T as *mut u32, src as *const T as *const u32);
    for i in 0..words::<T>() {
        // SAFETY: word `i` lies inside both, which are aligned for `u32`; `T: Copy` is plain
        // data, so copying its words copies it.
        unsafe { core::ptr::write_volatile(out.add(i), *from.add(i)) };
    }
}

/// `*dst = *src` for a MAC address, as six byte stores.
#[inline(always)]
pub fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    for i in 0..6 {
        // SAFETY: `i < 6`, inside `dst`.
        unsafe { core::ptr::write_volatile(&mut dst[i], src[i]) };
    }
}
