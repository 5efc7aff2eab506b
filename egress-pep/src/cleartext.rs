//! Cleartext HTTP/1.x inside a tunnel, proxied and decided **per request** (DESIGN §7.2).
//!
//! A hyper HTTP/1.1 server runs on the tunnel's IO. Every request is checked for framing and
//! authority ambiguities (duplicate `Host`, `Host` vs absolute-form mismatch, missing `Host`,
//! `Content-Length` together with `Transfer-Encoding` → `400`, connection closed), then decided
//! through [`CleartextHooks::decide`] on its authority, method and path. A denied request gets
//! `403 egress denied` (or `503 egress unavailable` when a dependency failed), `text/plain`, and
//! the keep-alive connection goes on: the next request is decided on its own.
//!
//! Allowed requests go upstream over a hyper HTTP/1.1 client connection on the TCP stream
//! [`CleartextHooks::dial`] returns. The upstream sees the request in origin-form with the
//! actor's original `Host`; hop-by-hop headers are removed both ways. A connection is reused for
//! later requests to the same destination **within this tunnel only** (never shared with another
//! tunnel, hence never with another actor). `Upgrade` requests (WebSocket) get a dedicated
//! upstream connection and, on `101`, both sides are spliced.
//!
//! Every request — allowed, denied or malformed — ends in one [`RequestRecord`] passed to
//! [`CleartextHooks::record`] once its response has been delivered (or abandoned).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
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
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::decision::{Decision, Dial, Reason, Verdict};
use crate::forward::DialRefusal;

/// Body text of a policy denial (DESIGN §9).
const DENIED: &str = "egress denied";
/// Body text when a dependency (control plane, resolver, upstream) failed (DESIGN §9).
const UNAVAILABLE: &str = "egress unavailable";
/// Body text of a malformed request.
const BAD_REQUEST: &str = "bad request";
/// Most upstream connections one tunnel keeps open for reuse.
const MAX_UPSTREAMS: usize = 8;
/// Most request-body bytes read and discarded so that a denied request's connection stays
/// usable; a longer body closes the connection after the denial.
const DENY_DRAIN_BYTES: usize = 64 * 1024;
/// Longest chunk-size line or trailer line the framing scanner follows.
const MAX_LINE: usize = 4096;

/// What the tunnel server provides to the cleartext proxy: the per-request decision (against
/// the actor's current policy, so a reload applies to open tunnels), the guarded dial and the
/// audit sink.
pub trait CleartextHooks: Send + Sync + 'static {
    /// Decides one request: `authority` as sent (`Host` or the absolute-form target's, port
    /// included when written), `method` (`GET`) and `path` without the query.
    fn decide(&self, authority: &str, method: &str, path: &str) -> BoxFuture<'static, Decision>;
    /// Dials where a passing decision says (through the guard and the PEP's resolver).
    fn dial(&self, dial: Dial) -> BoxFuture<'static, Result<TcpStream, DialRefusal>>;
    /// Receives one record per request once its response is done.
    fn record(&self, r: RequestRecord);
}

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
    let framing = Arc::new(Mutex::new(VecDeque::new()));
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let proxy = Arc::new(Proxy {
        hooks,
        limits,
        framing: framing.clone(),
        upstreams: Mutex::new(HashMap::new()),
        tasks: tasks.clone(),
        cancel: cancel.clone(),
    });
    let io = TunnelIo::new(io, limits, framing);
    let service = hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    tasks.close();
    tasks.wait().await;
    result
}

/// The response body type of the proxy.
type RespBody = BoxBody<Bytes, hyper::Error>;
/// The request body type sent upstream.
type UpBody = Counted<Incoming>;

/// One tunnel's proxy state.
struct Proxy {
    hooks: Arc<dyn CleartextHooks>,
    limits: CleartextLimits,
    /// One entry per request head seen by the framing scanner: `true` when it carried both
    /// `Content-Length` and `Transfer-Encoding`.
    framing: Arc<Mutex<VecDeque<bool>>>,
    /// Reusable upstream connections by destination.
    upstreams: Mutex<HashMap<String, hyper::client::conn::http1::SendRequest<UpBody>>>,
    /// Upstream connection drivers and upgraded streams.
    tasks: TaskTracker,
    /// Cancelled when [`serve`] returns or is dropped.
    cancel: CancellationToken,
}

/// The request's validated target.
struct Target {
    authority: String,
    /// `Host` to send upstream (the original one, or the absolute-form authority when absent).
    host: HeaderValue,
}

