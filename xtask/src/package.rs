//! `cargo xtask package`: the Debian package, built with dpkg-deb from a staged tree. What goes
//! where is this file; the unit, the default config and the maintainer scripts are in
//! `packaging/`; man pages and completions are generated from the sources
//! (`xnlb-package-assets`). dpkg-deb rather than cargo-deb: nothing more to build on a fresh
//! machine, and the maintainer scripts are ours to keep DPKG_ROOT-aware for the install test.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::workspace::{self, exec, output};

/// Which build goes into the package: release for users; the tests' own (debug) build for the
/// install test, so `cargo xtask test` compiles nothing twice.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Release,
    Debug,
}

impl Build {
    fn dir(self) -> &'static str {
        match self {
            Build::Release => "release",
            Build::Debug => "debug",
        }
    }
}

/// Where the package of `build` is written: `target/debian/<build>/`.
pub fn out_dir(build: Build) -> PathBuf {
    workspace::root().join("target/debian").join(build.dir())
}

/// Builds the binary and the generated files, stages the tree, writes the `.deb`; returns
/// its path.
pub fn run(build: Build) -> Result<PathBuf> {
    let profile: &[&str] = match build {
        Build::Release => &["--release"],
        Build::Debug => &[],
    };
    let target = workspace::root().join("target");
    let work = target.join("package").join(build.dir());
    let _ = fs::remove_dir_all(&work);
    let assets = work.join("assets");
    let assets_arg = assets.display().to_string();
    let bin = ["-p", "lb-userspace", "--bin", "xnlb"];
    workspace::cargo(&[&["build", "-q"], profile, &bin].concat())?;
    let generate = [
        "-p",
        "xnlb-tools",
        "--bin",
        "xnlb-package-assets",
        "--",
        &assets_arg,
    ];
    workspace::cargo(&[&["run", "-q"], profile, &generate].concat())?;

    let binary = target.join(build.dir()).join("xnlb");
    let version = output(Command::new(&binary).arg("--version"))
        .and_then(|v| v.strip_prefix("xnlb ").map(str::to_string))
        .context("xnlb --version")?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture")?;
    let root = work.join("root");
    stage(&root, &binary, &assets)?;
    let installed = installed_files(&root)?;
    let mut size = 0;
    for file in &installed {
        size += fs::metadata(root.join(file))?.len();
    }
    let control = control(&version, &arch, size / 1024 + 1, &binary)?;
    put_text(&root.join("DEBIAN/control"), &control, 0o644)?;
    put_text(
        &root.join("DEBIAN/conffiles"),
        "/etc/xnlb/xnlb.yaml\n",
        0o644,
    )?;
    md5sums(&root, &installed)?;

    let out = out_dir(build);
    fs::create_dir_all(&out)?;
    let deb = out.join(format!("xnlb_{version}-1_{arch}.deb"));
    exec(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// The installed tree, as dpkg will lay it out.
fn stage(root: &Path, binary: &Path, assets: &Path) -> Result<()> {
    let repo = workspace::root();
    let packaging = repo.join("packaging");
    let sbin = root.join("usr/sbin/xnlb");
    fs::create_dir_all(sbin.parent().unwrap())?;
    // Stripped, as Debian ships binaries (the debug build shrinks from ~140 MB).
    exec(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&sbin)
            .arg(binary),
    )?;
    fs::set_permissions(&sbin, fs::Permissions::from_mode(0o755))?;
    put(
        &packaging.join("xnlb.service"),
        &root.join("usr/lib/systemd/system/xnlb.service"),
        0o644,
    )?;
    put(
        &packaging.join("xnlb.yaml"),
        &root.join("etc/xnlb/xnlb.yaml"),
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &packaging.join(script),
            &root.join("DEBIAN").join(script),
            0o755,
        )?;
    }
    let doc = root.join("usr/share/doc/xnlb");
    put(&packaging.join("copyright"), &doc.join("copyright"), 0o644)?;
    put(&repo.join("README.md"), &doc.join("README.md"), 0o644)?;
    for (dir, into) in [
        ("docs", doc.clone()),
        ("examples", doc.join("examples")),
        ("dashboards", doc.join("dashboards")),
    ] {
        for file in sorted_files(&repo.join(dir))? {
            let name = file.file_name().unwrap();
            if matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("md" | "yaml" | "json")
            ) {
                put(&file, &into.join(name), 0o644)?;
            }
        }
    }
    for page in sorted_files(&assets.join("man"))? {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        let section = name.rsplit('.').next().unwrap_or("8");
        let dest = root.join(format!("usr/share/man/man{section}/{name}.gz"));
        fs::create_dir_all(dest.parent().unwrap())?;
        let gz = Command::new("gzip")
            .args(["-9n", "-c"])
            .arg(&page)
            .output()?;
        if !gz.status.success() {
            bail!(
                "gzip {}: {}",
                page.display(),
                String::from_utf8_lossy(&gz.stderr)
            );
        }
        fs::write(&dest, gz.stdout)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644))?;
    }
    let completions = assets.join("completions");
    for (file, dir) in [
        ("xnlb", "usr/share/bash-completion/completions"),
        ("_xnlb", "usr/share/zsh/vendor-completions"),
        ("xnlb.fish", "usr/share/fish/vendor_completions.d"),
    ] {
        put(&completions.join(file), &root.join(dir).join(file), 0o644)?;
    }
    directory_modes(root)
}

