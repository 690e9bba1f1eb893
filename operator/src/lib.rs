//! The capstan control plane: config sources, the index, the model, translation to Envoy,
//! status, the monitoring server and the commands of the `capstan` binary.
//!
//! Data flows one way: [`source`] → [`index`] → [`model`] → [`translate`] → the cache and
//! push of `capstan_xds`; [`reconcile`] drives it, [`status`] reports back on the objects.

pub mod agent;
pub mod ca_store;
pub mod capture_rules;
pub mod config_file;
pub mod explain;
pub mod http_connection;
pub mod identity;
pub mod index;
pub mod mesh_config;
pub mod model;
pub mod monitoring;
pub mod pod_localities;
pub mod proxy_status;
pub mod reconcile;
pub mod run;
pub mod source;
pub mod status;
pub mod translate;
pub mod validate_cmd;
pub mod webhook;

pub use run::RunArgs;
