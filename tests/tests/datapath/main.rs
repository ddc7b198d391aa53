//! The real XDP object run through `BPF_PROG_TEST_RUN` in the datapath test bed (root; a
//! namespace with veths, routes and neighbours, no traffic between namespaces).

mod cluster;
mod flow_lifetime;
mod fragments;
mod golden_flows;
mod golden_stateless;
mod half_open;
mod held_routing;
mod icmp;
mod ipv6;
mod next_hops;
mod random_invariants;
mod selection;
mod sticky;
mod trace;
