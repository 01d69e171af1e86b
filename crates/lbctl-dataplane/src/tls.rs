//! TLS for the data plane: certificates, the listeners' server configuration
//! and the client configuration towards targets.
//!
//! - `generate_certificate` makes the `certificate: self_signed` material: a
//!   small private CA and a server certificate it signs, so that users trust
//!   the CA file (`curl --cacert`) and every verifier accepts the server
//!   certificate as an ordinary end-entity one.
//! - `server_config_from_files` loads a PEM certificate chain and key into a
//!   rustls server configuration offering HTTP/2 and HTTP/1.1 through ALPN.
//!   The provider calls it at plan time to check user-supplied files, and
//!   the proxy calls it once per configuration: never per connection.
//! - `client_config` is the configuration towards targets. Like AWS's load
//!   balancers, it does not verify the target's certificate (targets use
//!   self-signed certificates; the network between the load balancer and its
//!   targets is the trusted one), but it still checks the handshake's
//!   signatures, so the session is a real TLS session with that key.
//!
//! Everything uses the `ring` crypto provider explicitly, so that the choice
//! does not depend on which rustls features other crates enable.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

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

/// A listener's TLS configuration from a PEM certificate chain file and a
/// PEM private key file; ALPN offers `h2`, then `http/1.1`.
pub fn server_config_from_files(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>> {
    let cert_pem = std::fs::read(cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key_pem = std::fs::read(key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let chain = certificate_chain(&cert_pem).with_context(|| format!("reading {}", cert_path.display()))?;
    let key = private_key(&key_pem).with_context(|| format!("reading {}", key_path.display()))?;
    server_config(chain, key).with_context(|| format!("using {} with {}", cert_path.display(), key_path.display()))
}

/// A listener's TLS configuration from PEM text; ALPN offers `h2`, then `http/1.1`.
pub fn server_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
    server_config(certificate_chain(cert_pem)?, private_key(key_pem)?)
}

/// Which protocols a client connection to a target offers through ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAlpn {
    /// `http/1.1` only.
    Http1,
    /// `h2` only.
    Http2,
}

/// The TLS configuration towards targets offering `alpn`; built once per
/// process and shared.
pub(crate) fn client_config(alpn: ClientAlpn) -> Arc<ClientConfig> {
    static HTTP1: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    static HTTP2: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let (cell, protocol) = match alpn {
        ClientAlpn::Http1 => (&HTTP1, ALPN_HTTP1),
        ClientAlpn::Http2 => (&HTTP2, ALPN_H2),
    };
    cell.get_or_init(|| {
        let provider = Arc::new(crypto::ring::default_provider());
        let verifier = Arc::new(AcceptAnyCertificate { provider: provider.clone() });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![protocol.to_vec()];
        Arc::new(config)
    })
    .clone()
}

/// The name a target is addressed by in the TLS handshake: its IP address
/// (no SNI is sent for an address; the certificate is not verified anyway).
pub(crate) fn target_server_name(ip: Ipv4Addr) -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(ip).into())
}

fn server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| anyhow!("the certificate and key do not form a usable pair: {err}"))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
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
        rustls::pki_types::pem::Error::NoItemsFound => {
            anyhow!("no PEM private key (`-----BEGIN PRIVATE KEY-----`, RSA or EC) found")
        }
        err => anyhow!("not a PEM private key: {err}"),
    })
}

/// A verifier that accepts every certificate but checks the handshake
/// signatures with it; see the module documentation for why.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generated certificate is accepted by a verifying rustls client that
    /// trusts only its CA, for every name it was made for, and by nothing
    /// else.
    #[test]
    fn generated_certificates_verify_against_their_ca() {
        let names = vec!["public.shop.elb.localhost".to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
        let generated = generate_certificate(&names).unwrap();
        let server = server_config_from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes()).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);

        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(generated.ca_pem.as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(crypto::ring::default_provider());
        let client = Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let handshake = |name: &str| -> Result<(), rustls::Error> {
            let server_name = ServerName::try_from(name.to_string()).unwrap();
            let mut client = rustls::ClientConnection::new(client.clone(), server_name)?;
            let mut server = rustls::ServerConnection::new(server.clone())?;
            // Shuttle the handshake between the two in memory.
            for _ in 0..10 {
                let mut buffer = Vec::new();
                client.write_tls(&mut buffer).unwrap();
                server.read_tls(&mut buffer.as_slice()).unwrap();
                server.process_new_packets()?;
                let mut buffer = Vec::new();
                server.write_tls(&mut buffer).unwrap();
                client.read_tls(&mut buffer.as_slice()).unwrap();
                client.process_new_packets()?;
                if !client.is_handshaking() && !server.is_handshaking() {
                    return Ok(());
                }
            }
            panic!("the handshake did not finish");
        };
        for name in &names {
            handshake(name).unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        assert!(handshake("other.example.com").is_err());
    }

    #[test]
    fn bad_pem_files_are_reported() {
        fn check(cert: &[u8], key: &[u8], expect: &str) {
            let dir = tempfile::tempdir().unwrap();
            let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            let err = format!("{:#}", server_config_from_files(&cert_path, &key_path).unwrap_err());
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
        let mismatch = format!("{:#}", {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("c"), &one.cert_pem).unwrap();
            std::fs::write(dir.path().join("k"), &other.key_pem).unwrap();
            server_config_from_files(&dir.path().join("c"), &dir.path().join("k")).unwrap_err()
        });
        assert!(mismatch.contains("do not form a usable pair"), "{mismatch}");
        let missing =
            format!("{:#}", server_config_from_files(Path::new("/nonexistent/c"), Path::new("k")).unwrap_err());
        assert!(missing.starts_with("reading /nonexistent/c: "), "{missing}");
    }
}
