//! The reverse proxy: request → actor (routing core) → worker, with correct proxy semantics.
//!
//! * Routing errors answer with DESIGN §4's status and `text/plain` body.
//! * Hop-by-hop headers go; `X-Forwarded-*`/`Forwarded` are appended; `x-request-id` is kept or
//!   generated and returned; `Host` is preserved; identity headers of untrusted clients go;
//!   `ate-target-actor` is set to the resolved actor.
//! * Bodies stream both ways; HTTP/1.1 upgrades (WebSocket) are tunneled; gRPC goes to the worker
//!   over HTTP/2 with trailers.
//! * A worker that refuses the connection or answers 421 invalidates the cached route; the
//!   request is re-resolved and retried once when that is safe (it has no body).
//! * Timeouts: connect (502), response headers (504; 408 when the worker was still waiting for
//!   the client's body), body idle (the stream is cut).
//! * Everything that can refuse a request (validation, the header-count limit) runs before
//!   routing, so a refused request never resumes an actor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use identity::tls::ReloadableClientConfig;
use routing_core::validate::{MetaInput, Values, scheme_default_port};
use routing_core::wire::{ASSIGNMENT_STALE, SOURCE_ACTOR, TARGET_ACTOR, TARGET_PORT};
use routing_core::{Resolver, Route, RouteError, Target, WorkerTransport};

use crate::body::{BodyProgress, ClientBodyError, ProxyBody, UpstreamBody};
use crate::connector::WorkerConnector;
use crate::headers::{
    REQUEST_ID, add_forwarded, ensure_request_id, merge_cookies, remove_hop_by_hop,
    untrusted_identity_headers, wants_upgrade,
};
use crate::local_reply::LocalReply;
use crate::metrics::{IngressMetrics, Outcome};

/// Which HTTP version to speak to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/2 (prior knowledge) for gRPC, HTTP/1.1 for everything else.
    #[default]
    Auto,
    /// HTTP/1.1 for everything.
    Http1,
    /// HTTP/2 prior knowledge for everything except upgrades.
    Http2,
}

/// Proxy tuning.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Longest TCP connect to a worker (TLS handshake: twice this, connect included); a refused
    /// or unreachable worker's route is re-resolved and a bodiless request retried once.
    pub connect_timeout: Duration,
    /// From sending the request to the worker's response headers; past it: 504.
    pub response_timeout: Duration,
    /// Longest pause in a worker's response body; past it the stream is cut. Also the longest a
    /// WebSocket or trusted-peer CONNECT tunnel may carry no byte either way before it closes.
    pub idle_timeout: Duration,
    /// Which HTTP version the proxy speaks to workers.
    pub upstream_protocol: UpstreamProtocol,
    /// How long an idle pooled worker connection is kept.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept per worker (HTTP/1.1).
    pub pool_max_idle_per_host: usize,
    /// Most headers a request may carry to the worker, counting those the proxy adds
    /// (`x-forwarded-*`, `forwarded`, `x-request-id`, `ate-target-actor`, …); past it: 431.
    /// The listener's `max_headers`.
    pub max_headers: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            upstream_protocol: UpstreamProtocol::Auto,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            max_headers: 100,
        }
    }
}

/// What the listener knows about a client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// Whether the client connected over TLS.
    pub tls: bool,
    /// The certificate the client presented and the TLS handshake verified (mutual TLS), with
    /// its SPIFFE ID; `None` for plaintext clients and TLS clients without a certificate.
    pub peer_identity: Option<Arc<runtime::PeerIdentity>>,
    /// The peer may set `ate-source-actor` and CONNECT to actors: its verified certificate is
    /// on the listener's trusted peers (`ingress.https.trusted_peers`).
    pub trusted_source: bool,
}

impl ConnInfo {
    /// The client certificate's SPIFFE ID, when it presented one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.peer_identity.as_ref()?.spiffe_id.as_deref()
    }
}

