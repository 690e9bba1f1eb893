//! What the control-plane benchmarks (`capstan-kube-bench`, `capstan-cloud-map-bench`) share:
//! they start the same servers, connect the same simulated proxies and read the same process
//! figures, so that their rows compare like with like.
//!
//! - [`server`]: capstan and istiod as child processes on loopback ports, started and timed to
//!   ready; a one-shot HTTP/1.1 request for their probes
//! - [`proxies`]: a fleet of Delta proxies with an Istio sidecar's node, synced and tracked
//! - [`usage`]: a server's memory (`/proc/PID/status`) and waiting until it is idle
//! - [`report`]: units and the machine a run was on, for the reports

pub mod proxies;
pub mod report;
pub mod server;
pub mod usage;
