//! The admin protocol: one JSON request per line, one JSON response per line, over a Unix
//! socket only root can open (mode 0600). The CLI is its client (here); the daemon serves it
//! (`daemon::admin_socket`).

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_model::{cluster::ClusterStatus, status::Status, sticky::StickyRow, trace::TraceMessage};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// `service` absent: every service that has the backend (NLB's host-wide drainstop).
    Drain {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        backend: String,
    },
    Disable {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        backend: String,
    },
    Enable {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        backend: String,
    },
    Reload,
    Stop,
    Cluster {
        action: ClusterAction,
    },
    /// The service's live sticky entries, or `client`'s.
    #[serde(rename = "sticky_list")]
    StickyList {
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<IpAddr>,
    },
    /// Forgets the service's sticky entries: all, `client`'s, or those naming `backend`.
    #[serde(rename = "sticky_clear")]
    StickyClear {
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
    },
    /// How many services the running datapath has room for (`xnlb check` asks).
    Room,
    /// `xnlb trace`: answered with a `Response`, then, when it is ok, a stream of
    /// `lb_model::trace::TraceMessage` lines until the count is reached or the client closes.
    Trace(TraceRequest),
}

/// What `xnlb trace` asks to see; every field absent traces every packet the stages handle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceRequest {
    /// `ADDR` or `ADDR/LEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// End after this many events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Events per second at most (over all CPUs); the rest are counted, not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

/// `xnlb cluster ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterAction {
    Query,
    Drainstop,
    Stop,
    Start,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What happened, or on failure why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Vec<StickyRow>>,
    /// `room`: the services the running datapath's rings hold; a reload to more is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<u32>,
}

impl Response {
    pub fn ok(message: String) -> Self {
        Self {
            message: Some(message),
            ..Self::answered()
        }
    }

    /// Success with no message: the caller adds the answer's document.
    pub fn answered() -> Self {
        Self {
            ok: true,
            message: None,
            status: None,
            cluster: None,
            sticky: None,
            room: None,
        }
    }

    pub fn error(e: &anyhow::Error) -> Self {
        Self {
            ok: false,
            message: Some(format!("{e:#}")),
            status: None,
            cluster: None,
            sticky: None,
            room: None,
        }
    }
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "xnlb is not running: no daemon listens on {0} (start it with `xnlb run --config FILE`, or pass --socket)"
    )]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the admin socket is root's only (mode 0600); run as root")]
    Permission(PathBuf),
    #[error("talking to the daemon on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon on {0} sent an answer this xnlb does not understand: {1}")]
    Protocol(PathBuf, String),
    #[error(
        "the daemon on {0} closed the connection without answering: it ended (stopped or crashed) \
         while handling the request; see its log, and `xnlb status` once it runs again"
    )]
    Died(PathBuf),
    /// The daemon answered with a refusal (a streaming verb's first line).
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and waits for its answer (reloads can take a few seconds).
pub fn request(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let stream = send(socket, request, Some(Duration::from_secs(60)))?;
    let mut answer = String::new();
    read_answer(socket, &mut BufReader::new(stream), &mut answer)
}

/// Sends `trace` and hands each message of its stream to `each` until the daemon ends it
/// (its last message says why). `closer` gets a handle that ends the trace when shut down for
/// writing (Ctrl-C): the daemon then clears its filter and sends its totals.
pub fn trace(
    socket: &Path,
    request: TraceRequest,
    closer: impl FnOnce(UnixStream),
    mut each: impl FnMut(&TraceMessage),
) -> Result<(), ClientError> {
    // No read timeout: a quiet client's trace may wait long for its next packet.
    let stream = send(socket, &Request::Trace(request), None)?;
    let io = |source: std::io::Error| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    closer(stream.try_clone().map_err(io)?);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let answer = read_answer(socket, &mut reader, &mut line)?;
    if !answer.ok {
        return Err(ClientError::Refused(answer.message.unwrap_or_default()));
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            return Ok(());
        }
        let message: TraceMessage = serde_json::from_str(&line)
            .map_err(|e| ClientError::Protocol(socket.to_path_buf(), e.to_string()))?;
        each(&message);
        if matches!(message, TraceMessage::End { .. }) {
            return Ok(());
        }
    }
}

/// Connects to the daemon and sends `request`.
fn send(
    socket: &Path,
    request: &Request,
    read_timeout: Option<Duration>,
) -> Result<UnixStream, ClientError> {
    let io = |source: std::io::Error| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(socket.to_path_buf())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Permission(socket.to_path_buf()),
        _ => io(e),
    })?;
    stream.set_read_timeout(read_timeout).map_err(io)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    Ok(stream)
}

/// Reads the daemon's answer line into `line`.
fn read_answer(
    socket: &Path,
    reader: &mut BufReader<UnixStream>,
    line: &mut String,
) -> Result<Response, ClientError> {
    match reader.read_line(line) {
        Ok(0) => return Err(ClientError::Died(socket.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Err(ClientError::Died(socket.to_path_buf()));
        }
        Err(source) => {
            return Err(ClientError::Io {
                path: socket.to_path_buf(),
                source,
            });
        }
        Ok(_) => {}
    }
    serde_json::from_str(line)
        .map_err(|e| ClientError::Protocol(socket.to_path_buf(), e.to_string()))
}
