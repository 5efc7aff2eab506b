//! Request metadata → `ActorRef` (DESIGN §2): the `ate-target-actor` header, the
//! `<name>.<atespace>.<suffix>` authority and the legacy `<name>.<suffix>` authority, tried in a
//! configured order. Allocation-free except for the resulting `ActorRef`.

use serde::{Deserialize, Serialize};

use crate::actor_ref::{ActorRef, check_label};

/// Default host suffix of actor authorities.
pub const DEFAULT_HOST_SUFFIX: &str = "actors.resources.substrate.ate.dev";
/// Atespace of legacy `<name>.<suffix>` hosts unless configured otherwise.
pub const DEFAULT_ATESPACE: &str = "default";
/// Actor port used when the authority carries none.
pub const DEFAULT_ACTOR_PORT: u16 = 80;

/// One way of finding the actor in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractorKind {
    /// `ate-target-actor: <atespace>/<name>`.
    Header,
    /// `Host: <name>.<atespace>.<suffix>[:port]`.
    Host,
    /// `Host: <name>.<suffix>[:port]` with the configured default atespace.
    LegacyHost,
}

/// What to do when `ate-target-actor` and the authority name two different valid actors.
///
/// A Host-keyed policy in front of actorgate (an Envoy/Istio virtual host, an nginx `server`)
/// checks the actor the authority names; letting the header silently pick another actor would
/// route the request past that policy. So the default refuses such a request with `400
/// conflicting actor references`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// Refuse the request (400 `conflicting actor references`).
    #[default]
    Refuse,
    /// The first configured extractor that finds an actor decides; the other is ignored.
    FirstExtractorWins,
}

/// The parts of a request that extraction looks at. Adapters fill it from their own request type.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestMeta<'a> {
    /// The `ate-target-actor` header ([`crate::wire::TARGET_ACTOR`]) as read by
    /// [`crate::wire::target_actor`]: a header seen more than once, or not UTF-8, is `Some("")`,
    /// so the request fails closed instead of picking one of the values.
    pub target_actor: Option<&'a str>,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: Option<&'a str>,
}

/// The actor a request targets and the actor port it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The actor.
    pub actor: ActorRef,
    /// Port from the authority when the actor came from it; otherwise the default actor port.
    pub port: u16,
    /// Which extractor matched (for logs and metrics).
    pub via: ExtractorKind,
}

/// The outcome of one extraction pass ([`Extractor::decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// What [`Extractor::extract`] returns.
    pub(crate) target: Result<Target, InvalidActorRef>,
    /// What [`Extractor::conflicting`] returns (false unless the conflict check was asked for).
    pub(crate) conflicting: bool,
}

/// The request named no valid actor. Clients see `404 invalid actor reference`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid actor reference")]
pub struct InvalidActorRef;

/// Extraction settings: which extractors, in which order, and the host conventions.
#[derive(Debug, Clone)]
pub struct Extractor {
    order: Vec<ExtractorKind>,
    /// `"." + suffix`, lowercase.
    dotted_suffix: Box<str>,
    default_atespace: Option<Box<str>>,
    default_port: u16,
    conflict: ConflictPolicy,
}

/// Invalid extractor settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractorConfigError {
    /// The extractor list is empty.
    #[error("must list at least one extractor")]
    NoExtractors,
    /// An extractor is listed twice.
    #[error("lists {0:?} twice")]
    Duplicate(ExtractorKind),
    /// A host suffix is not dot-separated DNS labels.
    #[error("invalid host suffix {0:?}: must be dot-separated DNS labels")]
    BadSuffix(String),
    /// The default atespace is not a valid atespace.
    #[error("invalid default atespace {0:?}: {1}")]
    BadDefaultAtespace(String, crate::actor_ref::ActorRefError),
    /// `legacy_host` is listed without a default atespace.
    #[error("legacy_host needs a default atespace")]
    LegacyWithoutAtespace,
}

impl Default for Extractor {
    fn default() -> Self {
        Self {
            order: vec![
                ExtractorKind::Header,
                ExtractorKind::Host,
                ExtractorKind::LegacyHost,
            ],
            dotted_suffix: format!(".{DEFAULT_HOST_SUFFIX}").into(),
            default_atespace: Some(DEFAULT_ATESPACE.into()),
            default_port: DEFAULT_ACTOR_PORT,
            conflict: ConflictPolicy::Refuse,
        }
    }
}

