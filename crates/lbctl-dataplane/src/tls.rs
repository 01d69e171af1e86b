//! TLS for the data plane: certificates, the listeners' server configuration
//! and the client configuration towards targets.
//!
//! - `server_config_from_files` loads a PEM certificate chain and key (read
//!   and checked as the provider checks them at validate time, by
//!   `lbctl_runtime::certificates`) into a rustls server configuration
//!   offering HTTP/2 and HTTP/1.1 through ALPN, once per configuration:
//!   never per connection.
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
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

pub use lbctl_runtime::certificates::{generate_certificate, GeneratedCertificate};

/// A listener's TLS configuration from a PEM certificate chain file and a
/// PEM private key file; ALPN offers `h2`, then `http/1.1`.
pub fn server_config_from_files(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>> {
    let pair = lbctl_runtime::certificates::read_pair(cert_path, key_path)?;
    server_config(pair.chain, pair.key)
        .with_context(|| format!("using {} with {}", cert_path.display(), key_path.display()))
}

/// A listener's TLS configuration from PEM text; ALPN offers `h2`, then `http/1.1`.
pub fn server_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
    let pair = lbctl_runtime::certificates::pair_from_pem(cert_pem, key_pem)?;
    server_config(pair.chain, pair.key)
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

/// What an access log says of a client's TLS session: the cipher suite
/// (OpenSSL's name), the protocol and the SNI name.
pub type SessionSummary = (String, &'static str, Option<String>);

/// The `SessionSummary` of `session`.
pub fn session_summary(session: &rustls::ServerConnection) -> SessionSummary {
    (
        session.negotiated_cipher_suite().map(|it| openssl_name(it.suite())).unwrap_or_default(),
        protocol_name(session.protocol_version()),
        session.server_name().map(str::to_string),
    )
}

/// A TLS 1.2 or 1.3 cipher suite by its OpenSSL name, as AWS's access
/// logs write it (`ECDHE-RSA-AES128-GCM-SHA256`, `TLS_AES_128_GCM_SHA256`).
fn openssl_name(suite: rustls::CipherSuite) -> String {
    use rustls::CipherSuite as S;
    let name = match suite {
        S::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        S::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        S::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        other => return format!("{other:?}"),
    };
    name.to_string()
}

/// `TLSv1.2`, `TLSv1.3`: a protocol version as AWS's access logs write it.
fn protocol_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

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
}
