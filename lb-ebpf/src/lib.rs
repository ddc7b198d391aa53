#![no_std]
// This library target only exists so that `lb-userspace` can list this crate as a
// build-dependency (cargo then rebuilds the object when the datapath changes). The program is
// the `xnlb-xdp` binary target, built for `bpfel-unknown-none` by `lb-userspace/build.rs`.
