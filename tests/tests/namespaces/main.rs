//! The real `xnlb` daemon in namespace networks with real TCP, HTTP and UDP (root; veths,
//! bridges, native XDP on veth).

mod announce;
mod daemon;
mod end_to_end;
mod health_daemon;
mod package;
mod prometheus;
mod same_choice;
mod scrape_during_reload;
mod under_systemd;
