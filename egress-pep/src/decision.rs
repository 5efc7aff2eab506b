//! The vocabulary of a decision (DESIGN §7.2): what the traffic looked like ([`Query`]), what was
//! decided ([`Decision`]: a [`Verdict`], a [`Reason`] code, the deciding [`RuleRef`]) and where the
//! PEP dials when it forwards ([`Dial`]). Reasons are low-cardinality codes: they label metrics and
//! audit records; the actor only ever sees `403 egress denied` / `503 egress unavailable`.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

/// What a tunnel's bytes look like to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic<'a> {
    /// A TLS ClientHello; `sni` as sent (`None` when the ClientHello has no server_name).
    Tls {
        /// The SNI, not yet normalised.
        sni: Option<&'a str>,
        /// Whether the PEP can intercept (`egress.interception` is configured): then an `https`
        /// rule allows the ClientHello (the connection is terminated and every request inside
        /// is decided as [`Traffic::Https`]); without it an `https` rule denies with
        /// [`Reason::InterceptionNotConfigured`] (DESIGN §7.2).
        interception: bool,
    },
    /// One cleartext HTTP/1.x request (decided per request).
    Http {
        /// The request's authority (`Host`, or the absolute-form target's), not yet normalised;
        /// its port is ignored (the dialed port is the original destination's).
        authority: &'a str,
        /// The request method (`GET`).
        method: &'a str,
        /// The request path without the query (`/v1/items`), as sent.
        path: &'a str,
    },
    /// One request decrypted inside an intercepted TLS connection (decided per request against
    /// `https` rules only, DESIGN §7.2).
    Https {
        /// The request's authority (`:authority`, or `Host`), not yet normalised; its port is
        /// ignored (the dialed port is the original destination's).
        authority: &'a str,
        /// The request method (`GET`).
        method: &'a str,
        /// The request path without the query, as sent.
        path: &'a str,
    },
    /// Anything else: unknown bytes, or nothing before the peek timeout (server-first protocols).
    Opaque,
}

/// One question to the policy: the original destination the actor dialed and what it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    /// The original destination (`ip:port`, the CONNECT target).
    pub dst: SocketAddr,
    /// The classified traffic.
    pub traffic: Traffic<'a>,
}

/// The outcome, as recorded in audit records and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Allowed by a rule.
    Allow,
    /// Refused.
    Deny,
    /// Would be refused, but the deciding policy or rule is in `audit` mode: it passes.
    Audit,
}

impl Verdict {
    /// `allow`, `deny` or `audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
        }
    }
    /// Whether the traffic passes (allow and audit).
    pub fn passes(self) -> bool {
        !matches!(self, Verdict::Deny)
    }
}

