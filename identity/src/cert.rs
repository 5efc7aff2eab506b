//! Identity from an X.509 certificate (DESIGN §6): exactly one SPIFFE URI SAN naming an actor or
//! a platform component, client-auth EKU, not a CA; the upstream ActorIdentity extension
//! (OID 1.3.6.1.4.1.11129.2.12.2, JSON `{"Atespace","ActorName","ActorUid","Purpose"}`) is
//! accepted when present and must agree with the SPIFFE ID.
//!
//! Chain validation is rustls's job (the handshake); these checks run on the verified leaf and
//! repeat the usage checks as defence in depth.

use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::actor::ActorIdentity;
use crate::spiffe::{ActorIdForm, SpiffeError, SpiffeId, SpiffeOptions};

/// The upstream ActorIdentity extension's OID.
pub const ACTOR_IDENTITY_OID: &str = "1.3.6.1.4.1.11129.2.12.2";
/// Largest ActorIdentity extension value accepted.
const MAX_EXTENSION_BYTES: usize = 4096;

/// Who a peer certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// An actor certificate (`spiffe://<td>/ateom-for-actor/<atespace>/<name>` or
    /// `spiffe://<td>/actor/<atespace>/<name>`; the older spelling only when configured).
    Actor(ActorIdentity),
    /// A platform component certificate (`spiffe://<td>/ns/<namespace>/sa/<service-account>`).
    Component {
        /// The component's Kubernetes namespace.
        namespace: String,
        /// The component's Kubernetes service account.
        service_account: String,
        /// The full SPIFFE ID, for allow-lists.
        spiffe_id: String,
    },
}

/// Why a certificate does not carry an acceptable identity. Each case is distinct so logs and
/// tests can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertIdentityError {
    /// The peer sent no certificate.
    #[error("no peer certificate")]
    NoCertificate,
    /// The certificate (or one of its extensions) is not valid DER.
    #[error("certificate does not parse: {0}")]
    Unparsable(String),
    /// The leaf is a CA certificate (basic constraints `CA:TRUE`).
    #[error("a CA certificate is not accepted as a leaf")]
    CaAsLeaf,
    /// The leaf lacks the client-auth extended key usage.
    #[error("certificate lacks the client-auth extended key usage")]
    MissingClientAuth,
    /// The leaf has no `spiffe://` URI SAN.
    #[error("certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    /// The leaf has this many `spiffe://` URI SANs; exactly one is allowed.
    #[error("certificate has {0} SPIFFE URI SANs; exactly one is allowed")]
    MultipleSpiffeIds(usize),
    /// The SPIFFE URI SAN is not an actor or component ID.
    #[error("invalid SPIFFE ID: {0}")]
    BadSpiffeId(#[from] SpiffeError),
    /// The SPIFFE ID's trust domain is not the configured one.
    #[error("trust domain {found:?} is not {expected:?}")]
    WrongTrustDomain {
        /// The configured trust domain.
        expected: String,
        /// The certificate's trust domain.
        found: String,
    },
    /// The ActorIdentity extension is oversized, not JSON, or inconsistent (purpose, uid).
    #[error("invalid ActorIdentity extension: {0}")]
    BadExtension(String),
    /// The ActorIdentity extension names another actor than the SPIFFE ID.
    #[error("ActorIdentity extension names {extension}, SPIFFE ID names {spiffe}")]
    ExtensionMismatch {
        /// `<atespace>/<name>` from the extension.
        extension: String,
        /// `<atespace>/<name>` from the SPIFFE ID.
        spiffe: String,
    },
    /// A component certificate where an actor certificate is required.
    #[error("certificate names a component, not an actor")]
    NotAnActor,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ActorIdentityExtension {
    atespace: String,
    actor_name: String,
    #[serde(default)]
    actor_uid: String,
    #[serde(default)]
    purpose: String,
}

/// The identity named by a leaf certificate (DER), checked against `trust_domain`, with the
/// default [`SpiffeOptions`] (older actor spelling refused).
pub fn identity_from_der(
    der: &[u8],
    trust_domain: &str,
) -> Result<PeerIdentity, CertIdentityError> {
    identity_from_der_with(der, trust_domain, SpiffeOptions::default()).map(|(peer, _)| peer)
}

/// The identity named by a leaf certificate (DER), checked against `trust_domain`, parsing its
/// SPIFFE ID under `options`; also returns which actor ID spelling matched (`None` for a
/// component), so a policy point can tell the forms apart.
pub fn identity_from_der_with(
    der: &[u8],
    trust_domain: &str,
    options: SpiffeOptions,
) -> Result<(PeerIdentity, Option<ActorIdForm>), CertIdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertIdentityError::Unparsable(e.to_string()))?;
    check_leaf(&cert)?;
    let spiffe = single_spiffe_uri(&cert)?;
    let id = SpiffeId::parse_with(spiffe, options)?;
    if id.trust_domain() != trust_domain {
        return Err(CertIdentityError::WrongTrustDomain {
            expected: trust_domain.to_owned(),
            found: id.trust_domain().to_owned(),
        });
    }
    let ext = actor_extension(&cert)?;
    match id {
        SpiffeId::Actor {
            atespace,
            name,
            form,
            ..
        } => {
            let uid = match ext {
                None => None,
                Some(e) => {
                    if e.atespace != atespace || e.actor_name != name {
                        return Err(CertIdentityError::ExtensionMismatch {
                            extension: format!("{}/{}", e.atespace, e.actor_name),
                            spiffe: format!("{atespace}/{name}"),
                        });
                    }
                    if !e.purpose.is_empty() && e.purpose != "atunnel" {
                        return Err(CertIdentityError::BadExtension(format!(
                            "unexpected purpose {:?}",
                            e.purpose
                        )));
                    }
                    if !crate::token::valid_uid(&e.actor_uid) {
                        return Err(CertIdentityError::BadExtension("invalid ActorUid".into()));
                    }
                    (!e.actor_uid.is_empty()).then_some(e.actor_uid)
                }
            };
            Ok((
                PeerIdentity::Actor(ActorIdentity {
                    atespace,
                    name,
                    uid,
                }),
                Some(form),
            ))
        }
        SpiffeId::Component {
            namespace,
            service_account,
            trust_domain,
        } => {
            if ext.is_some() {
                return Err(CertIdentityError::BadExtension(
                    "ActorIdentity extension on a component certificate".into(),
                ));
            }
            Ok((
                PeerIdentity::Component {
                    spiffe_id: crate::spiffe::component_uri(
                        &trust_domain,
                        &namespace,
                        &service_account,
                    ),
                    namespace,
                    service_account,
                },
                None,
            ))
        }
    }
}

