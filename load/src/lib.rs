//! capstan's load generator: simulated Envoy proxies over ADS (SotW or Delta) that sync, ACK
//! everything, and time how long each config change takes to reach every proxy. It drives any
//! ADS server that follows the bench-server contract (capstan's, in [`bench_server`], or a
//! peer such as go-control-plane), so one run measures both.
//!
//! - [`runner::run`] is a whole load run; [`report::LoadReport`] what it measured.
//! - [`proxy`] holds one simulated proxy: its xDS state machines and the stream task.
//! - [`wire`] and [`xds_scan`] read responses by field scans instead of full decoding,
//!   [`cluster_memo`] scans a cluster's bytes once, and [`request`] writes requests from
//!   pre-encoded pieces, to keep the generator's own CPU low.
//! - [`mesh`] is the benchmark mesh as Envoy resources; [`bench_server`] serves it from
//!   capstan's cache; [`server_process`] runs any bench server as a child process.

pub mod bench_server;
pub mod cluster_memo;
pub mod control;
pub mod cpu;
pub mod mesh;
pub mod name_set;
pub mod proxy;
pub mod report;
pub mod request;
pub mod rss;
pub mod runner;
pub mod server_process;
pub mod stats;
pub mod tracker;
pub mod wire;
pub mod xds_scan;

pub use proxy::Protocol;
pub use report::{LoadReport, Scenario};
pub use runner::{LoadConfig, LoadError, run};
