//! SPIFFE IDs of actors and of platform components (DESIGN §6). Actors, in upstream Substrate's
//! forms: `spiffe://<td>/ateom-for-actor/<atespace>/<name>` (what upstream's tunnel agent
//! presents; the form actor certificates are minted with) and `spiffe://<td>/actor/<atespace>/<name>`
//! (the actor identity as told to services); the older `spiffe://<td>/atespace/<atespace>/actor/<name>`
//! only when [`SpiffeOptions::accept_legacy_actor`] is set. Components:
//! `spiffe://<td>/ns/<namespace>/sa/<service-account>`. Parsing is strict: DNS-1123 labels, no
//! userinfo, port, query, fragment, trailing slash or percent-escapes.

use crate::actor::{ActorIdentity, is_dns_label};

/// The default trust domain of actor certificates.
pub const DEFAULT_TRUST_DOMAIN: &str = "substrate-actor.local";

/// Which spelling of an actor SPIFFE ID matched, so a policy point can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorIdForm {
    /// `spiffe://<td>/ateom-for-actor/<atespace>/<name>`: upstream atunnel's tunnel certificate.
    AteomForActor,
    /// `spiffe://<td>/actor/<atespace>/<name>`: the actor identity as told to services.
    Actor,
    /// `spiffe://<td>/atespace/<atespace>/actor/<name>`: the older spelling (only when configured).
    Legacy,
}

/// How strictly SPIFFE IDs are parsed. The default accepts only upstream's current forms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpiffeOptions {
    /// Accept the older actor spelling `spiffe://<td>/atespace/<atespace>/actor/<name>`.
    pub accept_legacy_actor: bool,
}

/// What a SPIFFE ID names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiffeId {
    /// An actor, in one of the [`ActorIdForm`]s.
    Actor {
        /// The trust domain.
        trust_domain: String,
        /// The actor's atespace.
        atespace: String,
        /// The actor's name.
        name: String,
        /// Which spelling the ID used.
        form: ActorIdForm,
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
        "malformed SPIFFE path {0:?}: want /ateom-for-actor/<atespace>/<name>, /actor/<atespace>/<name> or /ns/<namespace>/sa/<name>"
    )]
    /// The path is neither an actor's nor a component's (or uses the older actor spelling
    /// while it is not accepted).
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
    /// Parses and validates an actor or component SPIFFE ID with the default
    /// [`SpiffeOptions`] (older actor spelling refused).
    pub fn parse(uri: &str) -> Result<Self, SpiffeError> {
        Self::parse_with(uri, SpiffeOptions::default())
    }

    /// Parses and validates an actor or component SPIFFE ID under `options`.
    pub fn parse_with(uri: &str, options: SpiffeOptions) -> Result<Self, SpiffeError> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or(SpiffeError::NotSpiffe)?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_trust_domain(td) {
            return Err(SpiffeError::BadTrustDomain(td.to_owned()));
        }
        let segs: Vec<&str> = path.split('/').collect();
        let bad = || SpiffeError::BadPath(format!("/{path}"));
        let actor = |ns: &str, name: &str, form| {
            if is_dns_label(ns) && is_dns_label(name) {
                Ok(Self::Actor {
                    trust_domain: td.to_owned(),
                    atespace: ns.to_owned(),
                    name: name.to_owned(),
                    form,
                })
            } else {
                Err(bad())
            }
        };
        match segs.as_slice() {
            ["ateom-for-actor", ns, name] => actor(ns, name, ActorIdForm::AteomForActor),
            ["actor", ns, name] => actor(ns, name, ActorIdForm::Actor),
            ["atespace", ns, "actor", name] if options.accept_legacy_actor => {
                actor(ns, name, ActorIdForm::Legacy)
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
                form,
            } => actor_uri_in(*form, trust_domain, atespace, name),
            Self::Component {
                trust_domain,
                namespace,
                service_account,
            } => component_uri(trust_domain, namespace, service_account),
        }
    }
}

/// `spiffe://<td>/ateom-for-actor/<atespace>/<name>`: the form actor certificates are minted
/// with (what upstream's atunnel presents).
pub fn actor_uri(trust_domain: &str, atespace: &str, name: &str) -> String {
    actor_uri_in(ActorIdForm::AteomForActor, trust_domain, atespace, name)
}

