//! Identity from an X.509 certificate (DESIGN §6): exactly one URI SAN (every URI SAN counts, not
//! only `spiffe://` ones), a SPIFFE ID naming an actor or a platform component, client-auth EKU,
//! not a CA. The upstream ActorIdentity extension (OID 1.3.6.1.4.1.11129.2.12.2, JSON
//! `{"Atespace","ActorName","ActorUid","Purpose"}`) is handled per [`ActorExtension`]: read when
//! present by the plain functions ([`identity_from_der`], [`identity_from_der_with`]); a policy
//! point chooses with [`CertOptions`] to ignore it or to accept it under upstream's strict rules.
//!
//! Chain validation is rustls's job (the handshake); these checks run on the verified leaf and
//! repeat the usage checks as defence in depth.

use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use x509_parser::extensions::GeneralName;
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
    /// The leaf has no URI SAN, or its one URI SAN is not a `spiffe://` URI.
    #[error("certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    /// The leaf has this many URI SANs (of any scheme); exactly one, the SPIFFE ID, is allowed.
    #[error("certificate has {0} URI SANs; exactly one SPIFFE ID is allowed")]
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

/// How the upstream ActorIdentity extension is treated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ActorExtension {
    /// Not read at all: the identity comes from the URI SAN alone and carries no UID (the PEP's
    /// default: the extension is accepted only when configured, DESIGN §6).
    Ignore,
    /// Read when present: it must name the SPIFFE ID's actor, `Purpose` empty or `atunnel`; a
    /// non-empty `ActorUid` becomes the identity's UID. What [`identity_from_der`] does.
    #[default]
    Lenient,
    /// Read when present under upstream's rules: exactly one such extension, `Atespace`,
    /// `ActorName`, `ActorUid` and `Purpose` all non-empty, `Purpose` = `atunnel`, naming the
    /// SPIFFE ID's actor; its UID becomes the identity's (to compare with the control plane's).
    Strict,
}

/// Everything that decides how a leaf certificate is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertOptions {
    /// Which SPIFFE ID spellings are accepted.
    pub spiffe: SpiffeOptions,
    /// How the ActorIdentity extension is treated.
    pub actor_extension: ActorExtension,
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
/// SPIFFE ID under `options` (the ActorIdentity extension read when present,
/// [`ActorExtension::Lenient`]); also returns which actor ID spelling matched (`None` for a
/// component), so a policy point can tell the forms apart.
pub fn identity_from_der_with(
    der: &[u8],
    trust_domain: &str,
    options: SpiffeOptions,
) -> Result<(PeerIdentity, Option<ActorIdForm>), CertIdentityError> {
    identity_from_der_opts(
        der,
        trust_domain,
        CertOptions {
            spiffe: options,
            actor_extension: ActorExtension::Lenient,
        },
    )
}

