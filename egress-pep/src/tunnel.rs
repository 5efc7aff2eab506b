//! The tunnel server (DESIGN §7.1): TLS with a required client certificate; without ALPN or with
//! `http/1.1` one HTTP/1.1 `CONNECT <ip>:<port>` per connection (what upstream atunnel sends),
//! with ALPN `h2` RFC 9113 CONNECT streams, many per connection.
//!
//! Per CONNECT: the target must be an IP literal with a port (else 403), any other method 405;
//! then identity ([`identity`]: the certificate's actor, or an allow-listed agent plus its egress
//! assertion), liveness ([`liveness`]: `GetActor` RUNNING, cached), and the actor's policy from
//! the [`PolicySource`] (unavailable → 503, none → 403). Refusals answer `403 egress denied` or
//! `503 egress unavailable` (`text/plain`); the reason goes only to the audit record and the log.
//!
//! Then `200`, and the tunnel's first bytes are classified: a TLS ClientHello is decided on its
//! SNI, opaque bytes on `tcp` rules; either is dialled through the [`Dialer`] (guard, own
//! resolver) and spliced, or, when denied, closed with no byte sent. Cleartext HTTP is handed to
//! [`cleartext::serve`], which decides every request against the actor's *current* policy (a
//! reload applies to open tunnels). Every tunnel holds the drain; once draining, new CONNECTs get
//! 503 and h2 connections a GOAWAY. One audit record per tunnel (and per cleartext request).
//! An h2 connection must bring its first CONNECT within the header read timeout and is closed
//! once it has had no open tunnel for the idle timeout.

pub mod identity;
pub mod liveness;
mod refused;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use runtime::drain::DrainSignal;
use runtime::listener::{BoundListener, Conn, ConnInfo, ServerTlsSource};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::actor_forward::{self, IngressPeer};
use crate::actor_hosts::ActorHosts;
use crate::audit::{AuditActor, AuditRecord, AuditSink, RecordKind};
use crate::classify::{self, Classified, ClassifyError, ClassifyLimits, Rewind};
use crate::cleartext::{
    self, ActorConnection, CleartextHooks, CleartextLimits, Origin, RequestRecord, Upstreams,
};
use crate::credentials::{CredentialMemo, Credentials};
use crate::decision::{Decision, Dial, Query, Reason, RuleKind, Traffic, Verdict};
use crate::forward::{Absorb, DialRefusal, Dialed, Dialer, SpliceCounters};
use crate::h2_tunnel::H2Tunnel;
use crate::intercepted::Interception;
use crate::metrics::{ActiveTunnel, EgressMetrics, Limit};
use crate::policy::model::CredentialHeader;
use crate::policy::{CompiledPolicy, PolicySource};
use crate::subject::Subject;
use crate::upstream_pool::{PoolLimits, UpstreamPool};
use routing_core::directory::ActorDirectory;

pub use identity::{ASSERTION_HEADER, IdentitySettings};

/// Body of a 403 answer.
pub const DENIED_BODY: &str = "egress denied";
/// Body of a 503 answer.
pub const UNAVAILABLE_BODY: &str = "egress unavailable";
/// Longest wait for a denied tunnel's orderly close (TLS close_notify, h2 END_STREAM).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest h2 frame the PEP accepts (`SETTINGS_MAX_FRAME_SIZE`), bytes: bulk tunnels move in
/// fewer, larger DATA frames than the 16 KiB default (fewer frame wake-ups per byte at both
/// ends); measured with `bench/agent.sh`.
const H2_MAX_FRAME_SIZE: u32 = 256 * 1024;

/// Bounds of the tunnel server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelLimits {
    /// Longest time for a CONNECT request's head to arrive once the TLS handshake is done
    /// (HTTP/1.1: the head; h2: the connection preface and the first CONNECT's HEADERS);
    /// exceeded → the connection closes (counted `slow_header`). The tunnel listener bounds the
    /// handshake itself by the same value. Default 10 s.
    pub header_read_timeout: Duration,
    /// Largest CONNECT request head in bytes (HTTP/1.1 head; h2 header list); more → 431
    /// (HTTP/1.1: counted `oversized_header`; h2: answered by the h2 layer, not counted).
    /// Default 16 KiB.
    pub max_header_bytes: usize,
    /// Most CONNECT streams open at once on one h2 connection (the advertised
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; streams beyond it are refused, counted
    /// `too_many_streams`). Default 256.
    pub max_streams_per_connection: u32,
    /// A tunnel with no byte either way for this long is closed, and so is an h2 connection
    /// without an open tunnel for this long (both counted `idle`). Default 10 min.
    pub idle_timeout: Duration,
    /// h2 per-stream flow-control window, bytes: bounds what one tunnel buffers receiving
    /// (sending, the stream's send buffer is bounded by `stream_buffer_bytes` as its splice).
    /// Default 4 MiB: a bulk tunnel keeps moving across a round trip.
    pub h2_stream_window: u32,
    /// h2 per-connection flow-control window, bytes: bounds what all streams of a connection
    /// buffer receiving (in payload bytes: a peer sending tiny frames costs more per byte).
    /// Default 4 MiB.
    pub h2_connection_window: u32,
    /// The most an HTTP/1.1 tunnel's splice buffers per direction, bytes (buffers grow to it
    /// while a stream is bulk; see [`crate::forward::SpliceLimits`]); an h2 tunnel's is capped
    /// at `h2_stream_window`. Default 1 MiB.
    pub stream_buffer_bytes: usize,
    /// How long a `GetActor` answer (RUNNING or NOT_FOUND) is reused per actor. Default 2 s.
    pub liveness_ttl: Duration,
    /// Most actors whose liveness is cached. Default 100,000.
    pub liveness_capacity: u64,
}

