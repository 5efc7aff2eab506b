//! SPIFFE IDs of actors (`spiffe://<td>/atespace/<atespace>/actor/<name>`) and of platform
//! components (`spiffe://<td>/ns/<namespace>/sa/<service-account>`).

use crate::actor::{ActorIdentity, is_dns_label};

/// The default trust domain of actor certificates.
pub const DEFAULT_TRUST_DOMAIN: &str = "substrate-actor.local";

/// What a SPIFFE ID names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiffeId {
    /// An actor: `spiffe://<td>/atespace/<atespace>/actor/<name>`.
    Actor {
        /// The trust domain.
        trust_domain: String,
        /// The actor's atespace.
        atespace: String,
        /// The actor's name.
        name: String,
    },
    /// A Kubernetes workload (the PEP, a tunnel agent, ingress).
    Component {
        /// The trust domain.
        trust_domain: String,
        /// The Kubernetes namespace.
        namespace: String,
        /// The Kubernetes service account.
        service_account: String,
    },
}

/// Why a URI is not an acceptable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    /// The URI does not start with `spiffe://`.
    #[error("not a spiffe:// URI")]
    NotSpiffe,
    /// The trust domain has characters outside `a-z 0-9 . - _`, or is empty or too long.
    #[error("invalid trust domain {0:?}")]
    BadTrustDomain(String),
    #[error(
        "malformed SPIFFE path {0:?}: want /atespace/<atespace>/actor/<name> or /ns/<namespace>/sa/<name>"
    )]
    /// The path is neither an actor's nor a component's.
    BadPath(String),
}

/// Checks a SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`; at most 255 bytes.
pub fn is_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
        })
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID of one of the two known shapes.
    pub fn parse(uri: &str) -> Result<Self, SpiffeError> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or(SpiffeError::NotSpiffe)?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_trust_domain(td) {
            return Err(SpiffeError::BadTrustDomain(td.to_owned()));
        }
        let segs: Vec<&str> = path.split('/').collect();
        let bad = || SpiffeError::BadPath(format!("/{path}"));
        match segs.as_slice() {
            ["atespace", ns, "actor", name] if is_dns_label(ns) && is_dns_label(name) => {
                Ok(Self::Actor {
                    trust_domain: td.to_owned(),
                    atespace: (*ns).to_owned(),
                    name: (*name).to_owned(),
                })
            }
            ["ns", ns, "sa", sa] if is_dns_label(ns) && is_k8s_name(sa) => Ok(Self::Component {
                trust_domain: td.to_owned(),
                namespace: (*ns).to_owned(),
                service_account: (*sa).to_owned(),
            }),
            _ => Err(bad()),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        match self {
            Self::Actor { trust_domain, .. } | Self::Component { trust_domain, .. } => trust_domain,
        }
    }

    /// The URI form.
    pub fn uri(&self) -> String {
        match self {
            Self::Actor {
                trust_domain,
                atespace,
                name,
            } => actor_uri(trust_domain, atespace, name),
            Self::Component {
                trust_domain,
                namespace,
                service_account,
            } => component_uri(trust_domain, namespace, service_account),
        }
    }
}

/// `spiffe://<td>/atespace/<atespace>/actor/<name>`.
pub fn actor_uri(trust_domain: &str, atespace: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/atespace/{atespace}/actor/{name}")
}

/// `spiffe://<td>/ns/<namespace>/sa/<service account>`.
pub fn component_uri(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The SPIFFE ID of an actor identity.
pub fn actor_id(trust_domain: &str, id: &ActorIdentity) -> String {
    actor_uri(trust_domain, &id.atespace, &id.name)
}

/// Kubernetes object names (service accounts): DNS-1123 subdomains, at most 253 characters.
fn is_k8s_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_shapes_and_rejects_the_rest() {
        assert_eq!(
            SpiffeId::parse("spiffe://substrate-actor.local/atespace/team/actor/bot").unwrap(),
            SpiffeId::Actor {
                trust_domain: "substrate-actor.local".into(),
                atespace: "team".into(),
                name: "bot".into()
            }
        );
        assert!(matches!(
            SpiffeId::parse("spiffe://cluster.local/ns/ate-system/sa/pep").unwrap(),
            SpiffeId::Component { .. }
        ));
        for bad in [
            "spiffe://td/atespace/team/actor",
            "spiffe://td/atespace/team/actor/bot/extra",
            "spiffe://td/atespace/Team/actor/bot",
            "spiffe://td/atespace//actor/bot",
            "spiffe://td/actor/bot",
            "spiffe://td",
        ] {
            assert!(
                matches!(SpiffeId::parse(bad), Err(SpiffeError::BadPath(_))),
                "{bad}"
            );
        }
        assert_eq!(SpiffeId::parse("https://x/y"), Err(SpiffeError::NotSpiffe));
        assert!(matches!(
            SpiffeId::parse("spiffe://TD/ns/a/sa/b"),
            Err(SpiffeError::BadTrustDomain(_))
        ));
    }
}
