//! The admin socket: one JSON request per line, one JSON response per line, over a Unix socket
//! only root can open (mode 0600). The CLI is its client.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::UnixListener,
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{controller::Controller, lifecycle::AdminState, status::Status};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "lowercase")]
pub enum Request {
    Status,
    Drain { service: String, backend: String },
    Disable { service: String, backend: String },
    Enable { service: String, backend: String },
    Reload,
    Stop,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What happened, or on failure why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    fn ok(message: String) -> Self {
        Self {
            ok: true,
            message: Some(message),
            status: None,
        }
    }

    fn error(e: &anyhow::Error) -> Self {
        Self {
            ok: false,
            message: Some(format!("{e:#}")),
            status: None,
        }
    }
}

/// The controller as the daemon's tasks share it; `None` once stopped.
pub type Shared = Arc<Mutex<Option<Controller>>>;

/// Binds the admin socket, refusing if a daemon already answers on it. A socket file left by a
/// killed daemon is replaced.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "xnlb is already running (a daemon answers on {})",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests until the process ends. A `stop` request stops the controller, answers,
/// then tells the daemon to exit through `stopped`.
pub async fn serve(listener: UnixListener, shared: Shared, stopped: mpsc::Sender<()>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("admin socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let request: Result<Request, _> = serde_json::from_str(&line);
            let is_stop = matches!(request, Ok(Request::Stop));
            let response = match request {
                Ok(request) => {
                    let shared = shared.clone();
                    tokio::task::spawn_blocking(move || handle(&shared, request))
                        .await
                        .unwrap_or_else(|e| Response::error(&anyhow::anyhow!("{e}")))
                }
                Err(e) => Response::error(&anyhow::anyhow!("bad request: {e}")),
            };
            let mut out = serde_json::to_string(&response).unwrap_or_default();
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
            let _ = write.shutdown().await;
            if is_stop && response.ok {
                let _ = stopped.send(()).await;
            }
        });
    }
}

/// Carries out one request against the controller.
pub fn handle(shared: &Shared, request: Request) -> Response {
    let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ctl) = guard.as_mut() else {
        return Response::error(&anyhow::anyhow!("xnlb is stopping"));
    };
    let result = match request {
        Request::Status => {
            return match ctl.status() {
                Ok(status) => Response {
                    ok: true,
                    message: None,
                    status: Some(status),
                },
                Err(e) => Response::error(&e),
            };
        }
        Request::Drain { service, backend } => {
            ctl.set_admin(&service, &backend, AdminState::Draining)
        }
        Request::Disable { service, backend } => {
            ctl.set_admin(&service, &backend, AdminState::Disabled)
        }
        Request::Enable { service, backend } => {
            ctl.set_admin(&service, &backend, AdminState::Enabled)
        }
        Request::Reload => {
            let r = ctl.reload();
            match &r {
                Ok(m) => info!("{m}"),
                Err(e) => warn!("reload refused: {e:#}"),
            }
            r
        }
        Request::Stop => {
            let ctl = guard.take().expect("checked above");
            ctl.stop()
                .map(|()| "stopped: detached and unpinned".to_string())
        }
    };
    match result {
        Ok(message) => Response::ok(message),
        Err(e) => Response::error(&e),
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
}

/// Sends one request and waits for its answer (reloads can take a few seconds).
pub fn request(socket: &Path, request: &Request) -> Result<Response, ClientError> {
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
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer)
        .map_err(|e| ClientError::Protocol(socket.to_path_buf(), e.to_string()))
}
