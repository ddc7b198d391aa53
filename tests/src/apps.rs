//! The applications on the test networks: a line server and a UDP echo server on each backend
//! that answer with their name and the client address they saw, clients for them, and a client
//! for long transfers from the HTTP backends. Sockets are opened inside the namespaces by the
//! test's own threads; every wait is bounded.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::{http_backend::STREAM_LINE, netns::NetNs};

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A server answering `<name> <client address>` to every line, until dropped.
pub struct LineServer {
    stop: Arc<AtomicBool>,
}

impl LineServer {
    pub fn start(ns: &NetNs, port: u16, name: &str) -> Self {
        let listener =
            // Both versions (`[::]` takes IPv4 too, as mapped addresses).
            ns.run_in(|| TcpListener::bind(("::", port)).expect("bind line server"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_string());
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let name = name.clone();
                        thread::spawn(move || serve(stream, peer, &name));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { stop }
    }
}

/// A line server on `port` in each backend namespace, named `b1`, `b2`, ... in order.
pub fn line_servers(backends: &[NetNs], port: u16) -> Vec<LineServer> {
    backends
        .iter()
        .enumerate()
        .map(|(i, ns)| LineServer::start(ns, port, &format!("b{}", i + 1)))
        .collect()
}

/// `line_servers` on each of `ports`.
pub fn line_servers_on(backends: &[NetNs], ports: &[u16]) -> Vec<LineServer> {
    ports
        .iter()
        .flat_map(|&port| line_servers(backends, port))
        .collect()
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, name: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for line in BufReader::new(stream).lines() {
        if line.is_err() || writeln!(writer, "{name} {}", peer.ip().to_canonical()).is_err() {
            return;
        }
    }
}

/// One connection from the client namespace to a line server.
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    pub fn connect(ns: &NetNs, addr: Ipv4Addr, port: u16) -> std::io::Result<Self> {
        let stream = ns.run_in(|| TcpStream::connect_timeout(&(addr, port).into(), IO_TIMEOUT))?;
        Self::over(stream)
    }

    /// `connect`, from source address `src` (one of the client namespace's addresses).
    pub fn connect_from(
        ns: &NetNs,
        src: Ipv4Addr,
        addr: Ipv4Addr,
        port: u16,
    ) -> std::io::Result<Self> {
        Self::over(connect_from(ns, src, (addr, port).into())?)
    }

    fn over(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends a line; returns (backend name, client address the backend saw).
    pub fn ask(&mut self) -> std::io::Result<(String, String)> {
        writeln!(self.writer, "hello")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut parts = line.split_whitespace();
        let name = parts.next().unwrap_or_default().to_string();
        let seen = parts.next().unwrap_or_default().to_string();
        Ok((name, seen))
    }
}

/// Opens `n` fresh connections and returns which backend answered each.
pub fn spread(ns: &NetNs, addr: Ipv4Addr, port: u16, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut c = LineClient::connect(ns, addr, port)
                .unwrap_or_else(|e| panic!("connection {i} to {addr}:{port}: {e}"));
            c.ask()
                .unwrap_or_else(|e| panic!("connection {i} to {addr}:{port} got no answer: {e}"))
                .0
        })
        .collect()
}

/// A TCP connection from `src` (bound before connecting) to `dst`, made inside `ns`.
pub fn connect_from(
    ns: &NetNs,
    src: impl Into<IpAddr>,
    dst: SocketAddr,
) -> std::io::Result<TcpStream> {
    connect_from_port(ns, (src.into(), 0).into(), dst)
}

/// A connection from `src` (a given port, or 0 for any) inside `ns`. A given port is bound with
/// `SO_REUSEADDR`, so that one an earlier connection left in TIME_WAIT can serve another
/// destination.
fn connect_from_port(ns: &NetNs, src: SocketAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let domain = if src.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = ns.run_in(|| Socket::new(domain, Type::STREAM, None))?;
    socket.set_reuse_address(src.port() != 0)?;
    socket.bind(&src.into())?;
    socket.connect_timeout(&dst.into(), IO_TIMEOUT)?;
    Ok(socket.into())
}

/// `GET path` to `dst` from source address `src` inside `ns` (HTTP/1.0, one connection);
/// returns the status and the body. Bounded by `IO_TIMEOUT`.
pub fn http_get_from(
    ns: &NetNs,
    src: impl Into<IpAddr>,
    dst: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    http_get_from_port(ns, (src.into(), 0).into(), dst, path)
}

/// `http_get_from` with the source port chosen too (`src`).
pub fn http_get_from_port(
    ns: &NetNs,
    src: SocketAddr,
    dst: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let stream = connect_from_port(ns, src, dst)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    http_exchange(stream, dst, path)
}

/// Sends `GET path` (HTTP/1.0) over `stream` to `dst` and reads the whole response; returns
/// the status and the body. The caller sets the stream's timeouts.
pub fn http_exchange(
    mut stream: TcpStream,
    dst: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {dst}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// How many times each name occurs (e.g. which backend answered each request).
pub fn tally<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for n in names {
        *counts.entry(n.clone()).or_default() += 1;
    }
    counts
}

