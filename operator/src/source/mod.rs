//! Config sources: where Istio objects come from.

pub mod folder;
pub mod kube;
pub mod watch;
