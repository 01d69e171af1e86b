//! Listener certificates: the `self_signed` ones this provider makes and
//! keeps, and the checks of user-supplied PEM files.
//!
//! A load balancer with a `self_signed` listener gets one certificate, made
//! the first time it is needed, for its DNS name, `localhost`,
//! `127.0.0.1` and (network load balancers) its static IP, signed by a CA
//! of its own. The files live in
//! `.lbctl/run/lb/<lb>/tls/` (`ca.pem`, `cert.pem`, `key.pem`), so they
//! survive proxy restarts and configuration changes, and go with the load
//! balancer's directory when it is destroyed. `ca.pem` is the output
//! `<lb>_ca_cert`: `curl --cacert` trusts it.
//!
//! `{ cert, key }` files are relative to the spec's directory; they are
//! loaded exactly as the proxy will load them at validate and plan time, so
//! a missing file, bad PEM or mismatched key is a spec error there.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lbctl_plan::{Finding, Severity};
use lbctl_runtime::{self as runtime, CertificateFiles, Layout};
use lbctl_spec::{Certificate, GeneratedCertificate, Listener, ListenerProtocol, LoadBalancer};

/// File that records which names the generated certificate was made for.
const NAMES_FILE: &str = "names";

/// The directory of a load balancer's generated certificate.
pub(crate) fn self_signed_dir(layout: &Layout, lb_name: &str) -> PathBuf {
    layout.lb_dir(lb_name).join("tls")
}

/// The CA file to trust for a load balancer's generated certificate, when
/// one of its listeners uses `self_signed`.
pub(crate) fn self_signed_ca(layout: &Layout, lb_name: &str, lb: &LoadBalancer) -> Option<PathBuf> {
    let uses_generated = lb.listeners.iter().any(|it| {
        matches!(it.protocol, ListenerProtocol::Https | ListenerProtocol::Tls)
            && matches!(it.certificate, Some(Certificate::Generated(GeneratedCertificate::SelfSigned)))
    });
    uses_generated.then(|| self_signed_dir(layout, lb_name).join("ca.pem"))
}

/// The certificate files of every HTTPS and TLS listener of `lb`, by port,
/// generating the `self_signed` one if it does not exist yet (for
/// `dns_name`, and `static_ip` when given).
pub(crate) fn listener_certificates(
    layout: &Layout,
    working_dir: &Path,
    lb_name: &str,
    dns_name: &str,
    static_ip: Option<Ipv4Addr>,
    lb: &LoadBalancer,
) -> Result<BTreeMap<u16, CertificateFiles>> {
    let mut certificates = BTreeMap::new();
    let encrypted = |it: &&Listener| matches!(it.protocol, ListenerProtocol::Https | ListenerProtocol::Tls);
    for listener in lb.listeners.iter().filter(encrypted) {
        let files = match &listener.certificate {
            None => continue,
            Some(Certificate::Generated(GeneratedCertificate::SelfSigned)) => {
                ensure_self_signed(&self_signed_dir(layout, lb_name), dns_name, static_ip)?
            }
            Some(Certificate::Files { cert, key }) => {
                CertificateFiles { cert: working_dir.join(cert), key: working_dir.join(key) }
            }
        };
        certificates.insert(listener.port, files);
    }
    Ok(certificates)
}

/// Findings for `{ cert, key }` files that cannot be used, placed at the
/// listener's `certificate`.
pub(crate) fn check_files(base: &str, working_dir: &Path, lb: &LoadBalancer, found: &mut Vec<Finding>) {
    for (idx, listener) in lb.listeners.iter().enumerate() {
        let Some(Certificate::Files { cert, key }) = &listener.certificate else { continue };
        if let Err(err) = lbctl_runtime::certificates::read_pair(&working_dir.join(cert), &working_dir.join(key)) {
            found.push(Finding {
                path: format!("{base}.listeners[{idx}].certificate"),
                message: format!("{err:#}"),
                severity: Severity::Invalid,
            });
        }
    }
}