impl Proxy {
    /// Handles one request; never fails (errors become responses).
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<RespBody> {
        let start = Instant::now();
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let cl_te = self.framing.lock().pop_front().unwrap_or(false);
        let target = match validate(&req, cl_te) {
            Ok(target) => target,
            Err(authority) => {
                let guard = RecordGuard::new(
                    &self.hooks,
                    authority,
                    method,
                    path,
                    Decision::deny(Reason::BadRequest),
                    start,
                );
                return guard.local(StatusCode::BAD_REQUEST, BAD_REQUEST, true);
            }
        };
        let decision = self.hooks.decide(&target.authority, &method, &path).await;
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

        let upgrade = wants_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let (true, Some(value)) = (upgrade, upgrade_value) {
            parts.headers.insert(header::UPGRADE, value);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        parts.headers.insert(header::HOST, target.host);
        parts.uri = origin_form(&parts.uri);
        parts.version = Version::HTTP_11;
        let guard = Arc::new(guard);
        let body = Counted::new(body, guard.clone(), Direction::Up);
        let upstream_req = Request::from_parts(parts, body);

        let key = dial_key(&dial);
        let sender = if upgrade {
            self.connect(dial, true).await
        } else {
            match self.reusable(&key).await {
                Some(sender) => Ok(sender),
                None => self.connect(dial, false).await,
            }
        };
        let mut sender = match sender {
            Ok(sender) => sender,
            Err(refusal) => {
                tracing::debug!(detail = %refusal.detail, reason = refusal.reason.as_str(), "cleartext upstream dial refused");
                return guard.refused_after_dial(refusal.reason);
            }
        };
        let sent = tokio::time::timeout(self.limits.idle, sender.send_request(upstream_req)).await;
        if !upgrade {
            self.keep(key, sender);
        }
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cleartext upstream request failed");
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
        Response::from_parts(parts, body.boxed())
    }

    /// Answers a refused request (403 or 503 by reason) and keeps the connection usable when the
    /// request body can be discarded cheaply.
    async fn refuse(&self, req: Request<Incoming>, guard: RecordGuard) -> Response<RespBody> {
        let close = !self.discard_body(req).await;
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

    /// A kept connection to `key` that is still open and ready.
    async fn reusable(&self, key: &str) -> Option<hyper::client::conn::http1::SendRequest<UpBody>> {
        let mut sender = self.upstreams.lock().remove(key)?;
        if sender.is_closed() {
            return None;
        }
        match tokio::time::timeout(self.limits.idle, sender.ready()).await {
            Ok(Ok(())) => Some(sender),
            _ => None,
        }
    }

    /// Keeps `sender` for reuse (bounded: closed entries go first, then an arbitrary one).
    fn keep(&self, key: String, sender: hyper::client::conn::http1::SendRequest<UpBody>) {
        if sender.is_closed() {
            return;
        }
        let mut upstreams = self.upstreams.lock();
        upstreams.retain(|_, s| !s.is_closed());
        if upstreams.len() >= MAX_UPSTREAMS
            && !upstreams.contains_key(&key)
            && let Some(evict) = upstreams.keys().next().cloned()
        {
            upstreams.remove(&evict);
        }
        upstreams.insert(key, sender);
    }

    /// Dials and opens a new upstream HTTP/1.1 connection; its driver runs on the tunnel's
    /// task tracker.
    async fn connect(
        &self,
        dial: Dial,
        upgrades: bool,
    ) -> Result<hyper::client::conn::http1::SendRequest<UpBody>, DialRefusal> {
        let stream = self.hooks.dial(dial).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| DialRefusal {
                reason: Reason::DialFailed,
                detail: format!("HTTP/1.1 handshake: {e}"),
            })?;
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let result = if upgrades {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = conn.with_upgrades() => r,
                }
            } else {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = conn => r,
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "cleartext upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Checks the request's framing and authority. `Err` carries the authority for the record.
fn validate(req: &Request<Incoming>, cl_te: bool) -> Result<Target, String> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    let host = hosts
        .first()
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let shown = host.clone().unwrap_or_default();
    if cl_te
        || hosts.len() > 1
        || (hosts.len() == 1 && host.is_none())
        || req.method() == Method::CONNECT
    {
        return Err(shown);
    }
    let uri = req.uri();
    if let Some(scheme) = uri.scheme() {
        let Some(uri_authority) = uri.authority() else {
            return Err(shown);
        };
        if scheme != &http::uri::Scheme::HTTP || uri_authority.as_str().contains('@') {
            return Err(shown);
        }
        return match (hosts.first(), host) {
            (Some(value), Some(host)) => {
                if same_authority(&host, uri_authority.as_str()) {
                    Ok(Target {
                        authority: host,
                        host: (*value).clone(),
                    })
                } else {
                    Err(host)
                }
            }
            // HTTP/1.0 may omit Host; HTTP/1.1 must send it (RFC 9112 §3.2).
            _ if req.version() == Version::HTTP_11 => Err(uri_authority.to_string()),
            _ => match HeaderValue::from_str(uri_authority.as_str()) {
                Ok(value) => Ok(Target {
                    authority: uri_authority.to_string(),
                    host: value,
                }),
                Err(_) => Err(uri_authority.to_string()),
            },
        };
    }
    match (hosts.first(), host) {
        (Some(value), Some(host)) if !host.is_empty() => Ok(Target {
            authority: host,
            host: (*value).clone(),
        }),
        _ => Err(shown),
    }
}

/// Whether two authorities name the same host and port (ASCII case-insensitive; a missing
/// port equals `:80`).
fn same_authority(a: &str, b: &str) -> bool {
    fn split(s: &str) -> (&str, &str) {
        match s.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, port),
            _ => (s, "80"),
        }
    }
    let (ah, ap) = split(a);
    let (bh, bp) = split(b);
    let ap = if ap.is_empty() { "80" } else { ap };
    let bp = if bp.is_empty() { "80" } else { bp };
    ah.eq_ignore_ascii_case(bh) && ap == bp
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

/// The reuse key of an upstream destination.
fn dial_key(dial: &Dial) -> String {
    match dial {
        Dial::Name {
            host,
            port,
            allow_private,
        } => format!("name {host}:{port} {allow_private}"),
        Dial::Address { addr, tcp_rule } => format!("addr {addr} {tcp_rule:?}"),
    }
}

/// The status and body of a denial by `reason`.
fn denial(reason: Reason) -> (StatusCode, &'static str) {
    let status = reason.status();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        (status, UNAVAILABLE)
    } else if status == StatusCode::BAD_REQUEST {
        (status, BAD_REQUEST)
    } else {
        (StatusCode::FORBIDDEN, DENIED)
    }
}