/// Why a decision came out as it did: a fixed code (for metrics labels and audit records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// A rule allowed it.
    Allowed,
    /// The actor has no policy (default deny).
    NoPolicy,
    /// The actor's policy has no rule matching the traffic (default deny).
    NoMatchingRule,
    /// The control plane sent a policy actorgate cannot take whole (upstream limits or
    /// grammar violated): everything is denied for that actor until it is fixed.
    PolicyInvalid,
    /// A TLS ClientHello without SNI where only name rules could match.
    NoSni,
    /// The SNI or authority is not a valid name or IP literal.
    InvalidAuthority,
    /// An `http` rule matched the name but not the request's method.
    MethodNotAllowed,
    /// An `http` rule matched the name but not the request's path.
    PathNotAllowed,
    /// An `https` rule matched, but interception is not configured (DESIGN §7.2).
    InterceptionNotConfigured,
    /// The destination is an actor; actor-to-actor forwarding is not configured (DESIGN §7.4).
    ActorForwardingNotConfigured,
    /// Traffic to one of the configured ingress addresses that names no actor (no actor host
    /// in its SNI, authority or CONNECT `ate-destination-host`, DESIGN §7.4).
    ActorTargetUnknown,
    /// A request or CONNECT that a PEP already forwarded (its `Via` names `actorgate-pep`)
    /// arrived at a PEP again (DESIGN §7.4).
    ForwardingLoop,
    /// Ingress refused the forwarded CONNECT to an actor (its status is logged), or could not
    /// be reached.
    ActorUnreachable,
    /// A credential provider refused the secret (NOT_FOUND, PERMISSION_DENIED and other
    /// errors as upstream maps them, DESIGN §9), or the source is unknown.
    CredentialDenied,
    /// A credential source did not answer (UNAVAILABLE, DEADLINE_EXCEEDED, a timeout), or the
    /// secret is unusable (empty, a control byte).
    CredentialUnavailable,
    /// A rule would inject a credential into a request the PEP sends in cleartext, and does not
    /// allow it (DESIGN §7.3).
    CredentialNeedsTls,
    /// The address about to be dialled is in a guarded range (DESIGN §7.2 guard).
    Guarded,
    /// A hostname rule's name resolved into a private range the rule does not allow.
    PrivateAddress,
    /// The authorised name did not resolve (or resolved to nothing dialable).
    ResolveFailed,
    /// Dialling the destination failed (refused, unreachable, timed out).
    DialFailed,
    /// The client certificate carries no acceptable identity.
    IdentityInvalid,
    /// A component certificate not on the agent allow-list.
    ComponentNotAllowed,
    /// The egress assertion is missing, invalid, expired, for another audience or destination.
    AssertionInvalid,
    /// The egress assertion's `jti` was seen before.
    AssertionReplayed,
    /// The actor does not exist (`GetActor` NOT_FOUND).
    ActorNotFound,
    /// The actor exists but is not RUNNING, or its UID differs from the identity's.
    ActorNotRunning,
    /// The control plane (actor state or policy) did not answer.
    ControlPlaneUnavailable,
    /// The CONNECT target is not an IP literal with a port.
    BadTarget,
    /// The cleartext request is malformed (duplicate `Host`, `Host` vs absolute-form, CL+TE).
    BadRequest,
    /// The PEP is draining and takes no new tunnels.
    Draining,
    /// The tunnel's first bytes looked like TLS or HTTP but did not complete within the
    /// classification limits (size, time), or could not be read (the client went away, also
    /// before its `200`).
    Unclassified,
    /// A cleartext HTTP tunnel: not decided as a whole, each request is (tunnel records only).
    PerRequest,
    /// A TLS tunnel the PEP intercepted: its requests are decided one by one (tunnel records
    /// only; each request has its own record).
    Intercepted,
    /// An intercepted request's authority is not the name the connection's leaf certificate
    /// was minted for (`421 Misdirected Request`, RFC 9110 §15.5.20).
    NotCoveredByCertificate,
    /// An intercepted request's `:authority` and `Host` disagree (DESIGN §7.2).
    AuthorityMismatch,
    /// The re-originated TLS connection's server certificate did not verify against the
    /// upstream roots (`502`).
    UpstreamCertificateInvalid,
    /// The re-originated TLS handshake failed for another reason, or the server refused the
    /// protocol the request needs (`502`).
    UpstreamTlsFailed,
    /// An intercepted connection that does not carry HTTP (the actor offered no HTTP ALPN).
    NotHttp,
    /// The TLS handshake with the actor failed (it does not trust the interception CA, timed
    /// out, or no leaf could be minted).
    InterceptHandshakeFailed,
}