impl Extractor {
    /// Builds an extractor. `legacy_host` requires `default_atespace`.
    pub fn new(
        order: Vec<ExtractorKind>,
        suffix: &str,
        default_atespace: Option<&str>,
    ) -> Result<Self, ExtractorConfigError> {
        if order.is_empty() {
            return Err(ExtractorConfigError::NoExtractors);
        }
        for (i, k) in order.iter().enumerate() {
            if order[..i].contains(k) {
                return Err(ExtractorConfigError::Duplicate(*k));
            }
        }
        let suffix_lc = suffix.trim_end_matches('.').to_ascii_lowercase();
        if suffix_lc.is_empty()
            || suffix_lc
                .split('.')
                .any(|l| check_label(l, "suffix label").is_err())
        {
            return Err(ExtractorConfigError::BadSuffix(suffix.to_owned()));
        }
        if let Some(ns) = default_atespace {
            check_label(ns, "atespace")
                .map_err(|e| ExtractorConfigError::BadDefaultAtespace(ns.to_owned(), e))?;
        }
        if order.contains(&ExtractorKind::LegacyHost) && default_atespace.is_none() {
            return Err(ExtractorConfigError::LegacyWithoutAtespace);
        }
        Ok(Self {
            order,
            dotted_suffix: format!(".{suffix_lc}").into(),
            default_atespace: default_atespace.map(Into::into),
            default_port: DEFAULT_ACTOR_PORT,
            conflict: ConflictPolicy::Refuse,
        })
    }

    /// Sets what happens when the header and the authority name different actors (default:
    /// [`ConflictPolicy::Refuse`]).
    pub fn with_conflict_policy(mut self, policy: ConflictPolicy) -> Self {
        self.conflict = policy;
        self
    }

    /// The configured conflict policy.
    pub fn conflict_policy(&self) -> ConflictPolicy {
        self.conflict
    }

    /// Whether the request must be refused because `ate-target-actor` and the authority name
    /// two different valid actors while the policy is [`ConflictPolicy::Refuse`]. Only
    /// configured extractors count; an invalid reference on either side is not a conflict (the
    /// extractor order then decides, and an invalid header still fails closed).
    pub fn conflicting(&self, req: &RequestMeta<'_>) -> bool {
        self.decide(req, true).conflicting
    }

    /// Finds the target actor. The first extractor whose form is present decides: a present but
    /// malformed `ate-target-actor` header, or an authority under the actor suffix with bad labels,
    /// fails instead of falling through to the next extractor.
    pub fn extract(&self, req: &RequestMeta<'_>) -> Result<Target, InvalidActorRef> {
        self.decide(req, false).target
    }

    /// [`Extractor::extract`] and, with `check_conflict`, [`Extractor::conflicting`] in one pass:
    /// the header and the authority are each read at most once.
    pub(crate) fn decide(&self, req: &RequestMeta<'_>, check_conflict: bool) -> Decision {
        // Both sides are needed only when a conflict is possible; otherwise the first decisive
        // extractor ends the pass.
        let both = check_conflict
            && self.conflict == ConflictPolicy::Refuse
            && req.target_actor.is_some()
            && req.authority.is_some();
        let mut by_header: Option<Result<Target, InvalidActorRef>> = None;
        let mut by_host: Option<Result<Target, InvalidActorRef>> = None;
        let mut header_first = None;
        let mut split = None;
        for kind in &self.order {
            match kind {
                ExtractorKind::Header => {
                    if by_header.is_none()
                        && let Some(v) = req.target_actor
                    {
                        by_header = Some(
                            ActorRef::parse(v.trim())
                                .map(|actor| Target {
                                    actor,
                                    port: self.default_port,
                                    via: ExtractorKind::Header,
                                })
                                .map_err(|_| InvalidActorRef),
                        );
                        header_first.get_or_insert(true);
                    }
                }
                ExtractorKind::Host | ExtractorKind::LegacyHost => {
                    if by_host.is_none()
                        && let Some(r) = self.host_kind(*kind, req.authority, &mut split)
                    {
                        by_host = Some(r);
                        header_first.get_or_insert(false);
                    }
                }
            }
            let done = if both {
                by_header.is_some() && by_host.is_some()
            } else {
                header_first.is_some()
            };
            if done {
                break;
            }
        }
        let conflicting = both
            && matches!((&by_header, &by_host), (Some(Ok(a)), Some(Ok(b))) if a.actor != b.actor);
        let target = match header_first {
            Some(true) => {
                // The header names the actor; an authority naming the same actor still says
                // which actor port (a trusted PEP sends both, DESIGN §7.4).
                by_header.map(|r| {
                    r.map(|mut t| {
                        if let Some(port) = self.same_actor_port(req.authority, &t.actor, by_host) {
                            t.port = port;
                        }
                        t
                    })
                })
            }
            Some(false) => by_host,
            None => None,
        }
        .unwrap_or(Err(InvalidActorRef));
        Decision {
            target,
            conflicting,
        }
    }

