//! `cargo xtask setup`: make a fresh machine able to build and test xnlb. Every step checks
//! first and does nothing when its tool is already there, so a second run takes seconds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::workspace::{self, exec, output};

/// bpf-linker release known to work with nightly's LLVM 22 (see docs/testing.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The toolchain that builds the eBPF crate (`-Z build-std=core`).
const EBPF_TOOLCHAIN: &str = "nightly";
/// Commands the tests, the demo and the package use, with the Debian package that provides
/// each (`bridge` comes with iproute2; `nft` counts what backends receive).
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("ethtool", "ethtool"),
    ("nft", "nftables"),
    // The package (`cargo xtask package`) and its install test.
    ("strip", "binutils"),
    ("objdump", "binutils"),
    ("dpkg-deb", "dpkg"),
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
];
/// What the benchmarks add: the load generator and the balancers xnlb is compared with.
const BENCH_TOOLS: &[(&str, &str)] = &[("wrk", "wrk"), ("haproxy", "haproxy")];

pub fn run() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)?;
    ensure_debian_tools(DEBIAN_TOOLS)?;
    ensure_prometheus()?;
    ensure_component("clippy")?;
    ensure_component("rustfmt")?;
    println!("setup: ready");
    Ok(())
}

/// `cargo xtask test` checks formatting and runs clippy with warnings as errors: the stable
/// toolchain needs both components.
fn ensure_component(name: &str) -> Result<()> {
    let cargo_verb = match name {
        "rustfmt" => "fmt",
        other => other,
    };
    if output(Command::new("cargo").args([cargo_verb, "--version"])).is_some() {
        return Ok(());
    }
    println!("setup: adding {name} to the stable toolchain (the tests check with it)");
    exec(Command::new("rustup").args(["component", "add", name]))
}

/// `run`, plus the benchmarks' Debian packages.
pub fn run_for_bench() -> Result<()> {
    run()?;
    ensure_debian_tools(BENCH_TOOLS)
}

fn nightly_sysroot() -> Result<PathBuf> {
    if let Some(sysroot) =
        output(Command::new("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "--print", "sysroot"]))
    {
        return Ok(PathBuf::from(sysroot));
    }
    println!("setup: installing the {EBPF_TOOLCHAIN} toolchain (builds the eBPF program)");
    exec(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
    ]))?;
    output(Command::new("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "--print", "sysroot"]))
        .map(PathBuf::from)
        .context("the nightly toolchain is installed but `rustc +nightly` does not run")
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    println!("setup: adding rust-src to {EBPF_TOOLCHAIN} (for -Z build-std=core)");
    exec(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
}

/// Nightly's own LLVM shared library, e.g. `LLVM-22-rust-1.97.0-nightly`, and its major version.
fn nightly_llvm(sysroot: &Path) -> Result<(String, String)> {
    let lib_dir = sysroot.join("lib");
    for entry in
        std::fs::read_dir(&lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(lib) = name.strip_prefix("lib").and_then(|n| n.strip_suffix(".so"))
            && let Some(rest) = lib.strip_prefix("LLVM-")
        {
            let major = rest
                .split(['-', '.'])
                .next()
                .unwrap_or_default()
                .to_string();
            return Ok((lib.to_string(), major));
        }
    }
    bail!(
        "no libLLVM-*.so in {}: is the nightly toolchain complete?",
        lib_dir.display()
    )
}

/// bpf-linker must use the very LLVM that nightly rustc emits bitcode for, so it is built
/// against nightly's own libLLVM, into the project's tool directory.
fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    let (llvm_lib, llvm_major) = nightly_llvm(sysroot)?;
    let tools = workspace::tools_dir();
    let linker = tools.join("bin/bpf-linker");
    let stamp = tools.join("bpf-linker.llvm");
    let wanted = format!("{BPF_LINKER_VERSION} {llvm_lib}");
    let built_for = std::fs::read_to_string(&stamp).unwrap_or_default();
    if built_for.trim() == wanted && output(Command::new(&linker).arg("--version")).is_some() {
        return Ok(());
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's {llvm_lib} (about a minute)"
    );
    let lib_dir = sysroot.join("lib");
    let rustflags = format!(
        "-L {dir} -l dylib={llvm_lib} -C link-arg=-Wl,-rpath,{dir}",
        dir = lib_dir.display()
    );
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major},no-llvm-linking"),
            ])
            .arg("--root")
            .arg(&tools)
            .env("RUSTFLAGS", rustflags),
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

fn ensure_debian_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| {
            output(Command::new("sh").args(["-c", &format!("command -v {cmd}")])).is_none()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Prometheus and promtool from Debian's `prometheus` package, for the test that runs the
/// dashboard's and the alerts' expressions: the package is downloaded and its two binaries
/// unpacked into `.tools/bin`, not installed, so no Prometheus service starts on this machine.
fn ensure_prometheus() -> Result<()> {
    let bin = workspace::tools_dir().join("bin");
    if bin.join("prometheus").exists() && bin.join("promtool").exists() {
        return Ok(());
    }
    println!("setup: unpacking prometheus and promtool from Debian's package into .tools/bin");
    let work = workspace::tools_dir().join("prometheus-deb");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let download = |dir: &Path| {
        exec(
            Command::new("apt-get")
                .args(["download", "-qq", "prometheus"])
                .current_dir(dir),
        )
    };
    if download(&work).is_err() {
        exec(Command::new("apt-get").args(["update", "-qq"]))?;
        download(&work)?;
    }
    let deb = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download prometheus wrote no package")?;
    let unpacked = work.join("root");
    exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::create_dir_all(&bin)?;
    for tool in ["prometheus", "promtool"] {
        std::fs::copy(unpacked.join("usr/bin").join(tool), bin.join(tool))?;
    }
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
