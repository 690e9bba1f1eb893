//! Rust types for the Istio configuration capstan understands, and the code to read
//! and check it.
//!
//! - [`networking`]: `ServiceEntry`, `DestinationRule`, `VirtualService`, `Gateway`,
//!   `Sidecar`, `WorkloadEntry` and `WorkloadGroup` (`networking.istio.io`), and
//!   [`security`]: `PeerAuthentication`, `AuthorizationPolicy` and
//!   `RequestAuthentication` (`security.istio.io`), as kube `CustomResource`s with
//!   serde and JSON-schema support. Unknown fields are rejected.
//! - [`crd`]: the CustomResourceDefinition manifests of those kinds, every served
//!   version sharing one schema (checked in under `crds/generated/`).
//! - [`parse`]: [`parse_documents`] reads multi-document YAML into [`IstioObject`]s,
//!   separating whole-file YAML errors ([`FileError`]) from per-document errors
//!   ([`DocumentError`], with field path and line).
//! - [`validate`](mod@validate): semantic checks modelled on istiod's validation
//!   ([`validate()`] returns every [`ValidationError`] with its field path).

pub mod crd;
pub mod host;
pub mod networking;
pub mod object;
pub mod parse;
pub mod protocol;
pub mod security;
pub mod status;
pub mod types;
pub mod validate;

pub use object::{DEFAULT_NAMESPACE, IstioObject, Kind, ObjectKey};
pub use parse::{
    Document, DocumentError, DocumentErrorReason, FileError, ParseError, Position, parse_documents,
    parse_json, parse_single,
};
pub use protocol::{Protocol, ProtocolClass};
pub use validate::{ValidationError, validate};
