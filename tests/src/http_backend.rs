//! A backend's web server for the tests: HTTP or HTTPS (hyper + rustls), answering health pages
//! (`…healthcheck.htm`) the way the test sets them at run time (200, 503, a redirect, a slow
//! answer), `/stream/<n>` with a long-lived transfer (see [`STREAM_LINE`]), `/bulk/<n>` with
//! `<name> <client address>` followed by `n` bytes sent as fast as TCP goes, and any other path
//! with `<name> <client address>`. It records the `Host` header of every request. Runs on its own
//! thread with its own runtime until dropped.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{Either, Full, channel::Channel};
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::{certs::TlsIdentity, netns::NetNs};

/// `/stream/<n>` answers `<name> <client address>\n`, then `n` lines of this many bytes (the
/// newline included), one every [`STREAM_TICK`]: a transfer that lasts `n` ticks.
pub const STREAM_LINE: usize = 1024;
pub const STREAM_TICK: Duration = Duration::from_millis(20);

type Body = Either<Full<Bytes>, Channel<Bytes>>;

/// How a health page answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Status(u16),
    /// 302 to this location (Exchange answers `/` with a redirect to `/owa/`).
    Redirect(String),
    /// 200, after this long.
    Slow(Duration),
}

#[derive(Default)]
struct Pages {
    /// Health pages not set here answer 200.
    health: HashMap<String, Answer>,
    /// (path, Host header) of every request.
    seen: Vec<(String, String)>,
}

pub struct HttpBackend {
    pub addr: SocketAddr,
    pages: Arc<Mutex<Pages>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpBackend {
    /// Serves on `addr` (port 0: any), inside `ns` when given, with TLS when `tls` is given.
    pub fn start(
        ns: Option<&NetNs>,
        addr: SocketAddr,
        name: &str,
        tls: Option<TlsIdentity>,
    ) -> Self {
        let bind = || std::net::TcpListener::bind(addr).expect("bind the test web server");
        let listener = match ns {
            Some(ns) => ns.run_in(bind),
            None => bind(),
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = tls.map(|id| {
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(id.chain, id.key)
            .expect("server certificate");
            TlsAcceptor::from(Arc::new(config))
        });
        let pages = Arc::new(Mutex::new(Pages::default()));
        let (shutdown, stop) = oneshot::channel();
        let (name, served) = (name.to_string(), pages.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(serve(listener, acceptor, name, served, stop));
        });
        Self {
            addr,
            pages,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// How the health page at `path` answers from now on.
    pub fn set(&self, path: &str, answer: Answer) {
        self.pages
            .lock()
            .unwrap()
            .health
            .insert(path.to_string(), answer);
    }

    /// `Host` headers of the requests for `path` so far.
    pub fn hosts_seen(&self, path: &str) -> Vec<String> {
        let pages = self.pages.lock().unwrap();
        pages
            .seen
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .collect()
    }
}

/// A plain HTTP server on `port` in each backend namespace, named `{prefix}1`, `{prefix}2`,
/// ... in order; every health page answers 200 until `set` says otherwise.
pub fn web_servers(backends: &[NetNs], port: u16, prefix: &str) -> Vec<HttpBackend> {
    backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let any = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
            HttpBackend::start(Some(ns), any, &format!("{prefix}{}", i + 1), None)
        })
        .collect()
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: Option<TlsAcceptor>,
    name: String,
    pages: Arc<Mutex<Pages>>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let (acceptor, name, pages) = (acceptor.clone(), name.clone(), pages.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, peer, name.clone(), pages.clone()));
            let http = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    // A failed handshake (the client refused the certificate) just ends here.
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    name: String,
    pages: Arc<Mutex<Pages>>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let health = {
        let mut p = pages.lock().unwrap();
        p.seen.push((path.clone(), host));
        path.ends_with("healthcheck.htm")
            .then(|| p.health.get(&path).cloned().unwrap_or(Answer::Status(200)))
    };
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(StatusCode::from_u16(status).expect("status"))
            .body(Either::Left(Full::new(Bytes::from(body))))
            .expect("response")
    };
    let greeting = format!("{name} {}\n", peer.ip());
    if let Some(lines) = path.strip_prefix("/stream/").and_then(|n| n.parse().ok()) {
        return Ok(Response::new(Either::Right(stream(greeting, lines))));
    }
    // At most 64 MiB: the body is built in memory.
    if let Some(bytes) = path
        .strip_prefix("/bulk/")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n <= 64 << 20)
    {
        let mut body = greeting.into_bytes();
        body.resize(body.len() + bytes, b'x');
        return Ok(Response::new(Either::Left(Full::new(Bytes::from(body)))));
    }
    Ok(match health {
        None => reply(200, greeting),
        Some(Answer::Status(code)) => reply(code, format!("{name} health {code}\n")),
        Some(Answer::Slow(d)) => {
            tokio::time::sleep(d).await;
            reply(200, format!("{name} health 200 (slow)\n"))
        }
        Some(Answer::Redirect(to)) => {
            let mut r = reply(302, String::new());
            r.headers_mut()
                .insert(header::LOCATION, to.parse().expect("location"));
            r
        }
    })
}

/// The body of `/stream/<lines>`, written by its own task; a client that goes away ends it.
fn stream(greeting: String, lines: usize) -> Channel<Bytes> {
    let (mut tx, body) = Channel::new(1);
    tokio::spawn(async move {
        if tx.send_data(Bytes::from(greeting)).await.is_err() {
            return;
        }
        let mut line = vec![b'x'; STREAM_LINE];
        line[STREAM_LINE - 1] = b'\n';
        let line = Bytes::from(line);
        let mut tick = tokio::time::interval(STREAM_TICK);
        for _ in 0..lines {
            tick.tick().await;
            if tx.send_data(line.clone()).await.is_err() {
                return;
            }
        }
    });
    body
}