    /// The port of `authority` when a configured authority extractor finds `actor` there
    /// (`by_host`: its answer when already computed); `None` otherwise.
    fn same_actor_port(
        &self,
        authority: Option<&str>,
        actor: &ActorRef,
        by_host: Option<Result<Target, InvalidActorRef>>,
    ) -> Option<u16> {
        authority?;
        let found = match by_host {
            Some(r) => Some(r),
            None => {
                let mut split = None;
                self.order
                    .iter()
                    .filter(|k| matches!(k, ExtractorKind::Host | ExtractorKind::LegacyHost))
                    .find_map(|k| self.host_kind(*k, authority, &mut split))
            }
        };
        match found {
            Some(Ok(t)) if t.actor == *actor => Some(t.port),
            _ => None,
        }
    }

    /// One authority extractor: `None` when its form is absent (no authority, not under the
    /// actor suffix, or the other authority form), so the next extractor runs. `split` caches
    /// the parsed authority across the two authority extractors.
    fn host_kind<'a>(
        &self,
        kind: ExtractorKind,
        authority: Option<&'a str>,
        split: &mut Option<Option<(&'a str, u16)>>,
    ) -> Option<Result<Target, InvalidActorRef>> {
        let authority = authority?;
        let parsed = match *split {
            Some(p) => p,
            None => match self.split_authority(authority) {
                Ok(p) => {
                    *split = Some(p);
                    p
                }
                Err(e) => return Some(Err(e)),
            },
        };
        let (labels, port) = parsed?; // not under the actor suffix
        let (atespace, name, via) = match (kind, labels.split_once('.')) {
            (ExtractorKind::Host, Some((name, atespace))) => (atespace, name, ExtractorKind::Host),
            (ExtractorKind::LegacyHost, None) => match self.default_atespace.as_deref() {
                Some(atespace) => (atespace, labels, ExtractorKind::LegacyHost),
                None => return Some(Err(InvalidActorRef)),
            },
            _ => return None,
        };
        Some(
            ActorRef::new_case_insensitive(atespace, name)
                .map(|actor| Target { actor, port, via })
                .map_err(|_| InvalidActorRef),
        )
    }

