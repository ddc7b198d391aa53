//! The host around the datapath: interfaces that must exist, sysctls, the BPF filesystem, the
//! VIP addresses the kernel answers ARP for, the routing changes the datapath's kept next
//! hops must follow, (held routing) the next hops the controller resolves itself, and systemd's
//! notifications and journal. No bpf(2) here.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, bail};

pub mod addresses;
pub mod announce;
pub mod bpffs;
pub mod heartbeats;
pub mod interfaces;
pub mod limits;
pub mod next_hops;
pub mod routes;
pub mod sysctl;
pub mod systemd;

/// Runs iproute2's `ip` with `args`; its standard output, or an error quoting its message.
fn ip(args: &[&str]) -> Result<String> {
    let out = run_ip(args, None)?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip` with `args` and, if given, `input` on its standard input, written by a thread of
/// its own: `ip -batch` answers as it reads, and a large answer would otherwise block it while
/// this side still writes.
fn run_ip(args: &[&str], input: Option<String>) -> Result<Output> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    let writer = child
        .stdin
        .take()
        .zip(input)
        .map(|(mut stdin, text)| std::thread::spawn(move || stdin.write_all(text.as_bytes())));
    let out = child
        .wait_with_output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if let Some(writer) = writer {
        // `ip` stopping early (an error) closes the pipe: its status tells why.
        let _ = writer.join();
    }
    Ok(out)
}