impl TunnelLimits {
    /// Bounds of a tunnel's splice: the idle timeout, and buffers up to `stream_buffer_bytes`,
    /// for an h2 tunnel (`h2`) at most `h2_stream_window`: an h2 stream moves at most its window
    /// per round trip, so a larger buffer would only hold bytes the window does not let through
    /// (and there are many streams per connection).
    pub fn splice_limits(&self, h2: bool) -> crate::forward::SpliceLimits {
        let max_buffer = if h2 {
            self.stream_buffer_bytes.min(self.h2_stream_window as usize)
        } else {
            self.stream_buffer_bytes
        };
        crate::forward::SpliceLimits {
            idle: self.idle_timeout,
            max_buffer,
        }
    }
}

impl Default for TunnelLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_streams_per_connection: 256,
            idle_timeout: Duration::from_secs(600),
            h2_stream_window: 4 * 1024 * 1024,
            h2_connection_window: 4 * 1024 * 1024,
            stream_buffer_bytes: crate::forward::DEFAULT_SPLICE_BUFFER_MAX,
            liveness_ttl: liveness::DEFAULT_TTL,
            liveness_capacity: liveness::DEFAULT_CAPACITY,
        }
    }
}

/// Everything the PEP is built from.
pub struct PepParts {
    /// The tunnel listener's TLS (client certificate required; ALPN `h2`, `http/1.1`). The
    /// listener handed to [`Pep::serve`] must already use it (see [`Pep::tls`]).
    pub tls: Arc<dyn ServerTlsSource>,
    /// Actor liveness (`GetActor`).
    pub directory: Arc<dyn ActorDirectory>,
    /// Where each actor's policy comes from.
    pub policy: Arc<dyn PolicySource>,
    /// Dials allowed traffic (own resolver, guard).
    pub dialer: Arc<Dialer>,
    /// Audit records.
    pub audit: Arc<AuditSink>,
    /// Metrics.
    pub metrics: EgressMetrics,
    /// How identities are read.
    pub identity: IdentitySettings,
    /// Tunnel server bounds.
    pub limits: TunnelLimits,
    /// Bounds of first-bytes classification.
    pub classify: ClassifyLimits,
    /// Bounds of the cleartext HTTP proxy.
    pub cleartext: CleartextLimits,
    /// The names (and ingress addresses) that are actor-to-actor traffic (DESIGN §7.4).
    pub actor_hosts: ActorHosts,
    /// Ingress, where actor traffic is forwarded; `None`: actor forwarding is not configured
    /// (then `actor_hosts` has no forwarding either).
    pub ingress: Option<IngressPeer>,
    /// Credential sources of `replace_headers` effects (DESIGN §7.3).
    pub credentials: Arc<Credentials>,
    /// TLS interception for `https` rules; `None`: they deny with `interception not
    /// configured` (DESIGN §7.2).
    pub interception: Option<Interception>,
}

/// The egress PEP: the tunnel server and everything a tunnel needs.
pub struct Pep {
    tls: Arc<dyn ServerTlsSource>,
    directory_kind: &'static str,
    policy: Arc<dyn PolicySource>,
    dialer: Arc<Dialer>,
    audit: Arc<AuditSink>,
    metrics: EgressMetrics,
    identity: IdentitySettings,
    limits: TunnelLimits,
    classify: ClassifyLimits,
    cleartext: CleartextLimits,
    actor_hosts: ActorHosts,
    ingress: Option<Arc<IngressPeer>>,
    credentials: Arc<Credentials>,
    liveness: liveness::Liveness,
    listeners: parking_lot::Mutex<Vec<SocketAddr>>,
    interception: Option<Interception>,
    /// Idle upstream connections of readable traffic (cleartext, intercepted), per actor.
    upstreams: Arc<UpstreamPool<cleartext::Upstream>>,
}

impl std::fmt::Debug for Pep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pep")
            .field("policy", &self.policy.kind())
            .field("directory", &self.directory_kind)
            .field("limits", &self.limits)
            .finish()
    }
}

/// What one connection shares with its CONNECTs.
struct ConnCtx {
    info: Arc<ConnInfo>,
    cert: identity::CertIdentity,
    drain: DrainSignal,
}

/// Holds one open CONNECT stream of an h2 connection in the connection's count of them
/// (answered or tunnelling), which its first-request deadline and idle timeout watch.
struct StreamGuard(Arc<watch::Sender<usize>>);

