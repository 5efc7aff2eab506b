//! Cleartext HTTP/1.x inside a tunnel, proxied and decided **per request** (DESIGN §7.2); the
//! same proxy serves the requests of intercepted TLS connections (HTTP/1.1 or h2, upstreams over
//! re-originated TLS: [`crate::intercepted`]).
//!
//! A hyper HTTP/1.1 server runs on the tunnel's IO. Every request is checked for framing and
//! authority ambiguities (duplicate `Host`, `Host` vs absolute-form mismatch, missing `Host`,
//! `Content-Length` together with `Transfer-Encoding`, or framing the scanner could not follow →
//! `400`, connection closed), then decided
//! through [`CleartextHooks::decide`] on its authority, method and path. A denied request gets
//! `403 egress denied` (or `503 egress unavailable` when a dependency failed), `text/plain`, and
//! the keep-alive connection goes on: the next request is decided on its own.
//!
//! Allowed requests go upstream over a hyper HTTP/1.1 client connection on the TCP stream
//! [`CleartextHooks::dial`] returns. The upstream sees the request in origin-form with the
//! actor's original `Host`; hop-by-hop headers are removed both ways. A connection is reused for
//! later requests of **the same actor** to the same destination, on this tunnel or a later one
//! ([`crate::upstream_pool`]; never shared with another actor; [`serve`] alone keeps them for
//! its connection only); it keeps whether its dial went elsewhere than the actor's original
//! destination, so every request it carries is audited with that mismatch.
//! `Upgrade` requests (WebSocket) get a dedicated upstream connection and, on `101`, both sides
//! are spliced.
//!
//! The framing scanner follows the request stream byte for byte as hyper does (chunk sizes,
//! extensions and trailers without a length limit of its own) and fails closed: a request head
//! it has no entry for (it stopped following) is answered `400` and the connection closes. It
//! stops following only after a `101` was sent, never for an `Upgrade` header alone.
//!
//! Every request — allowed, denied or malformed — ends in one [`RequestRecord`] passed to
//! [`CleartextHooks::record`] once its response has been delivered (or abandoned).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::decision::{Decision, Dial, Reason};
use crate::forward::{DialRefusal, Dialed};
use crate::intercept_upstream::{UpstreamAlpn, UpstreamTlsError};
use crate::policy::model::CredentialHeader;
use crate::upstream_pool::{PoolLimits, Pooled, UpstreamPool};

/// Body text of a policy denial (DESIGN §9).
const DENIED: &str = "egress denied";
/// Body text when a dependency (control plane, resolver, upstream) failed (DESIGN §9).
const UNAVAILABLE: &str = "egress unavailable";
/// Body text of a malformed request.
const BAD_REQUEST: &str = "bad request";
/// The body of a `502` for a re-originated TLS connection that failed.
const UPSTREAM_TLS_FAILED: &str = "egress upstream TLS failed";
/// The body of a `421` for an intercepted request whose authority the leaf does not cover.
const MISDIRECTED: &str = "misdirected request";
/// Most concurrent streams of an intercepted h2 connection from an actor.
const MAX_H2_STREAMS: u32 = 100;
/// Most h2 upstream connections one tunnel remembers as its own.
const MAX_OWN_H2: usize = 8;
/// PING interval of upstream h2 connections.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// An upstream h2 connection whose PING is not answered within this closes.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Most request-body bytes read and discarded so that a denied request's connection stays
/// usable; a longer body closes the connection after the denial.
const DENY_DRAIN_BYTES: usize = 64 * 1024;
/// Most chunk-extension bytes in one request body; hyper's limit (it refuses the body beyond).
const MAX_CHUNK_EXTENSION_BYTES: u64 = 16 * 1024;

/// What the tunnel server provides to the cleartext proxy: the per-request decision (against
/// the actor's current policy, so a reload applies to open tunnels), the guarded dial and the
/// audit sink.
pub trait CleartextHooks: Send + Sync + 'static {
    /// Decides one request: `authority` as sent (`Host` or the absolute-form target's, port
    /// included when written), `method` (`GET`) and `path` without the query.
    fn decide(&self, authority: &str, method: &str, path: &str) -> BoxFuture<'static, Decision>;
    /// Dials where a passing decision says (through the guard and the PEP's resolver). The
    /// answer's [`Dialed::dst_mismatch`] stays with the upstream connection and is reported in
    /// the record of every request it carries.
    fn dial(&self, dial: Dial) -> BoxFuture<'static, Result<Dialed, DialRefusal>>;
    /// Receives one record per request once its response is done.
    fn record(&self, r: RequestRecord);
    /// A TLS connection to ingress for actor traffic ([`Dial::Actor`], DESIGN §7.4), offering
    /// `h2` when `h2`. Default: actor forwarding is not configured.
    fn dial_actor(&self, h2: bool) -> BoxFuture<'static, Result<ActorConnection, DialRefusal>> {
        let _ = h2;
        Box::pin(async {
            Err(DialRefusal {
                reason: Reason::ActorForwardingNotConfigured,
                detail: "actor forwarding is not configured".into(),
            })
        })
    }
    /// `<atespace>/<name>` of the tunnel's verified actor, the `ate-source-actor` of requests
    /// forwarded to ingress (made once per tunnel). Default: none (no forwarding).
    fn source_actor(&self) -> Option<HeaderValue> {
        None
    }
    /// Counts `n` headers replaced with credentials in a request about to go upstream. Default:
    /// nothing.
    fn injected(&self, n: u64) {
        let _ = n;
    }
    /// The values of [`CleartextHooks::credentials`] when this tunnel still has them all, fresh
    /// (no fetch, no cache lookup). Default: none.
    fn cached_credentials(
        &self,
        effects: &Arc<[CredentialHeader]>,
        wanted: &[usize],
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let _ = (effects, wanted);
        None
    }
    /// The header values (prefix and secret, marked sensitive) of `effects[i]` for each `i` of
    /// `wanted`, for this tunnel's actor (DESIGN §7.3); a refusal's reason
    /// ([`Reason::CredentialDenied`], [`Reason::CredentialUnavailable`]). Default: no
    /// credential source (denied).
    fn credentials(
        &self,
        effects: Arc<[CredentialHeader]>,
        wanted: Vec<usize>,
    ) -> BoxFuture<'static, Result<Vec<(HeaderName, HeaderValue)>, Reason>> {
        let _ = (effects, wanted);
        Box::pin(async { Err(Reason::CredentialDenied) })
    }
}

/// A TLS connection to ingress carrying forwarded actor requests.
pub type ActorConnection = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One cleartext request, for the audit stream and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The request's authority as sent (`Host`, or the absolute-form target's); empty when
    /// the request had none.
    pub authority: String,
    /// The request method.
    pub method: String,
    /// The request path, without the query (`/v1/items`).
    pub path: String,
    /// The decision that applied: the policy's, or a denial with reason `bad_request` (malformed
    /// request) or the dial refusal's reason (guard, resolver, connect failure).
    pub decision: Decision,
    /// The status the actor received (`101` for an upgrade); `0` when no response was sent.
    pub status: u16,
    /// Request body bytes sent upstream (after an upgrade: bytes actor → upstream).
    pub bytes_up: u64,
    /// Response body bytes delivered to the actor (after an upgrade: upstream → actor).
    pub bytes_down: u64,
    /// From the request head's arrival to the end of the response (or of the upgraded stream).
    pub duration: Duration,
    /// The upstream connection that carried the request was dialled to another address than
    /// the actor's original destination ([`Dialed::dst_mismatch`] of its dial, also when the
    /// connection is reused); `false` when nothing was sent upstream.
    pub dst_mismatch: bool,
}

