//! Reading certificates and keys from PEM files (rustls-pki-types' parser; rustls-pemfile is
//! unmaintained).

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used; names the file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What the system said.
        reason: String,
    },
    /// The file holds no PEM certificate.
    #[error("{path}: no certificate found")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// The file holds no PEM private key.
    #[error("{path}: no private key found (want PKCS#8, PKCS#1 or SEC1 PEM)")]
    NoKey {
        /// The file.
        path: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|e| PemError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// All certificates in a PEM file (a chain or a CA bundle), in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| PemError::NoKey {
        path: path.display().to_string(),
    })
}
