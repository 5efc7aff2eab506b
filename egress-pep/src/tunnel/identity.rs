//! Who is behind a CONNECT (DESIGN §7.1): the client certificate's actor SPIFFE ID, or an
//! allow-listed component certificate plus the `ate-egress-assertion` header (its `dst` bound to
//! the CONNECT target, replays refused). Identity never comes from any other header.

use std::net::SocketAddr;
use std::sync::Arc;

use identity::ActorIdentity;
use identity::assertion::{AssertionError, AssertionVerifier};
use identity::cert::{ActorExtension, CertIdentityError, CertOptions, PeerIdentity};
use identity::replay::ReplayError;
use identity::spiffe::SpiffeOptions;

use crate::decision::Reason;
use crate::subject::IdentityKind;

/// The request header carrying a tunnel agent's egress assertion.
pub const ASSERTION_HEADER: &str = "ate-egress-assertion";

/// How the PEP reads identities.
#[derive(Clone)]
pub struct IdentitySettings {
    /// The SPIFFE trust domain of actor and component certificates (default
    /// `substrate-actor.local`).
    pub trust_domain: String,
    /// Which actor SPIFFE ID spellings are accepted (the older
    /// `atespace/<ns>/actor/<name>` only when configured).
    pub spiffe: SpiffeOptions,
    /// Accept the upstream ActorIdentity extension (strict rules; its UID is then compared with
    /// the control plane's). Off: the extension is ignored.
    pub accept_actor_identity_extension: bool,
    /// Component SPIFFE IDs (`spiffe://<td>/ns/<ns>/sa/<sa>`) allowed to open tunnels for
    /// actors with an egress assertion.
    pub agents: Vec<String>,
    /// The assertion verifier (audience = this PEP); `None`: no component may open tunnels.
    pub assertion: Option<Arc<AssertionVerifier>>,
}

impl std::fmt::Debug for IdentitySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySettings")
            .field("trust_domain", &self.trust_domain)
            .field("spiffe", &self.spiffe)
            .field(
                "accept_actor_identity_extension",
                &self.accept_actor_identity_extension,
            )
            .field("agents", &self.agents)
            .field("assertion", &self.assertion.is_some())
            .finish()
    }
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            trust_domain: identity::spiffe::DEFAULT_TRUST_DOMAIN.to_owned(),
            spiffe: SpiffeOptions::default(),
            accept_actor_identity_extension: false,
            agents: Vec::new(),
            assertion: None,
        }
    }
}

/// A connection's certificate, read once per TLS connection.
#[derive(Debug, Clone)]
pub enum CertIdentity {
    /// An actor certificate.
    Actor(ActorIdentity),
    /// A component certificate on the agent allow-list: each CONNECT needs an assertion.
    Agent {
        /// The component's SPIFFE ID.
        spiffe_id: String,
    },
    /// No acceptable identity: every CONNECT on the connection is refused with this reason.
    Refused {
        /// `identity_invalid` or `component_not_allowed`.
        reason: Reason,
        /// Why, for the log.
        detail: String,
    },
}

/// An identity proven for one CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// The actor (with a UID when the credential carried one).
    pub actor: ActorIdentity,
    /// How it was proven.
    pub kind: IdentityKind,
}

/// A refused identity: the reason code (audit, metrics) and a one-line detail (log only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason code.
    pub reason: Reason,
    /// Why, for the log.
    pub detail: String,
}

impl IdentitySettings {
    /// Reads the certificate a connection presented (`None`: no certificate).
    pub fn read_certificate(&self, der: Option<&[u8]>) -> CertIdentity {
        let Some(der) = der else {
            return CertIdentity::Refused {
                reason: Reason::IdentityInvalid,
                detail: CertIdentityError::NoCertificate.to_string(),
            };
        };
        let options = CertOptions {
            spiffe: self.spiffe,
            actor_extension: if self.accept_actor_identity_extension {
                ActorExtension::Strict
            } else {
                ActorExtension::Ignore
            },
        };
        match identity::cert::identity_from_der_opts(der, &self.trust_domain, options) {
            Ok((PeerIdentity::Actor(actor), _)) => CertIdentity::Actor(actor),
            Ok((PeerIdentity::Component { spiffe_id, .. }, _)) => {
                if self.agents.contains(&spiffe_id) {
                    CertIdentity::Agent { spiffe_id }
                } else {
                    CertIdentity::Refused {
                        reason: Reason::ComponentNotAllowed,
                        detail: format!("component {spiffe_id} is not on the agent allow-list"),
                    }
                }
            }
            Err(e) => CertIdentity::Refused {
                reason: Reason::IdentityInvalid,
                detail: e.to_string(),
            },
        }
    }

    /// The identity of one CONNECT to `target`: the certificate's actor, or for an allow-listed
    /// agent the actor of its `assertion` (verified, `dst` = `target`, `jti` new).
    pub async fn prove(
        &self,
        cert: &CertIdentity,
        assertion: Option<&str>,
        target: SocketAddr,
    ) -> Result<Proven, Refusal> {
        match cert {
            CertIdentity::Actor(actor) => Ok(Proven {
                actor: actor.clone(),
                kind: IdentityKind::Certificate,
            }),
            CertIdentity::Refused { reason, detail } => Err(Refusal {
                reason: *reason,
                detail: detail.clone(),
            }),
            CertIdentity::Agent { spiffe_id } => {
                let Some(verifier) = &self.assertion else {
                    return Err(Refusal {
                        reason: Reason::ComponentNotAllowed,
                        detail: format!("{spiffe_id}: no assertion verifier configured"),
                    });
                };
                let Some(token) = assertion else {
                    return Err(Refusal {
                        reason: Reason::AssertionInvalid,
                        detail: format!("{spiffe_id}: no {ASSERTION_HEADER} header"),
                    });
                };
                match verifier.verify(token, target).await {
                    Ok(v) => Ok(Proven {
                        actor: v.actor,
                        kind: IdentityKind::Assertion,
                    }),
                    Err(AssertionError::Replay(ReplayError::Replayed)) => Err(Refusal {
                        reason: Reason::AssertionReplayed,
                        detail: format!("{spiffe_id}: assertion replayed"),
                    }),
                    Err(e) => Err(Refusal {
                        reason: Reason::AssertionInvalid,
                        detail: format!("{spiffe_id}: {e}"),
                    }),
                }
            }
        }
    }
}