    /// Splits `host[:port]`; returns `Ok(None)` when the host is not under the actor suffix and
    /// `Ok(Some((labels before the suffix, port)))` when it is.
    fn split_authority<'a>(
        &self,
        authority: &'a str,
    ) -> Result<Option<(&'a str, u16)>, InvalidActorRef> {
        // Decide "is this an actor host?" before judging the port, so a host that is not under
        // the suffix (an IPv6 literal, a gateway name with an odd port) lets later extractors run.
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && !h.starts_with('[') => (h, Some(p)),
            Some(_) => return Ok(None), // IPv6 literal: never an actor host
            None => (authority, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let sfx = self.dotted_suffix.as_bytes();
        let hb = host.as_bytes();
        if hb.len() <= sfx.len() || !hb[hb.len() - sfx.len()..].eq_ignore_ascii_case(sfx) {
            return Ok(None);
        }
        let port = match port {
            None => self.default_port,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(InvalidActorRef);
                }
                match p.parse::<u16>() {
                    Ok(port) if port != 0 => port,
                    _ => return Err(InvalidActorRef),
                }
            }
        };
        Ok(Some((&host[..host.len() - sfx.len()], port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Extractor {
        Extractor::new(
            vec![
                ExtractorKind::Header,
                ExtractorKind::Host,
                ExtractorKind::LegacyHost,
            ],
            DEFAULT_HOST_SUFFIX,
            Some("default"),
        )
        .unwrap()
    }

    fn host(e: &Extractor, h: &str) -> Result<Target, InvalidActorRef> {
        e.extract(&RequestMeta {
            target_actor: None,
            authority: Some(h),
        })
    }

    #[test]
    fn header_form() {
        let t = all()
            .extract(&RequestMeta {
                target_actor: Some("ns1/agent"),
                authority: Some("gateway.example.com:8080"),
            })
            .unwrap();
        assert_eq!(t.actor.as_str(), "ns1/agent");
        assert_eq!(t.port, 80);
        assert_eq!(t.via, ExtractorKind::Header);
    }

    #[test]
    fn the_header_takes_the_port_of_an_authority_naming_the_same_actor() {
        let e = all();
        let meta = |a| RequestMeta {
            target_actor: Some("ns1/agent"),
            authority: Some(a),
        };
        let t = e
            .extract(&meta("agent.ns1.actors.resources.substrate.ate.dev:8081"))
            .unwrap();
        assert_eq!(
            (t.actor.as_str(), t.port, t.via),
            ("ns1/agent", 8081, ExtractorKind::Header)
        );
        // Another actor's authority (a conflict, refused elsewhere) or none: the default port.
        let t = e
            .extract(&meta("other.ns1.actors.resources.substrate.ate.dev:8081"))
            .unwrap();
        assert_eq!(t.port, 80);
        let t = e.extract(&meta("gateway.example.com:8081")).unwrap();
        assert_eq!(t.port, 80);
        // Without authority extractors the authority says nothing.
        let h = Extractor::new(vec![ExtractorKind::Header], DEFAULT_HOST_SUFFIX, None).unwrap();
        let t = h
            .extract(&meta("agent.ns1.actors.resources.substrate.ate.dev:8081"))
            .unwrap();
        assert_eq!(t.port, 80);
    }

    #[test]
    fn host_forms_with_case_dot_and_port() {
        let e = all();
        let t = host(&e, "Agent.NS1.Actors.Resources.Substrate.ATE.dev.:8081").unwrap();
        assert_eq!(
            (t.actor.as_str(), t.port, t.via),
            ("ns1/agent", 8081, ExtractorKind::Host)
        );
        let t = host(&e, "agent.actors.resources.substrate.ate.dev").unwrap();
        assert_eq!(
            (t.actor.as_str(), t.port, t.via),
            ("default/agent", 80, ExtractorKind::LegacyHost)
        );
    }

    #[test]
    fn invalid_forms() {
        let e = all();
        let long = "a".repeat(64);
        let cases = [
            "".to_string(),
            ".actors.resources.substrate.ate.dev".to_string(),
            "a..actors.resources.substrate.ate.dev".to_string(),
            format!("{long}.ns.actors.resources.substrate.ate.dev"),
            "a_b.ns.actors.resources.substrate.ate.dev".to_string(),
            "a.b.c.actors.resources.substrate.ate.dev".to_string(),
            "10.0.0.1".to_string(),
            "10.0.0.1:80".to_string(),
            "[::1]:80".to_string(),
            "example.com".to_string(),
            "agent.ns.actors.resources.substrate.ate.dev:".to_string(),
            "agent.ns.actors.resources.substrate.ate.dev:99999".to_string(),
            "agent.ns.actors.resources.substrate.ate.dev:0".to_string(),
            "actors.resources.substrate.ate.dev".to_string(),
        ];
        for h in &cases {
            assert_eq!(host(&e, h), Err(InvalidActorRef), "{h:?}");
        }
        for hdr in ["", "a", "a/b/c", "A_/b", "/b", "a/", &format!("a/{long}")] {
            let r = e.extract(&RequestMeta {
                target_actor: Some(hdr),
                authority: Some("agent.ns.actors.resources.substrate.ate.dev"),
            });
            assert_eq!(r, Err(InvalidActorRef), "header {hdr:?} must fail closed");
        }
        assert_eq!(e.extract(&RequestMeta::default()), Err(InvalidActorRef));
    }

    #[test]
    fn order_is_respected() {
        let e = Extractor::new(
            vec![ExtractorKind::Host, ExtractorKind::Header],
            "actors.example",
            None,
        )
        .unwrap();
        let t = e
            .extract(&RequestMeta {
                target_actor: Some("hdr/actor"),
                authority: Some("a.b.actors.example"),
            })
            .unwrap();
        assert_eq!(t.actor.as_str(), "b/a");
        // A gateway authority with a bad port is "not an actor host": the header still decides.
        for authority in ["gateway:notaport", "[::1]:8080", "[::1]"] {
            let t = e
                .extract(&RequestMeta {
                    target_actor: Some("hdr/actor"),
                    authority: Some(authority),
                })
                .unwrap();
            assert_eq!(t.actor.as_str(), "hdr/actor", "{authority}");
        }
        // Without legacy_host configured, a one-label host does not match.
        assert_eq!(host(&e, "a.actors.example"), Err(InvalidActorRef));
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            Extractor::new(vec![], "x", None).unwrap_err(),
            ExtractorConfigError::NoExtractors
        );
        assert!(matches!(
            Extractor::new(vec![ExtractorKind::Host], "bad_suffix", None),
            Err(ExtractorConfigError::BadSuffix(_))
        ));
        assert_eq!(
            Extractor::new(vec![ExtractorKind::LegacyHost], "a.b", None).unwrap_err(),
            ExtractorConfigError::LegacyWithoutAtespace
        );
    }
}
