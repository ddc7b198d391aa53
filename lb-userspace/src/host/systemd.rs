//! Living under systemd: readiness, watchdog and stopping notifications (`Type=notify`), and
//! log lines journald files at the right level. Outside systemd (no `NOTIFY_SOCKET`, stderr
//! not the journal) all of this is silent, and logs keep their timestamps.

use std::{fmt, os::fd::AsRawFd, time::Duration};

use sd_notify::NotifyState;
use tracing::{Event, Level, Subscriber, warn};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Tells systemd the daemon is ready: the datapath is attached and its maps programmed.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is alive (its main loop turns and the controller answers).
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// Tells systemd the daemon is ending on purpose.
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// How often to tell systemd the daemon is alive: half its `WatchdogSec`, as sd_watchdog_enabled(3)
/// advises; `None` when no watchdog is set for this process.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|limit| limit / 2)
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("telling systemd ({}): {e}", states[0]);
    }
}

/// Whether stderr is the journal: `JOURNAL_STREAM` (set by systemd for a service whose output
/// goes to journald) names the device and inode of the stream, as systemd.exec(5) says.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}

/// One log line as journald wants it: the level as a syslog priority prefix (`<3>` for an
/// error, `<4>` a warning, `<6>` info, `<7>` debug), no timestamp (the journal has its own),
/// no colours.
pub struct JournalFormat;

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
