//! The explicit-proxy listener (DESIGN §7.5): for actors that set `HTTP_PROXY`/`HTTPS_PROXY`
//! instead of being captured. `CONNECT host:port` and absolute-form `http://` requests are
//! accepted; the agent resolves the name itself and opens a tunnel to the resulting address, so
//! the PEP still decides by what flows inside (SNI, `Host`). A tunnel the PEP refuses is
//! answered with the PEP's status (`403`/`503`).
//!
//! Names are resolved with the PEP's resolver ([`PepResolver`]: hickory, bounded TTL cache,
//! one query per name in flight); at most [`MAX_LOOKUPS`] resolutions (answers from the cache
//! included) run at once, more are answered `503` rather than queued.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use runtime::drain::DrainSignal;
use tokio::net::TcpListener;

use crate::agent::metrics::{AgentMetrics, TunnelResult};
use crate::agent::per_connection::TunnelError;
use crate::agent::tunnels::{TunnelStream, Tunnels};
use crate::cleartext::{RespBody, empty, text_response};
use crate::forward::{SpliceCounters, SpliceLimits, splice_counted};
use crate::resolve::PepResolver;

/// Longest a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// Most name resolutions in flight at once (answers from the cache count too: they are quick).
pub const MAX_LOOKUPS: usize = 128;

/// How the explicit proxy finds the address of a named destination.
pub struct ProxyResolver {
    resolver: PepResolver,
    lookups: tokio::sync::Semaphore,
}

impl ProxyResolver {
    /// Resolves with `resolver`, at most [`MAX_LOOKUPS`] at once.
    pub fn new(resolver: PepResolver) -> Self {
        Self {
            resolver,
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
        }
    }

    /// The first address of `host` (an IP literal is itself, brackets allowed) with `port`.
    ///
    /// # Errors
    /// The response to give the client: `502` for a name that does not resolve, `503` when
    /// [`MAX_LOOKUPS`] are already running.
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, Response<RespBody>> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let Ok(_permit) = self.lookups.try_acquire() else {
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many name lookups in flight",
            ));
        };
        match self.resolver.lookup(host).await {
            Ok(ips) => match ips.first() {
                Some(ip) => Ok(SocketAddr::new(*ip, port)),
                None => Err(text(StatusCode::BAD_GATEWAY, "name did not resolve")),
            },
            Err(e) => {
                tracing::debug!(error = %e, "explicit proxy lookup failed");
                Err(text(StatusCode::BAD_GATEWAY, "name did not resolve"))
            }
        }
    }
}

/// Serves the explicit proxy on `listener` until the drain starts.
pub async fn serve(
    listener: TcpListener,
    tunnels: Arc<Tunnels>,
    resolver: Arc<ProxyResolver>,
    limits: SpliceLimits,
    metrics: AgentMetrics,
    drain: DrainSignal,
) {
    loop {
        let accepted = tokio::select! {
            () = drain.draining() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (tunnels, resolver, metrics) = (tunnels.clone(), resolver.clone(), metrics.clone());
        let tunnels_drain = drain.clone();
        drain.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (tunnels, resolver, metrics, drain) = (
                    tunnels.clone(),
                    resolver.clone(),
                    metrics.clone(),
                    tunnels_drain.clone(),
                );
                async move {
                    let ctx = Ctx {
                        tunnels: &tunnels,
                        resolver: &resolver,
                        limits,
                        metrics: &metrics,
                        drain: &drain,
                    };
                    Ok::<_, Infallible>(handle(req, ctx).await)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "explicit proxy connection ended");
            }
        });
    }
}

/// What a request of the explicit proxy is handled with.
struct Ctx<'a> {
    tunnels: &'a Tunnels,
    resolver: &'a ProxyResolver,
    limits: SpliceLimits,
    metrics: &'a AgentMetrics,
    /// CONNECT tunnels run under it, as the listener's connections do.
    drain: &'a DrainSignal,
}

async fn handle(mut req: Request<Incoming>, ctx: Ctx<'_>) -> Response<RespBody> {
    let Ctx {
        tunnels,
        resolver,
        limits,
        metrics,
        drain,
    } = ctx;
    metrics.captured();
    let connect = req.method() == Method::CONNECT;
    let Some((host, port)) = target(req.uri(), connect) else {
        return text(
            StatusCode::BAD_REQUEST,
            "an absolute http:// URI or CONNECT host:port",
        );
    };
    let dst = match resolver.resolve(&host, port).await {
        Ok(dst) => dst,
        Err(response) => return response,
    };
    // A name travels with the tunnel: for an actor host resolved to ingress it names the actor
    // (DESIGN §7.4); the PEP ignores it elsewhere.
    let named = (host.parse::<std::net::IpAddr>().is_err()).then(|| format!("{host}:{port}"));
    let mode = tunnels.mode();
    let tunnel = match tunnels.open_named(dst, named.as_deref()).await {
        Ok(t) => {
            metrics.tunnel(mode, TunnelResult::Opened);
            metrics.connect_status(200);
            t
        }
        Err(TunnelError::Refused { status, .. }) => {
            metrics.tunnel(mode, TunnelResult::Refused);
            metrics.connect_status(status);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            return text(status, "egress refused by the PEP");
        }
        Err(e) => {
            metrics.tunnel(mode, TunnelResult::Failed);
            tracing::warn!(%dst, error = %e, "no tunnel to the PEP");
            return text(StatusCode::BAD_GATEWAY, "no tunnel to the PEP");
        }
    };
    // A per-connection tunnel is a connection to the PEP of its own (pooled ones count theirs).
    let counted = matches!(tunnel, TunnelStream::Tls(_)).then(|| metrics.pep_connection());
    if connect {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let metrics = metrics.clone();
        drain.spawn(async move {
            let _counted = counted;
            let Ok(client) = on_upgrade.await else { return };
            let counters = SpliceCounters::new();
            let _ = splice_counted(TokioIo::new(client), tunnel, limits, &counters).await;
            metrics.bytes(counters.up(), counters.down());
        });
        return Response::new(empty());
    }
    // Absolute-form: the request goes through the tunnel in origin-form with its Host.
    let (mut parts, body) = req.into_parts();
    let host_value = match parts.uri.authority().map(|a| a.as_str().to_owned()) {
        Some(a) => a,
        None => return text(StatusCode::BAD_REQUEST, "no authority"),
    };
    let Ok(host_header) = header::HeaderValue::from_str(&host_value) else {
        return text(StatusCode::BAD_REQUEST, "bad authority");
    };
    parts.headers.insert(header::HOST, host_header);
    parts.headers.remove("proxy-connection");
    parts.headers.remove(header::PROXY_AUTHORIZATION);
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(tunnel)).await {
            Ok(h) => h,
            Err(_) => return text(StatusCode::BAD_GATEWAY, "the tunnel closed"),
        };
    tokio::spawn(async move {
        let _counted = counted;
        let _ = conn.await;
    });
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(_) => text(StatusCode::BAD_GATEWAY, "the tunnel closed"),
    }
}

/// `(host, port)` of a CONNECT authority or an absolute `http://` URI (default port 80).
fn target(uri: &Uri, connect: bool) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    if !connect && uri.scheme() != Some(&http::uri::Scheme::HTTP) {
        return None;
    }
    let port = match (authority.port_u16(), connect) {
        (Some(p), _) => p,
        (None, false) => 80,
        (None, true) => return None,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((host.to_owned(), port))
}

/// A `text/plain` answer of the proxy itself.
fn text(status: StatusCode, body: &'static str) -> Response<RespBody> {
    text_response(status, body, false)
}
