//! The actor wire names — every header and Envoy metadata key or value that actorgate itself
//! reads or writes — in one place, and the one fail-closed read of the actors a request names.
//!
//! Each header name is an [`http::HeaderName`] static for the HTTP fronts (the proxy, the HTTP
//! resolve endpoint); [`name`] holds the same names as `&str` for what sees headers and metadata
//! as strings (Envoy ExtProc header mutations and dynamic metadata, the `ResolveRoute` gRPC
//! API's header map, `match` arms). The statics are built from [`name`], so each name is written
//! once.
//!
//! Reading: fronts collect every value of `ate-target-actor` into a [`Values`] (all lines of a
//! header map with [`Values::header`], or name/value pairs with
//! [`MetaInput::push_header`](crate::validate::MetaInput::push_header)) and request validation
//! reads the reference with [`target_actor`]: two values or a non-UTF-8 value are an invalid
//! reference, never a silent pick of one of them. [`source_actor`] is the same rule for
//! `ate-source-actor`.

use http::HeaderName;

use crate::actor_ref::ActorRef;
use crate::validate::Values;

/// The wire names as strings, for gRPC, Envoy and `match` arms. Each is documented at the
/// [`HeaderName`] static of the same name in the parent module, or here when it is not a header.
pub mod name {
    /// `ate-target-actor`; see [`super::TARGET_ACTOR`].
    pub const TARGET_ACTOR: &str = "ate-target-actor";
    /// `ate-source-actor`; see [`super::SOURCE_ACTOR`].
    pub const SOURCE_ACTOR: &str = "ate-source-actor";
    /// `x-ate-target-port`; see [`super::TARGET_PORT`].
    pub const TARGET_PORT: &str = "x-ate-target-port";
    /// `x-ate-assignment-stale`; see [`super::ASSIGNMENT_STALE`].
    pub const ASSIGNMENT_STALE: &str = "x-ate-assignment-stale";
    /// `x-gateway-destination-endpoint`; see [`super::GATEWAY_DESTINATION_ENDPOINT`]. Also the
    /// key inside the [`LB_NAMESPACE`] dynamic metadata.
    pub const GATEWAY_DESTINATION_ENDPOINT: &str = "x-gateway-destination-endpoint";
    /// `x-actor-template`; see [`super::ACTOR_TEMPLATE`].
    pub const ACTOR_TEMPLATE: &str = "x-actor-template";
    /// `x-actorgate-status`; see [`super::ACTORGATE_STATUS`].
    pub const ACTORGATE_STATUS: &str = "x-actorgate-status";
    /// `x-actorgate-message`; see [`super::ACTORGATE_MESSAGE`].
    pub const ACTORGATE_MESSAGE: &str = "x-actorgate-message";
    /// `envoy.lb`: the Envoy dynamic metadata namespace an ExtProc answer puts the worker endpoint
    /// in, under [`GATEWAY_DESTINATION_ENDPOINT`] (DESIGN §5; the Gateway API Inference
    /// Extension endpoint-picker convention, read by `override_host` and ORIGINAL_DST clusters).
    pub const LB_NAMESPACE: &str = "envoy.lb";
    /// `actorgate`: the Envoy filter metadata namespace an ExtProc stream's messages carry the
    /// stream's direction in (DESIGN §1: one ExtProc service serves both directions; the
    /// binary's dispatcher picks the handler; docs/integrations.md).
    pub const ACTORGATE_NAMESPACE: &str = "actorgate";
    /// `direction`: the key of the direction in the [`ACTORGATE_NAMESPACE`] filter metadata.
    pub const DIRECTION_KEY: &str = "direction";
    /// `ingress`: the [`DIRECTION_KEY`] value of ingress streams, and the direction of a stream
    /// that names none.
    pub const INGRESS_DIRECTION: &str = "ingress";
}

/// `ate-target-actor: <atespace>/<name>`: the actor a request is for (DESIGN §2, the first
/// extractor). Fronts overwrite it with the resolved actor before the request goes on (DESIGN §5:
/// ExtProc, so a client value cannot redirect after resolution; the proxy likewise), and the
/// upstream worker agent reads it in agent mode (DESIGN §3). Read it with [`target_actor`].
pub static TARGET_ACTOR: HeaderName = HeaderName::from_static(name::TARGET_ACTOR);

/// `ate-source-actor: <atespace>/<name>`: the verified actor an actor-to-actor call comes from,
/// set by the egress PEP (DESIGN §7.4). Honoured only from trusted peers (DESIGN §5) and
/// stripped from everyone else, so an external client can never claim to be an actor. Read it
/// with [`source_actor`].
pub static SOURCE_ACTOR: HeaderName = HeaderName::from_static(name::SOURCE_ACTOR);

/// `x-ate-target-port: <port>`: the actor port a request is for, sent to the upstream worker
/// agent (atunnel) in worker agent mode (DESIGN §3). Set by every front in agent mode and
/// removed from client requests otherwise, so a client never picks a worker port.
pub static TARGET_PORT: HeaderName = HeaderName::from_static(name::TARGET_PORT);

