//! TLS for both websocket listeners (rustls with the ring provider): a
//! configured certificate, or a generated self-signed one written to a file
//! so clients can trust it. A configured certificate is read again on
//! [`Certificate::reload`] (SIGHUP): handshakes from then on present the
//! new one, connections already up keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Tls;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading a certificate or key file failed.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: rustls_pki_types::pem::Error,
    },
    /// Writing the generated certificate failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A listener's certificate and key, replaceable while it serves.
#[derive(Debug)]
pub struct Certificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

impl Certificate {
    /// Reads a configured certificate and key (`tls` names them) to swap
    /// in with [`Certificate::set`]; None when there is nothing to read
    /// (plain, or self-signed).
    pub fn load(tls: &Tls) -> Result<Option<CertifiedKey>, TlsError> {
        let Tls::Files { cert, key } = tls else {
            return Ok(None);
        };
        certified(read_certs(cert)?, read_key(key)?).map(Some)
    }

    /// Presents `key` in handshakes from now on.
    pub fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }
}

/// A certificate chain with its key, checked to belong together.
fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    Ok(CertifiedKey::from_der(certs, key, &provider)?)
}

/// The acceptor for a [`Tls`] setting with its certificate, or None for
/// plain websockets.
pub fn acceptor(tls: &Tls) -> Result<Option<(TlsAcceptor, Arc<Certificate>)>, TlsError> {
    let (certs, key) = match tls {
        Tls::Off => return Ok(None),
        Tls::Files { cert, key } => (read_certs(cert)?, read_key(key)?),
        Tls::SelfSigned { cert_out, names } => self_signed(cert_out, names)?,
    };
    let certificate = Arc::new(Certificate {
        current: RwLock::new(Arc::new(certified(certs, key)?)),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    Ok(Some((TlsAcceptor::from(Arc::new(config)), certificate)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A fresh self-signed certificate for `names` (DNS names or IP literals);
/// its PEM is written to `cert_out` for clients to trust.
fn self_signed(
    cert_out: &Path,
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(names.to_vec())?;
    let write_err = |source| TlsError::Write {
        path: cert_out.to_owned(),
        source,
    };
    if let Some(dir) = cert_out.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    std::fs::write(cert_out, cert.pem()).map_err(write_err)?;
    let key = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_owned())))?;
    Ok((vec![cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificate_is_written_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("voice-tls-{}", std::process::id()));
        let cert = dir.join("cert.pem");
        let tls = Tls::SelfSigned {
            cert_out: cert.clone(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
        };
        assert!(acceptor(&tls).unwrap().is_some());
        let pem = std::fs::read_to_string(&cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(read_certs(&cert).unwrap().len(), 1);
        // The certificate file holds no key: loading it as Files fails clearly.
        let bad = Tls::Files {
            cert: cert.clone(),
            key: cert.clone(),
        };
        assert!(matches!(acceptor(&bad), Err(TlsError::Read { .. })));
        assert!(acceptor(&Tls::Off).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
