//! Config sections for TLS material that several listeners and clients share: a listener's
//! server certificate and client-certificate policy ([`ServerTlsConfig`]), a client's trust and
//! certificate for dialing servers named by SPIFFE ID ([`ClientTlsConfig`]), and the check that
//! a client's files load as the client will use them ([`check_client_material`]).
//!
//! Problems are reported with paths relative to the section (`cert_file`, `client_ca_file`);
//! the composer of the whole file prefixes them with the section's own path
//! ([`FieldErrors::extend_prefixed`]). Relative file names are resolved against the directory
//! of the config file (`base`).

use std::path::{Path, PathBuf};

use runtime::config::FieldErrors;
use serde::{Deserialize, Serialize};

use crate::pem::PemError;
use crate::tls::{ClientAuth, ClientTlsFiles, ServerIdentity, ServerTlsFiles, TlsError};

/// Server TLS material and client-certificate policy of a listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain the listener presents.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// CA bundle for client certificates; required unless `client_auth` is `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// `none`, `optional` or `required` (mTLS).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// When set, client certificates must also carry a valid SPIFFE identity in this trust
    /// domain (checked in the handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_trust_domain: Option<String>,
}

impl ServerTlsConfig {
    /// The listener's TLS files (paths resolved against `base`) offering `alpn`, after checking
    /// that the files exist, that client authentication has a CA and that the trust domain is
    /// valid; every problem is reported, relative to this section.
    pub fn files(&self, base: &Path, alpn: Vec<Vec<u8>>) -> Result<ServerTlsFiles, FieldErrors> {
        let mut errs = FieldErrors::default();
        let cert_file = existing_file(&mut errs, "cert_file", base, &self.cert_file);
        let key_file = existing_file(&mut errs, "key_file", base, &self.key_file);
        let client_ca_file = self
            .client_ca_file
            .as_ref()
            .map(|p| existing_file(&mut errs, "client_ca_file", base, p));
        if let Some(td) = &self.client_trust_domain
            && !crate::spiffe::is_trust_domain(td)
        {
            errs.push(
                "client_trust_domain",
                format!("{td:?} is not a valid SPIFFE trust domain"),
            );
        }
        if self.client_auth != ClientAuth::None && client_ca_file.is_none() {
            errs.push(
                "client_ca_file",
                "is required when client_auth is optional or required",
            );
        }
        errs.into_result(ServerTlsFiles {
            cert_file,
            key_file,
            client_ca_file,
            client_auth: self.client_auth,
            client_trust_domain: self.client_trust_domain.clone(),
            alpn,
        })
    }
}

/// TLS material for dialing servers that are reached by IP and named by SPIFFE ID (the worker
/// agents: `ingress.upstream.tls`), and the identity they must present.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// CA bundle that signs the servers' certificates.
    pub ca_file: PathBuf,
    /// The client certificate (servers that require mTLS); goes with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The exact SPIFFE ID every server presents, or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_spiffe_id: Option<String>,
    /// a SPIFFE ID prefix ending in `/` (e.g. `spiffe://cluster.local/ns/ate-workers/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_spiffe_prefix: Option<String>,
}

impl ClientTlsConfig {
    /// The client's TLS files (paths resolved against `base`, no ALPN), after checking that the
    /// files exist, that certificate and key come together and that exactly one server
    /// identity is set; every problem is reported, relative to this section.
    pub fn files(&self, base: &Path) -> Result<ClientTlsFiles, FieldErrors> {
        let mut errs = FieldErrors::default();
        let ca_file = existing_file(&mut errs, "ca_file", base, &self.ca_file);
        let cert_file = self
            .cert_file
            .as_ref()
            .map(|p| existing_file(&mut errs, "cert_file", base, p));
        let key_file = self
            .key_file
            .as_ref()
            .map(|p| existing_file(&mut errs, "key_file", base, p));
        if cert_file.is_some() != key_file.is_some() {
            errs.push("cert_file", "cert_file and key_file go together");
        }
        let server_identity = match (&self.server_spiffe_id, &self.server_spiffe_prefix) {
            (Some(id), None) => {
                if crate::spiffe::SpiffeId::parse(id).is_err() {
                    errs.push(
                        "server_spiffe_id",
                        format!("{id:?} is not an actor or component SPIFFE ID"),
                    );
                }
                ServerIdentity::Spiffe(id.clone())
            }
            (None, Some(prefix)) => ServerIdentity::SpiffePrefix(prefix.clone()),
            _ => {
                errs.push(
                    "",
                    "set exactly one of server_spiffe_id or server_spiffe_prefix (workers are dialed by IP)",
                );
                ServerIdentity::Hostname
            }
        };
        errs.into_result(ClientTlsFiles {
            ca_file,
            cert_file,
            key_file,
            server_identity,
            alpn: vec![],
        })
    }
}

