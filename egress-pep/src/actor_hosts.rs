//! Actor hosts (DESIGN §7.4): names under the platform's actor host suffixes
//! (`<name>.<atespace>.<suffix>`, routing-core's extractor setting) belong to actors, and traffic
//! to them is actor-to-actor traffic — never dialled as an external name. Until actor forwarding
//! is configured, such traffic is denied with reason `actor_forwarding_not_configured`.
//!
//! One place decides this, so the PEP and `actorgate policy test` agree.

use crate::decision::{Decision, Query, Reason, Traffic};
use crate::policy::CompiledPolicy;

/// The configured actor host suffixes (lowercase, no leading or trailing dot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActorHosts {
    suffixes: Vec<String>,
}

impl ActorHosts {
    /// Suffixes such as `actors.resources.substrate.ate.dev`; empty ones are ignored, a leading
    /// or trailing dot and case are normalised away.
    pub fn new(suffixes: impl IntoIterator<Item = String>) -> Self {
        let suffixes = suffixes
            .into_iter()
            .map(|s| s.trim_matches('.').to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        ActorHosts { suffixes }
    }

    /// Whether `authority` (a name, with or without `:port`, one trailing dot allowed) is a
    /// suffix itself or lies under one (label boundary).
    pub fn contains(&self, authority: &str) -> bool {
        if self.suffixes.is_empty() {
            return false;
        }
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        self.suffixes.iter().any(|s| {
            host.eq_ignore_ascii_case(s)
                || (host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.'
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s))
        })
    }

    /// The decision for `query` under `policy` (`None`: the actor has no policy): traffic whose
    /// SNI or authority is an actor host is denied first (`actor_forwarding_not_configured`),
    /// then the policy decides; no policy → `no_policy`.
    pub fn decide(&self, policy: Option<&CompiledPolicy>, query: &Query<'_>) -> Decision {
        let name = match query.traffic {
            Traffic::Tls { sni, .. } => sni,
            Traffic::Http { authority, .. } | Traffic::Https { authority, .. } => Some(authority),
            Traffic::Opaque => None,
        };
        if name.is_some_and(|n| self.contains(n)) {
            return Decision::deny(Reason::ActorForwardingNotConfigured);
        }
        match policy {
            None => Decision::deny(Reason::NoPolicy),
            Some(p) => p.decide(query),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_a_suffix_are_actor_hosts() {
        let h = ActorHosts::new(["actors.example.dev".to_owned(), String::new()]);
        assert!(h.contains("hello.demo.actors.example.dev"));
        assert!(h.contains("Hello.Demo.Actors.Example.Dev.:8080"));
        assert!(h.contains("actors.example.dev"));
        assert!(!h.contains("evilactors.example.dev"));
        assert!(!h.contains("example.dev"));
        assert!(!h.contains("[::1]:80"));
        assert!(!ActorHosts::default().contains("hello.demo.actors.example.dev"));
    }

    #[test]
    fn actor_hosts_are_denied_before_the_policy_and_no_policy_denies() {
        let h = ActorHosts::new(["actors.example.dev".to_owned()]);
        let dst = "10.0.0.1:443".parse().unwrap();
        let q = Query {
            dst,
            traffic: Traffic::Tls {
                interception: false,
                sni: Some("a.b.actors.example.dev"),
            },
        };
        assert_eq!(
            h.decide(None, &q).reason,
            Reason::ActorForwardingNotConfigured
        );
        let q = Query {
            dst,
            traffic: Traffic::Tls {
                interception: false,
                sni: Some("example.org"),
            },
        };
        assert_eq!(h.decide(None, &q).reason, Reason::NoPolicy);
    }
}
