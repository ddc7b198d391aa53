//! Where things are, and running commands with clear errors.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root (the directory holding this repository's `Cargo.toml`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Project-local tools (bpf-linker), kept out of the user's own cargo installation.
pub fn tools_dir() -> PathBuf {
    root().join(".tools")
}

pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run this as root: {why}");
    }
    Ok(())
}

/// Runs `cargo ARGS` in the workspace with the project's tools on PATH; fails on non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args)
        .current_dir(root())
        .env("PATH", path_with_tools());
    exec(&mut cmd)
}

/// PATH with the project's tool directory first.
pub fn path_with_tools() -> String {
    let tools = tools_dir().join("bin");
    match std::env::var("PATH") {
        Ok(path) if !path.is_empty() => format!("{}:{path}", tools.display()),
        _ => tools.display().to_string(),
    }
}

/// Runs a command with inherited output; fails with the command line on non-zero exit.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs a command and returns its trimmed stdout, or None if it could not run or failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