/// `p`, or `base/p` when `p` is relative (files named in a config are relative to its
/// directory).
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `p` resolved against `base`; records `<path> does not exist or is not a file` at `field`
/// when it is not a regular file (the path is returned either way).
pub fn existing_file(errs: &mut FieldErrors, field: &str, base: &Path, p: &Path) -> PathBuf {
    let full = resolve_path(base, p);
    if !full.is_file() {
        errs.push(
            field,
            format!("{} does not exist or is not a file", full.display()),
        );
    }
    full
}

/// Loads a client's TLS material the way [`crate::tls::client_config`] will and reports what
/// would make its connections fail, one line per field (`ca_file`, `cert_file`, `key_file`): a
/// CA file with no parsable certificate (empty or garbage), a client certificate or key that
/// cannot be read, a certificate that does not belong to its key. `ca` is the CA bundle (a
/// missing one was reported already: `None`), `pair` the client certificate and key files.
pub fn check_client_material(ca: Option<&Path>, pair: Option<(&Path, &Path)>) -> FieldErrors {
    let mut errs = FieldErrors::default();
    let ca_ok = ca.is_some_and(|ca| {
        let files = ClientTlsFiles {
            ca_file: ca.to_path_buf(),
            cert_file: None,
            key_file: None,
            server_identity: ServerIdentity::Hostname,
            alpn: Vec::new(),
        };
        match crate::tls::client_config(&files) {
            Ok(_) => true,
            Err(TlsError::Pem(PemError::NoCertificate { path })) => {
                errs.push(
                    "ca_file",
                    format!("{path}: no PEM certificate found (empty or not a PEM CA bundle)"),
                );
                false
            }
            Err(TlsError::BadMaterial { path, reason }) => {
                errs.push(
                    "ca_file",
                    format!(
                        "{path}: a certificate in it cannot be parsed ({})",
                        reason.trim_start_matches("invalid peer certificate: ")
                    ),
                );
                false
            }
            Err(e) => {
                errs.push("ca_file", e.to_string());
                false
            }
        }
    });
    let Some((cert, key)) = pair else {
        return errs;
    };
    if !ca_ok {
        // The pair can only be matched inside a client config, which needs the CA; still
        // report unreadable certificate and key files.
        if let Err(e) = crate::pem::load_certs(cert) {
            errs.push("cert_file", e.to_string());
        }
        if let Err(e) = crate::pem::load_key(key) {
            errs.push("key_file", e.to_string());
        }
        return errs;
    }
    let files = ClientTlsFiles {
        ca_file: ca.map(Path::to_path_buf).unwrap_or_default(),
        cert_file: Some(cert.to_path_buf()),
        key_file: Some(key.to_path_buf()),
        server_identity: ServerIdentity::Hostname,
        alpn: Vec::new(),
    };
    match crate::tls::client_config(&files) {
        Ok(_) => {}
        Err(TlsError::Pem(e @ PemError::NoKey { .. })) => errs.push("key_file", e.to_string()),
        Err(TlsError::Pem(e)) => errs.push("cert_file", e.to_string()),
        Err(TlsError::BadMaterial { reason, .. }) => errs.push(
            "cert_file",
            format!(
                "{} does not belong to key_file {} ({})",
                cert.display(),
                key.display(),
                key_pair_problem(cert, key).unwrap_or(&reason)
            ),
        ),
        Err(e) => errs.push("cert_file", e.to_string()),
    }
    errs
}