/// Bounds of the cleartext proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleartextLimits {
    /// Most bytes of one request head (request line and headers); more → `431` and the
    /// connection closes. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Longest time to receive a request head once the server waits for one; exceeded → the
    /// connection closes. Default 10 s.
    pub header_timeout: Duration,
    /// No byte either way on the tunnel for this long → the connection closes; also bounds the
    /// wait for an upstream's response head (`504`). Default 60 s.
    pub idle: Duration,
}

impl Default for CleartextLimits {
    fn default() -> Self {
        CleartextLimits {
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// Serves cleartext HTTP/1.x on a tunnel's IO until the actor closes it, an error or a limit
/// ends it, or an upgraded stream ends. Returns after every upgraded stream has finished.
///
/// # Errors
/// The hyper connection's error: a header timeout (`is_timeout()`), an idle timeout (an I/O
/// error of kind `TimedOut`), a malformed request or an I/O error on the tunnel.
pub async fn serve<IO>(
    io: IO,
    hooks: Arc<dyn CleartextHooks>,
    limits: CleartextLimits,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Standalone: the connections are kept for this connection's requests only.
    let pool = Upstreams {
        pool: Arc::new(UpstreamPool::new(PoolLimits::default())),
        owner: Arc::from("connection"),
    };
    serve_proxy(io, hooks, limits, Origin::Cleartext, pool).await
}

/// The idle upstream connections a proxied connection may reuse: `owner`'s entries of a pool
/// (the PEP's pool keyed by actor, so an actor's tunnels share them and no other actor's do).
#[derive(Clone)]
pub(crate) struct Upstreams {
    /// The pool.
    pub pool: Arc<UpstreamPool<Upstream>>,
    /// Whose connections (an actor's identity).
    pub owner: Arc<str>,
}

/// Where a proxied connection's requests come from and how they reach their upstreams.
#[derive(Clone)]
pub(crate) enum Origin {
    /// Cleartext HTTP/1.x from the tunnel; upstreams are plain TCP.
    Cleartext,
    /// Requests decrypted from an intercepted TLS connection; upstreams are re-originated TLS.
    Intercepted(Arc<InterceptedOrigin>),
}

/// One intercepted connection's terms (see `crate::intercepted`).
pub(crate) struct InterceptedOrigin {
    /// The SNI the connection's leaf was minted for (lowercase, no trailing dot): a request for
    /// another name is misdirected (`421`).
    pub sni: Arc<str>,
    /// The actor and the PEP agreed on `h2` (else HTTP/1.1).
    pub h2: bool,
    /// Trust and ALPN of re-originated TLS.
    pub upstream_tls: Arc<crate::intercept_upstream::UpstreamTls>,
    /// Bound of a re-originated TLS handshake.
    pub handshake_timeout: Duration,
    /// Set when the ClientHello itself was denied and intercepted only to answer readably:
    /// every request gets this decision (a denial) and nothing is dialled (DESIGN §7.2).
    pub refuse_all: Option<Decision>,
}

/// Serves HTTP (HTTP/1.x, or h2 for an intercepted connection that agreed on it) on a tunnel's
/// decrypted or cleartext IO; see [`serve`].
pub(crate) async fn serve_proxy<IO>(
    io: IO,
    hooks: Arc<dyn CleartextHooks>,
    limits: CleartextLimits,
    origin: Origin,
    upstreams: Upstreams,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let h2 = matches!(&origin, Origin::Intercepted(o) if o.h2);
    let framing = Arc::new(Framing::default());
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let proxy = Arc::new(Proxy {
        hooks,
        limits,
        framing: framing.clone(),
        upstreams,
        own_h2: Mutex::new(std::collections::HashMap::new()),
        tasks: tasks.clone(),
        cancel: cancel.clone(),
        origin,
    });
    // h2 frames are not HTTP/1.x: the framing scanner only follows HTTP/1.x streams (h2
    // framing is the h2 server's, which refuses ambiguity itself).
    let io = TunnelIo::new(io, limits, framing, !h2);
    let service = hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req).await) }
    });
    let result = if h2 {
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_H2_STREAMS)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .serve_connection(TokioIo::new(io), service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(limits.max_header_bytes)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await
    };
    tasks.close();
    tasks.wait().await;
    result
}

/// The response body type of the proxy.
pub(crate) type RespBody = BoxBody<Bytes, hyper::Error>;
/// The request body type sent upstream.
type UpBody = Counted<Incoming>;

/// One tunnel's proxy state.
struct Proxy {
    hooks: Arc<dyn CleartextHooks>,
    limits: CleartextLimits,
    /// What the framing scanner saw of each request head.
    framing: Arc<Framing>,
    /// Reusable upstream connections by destination (the actor's, across its tunnels).
    upstreams: Upstreams,
    /// The h2 upstream connections this tunnel opened or adopted, by destination key.
    own_h2: Mutex<std::collections::HashMap<String, Upstream>>,
    /// Upstream connection drivers and upgraded streams.
    tasks: TaskTracker,
    /// Cancelled when [`serve`] returns or is dropped.
    cancel: CancellationToken,
    /// Cleartext or intercepted.
    origin: Origin,
}

/// An upstream connection, of one actor.
pub(crate) struct Upstream {
    sender: Sender,
    /// Its dial went to another address than the actor's original destination.
    dst_mismatch: bool,
    /// Distinguishes connections (an h2 connection's handles share it).
    id: u64,
}

