//! The controller's own thread: it owns the `Controller` and takes commands (administrator
//! verbs, reloads, health batches) one at a time over a channel, each with a reply. Map writes
//! are blocking syscalls, so this is a plain thread, not an async task; nothing shares the
//! controller behind a lock.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::controller::Controller;
use crate::{
    admin::{Request, Response},
    health::Report,
};
use lb_model::lifecycle::AdminState;

enum Command {
    /// An administrator's verb (not `status`: that is read from the published view).
    Admin(Request, oneshot::Sender<Response>),
    /// Probe results to count.
    Health(Vec<Report>),
    /// The kernel's routing changed (coalesced: one pending at a time).
    RoutingChanged,
    /// End the thread after what is queued, leaving the pinned datapath forwarding.
    Exit,
    /// Answered as soon as the thread takes it: it is alive and not stuck (the watchdog).
    Alive(oneshot::Sender<()>),
    /// Announce a VIP whose hold-down ended (`announce:`); answered when done.
    AnnounceTick(oneshot::Sender<()>),
}

/// How the daemon's tasks talk to the controller.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    /// A `RoutingChanged` is queued and not yet taken: a burst of changes makes one.
    routing_pending: Arc<AtomicBool>,
}

impl Handle {
    /// Carries out `request` and waits for the answer.
    pub async fn ask(&self, request: Request) -> Response {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Admin(request, reply)).is_err() {
            return Response::error(&anyhow::anyhow!("xnlb is stopping"));
        }
        answer
            .await
            .unwrap_or_else(|_| Response::error(&anyhow::anyhow!("xnlb is stopping")))
    }

    /// Whether the controller's thread takes commands: true once it took this one.
    pub async fn alive(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Alive(reply)).is_ok() && answer.await.is_ok()
    }

    /// Lets the controller announce what a hold-down held back; returns when it has (so a
    /// busy controller gets one tick at a time), false once it is gone.
    pub async fn announce_tick(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::AnnounceTick(reply)).is_ok() && answer.await.is_ok()
    }

    /// Hands over a batch of probe results; false once the controller is gone.
    pub fn health(&self, batch: Vec<Report>) -> bool {
        self.commands.send(Command::Health(batch)).is_ok()
    }

    /// Ends the controller's thread once the commands queued before are carried out; the
    /// pinned datapath stays as it is (SIGTERM, SIGINT).
    pub fn exit(&self) {
        let _ = self.commands.send(Command::Exit);
    }

    /// Tells the controller the kernel's routing changed; false once the controller is gone.
    pub fn routing_changed(&self) -> bool {
        if self.routing_pending.swap(true, Ordering::AcqRel) {
            return !self.commands.is_closed();
        }
        self.commands.send(Command::RoutingChanged).is_ok()
    }
}

/// Starts the controller's thread. It ends after a `stop` request (which detaches and unpins),
/// or after `exit` or when every handle is gone (both leave the pinned datapath forwarding).
pub fn spawn(ctl: Controller) -> std::io::Result<(Handle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let routing_pending = Arc::new(AtomicBool::new(false));
    let pending = routing_pending.clone();
    let thread = std::thread::Builder::new()
        .name("xnlb-controller".into())
        .spawn(move || serve(ctl, rx, &pending))?;
    Ok((
        Handle {
            commands: tx,
            routing_pending,
        },
        thread,
    ))
}

fn serve(
    mut ctl: Controller,
    mut commands: mpsc::UnboundedReceiver<Command>,
    routing_pending: &AtomicBool,
) {
    while let Some(command) = commands.blocking_recv() {
        match command {
            Command::RoutingChanged => {
                // Cleared first: a change during the resolution queues another.
                routing_pending.store(false, Ordering::Release);
                if let Err(e) = ctl.routing_changed() {
                    error!("following a routing change: {e:#}");
                }
            }
            Command::Health(batch) => {
                if let Err(e) = ctl.apply_probes(batch) {
                    error!("applying health results: {e:#}");
                }
            }
            Command::Exit => return,
            Command::Alive(reply) => {
                let _ = reply.send(());
            }
            Command::AnnounceTick(reply) => {
                ctl.announce_tick();
                let _ = reply.send(());
            }
            Command::Admin(Request::Stop, reply) => {
                let answer = match ctl.stop() {
                    Ok(()) => Response::ok("stopped: detached and unpinned".to_string()),
                    Err(e) => Response::error(&e),
                };
                let _ = reply.send(answer);
                return;
            }
            Command::Admin(request, reply) => {
                let _ = reply.send(carry_out(&mut ctl, request));
            }
        }
    }
}

fn carry_out(ctl: &mut Controller, request: Request) -> Response {
    let result = match request {
        Request::Room => {
            return Response {
                room: Some(ctl.dp.ring_capacity()),
                ..Response::answered()
            };
        }
        Request::Drain { service, backend } => {
            ctl.set_admin(service.as_deref(), &backend, AdminState::Draining)
        }
        Request::Disable { service, backend } => {
            ctl.set_admin(service.as_deref(), &backend, AdminState::Disabled)
        }
        Request::Enable { service, backend } => {
            ctl.set_admin(service.as_deref(), &backend, AdminState::Enabled)
        }
        Request::Reload => {
            let r = ctl.reload();
            match &r {
                Ok(m) => info!("{m}"),
                Err(e) => warn!("reload refused: {e:#}"),
            }
            r
        }
        Request::StickyClear {
            service,
            client,
            backend,
        } => ctl.clear_sticky(&service, client, backend.as_deref()),
        // `status` and `sticky list` are read from the published view, `cluster` answered by
        // the cluster agent, `trace` streamed by the admin socket; `stop` ends the thread
        // (above).
        Request::Status
        | Request::Stop
        | Request::Cluster { .. }
        | Request::StickyList { .. }
        | Request::Trace(_) => Err(anyhow::anyhow!("not a controller command")),
    };
    match result {
        Ok(message) => Response::ok(message),
        Err(e) => Response::error(&e),
    }
}
