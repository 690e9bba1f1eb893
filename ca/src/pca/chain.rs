//! Putting the certificates Private CA returns in order. GetCertificate's chain is documented
//! to chain up to the root but its order is not promised, and a chain may stop short of the
//! root; ordering by signature rather than by position copes with both.

use x509_parser::prelude::{FromDer, X509Certificate};

/// The certificates in a PEM bundle, each re-encoded on its own.
pub fn split_pem(bundle: &str) -> Result<Vec<String>, String> {
    let blocks = pem::parse_many(bundle).map_err(|e| e.to_string())?;
    blocks
        .iter()
        .map(|b| {
            if b.tag() == "CERTIFICATE" {
                Ok(lf(b))
            } else {
                Err(format!(
                    "a {} block where certificates were expected",
                    b.tag()
                ))
            }
        })
        .collect()
}

/// The chain above `cert` built from `pool` (any order, duplicates and strays allowed): each
/// element signs the one before it. The flag says whether it ends in a self-signed root.
pub fn above(cert: &str, pool: &[String]) -> Result<(Vec<String>, bool), String> {
    let decoded: Vec<(String, Vec<u8>)> = pool
        .iter()
        .map(|p| Ok((p.clone(), der(p)?)))
        .collect::<Result<_, String>>()?;
    let mut current = der(cert)?;
    let mut chain: Vec<String> = Vec::new();
    // Bounded by the pool size, so a pool with a signature loop cannot spin forever.
    for _ in 0..=decoded.len() {
        if signed_by(&current, &current) {
            return Ok((chain, true));
        }
        let Some((pem, parent)) = decoded
            .iter()
            .find(|(_, d)| *d != current && signed_by(&current, d))
        else {
            return Ok((chain, false));
        };
        chain.push(pem.clone());
        current = parent.clone();
    }
    Err("the certificates sign each other in a loop".into())
}

fn der(text: &str) -> Result<Vec<u8>, String> {
    let block = pem::parse(text.trim()).map_err(|e| e.to_string())?;
    Ok(block.into_contents())
}

fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    let (Ok((_, child)), Ok((_, parent))) = (
        X509Certificate::from_der(child),
        X509Certificate::from_der(parent),
    ) else {
        return false;
    };
    child.issuer() == parent.subject() && child.verify_signature(Some(parent.public_key())).is_ok()
}

/// PEM with Unix line ends (`pem::encode` writes CRLF), as every other PEM capstan hands out.
fn lf(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    use super::*;

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str, parent: Option<&Ca>) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_after = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
        let cert = match parent {
            Some(p) => params.signed_by(&key, &p.issuer),
            None => params.self_signed(&key),
        }
        .expect("cert");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    #[test]
    fn orders_a_shuffled_chain_and_sees_whether_it_reaches_the_root() {
        let root = ca("root", None);
        let mid = ca("mid", Some(&root));
        let ours = ca("ours", Some(&mid));
        let stray = ca("stray", None);

        let pool = vec![root.pem.clone(), stray.pem.clone(), mid.pem.clone()];
        let (chain, complete) = above(&ours.pem, &pool).expect("ordered");
        assert_eq!(chain, vec![mid.pem.clone(), root.pem.clone()]);
        assert!(complete);

        let (chain, complete) = above(&ours.pem, std::slice::from_ref(&mid.pem)).expect("short");
        assert_eq!(chain, vec![mid.pem.clone()]);
        assert!(!complete, "mid is not self-signed");

        let (chain, complete) = above(&ours.pem, &[]).expect("empty");
        assert!(chain.is_empty() && !complete);
    }

    #[test]
    fn splits_a_bundle_and_refuses_keys() {
        let root = ca("root", None);
        let mid = ca("mid", Some(&root));
        let bundle = format!("{}\n{}", mid.pem, root.pem);
        assert_eq!(split_pem(&bundle).expect("split").len(), 2);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        assert!(split_pem(&key.serialize_pem()).is_err());
    }
}