/// An upstream connection's request sender: HTTP/1.1 (one request at a time, taken out of the
/// pool while in use) or h2 (shared by the tunnel's concurrent requests).
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<UpBody>),
    H2(hyper::client::conn::http2::SendRequest<UpBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

impl Sender {
    /// Sends `req`; a request the connection never took comes back in the error.
    async fn send(
        &mut self,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

impl Pooled for Upstream {
    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    fn is_ready(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn share(&self) -> Option<Self> {
        match &self.sender {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Upstream {
                sender: Sender::H2(s.clone()),
                dst_mismatch: self.dst_mismatch,
                id: self.id,
            }),
        }
    }
}

/// Shapes `req` for `sender`'s protocol: HTTP/1.1 in origin-form with the actor's `Host`; h2
/// with the authority in an absolute URI (`:authority`), no `Host`, `TE: trailers` when the
/// actor asked for trailers. `false` when the authority makes no URI.
fn prepare(req: &mut Request<UpBody>, sender: &Sender, target: &Target, trailers: bool) -> bool {
    match sender {
        Sender::H1(_) => {
            req.headers_mut().insert(header::HOST, target.host.clone());
            req.headers_mut().remove(header::TE);
            *req.uri_mut() = origin_form(req.uri());
            *req.version_mut() = Version::HTTP_11;
        }
        Sender::H2(_) => {
            req.headers_mut().remove(header::HOST);
            if trailers {
                req.headers_mut()
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
            match absolute_https(&target.authority, req.uri()) {
                Some(uri) => *req.uri_mut() = uri,
                None => return false,
            }
            *req.version_mut() = Version::HTTP_2;
        }
    }
    true
}

/// Upstream connections made so far (their ids).
static UPSTREAM_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The request's validated target.
struct Target {
    authority: String,
    /// `Host` to send upstream (the original one, or the absolute-form authority when absent).
    host: HeaderValue,
}

/// Which protocol a request needs upstream (intercepted connections; cleartext is HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// HTTP/1.1 (HTTP/1.x actors, upgrades).
    Http1,
    /// h2 (gRPC: trailers end to end).
    H2,
    /// h2 when the server offers it, else HTTP/1.1 (other h2 requests).
    Either,
}

impl Proxy {
    /// Handles one request; never fails (errors become responses).
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<RespBody> {
        let start = Instant::now();
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let intercepted = match &self.origin {
            Origin::Cleartext => None,
            Origin::Intercepted(o) => Some(o.clone()),
        };
        // No entry: the scanner stopped following the stream (fail closed). h2 requests have no
        // HTTP/1.x framing to follow.
        let framed = req.version() == Version::HTTP_2
            || self.framing.heads.lock().pop_front() == Some(HeadFraming::Clear);
        let target = match validate(&req, framed, intercepted.is_some()) {
            Ok(target) => target,
            Err((authority, reason)) => {
                let guard = RecordGuard::new(
                    &self.hooks,
                    authority,
                    method,
                    path,
                    Decision::deny(reason),
                    start,
                );
                if reason == Reason::BadRequest {
                    // h2: the stream ends, the connection goes on.
                    let close = req.version() != Version::HTTP_2;
                    return guard.local(StatusCode::BAD_REQUEST, BAD_REQUEST, close);
                }
                return self.refuse(req, guard).await;
            }
        };
        let decision = match intercepted.as_ref().and_then(|o| o.refuse_all.clone()) {
            Some(refused) => refused,
            // A PEP forwarded this already (DESIGN §7.4): refused before any policy.
            None if crate::actor_forward::is_loop(req.headers()) => {
                Decision::deny(Reason::ForwardingLoop)
            }
            None => self.hooks.decide(&target.authority, &method, &path).await,
        };
        let mut guard = RecordGuard::new(
            &self.hooks,
            target.authority.clone(),
            method,
            path,
            decision.clone(),
            start,
        );
        let dial = match (decision.verdict.passes(), decision.dial.clone()) {
            (true, Some(dial)) => dial,
            (true, None) => {
                *guard.decision.get_mut() = Decision::deny(Reason::DialFailed);
                return self.refuse(req, guard).await;
            }
            (false, _) => return self.refuse(req, guard).await,
        };
        if let Some(o) = &intercepted
            && !covers(&o.sni, &target.authority)
        {
            // The leaf the actor verified is for another name (RFC 9110 §15.5.20).
            guard
                .decision
                .get_mut()
                .overturn(Reason::NotCoveredByCertificate);
            return self.refuse(req, guard).await;
        }
        // Credentials for the headers the actor sent placeholders in (DESIGN §7.3), fetched
        // before anything is dialled; set after every other header change, below.
        let credentials = match &decision.effects {
            None => Vec::new(),
            Some(effects) => {
                let tls = intercepted.is_some() || matches!(dial, Dial::Actor { .. });
                match self.credentials(effects, req.headers(), tls).await {
                    Ok(c) => c,
                    Err(reason) => {
                        guard.decision.get_mut().overturn(reason);
                        return self.refuse(req, guard).await;
                    }
                }
            }
        };

        // Actor traffic goes to ingress for the actor host on the port the actor dialed.
        let mut target = target;
        if let Dial::Actor { host, port, .. } = &dial {
            target.authority = format!("{host}:{port}");
            match HeaderValue::from_str(&target.authority) {
                Ok(v) => target.host = v,
                Err(_) => return guard.local(StatusCode::BAD_REQUEST, BAD_REQUEST, true),
            }
        }
        let upgrade = wants_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let want = match (&intercepted, req.version()) {
            (None, _) => Want::Http1,
            (Some(_), Version::HTTP_2) if is_grpc(req.headers()) => Want::H2,
            (Some(_), Version::HTTP_2) => Want::Either,
            (Some(_), _) => Want::Http1,
        };
        let key = dial_key(&dial, want, intercepted.is_some());
        let (upstream, mut reused) = if upgrade {
            (self.connect(dial.clone(), want, true).await, false)
        } else {
            match self.reusable(&key) {
                Some(upstream) => (Ok(upstream), true),
                None => {
                    let fresh = self.connect(dial.clone(), want, false).await;
                    if let Ok(u) = &fresh {
                        self.adopt(&key, u);
                    }
                    (fresh, false)
                }
            }
        };
        let guard = Arc::new(guard);
        let mut upstream = match upstream {
            Ok(upstream) => upstream,
            Err(refusal) => {
                tracing::debug!(detail = %refusal.detail, reason = refusal.reason.as_str(), "upstream dial refused");
                return guard.refused_after_dial(refusal.reason);
            }
        };

        let (mut parts, body) = req.into_parts();
        let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
        let trailers = te_trailers(&parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        if let Dial::Actor { target: actor, .. } = &dial {
            let forwarded = match self.hooks.source_actor() {
                Some(source) => crate::actor_forward::set_forwarded(
                    &mut parts.headers,
                    actor,
                    source,
                    parts.version,
                )
                .map_err(|e| e.to_string()),
                None => Err("no verified source actor".to_owned()),
            };
            if let Err(e) = forwarded {
                tracing::debug!(error = %e, "forwarded request headers");
                return guard.status_only(StatusCode::BAD_REQUEST, BAD_REQUEST);
            }
        }
        // Last: each credential replaces every value of its header (a header the actor named
        // in `Connection` is gone by now and stays gone).
        let mut injected = 0;
        for (name, value) in credentials {
            if parts.headers.contains_key(&name) {
                parts.headers.insert(name, value);
                injected += 1;
            }
        }
        if injected > 0 {
            self.hooks.injected(injected);
        }
        if let (true, Some(value)) = (upgrade, upgrade_value) {
            parts.headers.insert(header::UPGRADE, value);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let body = Counted::new(body, guard.clone(), Direction::Up);
        let mut req = Request::from_parts(parts, body);
        let sent = loop {
            if !prepare(&mut req, &upstream.sender, &target, trailers) {
                return guard.status_only(StatusCode::BAD_REQUEST, BAD_REQUEST);
            }
            guard
                .dst_mismatch
                .store(upstream.dst_mismatch, Ordering::Relaxed);
            let sent = tokio::time::timeout(self.limits.idle, upstream.sender.send(req)).await;
            match sent {
                // A kept connection the server closed before the request went out (an idle
                // keep-alive it timed out): the request is untouched, send it on a new one.
                Ok(Err(mut e)) if reused && e.message().is_some() => {
                    let Some(unsent) = e.take_message() else {
                        unreachable!("checked above")
                    };
                    tracing::debug!(error = %e.into_error(), "kept upstream connection closed; dialling anew");
                    req = unsent;
                    upstream = match self.connect(dial.clone(), want, false).await {
                        Ok(fresh) => fresh,
                        Err(refusal) => return guard.refused_after_dial(refusal.reason),
                    };
                    self.adopt(&key, &upstream);
                    reused = false;
                    continue;
                }
                other => break other,
            }
        };
        // h2 connections stay kept (they multiplex); an HTTP/1.1 one goes back once its response
        // body has been delivered whole (it is idle then), with the body below.
        let returned = match (&upstream.sender, upgrade, &sent) {
            (_, true, _) | (Sender::H1(_), _, Err(_) | Ok(Err(_))) => None,
            (Sender::H2(_), false, _) => {
                self.keep(key, upstream);
                None
            }
            (Sender::H1(_), false, Ok(Ok(_))) => Some((self.upstreams.clone(), key, upstream)),
        };
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::debug!(error = %e.into_error(), "upstream request failed");
                return guard.status_only(StatusCode::BAD_GATEWAY, UNAVAILABLE);
            }
            Err(_) => return guard.status_only(StatusCode::GATEWAY_TIMEOUT, UNAVAILABLE),
        };
        guard
            .status
            .store(response.status().as_u16(), Ordering::Relaxed);

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            // hyper switches after this 101: what follows is no longer HTTP/1.x.
            self.framing.switched.store(true, Ordering::Release);
            let cancel = self.cancel.clone();
            let spliced = guard.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = splice_upgraded(client_upgrade, upstream_upgrade, spliced) => {}
                }
            });
            let (mut parts, _) = response.into_parts();
            let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(value) = upgrade_value {
                parts.headers.insert(header::UPGRADE, value);
            }
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            return Response::from_parts(parts, empty());
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // An upgrade nobody asked for cannot be relayed.
            return guard.status_only(StatusCode::BAD_GATEWAY, UNAVAILABLE);
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = Counted::new(body, guard, Direction::Down);
        let body = ReturnsUpstream {
            inner: body,
            upstream: returned,
        };
        Response::from_parts(parts, body.boxed())
    }

    /// The credential values for the `effects` whose header the actor's request carries
    /// (`headers`), in the rule's order; nothing is fetched for the others. `tls`: the PEP sends
    /// the request over TLS (re-originated, or to ingress); otherwise every wanted effect must
    /// allow cleartext ([`Reason::CredentialNeedsTls`]).
    async fn credentials(
        &self,
        effects: &Arc<[CredentialHeader]>,
        headers: &HeaderMap,
        tls: bool,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Reason> {
        // A header the actor names in `Connection` is hop-by-hop: it never goes upstream, so
        // nothing is fetched for it.
        let wanted: Vec<usize> = effects
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                headers.contains_key(e.header.as_str())
                    && !connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(&e.header))
            })
            .map(|(i, _)| i)
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        if !tls && wanted.iter().any(|&i| !effects[i].allow_cleartext) {
            return Err(Reason::CredentialNeedsTls);
        }
        if let Some(found) = self.hooks.cached_credentials(effects, &wanted) {
            return Ok(found);
        }
        self.hooks.credentials(effects.clone(), wanted).await
    }

    /// Answers a refused request (403 or 503 by reason) and keeps the connection usable when the
    /// request body can be discarded cheaply.
    async fn refuse(&self, req: Request<Incoming>, guard: RecordGuard) -> Response<RespBody> {
        // h2: an unread body only resets its own stream; the connection goes on.
        let close = req.version() != Version::HTTP_2 && !self.discard_body(req).await;
        let reason = guard.decision.lock().reason;
        let (status, text) = denial(reason);
        guard.local(status, text, close)
    }

    /// Reads and drops a denied request's body; `false` when that was not possible within
    /// [`DENY_DRAIN_BYTES`] and the header timeout (the connection then closes).
    async fn discard_body(&self, req: Request<Incoming>) -> bool {
        let expects_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut body = req.into_body();
        if body.is_end_stream() {
            return true;
        }
        if expects_continue {
            // Polling the body would invite the actor to send it; close instead.
            return false;
        }
        let drain = async {
            let mut seen = 0usize;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return false };
                if let Some(data) = frame.data_ref() {
                    seen += data.len();
                    if seen > DENY_DRAIN_BYTES {
                        return false;
                    }
                }
            }
            true
        };
        tokio::time::timeout(self.limits.header_timeout, drain)
            .await
            .unwrap_or(false)
    }

    /// A kept connection of this actor to `key` that is open and ready now (never waits: a busy
    /// one is left alone and a new one dialled): this tunnel's own h2 connection first, then
    /// the actor's pool.
    fn reusable(&self, key: &str) -> Option<Upstream> {
        if let Some(h2) = self.own_h2.lock().get(key)
            && !h2.is_closed()
            && h2.is_ready()
        {
            return h2.share();
        }
        let upstream = self.upstreams.pool.take(&self.upstreams.owner, key)?;
        self.adopt(key, &upstream);
        Some(upstream)
    }

    /// Remembers an h2 connection as this tunnel's own for `key`: its later requests use it
    /// (an actor's tunnels spread over their own connections rather than all over one).
    fn adopt(&self, key: &str, upstream: &Upstream) {
        if let Some(shared) = upstream.share() {
            let mut own = self.own_h2.lock();
            own.retain(|_, u| !u.is_closed());
            if own.len() < MAX_OWN_H2 || own.contains_key(key) {
                own.insert(key.to_owned(), shared);
            }
        }
    }

    /// Returns `upstream` to the actor's pool.
    fn keep(&self, key: String, upstream: Upstream) {
        self.upstreams
            .pool
            .put(&self.upstreams.owner, &key, upstream);
    }

    /// Dials and opens a new upstream connection (TLS to the authorised name first when
    /// intercepted); its driver runs on the tunnel's task tracker.
    async fn connect(
        &self,
        dial: Dial,
        want: Want,
        upgrades: bool,
    ) -> Result<Upstream, DialRefusal> {
        let tls_name = match &dial {
            Dial::Name { host, .. } => host.to_string(),
            Dial::Address { addr, .. } => addr.ip().to_string(),
            Dial::Actor { .. } => {
                // Ingress, over mTLS as a trusted peer (cleartext and intercepted alike).
                let tls = self.hooks.dial_actor(want != Want::Http1).await?;
                if want == Want::H2 && tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                    // gRPC needs trailers end to end: never over HTTP/1.1.
                    return Err(DialRefusal {
                        reason: Reason::UpstreamTlsFailed,
                        detail: "ingress did not offer h2 for a gRPC request".into(),
                    });
                }
                return self.over_tls(tls, upgrades, false).await;
            }
        };
        let dialed = self.hooks.dial(dial).await?;
        let Origin::Intercepted(origin) = &self.origin else {
            let sender = self.http1(TokioIo::new(dialed.stream), upgrades).await?;
            return Ok(Upstream {
                sender: Sender::H1(sender),
                dst_mismatch: dialed.dst_mismatch,
                id: UPSTREAM_IDS.fetch_add(1, Ordering::Relaxed),
            });
        };
        let alpn = match want {
            Want::Http1 => UpstreamAlpn::Http1,
            Want::H2 => UpstreamAlpn::H2,
            Want::Either => UpstreamAlpn::H2OrHttp1,
        };
        let tls = origin
            .upstream_tls
            .connect(dialed.stream, &tls_name, alpn, origin.handshake_timeout)
            .await
            .map_err(|e| DialRefusal {
                reason: match e {
                    UpstreamTlsError::CertificateInvalid(_) => Reason::UpstreamCertificateInvalid,
                    _ => Reason::UpstreamTlsFailed,
                },
                detail: e.to_string(),
            })?;
        self.over_tls(tls, upgrades, dialed.dst_mismatch).await
    }

    /// An upstream connection over an established TLS connection: h2 when ALPN chose it
    /// (kept beyond the tunnel), else HTTP/1.1.
    async fn over_tls<T>(
        &self,
        tls: tokio_rustls::client::TlsStream<T>,
        upgrades: bool,
        dst_mismatch: bool,
    ) -> Result<Upstream, DialRefusal>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let sender = if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .timer(TokioTimer::new())
                    // A dead connection is noticed (and leaves the pool) within a minute.
                    .keep_alive_interval(H2_PING_INTERVAL)
                    .keep_alive_timeout(H2_PING_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| DialRefusal {
                        reason: Reason::UpstreamTlsFailed,
                        detail: format!("h2 handshake: {e}"),
                    })?;
            // Kept in the actor's pool beyond this tunnel: it ends when the pool (or every
            // request holding it) lets go of it, or the server closes it.
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended");
                }
            });
            Sender::H2(sender)
        } else {
            Sender::H1(self.http1(TokioIo::new(tls), upgrades).await?)
        };
        Ok(Upstream {
            sender,
            dst_mismatch,
            id: UPSTREAM_IDS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// An HTTP/1.1 client connection over `io`, driven on the tunnel's task tracker.
    async fn http1<T>(
        &self,
        io: T,
        upgrades: bool,
    ) -> Result<hyper::client::conn::http1::SendRequest<UpBody>, DialRefusal>
    where
        T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| DialRefusal {
                reason: Reason::DialFailed,
                detail: format!("HTTP/1.1 handshake: {e}"),
            })?;
        if upgrades {
            // An upgrade's connection is the tunnel's alone: it ends with the tunnel.
            let cancel = self.cancel.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    r = conn.with_upgrades() => if let Err(e) = r {
                        tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                    }
                }
            });
        } else {
            // Kept in the actor's pool beyond this tunnel: it ends when the pool drops it (idle,
            // bounds), or the server closes it.
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
        }
        Ok(sender)
    }
}