/// The generated certificate in `dir` for `dns_name`, `localhost`,
/// `127.0.0.1` and `static_ip`; made (again) when missing or made for other names.
fn ensure_self_signed(dir: &Path, dns_name: &str, static_ip: Option<Ipv4Addr>) -> Result<CertificateFiles> {
    let files = CertificateFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    let mut names = vec![dns_name.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(static_ip.filter(|it| *it != Ipv4Addr::LOCALHOST).map(|it| it.to_string()));
    let recorded = names.join("\n");
    let complete = [&files.cert, &files.key, &dir.join("ca.pem")].iter().all(|it| it.is_file());
    if complete && std::fs::read_to_string(dir.join(NAMES_FILE)).is_ok_and(|it| it == recorded) {
        return Ok(files);
    }
    let generated = lbctl_runtime::certificates::generate_certificate(&names)
        .with_context(|| format!("generating a certificate for {dns_name}"))?;
    // Every file is created 0600 (the key is never readable by others, not
    // even for a moment). The names file goes last: a generation cut short
    // is redone.
    runtime::write_atomic(&files.key, generated.key_pem.as_bytes())?;
    runtime::write_atomic(&files.cert, generated.cert_pem.as_bytes())?;
    runtime::write_atomic(&dir.join("ca.pem"), generated.ca_pem.as_bytes())?;
    runtime::write_atomic(&dir.join(NAMES_FILE), recorded.as_bytes())?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_balancer(listeners: &str) -> LoadBalancer {
        serde_yaml::from_str(&format!("{{ type: application, listeners: {listeners} }}")).unwrap()
    }

    #[test]
    fn self_signed_certificates_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("run"));
        let lb = load_balancer(
            "[{ port: 8443, protocol: HTTPS, certificate: self_signed, default_action: { forward: web } },
              { port: 8444, protocol: HTTPS, certificate: self_signed, default_action: { forward: web } },
              { port: 8080, protocol: HTTP, default_action: { forward: web } }]",
        );
        let certificates =
            listener_certificates(&layout, dir.path(), "public", "public.shop.elb.localhost", None, &lb).unwrap();
        let tls_dir = layout.lb_dir("public").join("tls");
        let expected = CertificateFiles { cert: tls_dir.join("cert.pem"), key: tls_dir.join("key.pem") };
        assert_eq!(certificates, BTreeMap::from([(8443, expected.clone()), (8444, expected.clone())]));
        assert_eq!(self_signed_ca(&layout, "public", &lb), Some(tls_dir.join("ca.pem")));
        let mode = std::fs::metadata(&expected.key).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        lbctl_runtime::certificates::read_pair(&expected.cert, &expected.key).unwrap();

        // Asking again keeps the files; another DNS name makes new ones.
        let cert = std::fs::read(&expected.cert).unwrap();
        listener_certificates(&layout, dir.path(), "public", "public.shop.elb.localhost", None, &lb).unwrap();
        assert_eq!(std::fs::read(&expected.cert).unwrap(), cert);
        listener_certificates(&layout, dir.path(), "public", "public.other.elb.localhost", None, &lb).unwrap();
        assert_ne!(std::fs::read(&expected.cert).unwrap(), cert);

        let plain = load_balancer("[{ port: 8080, protocol: HTTP, default_action: { forward: web } }]");
        assert_eq!(self_signed_ca(&layout, "public", &plain), None);
    }

    #[test]
    fn certificate_files_are_relative_to_the_spec_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let generated = lbctl_runtime::certificates::generate_certificate(&["localhost".to_string()]).unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls/cert.pem"), &generated.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls/key.pem"), &generated.key_pem).unwrap();
        let lb = load_balancer(
            "[{ port: 8443, protocol: HTTPS, certificate: { cert: tls/cert.pem, key: tls/key.pem }, default_action: { forward: web } },
              { port: 8444, protocol: HTTPS, certificate: { cert: tls/key.pem, key: tls/key.pem }, default_action: { forward: web } },
              { port: 8445, protocol: HTTPS, certificate: { cert: missing.pem, key: tls/key.pem }, default_action: { forward: web } }]",
        );
        let layout = Layout::new(dir.path().join("run"));
        let certificates = listener_certificates(&layout, dir.path(), "public", "x", None, &lb).unwrap();
        assert_eq!(certificates[&8443].cert, dir.path().join("tls/cert.pem"));
        assert_eq!(certificates[&8443].key, dir.path().join("tls/key.pem"));

        let mut found = Vec::new();
        check_files("load_balancers.public", dir.path(), &lb, &mut found);
        let found: Vec<(String, String)> = found
            .into_iter()
            .map(|it| (it.path, it.message.replace(&dir.path().display().to_string(), "DIR")))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    "load_balancers.public.listeners[1].certificate".to_string(),
                    "reading DIR/tls/key.pem: no PEM certificate (`-----BEGIN CERTIFICATE-----`) found".to_string()
                ),
                (
                    "load_balancers.public.listeners[2].certificate".to_string(),
                    "reading DIR/missing.pem: No such file or directory (os error 2)".to_string()
                ),
            ]
        );
    }
}
