//! A mail server's front door for TCP health checks and traffic: greets each connection with
//! the banner the test sets at run time (`220 b1 ESMTP ready`; an empty banner closes the
//! connection at once), answers `QUIT` with `221` and closes, and answers any other line with
//! `<name> <client address>` like the line server. It records every line it receives. Runs on
//! its own threads until dropped; every read is bounded.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::netns::NetNs;

pub struct BannerServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    banner: Mutex<String>,
    received: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl BannerServer {
    /// Listens on `addr` (inside `ns` when given) greeting with `220 <name> ESMTP ready`.
    pub fn start(ns: Option<&NetNs>, addr: SocketAddr, name: &str) -> Self {
        let bind = || TcpListener::bind(addr).expect("bind banner server");
        let listener = match ns {
            Some(ns) => ns.run_in(bind),
            None => bind(),
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            banner: Mutex::new(format!("220 {name} ESMTP ready")),
            received: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let serving = shared.clone();
        thread::spawn(move || {
            while !serving.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let shared = serving.clone();
                        thread::spawn(move || shared.serve(stream, peer));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, shared }
    }

    /// The greeting for connections from now on (without its line end).
    pub fn set_banner(&self, banner: &str) {
        *self.shared.banner.lock().unwrap() = banner.to_string();
    }

    /// Every line received so far, without line ends.
    pub fn received(&self) -> Vec<String> {
        self.shared.received.lock().unwrap().clone()
    }
}

impl Shared {
    fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let banner = self.banner.lock().unwrap().clone();
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        if banner.is_empty() || write!(writer, "{banner}\r\n").is_err() {
            return;
        }
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let line = line.trim_end_matches('\r').to_string();
            self.received.lock().unwrap().push(line.clone());
            let answer = if line.eq_ignore_ascii_case("QUIT") {
                "221 closing".to_string()
            } else {
                format!("{} {}", self.name, peer.ip().to_canonical())
            };
            if write!(writer, "{answer}\r\n").is_err() || answer.starts_with("221") {
                return;
            }
        }
    }
}

impl Drop for BannerServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Connects to `addr` from inside `ns` and returns the banner's second word: the name of the
/// backend that answered (`220 b2 ESMTP ready`).
pub fn greeted_by(ns: &NetNs, addr: SocketAddr) -> std::io::Result<String> {
    let stream = ns.run_in(|| TcpStream::connect_timeout(&addr, crate::apps::IO_TIMEOUT))?;
    stream.set_read_timeout(Some(crate::apps::IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let _ = (&stream).write_all(b"QUIT\r\n");
    line.split_whitespace()
        .nth(1)
        .map(String::from)
        .ok_or_else(|| std::io::Error::other(format!("no banner: {line:?}")))
}