/// `x-ate-assignment-stale: true`: the upstream worker agent marks its `421` with it when the
/// actor no longer runs on that worker (DESIGN §3); the proxy then re-resolves and retries once,
/// and never passes the marker on to the client.
pub static ASSIGNMENT_STALE: HeaderName = HeaderName::from_static(name::ASSIGNMENT_STALE);

/// `x-gateway-destination-endpoint: <ip:port>`: the worker endpoint to send the request to — the
/// Gateway API Inference Extension endpoint-picker convention (DESIGN §5), set by ExtProc (as a
/// header and in [`name::LB_NAMESPACE`] metadata) and by the HTTP resolve endpoint. Only
/// actorgate sets it: a client's value is removed from untrusted requests.
pub static GATEWAY_DESTINATION_ENDPOINT: HeaderName =
    HeaderName::from_static(name::GATEWAY_DESTINATION_ENDPOINT);

/// `x-actor-template: <namespace>/<name>`: the resolved actor's template, in a successful answer
/// of the HTTP resolve endpoint (DESIGN §5; docs/integrations.md).
pub static ACTOR_TEMPLATE: HeaderName = HeaderName::from_static(name::ACTOR_TEMPLATE);

/// `x-actorgate-status: <status>`: the HTTP status of a failed `/resolve`, repeated in a header
/// so a forward-auth proxy that only passes 2xx/401/403 from its subrequest (nginx
/// `auth_request`) can answer with it; `/resolve/error` reads it back (docs/integrations.md).
pub static ACTORGATE_STATUS: HeaderName = HeaderName::from_static(name::ACTORGATE_STATUS);

/// `x-actorgate-message: <message>`: the client-safe message of a failed `/resolve`, the partner
/// of [`ACTORGATE_STATUS`].
pub static ACTORGATE_MESSAGE: HeaderName = HeaderName::from_static(name::ACTORGATE_MESSAGE);

/// The reference a request names in `ate-target-actor`, read fail-closed: `None` when the header
/// is absent; the value when there is exactly one and it is UTF-8; otherwise `Some("")` — an
/// invalid reference that extraction refuses (`404 invalid actor reference`), so two values or an
/// undecodable one never become "absent" (which would let the authority decide) nor a pick of one
/// value. The reference itself is checked by extraction ([`crate::Extractor`]).
pub fn target_actor(values: Values<'_>) -> Option<&str> {
    match values {
        Values::Absent => None,
        Values::One(v) => Some(std::str::from_utf8(v).unwrap_or("")),
        Values::Many => Some(""),
    }
}

/// The source actor a trusted peer names in `ate-source-actor`: exactly one value that is a
/// valid `<atespace>/<name>`, or `None` (absent, several values, not UTF-8, or malformed — the
/// header is then not passed on).
pub fn source_actor(values: Values<'_>) -> Option<ActorRef> {
    match values {
        Values::One(v) => ActorRef::parse(std::str::from_utf8(v).ok()?).ok(),
        Values::Absent | Values::Many => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statics_carry_their_names() {
        for (h, s) in [
            (&TARGET_ACTOR, name::TARGET_ACTOR),
            (&SOURCE_ACTOR, name::SOURCE_ACTOR),
            (&TARGET_PORT, name::TARGET_PORT),
            (&ASSIGNMENT_STALE, name::ASSIGNMENT_STALE),
            (
                &GATEWAY_DESTINATION_ENDPOINT,
                name::GATEWAY_DESTINATION_ENDPOINT,
            ),
            (&ACTOR_TEMPLATE, name::ACTOR_TEMPLATE),
            (&ACTORGATE_STATUS, name::ACTORGATE_STATUS),
            (&ACTORGATE_MESSAGE, name::ACTORGATE_MESSAGE),
        ] {
            assert_eq!(h.as_str(), s);
        }
    }

    #[test]
    fn target_actor_fails_closed() {
        assert_eq!(target_actor(Values::Absent), None);
        assert_eq!(target_actor(Values::One(b"demo/hello")), Some("demo/hello"));
        assert_eq!(target_actor(Values::Many), Some(""), "two values");
        assert_eq!(
            target_actor(Values::One(b"\xff/\xfe")),
            Some(""),
            "not UTF-8"
        );
    }

    #[test]
    fn source_actor_needs_exactly_one_valid_value() {
        assert_eq!(
            source_actor(Values::One(b"demo/caller")).map(|a| a.to_string()),
            Some("demo/caller".to_owned())
        );
        assert_eq!(source_actor(Values::Absent), None);
        assert_eq!(source_actor(Values::Many), None);
        assert_eq!(source_actor(Values::One(b"not a ref")), None);
        assert_eq!(source_actor(Values::One(b"\xff/x")), None);
    }
}
