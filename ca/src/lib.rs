//! capstan's certificate authority.
//!
//! Today: a self-signed root for a trust domain, and workload certificates carrying SPIFFE
//! identities (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`), signed by it.
//! The CSR service (`istio.v1.auth.IstioCertificateService`), SDS, plug-in certificates and the
//! AWS Private CA issuer build on these.

mod identity;
mod root;

pub use identity::SpiffeId;
pub use root::{
    CERT_FILE, CHAIN_FILE, CaError, IssuedCertificate, KEY_FILE, MAX_CSR_PEM, ROOT_FILE, RootCa,
    SignedChain,
};