impl StreamGuard {
    fn open(streams: &Arc<watch::Sender<usize>>) -> Self {
        streams.send_modify(|n| *n += 1);
        Self(streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Why an h2 connection's timer fired.
#[derive(Clone, Copy)]
enum H2Timer {
    /// No CONNECT arrived within the header read timeout.
    FirstRequest,
    /// No CONNECT stream open for the idle timeout.
    Idle,
    /// The idle GOAWAY went unanswered (no stream open) for [`CLOSE_TIMEOUT`].
    Closing,
}

/// A tunnel that was answered 200.
struct Tunnel {
    subject: Arc<Subject>,
    dst: SocketAddr,
    policy: Arc<CompiledPolicy>,
    /// The CONNECT's `ate-destination-host`, when the target is an ingress address (it names
    /// the actor of opaque traffic there).
    dst_host: Option<Box<str>>,
    started: Instant,
    _active: ActiveTunnel,
    /// h2: keeps the connection's stream count up while the tunnel runs (`Some` marks an h2
    /// tunnel).
    stream: Option<StreamGuard>,
}

impl Pep {
    /// Builds the PEP.
    pub fn new(parts: PepParts) -> Arc<Self> {
        let liveness = liveness::Liveness::new(
            parts.directory.clone(),
            parts.limits.liveness_ttl,
            parts.limits.liveness_capacity,
        );
        Arc::new(Self {
            tls: parts.tls,
            directory_kind: parts.directory.kind(),
            policy: parts.policy,
            dialer: parts.dialer,
            audit: parts.audit,
            metrics: parts.metrics,
            identity: parts.identity,
            limits: parts.limits,
            classify: parts.classify,
            cleartext: parts.cleartext,
            actor_hosts: parts.actor_hosts,
            ingress: parts.ingress.map(Arc::new),
            credentials: parts.credentials,
            liveness,
            listeners: parking_lot::Mutex::new(Vec::new()),
            interception: parts.interception,
            upstreams: Arc::new(UpstreamPool::new(PoolLimits::default())),
        })
    }

    /// Serves tunnels on `listener` (already TLS, see [`BoundListener::with_tls`]) until the
    /// drain starts; open tunnels hold the drain until they end or its deadline passes.
    pub async fn serve(self: Arc<Self>, listener: BoundListener, drain: DrainSignal) {
        self.listeners.lock().push(listener.local_addr());
        let pep = self.clone();
        let signal = drain.clone();
        listener
            .serve(drain, move |conn| {
                pep.clone().connection(conn, signal.clone())
            })
            .await;
    }

    /// The tunnel listener's TLS source, for binding the listener:
    /// `BoundListener::bind(..).await?.with_tls(pep.tls())`.
    pub fn tls(&self) -> Arc<dyn ServerTlsSource> {
        self.tls.clone()
    }

    /// The metrics handles (shared with the caller's registry).
    pub fn metrics(&self) -> &EgressMetrics {
        &self.metrics
    }

    /// The audit sink.
    pub fn audit(&self) -> &Arc<AuditSink> {
        &self.audit
    }

    /// The PEP's state for `/statusz`: listeners, the policy source and its state, active
    /// tunnels, caches, the audit sink with the recent decisions.
    pub fn status(&self) -> serde_json::Value {
        let dns = self.dialer.resolver().cache_entries();
        self.metrics.set_dns_cache_entries(dns);
        serde_json::json!({
            "listeners": self.listeners.lock().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "policy": {
                "source": self.policy.kind(),
                "state": self.policy.status(),
            },
            "directory": self.directory_kind,
            "active_tunnels": self.metrics.active_tunnels(),
            "liveness_cache_entries": self.liveness.entries(),
            "dns_cache_entries": dns,
            "upstream_pool_idle": self.upstreams.len(),
            "identity": {
                "trust_domain": self.identity.trust_domain,
                "accept_legacy_actor_ids": self.identity.spiffe.accept_legacy_actor,
                "accept_actor_identity_extension": self.identity.accept_actor_identity_extension,
                "agents": self.identity.agents,
            },
            "audit": self.audit.status(),
            "actor_forwarding": self.ingress.as_ref().map(|i| serde_json::json!({"ingress": i.address()})),
            "credentials": self.credentials.status(),
            "interception": self.interception.as_ref().map(|i| {
                self.observe_minter(i);
                i.status()
            }),
        })
    }

    /// One TLS connection: h2 when ALPN says so, else HTTP/1.1 (one CONNECT).
    async fn connection(self: Arc<Self>, conn: Conn, drain: DrainSignal) {
        let info = conn.info().clone();
        let cert = self
            .identity
            .read_certificate(info.peer_identity.as_ref().map(|p| p.certificate.as_ref()));
        let h2 = info.alpn.as_deref() == Some(b"h2");
        let ctx = Arc::new(ConnCtx { info, cert, drain });
        if h2 {
            return self.connection_h2(conn, ctx).await;
        }
        let pep = self.clone();
        let svc_ctx = ctx.clone();
        let service = hyper::service::service_fn(move |req| {
            let pep = pep.clone();
            let ctx = svc_ctx.clone();
            async move { Ok::<_, Infallible>(pep.connect(req, ctx).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_header_size(self.limits.max_header_bytes)
            .keep_alive(false);
        let result = builder
            .serve_connection(TokioIo::new(conn), service)
            .with_upgrades()
            .await;
        if let Err(e) = result {
            if e.is_timeout() {
                self.metrics.limit(Limit::SlowHeader);
            } else if e.is_parse_too_large() {
                self.metrics.limit(Limit::OversizedHeader);
            }
            tracing::debug!(peer = %ctx.info.peer, error = %e, "tunnel connection ended");
        }
    }

    /// An h2 connection (RFC 9113 CONNECT streams), served on the `h2` crate: each stream runs
    /// in one task from its HEADERS to its end ([`Pep::stream_h2`]). Time bounds: the preface
    /// and first CONNECT within the header read timeout, then no stretch of the idle timeout
    /// without an open stream (then GOAWAY). The drain sends GOAWAY and ends the timers.
    async fn connection_h2(self: Arc<Self>, conn: Conn, ctx: Arc<ConnCtx>) {
        let (streams, mut streams_rx) = watch::channel(0usize);
        let streams = Arc::new(streams);
        let io = refused::CountRefused::new(conn, self.metrics.clone(), ctx.drain.clone());
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(self.limits.max_streams_per_connection)
            .initial_window_size(self.limits.h2_stream_window)
            .initial_connection_window_size(self.limits.h2_connection_window)
            .max_send_buffer_size(self.limits.splice_limits(true).max_buffer)
            .max_frame_size(H2_MAX_FRAME_SIZE)
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX));
        let accepted = tokio::time::Instant::now();
        let first_deadline = accepted + self.limits.header_read_timeout;
        let handshake = tokio::time::timeout_at(first_deadline, builder.handshake::<_, Bytes>(io));
        let mut conn = match handshake.await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::debug!(peer = %ctx.info.peer, error = %e, "h2 tunnel connection ended");
                return;
            }
            Err(_) => {
                self.metrics.limit(Limit::SlowHeader);
                tracing::debug!(peer = %ctx.info.peer, "h2 tunnel connection sent no preface in time");
                return;
            }
        };
        let mut first_seen = false;
        let mut idle_since = accepted;
        let mut draining = false;
        // After an idle GOAWAY: when a peer that never closes is dropped (unless a CONNECT
        // that raced the GOAWAY opened a tunnel, which its own idle timeout bounds).
        let mut closing: Option<tokio::time::Instant> = None;
        let result = loop {
            let timer = if let Some(deadline) = closing {
                (*streams_rx.borrow() == 0).then_some((deadline, H2Timer::Closing))
            } else if draining {
                None
            } else if !first_seen {
                Some((first_deadline, H2Timer::FirstRequest))
            } else if *streams_rx.borrow() == 0 {
                Some((idle_since + self.limits.idle_timeout, H2Timer::Idle))
            } else {
                None
            };
            let (at, why) = timer.unwrap_or((accepted, H2Timer::Idle));
            tokio::select! {
                next = conn.accept() => match next {
                    Some(Ok((req, respond))) => {
                        first_seen = true;
                        let stream = StreamGuard::open(&streams);
                        let pep = self.clone();
                        ctx.drain.spawn(pep.stream_h2(req, respond, ctx.clone(), stream));
                    }
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                },
                _ = ctx.drain.draining(), if !draining => {
                    draining = true;
                    conn.graceful_shutdown();
                }
                changed = streams_rx.changed(), if !draining || closing.is_some() => {
                    if changed.is_ok() && *streams_rx.borrow_and_update() == 0 {
                        let now = tokio::time::Instant::now();
                        idle_since = now;
                        // A CONNECT that raced the GOAWAY has ended: the peer gets the close
                        // timeout again from here (its last frames are still being flushed).
                        if closing.is_some() {
                            closing = Some(now + CLOSE_TIMEOUT);
                        }
                    }
                }
                _ = tokio::time::sleep_until(at), if timer.is_some() => match why {
                    H2Timer::FirstRequest => {
                        self.metrics.limit(Limit::SlowHeader);
                        tracing::debug!(peer = %ctx.info.peer, "h2 tunnel connection sent no CONNECT in time");
                        break Ok(());
                    }
                    H2Timer::Idle => {
                        self.metrics.limit(Limit::Idle);
                        tracing::debug!(peer = %ctx.info.peer, "h2 tunnel connection idle");
                        conn.graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
                    }
                    H2Timer::Closing => break Ok(()),
                },
            }
        };
        if let Err(e) = result {
            if e.is_go_away() && !e.is_remote() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
            {
                self.metrics.limit(Limit::H2Flood);
            }
            tracing::debug!(peer = %ctx.info.peer, error = %e, "h2 tunnel connection ended");
        }
    }

    /// One h2 CONNECT stream, in one task: admitted → `200` and the tunnel right here (no
    /// hand-off to another task); refused → the answer.
    async fn stream_h2(
        self: Arc<Self>,
        req: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        ctx: Arc<ConnCtx>,
        stream: StreamGuard,
    ) {
        let (head, recv) = req.into_parts();
        let admitted = self
            .admit(&head.method, &head.uri, &head.headers, &ctx, Some(stream))
            .await;
        match admitted {
            Ok((tunnel, rec)) => match respond.send_response(Response::new(()), false) {
                Ok(send) => self.run(H2Tunnel::new(send, recv), tunnel, rec).await,
                Err(e) => {
                    tracing::debug!(dst = %tunnel.dst, error = %e, "tunnel stream reset before its 200");
                    self.gone_before_200(&tunnel, rec);
                }
            },
            Err(answer) => answer.send_h2(respond),
        }
    }

    /// HTTP/1.1: answers one CONNECT: refusal, or 200 with the tunnel spawned on the upgrade.
    async fn connect(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        ctx: Arc<ConnCtx>,
    ) -> Response<Full<Bytes>> {
        let admitted = self
            .admit(req.method(), req.uri(), req.headers(), &ctx, None)
            .await;
        let (tunnel, rec) = match admitted {
            Ok(admitted) => admitted,
            Err(answer) => return answer.h1(),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let pep = self.clone();
        let dst = tunnel.dst;
        ctx.drain.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => pep.run(TokioIo::new(upgraded), tunnel, rec).await,
                Err(e) => {
                    tracing::debug!(%dst, error = %e, "tunnel upgrade failed");
                    pep.gone_before_200(&tunnel, rec);
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()
    }

    /// Decides a CONNECT's head (DESIGN §7.1): target, drain, identity, loop, liveness, policy.
    /// Admitted: the tunnel to run after `200` and its audit record so far (`stream` holds an
    /// h2 stream's place in its connection's count). Refused: the answer, already audited.
    async fn admit(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        ctx: &ConnCtx,
        stream: Option<StreamGuard>,
    ) -> Result<(Tunnel, AuditRecord), Answer> {
        let started = Instant::now();
        let mut rec = AuditRecord::new(RecordKind::Tunnel, Verdict::Deny, Reason::BadRequest);
        if method != Method::CONNECT {
            let answer = Answer {
                status: StatusCode::METHOD_NOT_ALLOWED,
                body: "method not allowed",
            };
            return Err(self.refused(
                rec,
                Reason::BadRequest,
                "not a CONNECT",
                started,
                answer,
                ctx,
            ));
        }
        let Some(dst) = connect_target(uri) else {
            let detail = format!("CONNECT target {uri:?} is not ip:port");
            return Err(self.refuse(rec, Reason::BadTarget, &detail, started, ctx));
        };
        rec.dst = Some(dst);
        if ctx.drain.is_draining() {
            return Err(self.refuse(rec, Reason::Draining, "draining", started, ctx));
        }
        let mut assertions = headers.get_all(ASSERTION_HEADER).iter();
        let assertion = match (assertions.next(), assertions.next()) {
            (Some(v), None) => Some(v.to_str().unwrap_or("")),
            (None, _) => None,
            (Some(_), Some(_)) => Some(""),
        };
        let proven = match self.identity.prove(&ctx.cert, assertion, dst).await {
            Ok(p) => p,
            Err(refusal) => {
                self.metrics.identity_failure(refusal.reason);
                return Err(self.refuse(rec, refusal.reason, &refusal.detail, started, ctx));
            }
        };
        rec.identity = Some(proven.kind);
        rec.actor = Some(AuditActor {
            atespace: proven.actor.atespace.clone(),
            name: proven.actor.name.clone(),
            uid: proven.actor.uid.clone(),
        });
        // A CONNECT a PEP sent (to ingress) that came back to a PEP (DESIGN §7.4).
        if actor_forward::is_loop(headers) {
            return Err(self.refuse(rec, Reason::ForwardingLoop, "Via names a PEP", started, ctx));
        }
        let live = match self.liveness.check(&proven.actor).await {
            Ok(l) => l,
            Err((reason, detail)) => {
                self.metrics.identity_failure(reason);
                return Err(self.refuse(rec, reason, &detail, started, ctx));
            }
        };
        if let Some(a) = rec.actor.as_mut() {
            a.uid = Some(live.uid.clone());
        }
        let mut actor = proven.actor;
        actor.uid = Some(live.uid);
        let subject = Arc::new(Subject {
            actor,
            template: live.template,
            kind: proven.kind,
        });
        let policy = match self.policy.policy_for(&subject).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(self.refuse(rec, Reason::NoPolicy, "no policy", started, ctx));
            }
            Err(e) => {
                let detail = e.to_string();
                return Err(self.refuse(
                    rec,
                    Reason::ControlPlaneUnavailable,
                    &detail,
                    started,
                    ctx,
                ));
            }
        };
        self.metrics.connect(started.elapsed());
        let dst_host = if self.actor_hosts.is_ingress(dst) {
            actor_forward::destination_host(headers).map(Box::from)
        } else {
            None
        };
        let tunnel = Tunnel {
            subject,
            dst,
            policy,
            dst_host,
            started,
            _active: self.metrics.open_tunnel(),
            stream,
        };
        Ok((tunnel, rec))
    }

    /// Counts, audits and logs a refused CONNECT; answers 403 or 503 per the reason.
    fn refuse(
        &self,
        rec: AuditRecord,
        reason: Reason,
        detail: &str,
        started: Instant,
        ctx: &ConnCtx,
    ) -> Answer {
        let answer = if reason.status() == StatusCode::SERVICE_UNAVAILABLE {
            Answer {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: UNAVAILABLE_BODY,
            }
        } else {
            Answer {
                status: StatusCode::FORBIDDEN,
                body: DENIED_BODY,
            }
        };
        self.refused(rec, reason, detail, started, answer, ctx)
    }

    fn refused(
        &self,
        mut rec: AuditRecord,
        reason: Reason,
        detail: &str,
        started: Instant,
        answer: Answer,
        ctx: &ConnCtx,
    ) -> Answer {
        tracing::debug!(peer = %ctx.info.peer, reason = reason.as_str(), detail, "CONNECT refused");
        rec.verdict = Verdict::Deny;
        rec.reason = reason;
        self.finish(rec.with_duration(started.elapsed()));
        answer
    }

    /// Records an admitted tunnel whose client went away before its `200` could be sent: denied,
    /// nothing read, nothing dialled.
    fn gone_before_200(&self, t: &Tunnel, mut rec: AuditRecord) {
        rec.verdict = Verdict::Deny;
        rec.reason = Reason::Unclassified;
        self.finish(rec.with_duration(t.started.elapsed()));
    }

    /// Counts and audits a finished tunnel record.
    fn finish(&self, mut rec: AuditRecord) {
        rec.time = std::time::SystemTime::now();
        self.metrics.tunnel(rec.verdict, rec.reason);
        self.metrics.bytes(rec.bytes_up, rec.bytes_down);
        self.audit.record(rec);
    }

    /// A tunnel after its 200: classify, decide, forward or close.
    async fn run<IO>(self: Arc<Self>, mut io: IO, t: Tunnel, mut rec: AuditRecord)
    where
        IO: AsyncRead + AsyncWrite + Absorb + Send + Unpin + 'static,
    {
        // Boxed, as the other large steps: the task keeps only what an open tunnel needs.
        let (class, prefix) = match Box::pin(classify::classify(&mut io, self.classify)).await {
            Ok(c) => c,
            Err(e) => {
                if matches!(e, ClassifyError::Timeout(..)) {
                    self.metrics.limit(Limit::ClassifyTimeout);
                }
                tracing::debug!(dst = %t.dst, error = %e, "tunnel not classified");
                close(io).await;
                rec.reason = Reason::Unclassified;
                rec.verdict = Verdict::Deny;
                self.finish(rec.with_duration(t.started.elapsed()));
                return;
            }
        };
        let decision = match &class {
            Classified::Http => {
                let hooks = Arc::new(Hooks::new(self.clone(), &t, None));
                let io = Rewind::new(prefix, io);
                // Boxed: the cleartext proxy's state is large and only HTTP tunnels need it;
                // inline it would grow every tunnel's task (idle memory per tunnel).
                let upstreams = self.upstreams_of(&t.subject, t.dst);
                let served =
                    cleartext::serve_proxy(io, hooks, self.cleartext, Origin::Cleartext, upstreams);
                if let Err(e) = Box::pin(served).await {
                    if e.is_timeout() {
                        self.metrics.limit(Limit::SlowHeader);
                    } else if is_idle(&e) {
                        self.metrics.limit(Limit::Idle);
                    }
                    tracing::debug!(dst = %t.dst, error = %e, "cleartext tunnel ended");
                }
                rec.verdict = Verdict::Allow;
                rec.reason = Reason::PerRequest;
                self.finish(rec.with_duration(t.started.elapsed()));
                return;
            }
            Classified::Tls { sni } => {
                rec.sni = sni.clone();
                let decision = self.decide(
                    Some(&t.policy),
                    &Query {
                        dst: t.dst,
                        traffic: Traffic::Tls {
                            sni: sni.as_deref(),
                            interception: self.interception.is_some(),
                        },
                    },
                    t.dst_host.as_deref(),
                );
                if let (Some(interception), Some(sni)) = (&self.interception, sni.as_deref()) {
                    let https = decision.verdict.passes()
                        && decision.rule.as_ref().map(|r| r.kind) == Some(RuleKind::Https);
                    let readable = !decision.verdict.passes()
                        && interception.readable_denial(&actor_key(&t.subject), sni);
                    if https || readable {
                        let io = Rewind::new(prefix, io);
                        self.intercept(io, interception, sni, decision, t, rec)
                            .await;
                        return;
                    }
                }
                decision
            }
            Classified::Opaque => self.decide(
                Some(&t.policy),
                &Query {
                    dst: t.dst,
                    traffic: Traffic::Opaque,
                },
                t.dst_host.as_deref(),
            ),
        };
        rec.verdict = decision.verdict;
        rec.reason = decision.reason;
        rec.rule = decision.rule.clone();
        let dial = match (decision.verdict.passes(), &decision.dial) {
            (true, Some(d)) => d.clone(),
            _ => {
                close(io).await;
                self.finish(rec.with_duration(t.started.elapsed()));
                return;
            }
        };
        if let Dial::Actor { target, host, port } = &dial {
            let io = Rewind::new(prefix, io);
            // Boxed: only actor tunnels carry its state (idle memory per tunnel).
            Box::pin(self.forward_to_actor(io, &t, target, host, *port, rec)).await;
            return;
        }
        // Boxed: resolving a name holds a large future only while the dial runs.
        let dialed = Box::pin(self.dialer.dial(&dial, t.dst)).await;
        self.metrics
            .set_dns_cache_entries(self.dialer.resolver().cache_entries());
        let dialed = match dialed {
            Ok(d) => d,
            Err(refusal) => return self.refused_dial(io, &t, rec, refusal).await,
        };
        rec.dst_mismatch = dialed.dst_mismatch;
        self.splice(Rewind::new(prefix, io), dialed.stream, &t, rec)
            .await;
    }

    /// Closes a tunnel whose upstream could not be reached and records why.
    async fn refused_dial<IO>(&self, io: IO, t: &Tunnel, mut rec: AuditRecord, refusal: DialRefusal)
    where
        IO: AsyncWrite + Unpin,
    {
        tracing::debug!(dst = %t.dst, reason = refusal.reason.as_str(), detail = %refusal.detail, "tunnel dial refused");
        rec.verdict = Verdict::Deny;
        rec.reason = refusal.reason;
        close(io).await;
        self.finish(rec.with_duration(t.started.elapsed()));
    }

    /// Splices the tunnel with its upstream until both directions end, then records the bytes.
    async fn splice<IO, U>(&self, io: IO, upstream: U, t: &Tunnel, mut rec: AuditRecord)
    where
        IO: AsyncRead + AsyncWrite + Absorb + Unpin,
        U: AsyncRead + AsyncWrite + Absorb + Unpin,
    {
        let counters = SpliceCounters::new();
        let limits = self.limits.splice_limits(t.stream.is_some());
        match crate::forward::splice_counted(io, upstream, limits, &counters).await {
            Ok(stats) if stats.idle_timeout => self.metrics.limit(Limit::Idle),
            Ok(_) => {}
            Err(e) => tracing::debug!(dst = %t.dst, error = %e, "tunnel splice ended"),
        }
        rec.bytes_up = counters.up();
        rec.bytes_down = counters.down();
        self.finish(rec.with_duration(t.started.elapsed()));
    }

    /// Actor traffic that is not readable (TLS passed through, opaque): a CONNECT to ingress
    /// naming the target actor, then bytes spliced both ways.
    async fn forward_to_actor<IO>(
        &self,
        io: IO,
        t: &Tunnel,
        target: &routing_core::ActorRef,
        host: &str,
        port: u16,
        rec: AuditRecord,
    ) where
        IO: AsyncRead + AsyncWrite + Absorb + Send + Unpin + 'static,
    {
        let upstream = match &self.ingress {
            Some(ingress) => {
                let source = subject_actor(&t.subject);
                Box::pin(ingress.tunnel(target, host, port, &source)).await
            }
            // Unreachable: actor hosts forward only when ingress is configured.
            None => Err(DialRefusal {
                reason: Reason::ActorForwardingNotConfigured,
                detail: "no ingress configured".into(),
            }),
        };
        match upstream {
            Ok(upstream) => self.splice(io, upstream, t, rec).await,
            Err(refusal) => self.refused_dial(io, t, rec, refusal).await,
        }
    }

    /// An intercepted tunnel (`decision`: the ClientHello's; a denial is answered readably to
    /// every request): terminate, serve its requests, record the tunnel.
    async fn intercept<IO>(
        self: &Arc<Self>,
        io: IO,
        interception: &Interception,
        sni: &str,
        decision: Decision,
        t: Tunnel,
        mut rec: AuditRecord,
    ) where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let passes = decision.verdict.passes();
        rec.verdict = decision.verdict;
        rec.reason = if passes {
            Reason::Intercepted
        } else {
            decision.reason
        };
        rec.rule = decision.rule.clone();
        let hooks = Arc::new(Hooks::new(self.clone(), &t, Some(sni.to_owned())));
        let refuse_all = (!passes).then_some(decision);
        // Boxed: the proxy's state is large and only intercepted tunnels need it.
        let upstreams = self.upstreams_of(&t.subject, t.dst);
        let served =
            Box::pin(interception.serve(io, sni, hooks, self.cleartext, refuse_all, upstreams))
                .await;
        self.observe_minter(interception);
        if let Err(refusal) = served {
            tracing::debug!(dst = %t.dst, reason = refusal.reason.as_str(), detail = %refusal.detail, "interception refused");
            // A readable denial keeps the policy's reason: the tunnel was denied for it.
            if passes {
                rec.verdict = Verdict::Deny;
                rec.reason = refusal.reason;
            }
        }
        self.finish(rec.with_duration(t.started.elapsed()));
    }

    /// The actor's idle upstream connections for tunnels to `dst` (keyed by atespace, name and
    /// UID — a re-created actor of the same name shares nothing with its predecessor — and the
    /// original destination, which each connection's `dst_mismatch` was judged against).
    fn upstreams_of(&self, subject: &Subject, dst: SocketAddr) -> Upstreams {
        Upstreams {
            pool: self.upstreams.clone(),
            owner: Arc::from(format!("{} {dst}", actor_key(subject))),
        }
    }

    /// Copies the minter's counts into the metrics.
    fn observe_minter(&self, interception: &Interception) {
        let minter = interception.minter();
        self.metrics
            .set_interception_leaves(minter.minted(), minter.cached());
    }

    /// Decides `query` as `actorgate policy test` does ([`ActorHosts::decide`]: actor hosts
    /// first, then `policy`; `None` = no policy), timed into `actorgate_egress_decision_seconds`.
    fn decide(
        &self,
        policy: Option<&CompiledPolicy>,
        query: &Query<'_>,
        dst_host: Option<&str>,
    ) -> Decision {
        let started = Instant::now();
        let decision = self.actor_hosts.decide(policy, query, dst_host);
        self.metrics.decision(started.elapsed());
        decision
    }
}

/// The cleartext proxy's view of the PEP for one tunnel: decisions against the actor's current
/// policy, dials through the guard, one audit record per request.
struct Hooks {
    pep: Arc<Pep>,
    subject: Arc<Subject>,
    dst: SocketAddr,
    /// The intercepted connection's SNI (its requests are decided against `https` rules);
    /// `None` for cleartext.
    sni: Option<String>,
    /// `<atespace>/<name>` of the verified actor (`ate-source-actor` of forwarded requests).
    source: Option<header::HeaderValue>,
    /// Credentials this tunnel resolved, reused while fresh.
    memo: Arc<CredentialMemo>,
}

impl Hooks {
    fn new(pep: Arc<Pep>, t: &Tunnel, sni: Option<String>) -> Self {
        Hooks {
            pep,
            subject: t.subject.clone(),
            dst: t.dst,
            sni,
            source: header::HeaderValue::try_from(subject_actor(&t.subject)).ok(),
            memo: Arc::default(),
        }
    }
}

impl CleartextHooks for Hooks {
    fn decide(&self, authority: &str, method: &str, path: &str) -> BoxFuture<'static, Decision> {
        // The actor's current policy per request: a reload applies to open tunnels too.
        let policy = self.pep.policy.policy_for(&self.subject);
        let (authority, method, path) = (authority.to_owned(), method.to_owned(), path.to_owned());
        let dst = self.dst;
        let pep = self.pep.clone();
        let intercepted = self.sni.is_some();
        Box::pin(async move {
            let Ok(policy) = policy.await else {
                return Decision::deny(Reason::ControlPlaneUnavailable);
            };
            let (authority, method, path) = (&authority[..], &method[..], &path[..]);
            let traffic = if intercepted {
                Traffic::Https {
                    authority,
                    method,
                    path,
                }
            } else {
                Traffic::Http {
                    authority,
                    method,
                    path,
                }
            };
            pep.decide(policy.as_deref(), &Query { dst, traffic }, None)
        })
    }

    fn dial_actor(&self, h2: bool) -> BoxFuture<'static, Result<ActorConnection, DialRefusal>> {
        let ingress = self.pep.ingress.clone();
        Box::pin(async move {
            match ingress {
                Some(i) => i.connect(h2).await,
                None => Err(DialRefusal {
                    reason: Reason::ActorForwardingNotConfigured,
                    detail: "no ingress configured".into(),
                }),
            }
        })
    }

