//! Serving HTTP (HTTP/1.1 and HTTP/2, with upgrades) with hyper on a [`BoundListener`], for every
//! HTTP listener of the process (ingress, admin, echo worker).
//!
//! Header size, header count and header read time are bounded. A connection is asked to close
//! gracefully (HTTP/1.1: after the current response, at once when idle; HTTP/2: GOAWAY, open
//! streams finish) when the drain starts, or once no request has been in progress on it for the
//! idle connection timeout. A request counts as in progress from the service call until its
//! response body has ended or been dropped. An HTTP/1.1 client that half-closes after its request
//! is answered (RFC 9112 §9.6).
//!
//! Upgraded connections (WebSocket) leave hyper's connection task: spawn their work with
//! [`crate::drain::DrainSignal::spawn`] so the drain waits for them too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::time::Instant;

use crate::drain::DrainSignal;
use crate::listener::{BoundListener, Conn, ConnInfo};

/// A boxed error as hyper reports them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// HTTP protocol limits and timers of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Longest time to receive a request's headers (HTTP/1.1), also while waiting for the next
    /// request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes (HTTP/1.1 buffer; HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Most request headers (HTTP/1.1).
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Longest time a connection may stay open with no request in progress (HTTP/2: no open
    /// stream; HTTP/1.1: between requests, or before the first). Then it is closed gracefully.
    pub idle_connection_timeout: Duration,
    /// HTTP/2 PING interval to find dead peers (`None`: no pings).
    pub http2_keep_alive_interval: Option<Duration>,
    /// How long to wait for a PING's answer before closing the connection.
    pub http2_keep_alive_timeout: Duration,
    /// Most bytes buffered per HTTP/2 stream for a slow-reading client.
    pub http2_max_send_buf_size: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_streams: 250,
            idle_connection_timeout: Duration::from_secs(300),
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            http2_keep_alive_timeout: Duration::from_secs(10),
            http2_max_send_buf_size: 64 * 1024,
        }
    }
}

/// Serves hyper services on connections, with graceful close on drain and on idleness.
#[derive(Clone)]
pub struct HttpServer {
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// A server with `settings`.
    pub fn new(settings: &HttpSettings) -> Self {
        // HTTP/2 streams are spawned by hyper on this plain executor, not through
        // `DrainSignal::spawn`, on purpose: the drain covers them through their connection, whose
        // task the drain tracks and which does not end before its streams do (on drain, GOAWAY
        // lets open streams finish); at the drain deadline the connection is dropped, which
        // resets its streams, so their tasks end at their next read or write. A drain-tracked
        // spawn would wrap every stream in the process-wide cancellation future, whose every
        // poll takes the lock all connections share (see `serve_connection`), several times per
        // request. hyper clones one executor per builder, so a per-connection one would mean a
        // builder per connection.
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .max_headers(settings.max_headers)
            // A client that shuts down its write side after the request still gets the
            // response (RFC 9112 §9.6: a half-close is not an abort).
            .half_close(true)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(settings.max_concurrent_streams)
            .max_send_buf_size(settings.http2_max_send_buf_size)
            .keep_alive_interval(settings.http2_keep_alive_interval)
            .keep_alive_timeout(settings.http2_keep_alive_timeout);
        Self::from_builder(b, settings.idle_connection_timeout)
    }

    /// A server with a hyper builder configured by the caller, closing connections idle for
    /// `idle_timeout`.
    pub fn from_builder(builder: auto::Builder<TokioExecutor>, idle_timeout: Duration) -> Self {
        Self {
            builder,
            idle_timeout,
        }
    }

    /// Serves `service` on `conn` until the connection ends: closed by the client, closed
    /// gracefully once idle or once the drain starts, or dropped when the drain deadline passes.
    pub async fn serve_connection<S, B>(
        &self,
        conn: Conn,
        service: S,
        drain: &DrainSignal,
    ) -> Result<(), BoxError>
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let activity = Arc::new(Activity::new());
        let idle = idle_for(activity.clone(), self.idle_timeout);
        let service = TrackIdle {
            inner: service,
            activity,
        };
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(conn), service);
        tokio::pin!(connection);
        // The reasons to close are polled only when they wake, not each time the connection
        // task does (several times per request): polling a pending drain future takes a lock
        // that every connection of the process shares.
        let mut close = FuturesUnordered::new();
        close.push(async {
            tokio::select! {
                _ = idle => "idle",
                _ = drain.draining() => "draining",
            }
        });
        let why = tokio::select! {
            ended = connection.as_mut() => return ended,
            Some(why) = close.next() => why,
        };
        tracing::debug!(reason = why, "closing connection gracefully");
        connection.as_mut().graceful_shutdown();
        tokio::select! {
            ended = connection => ended,
            _ = drain.forced() => Err("closed: the drain deadline passed".into()),
        }
    }

    /// Accepts on `listener` until the drain starts, serving on each connection the service that
    /// `make_service` builds from the connection's [`ConnInfo`]. Returns once the listener stops
    /// accepting; the drain waits for the connections.
    pub async fn serve<M, S, B>(self, listener: BoundListener, drain: DrainSignal, make_service: M)
    where
        M: Fn(&Arc<ConnInfo>) -> S + Send + Sync + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let server = Arc::new(self);
        let signal = drain.clone();
        listener
            .serve(drain, move |conn| {
                let info = conn.info().clone();
                let service = make_service(&info);
                let server = server.clone();
                let signal = signal.clone();
                async move {
                    if let Err(e) = server.serve_connection(conn, service, &signal).await {
                        tracing::debug!(listener = %info.listener, peer = %info.peer, error = %e, "connection ended with an error");
                    }
                }
            })
            .await
    }
}

