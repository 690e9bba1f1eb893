//! Config sources: where Istio objects (and the Secrets gateways read) come from.

pub mod cloud_map;
pub mod folder;
pub mod kube;
pub mod secret;
pub mod watch;