/// The actor named by a leaf certificate; component certificates are refused.
pub fn actor_from_der(der: &[u8], trust_domain: &str) -> Result<ActorIdentity, CertIdentityError> {
    match identity_from_der(der, trust_domain)? {
        PeerIdentity::Actor(a) => Ok(a),
        PeerIdentity::Component { .. } => Err(CertIdentityError::NotAnActor),
    }
}

/// The identity of a TLS peer from its verified chain (leaf first), as rustls reports it.
pub fn peer_identity(
    chain: Option<&[CertificateDer<'_>]>,
    trust_domain: &str,
) -> Result<PeerIdentity, CertIdentityError> {
    let leaf = chain
        .and_then(|c| c.first())
        .ok_or(CertIdentityError::NoCertificate)?;
    identity_from_der(leaf, trust_domain)
}

fn check_leaf(cert: &X509Certificate<'_>) -> Result<(), CertIdentityError> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| CertIdentityError::Unparsable(e.to_string()))?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(CertIdentityError::CaAsLeaf);
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|e| CertIdentityError::Unparsable(e.to_string()))?;
    match eku {
        Some(e) if e.value.client_auth => Ok(()),
        _ => Err(CertIdentityError::MissingClientAuth),
    }
}

fn single_spiffe_uri<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, CertIdentityError> {
    let uris = runtime::listener::spiffe_uris(cert)
        .map_err(|e| CertIdentityError::Unparsable(e.to_string()))?;
    match uris.as_slice() {
        [] => Err(CertIdentityError::NoSpiffeId),
        [one] => Ok(*one),
        many => Err(CertIdentityError::MultipleSpiffeIds(many.len())),
    }
}

fn actor_extension(
    cert: &X509Certificate<'_>,
) -> Result<Option<ActorIdentityExtension>, CertIdentityError> {
    let Some(ext) = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == ACTOR_IDENTITY_OID)
    else {
        return Ok(None);
    };
    if ext.value.len() > MAX_EXTENSION_BYTES {
        return Err(CertIdentityError::BadExtension("too large".into()));
    }
    serde_json::from_slice(ext.value)
        .map(Some)
        .map_err(|e| CertIdentityError::BadExtension(e.to_string()))
}
