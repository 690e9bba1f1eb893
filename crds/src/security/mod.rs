//! `security.istio.io` kinds: PeerAuthentication, AuthorizationPolicy and
//! RequestAuthentication.
//!
//! Field names and semantics follow Istio's `security/v1beta1` protos (served as `v1`
//! and `v1beta1`). Every struct rejects unknown fields.

pub mod authorization_policy;
pub mod peer_authentication;
pub mod request_authentication;

pub use authorization_policy::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Condition, Operation, Rule, Source,
};
pub use peer_authentication::{
    MutualTls, MutualTlsMode, PeerAuthentication, PeerAuthenticationSpec,
};
pub use request_authentication::{JwtRule, RequestAuthentication, RequestAuthenticationSpec};

/// API group of all kinds in this module.
pub const GROUP: &str = "security.istio.io";

/// Versions of [`GROUP`] accepted when reading; all share one schema. Objects are
/// written back as `v1`.
pub const ACCEPTED_VERSIONS: [&str; 2] = ["v1", "v1beta1"];
