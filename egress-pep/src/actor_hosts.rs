//! Actor hosts (DESIGN §7.4): names under the platform's actor host suffix
//! (`<name>.<atespace>.<suffix>`, or `<name>.<suffix>` in the default atespace: routing-core's
//! extractor settings) belong to actors, and traffic to them — or to one of the configured
//! ingress addresses — is actor-to-actor traffic, never dialled as an external name. It is
//! decided by the caller's `actors` rules, then by hostname rules naming the actor host (as
//! upstream does); `tcp` rules never reach an actor. What passes is forwarded to ingress
//! ([`Dial::Actor`]). Until actor forwarding is configured such traffic is denied with reason
//! `actor_forwarding_not_configured`.
//!
//! One place decides this, so the PEP and `actorgate policy test` agree.

use std::net::{IpAddr, SocketAddr};

use routing_core::{ActorRef, Extractor, ExtractorKind, RequestMeta};

use crate::decision::{Decision, Dial, Query, Reason, RuleKind, Traffic};
use crate::policy::CompiledPolicy;

/// An address ingress is reached at from actors (`ip` for every port, or `ip:port`): traffic
/// whose original destination is one is actor-to-actor traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressAddress {
    /// Every port of this IP.
    Ip(IpAddr),
    /// This `ip:port`.
    Socket(SocketAddr),
}

impl IngressAddress {
    /// Whether `dst` is this address (IPv4-mapped IPv6 and IPv4 spellings are the same
    /// address on either side).
    pub fn matches(&self, dst: SocketAddr) -> bool {
        let ip = dst.ip().to_canonical();
        match self {
            IngressAddress::Ip(a) => a.to_canonical() == ip,
            IngressAddress::Socket(s) => s.ip().to_canonical() == ip && s.port() == dst.port(),
        }
    }
}

/// The actor host conventions and whether actor traffic is forwarded.
#[derive(Debug, Clone, Default)]
pub struct ActorHosts {
    /// The actor host suffix (lowercase, no leading or trailing dot); `None`: no actor hosts.
    suffix: Option<String>,
    /// Host (and legacy host) extraction with routing-core's settings.
    extractor: Option<Extractor>,
    /// `Some`: forwarding is configured, with these ingress addresses.
    forwarding: Option<Vec<IngressAddress>>,
}

impl ActorHosts {
    /// Actor hosts under `suffix` (e.g. `actors.resources.substrate.ate.dev`; a leading or
    /// trailing dot and case are normalised away, an empty or invalid one means none), with
    /// `<name>.<suffix>` names in `default_atespace` when there is one (routing-core's
    /// `routing.host_suffix` and `routing.default_atespace`).
    pub fn new(suffix: &str, default_atespace: Option<&str>) -> Self {
        let suffix = suffix.trim_matches('.').to_ascii_lowercase();
        if suffix.is_empty() {
            return ActorHosts::default();
        }
        let mut kinds = vec![ExtractorKind::Host];
        if default_atespace.is_some() {
            kinds.push(ExtractorKind::LegacyHost);
        }
        let extractor = Extractor::new(kinds, &suffix, default_atespace).ok();
        ActorHosts {
            suffix: Some(suffix),
            extractor,
            forwarding: None,
        }
    }

    /// Forwards actor traffic to ingress; traffic to `ingress` addresses is actor traffic too.
    pub fn with_forwarding(mut self, ingress: Vec<IngressAddress>) -> Self {
        self.forwarding = Some(ingress);
        self
    }

    /// Whether actor traffic is forwarded (else denied, `actor_forwarding_not_configured`).
    pub fn forwarding(&self) -> bool {
        self.forwarding.is_some()
    }

    /// Whether `dst` is one of the configured ingress addresses.
    pub fn is_ingress(&self, dst: SocketAddr) -> bool {
        self.forwarding
            .as_deref()
            .is_some_and(|a| a.iter().any(|i| i.matches(dst)))
    }

    /// Whether `authority` (a name, with or without `:port`, one trailing dot allowed) is the
    /// suffix itself or lies under it (label boundary).
    pub fn contains(&self, authority: &str) -> bool {
        let Some(s) = &self.suffix else {
            return false;
        };
        let host = host_of(authority);
        host.eq_ignore_ascii_case(s)
            || (host.len() > s.len()
                && host.as_bytes()[host.len() - s.len() - 1] == b'.'
                && host[host.len() - s.len()..].eq_ignore_ascii_case(s))
    }

    /// The actor an actor host names and the host normalised (lowercase, no port, no trailing
    /// dot); `None` when it names none validly (bad labels, too many labels, the bare suffix).
    pub fn target(&self, authority: &str) -> Option<(ActorRef, String)> {
        let host = host_of(authority).to_ascii_lowercase();
        let meta = RequestMeta {
            target_actor: None,
            authority: Some(&host),
        };
        let target = self.extractor.as_ref()?.extract(&meta).ok()?;
        Some((target.actor, host))
    }

