//! TLS to the database: used when the URL's `sslmode` asks for it (`require`; `prefer`, the
//! default, tries it first), verified against the system's trust store and any extra CA
//! certificates configured.

use proxyd_cache::{IndexError, IndexErrorKind};
use tokio_postgres_rustls::MakeRustlsConnect;

fn permanent(message: String) -> IndexError {
    IndexError::new(IndexErrorKind::Permanent, message)
}

pub(crate) fn connector(extra_ca_pem: Option<&[u8]>) -> Result<MakeRustlsConnect, IndexError> {
    let mut roots = rustls::RootCertStore::empty();
    // Certificates of the system store that rustls cannot parse are skipped, as browsers do.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra_ca_pem {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| permanent(format!("extra CA certificates: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| permanent(format!("extra CA certificate: {e}")))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| permanent(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