/// Every directory 0755, whatever the umask: dpkg installs them as they are in the archive.
fn directory_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            directory_modes(&path)?;
        }
    }
    Ok(())
}

/// DEBIAN/control. The libc it needs is read off the binary (the newest GLIBC_ symbol
/// version it links), so the dependency is the build machine's truth, not a guess.
fn control(version: &str, arch: &str, installed_kib: u64, binary: &Path) -> Result<String> {
    let symbols = output(Command::new("objdump").arg("-T").arg(binary)).context("objdump -T")?;
    let glibc = symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let parts: Vec<u32> = v
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some((parts, v.to_string()))
        })
        .max()
        .map(|(_, v)| v)
        .context("no GLIBC_ symbol versions in the binary")?;
    Ok(format!(
        "Package: xnlb
Version: {version}-1
Architecture: {arch}
Maintainer: xnlb developers <xnlb@localhost>
Installed-Size: {installed_kib}
Depends: libc6 (>= {glibc}), iproute2
Section: net
Priority: optional
Description: XDP layer-4 load balancer for server farms (NLB-style)
 xnlb balances TCP and UDP services over a farm of servers (such as Exchange
 Client Access servers) from an XDP program on a Linux router: NLB-style
 affinity, HTTP/HTTPS health checks, connection tracking with NAT, fail-static
 restarts, NLB's cluster mode, Prometheus metrics and an admin CLI.
"
    ))
}

/// The files dpkg installs (not `DEBIAN/`), relative to `root`, sorted.
fn installed_files(root: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    let mut relative: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .filter(|f| !f.starts_with("DEBIAN/"))
        .collect();
    relative.sort();
    Ok(relative)
}

/// DEBIAN/md5sums: every file dpkg installs (what `dpkg --verify` checks).
fn md5sums(root: &Path, installed: &[String]) -> Result<()> {
    let sums = Command::new("md5sum")
        .args(installed)
        .current_dir(root)
        .output()?;
    if !sums.status.success() {
        bail!("md5sum: {}", String::from_utf8_lossy(&sums.stderr));
    }
    put_text(
        &root.join("DEBIAN/md5sums"),
        &String::from_utf8(sums.stdout)?,
        0o644,
    )
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|f| f.is_file());
    files.sort();
    Ok(files)
}

/// Copies `from` to `to` (creating directories 0755) with `mode`.
fn put(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let text = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &text, mode)
}

fn put_text(to: &Path, text: &str, mode: u32) -> Result<()> {
    write(to, text.as_bytes(), mode)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = to.parent().unwrap();
    fs::create_dir_all(dir)?;
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}
