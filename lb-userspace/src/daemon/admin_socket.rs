//! The daemon's side of the admin socket: `status` is answered from the published view and the
//! datapath's counters; every other verb is a command to the controller's thread.

use std::{
    net::IpAddr,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::UnixListener,
    sync::{mpsc, watch},
};
use tracing::warn;

use super::{
    cluster::{ClusterHandle, Verb},
    control::Handle,
    status::{Samples, View, status, sticky_rows},
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
    /// The counters' recent samples, for the status's rates.
    pub samples: Arc<Samples>,
    /// Cluster mode's agent, when the config has a cluster block.
    pub cluster: Option<ClusterHandle>,
    /// A trace runs (`trace`: one at a time).
    pub tracing: Arc<AtomicBool>,
}

impl Answerer {
    pub async fn answer(&self, request: Request) -> Response {
        if let Request::Cluster { action } = request {
            return self.cluster_verb(action);
        }
        if let Request::StickyList { service, client } = request {
            return self.sticky_list(service, client).await;
        }
        if request != Request::Status {
            return self.controller.ask(request).await;
        }
        let view = self.view.borrow().clone();
        let reader = self.reader.clone();
        let samples = self.samples.clone();
        let cluster = self
            .cluster
            .as_ref()
            .map(|c| (*c.status.borrow().clone()).clone());
        // Reading the connection table is blocking syscalls: off the async workers.
        let read =
            tokio::task::spawn_blocking(move || status(&view, &reader, Some(&samples))).await;
        match read {
            Ok(Ok(mut status)) => {
                status.cluster = cluster;
                Response {
                    status: Some(status),
                    ..Response::answered()
                }
            }
            Ok(Err(e)) => Response::error(&e),
            Err(e) => Response::error(&anyhow::anyhow!("{e}")),
        }
    }
}

impl Answerer {
    /// `xnlb sticky list`: read from the published view and the datapath, as `status` is.
    async fn sticky_list(&self, service: String, client: Option<IpAddr>) -> Response {
        let view = self.view.borrow().clone();
        let reader = self.reader.clone();
        let read =
            tokio::task::spawn_blocking(move || sticky_rows(&view, &reader, &service, client))
                .await;
        match read {
            Ok(Ok(rows)) => Response {
                sticky: Some(rows),
                ..Response::answered()
            },
            Ok(Err(e)) => Response::error(&e),
            Err(e) => Response::error(&anyhow::anyhow!("{e}")),
        }
    }

    fn cluster_verb(&self, action: ClusterAction) -> Response {
        let Some(cluster) = &self.cluster else {
            return Response::error(&anyhow::anyhow!(
                "cluster mode is off: the config has no cluster block"
            ));
        };
        let (verb, done) = match action {
            ClusterAction::Query => {
                return Response {
                    cluster: Some((*cluster.status.borrow().clone()).clone()),
                    ..Response::answered()
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
            let (mut read, mut write) = stream.into_split();
            let request = read_request(&mut read).await;
            // A trace answers with a stream, on this connection, until it ends.
            if let Ok(Request::Trace(trace)) = request {
                super::trace::stream(&answerer, trace, read, write).await;
                return;
            }
            let is_stop = matches!(request, Ok(Request::Stop));
            let response = match request {
                Ok(request) => answerer.answer(request).await,
                Err(e) => Response::error(&e),
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

/// The longest request line taken: requests are a few hundred bytes of JSON.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one request line: at most `MAX_REQUEST` bytes, within `REQUEST_TIMEOUT`, UTF-8 JSON.
/// Whatever else a client sends is answered with what is wrong, and never held in memory.
async fn read_request(read: &mut tokio::net::unix::OwnedReadHalf) -> Result<Request> {
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST + 1));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => bail!("bad request: no request line within {REQUEST_TIMEOUT:?}"),
        Ok(Err(e)) => bail!("bad request: {e}"),
        Ok(Ok(_)) => {}
    }
    if line.len() as u64 > MAX_REQUEST {
        bail!("bad request: longer than {MAX_REQUEST} bytes without a newline");
    }
    let text = std::str::from_utf8(&line).context("bad request: not UTF-8")?;
    serde_json::from_str(text).context("bad request")
}
