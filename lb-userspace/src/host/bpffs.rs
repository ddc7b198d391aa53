//! What pinning BPF objects needs from the host: a BPF filesystem for the pins, and a lock on
//! the daemon's pin directory.

use std::{fs::File, path::Path};

use anyhow::{Result, anyhow};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};
use tracing::info;

/// The BPF filesystem's magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_FS_ROOT: &str = "/sys/fs/bpf";

fn on_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|st| st.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Pins need a BPF filesystem. Systems that boot without one at /sys/fs/bpf get it mounted
/// there, as systemd and Cilium do; anywhere else it must already exist.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if on_bpffs(parent) {
        return Ok(());
    }
    if parent != Path::new(BPF_FS_ROOT) {
        return Err(anyhow!(
            "{} is not on a BPF filesystem; choose a --pin-dir under {BPF_FS_ROOT}",
            parent.display()
        ));
    }
    nix::mount::mount(
        Some("bpf"),
        BPF_FS_ROOT,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| anyhow!("mounting the BPF filesystem at {BPF_FS_ROOT}: {e}"))?;
    info!("mounted the BPF filesystem at {BPF_FS_ROOT}");
    Ok(())
}

/// Locks the pin directory for the daemon's life (creating it if needed): a second daemon on
/// the same directory — another config, or the first one's admin socket deleted — is refused
/// before it touches a pin, instead of adopting the maps and fighting the first over them. The
/// lock goes with the returned handle, or with the process.
pub fn lock_pin_dir(pin_dir: &Path) -> Result<Flock<File>> {
    std::fs::create_dir_all(pin_dir)
        .map_err(|e| anyhow!("creating the pin directory {}: {e}", pin_dir.display()))?;
    let dir = File::open(pin_dir)
        .map_err(|e| anyhow!("opening the pin directory {}: {e}", pin_dir.display()))?;
    Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| match e {
        Errno::EWOULDBLOCK => anyhow!(
            "xnlb is already running: another daemon holds the pin directory {} (stop it \
             first, or give this one another --pin-dir)",
            pin_dir.display()
        ),
        e => anyhow!("locking the pin directory {}: {e}", pin_dir.display()),
    })
}