impl Reason {
    /// The code, e.g. `no_matching_rule`; also the metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::NoPolicy => "no_policy",
            Reason::NoMatchingRule => "no_matching_rule",
            Reason::PolicyInvalid => "policy_invalid",
            Reason::NoSni => "no_sni",
            Reason::InvalidAuthority => "invalid_authority",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::PathNotAllowed => "path_not_allowed",
            Reason::InterceptionNotConfigured => "interception_not_configured",
            Reason::ActorForwardingNotConfigured => "actor_forwarding_not_configured",
            Reason::ActorTargetUnknown => "actor_target_unknown",
            Reason::ForwardingLoop => "forwarding_loop",
            Reason::ActorUnreachable => "actor_unreachable",
            Reason::CredentialDenied => "credential_denied",
            Reason::CredentialUnavailable => "credential_unavailable",
            Reason::CredentialNeedsTls => "credential_needs_tls",
            Reason::Guarded => "guarded",
            Reason::PrivateAddress => "private_address",
            Reason::ResolveFailed => "resolve_failed",
            Reason::DialFailed => "dial_failed",
            Reason::IdentityInvalid => "identity_invalid",
            Reason::ComponentNotAllowed => "component_not_allowed",
            Reason::AssertionInvalid => "assertion_invalid",
            Reason::AssertionReplayed => "assertion_replayed",
            Reason::ActorNotFound => "actor_not_found",
            Reason::ActorNotRunning => "actor_not_running",
            Reason::ControlPlaneUnavailable => "control_plane_unavailable",
            Reason::BadTarget => "bad_target",
            Reason::BadRequest => "bad_request",
            Reason::Draining => "draining",
            Reason::Unclassified => "unclassified",
            Reason::PerRequest => "per_request",
            Reason::Intercepted => "intercepted",
            Reason::NotCoveredByCertificate => "not_covered_by_certificate",
            Reason::AuthorityMismatch => "authority_mismatch",
            Reason::UpstreamCertificateInvalid => "upstream_certificate_invalid",
            Reason::UpstreamTlsFailed => "upstream_tls_failed",
            Reason::NotHttp => "not_http",
            Reason::InterceptHandshakeFailed => "intercept_handshake_failed",
        }
    }

    /// A human sentence for logs and `actorgate policy test` (DESIGN §7.2 wording where it has
    /// one, e.g. `interception not configured`).
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed by rule",
            Reason::NoPolicy => "no policy for this actor",
            Reason::NoMatchingRule => "no rule matches",
            Reason::PolicyInvalid => "the actor's policy from the control plane is invalid",
            Reason::NoSni => "TLS ClientHello without SNI",
            Reason::InvalidAuthority => "invalid SNI or authority",
            Reason::MethodNotAllowed => "method not allowed by the matching rule",
            Reason::PathNotAllowed => "path not allowed by the matching rule",
            Reason::InterceptionNotConfigured => "interception not configured",
            Reason::ActorForwardingNotConfigured => "actor forwarding not configured",
            Reason::ActorTargetUnknown => "traffic to ingress names no actor",
            Reason::ForwardingLoop => "forwarding loop: a PEP already forwarded this",
            Reason::ActorUnreachable => "ingress did not open the tunnel to the actor",
            Reason::CredentialDenied => "the credential source refused the secret",
            Reason::CredentialUnavailable => "the credential source did not answer usably",
            Reason::CredentialNeedsTls => "a credential would go upstream in cleartext",
            Reason::Guarded => "destination in a guarded range",
            Reason::PrivateAddress => "name resolves into a private range",
            Reason::ResolveFailed => "name did not resolve",
            Reason::DialFailed => "upstream dial failed",
            Reason::IdentityInvalid => "client certificate identity invalid",
            Reason::ComponentNotAllowed => "component not on the agent allow-list",
            Reason::AssertionInvalid => "egress assertion invalid",
            Reason::AssertionReplayed => "egress assertion replayed",
            Reason::ActorNotFound => "actor not found",
            Reason::ActorNotRunning => "actor not running",
            Reason::ControlPlaneUnavailable => "control plane unavailable",
            Reason::BadTarget => "CONNECT target is not an IP literal with a port",
            Reason::BadRequest => "malformed request",
            Reason::Draining => "draining",
            Reason::Unclassified => "first bytes did not classify within the limits",
            Reason::PerRequest => "cleartext HTTP, decided per request",
            Reason::Intercepted => "intercepted TLS, decided per request",
            Reason::NotCoveredByCertificate => {
                "authority not covered by the connection's certificate"
            }
            Reason::AuthorityMismatch => ":authority and Host disagree",
            Reason::UpstreamCertificateInvalid => "upstream certificate invalid",
            Reason::UpstreamTlsFailed => "upstream TLS handshake failed",
            Reason::NotHttp => "intercepted connection is not HTTP",
            Reason::InterceptHandshakeFailed => "TLS handshake with the actor failed",
        }
    }

    /// The HTTP status the actor sees when this reason refuses a CONNECT or a readable request:
    /// 503 for a dependency that did not answer, 400 for a malformed cleartext request, 502 for
    /// a re-originated TLS connection that failed, 421 for an intercepted request whose
    /// authority the connection's certificate does not cover, 403 otherwise (DESIGN §7.1, §9
    /// denial bodies).
    pub fn status(self) -> http::StatusCode {
        match self {
            Reason::ControlPlaneUnavailable
            | Reason::ResolveFailed
            | Reason::DialFailed
            | Reason::ActorUnreachable
            | Reason::CredentialUnavailable
            | Reason::Draining => http::StatusCode::SERVICE_UNAVAILABLE,
            Reason::BadRequest => http::StatusCode::BAD_REQUEST,
            Reason::UpstreamCertificateInvalid | Reason::UpstreamTlsFailed => {
                http::StatusCode::BAD_GATEWAY
            }
            Reason::NotCoveredByCertificate => http::StatusCode::MISDIRECTED_REQUEST,
            _ => http::StatusCode::FORBIDDEN,
        }
    }
}