struct Inner {
    resolver: Resolver,
    h1: Client<WorkerConnector, UpstreamBody>,
    h2: Client<WorkerConnector, UpstreamBody>,
    /// `http` or `https` (TLS to the worker agent).
    scheme: &'static str,
    settings: ProxySettings,
    metrics: IngressMetrics,
}

/// The proxy service. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    /// Held by upgraded connections (WebSocket tunnels), so a drain waits for them.
    drain: runtime::DrainSignal,
}

/// The parts of a request needed to send it again.
struct Replay {
    method: http::Method,
    version: Version,
    headers: http::HeaderMap,
}

/// A reply the proxy makes itself: `text/plain` for HTTP clients, marked with its
/// [`LocalReply`] so that [`Proxy::handle`] can answer gRPC clients in gRPC's own form.
fn local_response(reply: LocalReply, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::text(reply.message.clone()));
    *r.status_mut() = reply.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(&REQUEST_ID, request_id.clone());
    r.extensions_mut().insert(reply);
    r
}

/// A local reply whose gRPC code follows from its HTTP status.
fn text_response(
    status: StatusCode,
    body: String,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    local_response(LocalReply::http(status, body), request_id)
}

/// A 400 refusal of the client's request: `INVALID_ARGUMENT` for gRPC clients, as the same
/// refusal is on ExtProc and ResolveRoute (`BadRequest::grpc_code`).
fn bad_request(message: String, request_id: &HeaderValue) -> Response<ProxyBody> {
    local_response(
        LocalReply::with_code(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            message,
        ),
        request_id,
    )
}

/// A routing error's reply: DESIGN §4's status and body, marked with the error's gRPC code.
fn route_error(e: &RouteError, request_id: &HeaderValue) -> Response<ProxyBody> {
    local_response(LocalReply::route(e), request_id)
}

/// The port an authority without one stands for under the request's scheme (absolute form,
/// HTTP/2 `:scheme`); `None` for origin-form HTTP/1.1 requests.
fn default_port(uri: &Uri) -> Option<u16> {
    uri.scheme_str()
        .and_then(|s| scheme_default_port(s.as_bytes()))
}

impl Proxy {
    /// Builds the proxy and its pooled worker clients. With `worker_tls`, workers are dialed over
    /// TLS (the worker agent's mTLS), checked against that config's expected identity.
    /// Upgraded connections (WebSocket tunnels) are spawned under `drain`, so a shutdown waits
    /// for them, and one still open at the drain deadline is closed (and counted by the drain).
    pub fn new(
        resolver: Resolver,
        settings: ProxySettings,
        metrics: IngressMetrics,
        worker_tls: Option<Arc<ReloadableClientConfig>>,
        drain: runtime::DrainSignal,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        // TCP connect and TLS handshake together get twice the connect timeout.
        let handshake = settings.connect_timeout * 2;
        let h1_connector = WorkerConnector::new(http.clone(), worker_tls.clone(), false, handshake);
        let h2_connector = WorkerConnector::new(http, worker_tls, true, handshake);
        let scheme = h1_connector.scheme();
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(h1_connector);
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .build(h2_connector);
        Self {
            inner: Arc::new(Inner {
                resolver,
                h1,
                h2,
                scheme,
                settings,
                metrics,
            }),
            drain,
        }
    }

    /// The resolver behind the proxy.
    pub fn resolver(&self) -> &Resolver {
        &self.inner.resolver
    }