/// Checks the request's framing (`framed`: the scanner followed its head and found it
/// unambiguous, or h2) and authority. `intercepted`: the request came out of intercepted TLS
/// (absolute-form must be `https`, default port 443, and an `:authority`/`Host` disagreement is
/// [`Reason::AuthorityMismatch`]). `Err` carries the authority for the record and the reason:
/// [`Reason::BadRequest`] for malformed requests.
fn validate(
    req: &Request<Incoming>,
    framed: bool,
    intercepted: bool,
) -> Result<Target, (String, Reason)> {
    let bad = |a: String| (a, Reason::BadRequest);
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    let host = hosts
        .first()
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let shown = host.clone().unwrap_or_default();
    if !framed
        || hosts.len() > 1
        || (hosts.len() == 1 && host.is_none())
        || req.method() == Method::CONNECT
    {
        return Err(bad(shown));
    }
    let default_port = if intercepted { "443" } else { "80" };
    let uri = req.uri();
    if let Some(uri_scheme) = uri.scheme() {
        let Some(uri_authority) = uri.authority() else {
            return Err(bad(shown));
        };
        // Inside intercepted TLS the scheme does not change what is dialled (some h2 clients
        // on a connection they set up themselves send `:scheme: http`); cleartext is `http`.
        let scheme_ok = uri_scheme == &http::uri::Scheme::HTTP
            || (intercepted && uri_scheme == &http::uri::Scheme::HTTPS);
        if !scheme_ok || uri_authority.as_str().contains('@') {
            return Err(bad(shown));
        }
        return match (hosts.first(), host) {
            (Some(value), Some(host)) => {
                if same_authority(&host, uri_authority.as_str(), default_port) {
                    Ok(Target {
                        authority: host,
                        host: (*value).clone(),
                    })
                } else if intercepted {
                    Err((host, Reason::AuthorityMismatch))
                } else {
                    Err(bad(host))
                }
            }
            // HTTP/1.0 may omit Host; HTTP/1.1 must send it (RFC 9112 §3.2); h2 sends
            // `:authority` instead (RFC 9113 §8.3.1).
            _ if req.version() == Version::HTTP_11 => Err(bad(uri_authority.to_string())),
            _ => match HeaderValue::from_str(uri_authority.as_str()) {
                Ok(value) => Ok(Target {
                    authority: uri_authority.to_string(),
                    host: value,
                }),
                Err(_) => Err(bad(uri_authority.to_string())),
            },
        };
    }
    match (hosts.first(), host) {
        (Some(value), Some(host)) if !host.is_empty() => Ok(Target {
            authority: host,
            host: (*value).clone(),
        }),
        _ => Err(bad(shown)),
    }
}

