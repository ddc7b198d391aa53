//! One TCP health check: a fresh connection to the backend, `send` when given, and when
//! `expect` is given the first line the backend sends must start with it (SMTP's `220`, POP3's
//! `+OK`, IMAP's `* OK`). Without `expect`, an accepted connection is healthy. Failures say
//! what the backend did (`first line "421 4.3.2 Service not available" does not start with
//! "220"`); the time limit is the scheduler's.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    probe::{Outcome, connect_failure, io_cause},
    schedule::Progress,
};
use crate::config::{MAX_TCP_CHECK_TEXT, TcpCheck};

#[derive(Clone, Debug, PartialEq)]
pub struct TcpProbe {
    pub addr: SocketAddr,
    pub check: TcpCheck,
}

impl TcpProbe {
    pub fn new(addr: SocketAddr, check: TcpCheck) -> Self {
        Self { addr, check }
    }

    /// Runs one check, noting in `progress` what it waits for. The connection closes when this
    /// returns.
    pub async fn run(&self, progress: &Progress) -> Outcome {
        progress.at("connecting");
        let mut tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| connect_failure(&e))?;
        if !self.check.send.is_empty() {
            progress.at("sending");
            tcp.write_all(self.check.send.as_bytes())
                .await
                .map_err(|e| format!("send: {}", io_cause(&e)))?;
        }
        if self.check.expect.is_empty() {
            return Ok("connected".into());
        }
        progress.at("waiting for the first line");
        let line = first_line(&mut tcp).await?;
        let shown = line.escape_debug();
        if line.starts_with(&self.check.expect) {
            Ok(format!("connected, \"{shown}\""))
        } else {
            Err(format!(
                "first line \"{shown}\" does not start with \"{}\"",
                self.check.expect.escape_debug()
            )
            .into())
        }
    }
}

/// The first line the backend sends, without its line end: up to a newline, the end of the
/// stream, or `MAX_TCP_CHECK_TEXT` bytes (not UTF-8: replaced, so it can still be shown).
async fn first_line(tcp: &mut TcpStream) -> Result<String, String> {
    let mut got = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while got.len() < MAX_TCP_CHECK_TEXT && !got.contains(&b'\n') {
        let n = tcp
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the first line: {}", io_cause(&e)))?;
        if n == 0 {
            if got.is_empty() {
                return Err("the backend closed the connection without sending a line".into());
            }
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let end = got
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(got.len())
        .min(MAX_TCP_CHECK_TEXT);
    let line = String::from_utf8_lossy(&got[..end]);
    Ok(line.trim_end_matches('\r').to_string())
}
