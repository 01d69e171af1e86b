//! Certificates as files: the `certificate: self_signed` material the
//! provider makes, and the reading of PEM certificate and key files that
//! both the provider (to check a spec's `{ cert, key }` at validate time) and
//! the proxy (to serve them) do the same way.
//!
//! - `generate_certificate` makes a small private CA and a server
//!   certificate it signs, so that users trust the CA file (`curl --cacert`)
//!   and every verifier accepts the server certificate as an ordinary
//!   end-entity one.
//! - `read_pair` reads a PEM chain and a PEM key, and checks that the key is
//!   the certificate's (for PKCS #8 keys, which is what lbctl and openssl
//!   write; other key formats are checked by the TLS library when served).
//!
//! No TLS library here: `rcgen` makes certificates, `rustls-pki-types`
//! reads PEM, `x509-parser` reads a certificate's public key.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// PEM text of a generated certificate.
#[derive(Debug, Clone)]
pub struct GeneratedCertificate {
    /// The CA certificate that signed `cert_pem`: what clients trust.
    pub ca_pem: String,
    /// The server certificate (the leaf only; the CA is its trust anchor).
    pub cert_pem: String,
    /// The server certificate's private key (PKCS #8).
    pub key_pem: String,
}

/// Generates a CA and a server certificate it signs, valid for `names`:
/// DNS names, or IP addresses written as text (`127.0.0.1`), which become IP
/// subject alternative names. The CA's key is thrown away: nothing else is
/// ever signed with it.
pub fn generate_certificate(names: &[String]) -> Result<GeneratedCertificate> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let first = names.first().map(String::as_str).unwrap_or("localhost");

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("making the CA certificate")?;
    ca_params.distinguished_name.push(DnType::CommonName, format!("lbctl local CA for {first}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).context("signing the CA certificate")?;

    let key = KeyPair::generate().context("generating the server key")?;
    let mut params = CertificateParams::new(names.to_vec())
        .with_context(|| format!("making a certificate for {}", names.join(", ")))?;
    params.distinguished_name.push(DnType::CommonName, first);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &ca, &ca_key).context("signing the server certificate")?;

    Ok(GeneratedCertificate { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A certificate chain and its key, read from PEM.
#[derive(Debug)]
pub struct CertificatePair {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

/// Reads a PEM certificate chain file and a PEM private key file; errors
/// name the file and what is wrong with it.
pub fn read_pair(cert_path: &Path, key_path: &Path) -> Result<CertificatePair> {
    let cert_pem = std::fs::read(cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key_pem = std::fs::read(key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let chain = certificate_chain(&cert_pem).with_context(|| format!("reading {}", cert_path.display()))?;
    let key = private_key(&key_pem).with_context(|| format!("reading {}", key_path.display()))?;
    check_key_matches(&chain[0], &key)
        .with_context(|| format!("using {} with {}", cert_path.display(), key_path.display()))?;
    Ok(CertificatePair { chain, key })
}

/// A pair from PEM text.
pub fn pair_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertificatePair> {
    let chain = certificate_chain(cert_pem)?;
    let key = private_key(key_pem)?;
    check_key_matches(&chain[0], &key)?;
    Ok(CertificatePair { chain, key })
}

fn certificate_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow!("not a PEM certificate chain: {err}"))?;
    if chain.is_empty() {
        return Err(anyhow!("no PEM certificate (`-----BEGIN CERTIFICATE-----`) found"));
    }
    Ok(chain)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| match err {
        rustls_pki_types::pem::Error::NoItemsFound => {
            anyhow!("no PEM private key (`-----BEGIN PRIVATE KEY-----`, RSA or EC) found")
        }
        err => anyhow!("not a PEM private key: {err}"),
    })
}

/// Checks that a PKCS #8 `key` is the one `leaf` was issued for.
fn check_key_matches(leaf: &CertificateDer<'_>, key: &PrivateKeyDer<'_>) -> Result<()> {
    let PrivateKeyDer::Pkcs8(pkcs8) = key else { return Ok(()) };
    let (_, certificate) =
        x509_parser::parse_x509_certificate(leaf).map_err(|err| anyhow!("not an X.509 certificate: {err}"))?;
    let Ok(key_pair) = rcgen::KeyPair::try_from(pkcs8.secret_pkcs8_der()) else {
        // A key kind rcgen does not read: the TLS library checks it when served.
        return Ok(());
    };
    if certificate.public_key().raw != key_pair.public_key_der().as_slice() {
        return Err(anyhow!("the certificate and key do not form a usable pair: the key is not the certificate's"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_files_are_reported() {
        fn check(cert: &[u8], key: &[u8], expect: &str) {
            let dir = tempfile::tempdir().unwrap();
            let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            let err = format!("{:#}", read_pair(&cert_path, &key_path).unwrap_err());
            let err = err.replace(&dir.path().display().to_string(), "DIR");
            assert_eq!(err, expect);
        }
        let one = generate_certificate(&["a.localhost".to_string()]).unwrap();
        let other = generate_certificate(&["b.localhost".to_string()]).unwrap();
        check(
            b"hello",
            one.key_pem.as_bytes(),
            "reading DIR/cert.pem: no PEM certificate (`-----BEGIN CERTIFICATE-----`) found",
        );
        check(
            one.cert_pem.as_bytes(),
            one.cert_pem.as_bytes(),
            "reading DIR/key.pem: no PEM private key (`-----BEGIN PRIVATE KEY-----`, RSA or EC) found",
        );
        check(
            one.cert_pem.as_bytes(),
            other.key_pem.as_bytes(),
            "using DIR/cert.pem with DIR/key.pem: the certificate and key do not form a usable pair: the key is not the certificate's",
        );
        assert!(pair_from_pem(one.cert_pem.as_bytes(), one.key_pem.as_bytes()).is_ok());
        let missing = format!("{:#}", read_pair(Path::new("/nonexistent/c"), Path::new("k")).unwrap_err());
        assert!(missing.starts_with("reading /nonexistent/c: "), "{missing}");
    }
}