    fn source_actor(&self) -> Option<header::HeaderValue> {
        self.source.clone()
    }

    fn cached_credentials(
        &self,
        effects: &Arc<[CredentialHeader]>,
        wanted: &[usize],
    ) -> Option<Vec<(header::HeaderName, header::HeaderValue)>> {
        self.memo.get(effects, wanted)
    }

    fn injected(&self, n: u64) {
        self.pep.credentials.injected(n);
    }

    fn credentials(
        &self,
        effects: Arc<[CredentialHeader]>,
        wanted: Vec<usize>,
    ) -> BoxFuture<'static, Result<Vec<(header::HeaderName, header::HeaderValue)>, Reason>> {
        let (credentials, subject) = (self.pep.credentials.clone(), self.subject.clone());
        let memo = self.memo.clone();
        Box::pin(async move {
            let mut out = Vec::with_capacity(wanted.len());
            for i in wanted {
                match credentials.value(&subject.actor, &effects[i]).await {
                    Ok(c) => {
                        out.push((c.name.clone(), c.value.clone()));
                        memo.put(&effects, i, c);
                    }
                    Err(e) => {
                        // The header name and the source's URI, never a value.
                        tracing::debug!(header = %effects[i].header, reason = e.reason.as_str(), detail = %e.detail, "credential refused");
                        return Err(e.reason);
                    }
                }
            }
            Ok(out)
        })
    }

    fn dial(&self, dial: Dial) -> BoxFuture<'static, Result<Dialed, DialRefusal>> {
        let pep = self.pep.clone();
        let dst = self.dst;
        // The mismatch travels with the upstream connection (cleartext keeps it per
        // connection and reports it in every record of a request it carries).
        Box::pin(async move { pep.dialer.dial(&dial, dst).await })
    }

    fn record(&self, r: RequestRecord) {
        self.pep
            .metrics
            .request(r.decision.verdict, r.decision.reason);
        if self.sni.is_some() {
            self.pep.metrics.intercepted_request(r.decision.verdict);
            if let Some(interception) = &self.pep.interception {
                self.pep.observe_minter(interception);
            }
            if matches!(
                r.decision.reason,
                Reason::UpstreamCertificateInvalid | Reason::UpstreamTlsFailed
            ) {
                self.pep.metrics.upstream_tls_failure(r.decision.reason);
            }
        }
        let mut rec = AuditRecord::new(RecordKind::Request, r.decision.verdict, r.decision.reason);
        rec.actor = Some(AuditActor {
            atespace: self.subject.actor.atespace.clone(),
            name: self.subject.actor.name.clone(),
            uid: self.subject.actor.uid.clone(),
        });
        rec.identity = Some(self.subject.kind);
        rec.dst = Some(self.dst);
        rec.authority = Some(r.authority);
        rec.method = Some(r.method);
        rec.path = Some(r.path);
        rec.rule = r.decision.rule;
        rec.sni = self.sni.clone();
        rec.status = (r.status != 0).then_some(r.status);
        rec.dst_mismatch = r.dst_mismatch;
        rec.bytes_up = r.bytes_up;
        rec.bytes_down = r.bytes_down;
        self.pep.metrics.bytes(r.bytes_up, r.bytes_down);
        self.pep.audit.record(rec.with_duration(r.duration));
    }
}

