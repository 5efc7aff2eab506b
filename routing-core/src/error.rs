//! The routing error model and its HTTP mapping (DESIGN §4). Bodies are client-safe: they name
//! the actor and, for capacity-type failures, the control plane's own short description, never
//! transport errors or `rpc error:` text.

use crate::actor_ref::ActorRef;

/// Why a request could not be routed. `http_status()` and `client_message()` give the exact
/// answer of DESIGN §4's table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The request named no valid actor.
    #[error("invalid actor reference")]
    InvalidActorRef,
    /// The control plane does not know the actor.
    #[error("actor {0} not found")]
    NotFound(ActorRef),
    /// FAILED_PRECONDITION, RESOURCE_EXHAUSTED or ABORTED after retries; carries the server's
    /// (sanitised) description.
    #[error("actor {actor} unavailable: {detail}")]
    Unavailable {
        /// The actor.
        actor: ActorRef,
        /// The server's description, sanitised.
        detail: String,
    },
    /// The control plane could not be reached (UNAVAILABLE).
    #[error("actor {0} unavailable")]
    ControlPlaneUnavailable(ActorRef),
    /// Too many requests already wait for actors to resume.
    #[error("actor {0} unavailable: router at capacity")]
    AtCapacity(ActorRef),
    /// DEADLINE_EXCEEDED, or the resolve budget ran out.
    #[error("actor {0} request timed out")]
    Timeout(ActorRef),
    /// PERMISSION_DENIED.
    #[error("actor {0} access denied")]
    AccessDenied(ActorRef),
    /// UNAUTHENTICATED.
    #[error("actor {0} authentication required")]
    Unauthenticated(ActorRef),
    /// The control plane returned no usable worker address.
    #[error("actor {0} routing failed")]
    RoutingFailed(ActorRef),
    /// Any other failure.
    #[error("error resuming actor {0}")]
    Internal(ActorRef),
}

impl RouteError {
    /// The HTTP status clients receive.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidActorRef | Self::NotFound(_) => 404,
            Self::Unavailable { .. } | Self::ControlPlaneUnavailable(_) | Self::AtCapacity(_) => {
                503
            }
            Self::Timeout(_) => 504,
            Self::AccessDenied(_) => 403,
            Self::Unauthenticated(_) => 401,
            Self::RoutingFailed(_) | Self::Internal(_) => 500,
        }
    }

    /// The response body clients receive (`text/plain`).
    pub fn client_message(&self) -> String {
        self.to_string()
    }

    /// The gRPC code that best expresses this error, for gRPC-speaking fronts.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::InvalidActorRef => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::Unavailable { .. } => tonic::Code::FailedPrecondition,
            Self::ControlPlaneUnavailable(_) => tonic::Code::Unavailable,
            Self::AtCapacity(_) => tonic::Code::ResourceExhausted,
            Self::Timeout(_) => tonic::Code::DeadlineExceeded,
            Self::AccessDenied(_) => tonic::Code::PermissionDenied,
            Self::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Self::RoutingFailed(_) | Self::Internal(_) => tonic::Code::Internal,
        }
    }

    /// A low-cardinality label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidActorRef => "invalid_ref",
            Self::NotFound(_) => "not_found",
            Self::Unavailable { .. } => "unavailable",
            Self::ControlPlaneUnavailable(_) => "control_plane_unavailable",
            Self::AtCapacity(_) => "at_capacity",
            Self::Timeout(_) => "timeout",
            Self::AccessDenied(_) => "access_denied",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::RoutingFailed(_) => "routing_failed",
            Self::Internal(_) => "internal",
        }
    }

    /// The actor the error is about, when the request named one.
    pub fn actor(&self) -> Option<&ActorRef> {
        match self {
            Self::InvalidActorRef => None,
            Self::NotFound(a)
            | Self::Unavailable { actor: a, .. }
            | Self::ControlPlaneUnavailable(a)
            | Self::AtCapacity(a)
            | Self::Timeout(a)
            | Self::AccessDenied(a)
            | Self::Unauthenticated(a)
            | Self::RoutingFailed(a)
            | Self::Internal(a) => Some(a),
        }
    }
}

impl From<crate::extract::InvalidActorRef> for RouteError {
    fn from(_: crate::extract::InvalidActorRef) -> Self {
        Self::InvalidActorRef
    }
}

/// Longest server description passed on to clients.
const MAX_DETAIL_LEN: usize = 200;

/// Makes a control-plane status message safe to show a client: drops a Go-style
/// `rpc error: code = X desc = ` prefix, control characters, and anything past 200 bytes.
pub fn sanitize_detail(message: &str) -> String {
    let mut m = message.trim();
    // A wrapped Go gRPC error: keep only the innermost description, or nothing.
    if m.contains("rpc error:") {
        m = match m.rfind("desc = ") {
            Some(i) => m[i + "desc = ".len()..].trim(),
            None => "",
        };
        if m.contains("rpc error:") {
            m = "";
        }
    }
    let mut out = String::with_capacity(m.len().min(MAX_DETAIL_LEN));
    for c in m.chars() {
        if out.len() + c.len_utf8() > MAX_DETAIL_LEN {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    if out.is_empty() {
        out.push_str("no details");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> ActorRef {
        ActorRef::parse("ns/act").unwrap()
    }

    #[test]
    fn table() {
        let rows: Vec<(RouteError, u16, &str)> = vec![
            (RouteError::InvalidActorRef, 404, "invalid actor reference"),
            (RouteError::NotFound(a()), 404, "actor ns/act not found"),
            (
                RouteError::Unavailable {
                    actor: a(),
                    detail: "no free workers available".into(),
                },
                503,
                "actor ns/act unavailable: no free workers available",
            ),
            (
                RouteError::ControlPlaneUnavailable(a()),
                503,
                "actor ns/act unavailable",
            ),
            (
                RouteError::AtCapacity(a()),
                503,
                "actor ns/act unavailable: router at capacity",
            ),
            (
                RouteError::Timeout(a()),
                504,
                "actor ns/act request timed out",
            ),
            (
                RouteError::AccessDenied(a()),
                403,
                "actor ns/act access denied",
            ),
            (
                RouteError::Unauthenticated(a()),
                401,
                "actor ns/act authentication required",
            ),
            (
                RouteError::RoutingFailed(a()),
                500,
                "actor ns/act routing failed",
            ),
            (
                RouteError::Internal(a()),
                500,
                "error resuming actor ns/act",
            ),
        ];
        for (e, status, body) in rows {
            assert_eq!(e.http_status(), status, "{e:?}");
            assert_eq!(e.client_message(), body);
        }
    }

    #[test]
    fn sanitizes_server_detail() {
        assert_eq!(
            sanitize_detail(
                "rpc error: code = FailedPrecondition desc = no free workers available"
            ),
            "no free workers available"
        );
        assert_eq!(
            sanitize_detail(
                "failed to place: rpc error: code = Unavailable desc = no free workers available"
            ),
            "no free workers available"
        );
        assert_eq!(
            sanitize_detail("wrapped rpc error: code = Internal"),
            "no details"
        );
        assert_eq!(sanitize_detail("a\nb\u{7}c"), "a b c");
        assert_eq!(sanitize_detail(""), "no details");
        assert_eq!(sanitize_detail(&"x".repeat(1000)).len(), 200);
        assert_eq!(sanitize_detail(&"é".repeat(1000)).len(), 200);
    }
}
