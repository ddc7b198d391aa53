//! A network namespace created by a test and deleted when the guard drops (also on panic).

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `xnlb-<tag>-<pid>-<n>`, unique per process and call.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "xnlb-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS`; panics with the command and its error output on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(cmd);
        run("ip", &full);
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Whether an XDP program is attached to `dev` (as `ip link show` says).
    pub fn xdp_attached(&self, dev: &str) -> bool {
        let link = self
            .command("ip")
            .args(["link", "show", dev])
            .output()
            .expect("ip link show");
        assert!(link.status.success(), "ip link show {dev}: {link:?}");
        String::from_utf8_lossy(&link.stdout).contains("xdp")
    }

    /// Moves the calling thread into the namespace until the returned guard drops.
    pub fn enter(&self) -> Entered {
        let original = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("open test netns");
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
        Entered { original }
    }

    /// A command that runs inside the namespace. Unlike `ip netns exec` it keeps the host's
    /// `/sys` mount, so `/sys/fs/bpf` (where the daemon pins) stays visible.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let target = File::open(format!("/run/netns/{}", self.name)).expect("open test netns");
        let mut cmd = Command::new(program);
        // SAFETY: only setns (a syscall) runs between fork and exec; `target` outlives the
        // closure because the closure owns it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `f` with the calling thread inside the namespace (sockets it opens stay there).
    pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> T {
        let _entered = self.enter();
        f()
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", dev])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex for {dev}: {text}"))
    }

    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", dev])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout);
        let mac = text
            .split("link/ether ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no MAC for {dev}: {text}"));
        parse_mac(mac)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The thread is back in its original namespace when this drops.
pub struct Entered {
    original: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let _ = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET);
    }
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).unwrap_or_else(|_| panic!("bad MAC {s}"));
    }
    mac
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