/// Whether two authorities name the same host and port (ASCII case-insensitive; a missing
/// port equals `default_port`).
fn same_authority(a: &str, b: &str, default_port: &str) -> bool {
    fn split(s: &str) -> (&str, &str) {
        match s.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, port),
            _ => (s, ""),
        }
    }
    let (ah, ap) = split(a);
    let (bh, bp) = split(b);
    let ap = if ap.is_empty() { default_port } else { ap };
    let bp = if bp.is_empty() { default_port } else { bp };
    ah.eq_ignore_ascii_case(bh) && ap == bp
}

/// Whether `authority`'s host (port ignored, case and one trailing dot aside) is `sni`, the
/// name an intercepted connection's leaf was minted for.
fn covers(sni: &str, authority: &str) -> bool {
    match crate::policy::hostname::normalize_authority_ref(authority) {
        Ok(crate::policy::hostname::AuthorityRef::Name(name)) => *name == *sni,
        _ => false,
    }
}

/// Whether the request is gRPC (`content-type: application/grpc…`): it needs h2 upstream.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() >= 16 && v[..16].eq_ignore_ascii_case("application/grpc"))
}

/// Whether the request says `TE: trailers` (the one `TE` h2 allows, RFC 9113 §8.2.2).
fn te_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// `https://<authority><path?query>` for an h2 upstream request.
fn absolute_https(authority: &str, uri: &Uri) -> Option<Uri> {
    let pq = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    Uri::builder()
        .scheme(http::uri::Scheme::HTTPS)
        .authority(authority)
        .path_and_query(pq)
        .build()
        .ok()
}

