//! Batched map access (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`), which aya 0.14 does not
//! wrap: reading a 262k-entry connection table or writing a 65537-entry ring takes a few dozen
//! syscalls instead of one per element, so scrapes and reloads stay cheap. Raw `libc`: bpf(2)
//! is not a call nix wraps.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

// `enum bpf_cmd` in include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr.batch` whose pointers reference live buffers of
    // `count` elements; the kernel writes at most that many.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every (key, value) of a hash map, read `chunk` elements per syscall.
pub fn lookup_all<K: Pod + Default, V: Pod + Default>(
    fd: BorrowedFd<'_>,
    chunk: usize,
) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // The batch cursor is opaque; a hash map uses a u32 bucket index.
    let mut cursor = [0u64; 2];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
            out_batch: cursor.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = attr.count as usize;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match result {
            Ok(()) => first = false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            // One bucket holds more than `chunk` entries: retry this bucket with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                let bigger = keys.len() * 2;
                keys.resize(bigger, K::default());
                values.resize(bigger, V::default());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes `values[i]` at index `first + i` of an array map.
pub fn update_array<V: Pod>(fd: BorrowedFd<'_>, first: u32, values: &[V]) -> io::Result<()> {
    let keys: Vec<u32> = (0..values.len() as u32).map(|i| first + i).collect();
    update(fd, &keys, values)
}

/// Writes `values[i]` under `keys[i]` (any map type that supports batches).
pub fn update<K: Pod, V: Pod>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    const CHUNK: usize = 8192;
    assert_eq!(keys.len(), values.len(), "one value per key");
    for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut done = 0usize;
        while done < keys.len() {
            let mut attr = BatchAttr {
                keys: keys[done..].as_ptr() as u64,
                values: values[done..].as_ptr() as u64,
                count: (keys.len() - done) as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let result = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
            done += attr.count as usize;
            result?;
        }
    }
    Ok(())
}
