//! Body types of the proxy: what goes upstream (the client's streaming body, or nothing for a
//! retry) and what goes back (the worker's streaming body under an idle timeout, or a short
//! generated answer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

/// Errors of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body failed (malformed chunked framing, fewer bytes than its
/// Content-Length before the connection closed, an HTTP/2 stream reset mid-body). A marker, so
/// the proxy can find it in the source chain of the worker client's error and answer 400 as a
/// client error instead of blaming the worker.
#[derive(Debug, thiserror::Error)]
#[error("client request body failed: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

impl ClientBodyError {
    /// Whether `e` or one of its sources is a [`ClientBodyError`].
    pub fn in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if err.is::<ClientBodyError>() {
                return true;
            }
            cur = err.source();
        }
        false
    }
}

/// Where a client's request body stands, shared by the body sent to the worker and the proxy,
/// so that a response timeout can be told apart: a worker that did not answer in time (504) or
/// a client that stopped sending its body while the worker waited for it (408, the client's
/// fault).
#[derive(Debug, Default)]
pub struct BodyProgress(AtomicU8);

impl BodyProgress {
    /// Not polled yet, or the last poll produced a frame: nobody waits on the client.
    const MOVING: u8 = 0;
    /// The last poll found no data: the worker client is waiting for the client to send more.
    const WAITING: u8 = 1;
    /// The client's body has ended (or failed).
    const ENDED: u8 = 2;

    /// Whether the worker client is waiting for more of the client's body: the body has not
    /// ended and its last read found nothing to send.
    pub fn waiting_on_client(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::WAITING
    }

    fn set(&self, state: u8) {
        // Relaxed: one flag on its own, no other memory is published through it.
        self.0.store(state, Ordering::Relaxed);
    }
}

/// The request body sent to a worker.
pub enum UpstreamBody {
    /// The client's body, streamed as it arrives; `progress` records whether it is stalled on
    /// the client (see [`BodyProgress`]).
    Client {
        /// The client's request body.
        body: Incoming,
        /// Where the proxy reads whether the body is stalled on the client; `None`: not tracked.
        progress: Option<Arc<BodyProgress>>,
    },
    /// No body.
    Empty,
}

impl UpstreamBody {
    /// The client's body, tracked by `progress` when given.
    pub fn client(body: Incoming, progress: Option<Arc<BodyProgress>>) -> Self {
        Self::Client { body, progress }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            Self::Client { body, progress } => {
                let polled = Pin::new(body).poll_frame(cx).map_err(ClientBodyError);
                if let Some(p) = progress {
                    p.set(match &polled {
                        Poll::Pending => BodyProgress::WAITING,
                        Poll::Ready(Some(Ok(_))) => BodyProgress::MOVING,
                        Poll::Ready(None | Some(Err(_))) => BodyProgress::ENDED,
                    });
                }
                polled
            }
            Self::Empty => Poll::Ready(None),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Client { body, .. } => body.is_end_stream(),
            Self::Empty => true,
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Client { body, .. } => body.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

pin_project_lite::pin_project! {
    /// A worker's body that fails when no frame arrives for `idle`. The timer is armed only when
    /// the body actually has to wait, so small, ready bodies cost no timer at all.
    pub struct IdleTimeout {
        #[pin]
        inner: Incoming,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        idle: Duration,
    }
}

/// The idle timeout fired.
#[derive(Debug, thiserror::Error)]
#[error("worker body idle for {0:?}")]
pub struct IdleElapsed(pub Duration);

impl IdleTimeout {
    /// `inner` failing with [`IdleElapsed`] once no frame arrived for `idle`.
    pub fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            timer: None,
            idle,
        }
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                // Progress: the next wait starts a fresh idle period.
                *this.timer = None;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = *this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleElapsed(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The response body sent to the client.
    // pin-project-lite takes no doc comments on enum variant fields (`body`).
    #[allow(missing_docs)]
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// A worker's streaming body.
        Upstream { #[pin] body: IdleTimeout },
        /// A body generated here, held in full.
        Full { #[pin] body: Full<Bytes> },
    }
}

impl ProxyBody {
    /// A worker's streaming body under an idle timeout.
    pub fn upstream(body: Incoming, idle: Duration) -> Self {
        Self::Upstream {
            body: IdleTimeout::new(body, idle),
        }
    }
    /// A short generated body.
    pub fn text(s: impl Into<Bytes>) -> Self {
        Self::Full {
            body: Full::new(s.into()),
        }
    }
    /// No body.
    pub fn empty() -> Self {
        Self::text(Bytes::new())
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Upstream { body } => body.poll_frame(cx),
            ProxyBodyProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body } => body.is_end_stream(),
            Self::Full { body } => body.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body } => body.size_hint(),
            Self::Full { body } => body.size_hint(),
        }
    }
}