/// Whether the request asks for a protocol upgrade (HTTP/1.1, `Upgrade` and
/// `Connection: upgrade`).
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named by `Connection` and the fixed
/// list, including `Upgrade` (callers re-add it for an upgrade).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The origin-form of a request target (`/path?query`; `*` stays `*`).
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => Uri::from(pq.clone()),
        _ => Uri::from_static("/"),
    }
}

/// The reuse key of an upstream destination, the protocol it needs and its transport (`tls`:
/// re-originated TLS, else plain TCP: a cleartext connection never carries an intercepted
/// request, nor the reverse).
fn dial_key(dial: &Dial, want: Want, tls: bool) -> String {
    let transport = if tls { "tls" } else { "tcp" };
    match dial {
        Dial::Name {
            host,
            port,
            allow_private,
        } => format!("{transport} name {host}:{port} {allow_private} {want:?}"),
        Dial::Address { addr, tcp_rule } => {
            format!("{transport} addr {addr} {tcp_rule:?} {want:?}")
        }
        // One connection to ingress serves every actor target (requests name their target).
        Dial::Actor { .. } => format!("ingress {want:?}"),
    }
}

/// The status and body of a denial by `reason`.
fn denial(reason: Reason) -> (StatusCode, &'static str) {
    let status = reason.status();
    match status {
        StatusCode::SERVICE_UNAVAILABLE => (status, UNAVAILABLE),
        StatusCode::BAD_REQUEST => (status, BAD_REQUEST),
        StatusCode::BAD_GATEWAY => (status, UPSTREAM_TLS_FAILED),
        StatusCode::MISDIRECTED_REQUEST => (status, MISDIRECTED),
        _ => (StatusCode::FORBIDDEN, DENIED),
    }
}