/// `<atespace>/<name>` of the tunnel's verified actor.
fn subject_actor(subject: &Subject) -> String {
    format!("{}/{}", subject.actor.atespace, subject.actor.name)
}

/// One actor, as the PEP's per-actor state keys it: `<atespace>/<name>#<uid>` (a re-created
/// actor of the same name is another key).
fn actor_key(subject: &Subject) -> String {
    let a = &subject.actor;
    format!(
        "{}/{}#{}",
        a.atespace,
        a.name,
        a.uid.as_deref().unwrap_or("")
    )
}

/// Whether a cleartext connection ended on its idle timeout (an I/O error of kind `TimedOut`).
fn is_idle(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        cur = err.source();
    }
    false
}

/// Closes a denied tunnel without sending a byte of payload (TLS close_notify / h2 END_STREAM),
/// bounded in time.
async fn close<IO: AsyncWrite + Unpin>(mut io: IO) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
}

/// The CONNECT target as `ip:port`: an IPv4 literal or a bracketed IPv6 literal without zone,
/// and a non-zero port; `None` for anything else (names, userinfo, zones, no port).
fn connect_target(uri: &Uri) -> Option<SocketAddr> {
    let authority = uri.authority()?.as_str();
    if authority.contains(['%', '@']) {
        return None;
    }
    authority
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)
}