    /// The decision for `query` under `policy` (`None`: the actor has no policy).
    /// `dst_host`: the name the actor asked for, when the tunnel's CONNECT carried one
    /// (`ate-destination-host`); it names the target of traffic to an ingress address that
    /// carries no SNI or authority of its own (opaque TCP).
    ///
    /// * SNI or authority an actor host, or the destination an ingress address: actor
    ///   traffic. Without forwarding → `actor_forwarding_not_configured`; no actor named →
    ///   `actor_target_unknown` (ingress addresses) or `invalid_authority`; then the caller's
    ///   `actors` rules, then its hostname rules naming the host (never `tcp` rules); a pass
    ///   dials [`Dial::Actor`] on the port the actor dialed.
    /// * Anything else: the policy decides; no policy → `no_policy`.
    pub fn decide(
        &self,
        policy: Option<&CompiledPolicy>,
        query: &Query<'_>,
        dst_host: Option<&str>,
    ) -> Decision {
        let named = match query.traffic {
            Traffic::Tls { sni, .. } => sni,
            Traffic::Http { authority, .. } | Traffic::Https { authority, .. } => Some(authority),
            Traffic::Opaque => None,
        };
        let to_ingress = self.is_ingress(query.dst);
        let name = match named {
            Some(n) => Some(n),
            None if to_ingress => dst_host,
            None => None,
        };
        let host = name.filter(|n| self.contains(n));
        let Some(host) = host else {
            if to_ingress {
                return Decision::deny(Reason::ActorTargetUnknown);
            }
            return match policy {
                None => Decision::deny(Reason::NoPolicy),
                Some(p) => p.decide(query),
            };
        };
        if !self.forwarding() {
            return Decision::deny(Reason::ActorForwardingNotConfigured);
        }
        let Some((target, host)) = self.target(host) else {
            return Decision::deny(Reason::InvalidAuthority);
        };
        let Some(policy) = policy else {
            return Decision::deny(Reason::NoPolicy);
        };
        let port = query.dst.port();
        let dial = Dial::Actor {
            target: target.clone(),
            host: host.into(),
            port,
        };
        let by_actors = policy.decide_actor(&target, port, dial.clone());
        if by_actors.verdict == crate::decision::Verdict::Allow
            || matches!(query.traffic, Traffic::Opaque)
            || named.is_none()
        {
            return by_actors;
        }
        // Upstream's way: a hostname rule naming the actor host (a `tcp` rule never reaches an
        // actor: it would bypass the actor's identity).
        let mut by_name = policy.decide(query);
        let by_tcp = by_name.rule.as_ref().map(|r| r.kind) == Some(RuleKind::Tcp);
        if by_tcp || !by_name.verdict.passes() {
            return if by_name.rule.is_some() && !by_tcp {
                // The hostname rule's own refusal (method, path) says more.
                by_name
            } else {
                by_actors
            };
        }
        by_name.dial = Some(dial);
        by_name
    }
}

