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
mod authority;
mod identity;
mod root;

pub use authority::{Authority, CaState};
pub use identity::SpiffeId;
pub use root::{
    CERT_FILE, CHAIN_FILE, CaError, IssuedCertificate, KEY_FILE, MAX_CSR_PEM, ROOT_FILE, RootCa,
    SignedChain,
};
