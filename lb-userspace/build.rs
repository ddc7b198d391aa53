//! Builds the XDP object (`lb-ebpf`, binary `xnlb-xdp`) for the BPF target with aya-build, so a
//! plain
//! `cargo build` produces the embedded program. The eBPF toolchain (nightly rust-src and a
//! bpf-linker built against nightly's LLVM) comes from `cargo xtask setup`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() {
    if let Err(err) = build() {
        // One line a person can act on; cargo prints it and fails the build.
        println!("cargo::error={err:#}");
    }
}

fn build() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .context("lb-userspace lives in the workspace")?;
    let tools_bin = root.join(".tools/bin");
    println!(
        "cargo::rerun-if-changed={}",
        tools_bin.join("bpf-linker").display()
    );
    check_toolchain(&tools_bin)?;

    // aya-build runs `cargo build --target bpfel-unknown-none`, which links with `bpf-linker`
    // from PATH: put the project's own first.
    let path = std::env::var("PATH").unwrap_or_default();
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("PATH", format!("{}:{path}", tools_bin.display())) };

    let ebpf = root.join("lb-ebpf");
    let package = Package {
        name: "lb-ebpf",
        root_dir: ebpf.to_str().context("non-UTF-8 path")?,
        no_default_features: false,
        features: &[],
    };
    aya_build::build_ebpf([package], Toolchain::default())
}

fn check_toolchain(tools_bin: &Path) -> anyhow::Result<()> {
    const FIX: &str = "run `cargo xtask setup`";
    if !tools_bin.join("bpf-linker").is_file() {
        return Err(anyhow!(
            "bpf-linker is missing from {}: {FIX}",
            tools_bin.display()
        ));
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .ok_or_else(|| anyhow!("the nightly toolchain is missing: {FIX}"))?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err(anyhow!("nightly's rust-src component is missing: {FIX}"));
    }
    Ok(())
}
