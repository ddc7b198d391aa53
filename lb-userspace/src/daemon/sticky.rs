//! `xnlb sticky clear`: the administrator forgets sticky clients, so that their next flows are
//! balanced by the ring (a client moved off a server for good, or a table reset after a
//! maintenance). Listing is a read, answered beside `status` (`status::sticky_rows`).

use std::net::IpAddr;

use anyhow::{Result, bail};
use lb_common::stats::FlowEvent;
use lb_model::sticky;
use tracing::info;

use super::controller::Controller;

impl Controller {
    /// Removes the entries of `service`'s sticky table: all, `client`'s, or those naming
    /// `backend`. Says how many, and which services shared them.
    pub fn clear_sticky(
        &mut self,
        service: &str,
        client: Option<IpAddr>,
        backend: Option<&str>,
    ) -> Result<String> {
        let svc = sticky::sticky_service(&self.config, service).map_err(anyhow::Error::msg)?;
        if let Some(name) = backend
            && svc.backend(name).is_none()
        {
            let names: Vec<&str> = svc.backends.iter().map(|b| b.name.as_str()).collect();
            bail!(
                "unknown backend `{name}` in service {service}; backends: {}",
                names.join(", ")
            );
        }
        let entries = self.dp.reader().sticky_entries()?;
        let keys = sticky::to_clear(svc, &entries, client, backend);
        let cleared = self.dp.remove_sticky(&keys)?;
        if cleared > 0 {
            self.dp
                .count_flow_event(FlowEvent::StickyCleared, cleared as u64)?;
        }
        let which = match (client, backend) {
            (Some(c), _) => format!(" for client {c}"),
            (_, Some(b)) => format!(" held to {b}"),
            _ => String::new(),
        };
        let sharing = sticky::sharing(&self.config, svc);
        let shared = if sharing.len() > 1 {
            format!(" (the sticky table of {})", sharing.join(", "))
        } else {
            String::new()
        };
        let message = format!("{service}: cleared {cleared} sticky entries{which}{shared}");
        info!("{message}");
        Ok(message)
    }
}
