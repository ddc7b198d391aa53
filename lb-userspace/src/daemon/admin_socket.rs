//! The daemon's side of the admin socket: `status` is answered from the published view and the
//! datapath's counters; every other verb is a command to the controller's thread.

use std::{
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::UnixListener,
    sync::{mpsc, watch},
};
use tracing::warn;

use super::{
    cluster::{ClusterHandle, Verb},
    control::Handle,
    status::{View, status},
};
use crate::{
    admin::{ClusterAction, Request, Response},
    datapath::Reader,
};

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

/// What answering a request needs.
#[derive(Clone)]
pub struct Answerer {
    pub controller: Handle,
    pub view: watch::Receiver<Arc<View>>,
    pub reader: Arc<Reader>,
    /// Cluster mode's agent, when the config has a cluster block.
    pub cluster: Option<ClusterHandle>,
}

impl Answerer {
    pub async fn answer(&self, request: Request) -> Response {
        if let Request::Cluster { action } = request {
            return self.cluster_verb(action);
        }
        if request != Request::Status {
            return self.controller.ask(request).await;
        }
        let view = self.view.borrow().clone();
        let reader = self.reader.clone();
        let cluster = self
            .cluster
            .as_ref()
            .map(|c| (*c.status.borrow().clone()).clone());
        // Reading the connection table is blocking syscalls: off the async workers.
        let read = tokio::task::spawn_blocking(move || status(&view, &reader)).await;
        match read {
            Ok(Ok(mut status)) => {
                status.cluster = cluster;
                Response {
                    ok: true,
                    message: None,
                    status: Some(status),
                    cluster: None,
                }
            }
            Ok(Err(e)) => Response::error(&e),
            Err(e) => Response::error(&anyhow::anyhow!("{e}")),
        }
    }
}

impl Answerer {
    fn cluster_verb(&self, action: ClusterAction) -> Response {
        let Some(cluster) = &self.cluster else {
            return Response::error(&anyhow::anyhow!(
                "cluster mode is off: the config has no cluster block"
            ));
        };
        let (verb, done) = match action {
            ClusterAction::Query => {
                return Response {
                    ok: true,
                    message: None,
                    status: None,
                    cluster: Some((*cluster.status.borrow().clone()).clone()),
                };
            }
            ClusterAction::Drainstop => (
                Verb::Drainstop,
                "draining: no new flows; this node stops when its connections have ended",
            ),
            ClusterAction::Stop => (Verb::Stop, "stopped: this node owns no buckets"),
            ClusterAction::Start => (Verb::Start, "starting: this node joins the cluster"),
        };
        match cluster.ask(verb) {
            Ok(()) => Response::ok(done.to_string()),
            Err(e) => Response::error(&e),
        }
    }
}

/// Answers requests until the process ends. A `stop` request stops the controller, answers,
/// then tells the daemon to exit through `stopped`.
pub async fn serve(listener: UnixListener, answerer: Answerer, stopped: mpsc::Sender<()>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("admin socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answerer = answerer.clone();
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
                Ok(request) => answerer.answer(request).await,
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