/// An empty response body.
fn empty() -> RespBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A `text/plain` response made by the PEP.
fn text_response(status: StatusCode, text: &'static str, close: bool) -> Response<RespBody> {
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
        {
            let mut decision = self.decision.lock();
            *decision = Decision {
                verdict: Verdict::Deny,
                reason,
                rule: decision.rule.clone(),
                dial: None,
            };
        }
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
    }
}

impl<IO> TunnelIo<IO> {
    fn new(inner: IO, limits: CleartextLimits, framing: Arc<Mutex<VecDeque<bool>>>) -> Self {
        let now = Instant::now();
        TunnelIo {
            inner,
            idle: limits.idle,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            scanner: Scanner::new(framing, limits.max_header_bytes),
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
                    this.scanner.feed(read);
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

/// Where the framing scanner is in the request stream.
#[derive(Debug)]
enum ScanState {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Inside a `Content-Length` body: bytes left.
    Body(u64),
    /// Collecting a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Inside a chunk: bytes left.
    ChunkData(u64),
    /// Skipping the CRLF after a chunk's data.
    ChunkEnd,
    /// Collecting trailer lines after the last chunk (the buffer holds the current line).
    Trailers(Vec<u8>),
    /// Not following any more (after an upgrade or something hyper will reject anyway).
    Lost,
}

/// Follows HTTP/1.x request framing over the bytes read from the tunnel and pushes, for every
/// request head, whether it carried both `Content-Length` and `Transfer-Encoding`.
#[derive(Debug)]
struct Scanner {
    state: ScanState,
    out: Arc<Mutex<VecDeque<bool>>>,
    max_head: usize,
}

impl Scanner {
    fn new(out: Arc<Mutex<VecDeque<bool>>>, max_head: usize) -> Self {
        Scanner {
            state: ScanState::Head(Vec::new()),
            out,
            max_head: max_head.saturating_add(1024),
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let state = std::mem::replace(&mut self.state, ScanState::Lost);
            let (next, used) = self.step(state, data);
            self.state = next;
            data = &data[used..];
            if matches!(self.state, ScanState::Lost) {
                return;
            }
        }
    }

    /// Consumes a prefix of `data`; returns the next state and how much was consumed.
    fn step(&mut self, state: ScanState, data: &[u8]) -> (ScanState, usize) {
        match state {
            ScanState::Lost => (ScanState::Lost, data.len()),
            ScanState::Head(mut head) => {
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
                        return (ScanState::Lost, data.len());
                    }
                    return (ScanState::Head(head), data.len());
                };
                let consumed = data.len() - (head.len() - end);
                (self.on_head(&head[..end]), consumed)
            }
            ScanState::Body(left) => {
                let n = left.min(data.len() as u64);
                let left = left - n;
                let next = if left == 0 {
                    ScanState::Head(Vec::new())
                } else {
                    ScanState::Body(left)
                };
                (next, n as usize)
            }
            ScanState::ChunkSize(mut line) => match data.iter().position(|b| *b == b'\n') {
                None => {
                    line.extend_from_slice(data);
                    if line.len() > MAX_LINE {
                        return (ScanState::Lost, data.len());
                    }
                    (ScanState::ChunkSize(line), data.len())
                }
                Some(pos) => {
                    line.extend_from_slice(&data[..pos]);
                    let digits: Vec<u8> = line
                        .iter()
                        .copied()
                        .take_while(u8::is_ascii_hexdigit)
                        .collect();
                    let size = std::str::from_utf8(&digits)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s, 16).ok());
                    let next = match size {
                        None => ScanState::Lost,
                        Some(0) => ScanState::Trailers(Vec::new()),
                        Some(n) => ScanState::ChunkData(n),
                    };
                    (next, pos + 1)
                }
            },
            ScanState::ChunkData(left) => {
                let n = left.min(data.len() as u64);
                let left = left - n;
                let next = if left == 0 {
                    ScanState::ChunkEnd
                } else {
                    ScanState::ChunkData(left)
                };
                (next, n as usize)
            }
            ScanState::ChunkEnd => match data.iter().position(|b| *b == b'\n') {
                None => (ScanState::ChunkEnd, data.len()),
                Some(pos) => (ScanState::ChunkSize(Vec::new()), pos + 1),
            },
            ScanState::Trailers(mut line) => match data.iter().position(|b| *b == b'\n') {
                None => {
                    line.extend_from_slice(data);
                    if line.len() > MAX_LINE {
                        return (ScanState::Lost, data.len());
                    }
                    (ScanState::Trailers(line), data.len())
                }
                Some(pos) => {
                    line.extend_from_slice(&data[..pos]);
                    let blank = line.is_empty() || line == b"\r";
                    let next = if blank {
                        ScanState::Head(Vec::new())
                    } else {
                        ScanState::Trailers(Vec::new())
                    };
                    (next, pos + 1)
                }
            },
        }
    }

    /// Records one complete head and chooses how its body is framed.
    fn on_head(&mut self, head: &[u8]) -> ScanState {
        let mut headers = vec![httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return ScanState::Lost,
        }
        let mut content_length: Option<u64> = None;
        let mut has_cl = false;
        let mut te_chunked_last = None;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                has_cl = true;
                content_length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
                te_chunked_last = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        self.out
            .lock()
            .push_back(has_cl && te_chunked_last.is_some());
        if upgrade {
            return ScanState::Lost;
        }
        match (te_chunked_last, content_length) {
            (Some(true), _) => ScanState::ChunkSize(Vec::new()),
            (Some(false), _) => ScanState::Lost,
            (None, Some(0)) => ScanState::Head(Vec::new()),
            (None, Some(n)) => ScanState::Body(n),
            (None, None) if has_cl => ScanState::Lost,
            (None, None) => ScanState::Head(Vec::new()),
        }
    }
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

    fn scan(chunks: &[&[u8]]) -> Vec<bool> {
        let out = Arc::new(Mutex::new(VecDeque::new()));
        let mut scanner = Scanner::new(out.clone(), 8192);
        for chunk in chunks {
            scanner.feed(chunk);
        }
        out.lock().iter().copied().collect()
    }

    #[test]
    fn scanner_follows_framing() {
        let stream: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nGET /\r\n0\r\nT: v\r\n\r\n\
POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(scan(&[stream]), vec![false, false, false, true]);
        let split: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(scan(&split), vec![false, false, false, true]);
    }

    #[test]
    fn authorities_compare_with_default_port() {
        assert!(same_authority("Example.com", "example.com:80"));
        assert!(same_authority("[::1]:8080", "[::1]:8080"));
        assert!(!same_authority("a.example", "b.example"));
        assert!(!same_authority("a.example:81", "a.example"));
    }
}