/// `authority` without its `:port` and one trailing dot.
fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::decision::Verdict;

    const SUFFIX: &str = "actors.example.dev";

    fn policy(rules: &str) -> std::sync::Arc<CompiledPolicy> {
        let text =
            format!("policies:\n- name: p\n  selector: {{actor: demo/a}}\n  rules:\n{rules}");
        let mut parsed = crate::policy::files::parse_policies(Path::new("p.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}"));
        parsed.remove(0).1
    }

    fn http<'a>(dst: &str, authority: &'a str) -> Query<'a> {
        Query {
            dst: dst.parse().unwrap(),
            traffic: Traffic::Http {
                authority,
                method: "GET",
                path: "/",
            },
        }
    }

    #[test]
    fn names_under_the_suffix_are_actor_hosts() {
        let h = ActorHosts::new(".Actors.Example.Dev.", Some("default"));
        assert!(h.contains("hello.demo.actors.example.dev"));
        assert!(h.contains("Hello.Demo.Actors.Example.Dev.:8080"));
        assert!(h.contains("actors.example.dev"));
        assert!(!h.contains("evilactors.example.dev"));
        assert!(!h.contains("example.dev"));
        assert!(!h.contains("[::1]:80"));
        assert!(!ActorHosts::new("", None).contains("hello.demo.actors.example.dev"));
        let (a, host) = h.target("Hello.Demo.actors.example.dev.:81").unwrap();
        assert_eq!(
            (a.as_str(), host.as_str()),
            ("demo/hello", "hello.demo.actors.example.dev")
        );
        // The legacy form names the default atespace; the bare suffix and bad labels name none.
        assert_eq!(
            h.target("b.actors.example.dev").unwrap().0.as_str(),
            "default/b"
        );
        assert!(h.target("actors.example.dev").is_none());
        assert!(h.target("a.b.c.actors.example.dev").is_none());
        assert!(
            ActorHosts::new(SUFFIX, None)
                .target("b.actors.example.dev")
                .is_none()
        );
    }

    #[test]
    fn without_forwarding_actor_hosts_are_denied_before_the_policy() {
        let h = ActorHosts::new(SUFFIX, None);
        let p = policy("  - actors: {targets: ['demo/*']}\n");
        let q = Query {
            dst: "10.0.0.1:443".parse().unwrap(),
            traffic: Traffic::Tls {
                interception: false,
                sni: Some("a.b.actors.example.dev"),
            },
        };
        let d = h.decide(Some(&p), &q, None);
        assert_eq!(d.reason, Reason::ActorForwardingNotConfigured);
        let q = Query {
            dst: "10.0.0.1:443".parse().unwrap(),
            traffic: Traffic::Tls {
                interception: false,
                sni: Some("example.org"),
            },
        };
        assert_eq!(h.decide(None, &q, None).reason, Reason::NoPolicy);
    }

    #[test]
    fn actors_rules_then_hostname_rules_decide_and_forward_on_the_dialed_port() {
        let h = ActorHosts::new(SUFFIX, None)
            .with_forwarding(vec![IngressAddress::Ip("10.96.0.10".parse().unwrap())]);
        let p = policy(
            "  - actors: {targets: ['demo/b*'], ports: [8080]}\n  \
             - http: {hostnames: ['c.demo.actors.example.dev'], methods: [GET]}\n  \
             - tcp: {cidrs: [10.96.0.0/16], ports: all}\n",
        );
        let d = h.decide(
            Some(&p),
            &http("10.96.0.10:8080", "bob.demo.actors.example.dev"),
            None,
        );
        assert_eq!(
            (d.verdict, d.rule.unwrap().kind),
            (Verdict::Allow, RuleKind::Actors)
        );
        let Some(Dial::Actor { target, host, port }) = d.dial else {
            panic!("{:?}", d.dial)
        };
        assert_eq!(
            (target.as_str(), &*host, port),
            ("demo/bob", "bob.demo.actors.example.dev", 8080)
        );
        // The port the actor dialed decides, never the one in Host.
        let d = h.decide(
            Some(&p),
            &http("10.96.0.10:80", "bob.demo.actors.example.dev:8080"),
            None,
        );
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Deny, Reason::NoMatchingRule)
        );
        // An upstream-style http rule naming the actor host.
        let d = h.decide(
            Some(&p),
            &http("10.0.0.9:80", "c.demo.actors.example.dev"),
            None,
        );
        assert_eq!(d.rule.unwrap().kind, RuleKind::Http);
        assert!(matches!(d.dial, Some(Dial::Actor { port: 80, .. })));
        // A tcp rule covering ingress never reaches an actor, nor ingress without an actor.
        let d = h.decide(
            Some(&p),
            &http("10.96.0.10:80", "other.demo.actors.example.dev"),
            None,
        );
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Deny, Reason::NoMatchingRule)
        );
        let d = h.decide(Some(&p), &http("10.96.0.10:80", "example.org"), None);
        assert_eq!(d.reason, Reason::ActorTargetUnknown);
        // Opaque TCP to ingress is named by the CONNECT's destination host, or by nothing.
        let opaque = Query {
            dst: "10.96.0.10:8080".parse().unwrap(),
            traffic: Traffic::Opaque,
        };
        assert_eq!(
            h.decide(Some(&p), &opaque, None).reason,
            Reason::ActorTargetUnknown
        );
        let d = h.decide(Some(&p), &opaque, Some("bee.demo.actors.example.dev"));
        assert!(
            matches!(d.dial, Some(Dial::Actor { port: 8080, .. })),
            "{d:?}"
        );
        // Elsewhere the destination host is ignored and the tcp rule decides.
        let elsewhere = Query {
            dst: "10.96.1.1:22".parse().unwrap(),
            traffic: Traffic::Opaque,
        };
        let d = h.decide(Some(&p), &elsewhere, Some("bee.demo.actors.example.dev"));
        assert_eq!(d.rule.unwrap().kind, RuleKind::Tcp);
        // A method the hostname rule refuses says so.
        let q = Query {
            dst: "10.0.0.9:80".parse().unwrap(),
            traffic: Traffic::Http {
                authority: "c.demo.actors.example.dev",
                method: "POST",
                path: "/",
            },
        };
        assert_eq!(
            h.decide(Some(&p), &q, None).reason,
            Reason::MethodNotAllowed
        );
        assert_eq!(h.decide(None, &q, None).reason, Reason::NoPolicy);
        assert_eq!(
            h.decide(
                Some(&p),
                &http("10.0.0.9:80", "x.y.z.actors.example.dev"),
                None
            )
            .reason,
            Reason::InvalidAuthority
        );
    }
}
