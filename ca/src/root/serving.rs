//! capstan's own serving certificate: what its TLS xDS/CA port (istiod's 15012) presents to
//! proxies, signed by the same CA as the workloads so that a proxy trusting the mesh's root
//! trusts the control plane too.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{CaError, IssuedCertificate, RootCa, set_validity};
use crate::identity::SpiffeId;

impl RootCa {
    /// A new key pair and a server certificate for `dns_names` and `ips` (and `identity` as a
    /// URI SAN, if given), signed by this CA and valid for `validity`.
    ///
    /// `certificate_pem` holds the chain a TLS server sends: the leaf first, then the
    /// intermediates up to but not including the root (empty for the built-in root; a
    /// plugged-in CA's intermediate and whatever is above it). Clients already hold the root,
    /// and sending it would only cost bytes on every handshake.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        identity: Option<&SpiffeId>,
        validity: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = server_params(dns_names, ips, identity, validity)?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let mut chain = leaf.pem();
        for intermediate in self.intermediates() {
            chain.push_str(intermediate);
        }
        Ok(IssuedCertificate {
            certificate_pem: chain,
            private_key_pem: key.serialize_pem(),
        })
    }

    /// The certificates between a leaf and the root: the signing certificate and those above
    /// it, without the root.
    fn intermediates(&self) -> Vec<&str> {
        if self.above.is_empty() {
            // The signing certificate is the root itself.
            return Vec::new();
        }
        let mut chain = vec![self.certificate_pem.as_str()];
        chain.extend(
            self.above[..self.above.len() - 1]
                .iter()
                .map(String::as_str),
        );
        chain
    }
}

fn server_params(
    dns_names: &[String],
    ips: &[IpAddr],
    identity: Option<&SpiffeId>,
    validity: Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    // Only for people reading the certificate: TLS clients match the SANs.
    if let Some(first) = dns_names.first() {
        name.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = name;
    let mut sans = Vec::with_capacity(dns_names.len() + ips.len() + 1);
    for dns in dns_names {
        sans.push(SanType::DnsName(dns.clone().try_into()?));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    if let Some(identity) = identity {
        let uri = identity.to_string();
        sans.push(SanType::URI(
            uri.clone()
                .try_into()
                .map_err(|_| CaError::InvalidIdentity(uri))?,
        ));
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Server only: this certificate must not authenticate anyone as a client of the mesh.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::Pem;
    use x509_parser::prelude::X509Certificate;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn blocks(pem: &str) -> Vec<Pem> {
        Pem::iter_from_buffer(pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("PEM blocks")
    }

    fn names(leaf: &X509Certificate<'_>) -> (Vec<String>, Vec<Vec<u8>>, Vec<String>) {
        let sans = leaf
            .subject_alternative_name()
            .expect("parsable")
            .expect("has SANs");
        let (mut dns, mut ips, mut uris) = (Vec::new(), Vec::new(), Vec::new());
        for name in &sans.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                GeneralName::URI(u) => uris.push(u.to_string()),
                _ => {}
            }
        }
        (dns, ips, uris)
    }

    #[test]
    fn server_certificate_names_capstan_and_is_for_servers_only() {
        let root = RootCa::generate("cluster.local", 365 * DAY).expect("root");
        let dns = vec![
            "capstan.istio-system.svc".to_string(),
            "localhost".to_string(),
        ];
        let id = SpiffeId::new("cluster.local", "istio-system", "capstan");
        let issued = root
            .issue_server(&dns, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], Some(&id), DAY)
            .expect("issued");
        let chain = blocks(&issued.certificate_pem);
        assert_eq!(chain.len(), 1, "the built-in root is not sent along");
        let leaf = chain[0].parse_x509().expect("x509");
        let root_pem = blocks(root.root_pem());
        let root_cert = root_pem[0].parse_x509().expect("root x509");
        leaf.verify_signature(Some(root_cert.public_key()))
            .expect("signed by the root");
        assert!(!leaf.is_ca());

        let (dns_sans, ip_sans, uri_sans) = names(&leaf);
        assert_eq!(dns_sans, dns);
        assert_eq!(ip_sans, vec![vec![127, 0, 0, 1]]);
        assert_eq!(uri_sans, vec![id.to_string()]);
        let eku = leaf
            .extended_key_usage()
            .expect("parsable")
            .expect("has an EKU")
            .value;
        assert!(eku.server_auth);
        assert!(
            !eku.client_auth,
            "a server certificate is no client identity"
        );
        assert!(issued.private_key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_plugged_intermediate_is_sent_with_the_leaf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = RootCa::generate("cluster.local", 365 * DAY).expect("root");
        // An intermediate signed by the root, written in the cacerts layout.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let intermediate = params.signed_by(&key, &root.issuer).expect("intermediate");
        let files = [
            (super::super::CERT_FILE, intermediate.pem()),
            (super::super::KEY_FILE, key.serialize_pem()),
            (
                super::super::CHAIN_FILE,
                format!("{}{}", intermediate.pem(), root.root_pem()),
            ),
            (super::super::ROOT_FILE, root.root_pem().to_string()),
        ];
        for (file, text) in files {
            std::fs::write(dir.path().join(file), text).expect("write");
        }
        let plugged = RootCa::load_plugged(dir.path(), "cluster.local").expect("plugged");

        let issued = plugged
            .issue_server(&["capstan.istio-system.svc".to_string()], &[], None, DAY)
            .expect("issued");
        let chain = blocks(&issued.certificate_pem);
        assert_eq!(chain.len(), 2, "leaf and intermediate, not the root");
        let leaf = chain[0].parse_x509().expect("leaf");
        let middle = chain[1].parse_x509().expect("intermediate");
        leaf.verify_signature(Some(middle.public_key()))
            .expect("leaf signed by the intermediate");
        let root_pem = blocks(root.root_pem());
        let root_cert = root_pem[0].parse_x509().expect("root");
        middle
            .verify_signature(Some(root_cert.public_key()))
            .expect("intermediate signed by the root");
        let (_, _, uris) = names(&leaf);
        assert!(uris.is_empty());
    }

    #[test]
    fn a_name_that_is_no_dns_name_is_an_error() {
        let root = RootCa::generate("cluster.local", DAY).expect("root");
        let err = root
            .issue_server(&["capstän.svc".to_string()], &[], None, DAY)
            .expect_err("not ASCII");
        assert!(matches!(err, CaError::Generate(_)), "{err}");
    }
}