/// The identity named by a leaf certificate (DER), checked against `trust_domain` under
/// `options` (SPIFFE ID spellings and the ActorIdentity extension); also returns which actor ID
/// spelling matched (`None` for a component).
pub fn identity_from_der_opts(
    der: &[u8],
    trust_domain: &str,
    options: CertOptions,
) -> Result<(PeerIdentity, Option<ActorIdForm>), CertIdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertIdentityError::Unparsable(e.to_string()))?;
    check_leaf(&cert)?;
    let spiffe = single_spiffe_uri(&cert)?;
    let id = SpiffeId::parse_with(spiffe, options.spiffe)?;
    if id.trust_domain() != trust_domain {
        return Err(CertIdentityError::WrongTrustDomain {
            expected: trust_domain.to_owned(),
            found: id.trust_domain().to_owned(),
        });
    }
    let ext = match options.actor_extension {
        ActorExtension::Ignore => None,
        mode => actor_extension(&cert, mode == ActorExtension::Strict)?,
    };
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
                    let strict = options.actor_extension == ActorExtension::Strict;
                    if strict && (e.actor_uid.is_empty() || e.purpose.is_empty()) {
                        return Err(CertIdentityError::BadExtension(
                            "ActorUid and Purpose must be non-empty".into(),
                        ));
                    }
                    if !e.purpose.is_empty() && e.purpose != "atunnel" {
                        return Err(CertIdentityError::BadExtension(format!(
                            "unexpected purpose {}",
                            crate::token::printable(&e.purpose)
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

/// The certificate's one URI SAN, which must be a `spiffe://` URI. Every URI SAN counts (a
/// SPIFFE ID next to an `https://` URI is two URI SANs, refused), per the SPIFFE X.509-SVID rule
/// of exactly one URI SAN.
fn single_spiffe_uri<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, CertIdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertIdentityError::Unparsable(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(CertIdentityError::NoSpiffeId),
        [one] if one.starts_with("spiffe://") => Ok(*one),
        [_] => Err(CertIdentityError::NoSpiffeId),
        many => Err(CertIdentityError::MultipleSpiffeIds(many.len())),
    }
}

/// The ActorIdentity extension, if present. `strict`: more than one such extension is refused
/// (otherwise the first is read).
fn actor_extension(
    cert: &X509Certificate<'_>,
    strict: bool,
) -> Result<Option<ActorIdentityExtension>, CertIdentityError> {
    let mut found = cert
        .extensions()
        .iter()
        .filter(|e| e.oid.to_id_string() == ACTOR_IDENTITY_OID);
    let Some(ext) = found.next() else {
        return Ok(None);
    };
    if strict && found.next().is_some() {
        return Err(CertIdentityError::BadExtension(
            "more than one ActorIdentity extension".into(),
        ));
    }
    if ext.value.len() > MAX_EXTENSION_BYTES {
        return Err(CertIdentityError::BadExtension("too large".into()));
    }
    let parsed: ActorIdentityExtension = serde_json::from_slice(ext.value)
        .map_err(|e| CertIdentityError::BadExtension(e.to_string()))?;
    if strict && (parsed.atespace.is_empty() || parsed.actor_name.is_empty()) {
        return Err(CertIdentityError::BadExtension(
            "Atespace and ActorName must be non-empty".into(),
        ));
    }
    Ok(Some(parsed))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, SanType};
    use rustls_pki_types::pem::PemObject;

    use super::*;
    use crate::devca::DevCa;

    const TD: &str = "substrate-actor.local";
    const DAY: Duration = Duration::from_secs(86_400);

    fn der(cert_pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn actor_cert(ca: &DevCa, uris: &[&str], ext: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).to_owned().try_into().unwrap()))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(json) = ext {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 11129, 2, 12, 2],
                    json.as_bytes().to_vec(),
                ));
        }
        der(&ca.sign(params, DAY).unwrap().cert_pem)
    }

    fn opts(actor_extension: ActorExtension) -> CertOptions {
        CertOptions {
            spiffe: SpiffeOptions::default(),
            actor_extension,
        }
    }

    const URI: &str = "spiffe://substrate-actor.local/ateom-for-actor/demo/bot";

    #[test]
    fn every_uri_san_counts() {
        let ca = DevCa::generate("t", DAY).unwrap();
        let two = actor_cert(&ca, &[URI, "https://example.com/x"], None);
        assert_eq!(
            identity_from_der(&two, TD),
            Err(CertIdentityError::MultipleSpiffeIds(2))
        );
        let not_spiffe = actor_cert(&ca, &["https://example.com/x"], None);
        assert_eq!(
            identity_from_der(&not_spiffe, TD),
            Err(CertIdentityError::NoSpiffeId)
        );
        let one = actor_cert(&ca, &[URI], None);
        assert!(matches!(
            identity_from_der(&one, TD),
            Ok(PeerIdentity::Actor(_))
        ));
    }

    #[test]
    fn extension_is_ignored_lenient_or_strict_as_asked() {
        let ca = DevCa::generate("t", DAY).unwrap();
        let full = r#"{"Atespace":"demo","ActorName":"bot","ActorUid":"u-1","Purpose":"atunnel"}"#;
        let no_purpose = r#"{"Atespace":"demo","ActorName":"bot","ActorUid":"u-1"}"#;
        let other =
            r#"{"Atespace":"demo","ActorName":"admin","ActorUid":"u-1","Purpose":"atunnel"}"#;
        let uid = |der: &[u8], mode| match identity_from_der_opts(der, TD, opts(mode)) {
            Ok((PeerIdentity::Actor(a), _)) => Ok(a.uid),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let full = actor_cert(&ca, &[URI], Some(full));
        assert_eq!(uid(&full, ActorExtension::Ignore), Ok(None));
        assert_eq!(uid(&full, ActorExtension::Lenient), Ok(Some("u-1".into())));
        assert_eq!(uid(&full, ActorExtension::Strict), Ok(Some("u-1".into())));
        let no_purpose = actor_cert(&ca, &[URI], Some(no_purpose));
        assert_eq!(
            uid(&no_purpose, ActorExtension::Lenient),
            Ok(Some("u-1".into()))
        );
        assert!(matches!(
            uid(&no_purpose, ActorExtension::Strict),
            Err(CertIdentityError::BadExtension(_))
        ));
        let other = actor_cert(&ca, &[URI], Some(other));
        assert_eq!(uid(&other, ActorExtension::Ignore), Ok(None));
        assert!(matches!(
            uid(&other, ActorExtension::Strict),
            Err(CertIdentityError::ExtensionMismatch { .. })
        ));
        let plain = actor_cert(&ca, &[URI], None);
        assert_eq!(uid(&plain, ActorExtension::Strict), Ok(None));
    }
}
