//! One drain/shutdown primitive for the whole process, built on tokio-util's
//! [`CancellationToken`] (two of them: *draining* and *forced*) and [`TaskTracker`].
//!
//! Shutdown has two steps:
//!
//! 1. **Draining** ([`Drain::start`], or the start of [`Drain::shutdown`]): listeners stop
//!    accepting; open connections finish what they are doing and close (HTTP/1.1 after the
//!    current response, HTTP/2 with GOAWAY, tunnels at their next boundary). Work observes it with
//!    [`DrainSignal::draining`].
//! 2. **Forced** (the deadline given to [`Drain::shutdown`] passed): whatever is still open is
//!    counted ([`DrainReport::forced`] and the `drain_forced_total` counter) and closed. Tasks
//!    started with [`DrainSignal::spawn`] are dropped at once (dropping their sockets); work that
//!    holds a [`DrainGuard`] instead must stop when [`DrainGuard::forced`] resolves.
//!
//! Every piece of work that should delay the exit holds the drain: a connection task spawned with
//! [`DrainSignal::spawn`], or a [`DrainGuard`] for work that is not a future of ours (an HTTP/2
//! stream, a response body, an upgraded connection that hyper hands over).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// How long [`Drain::shutdown`] waits, after forcing, for forced work to notice and end. Tasks
/// from [`DrainSignal::spawn`] end at once; a [`DrainGuard`] holder that ignores
/// [`DrainGuard::forced`] is not waited for longer than this.
pub const FORCED_GRACE: Duration = Duration::from_secs(1);

/// The owner of the process's drain: starts it and waits for it. Cheap to clone (every clone
/// controls the same drain).
#[derive(Clone, Debug)]
pub struct Drain {
    signal: DrainSignal,
    forced_total: Counter,
}

/// A handle that work holds to observe the drain and to be waited for by it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DrainSignal {
    draining: CancellationToken,
    forced: CancellationToken,
    /// Mirrors `forced` for hot paths that only need a cheap check (see [`DrainSignal::is_forced`]).
    forced_flag: Arc<AtomicBool>,
    tracker: TaskTracker,
}

/// Keeps the drain waiting while it lives: for work not spawned through [`DrainSignal::spawn`],
/// e.g. a response body being streamed, an HTTP/2 stream, or an upgraded connection that hyper
/// hands over. Dropping it tells the drain this piece of work is done.
#[derive(Debug)]
pub struct DrainGuard {
    signal: DrainSignal,
    _token: TaskTrackerToken,
}

/// What a shutdown found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Work (tasks and guards) that was open when the drain started and finished within the
    /// deadline, plus work that started during the drain and finished.
    pub finished: usize,
    /// Work still open at the deadline: closed by force.
    pub forced: usize,
    /// How long the shutdown took, from its start to the last piece of work ending (or the
    /// forced grace ending).
    pub elapsed: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A drain that has not started.
    pub fn new() -> Self {
        Self {
            signal: DrainSignal {
                draining: CancellationToken::new(),
                forced: CancellationToken::new(),
                forced_flag: Arc::new(AtomicBool::new(false)),
                tracker: TaskTracker::new(),
            },
            forced_total: Counter::default(),
        }
    }

    /// The handle to give to listeners, connections and tunnels.
    pub fn signal(&self) -> DrainSignal {
        self.signal.clone()
    }

    /// Spawns `fut` as work the drain waits for; see [`DrainSignal::spawn`].
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.signal.spawn(fut)
    }

    /// Starts draining (idempotent): listeners stop accepting and connections close gracefully.
    /// Returns at once; [`Drain::shutdown`] waits.
    pub fn start(&self) {
        self.signal.tracker.close();
        self.signal.draining.cancel();
    }

    /// Work currently held open (spawned tasks and live guards).
    pub fn open(&self) -> usize {
        self.signal.tracker.len()
    }

    /// The number of pieces of work closed by force over the process's life, as a Prometheus
    /// counter (the same counter on every clone).
    pub fn forced_total(&self) -> Counter {
        self.forced_total.clone()
    }

    /// Registers `drain_forced` (exported as `drain_forced_total`: work still open at a drain
    /// deadline and closed by force) in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "drain_forced",
            "Connections, streams and tunnels still open at the drain deadline, closed by force",
            self.forced_total.clone(),
        );
    }

    /// Drains: starts draining (if not yet started), waits up to `deadline` for all held work to
    /// end, then forces what is left (counted in the report and in [`Drain::forced_total`]) and
    /// waits up to [`FORCED_GRACE`] for it to go.
    pub async fn shutdown(&self, deadline: Duration) -> DrainReport {
        let started = Instant::now();
        self.start();
        let open_at_start = self.open();
        let tracker = &self.signal.tracker;
        if tokio::time::timeout(deadline, tracker.wait()).await.is_ok() {
            return DrainReport {
                finished: open_at_start,
                forced: 0,
                elapsed: started.elapsed(),
            };
        }
        let forced = tracker.len();
        self.forced_total.inc_by(forced as u64);
        tracing::warn!(
            forced,
            deadline = ?deadline,
            "drain deadline reached; closing what is still open"
        );
        self.signal.forced_flag.store(true, Ordering::Release);
        self.signal.forced.cancel();
        if tokio::time::timeout(FORCED_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                lingering = tracker.len(),
                "work still open after being forced; not waiting for it"
            );
        }
        DrainReport {
            finished: open_at_start.saturating_sub(forced),
            forced,
            elapsed: started.elapsed(),
        }
    }
}

