//! capstan's certificate authority.
//!
//! The CA that signs workload certificates carrying SPIFFE identities
//! (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`): a self-signed root,
//! generated once and kept in a folder ([`RootCa::load_or_generate`]), or an operator's
//! intermediate in Istio's `cacerts` layout ([`RootCa::load_plugged`]). [`RootCa::sign_csr`]
//! certifies a CSR's key for an identity the caller has verified (never the CSR's own). The
//! CSR service (`istio.v1.auth.IstioCertificateService`), SDS and the AWS Private CA issuer
//! build on these.

pub mod api;
pub mod authn;
mod authority;
pub mod aws;
mod identity;
pub mod pca;
mod root;
pub mod sds;
mod service;

pub use authority::{Authority, CaState};
pub use identity::SpiffeId;
pub use root::IssuedCertError;
pub use root::{
    BUNDLE_FILE, CERT_FILE, CHAIN_FILE, CaError, CaFiles, IssuedCertificate, KEY_FILE,
    KeyAlgorithm, MAX_CA_FILE, MAX_CSR_PEM, NEXT_CERT_FILE, NEXT_KEY_FILE, PLUGGED_FILES,
    ROOT_FILE, ROOT_FILES, RootCa, RotationPolicy, RotationStep, SignedChain, new_root_files,
    rotation_step, state_from_files,
};
pub use service::{CaMetrics, CaService, CaServiceConfig, DEFAULT_MAX_TTL, DEFAULT_TTL};