/// An actor's SPIFFE ID in the given spelling.
pub fn actor_uri_in(form: ActorIdForm, trust_domain: &str, atespace: &str, name: &str) -> String {
    match form {
        ActorIdForm::AteomForActor => {
            format!("spiffe://{trust_domain}/ateom-for-actor/{atespace}/{name}")
        }
        ActorIdForm::Actor => format!("spiffe://{trust_domain}/actor/{atespace}/{name}"),
        ActorIdForm::Legacy => format!("spiffe://{trust_domain}/atespace/{atespace}/actor/{name}"),
    }
}

/// `spiffe://<td>/ns/<namespace>/sa/<service account>`.
pub fn component_uri(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The SPIFFE ID of an actor identity, in the certificate form ([`actor_uri`]).
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

    const LEGACY: SpiffeOptions = SpiffeOptions {
        accept_legacy_actor: true,
    };

    fn actor(form: ActorIdForm) -> SpiffeId {
        SpiffeId::Actor {
            trust_domain: "substrate-actor.local".into(),
            atespace: "team".into(),
            name: "bot".into(),
            form,
        }
    }

    #[test]
    fn parses_each_actor_form_and_round_trips() {
        for (uri, form) in [
            (
                "spiffe://substrate-actor.local/ateom-for-actor/team/bot",
                ActorIdForm::AteomForActor,
            ),
            (
                "spiffe://substrate-actor.local/actor/team/bot",
                ActorIdForm::Actor,
            ),
        ] {
            let id = SpiffeId::parse(uri).unwrap();
            assert_eq!(id, actor(form), "{uri}");
            assert_eq!(id.uri(), uri);
            assert_eq!(SpiffeId::parse_with(uri, LEGACY).unwrap(), actor(form));
        }
        assert_eq!(
            actor_uri("substrate-actor.local", "team", "bot"),
            "spiffe://substrate-actor.local/ateom-for-actor/team/bot"
        );
    }

    #[test]
    fn legacy_actor_form_only_when_configured() {
        let uri = "spiffe://substrate-actor.local/atespace/team/actor/bot";
        assert!(matches!(SpiffeId::parse(uri), Err(SpiffeError::BadPath(_))));
        let id = SpiffeId::parse_with(uri, LEGACY).unwrap();
        assert_eq!(id, actor(ActorIdForm::Legacy));
        assert_eq!(id.uri(), uri);
    }

    #[test]
    fn parses_components_and_rejects_the_rest() {
        assert!(matches!(
            SpiffeId::parse("spiffe://cluster.local/ns/ate-system/sa/pep").unwrap(),
            SpiffeId::Component { .. }
        ));
        for bad in [
            "spiffe://td/ateom-for-actor/team",
            "spiffe://td/ateom-for-actor/team/bot/extra",
            "spiffe://td/ateom-for-actor/team/bot/",
            "spiffe://td/ateom-for-actor/Team/bot",
            "spiffe://td/ateom-for-actor//bot",
            "spiffe://td/ateom-for-actor/team/-bot",
            "spiffe://td/ateom-for-actor/team/b%6ft",
            "spiffe://td/ateom-for-actor/team/bot?x=1",
            "spiffe://td/ateom-for-actor/team/bot#frag",
            "spiffe://td/actor/team/bot/",
            "spiffe://td/actor/bot",
            "spiffe://td/actor/te_am/bot",
            "spiffe://td/atespace/team/actor/bot/extra",
            "spiffe://td/atespace/team/actor",
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/",
            "spiffe://td",
        ] {
            assert!(
                matches!(
                    SpiffeId::parse_with(bad, LEGACY),
                    Err(SpiffeError::BadPath(_))
                ),
                "{bad}"
            );
        }
        for bad in [
            "spiffe://user@td/actor/team/bot",
            "spiffe://td:443/actor/team/bot",
            "spiffe://t%64/actor/team/bot",
            "spiffe://td?q/actor/team/bot",
            "spiffe:///actor/team/bot",
        ] {
            assert!(
                matches!(
                    SpiffeId::parse_with(bad, LEGACY),
                    Err(SpiffeError::BadTrustDomain(_))
                ),
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