/// A long-lived download of `/stream/<lines>` from an HTTP backend through the balancer. Once
/// started it names the backend serving it; `finish` says whether every byte arrived.
pub struct Transfer {
    /// The backend's name and the client address it saw.
    pub backend: String,
    pub seen: String,
    expected: usize,
    rest: JoinHandle<std::io::Result<usize>>,
}

impl Transfer {
    pub fn start(
        ns: &NetNs,
        src: Ipv4Addr,
        dst: SocketAddr,
        lines: usize,
    ) -> std::io::Result<Self> {
        let mut stream = connect_from(ns, src, dst)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        write!(
            stream,
            "GET /stream/{lines} HTTP/1.0\r\nHost: {dst}\r\n\r\n"
        )?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.") || !line.contains(" 200 ") {
            return Err(std::io::Error::other(format!("stream answered {line:?}")));
        }
        while line != "\r\n" {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        line.clear();
        reader.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        let backend = parts.next().unwrap_or_default().to_string();
        let seen = parts.next().unwrap_or_default().to_string();
        let rest = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            loop {
                match reader.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n,
                }
            }
        });
        Ok(Self {
            backend,
            seen,
            expected: lines * STREAM_LINE,
            rest,
        })
    }

    /// Whether the transfer is still going (so what happens now happens during it).
    pub fn running(&self) -> bool {
        !self.rest.is_finished()
    }

    /// Waits for the end; `Err` names how much arrived or what broke it.
    pub fn finish(self) -> Result<usize, String> {
        match self.rest.join().expect("transfer thread") {
            Ok(n) if n == self.expected => Ok(n),
            Ok(n) => Err(format!("{n} of {} bytes arrived", self.expected)),
            Err(e) => Err(format!("broken: {e}")),
        }
    }
}

/// A UDP server answering every datagram with `<name> <client address>`, padded with spaces to
/// the datagram's own length when that is longer (so a large datagram gets an answer as large:
/// fragmented both ways), until dropped.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
}

impl UdpEcho {
    pub fn start(ns: &NetNs, port: u16, name: &str) -> Self {
        // Both versions (`[::]` takes IPv4 too, as mapped addresses).
        let socket = ns.run_in(|| UdpSocket::bind(("::", port)).expect("bind UDP echo"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_string());
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    let mut answer = format!("{name} {}", peer.ip().to_canonical()).into_bytes();
                    if n > answer.len() {
                        answer.resize(n, b' ');
                    }
                    let _ = socket.send_to(&answer, peer);
                }
            }
        });
        Self { stop }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One datagram from `src` to `dst` and its answer: (backend name, client address it saw).
/// Tries three times, a second apart (UDP may lose the first while ARP resolves).
pub fn udp_ask(ns: &NetNs, src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<(String, String)> {
    let (name, seen, _) = udp_ask_sized(ns, src, dst, b"hello".len())?;
    Ok((name, seen))
}

/// `udp_ask` with a datagram of `size` bytes; also returns the answer's length (`UdpEcho`
/// answers a large datagram with one as large).
pub fn udp_ask_sized(
    ns: &NetNs,
    src: impl Into<IpAddr>,
    dst: SocketAddr,
    size: usize,
) -> std::io::Result<(String, String, usize)> {
    let src = src.into();
    let socket = ns.run_in(|| UdpSocket::bind((src, 0)))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.connect(dst)?;
    let mut datagram = b"hello".to_vec();
    datagram.resize(size, b'.');
    let mut buf = vec![0u8; 65536];
    let mut last = None;
    for _ in 0..3 {
        socket.send(&datagram)?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                let mut words = text.split_whitespace();
                let name = words.next().unwrap_or_default().to_string();
                let seen = words.next().unwrap_or_default().to_string();
                return Ok((name, seen, n));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three tries"))
}

/// How many connection failures a test tolerates while a backend is being taken out of
/// rotation: a connection whose SYN reached the backend just as it was marked down moves with
/// its flow to a live backend, which resets it (`reselected_down`, the designed behaviour). It
/// happens only in the moment of the transition and rarely more than once; a third is a bug.
pub const RACING_RESETS_TOLERATED: u32 = 2;

/// Counts the connections that raced a backend's removal; every test that opens connections
/// while a backend leaves rotation goes through this, so what is tolerated is said once.
#[derive(Debug, Default)]
pub struct RemovalRace {
    resets: u32,
}

impl RemovalRace {
    /// Whether the failure `err` of a connection may be the race: only before the backend is
    /// shown out of rotation, and at most [`RACING_RESETS_TOLERATED`] times. Reports each one.
    pub fn tolerate(&mut self, what: &str, err: &dyn std::fmt::Display, shown_out: bool) -> bool {
        if shown_out || self.resets >= RACING_RESETS_TOLERATED {
            return false;
        }
        self.resets += 1;
        println!("{what}: a connection racing the backend's removal failed (tolerated): {err}");
        true
    }

    pub fn resets(&self) -> u32 {
        self.resets
    }
}
