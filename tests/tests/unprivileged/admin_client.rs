//! The CLI's side of the admin socket when the daemon fails it: a daemon that ends while
//! handling a request (it accepts, reads, and closes without an answer) is named as such.

use std::{
    io::{BufRead, BufReader},
    os::unix::net::UnixListener,
    process::Command,
};

use xnlb_tests::daemon::xnlb_bin;

#[test]
fn a_daemon_that_dies_mid_request_is_said_so() {
    let dir = std::env::temp_dir().join(format!("xnlb-admin-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("xnlb.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Takes the request, then goes away without answering, as a crashing daemon does.
    let dying = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        line
    });
    let out = Command::new(xnlb_bin())
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let request = dying.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        request.contains("status"),
        "the request was sent: {request}"
    );
    assert!(!out.status.success());
    assert!(
        err.contains("closed the connection without answering"),
        "{err}"
    );
}
