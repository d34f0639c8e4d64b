//! A listener's rustls configuration, built from its PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::SecurityError;
use crate::config::{TlsConfig, TlsVersion};

/// What the listener speaks inside TLS, for ALPN: gRPC needs `h2` offered, the HTTP
/// listeners take either.
#[derive(Clone, Copy, Debug)]
pub enum Alpn {
    H2,
    H2OrHttp1,
}

/// Reads the files `tls` names and builds the server configuration; `key` is the config key
/// of the `tls` block, for the messages.
///
/// # Errors
/// [`SecurityError`] naming the file's key when a file cannot be read or holds nothing
/// usable, or when the key does not belong to the certificate.
pub fn server_config(
    tls: &TlsConfig,
    key: &str,
    alpn: Alpn,
) -> Result<Arc<ServerConfig>, SecurityError> {
    let error = |field: &str, message: String| SecurityError {
        key: format!("{key}.{field}"),
        message,
    };
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Err(error(
            "cert_file",
            "TLS needs cert_file and key_file".into(),
        ));
    };
    let chain = certificates(cert_file).map_err(|message| error("cert_file", message))?;
    let private_key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|source| error("key_file", format!("{}: {source}", key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|source| error("min_version", source.to_string()))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let roots = roots(ca_file).map_err(|message| error("client_ca_file", message))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| error("client_ca_file", source.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|source| error("key_file", format!("{}: {source}", key_file.display())))?;
    config.alpn_protocols = match alpn {
        Alpn::H2 => vec![b"h2".to_vec()],
        Alpn::H2OrHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// The authorities in a PEM file, to trust: the client CA here, an upstream's CA for the
/// exporters.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots
            .add(certificate)
            .map_err(|source| format!("{}: {source}", path.display()))?;
    }
    Ok(roots)
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let read = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|source| format!("{}: {source}", path.display()))?;
    if read.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(read)
}