impl DrainSignal {
    /// Resolves once draining has started (at once if it has): stop accepting, finish the
    /// current request or message, then close.
    pub async fn draining(&self) {
        self.draining.cancelled().await
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves once the drain deadline has passed (at once if it has): close now.
    pub async fn forced(&self) {
        self.forced.cancelled().await
    }

    /// Whether the drain deadline has passed. One atomic load: fine for per-read checks.
    pub fn is_forced(&self) -> bool {
        self.forced_flag.load(Ordering::Acquire)
    }

    /// The token that is cancelled when draining starts (for APIs that take a token, e.g.
    /// [`CancellationToken::run_until_cancelled`]). Cancelling it starts draining.
    pub fn draining_token(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// The token that is cancelled when the drain deadline passes.
    pub fn forced_token(&self) -> CancellationToken {
        self.forced.clone()
    }

    /// Holds the drain until the returned guard is dropped.
    pub fn guard(&self) -> DrainGuard {
        DrainGuard {
            signal: self.clone(),
            _token: self.tracker.token(),
        }
    }

    /// Spawns `fut` on the tokio runtime as work the drain waits for. If the drain deadline
    /// passes first, `fut` is dropped (closing whatever sockets it owns) and the task returns
    /// `None`.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(self.until_forced(fut))
    }

    /// `fut` bounded by the drain deadline (what [`DrainSignal::spawn`] runs).
    fn until_forced<F: Future>(&self, fut: F) -> UntilForced<F> {
        UntilForced {
            fut,
            forced: self.forced.clone().cancelled_owned(),
        }
    }
}

pin_project_lite::pin_project! {
    /// `fut` until the drain deadline, then `None` (`fut` is dropped with the task). A named
    /// future rather than an `async` block around `CancellationToken::run_until_cancelled_owned`:
    /// each async layer stores the moved-in `fut` again, which tripled the memory of every
    /// spawned task (an idle egress tunnel's task went from about 9 KiB to 3 KiB).
    struct UntilForced<F> {
        #[pin]
        fut: F,
        #[pin]
        forced: tokio_util::sync::WaitForCancellationFutureOwned,
    }
}

impl<F: Future> Future for UntilForced<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Completion first, as tokio-util's `run_until_cancelled` is biased: work that finishes
        // in the same poll as the deadline counts as finished.
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        match this.forced.poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl DrainGuard {
    /// Resolves once draining has started; see [`DrainSignal::draining`].
    pub async fn draining(&self) {
        self.signal.draining().await
    }

    /// Resolves once the drain deadline has passed: the holder must stop now.
    pub async fn forced(&self) {
        self.signal.forced().await
    }

    /// The drain this guard holds.
    pub fn signal(&self) -> &DrainSignal {
        &self.signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    /// A spawned task stores its future once: the deadline wrapper adds a few words, not a
    /// second copy (what each `async` layer around a moved-in future costs).
    #[test]
    fn the_deadline_wrapper_does_not_copy_the_future() {
        let drain = Drain::new();
        let big = std::future::ready([0u8; 4096]);
        let size = std::mem::size_of_val(&big);
        let wrapped = drain.signal().until_forced(big);
        let wrapped = std::mem::size_of_val(&wrapped);
        assert!(
            wrapped < size + 256,
            "{wrapped} bytes for a {size} byte future"
        );
    }

    #[tokio::test]
    async fn work_that_ends_in_time_is_not_forced() {
        let drain = Drain::new();
        let signal = drain.signal();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = drain.spawn(async move {
            signal.draining().await;
            let _ = rx.await;
            7
        });
        let guard = drain.signal().guard();
        let shutdown = tokio::spawn({
            let d = drain.clone();
            async move { d.shutdown(BOUND).await }
        });
        // The guard's holder also ends once draining starts.
        tokio::time::timeout(BOUND, guard.draining())
            .await
            .expect("draining never started");
        drop(guard);
        let _ = tx.send(());
        let report = tokio::time::timeout(BOUND, shutdown)
            .await
            .expect("shutdown did not finish")
            .expect("shutdown task failed");
        assert_eq!(report.forced, 0);
        assert_eq!(report.finished, 2);
        assert_eq!(task.await.expect("task failed"), Some(7));
        assert_eq!(drain.forced_total().get(), 0);
    }

    #[tokio::test]
    async fn work_open_at_the_deadline_is_forced_and_counted() {
        let drain = Drain::new();
        let stuck = drain.spawn(std::future::pending::<()>());
        let guard = drain.signal().guard();
        let holder = tokio::spawn(async move {
            guard.forced().await;
            // Dropping the guard is how its holder says it stopped.
        });
        let report = tokio::time::timeout(BOUND, drain.shutdown(Duration::from_millis(50)))
            .await
            .expect("shutdown did not finish");
        assert_eq!(report.forced, 2);
        assert_eq!(report.finished, 0);
        assert_eq!(
            stuck.await.expect("task failed"),
            None,
            "dropped when forced"
        );
        holder.await.expect("holder failed");
        assert_eq!(drain.open(), 0);
        assert_eq!(drain.forced_total().get(), 2);
        assert!(drain.signal().is_forced());
    }

    #[tokio::test]
    async fn an_idle_drain_finishes_at_once() {
        let drain = Drain::new();
        let report = tokio::time::timeout(BOUND, drain.shutdown(BOUND))
            .await
            .expect("shutdown did not finish");
        assert_eq!((report.finished, report.forced), (0, 0));
        assert!(drain.signal().is_draining());
        assert!(!drain.signal().is_forced());
    }
}