    /// Proxies one request. Never fails: every problem becomes a response. For gRPC requests
    /// (`content-type: application/grpc*`) every reply the proxy makes itself is a gRPC
    /// Trailers-Only response (see [`crate::local_reply`]).
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let grpc = crate::local_reply::grpc_reply_content_type(req.headers());
        let resp = self.proxy_request(req, conn, grpc.is_some()).await;
        match grpc {
            Some(content_type) => crate::local_reply::into_grpc(resp, content_type),
            None => resp,
        }
    }

    /// The proxy proper; [`Proxy::handle`] wraps it. `grpc`: the request's content type is
    /// gRPC's (looked up once, by `handle`).
    async fn proxy_request(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        grpc: bool,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        let request_id = ensure_request_id(&mut parts.headers);
        if parts.method == http::Method::CONNECT && conn.trusted_source {
            return self.actor_tunnel(parts, &request_id).await;
        }
        if let Some(refusal) = self.check_request(&parts, &request_id) {
            return refusal;
        }
        // One authority for routing and for what the worker is told: the request target's
        // (absolute form, HTTP/2 :authority) or else Host (RFC 9112 §3.2.2), checked by the rules
        // every front shares (routing_core::validate), which also extract the target once.
        let (target, host) = {
            let input = MetaInput {
                target_actor: Values::header(&parts.headers, &TARGET_ACTOR),
                target_authority: match parts.uri.authority() {
                    Some(a) => Values::One(a.as_str().as_bytes()),
                    None => Values::Absent,
                },
                host: Values::header(&parts.headers, header::HOST),
                require_host: parts.version == Version::HTTP_11,
                authority_must_match_host: true,
                default_port: default_port(&parts.uri),
            };
            let validated = match input.validate_target(self.inner.resolver.extractor()) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(reason = e.outcome(), "request refused");
                    self.inner.metrics.request(400, Outcome::ClientError);
                    return local_response(
                        LocalReply::with_code(
                            StatusCode::BAD_REQUEST,
                            e.grpc_code(),
                            e.client_message(),
                        ),
                        &request_id,
                    );
                }
            };
            // The Host to forward: the client's own Host value when it was the authority (a
            // shared reference, no copy), else the request target's authority.
            let host = match validated.meta.authority {
                None => None,
                Some(_) if parts.uri.authority().is_none() => {
                    parts.headers.get(header::HOST).cloned()
                }
                Some(a) => HeaderValue::from_str(a).ok(),
            };
            let target = match self.target_or_route_error(validated, &request_id).await {
                Ok(t) => t,
                Err(resp) => return resp,
            };
            (target, host)
        };

        let upgrade = parts.version == Version::HTTP_11 && wants_upgrade(&parts.headers);
        let down_upgrade = if upgrade {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        let downstream_h2 = parts.version == Version::HTTP_2;
        let headers = &mut parts.headers;
        remove_hop_by_hop(headers, upgrade);
        // `Connection: x-request-id` must not cost the worker its request id.
        headers.insert(&REQUEST_ID, request_id.clone());
        // Identity headers go, whoever sent them; a trusted peer (an egress PEP) vouches only
        // for the source actor, with exactly one valid value (DESIGN §7.4).
        for h in untrusted_identity_headers() {
            if !(conn.trusted_source && *h == SOURCE_ACTOR) {
                headers.remove(h);
            }
        }
        if conn.trusted_source
            && routing_core::wire::source_actor(Values::header(headers, &SOURCE_ACTOR)).is_none()
        {
            headers.remove(&SOURCE_ACTOR);
        }
        headers.remove(header::EXPECT);
        add_forwarded(
            headers,
            conn.peer,
            if conn.tls { "https" } else { "http" },
            host.as_ref().and_then(|h| h.to_str().ok()),
        );
        // Re-inserted also when it is the client's own value: `Connection: host` removed it.
        if let Some(h) = host {
            headers.insert(header::HOST, h);
        }
        if let Ok(v) = HeaderValue::from_str(target.actor.as_str()) {
            headers.insert(&TARGET_ACTOR, v);
        }
        // The worker agent's port header is actorgate's to set (agent mode) and never a
        // client's to pass on (plain mode), as on the ExtProc and /resolve fronts.
        match self.inner.resolver.settings().worker_transport {
            WorkerTransport::Agent { .. } => {
                headers.insert(&TARGET_PORT, HeaderValue::from(target.port));
            }
            WorkerTransport::Plain => {
                headers.remove(&TARGET_PORT);
            }
        }
        let body_unframed = !http_body::Body::is_end_stream(&body)
            && http_body::Body::size_hint(&body).exact().is_none();
        let use_h2 = !upgrade
            && match self.inner.settings.upstream_protocol {
                UpstreamProtocol::Auto => grpc,
                UpstreamProtocol::Http1 => false,
                UpstreamProtocol::Http2 => true,
            };
        if use_h2 {
            // Over HTTP/2 the worker's :authority is the dialed endpoint; a differing Host would
            // violate RFC 9113 §8.3.1. The original authority travels in X-Forwarded-Host.
            parts.headers.remove(header::HOST);
        } else if downstream_h2 {
            merge_cookies(&mut parts.headers);
        }
        if !use_h2 && body_unframed && !upgrade {
            // A body of unknown length (chunked, or HTTP/2 DATA without content-length) goes on
            // chunked whatever the method: left implicit, hyper's client sends GET/HEAD bodies
            // of unknown length as empty.
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        // The header-count limit covers what the worker receives, headers added here included,
        // so a client near the limit gets this 431 rather than the worker's. Checked before
        // routing: a request refused here never resumes a suspended actor.
        if parts.headers.len() > self.inner.settings.max_headers {
            self.inner.metrics.request(431, Outcome::ClientError);
            return text_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request headers".into(),
                &request_id,
            );
        }
        let route = match self.inner.resolver.resolve(&target).await {
            Ok(r) => r,
            Err(e) => {
                self.inner
                    .metrics
                    .request(e.http_status(), Outcome::RouteError);
                return route_error(&e, &request_id);
            }
        };
        let downstream_h1 = !downstream_h2;
        parts.version = if use_h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        // The worker URI is built from parts (never by formatting strings): the endpoint as
        // authority, the client's path and query (or `*` for OPTIONS, kept in asterisk form).
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));

        // Only a cached route can be stale, and only a request without a body can be sent twice.
        let retryable = http_body::Body::is_end_stream(&body)
            && route.kind == routing_core::ResolveKind::Cached;
        let mut replay = retryable.then(|| Replay {
            method: parts.method.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        });
        let mut route = route;
        // Whether the worker client is left waiting on the client's body (a stalled upload).
        let progress = (!http_body::Body::is_end_stream(&body)).then(Arc::<BodyProgress>::default);
        let mut body = Some(UpstreamBody::client(body, progress.clone()));
        let mut parts = Some(parts);
        let mut retried = false;
        loop {
            let built = Authority::try_from(route.endpoint.to_string())
                .ok()
                .and_then(|a| {
                    Uri::builder()
                        .scheme(self.inner.scheme)
                        .authority(a)
                        .path_and_query(path.clone())
                        .build()
                        .ok()
                });
            let uri = match built {
                Some(u) => u,
                None => {
                    // A request-building failure is not the worker's: no invalidation.
                    self.inner.metrics.request(400, Outcome::ClientError);
                    return bad_request("invalid request target".into(), &request_id);
                }
            };
            let req = match (parts.take(), body.take()) {
                (Some(mut p), Some(b)) => {
                    p.uri = uri;
                    Request::from_parts(p, b)
                }
                _ => {
                    // A retry: rebuild from the saved parts with an empty body.
                    let Some(r) = replay.take() else {
                        return text_response(
                            StatusCode::BAD_GATEWAY,
                            format!("actor {} worker unreachable", route.actor()),
                            &request_id,
                        );
                    };
                    let mut req = Request::new(UpstreamBody::Empty);
                    *req.method_mut() = r.method;
                    *req.uri_mut() = uri;
                    *req.version_mut() = r.version;
                    *req.headers_mut() = r.headers;
                    req
                }
            };
            let client = if use_h2 {
                &self.inner.h2
            } else {
                &self.inner.h1
            };
            let started = Instant::now();
            let sent =
                tokio::time::timeout(self.inner.settings.response_timeout, client.request(req))
                    .await;
            let stale = match &sent {
                // Only a real connection failure (connect, TLS handshake) invalidates the route.
                Ok(Err(e)) if e.is_connect() && !ClientBodyError::in_chain(e) => true,
                // The worker agent's "this actor no longer runs here"; an application's own 421
                // is passed through untouched.
                Ok(Ok(resp)) if resp.status() == StatusCode::MISDIRECTED_REQUEST => resp
                    .headers()
                    .get(&ASSIGNMENT_STALE)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
                _ => false,
            };
            if stale {
                self.inner.resolver.invalidate(route.actor());
                if !retried && replay.is_some() {
                    retried = true;
                    self.inner.metrics.retry();
                    tracing::debug!(actor = %route.actor(), endpoint = %route.endpoint, "worker stale; re-resolving and retrying once");
                    match self.re_resolve(&route).await {
                        Ok(r) => {
                            route = r;
                            continue;
                        }
                        Err(e) => {
                            self.inner
                                .metrics
                                .request(e.http_status(), Outcome::RouteError);
                            return route_error(&e, &request_id);
                        }
                    }
                }
            }
            return match sent {
                Ok(Err(e)) if ClientBodyError::in_chain(&e) => {
                    // The client's body broke (bad chunk framing, short body, stream reset):
                    // the client's fault, never counted or logged against the worker.
                    tracing::debug!(actor = %route.actor(), error = %e, "client request body failed");
                    self.inner.metrics.request(400, Outcome::ClientError);
                    bad_request("malformed request body".into(), &request_id)
                }
                Err(_) if progress.as_ref().is_some_and(|p| p.waiting_on_client()) => {
                    // The worker was still reading the body when time ran out and the client
                    // had stopped sending it: the client's timeout, not the worker's.
                    tracing::debug!(actor = %route.actor(), "client request body stalled");
                    self.inner.metrics.request(408, Outcome::ClientError);
                    let mut r = local_response(
                        LocalReply::with_code(
                            StatusCode::REQUEST_TIMEOUT,
                            tonic::Code::DeadlineExceeded,
                            "request body timed out".into(),
                        ),
                        &request_id,
                    );
                    if downstream_h1 {
                        // RFC 9110 §15.5.9: the rest of the body will not be read.
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    r
                }
                Err(_) => {
                    self.inner.metrics.request(504, Outcome::UpstreamTimeout);
                    text_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("actor {} worker timed out", route.actor()),
                        &request_id,
                    )
                }
                Ok(Err(e)) => {
                    tracing::info!(actor = %route.actor(), endpoint = %route.endpoint, error = %e, "worker request failed");
                    self.inner.metrics.request(502, Outcome::UpstreamError);
                    let what = if e.is_connect() {
                        "unreachable"
                    } else {
                        "connection failed"
                    };
                    text_response(
                        StatusCode::BAD_GATEWAY,
                        format!("actor {} worker {what}", route.actor()),
                        &request_id,
                    )
                }
                Ok(Ok(resp)) => {
                    self.inner
                        .metrics
                        .upstream_latency(started.elapsed().as_secs_f64());
                    self.respond(resp, down_upgrade, &request_id)
                }
            };
        }
    }

    /// The target a validated request names, or — when it names no valid actor — the
    /// resolver's answer for it, counted as on every front (a route error response).
    async fn target_or_route_error(
        &self,
        validated: routing_core::validate::Validated<'_>,
        request_id: &HeaderValue,
    ) -> Result<Target, Response<ProxyBody>> {
        match validated.target {
            Ok(t) => Ok(t),
            Err(_) => match self.inner.resolver.route(&validated.meta).await {
                Err(e) => {
                    self.inner
                        .metrics
                        .request(e.http_status(), Outcome::RouteError);
                    Err(route_error(&e, request_id))
                }
                Ok(r) => Ok(Target {
                    actor: r.actor().clone(),
                    port: r.actor_port,
                    via: routing_core::ExtractorKind::Header,
                }),
            },
        }
    }

    /// A trusted peer's `CONNECT <actor-host>:<port>` (DESIGN §5, §7.4: an egress PEP carrying
    /// actor-to-actor traffic that is not HTTP): the actor is named by the CONNECT authority
    /// (the host extractors) or `ate-target-actor`, resolved and resumed like any request's,
    /// and its worker endpoint is dialled within `connect_timeout`; then `200` and the bytes
    /// are spliced both ways under the drain. Routing errors answer as on every front; a worker
    /// that cannot be reached is `502`; workers behind the worker agent (agent transport) are
    /// not reachable this way yet (`501`).
    async fn actor_tunnel(
        &self,
        mut parts: http::request::Parts,
        request_id: &HeaderValue,
    ) -> Response<ProxyBody> {
        if matches!(
            self.inner.resolver.settings().worker_transport,
            WorkerTransport::Agent { .. }
        ) {
            self.inner.metrics.request(501, Outcome::ClientError);
            return text_response(
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT to workers behind the worker agent is not supported".into(),
                request_id,
            );
        }
        let input = MetaInput {
            target_actor: Values::header(&parts.headers, &TARGET_ACTOR),
            target_authority: match parts.uri.authority() {
                Some(a) => Values::One(a.as_str().as_bytes()),
                None => Values::Absent,
            },
            host: Values::Absent,
            require_host: false,
            authority_must_match_host: false,
            default_port: None,
        };
        let target = match input.validate_target(self.inner.resolver.extractor()) {
            Err(e) => {
                self.inner.metrics.request(400, Outcome::ClientError);
                return bad_request(e.client_message(), request_id);
            }
            Ok(v) => match self.target_or_route_error(v, request_id).await {
                Ok(t) => t,
                Err(resp) => return resp,
            },
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            self.inner.metrics.request(400, Outcome::ClientError);
            return bad_request("CONNECT cannot be upgraded here".into(), request_id);
        };
        let route = match self.inner.resolver.resolve(&target).await {
            Ok(r) => r,
            Err(e) => {
                self.inner
                    .metrics
                    .request(e.http_status(), Outcome::RouteError);
                return route_error(&e, request_id);
            }
        };
        let dialed = tokio::time::timeout(
            self.inner.settings.connect_timeout,
            tokio::net::TcpStream::connect(route.endpoint),
        )
        .await;
        let worker = match dialed {
            Ok(Ok(s)) => s,
            Ok(Err(_)) | Err(_) => {
                // The placement may be stale: the next request resolves afresh.
                self.inner.resolver.invalidate(route.actor());
                self.inner.metrics.request(502, Outcome::UpstreamError);
                return text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("actor {} worker unreachable", route.actor()),
                    request_id,
                );
            }
        };
        let _ = worker.set_nodelay(true);
        let actor = route.actor().clone();
        let idle = self.inner.settings.idle_timeout;
        drop(self.drain.spawn(async move {
            match on_upgrade.await {
                Ok(up) => {
                    let spliced =
                        crate::idle_splice::splice_with_idle(TokioIo::new(up), worker, idle).await;
                    if let Err(e) = spliced {
                        tracing::debug!(%actor, error = %e, "actor tunnel ended");
                    }
                }
                Err(e) => tracing::debug!(%actor, error = %e, "actor tunnel upgrade failed"),
            }
        }));
        self.inner.metrics.request(200, Outcome::Upgraded);
        let mut resp = Response::new(ProxyBody::empty());
        resp.headers_mut().insert(&REQUEST_ID, request_id.clone());
        resp
    }

    /// Refuses what the proxy does not forward: `CONNECT` (405), expectations other than
    /// `100-continue` (417), and request targets a reverse proxy must not take (400, and
    /// `INVALID_ARGUMENT` for gRPC clients): authority
    /// form outside CONNECT, asterisk form outside OPTIONS (RFC 9112 §3.2.3–3.2.4), absolute form
    /// with a scheme other than http(s). Host and authority rules are routing_core::validate's.
    fn check_request(
        &self,
        parts: &http::request::Parts,
        request_id: &HeaderValue,
    ) -> Option<Response<ProxyBody>> {
        let refuse = |status: StatusCode, msg: &str| {
            self.inner
                .metrics
                .request(status.as_u16(), Outcome::ClientError);
            Some(if status == StatusCode::BAD_REQUEST {
                bad_request(msg.to_owned(), request_id)
            } else {
                text_response(status, msg.to_owned(), request_id)
            })
        };
        if parts.method == http::Method::CONNECT {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is only for trusted peers",
            );
        }
        if let Some(e) = parts.headers.get(header::EXPECT)
            && !e.as_bytes().eq_ignore_ascii_case(b"100-continue")
        {
            return refuse(StatusCode::EXPECTATION_FAILED, "unsupported expectation");
        }
        let uri = &parts.uri;
        if uri.authority().is_some() && uri.scheme().is_none() {
            return refuse(
                StatusCode::BAD_REQUEST,
                "authority-form request target is only for CONNECT",
            );
        }
        if let Some(scheme) = uri.scheme_str()
            && !scheme.eq_ignore_ascii_case("http")
            && !scheme.eq_ignore_ascii_case("https")
        {
            return refuse(StatusCode::BAD_REQUEST, "unsupported scheme");
        }
        if uri.path() == "*" && parts.method != http::Method::OPTIONS {
            return refuse(
                StatusCode::BAD_REQUEST,
                "asterisk-form request target is only for OPTIONS",
            );
        }
        None
    }

    async fn re_resolve(&self, route: &Route) -> Result<Route, RouteError> {
        let target = routing_core::Target {
            actor: route.actor().clone(),
            port: route.actor_port,
            via: routing_core::ExtractorKind::Header,
        };
        self.inner.resolver.resolve(&target).await
    }

    fn respond(
        &self,
        resp: Response<Incoming>,
        down_upgrade: Option<OnUpgrade>,
        request_id: &HeaderValue,
    ) -> Response<ProxyBody> {
        let (mut rp, body) = resp.into_parts();
        let status = rp.status;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let up = rp.extensions.remove::<OnUpgrade>();
            let websocket = rp
                .headers
                .get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            return match (down_upgrade, up) {
                (Some(down), Some(up)) if websocket => {
                    remove_hop_by_hop(&mut rp.headers, true);
                    rp.headers.insert(&REQUEST_ID, request_id.clone());
                    rp.version = Version::HTTP_11;
                    drop(
                        self.drain
                            .spawn(tunnel(down, up, self.inner.settings.idle_timeout)),
                    );
                    self.inner.metrics.request(101, Outcome::Upgraded);
                    Response::from_parts(rp, ProxyBody::empty())
                }
                _ => {
                    self.inner.metrics.request(502, Outcome::UpstreamError);
                    text_response(
                        StatusCode::BAD_GATEWAY,
                        "worker switched protocols unasked".into(),
                        request_id,
                    )
                }
            };
        }
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, which must go (before
        // hop-by-hop removal drops Transfer-Encoding); the body is relayed as the worker framed it.
        if rp.headers.contains_key(header::TRANSFER_ENCODING) {
            rp.headers.remove(header::CONTENT_LENGTH);
        }
        remove_hop_by_hop(&mut rp.headers, false);
        rp.headers.remove(&ASSIGNMENT_STALE);
        rp.headers.insert(&REQUEST_ID, request_id.clone());
        rp.version = Version::HTTP_11;
        self.inner
            .metrics
            .request(status.as_u16(), Outcome::Proxied);
        Response::from_parts(
            rp,
            ProxyBody::upstream(body, self.inner.settings.idle_timeout),
        )
    }
}

/// Splices an upgraded client connection to the upgraded worker connection.
async fn tunnel(down: OnUpgrade, up: OnUpgrade, idle: Duration) {
    match tokio::try_join!(down, up) {
        Ok((down, up)) => {
            let spliced =
                crate::idle_splice::splice_with_idle(TokioIo::new(down), TokioIo::new(up), idle)
                    .await;
            if let Err(e) = spliced {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}
