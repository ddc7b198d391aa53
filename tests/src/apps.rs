//! The applications on the test networks: a line server on each backend that answers every line
//! with its name and the client address it saw, and a client for it. Sockets are opened inside
//! the namespaces by the test's own threads; every wait is bounded.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::netns::NetNs;

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A server answering `<name> <client address>` to every line, until dropped.
pub struct LineServer {
    stop: Arc<AtomicBool>,
}

impl LineServer {
    pub fn start(ns: &NetNs, port: u16, name: &str) -> Self {
        let listener =
            ns.run_in(|| TcpListener::bind(("0.0.0.0", port)).expect("bind line server"));
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
        if line.is_err() || writeln!(writer, "{name} {}", peer.ip()).is_err() {
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
fn connect_from(ns: &NetNs, src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = ns.run_in(|| Socket::new(Domain::IPV4, Type::STREAM, None))?;
    socket.bind(&SocketAddr::from((src, 0)).into())?;
    socket.connect_timeout(&dst.into(), IO_TIMEOUT)?;
    Ok(socket.into())
}

/// `GET path` to `dst` from source address `src` inside `ns` (HTTP/1.0, one connection);
/// returns the status and the body. Bounded by `IO_TIMEOUT`.
pub fn http_get_from(
    ns: &NetNs,
    src: Ipv4Addr,
    dst: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let stream = connect_from(ns, src, dst)?;
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
    use std::io::Read;
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
