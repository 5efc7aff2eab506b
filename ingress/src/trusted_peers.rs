//! Trusted peers (DESIGN §5, §7.4): the client identities the HTTPS listener believes when they
//! name the calling actor in `ate-source-actor` (the egress PEPs). Everyone else has the header
//! stripped, so an external client can never claim to be an actor.
//!
//! An entry is a SPIFFE ID compared exactly (`spiffe://<td>/ns/<ns>/sa/<sa>`), or a prefix
//! ending in `/*` (`spiffe://<td>/ns/ate-system/*`) that matches every ID under that path. The
//! identity compared is the client certificate's SPIFFE ID as the TLS handshake verified it
//! (`runtime::PeerIdentity::spiffe_id`); a client without one is never trusted.

use std::collections::HashSet;

/// A validated list of trusted peer identities. Empty: nobody is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedPeers {
    exact: HashSet<String>,
    /// Prefixes without their `*`, each ending in `/`.
    prefixes: Vec<String>,
}

/// Why an entry of the list is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustedPeerError {
    /// The entry is not a SPIFFE ID.
    #[error("{0:?} is not a SPIFFE ID: {1}")]
    NotSpiffe(String, String),
    /// A prefix entry is not `spiffe://<trust domain>/<path>/*`.
    #[error("{0:?} is not a SPIFFE ID prefix: want spiffe://<trust domain>/<path>/*")]
    BadPrefix(String),
}

impl TrustedPeers {
    /// The list `entries`: exact SPIFFE IDs (actor or component, as `identity::spiffe` parses
    /// them) and prefixes ending in `/*` under a valid trust domain.
    ///
    /// # Errors
    /// One [`TrustedPeerError`] per bad entry, with its index.
    pub fn parse(entries: &[String]) -> Result<Self, Vec<(usize, TrustedPeerError)>> {
        let mut peers = TrustedPeers::default();
        let mut errors = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match entry.strip_suffix('*') {
                Some(prefix) => {
                    let valid = prefix
                        .strip_prefix("spiffe://")
                        .and_then(|rest| rest.split_once('/'))
                        .is_some_and(|(td, path)| {
                            identity::spiffe::is_trust_domain(td)
                                && path.ends_with('/')
                                && !path.starts_with('/')
                                && !path.contains('*')
                                && !path.contains("//")
                        });
                    if valid {
                        peers.prefixes.push(prefix.to_owned());
                    } else {
                        errors.push((i, TrustedPeerError::BadPrefix(entry.clone())));
                    }
                }
                None => match identity::spiffe::SpiffeId::parse(entry) {
                    Ok(_) => {
                        peers.exact.insert(entry.clone());
                    }
                    Err(e) => {
                        errors.push((i, TrustedPeerError::NotSpiffe(entry.clone(), e.to_string())))
                    }
                },
            }
        }
        if errors.is_empty() {
            Ok(peers)
        } else {
            Err(errors)
        }
    }

    /// Whether nobody is trusted.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// How many entries the list has.
    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    /// Whether a client whose verified certificate names `spiffe_id` may send
    /// `ate-source-actor`. `None` (no certificate, or none with one SPIFFE ID): never.
    pub fn trusts(&self, spiffe_id: Option<&str>) -> bool {
        let Some(id) = spiffe_id else {
            return false;
        };
        self.exact.contains(id) || self.prefixes.iter().any(|p| id.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEP: &str = "spiffe://substrate-actor.local/ns/ate-system/sa/actorgate-pep";

    fn list(entries: &[&str]) -> TrustedPeers {
        TrustedPeers::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exact_ids_match_only_themselves() {
        let peers = list(&[PEP]);
        assert!(peers.trusts(Some(PEP)));
        assert!(!peers.trusts(Some(
            "spiffe://substrate-actor.local/ns/ate-system/sa/actorgate-pep2"
        )));
        assert!(!peers.trusts(Some(
            "spiffe://other.example/ns/ate-system/sa/actorgate-pep"
        )));
        assert!(!peers.trusts(None));
    }

    #[test]
    fn prefixes_match_ids_under_their_path() {
        let peers = list(&["spiffe://substrate-actor.local/ns/ate-system/*"]);
        assert!(peers.trusts(Some(PEP)));
        assert!(!peers.trusts(Some("spiffe://substrate-actor.local/ns/ate-system2/sa/x")));
        assert!(!peers.trusts(Some("spiffe://substrate-actor.local/actor/demo/x")));
    }

    #[test]
    fn an_empty_list_trusts_nobody() {
        let peers = TrustedPeers::default();
        assert!(peers.is_empty());
        assert!(!peers.trusts(Some(PEP)));
    }

    #[test]
    fn bad_entries_are_reported_with_their_index() {
        let entries: Vec<String> = [
            PEP,
            "https://pep.example",
            "spiffe://substrate-actor.local/ns*",
            "spiffe://Bad_TD/ns/ate-system/*",
            "*",
        ]
        .iter()
        .map(|e| (*e).to_owned())
        .collect();
        let errors = TrustedPeers::parse(&entries).unwrap_err();
        let indexes: Vec<usize> = errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, vec![1, 2, 3, 4]);
        assert!(matches!(errors[0].1, TrustedPeerError::NotSpiffe(..)));
        assert!(matches!(errors[1].1, TrustedPeerError::BadPrefix(..)));
    }
}
