//! What a TLS handshake proved about the client, as services read it from a request.

use std::sync::Arc;

use capstan_ca::SpiffeId;
use rustls::ServerConnection;
use x509_parser::extensions::GeneralName;

use crate::net::GuardedInfo;

/// Who the client of a connection is, as far as its transport proves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Not a TLS connection: nothing is proved.
    #[default]
    Plaintext,
    /// TLS, and the client sent no certificate.
    Anonymous,
    /// TLS with a client certificate that chains to a trusted root, and the Istio workload
    /// identity (`spiffe://<td>/ns/<ns>/sa/<sa>`) among its URI SANs; `None` when it has no
    /// such identity, or several different ones (which would leave open who the client is).
    Certified(Option<Arc<SpiffeId>>),
}

/// The identity proved by the connection a request came on. A request that did not come
/// through a guarded listener (a server built without one) counts as plaintext.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> PeerIdentity {
    request
        .extensions()
        .get::<GuardedInfo>()
        .map_or(PeerIdentity::Plaintext, |info| info.identity.clone())
}

/// [`peer_identity`] for services that see the HTTP request itself.
pub fn peer_identity_of(extensions: &tonic::codegen::http::Extensions) -> PeerIdentity {
    extensions
        .get::<GuardedInfo>()
        .map_or(PeerIdentity::Plaintext, |info| info.identity.clone())
}

/// The identity of a finished handshake. rustls has verified the chain by now; only the
/// leaf's SANs are read here.
pub(super) fn identity_of(session: &ServerConnection) -> PeerIdentity {
    match session.peer_certificates().and_then(|chain| chain.first()) {
        None => PeerIdentity::Anonymous,
        Some(leaf) => PeerIdentity::Certified(spiffe_id(leaf.as_ref()).map(Arc::new)),
    }
}

fn spiffe_id(der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    let mut ids = sans
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => SpiffeId::parse(uri),
            _ => None,
        });
    let first = ids.next()?;
    if ids.any(|other| other != first) {
        return None;
    }
    Some(first)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use capstan_ca::RootCa;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("PEM")
            .to_vec()
    }

    #[test]
    fn reads_the_workload_identity_and_nothing_else() {
        let day = Duration::from_secs(86_400);
        let root = RootCa::generate("cluster.local", day).expect("root");
        let id = SpiffeId::new("cluster.local", "bookinfo", "reviews");
        let workload = root.issue(&id, day).expect("workload");
        assert_eq!(spiffe_id(&der(&workload.certificate_pem)), Some(id));

        let server = root
            .issue_server(&["capstan.istio-system.svc".to_string()], &[], None, day)
            .expect("server");
        assert_eq!(spiffe_id(&der(&server.certificate_pem)), None);
        assert_eq!(spiffe_id(b"not a certificate"), None);
    }
}
