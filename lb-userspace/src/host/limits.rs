//! The process limits the daemon raises at start: locked memory for BPF maps, and open files
//! for everything it talks to (health probes, admin and metrics connections).

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::warn;

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (newer ones use memory cgroups):
/// raise the soft limit to unlimited if allowed, else to the hard limit.
pub fn raise_memlock() {
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) else {
        return;
    };
    let unlimited = nix::sys::resource::RLIM_INFINITY;
    if setrlimit(Resource::RLIMIT_MEMLOCK, unlimited, unlimited).is_err() {
        let _ = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard);
    }
}

/// Open files: the soft limit up to the hard one (systemd's default soft limit, 1,024, is
/// small for a daemon that probes every backend while serving its sockets).
pub fn raise_file_limit() {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        warn!("open files stay limited to {soft} (raising to {hard}: {e})");
    }
}
