//! `xnlb`: the daemon (`run`), the config checker (`check`) and the administrator's CLI.

use std::process::ExitCode;

use clap::Parser;
use xnlb::{
    admin::{self, ClientError, ClusterAction, Request},
    cli::{Cli, ClusterCommand, Command, Socket, SocketArg, StickyCommand, Target},
    config, daemon,
    host::systemd,
    model::sticky,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, pin_dir } => {
            init_logging();
            match daemon::run(&config, &pin_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xnlb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, socket } => match config::load(&config) {
            Ok(loaded) => {
                print!("{}", loaded.config.summary(&config.display().to_string()));
                for w in &loaded.warnings {
                    println!("warning: {w}");
                }
                let socket = SocketArg { socket, config };
                match reload_room(&socket, loaded.config.services.len()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("xnlb: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Status {
            json,
            service,
            watch: Some(period),
            socket,
        } => {
            debug_assert!(!json, "clap: --watch conflicts with --json");
            watch_status(&socket, service.as_deref(), period)
        }
        Command::Status {
            json,
            service,
            watch: None,
            socket,
        } => call(&socket, Request::Status, |r| {
            show_status(r, service.as_deref(), json)
        }),
        Command::Drain(t) => target(t, |service, backend| Request::Drain { service, backend }),
        Command::Disable(t) => target(t, |service, backend| Request::Disable { service, backend }),
        Command::Enable(t) => target(t, |service, backend| Request::Enable { service, backend }),
        Command::Reload(s) => call(&s, Request::Reload, message),
        Command::Stop(s) => call(&s, Request::Stop, message),
        Command::Cluster { action } => {
            let (socket, action, json) = match action {
                ClusterCommand::Query { json, socket } => (socket, ClusterAction::Query, json),
                ClusterCommand::Drainstop(s) => (s, ClusterAction::Drainstop, false),
                ClusterCommand::Stop(s) => (s, ClusterAction::Stop, false),
                ClusterCommand::Start(s) => (s, ClusterAction::Start, false),
            };
            call(&socket, Request::Cluster { action }, |r| {
                Ok(match r.cluster {
                    Some(c) if json => serde_json::to_string_pretty(&c).expect("status serializes"),
                    Some(c) => c.render(),
                    None => r.message.unwrap_or_default(),
                })
            })
        }
        Command::Sticky {
            action:
                StickyCommand::List {
                    service,
                    client,
                    json,
                    socket,
                },
        } => call(&socket, Request::StickyList { service, client }, |r| {
            let rows = r.sticky.unwrap_or_default();
            Ok(if json {
                serde_json::to_string_pretty(&rows).expect("rows serialize")
            } else {
                sticky::render(&rows)
            })
        }),
        Command::Sticky {
            action:
                StickyCommand::Clear {
                    service,
                    client,
                    backend,
                    socket,
                },
        } => call(
            &socket,
            Request::StickyClear {
                service,
                client,
                backend,
            },
            message,
        ),
        Command::Trace {
            client,
            service,
            backend,
            count,
            rate,
            json,
            socket,
        } => trace(
            &socket,
            admin::TraceRequest {
                client,
                service,
                backend,
                count,
                rate,
            },
            json,
        ),
    }
}

/// `xnlb trace`: prints the stream as it comes. Ctrl-C (and SIGTERM) half-close the
/// connection rather than end the process: the daemon then clears its filter and sends the
/// totals, which are printed last.
fn trace(socket: &SocketArg, request: admin::TraceRequest, json: bool) -> ExitCode {
    let Socket { path, from } = socket.resolve();
    let closer = |stream: std::os::unix::net::UnixStream| {
        if let Some(signals) = block_interrupts() {
            std::thread::spawn(move || {
                let _ = signals.wait();
                let _ = stream.shutdown(std::net::Shutdown::Write);
            });
        }
    };
    let print = |message: &lb_model::trace::TraceMessage| {
        let line = if json {
            serde_json::to_string(message).expect("messages serialize")
        } else {
            message.render()
        };
        println!("{line}");
    };
    match admin::trace(&path, request, closer, print) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ClientError::NotRunning(_)) => {
            eprintln!("xnlb: {e} (socket from {from})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xnlb: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM blocked in this thread (and the threads it starts) for one of them to
/// wait for; their dispositions reset first, as a shell's `&` leaves SIGINT ignored, which
/// would discard it. `None` if the signal mask cannot be set (they then end the process).
fn block_interrupts() -> Option<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigHandler, SigSet, Signal, signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: restoring the default disposition installs no handler.
        unsafe { signal(s, SigHandler::SigDfl) }.ok()?;
        set.add(s);
    }
    set.thread_block().ok()?;
    Some(set)
}

/// The daemon's log on stderr: `RUST_LOG` filters (default `info`); under systemd, lines
/// journald files at their level; elsewhere timestamped, coloured only on a terminal.
fn init_logging() {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    if systemd::stderr_is_journal() {
        logs.event_format(systemd::JournalFormat).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// `check` against a running daemon, when one answers: a config with more services than its
/// rings hold is refused by `reload` (the rings are sized for twice the services of the config
/// a daemon starts with, at least 16, and grow only at a start). No daemon: nothing to check
/// (`run` sizes the rings for the config).
fn reload_room(socket: &SocketArg, services: usize) -> Result<(), String> {
    let Socket { path, from } = socket.resolve();
    let Ok(answer) = admin::request(&path, &Request::Room) else {
        return Ok(());
    };
    let Some(room) = answer.room else {
        // A daemon from before `room`: it cannot say.
        return Ok(());
    };
    if services > room as usize {
        return Err(format!(
            "the running daemon (socket {}, from {from}) has room for {room} services and this \
             config has {services}: `xnlb reload` would refuse it. A restart with this config \
             grows the tables and adopts the running datapath (`systemctl restart xnlb`, or \
             SIGTERM and `xnlb run`)",
            path.display()
        ));
    }
    println!(
        "the running daemon (socket {}) has room for {room} services: a reload can apply it",
        path.display()
    );
    Ok(())
}

/// The status answer as text or JSON, of one service or all.
fn show_status(r: admin::Response, service: Option<&str>, json: bool) -> Result<String, String> {
    let mut status = r.status.expect("status answers carry a status");
    if let Some(name) = service {
        let names: Vec<String> = status.services.iter().map(|s| s.name.clone()).collect();
        status.services.retain(|s| s.name == name);
        if status.services.is_empty() {
            return Err(format!(
                "unknown service `{name}`; services: {}",
                names.join(", ")
            ));
        }
    }
    Ok(if json {
        serde_json::to_string_pretty(&status).expect("status serializes")
    } else {
        status.render()
    })
}

/// `status --watch`: the status redrawn in place every `period` until interrupted. A failed
/// request (the daemon restarting) is shown in its place and asked again, as `watch` does;
/// only an unknown service ends it.
fn watch_status(
    socket: &SocketArg,
    service: Option<&str>,
    period: std::time::Duration,
) -> ExitCode {
    let socket = socket.resolve();
    loop {
        let frame = match ask(&socket, &Request::Status) {
            Ok(r) => match show_status(r, service, false) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("xnlb: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Err(e) => format!("xnlb: {e}\n"),
        };
        // Home and clear the screen, then the frame under a line saying when and how often.
        print!(
            "\x1b[H\x1b[2J{} every {}s (Ctrl-C ends)\n\n{frame}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            period.as_secs_f64()
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::thread::sleep(period);
    }
}

fn message(r: admin::Response) -> Result<String, String> {
    Ok(r.message.unwrap_or_default())
}

fn target(t: Target, make: impl Fn(Option<String>, String) -> Request) -> ExitCode {
    let (service, backend) = t.names();
    call(&t.socket, make(service, backend), message)
}

/// Sends a request: the daemon's answer, or in one line why there is none (its refusal, or
/// no daemon at the socket, saying where the path came from).
fn ask(socket: &Socket, request: &Request) -> Result<admin::Response, String> {
    let Socket { path, from } = socket;
    match admin::request(path, request) {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => Err(r.message.unwrap_or_default().trim_end().to_string()),
        Err(e @ ClientError::NotRunning(_)) => Err(format!("{e} (socket from {from})")),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends a request; prints the answer, or the error as one line (a reload's config problems
/// keep their own lines), with a non-zero exit.
fn call(
    socket: &SocketArg,
    request: Request,
    show: impl Fn(admin::Response) -> Result<String, String>,
) -> ExitCode {
    let answer = ask(&socket.resolve(), &request).and_then(show);
    match answer {
        Ok(text) => {
            if text.ends_with('\n') {
                print!("{text}");
            } else {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xnlb: {e}");
            ExitCode::FAILURE
        }
    }
}
