//! The daemon as systemd runs it (`Type=notify` with a watchdog, stderr to the journal). The
//! test plays the service manager's side: a datagram socket named by `NOTIFY_SOCKET`, and a
//! log file whose device and inode `JOURNAL_STREAM` names.

use std::{
    fs,
    os::unix::{fs::MetadataExt, net::UnixDatagram},
    time::{Duration, Instant},
};

use xnlb_tests::{
    apps::{line_servers, spread},
    daemon::Daemon,
    topology::{Mode, Net, TWO_ARM_CONFIG_HEAD, VIP, backend_ip},
};

/// Every wait here is for something the daemon does within a second; the rest is slack for a
/// loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(30);

/// The next notification the daemon sent.
fn next(notify: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = notify
        .recv(&mut buf)
        .expect("a notification from the daemon within the limit");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn tells_systemd_when_it_serves_that_it_lives_and_that_it_stops() {
    let net = Net::build(Mode::TwoArm, 2);
    let _servers = line_servers(&net.backends, 80);
    let config = format!(
        "{TWO_ARM_CONFIG_HEAD}  - name: web
    vip: {VIP}
    ports: [80]
    backends:
      - {{ name: b1, address: {} }}
      - {{ name: b2, address: {} }}
",
        backend_ip(1),
        backend_ip(2)
    );
    let mut d = Daemon::unstarted(&net.lb, &config);
    let notify_path = d.files.dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(LIMIT)).unwrap();
    // The log exists before the daemon opens it (to append): its inode is the stream's.
    fs::File::create(&d.files.log).unwrap();
    let log = fs::metadata(&d.files.log).unwrap();
    d.set_env("NOTIFY_SOCKET", notify_path.to_str().unwrap());
    d.set_env("WATCHDOG_USEC", "400000");
    d.set_env("JOURNAL_STREAM", &format!("{}:{}", log.dev(), log.ino()));
    d.launch(&net.lb);

    // The first word is READY, and ready means serving: attached, programmed, balancing.
    let ready = next(&notify);
    assert!(ready.contains("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("STATUS=balancing; admin socket"),
        "{ready:?}"
    );
    assert!(net.lb.xdp_attached("cli0"), "not attached when ready");
    assert_eq!(spread(&net.client, VIP, 80, 4).len(), 4);

    // WATCHDOG=1 every half of the 400 ms WATCHDOG_USEC, while the controller answers.
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(next(&notify), "WATCHDOG=1\n");
    }
    println!("three watchdog pings in {:?}", started.elapsed());

    // SIGTERM: STOPPING=1, saying the datapath keeps forwarding.
    let pid = nix::unistd::Pid::from_raw(d.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = loop {
        let m = next(&notify);
        if m != "WATCHDOG=1\n" {
            break m;
        }
    };
    assert!(
        stopping.starts_with("STOPPING=1\nSTATUS=exiting; the datapath keeps forwarding"),
        "{stopping:?}"
    );
    assert!(d.wait_exit(LIMIT).success());

    // The log is journald's: a priority prefix per line, no timestamps, no colours.
    let text = d.log();
    assert!(text.contains("<6>xnlb running: admin socket"), "{text}");
    assert!(text.contains("<6>SIGTERM: exiting"), "{text}");
    for line in text.lines().filter(|l| !l.is_empty()) {
        let priority = line.strip_prefix('<').and_then(|l| l.split_once('>'));
        assert!(
            matches!(priority, Some((p, _)) if ["3", "4", "6", "7"].contains(&p)),
            "a line without a journal priority: {line:?}"
        );
        assert!(!line.contains('\x1b'), "colours in the journal: {line:?}");
    }
}
