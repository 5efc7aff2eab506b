//! The verified actor behind a tunnel (DESIGN §7.1): who it is, how that was proven, and what the
//! directory says about it (UID, template) — the input to policy selection and audit records.

use std::sync::Arc;

use identity::ActorIdentity;
use routing_core::directory::TemplateRef;
use serde::Serialize;

/// How the tunnel's actor identity was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// The client certificate's actor SPIFFE ID (`ateom-for-actor` or `actor` form).
    Certificate,
    /// An allow-listed component certificate plus an `ate-egress-assertion` JWT.
    Assertion,
}

impl IdentityKind {
    /// `certificate` or `assertion`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Certificate => "certificate",
            IdentityKind::Assertion => "assertion",
        }
    }
}

/// A verified, live actor: identity from the certificate or assertion, UID and template from
/// the directory's `GetActor` answer. Shared (`Arc`) by all requests of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The actor (atespace, name, and the UID: the directory's, which equals the identity's
    /// when the identity carried one).
    pub actor: ActorIdentity,
    /// The template the actor was created from, when the directory knows it (policy selectors).
    pub template: Option<TemplateRef>,
    /// How the identity was proven.
    pub kind: IdentityKind,
}

/// A shared [`Subject`].
pub type SharedSubject = Arc<Subject>;