/// The kind of rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Cleartext HTTP by hostname (upstream `HTTPRule`).
    Http,
    /// Intercepted HTTPS by hostname (upstream `HTTPSRule`).
    Https,
    /// TLS passed through by SNI (upstream `TLSPassthroughRule`).
    TlsPassthrough,
    /// Original destination by CIDR and port (extension).
    Tcp,
    /// Actor-to-actor targets (extension, DESIGN §7.4).
    Actors,
}

impl RuleKind {
    /// `http`, `https`, `tls_passthrough`, `tcp` or `actors` (the file format's keys).
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Http => "http",
            RuleKind::Https => "https",
            RuleKind::TlsPassthrough => "tls_passthrough",
            RuleKind::Tcp => "tcp",
            RuleKind::Actors => "actors",
        }
    }
}

/// The rule that decided: which policy, its position, its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// The policy's name (`default` for upstream policies; the file policy's `name`).
    pub policy: Arc<str>,
    /// The rule's index within the policy (0-based, the order written).
    pub index: usize,
    /// The rule's kind.
    pub kind: RuleKind,
}

/// Where the PEP dials when traffic passes (DESIGN §7.2 "Where traffic goes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    /// Resolve `host` with the PEP's own resolver and dial `port` (hostname rules); the
    /// answers pass the guard, and private ranges only when `allow_private`.
    Name {
        /// The normalised, authorised name (lowercase, no trailing dot).
        host: Arc<str>,
        /// The port the actor dialed.
        port: u16,
        /// Whether the deciding rule lets this name reach the configured private ranges.
        allow_private: bool,
    },
    /// Dial the original destination (`tcp` rules, and `*` on an IP-literal authority).
    Address {
        /// `ip:port`.
        addr: SocketAddr,
        /// The deciding `tcp` rule's CIDR, when a `tcp` rule decided: a guarded address is
        /// dialled only when this CIDR lies inside the guarded range (DESIGN §7.2 guard).
        tcp_rule: Option<ipnet::IpNet>,
    },
    /// Forward to ingress as a trusted peer (actor-to-actor, DESIGN §7.4): readable requests
    /// with `ate-target-actor`/`ate-source-actor`, other traffic as `CONNECT <host>:<port>`.
    Actor {
        /// The target actor.
        target: routing_core::ActorRef,
        /// The actor host as the caller named it (normalised: lowercase, no trailing dot).
        host: Arc<str>,
        /// The port the caller dialed (the actor port ingress routes to).
        port: u16,
    },
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow, deny or audit.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The deciding rule (`None` for default deny and identity failures).
    pub rule: Option<RuleRef>,
    /// Where to dial when the verdict passes (`None` on deny).
    pub dial: Option<Dial>,
    /// The deciding rule's credential headers when it allowed (DESIGN §7.3); `None` otherwise.
    pub effects: Option<Arc<[crate::policy::model::CredentialHeader]>>,
}

impl Decision {
    /// A denial with no deciding rule.
    pub fn deny(reason: Reason) -> Self {
        Decision {
            verdict: Verdict::Deny,
            reason,
            rule: None,
            dial: None,
            effects: None,
        }
    }

    /// This decision overturned after it passed (the certificate, a dial, a credential):
    /// denied with `reason`, the deciding rule kept for the record.
    pub fn overturn(&mut self, reason: Reason) {
        *self = Decision {
            verdict: Verdict::Deny,
            reason,
            rule: self.rule.take(),
            dial: None,
            effects: None,
        };
    }
}