/// Shortest wait before looking again at a connection that has requests in progress (guards
/// against a zero idle timeout spinning).
const MIN_RECHECK: Duration = Duration::from_millis(1);

/// A connection's request activity, shared by its service, its idle timer and its requests in
/// progress. The requests in progress are counted by the reference count: each holds one
/// reference (an [`ActiveGuard`]) besides the service's and the idle timer's. So the hot path
/// costs two atomic operations per request (a reference taken at the service call; at the
/// end a timestamp store and the reference dropped), with no lock, no channel and no wakeup.
struct Activity {
    /// When the connection started; timestamps count from it.
    origin: Instant,
    /// When a request last ended, in nanoseconds since `origin` (0 before the first).
    last_end: AtomicU64,
}

impl Activity {
    /// References that are not requests: the service's and the idle timer's.
    const HOLDERS: usize = 2;

    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_end: AtomicU64::new(0),
        }
    }

    /// Since when no request has been in progress (the connection's start if none ever was);
    /// `None` while one is.
    fn idle_since(self: &Arc<Self>) -> Option<Instant> {
        if Arc::strong_count(self) > Self::HOLDERS {
            return None;
        }
        // Pairs with the release of the last request's reference: its timestamp is seen.
        fence(Ordering::Acquire);
        let nanos = self.last_end.load(Ordering::Relaxed);
        Some(self.origin + Duration::from_nanos(nanos))
    }
}

/// Resolves once no request has been in progress on the connection for `timeout`. One timer,
/// re-armed only when it fires: while a request is in progress it looks again a `timeout`
/// later; when requests ended since it was armed, it sleeps until the last end plus `timeout`.
async fn idle_for(activity: Arc<Activity>, timeout: Duration) {
    let Some(first) = activity.origin.checked_add(timeout) else {
        // Too far away to ever come.
        return std::future::pending().await;
    };
    let sleep = tokio::time::sleep_until(first);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let now = Instant::now();
        let next = match activity.idle_since() {
            None => now.checked_add(timeout.max(MIN_RECHECK)),
            Some(since) => match since.checked_add(timeout) {
                Some(at) if at <= now => return,
                at => at,
            },
        };
        match next {
            Some(at) => sleep.as_mut().reset(at),
            None => return std::future::pending().await,
        }
    }
}

/// One request in progress on a connection (HTTP/2: one open stream), from the service call
/// until its response body has ended or been dropped: a reference to the connection's
/// [`Activity`], stamping the time when dropped.
struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let nanos = u64::try_from(self.0.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Released by the reference count's decrement that follows (see `idle_since`).
        self.0.last_end.store(nanos, Ordering::Relaxed);
    }
}

/// Counts the requests in progress of the service it wraps.
struct TrackIdle<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for TrackIdle<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        TrackedFuture {
            guard: Some(ActiveGuard(self.activity.clone())),
            fut: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// A service future that hands its request's [`ActiveGuard`] to the response body.
    struct TrackedFuture<F> {
        #[pin]
        fut: F,
        guard: Option<ActiveGuard>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(out.map(|resp| resp.map(|body| Tracked { body, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in progress until it ends.
    struct Tracked<B> {
        #[pin]
        body: B,
        guard: Option<ActiveGuard>,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn the_idle_timeout_counts_from_the_end_of_the_last_request() {
        // The service's reference; `idle_for` holds the timer's.
        let service = Arc::new(Activity::new());
        let idle = idle_for(service.clone(), TIMEOUT);
        tokio::pin!(idle);
        let request = ActiveGuard(service.clone());
        assert!(
            tokio::time::timeout(TIMEOUT * 3, idle.as_mut())
                .await
                .is_err(),
            "idle while a request was in progress"
        );
        drop(request);
        let ended = Instant::now();
        tokio::time::timeout(TIMEOUT * 20, idle)
            .await
            .expect("idle once the request had ended");
        assert!(
            ended.elapsed() >= TIMEOUT,
            "idle {:?} after the request ended, before the timeout",
            ended.elapsed()
        );
    }

    #[tokio::test]
    async fn a_connection_without_requests_is_idle_after_the_timeout() {
        let service = Arc::new(Activity::new());
        let started = service.origin;
        tokio::time::timeout(TIMEOUT * 20, idle_for(service.clone(), TIMEOUT))
            .await
            .expect("idle with no request");
        assert!(started.elapsed() >= TIMEOUT, "idle before the timeout");
    }
}
