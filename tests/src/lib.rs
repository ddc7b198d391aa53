//! xnlb's test harness: network namespaces that clean up after themselves, the datapath test
//! bed (the real XDP object run through `BPF_PROG_TEST_RUN` inside a namespace with real veth
//! interfaces, routes and neighbours for `bpf_fib_lookup`), and packet builders.

pub mod addresses;
pub mod apps;
pub mod banner_server;
pub mod bed;
pub mod certs;
pub mod daemon;
pub mod flow_cases;
pub mod http_backend;
pub mod netns;
pub mod nic;
pub mod packets;
pub mod topology;
pub mod wire;