/// Why a certificate and a private key do not form a pair, as one readable phrase, judged from
/// rustls's typed error (`InconsistentKeys`); `None` when they match or the cause is another.
fn key_pair_problem(cert: &Path, key: &Path) -> Option<&'static str> {
    let certs = crate::pem::load_certs(cert).ok()?;
    let key = crate::pem::load_key(key).ok()?;
    match rustls::sign::CertifiedKey::from_der(certs, key, &crate::tls::provider()) {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Some("the certificate's public key is not the key's")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(errs: &FieldErrors) -> Vec<&str> {
        errs.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn server_tls_reports_every_problem_relative_to_the_section() {
        let t = ServerTlsConfig {
            cert_file: "nope.crt".into(),
            key_file: "/nonexistent/nope.key".into(),
            client_ca_file: None,
            client_auth: ClientAuth::Required,
            client_trust_domain: Some("Not A Domain".into()),
        };
        let errs = t.files(Path::new("/nonexistent"), vec![]).unwrap_err();
        assert_eq!(
            paths(&errs),
            [
                "cert_file",
                "key_file",
                "client_trust_domain",
                "client_ca_file"
            ]
        );
        assert_eq!(
            errs.to_string().lines().next(),
            Some("cert_file: /nonexistent/nope.crt does not exist or is not a file")
        );
    }

    #[test]
    fn client_tls_needs_one_server_identity_and_a_whole_pair() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
        std::fs::write(dir.path().join("c.crt"), "x").unwrap();
        let t = ClientTlsConfig {
            ca_file: "ca.crt".into(),
            cert_file: Some("c.crt".into()),
            key_file: None,
            server_spiffe_id: None,
            server_spiffe_prefix: None,
        };
        let errs = t.files(dir.path()).unwrap_err();
        assert_eq!(paths(&errs), ["cert_file", ""]);
        let ok = ClientTlsConfig {
            cert_file: None,
            server_spiffe_prefix: Some("spiffe://cluster.local/ns/w/".into()),
            ..t
        }
        .files(dir.path())
        .unwrap();
        assert_eq!(ok.ca_file, dir.path().join("ca.crt"));
    }

    #[test]
    fn client_material_names_an_empty_ca_and_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "").unwrap();
        let missing = dir.path().join("missing");
        let errs = check_client_material(Some(&ca), Some((&missing, &missing)));
        assert_eq!(paths(&errs), ["ca_file", "cert_file", "key_file"]);
        assert!(
            errs.to_string().contains("no PEM certificate found"),
            "{errs}"
        );
    }
}

/// The `signer` section: the embedded actor-token signer (DESIGN §6), for single-machine use
/// without ate-api-server. It mints tokens in upstream's `MintActorJWT` form; verifiers trust
/// it through the JWKS `actorgate token keygen` writes beside the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    /// The private key (PEM, as `actorgate token keygen` writes it).
    pub key_file: PathBuf,
    /// The key's id (`kid`), as in the JWKS.
    pub kid: String,
    /// The algorithm (default ES256; EdDSA and RS256/384/512 too).
    #[serde(default = "default_signer_alg")]
    pub alg: String,
    /// The tokens' issuer (`iss`).
    pub issuer: String,
}

fn default_signer_alg() -> String {
    "ES256".into()
}

impl SignerConfig {
    /// The signer, its key read from `key_file` (relative to `base`).
    ///
    /// # Errors
    /// One field error per problem: a missing or unreadable key, an unknown algorithm, an
    /// empty `kid` or `issuer`, a key that does not suit the algorithm.
    pub fn signer(&self, base: &Path) -> Result<crate::Signer, FieldErrors> {
        let mut errs = FieldErrors::default();
        let key_file = existing_file(&mut errs, "key_file", base, &self.key_file);
        let alg = crate::keys::parse_algorithm(&self.alg)
            .map_err(|e| errs.push("alg", e.to_string()))
            .ok();
        for (field, value) in [("kid", &self.kid), ("issuer", &self.issuer)] {
            if value.is_empty() {
                errs.push(field, "must not be empty");
            }
        }
        let (Some(alg), true) = (alg, errs.is_empty()) else {
            return Err(errs);
        };
        let pem = match std::fs::read(&key_file) {
            Ok(p) => p,
            Err(e) => {
                errs.push("key_file", format!("{}: {e}", key_file.display()));
                return Err(errs);
            }
        };
        crate::Signer::from_pem(alg, &self.kid, &pem, &self.issuer).map_err(|e| {
            errs.push("key_file", format!("{}: {e}", key_file.display()));
            errs
        })
    }
}