/// An empty response body.
pub(crate) fn empty() -> RespBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A `text/plain` response made by the PEP (or the agent's explicit proxy).
pub(crate) fn text_response(
    status: StatusCode,
    text: &'static str,
    close: bool,
) -> Response<RespBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Splices an upgraded actor stream with the upgraded upstream stream, counting bytes into the
/// request's record.
async fn splice_upgraded(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: Arc<RecordGuard>,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "cleartext upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            guard.bytes_up.fetch_add(up, Ordering::Relaxed);
            guard.bytes_down.fetch_add(down, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!(error = %e, "cleartext upgraded stream ended"),
    }
}

/// Collects one request's record; emitted to the hooks when the last reference drops (after
/// the response body, the request body and any upgraded stream are done).
struct RecordGuard {
    hooks: Arc<dyn CleartextHooks>,
    authority: String,
    method: String,
    path: String,
    decision: Mutex<Decision>,
    status: AtomicU16,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Whether the upstream connection used was dialled away from the original destination.
    dst_mismatch: AtomicBool,
    start: Instant,
}

impl RecordGuard {
    fn new(
        hooks: &Arc<dyn CleartextHooks>,
        authority: String,
        method: String,
        path: String,
        decision: Decision,
        start: Instant,
    ) -> Self {
        RecordGuard {
            hooks: hooks.clone(),
            authority,
            method,
            path,
            decision: Mutex::new(decision),
            status: AtomicU16::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            dst_mismatch: AtomicBool::new(false),
            start,
        }
    }

    /// A local response; the record is emitted now.
    fn local(self, status: StatusCode, text: &'static str, close: bool) -> Response<RespBody> {
        self.status.store(status.as_u16(), Ordering::Relaxed);
        text_response(status, text, close)
    }

    /// The dial failed or was refused by the guard: the record carries the refusal's reason.
    fn refused_after_dial(self: Arc<Self>, reason: Reason) -> Response<RespBody> {
        let (status, text) = denial(reason);
        self.status.store(status.as_u16(), Ordering::Relaxed);
        self.decision.lock().overturn(reason);
        text_response(status, text, false)
    }

    /// The upstream failed after the dial: answer `status` (the record keeps the decision).
    fn status_only(self: Arc<Self>, status: StatusCode, text: &'static str) -> Response<RespBody> {
        self.status.store(status.as_u16(), Ordering::Relaxed);
        text_response(status, text, false)
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        self.hooks.record(RequestRecord {
            authority: std::mem::take(&mut self.authority),
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            decision: self.decision.lock().clone(),
            status: self.status.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            duration: self.start.elapsed(),
            dst_mismatch: self.dst_mismatch.load(Ordering::Relaxed),
        });
    }
}

/// Which counter a [`Counted`] body feeds.
#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

pin_project_lite::pin_project! {
    /// A body that counts its data bytes into a request's record and keeps the record open
    /// until it is dropped.
    struct Counted<B> {
        #[pin]
        inner: B,
        guard: Arc<RecordGuard>,
        direction: Direction,
    }
}

impl<B> Counted<B> {
    fn new(inner: B, guard: Arc<RecordGuard>, direction: Direction) -> Self {
        Counted {
            inner,
            guard,
            direction,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let counter = match this.direction {
                Direction::Up => &this.guard.bytes_up,
                Direction::Down => &this.guard.bytes_down,
            };
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that returns its HTTP/1.1 upstream connection to the actor's pool once the
/// body has been read to its end (the connection is idle then); dropped earlier, the connection
/// is dropped too (closed: its state mid-response is not reusable).
struct ReturnsUpstream<B: Body> {
    inner: B,
    upstream: Option<(Upstreams, String, Upstream)>,
}

impl<B: Body> ReturnsUpstream<B> {
    fn give_back(&mut self) {
        if let Some((upstreams, key, upstream)) = self.upstream.take() {
            upstreams.pool.put(&upstreams.owner, &key, upstream);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ReturnsUpstream<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.give_back(),
            Some(Err(_)) => self.upstream = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for ReturnsUpstream<B> {
    fn drop(&mut self) {
        // A body that is empty by its framing (HEAD, 204, 304) may never be polled.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

pin_project_lite::pin_project! {
    /// The tunnel's IO as the hyper server sees it: an idle timeout over both directions and a
    /// scanner that follows HTTP/1.x message framing to flag request heads carrying both
    /// `Content-Length` and `Transfer-Encoding` (hyper accepts them, dropping `Content-Length`,
    /// so the conflict is invisible in the parsed request).
    struct TunnelIo<IO> {
        #[pin]
        inner: IO,
        idle: Duration,
        last: Instant,
        sleep: Pin<Box<Sleep>>,
        scanner: Scanner,
        // Whether `scanner` follows the reads (HTTP/1.x only).
        scan: bool,
    }
}

impl<IO> TunnelIo<IO> {
    fn new(inner: IO, limits: CleartextLimits, framing: Arc<Framing>, scan: bool) -> Self {
        let now = Instant::now();
        TunnelIo {
            inner,
            idle: limits.idle,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            scanner: Scanner::new(framing, limits.max_header_bytes),
            scan,
        }
    }
}

/// Ready with an error once `idle` has passed since `last`.
fn poll_idle(
    sleep: &mut Pin<Box<Sleep>>,
    last: Instant,
    idle: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Error> {
    loop {
        ready!(sleep.as_mut().poll(cx));
        let deadline = last + idle;
        if deadline <= Instant::now() {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "cleartext tunnel idle timeout",
            ));
        }
        sleep.as_mut().reset(deadline);
    }
}

impl<IO: AsyncRead> AsyncRead for TunnelIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    *this.last = Instant::now();
                    if *this.scan {
                        this.scanner.feed(read);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => poll_idle(this.sleep, *this.last, *this.idle, cx).map(Err),
        }
    }
}

impl<IO: AsyncWrite> AsyncWrite for TunnelIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    *this.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => poll_idle(this.sleep, *this.last, *this.idle, cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    *this.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => poll_idle(this.sleep, *this.last, *this.idle, cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// What the framing scanner found in one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadFraming {
    /// At most one of `Content-Length` and `Transfer-Encoding`, in a form hyper accepts; the
    /// scanner follows the body.
    Clear,
    /// Both headers, or framing hyper refuses or the scanner cannot follow: `400`, close.
    Ambiguous,
}

/// What the scanner (on the reading side) shares with the request handler.
#[derive(Debug, Default)]
struct Framing {
    /// One entry per request head seen, in stream order; the handler pops one per request and
    /// answers `400` (and closes) when there is none.
    heads: Mutex<VecDeque<HeadFraming>>,
    /// Set by the handler when it sends a `101`: later bytes belong to the upgraded protocol.
    switched: AtomicBool,
}

/// Where the framing scanner is in the request stream. The chunked states mirror hyper's
/// decoder byte for byte, so both agree on where a body ends without a line-length limit.
#[derive(Debug)]
enum ScanState {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Inside a `Content-Length` body: bytes left (never 0).
    Body(u64),
    /// Expecting the first hex digit of a chunk size.
    ChunkStart,
    /// Inside a chunk size's hex digits: the size so far.
    ChunkSize(u64),
    /// Blanks after a chunk size.
    ChunkSizeBlank(u64),
    /// Inside a chunk extension.
    ChunkExtension(u64),
    /// `CR` of a chunk-size line seen; `LF` expected.
    ChunkSizeLf(u64),
    /// Inside a chunk: bytes left (never 0).
    ChunkData(u64),
    /// After a chunk's data: `CR` expected.
    ChunkDataCr,
    /// After a chunk's data: `LF` expected.
    ChunkDataLf,
    /// After the last chunk or a trailer line: a trailer line or the final `CRLF`.
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// `CR` of a trailer line seen; `LF` expected.
    TrailerLf,
    /// `CR` of the final `CRLF` seen; `LF` expected.
    EndLf,
    /// Not following any more: after a `101`, or after framing hyper refuses (it then ends the
    /// connection). Later request heads get no entry, hence `400` and close.
    Stopped,
}

/// Follows HTTP/1.x request framing over the bytes read from the tunnel and pushes, for every
/// request head, how it is framed.
#[derive(Debug)]
struct Scanner {
    state: ScanState,
    framing: Arc<Framing>,
    max_head: usize,
    /// Chunk-extension bytes seen in the current body (hyper refuses more than
    /// [`MAX_CHUNK_EXTENSION_BYTES`]).
    extension_bytes: u64,
}

impl Scanner {
    fn new(framing: Arc<Framing>, max_head: usize) -> Self {
        Scanner {
            state: ScanState::Head(Vec::new()),
            framing,
            // hyper refuses a head once this many bytes are buffered; the scanner stops later.
            max_head: max_head.saturating_add(1024),
            extension_bytes: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        if self.framing.switched.load(Ordering::Acquire) {
            self.state = ScanState::Stopped;
        }
        while !data.is_empty() && !matches!(self.state, ScanState::Stopped) {
            let state = std::mem::replace(&mut self.state, ScanState::Stopped);
            let (next, used) = self.step(state, data);
            self.state = next;
            data = &data[used..];
        }
    }

    /// Consumes a non-empty prefix of `data` (or stops); returns the next state and how much
    /// was consumed.
    fn step(&mut self, state: ScanState, data: &[u8]) -> (ScanState, usize) {
        match state {
            ScanState::Stopped => (ScanState::Stopped, data.len()),
            ScanState::Head(head) => self.head(head, data),
            ScanState::Body(left) => {
                let n = left.min(data.len() as u64);
                let next = match left - n {
                    0 => ScanState::Head(Vec::new()),
                    left => ScanState::Body(left),
                };
                (next, n as usize)
            }
            ScanState::ChunkData(left) => {
                let n = left.min(data.len() as u64);
                let next = match left - n {
                    0 => ScanState::ChunkDataCr,
                    left => ScanState::ChunkData(left),
                };
                (next, n as usize)
            }
            ScanState::Trailer => match data.iter().position(|b| *b == b'\r') {
                None => (ScanState::Trailer, data.len()),
                Some(pos) => (ScanState::TrailerLf, pos + 1),
            },
            state => (self.chunk_byte(state, data[0]), 1),
        }
    }

    /// One byte of chunked framing, as hyper's decoder reads it.
    fn chunk_byte(&mut self, state: ScanState, b: u8) -> ScanState {
        let digit = (b as char).to_digit(16).map(u64::from);
        // Another hex digit; an overflowing size is refused by hyper.
        let more = |size: u64| {
            digit
                .and_then(|d| size.checked_mul(16)?.checked_add(d))
                .map_or(ScanState::Stopped, ScanState::ChunkSize)
        };
        match (state, b) {
            (ScanState::ChunkStart, _) => more(0),
            (ScanState::ChunkSize(size), _) if digit.is_some() => more(size),
            (ScanState::ChunkSize(size) | ScanState::ChunkSizeBlank(size), b' ' | b'\t') => {
                ScanState::ChunkSizeBlank(size)
            }
            (ScanState::ChunkSize(size) | ScanState::ChunkSizeBlank(size), b';') => {
                ScanState::ChunkExtension(size)
            }
            (
                ScanState::ChunkSize(size)
                | ScanState::ChunkSizeBlank(size)
                | ScanState::ChunkExtension(size),
                b'\r',
            ) => ScanState::ChunkSizeLf(size),
            (ScanState::ChunkExtension(_), b'\n') => ScanState::Stopped,
            (ScanState::ChunkExtension(size), _) => {
                self.extension_bytes += 1;
                if self.extension_bytes >= MAX_CHUNK_EXTENSION_BYTES {
                    ScanState::Stopped
                } else {
                    ScanState::ChunkExtension(size)
                }
            }
            (ScanState::ChunkSizeLf(0), b'\n') => ScanState::TrailerStart,
            (ScanState::ChunkSizeLf(size), b'\n') => ScanState::ChunkData(size),
            (ScanState::ChunkDataCr, b'\r') => ScanState::ChunkDataLf,
            (ScanState::ChunkDataLf, b'\n') => ScanState::ChunkStart,
            (ScanState::TrailerStart, b'\r') => ScanState::EndLf,
            (ScanState::TrailerStart, _) => ScanState::Trailer,
            (ScanState::TrailerLf, b'\n') => ScanState::TrailerStart,
            (ScanState::EndLf, b'\n') => ScanState::Head(Vec::new()),
            _ => ScanState::Stopped,
        }
    }

    /// Collects a request head; once complete, records it and moves to its body.
    fn head(&mut self, mut head: Vec<u8>, data: &[u8]) -> (ScanState, usize) {
        let mut used = 0;
        if head.is_empty() {
            // Empty lines before a request line are ignored (RFC 9112 §2.2).
            used = data
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if used == data.len() {
                return (ScanState::Head(head), used);
            }
        }
        let search_from = head.len().saturating_sub(3);
        head.extend_from_slice(&data[used..]);
        let end = find_head_end(&head[search_from..]).map(|e| e + search_from);
        let Some(end) = end else {
            if head.len() > self.max_head {
                self.push(HeadFraming::Ambiguous);
                return (ScanState::Stopped, data.len());
            }
            return (ScanState::Head(head), data.len());
        };
        let consumed = data.len() - (head.len() - end);
        (self.on_head(&head[..end]), consumed)
    }

    fn push(&self, framing: HeadFraming) {
        self.framing.heads.lock().push_back(framing);
    }

    /// Records one complete head and chooses how its body is framed, as hyper does: a
    /// `Transfer-Encoding` whose last coding is `chunked` (HTTP/1.1 only), else
    /// `Content-Length` (digits only; repeated headers must agree), else no body. Anything
    /// hyper refuses, or both headers, is [`HeadFraming::Ambiguous`] and stops the scanner (the
    /// connection ends with that request).
    fn on_head(&mut self, head: &[u8]) -> ScanState {
        let mut headers = vec![httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            self.push(HeadFraming::Ambiguous);
            return ScanState::Stopped;
        }
        let http11 = req.version == Some(1);
        let mut content_length: Option<u64> = None;
        let mut cl_valid = true;
        let mut has_cl = false;
        let mut te_chunked = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                has_cl = true;
                match (digits(h.value), content_length) {
                    (Some(n), None) => content_length = Some(n),
                    (Some(n), Some(prev)) if n == prev => {}
                    _ => cl_valid = false,
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te_chunked = Some(http11 && last_coding_is_chunked(h.value));
            }
        }
        let framing = match (te_chunked, has_cl) {
            (Some(_), true) | (Some(false), false) => None,
            (Some(true), false) => Some(ScanState::ChunkStart),
            (None, true) if !cl_valid => None,
            (None, _) => match content_length {
                None | Some(0) => Some(ScanState::Head(Vec::new())),
                Some(n) => Some(ScanState::Body(n)),
            },
        };
        match framing {
            Some(next) => {
                self.push(HeadFraming::Clear);
                self.extension_bytes = 0;
                next
            }
            None => {
                self.push(HeadFraming::Ambiguous);
                ScanState::Stopped
            }
        }
    }
}

/// A `Content-Length` value as hyper reads it: ASCII digits only, no sign, no list, no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Whether a `Transfer-Encoding` value's last coding is `chunked` (a value that is not visible
/// ASCII is not, as in hyper).
fn last_coding_is_chunked(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return false;
    }
    value
        .rsplit(',')
        .next()
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// The end (exclusive) of a request head: after `\r\n\r\n` or `\n\n`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use HeadFraming::{Ambiguous, Clear};

    fn scan(chunks: &[&[u8]]) -> Vec<HeadFraming> {
        let framing = Arc::new(Framing::default());
        let mut scanner = Scanner::new(framing.clone(), 8192);
        for chunk in chunks {
            scanner.feed(chunk);
        }
        framing.heads.lock().iter().copied().collect()
    }

    /// Scans `stream` whole and byte by byte; both must agree.
    fn scan_both(stream: &[u8]) -> Vec<HeadFraming> {
        let whole = scan(&[stream]);
        let split: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(scan(&split), whole, "split scan agrees");
        whole
    }

    #[test]
    fn scanner_follows_framing() {
        let stream: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nGET /\r\n0\r\nT: v\r\n\r\n\
POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        // After the ambiguous head the scanner stops: the last request gets no entry.
        assert_eq!(scan_both(stream), vec![Clear, Clear, Clear, Ambiguous]);
    }

    #[test]
    fn scanner_keeps_following_after_an_upgrade_header() {
        let stream: &[u8] =
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n\
POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(scan_both(stream), vec![Clear, Ambiguous]);
        // After a 101 nothing is followed any more.
        let framing = Arc::new(Framing::default());
        let mut scanner = Scanner::new(framing.clone(), 8192);
        scanner.feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\n\r\n");
        framing.switched.store(true, Ordering::Release);
        scanner.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(framing.heads.lock().len(), 1);
    }

    #[test]
    fn scanner_follows_long_chunk_lines_as_hyper_does() {
        let mut stream =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        // 6,000 leading zeros, then a 10,000-byte extension: hyper accepts both.
        stream.extend(std::iter::repeat_n(b'0', 6000));
        stream.extend_from_slice(b"5 ;e=");
        stream.extend(std::iter::repeat_n(b'x', 10_000));
        stream
            .extend_from_slice(b"\r\nhello\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(scan_both(&stream), vec![Clear, Clear]);
        // Past hyper's extension limit hyper refuses the body; the scanner stops following.
        let mut stream =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        stream.extend(std::iter::repeat_n(b'x', 20_000));
        stream.extend_from_slice(b"\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(scan_both(&stream), vec![Clear]);
    }

    #[test]
    fn scanner_reads_content_length_as_hyper_does() {
        let cases: [(&[u8], Vec<HeadFraming>); 5] = [
            (b"Content-Length: 5, 5\r\n", vec![Ambiguous]),
            (b"Content-Length: +5\r\n", vec![Ambiguous]),
            (
                b"Content-Length: 5\r\nContent-Length: 6\r\n",
                vec![Ambiguous],
            ),
            (
                b"Content-Length: 5\r\nContent-Length: 5\r\n",
                vec![Clear, Clear],
            ),
            (b"Transfer-Encoding: gzip\r\n", vec![Ambiguous]),
        ];
        for (headers, expected) in cases {
            let mut stream = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
            stream.extend_from_slice(headers);
            stream.extend_from_slice(b"\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(
                scan_both(&stream),
                expected,
                "{}",
                String::from_utf8_lossy(headers)
            );
        }
    }

    #[test]
    fn cleartext_and_tls_connections_never_share_a_key() {
        let dial = Dial::Name {
            host: "api.example.com".into(),
            port: 443,
            allow_private: false,
        };
        assert_ne!(
            dial_key(&dial, Want::Http1, false),
            dial_key(&dial, Want::Http1, true)
        );
        assert_ne!(
            dial_key(&dial, Want::H2, true),
            dial_key(&dial, Want::Either, true)
        );
    }

    #[test]
    fn authorities_compare_with_default_port() {
        assert!(same_authority("Example.com", "example.com:80", "80"));
        assert!(same_authority("[::1]:8080", "[::1]:8080", "80"));
        assert!(!same_authority("a.example", "b.example", "80"));
        assert!(!same_authority("a.example:81", "a.example", "80"));
    }
}
