//! `ActorIdentity`: who an actor is, as carried in tokens (`sub`, `ate.dev`) and certificates.

use serde::{Deserialize, Serialize};

/// A verified actor identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActorIdentity {
    /// The atespace (Kubernetes namespace-like scope) the actor lives in; a DNS-1123 label.
    pub atespace: String,
    /// The actor's name within its atespace; a DNS-1123 label.
    pub name: String,
    /// The actor's uid, when the credential carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// An invalid atespace or actor name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not a DNS-1123 label")]
pub struct InvalidName {
    /// Which part was invalid (`atespace` or `name`).
    pub what: &'static str,
    /// The rejected value.
    pub value: String,
}

/// Checks a DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter().all(|&c| edge(c) || c == b'-')
}

impl ActorIdentity {
    /// Validates both labels.
    pub fn new(atespace: &str, name: &str, uid: Option<String>) -> Result<Self, InvalidName> {
        for (what, v) in [("atespace", atespace), ("actor name", name)] {
            if !is_dns_label(v) {
                return Err(InvalidName {
                    what,
                    value: v.to_owned(),
                });
            }
        }
        Ok(Self {
            atespace: atespace.to_owned(),
            name: name.to_owned(),
            uid,
        })
    }

    /// Parses `<atespace>/<name>`.
    pub fn parse_ref(s: &str) -> Result<Self, InvalidName> {
        let (ns, name) = s.split_once('/').ok_or_else(|| InvalidName {
            what: "actor reference",
            value: s.to_owned(),
        })?;
        Self::new(ns, name, None)
    }

    /// The JWT subject in upstream's `MintActorJWT` form: `actor/<atespace>/<name>`.
    pub fn subject(&self) -> String {
        format!("actor/{}/{}", self.atespace, self.name)
    }

    /// Parses a JWT subject `actor/<atespace>/<name>` into (atespace, name); `None` for any
    /// other shape or labels that are not DNS-1123.
    pub fn from_subject(sub: &str) -> Option<(String, String)> {
        let rest = sub.strip_prefix("actor/")?;
        let (ns, name) = rest.split_once('/')?;
        (is_dns_label(ns) && is_dns_label(name)).then(|| (ns.to_owned(), name.to_owned()))
    }

    /// `<atespace>/<name>`, the form of `ate-target-actor` and `ate-source-actor`.
    pub fn actor_ref(&self) -> String {
        format!("{}/{}", self.atespace, self.name)
    }
}

impl std::fmt::Display for ActorIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.atespace, self.name)
    }
}