/// A refused CONNECT's answer: its status and `text/plain` body.
#[derive(Debug, Clone, Copy)]
struct Answer {
    status: StatusCode,
    body: &'static str,
}

impl Answer {
    /// As an HTTP/1.1 response.
    fn h1(self) -> Response<Full<Bytes>> {
        Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(self.body.as_bytes())))
            .unwrap_or_default()
    }

    /// Sent on an h2 stream (HEADERS, then the body with END_STREAM).
    fn send_h2(self, mut respond: h2::server::SendResponse<Bytes>) {
        let mut resp = Response::new(());
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain"),
        );
        headers.insert(header::CONTENT_LENGTH, self.body.len().into());
        if let Ok(mut send) = respond.send_response(resp, false) {
            let _ = send.send_data(Bytes::from_static(self.body.as_bytes()), true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TunnelLimits, connect_target};
    use std::time::Duration;

    #[test]
    fn h2_tunnels_splice_with_at_most_their_stream_window() {
        let limits = TunnelLimits {
            stream_buffer_bytes: 1 << 20,
            h2_stream_window: 256 * 1024,
            idle_timeout: Duration::from_secs(7),
            ..TunnelLimits::default()
        };
        let h1 = limits.splice_limits(false);
        let h2 = limits.splice_limits(true);
        assert_eq!((h1.max_buffer, h1.idle), (1 << 20, Duration::from_secs(7)));
        assert_eq!(
            (h2.max_buffer, h2.idle),
            (256 * 1024, Duration::from_secs(7))
        );
        let small = TunnelLimits {
            stream_buffer_bytes: 128 * 1024,
            ..limits
        };
        assert_eq!(small.splice_limits(true).max_buffer, 128 * 1024);
    }

    #[test]
    fn connect_targets_must_be_ip_literals_with_ports() {
        let target = |t: &str| {
            let req = http::Request::connect(t).body(()).unwrap();
            connect_target(req.uri())
        };
        assert_eq!(
            target("10.1.2.3:443"),
            Some("10.1.2.3:443".parse().unwrap())
        );
        assert_eq!(
            target("[2001:db8::1]:80"),
            Some("[2001:db8::1]:80".parse().unwrap())
        );
        for bad in [
            "example.com:443",
            "10.1.2.3:0",
            "[fe80::1%25eth0]:80",
            "u@10.1.2.3:80",
        ] {
            assert_eq!(target(bad), None, "{bad}");
        }
        assert!(
            http::Request::connect("10.1.2.3").body(()).is_err() || target("10.1.2.3").is_none()
        );
    }
}
