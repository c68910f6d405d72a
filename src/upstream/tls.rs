//! The TLS side of an upstream connection: which certificate authorities are trusted
//! (`providers.<name>.tls_roots` and `tls_ca_file`) and the ALPN offer (`h2`, then
//! `http/1.1`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::config::TlsRoots;

/// The trust anchors for one upstream: the chosen built-in set plus every certificate of
/// `ca_file`. An unreadable file, a file without certificates, or an empty system store is
/// an error (a proxy that trusts nothing would fail every call later, and less clearly).
pub fn root_store(roots: TlsRoots, ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        TlsRoots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        TlsRoots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(format!("tls_roots: system: no usable certificate in the system store{why}"));
            }
        }
        TlsRoots::None => {}
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("tls_ca_file {}: no PEM certificate in the file", path.display()));
        }
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| format!("tls_ca_file {}: not a CA certificate rustls accepts: {e}", path.display()))?;
        }
    }
    Ok(store)
}

/// The client configuration: ring, TLS 1.2 and 1.3, no client certificate. ALPN is set by
/// the connector (h2 first, then http/1.1).
pub fn client_config(roots: RootCertStore) -> ClientConfig {
    // The process-wide provider is chosen explicitly, so no global default is needed.
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_trusts_only_the_file_and_a_missing_file_is_named() {
        assert!(root_store(TlsRoots::None, None).unwrap().is_empty());
        let e = root_store(TlsRoots::Webpki, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = root_store(TlsRoots::None, Some(&path)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn webpki_holds_the_public_roots() {
        assert!(root_store(TlsRoots::Webpki, None).unwrap().len() > 100);
    }
}
