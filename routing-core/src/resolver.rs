//! The resolver (DESIGN §4): actor → routable worker endpoint.
//!
//! * Route cache: RUNNING placements are served without an RPC until their TTL or an explicit
//!   `invalidate` (worker refused the connection or answered 421).
//! * Single flight: one control-plane lookup per actor at a time; concurrent requests join it.
//!   The flight is a task of its own: no caller's cancellation reaches it and it never drops an
//!   RPC it has sent. It retries ABORTED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION and UNAVAILABLE
//!   with exponential backoff and jitter, and stops retrying when its budget is spent.
//! * A flight first asks `GetActor`; an actor found RUNNING is routed at once. Otherwise the
//!   flight calls `ResumeActor`, and from then on every waiting request needs a parking slot:
//!   when none is free it is refused with `router at capacity`. Requests to running actors never
//!   take a slot.
//! * Each request waits at most the budget from the moment it joined, then gets 504.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::actor_ref::ActorRef;
use crate::directory::{ActorDirectory, ActorRecord, DirectoryError, TemplateRef};
use crate::error::{RouteError, sanitize_detail};
use crate::extract::{Extractor, RequestMeta, Target};
use crate::metrics::{ResolveKind, ResolverMetrics};
use crate::proto::ActorState;

/// How many recent control-plane decisions `/statusz` shows.
const RECENT_DECISIONS: usize = 64;

/// How the gateway reaches workers, which decides the endpoint port (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum WorkerTransport {
    /// Plain HTTP to `worker_pod_ip:<actor port>`.
    Plain,
    /// mTLS to the worker agent (atunnel) at `worker_pod_ip:<port>` (443 upstream); the actor
    /// port travels in `X-Ate-Target-Port`.
    Agent {
        /// The worker agent's port (443 upstream).
        port: u16,
    },
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BackoffSettings {
    /// First retry delay.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth of the delay per retry (at least 1).
    pub factor: f64,
    /// Fraction of each delay added or removed at random (0.1 = ±10%).
    pub jitter: f64,
    /// Longest delay between retries.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            factor: 1.1,
            jitter: 0.1,
            max: Duration::from_secs(2),
        }
    }
}

/// Resolver settings; `Default` gives DESIGN §4's defaults.
#[derive(Debug, Clone, Serialize)]
pub struct ResolverSettings {
    /// Time budget of one flight and the longest a request waits for one.
    #[serde(with = "humantime_serde")]
    pub budget: Duration,
    /// Delays between retries of a flight.
    pub backoff: BackoffSettings,
    /// Requests that may wait for resuming actors at once.
    pub parking_limit: usize,
    /// How long a RUNNING placement is served from cache; zero disables the cache.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Most placements in the route cache.
    pub cache_max_entries: u64,
    /// How the worker is dialled (directly, or through its agent).
    pub worker_transport: WorkerTransport,
    /// Ask `GetActor` before `ResumeActor` (lets running actors skip parking).
    pub probe_with_get: bool,
    /// The `boot` flag of `ResumeActorRequest`.
    pub resume_boot: bool,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(5),
            backoff: BackoffSettings::default(),
            parking_limit: 1000,
            cache_ttl: Duration::from_secs(5),
            cache_max_entries: 100_000,
            worker_transport: WorkerTransport::Plain,
            probe_with_get: true,
            resume_boot: false,
        }
    }
}

/// Where a RUNNING actor lives (shared between the cache and routes).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The actor.
    pub actor: ActorRef,
    /// The actor's UID.
    pub uid: String,
    /// The template the actor was created from, if known.
    pub template: Option<TemplateRef>,
    /// The worker's address, validated.
    pub worker_ip: IpAddr,
    /// Static directory only: the port to dial instead of the actor port.
    pub worker_port: Option<u16>,
    /// The worker pod's name.
    pub worker_pod: String,
}

/// A routable result: the placement, the endpoint to dial and how it was found.
#[derive(Debug, Clone)]
pub struct Route {
    /// Where the actor runs.
    pub placement: Arc<Placement>,
    /// The address to dial (the worker, or its agent).
    pub endpoint: SocketAddr,
    /// The actor port the request asked for (the worker agent needs it in agent mode).
    pub actor_port: u16,
    /// Whether it came from the cache, a running actor or a resume.
    pub kind: ResolveKind,
}

impl Route {
    /// The routed actor.
    pub fn actor(&self) -> &ActorRef {
        &self.placement.actor
    }
    /// Whether this request's flight resumed the actor.
    pub fn resumed(&self) -> bool {
        self.kind == ResolveKind::Resumed
    }
}

/// One finished control-plane lookup, for `/statusz`.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// When the lookup finished.
    pub at: SystemTime,
    /// The actor (`<atespace>/<name>`).
    pub actor: String,
    /// `ok` or the error's outcome label (e.g. `not_found`, `timeout`).
    pub outcome: &'static str,
    /// How a successful lookup found the actor.
    pub kind: Option<ResolveKind>,
    /// How long the lookup took, milliseconds.
    pub duration_ms: f64,
    /// Client-safe message of a failure.
    pub error: Option<String>,
}

/// Counters and recent decisions for `/statusz`.
#[derive(Debug, Clone, Serialize)]
pub struct ResolverStatus {
    /// Placements in the route cache.
    pub cache_entries: u64,
    /// Requests answered from the cache.
    pub cache_hits: u64,
    /// Requests that needed the control plane.
    pub cache_misses: u64,
    /// Requests waiting for a flight now.
    pub parked: i64,
    /// Most requests that may wait at once.
    pub parking_limit: usize,
    /// Requests refused because the parking limit was reached.
    pub parking_rejected: u64,
    /// Control-plane lookups in progress.
    pub flights_in_progress: usize,
    /// The latest finished lookups, oldest first.
    pub recent: Vec<Decision>,
}

type FlightResult = Result<(Arc<Placement>, ResolveKind), RouteError>;

/// What waiters of a flight see.
#[derive(Clone, Default)]
struct FlightState {
    /// `ResumeActor` is under way: waiting requests hold parking slots.
    resuming: bool,
    /// The latest retryable failure, already mapped: what a request whose wait runs out is told
    /// (a 503 with the server's reason beats a bare 504).
    last_error: Option<RouteError>,
    done: Option<FlightResult>,
}

/// A flight in the map: its state channel and whether an invalidation made its result stale.
struct FlightEntry {
    rx: watch::Receiver<FlightState>,
    stale: Arc<AtomicBool>,
}

struct Inner {
    directory: Arc<dyn ActorDirectory>,
    settings: ResolverSettings,
    extractor: Extractor,
    cache: Option<moka::sync::Cache<ActorRef, Arc<Placement>>>,
    /// Hand-written single flight: moka's `try_get_with` coalesces loads too, but runs the load
    /// in the first caller's future (its cancellation would cancel the RPC), cannot detach a
    /// load on `invalidate`, and shows waiters no progress (`resuming`) to take parking slots by.
    flights: Mutex<HashMap<ActorRef, FlightEntry>>,
    /// Parking slots: a plain semaphore, taken only once a flight starts resuming (no crate
    /// models "bounded waiters on a resume, running actors exempt").
    parking: Arc<Semaphore>,
    metrics: ResolverMetrics,
    recent: Mutex<VecDeque<Decision>>,
    /// The directory's change counter (the static one ticks on reload), read on every resolve.
    changes: Option<watch::Receiver<u64>>,
    /// The change count the cache was last emptied for.
    seen_changes: AtomicU64,
}

/// The routing core's entry point. Cheap to clone; all clones share cache and flights.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

/// A held parking slot; releases the slot and the gauge when dropped.
struct Parked {
    _permit: OwnedSemaphorePermit,
    metrics: ResolverMetrics,
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.metrics.parked.dec();
    }
}

impl Resolver {
    /// Builds a resolver over a directory.
    pub fn new(
        directory: Arc<dyn ActorDirectory>,
        settings: ResolverSettings,
        extractor: Extractor,
        metrics: ResolverMetrics,
    ) -> Self {
        let cache = (!settings.cache_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(settings.cache_max_entries)
                .time_to_live(settings.cache_ttl)
                .build()
        });
        let changes = directory.changes();
        let seen_changes = AtomicU64::new(changes.as_ref().map_or(0, |rx| *rx.borrow()));
        Self {
            inner: Arc::new(Inner {
                directory,
                parking: Arc::new(Semaphore::new(settings.parking_limit)),
                settings,
                extractor,
                cache,
                flights: Mutex::new(HashMap::new()),
                metrics,
                recent: Mutex::new(VecDeque::with_capacity(RECENT_DECISIONS)),
                changes,
                seen_changes,
            }),
        }
    }

    /// The extractor this resolver was built with.
    pub fn extractor(&self) -> &Extractor {
        &self.inner.extractor
    }

    /// The directory behind this resolver.
    pub fn directory(&self) -> &Arc<dyn ActorDirectory> {
        &self.inner.directory
    }

    /// Request metadata → route: the whole routing contract in one call.
    pub async fn route(&self, req: &RequestMeta<'_>) -> Result<Route, RouteError> {
        match self.inner.extractor.extract(req) {
            Ok(target) => self.resolve(&target).await,
            Err(e) => {
                self.inner.metrics.route("invalid_ref", None);
                Err(e.into())
            }
        }
    }

    /// Resolves an extracted target.
    pub async fn resolve(&self, target: &Target) -> Result<Route, RouteError> {
        let inner = &self.inner;
        // A directory that changed (the static one, on reload) empties the route cache first,
        // so an edit applies to the very next resolution.
        if let Some(rx) = &inner.changes {
            let now = *rx.borrow();
            if inner.seen_changes.swap(now, Ordering::AcqRel) != now {
                self.invalidate_all();
            }
        }
        if let Some(cache) = &inner.cache
            && let Some(p) = cache.get(&target.actor)
        {
            inner.metrics.cache_hits.inc();
            inner.metrics.route("ok", Some(ResolveKind::Cached));
            return Ok(self.make_route(p, target.port, ResolveKind::Cached));
        }
        inner.metrics.cache_misses.inc();
        let started = Instant::now();
        let result = self.wait_for_flight(&target.actor).await;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok((p, kind)) => {
                inner.metrics.route("ok", Some(kind));
                inner.metrics.flight_wait("ok", Some(kind), elapsed);
                Ok(self.make_route(p, target.port, kind))
            }
            Err(e) => {
                inner.metrics.route(e.outcome(), None);
                inner.metrics.flight_wait(e.outcome(), None, elapsed);
                Err(e)
            }
        }
    }

    /// Drops a cached route, e.g. after the worker refused a connection or answered 421, so the
    /// next request asks the control plane again. A lookup already under way for the actor is
    /// detached too: its result is not cached and later requests do not join it.
    pub fn invalidate(&self, actor: &ActorRef) {
        if let Some(cache) = &self.inner.cache
            && cache.contains_key(actor)
        {
            cache.invalidate(actor);
            self.inner.metrics.cache_invalidations.inc();
        }
        if let Some(entry) = self.inner.lock_flights().remove(actor) {
            entry.stale.store(true, Ordering::Release);
        }
    }

    /// Drops every cached route and detaches every lookup under way (the directory changed).
    pub fn invalidate_all(&self) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate_all();
        }
        for (_, entry) in self.inner.lock_flights().drain() {
            entry.stale.store(true, Ordering::Release);
        }
    }

    /// Counters and recent decisions.
    pub fn status(&self) -> ResolverStatus {
        let m = &self.inner.metrics;
        ResolverStatus {
            cache_entries: self.inner.cache.as_ref().map_or(0, |c| c.entry_count()),
            cache_hits: m.cache_hits_total(),
            cache_misses: m.cache_misses_total(),
            parked: m.parked_now(),
            parking_limit: self.inner.settings.parking_limit,
            parking_rejected: m.parking_rejected_total(),
            flights_in_progress: self.inner.lock_flights().len(),
            recent: self.inner.recent.lock().iter().rev().cloned().collect(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ResolverSettings {
        &self.inner.settings
    }

    fn make_route(&self, placement: Arc<Placement>, actor_port: u16, kind: ResolveKind) -> Route {
        let port = match self.inner.settings.worker_transport {
            WorkerTransport::Plain => placement.worker_port.unwrap_or(actor_port),
            WorkerTransport::Agent { port } => placement.worker_port.unwrap_or(port),
        };
        Route {
            endpoint: SocketAddr::new(placement.worker_ip, port),
            placement,
            actor_port,
            kind,
        }
    }

    async fn wait_for_flight(&self, actor: &ActorRef) -> FlightResult {
        let mut rx = self.join_or_start(actor);
        let deadline = tokio::time::Instant::now() + self.inner.settings.budget;
        let mut parked: Option<Parked> = None;
        loop {
            let resuming = {
                let state = rx.borrow_and_update();
                if let Some(done) = &state.done {
                    return done.clone();
                }
                state.resuming
            };
            if resuming && parked.is_none() {
                match self.inner.parking.clone().try_acquire_owned() {
                    Ok(permit) => {
                        self.inner.metrics.parked.inc();
                        parked = Some(Parked {
                            _permit: permit,
                            metrics: self.inner.metrics.clone(),
                        });
                    }
                    Err(_) => {
                        self.inner.metrics.parking_rejected.inc();
                        return Err(RouteError::AtCapacity(actor.clone()));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return rx
                        .borrow()
                        .done
                        .clone()
                        .unwrap_or_else(|| Err(RouteError::Internal(actor.clone())));
                }
                Err(_) => {
                    let last = rx.borrow().last_error.clone();
                    return Err(last.unwrap_or_else(|| RouteError::Timeout(actor.clone())));
                }
            }
        }
    }

    fn join_or_start(&self, actor: &ActorRef) -> watch::Receiver<FlightState> {
        let mut flights = self.inner.lock_flights();
        if let Some(entry) = flights.get(actor) {
            return entry.rx.clone();
        }
        let (tx, rx) = watch::channel(FlightState::default());
        let stale = Arc::new(AtomicBool::new(false));
        flights.insert(
            actor.clone(),
            FlightEntry {
                rx: rx.clone(),
                stale: stale.clone(),
            },
        );
        drop(flights);
        let guard = FlightGuard::new(self.inner.clone(), actor.clone(), rx.clone());
        let inner = self.inner.clone();
        let actor = actor.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = inner.run_flight(&actor, &tx).await;
            if let (Ok((p, _)), Some(cache)) = (&result, &inner.cache)
                && !stale.load(Ordering::Acquire)
            {
                cache.insert(actor.clone(), p.clone());
            }
            inner.record(&actor, &result, started.elapsed());
            drop(guard); // leave the map before publishing: late arrivals hit the cache
            tx.send_modify(|s| s.done = Some(result));
        });
        rx
    }
}

/// Counts a flight and removes it from the map when it ends, even by panic.
struct FlightGuard {
    inner: Arc<Inner>,
    actor: ActorRef,
    rx: watch::Receiver<FlightState>,
}

impl FlightGuard {
    fn new(inner: Arc<Inner>, actor: ActorRef, rx: watch::Receiver<FlightState>) -> Self {
        inner.metrics.flights.inc();
        inner.metrics.flights_in_progress.inc();
        Self { inner, actor, rx }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.inner.metrics.flights_in_progress.dec();
        let mut flights = self.inner.lock_flights();
        if flights
            .get(&self.actor)
            .is_some_and(|e| e.rx.same_channel(&self.rx))
        {
            flights.remove(&self.actor);
        }
    }
}

impl Inner {
    fn lock_flights(&self) -> MutexGuard<'_, HashMap<ActorRef, FlightEntry>> {
        self.flights.lock()
    }

    /// Sends one directory call on its own task (so nothing ever cancels it) and returns the
    /// handle; the call records its own metric when it completes.
    fn call(
        &self,
        actor: &ActorRef,
        resume: bool,
    ) -> tokio::task::JoinHandle<Result<(ActorRecord, bool), DirectoryError>> {
        let metrics = self.metrics.clone();
        let (method, fut): (
            &'static str,
            crate::directory::DirFuture<(ActorRecord, bool)>,
        ) = if resume {
            let f = self.directory.resume(actor, self.settings.resume_boot);
            (
                "ResumeActor",
                Box::pin(async move { f.await.map(|o| (o.record, o.resumed)) }),
            )
        } else {
            let f = self.directory.get(actor);
            (
                "GetActor",
                Box::pin(async move { f.await.map(|rec| (rec, false)) }),
            )
        };
        tokio::spawn(async move {
            let r = fut.await;
            metrics.rpc(method, r.as_ref().err().map_or(tonic::Code::Ok, |e| e.code));
            r
        })
    }

    async fn run_flight(&self, actor: &ActorRef, tx: &watch::Sender<FlightState>) -> FlightResult {
        let deadline = tokio::time::Instant::now() + self.settings.budget;
        let mut backoff = Backoff::new(self.settings.backoff);
        let mut probing = self.settings.probe_with_get;
        if !probing {
            tx.send_modify(|s| s.resuming = true);
        }
        let mut last_error: Option<RouteError> = None;
        loop {
            // The flight stops waiting at its budget; the call itself runs on to completion.
            let attempt = match tokio::time::timeout_at(deadline, self.call(actor, !probing)).await
            {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(DirectoryError::new(
                    tonic::Code::Internal,
                    "directory call panicked",
                )),
                Err(_) => {
                    return Err(last_error.unwrap_or_else(|| RouteError::Timeout(actor.clone())));
                }
            };
            let err = match attempt {
                Ok((rec, resumed)) if rec.state == ActorState::Running => {
                    let kind = if resumed {
                        ResolveKind::Resumed
                    } else {
                        ResolveKind::Running
                    };
                    return placement(rec).map(|p| (Arc::new(p), kind));
                }
                Ok(_) if probing => {
                    probing = false;
                    tx.send_modify(|s| s.resuming = true);
                    continue;
                }
                Ok((rec, _)) => DirectoryError::new(
                    tonic::Code::FailedPrecondition,
                    format!("actor is {}", state_name(rec.state)),
                ),
                Err(e) => e,
            };
            let retryable = is_retryable(err.code);
            let mapped = final_error(actor, err);
            if !retryable {
                return Err(mapped);
            }
            let delay = backoff.next_delay();
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(mapped);
            }
            tracing::debug!(actor = %actor, error = %mapped, delay_ms = delay.as_millis() as u64, "retrying control-plane call");
            tx.send_modify(|s| s.last_error = Some(mapped.clone()));
            last_error = Some(mapped);
            tokio::time::sleep(delay).await;
        }
    }

    fn record(&self, actor: &ActorRef, result: &FlightResult, took: Duration) {
        let (outcome, kind, error) = match result {
            Ok((_, kind)) => ("ok", Some(*kind), None),
            Err(e) => (e.outcome(), None, Some(e.client_message())),
        };
        match &error {
            None => {
                tracing::debug!(actor = %actor, outcome, took_ms = took.as_millis() as u64, "resolved")
            }
            // Unknown actors are a client mistake (or a scan): not worth an info line each.
            Some(e) if outcome == "not_found" => {
                tracing::debug!(actor = %actor, outcome, error = %e, "resolve failed")
            }
            Some(e) => {
                tracing::info!(actor = %actor, outcome, error = %e, took_ms = took.as_millis() as u64, "resolve failed")
            }
        }
        let mut recent = self.recent.lock();
        if recent.len() == RECENT_DECISIONS {
            recent.pop_front();
        }
        recent.push_back(Decision {
            at: SystemTime::now(),
            actor: actor.to_string(),
            outcome,
            kind,
            duration_ms: took.as_secs_f64() * 1000.0,
            error,
        });
    }
}

/// Codes DESIGN §3 says are worth retrying within the budget.
pub fn is_retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Aborted
            | tonic::Code::ResourceExhausted
            | tonic::Code::FailedPrecondition
            | tonic::Code::Unavailable
    )
}

/// Maps a final control-plane error to the client-facing error (DESIGN §4).
pub fn final_error(actor: &ActorRef, e: DirectoryError) -> RouteError {
    let a = actor.clone();
    match e.code {
        tonic::Code::NotFound => RouteError::NotFound(a),
        tonic::Code::FailedPrecondition | tonic::Code::Aborted | tonic::Code::ResourceExhausted => {
            RouteError::Unavailable {
                actor: a,
                detail: sanitize_detail(&e.message),
            }
        }
        tonic::Code::Unavailable => RouteError::ControlPlaneUnavailable(a),
        tonic::Code::DeadlineExceeded => RouteError::Timeout(a),
        tonic::Code::PermissionDenied => RouteError::AccessDenied(a),
        tonic::Code::Unauthenticated => RouteError::Unauthenticated(a),
        _ => RouteError::Internal(a),
    }
}

fn placement(rec: ActorRecord) -> Result<Placement, RouteError> {
    let bad = || RouteError::RoutingFailed(rec.actor.clone());
    let worker = rec.worker.as_ref().ok_or_else(bad)?;
    let ip: IpAddr = worker.pod_ip.trim().parse().map_err(|_| bad())?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(bad());
    }
    Ok(Placement {
        worker_ip: ip,
        worker_port: worker.port,
        worker_pod: worker.pod.clone(),
        actor: rec.actor,
        uid: rec.uid,
        template: rec.template,
    })
}

fn state_name(s: ActorState) -> &'static str {
    match s {
        ActorState::Unspecified => "in an unknown state",
        ActorState::Resuming => "resuming",
        ActorState::Running => "running",
        ActorState::Suspending => "suspending",
        ActorState::Suspended => "suspended",
        ActorState::Pausing => "pausing",
        ActorState::Paused => "paused",
        ActorState::Crashed => "crashed",
        ActorState::Deleting => "being deleted",
    }
}

/// Exponential backoff with symmetric jitter, capped.
// Not backon: its jitter only adds (0..100% of the delay) where `BackoffSettings::jitter` is a
// configured ± fraction, and the flight loop (probe then resume, budget deadline, progress sent
// to waiters) is not a plain retried closure; these ten lines are the whole delay policy.
struct Backoff {
    next: Duration,
    s: BackoffSettings,
}

impl Backoff {
    fn new(s: BackoffSettings) -> Self {
        Self { next: s.initial, s }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.mul_f64(self.s.factor.max(1.0)).min(self.s.max);
        let spread = self.s.jitter.clamp(0.0, 1.0) * (fastrand::f64() * 2.0 - 1.0);
        base.mul_f64(1.0 + spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_jitter_and_caps() {
        let mut b = Backoff::new(BackoffSettings {
            initial: Duration::from_millis(100),
            factor: 2.0,
            jitter: 0.1,
            max: Duration::from_millis(500),
        });
        let d: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert!((90..=110).contains(&d[0]), "{d:?}");
        assert!((180..=220).contains(&d[1]), "{d:?}");
        assert!((450..=550).contains(&d[5]), "{d:?}");
    }

    #[test]
    fn error_mapping() {
        let a = ActorRef::parse("n/a").unwrap();
        let m = |c, msg: &str| final_error(&a, DirectoryError::new(c, msg));
        assert_eq!(m(tonic::Code::NotFound, "x").http_status(), 404);
        assert_eq!(
            m(tonic::Code::FailedPrecondition, "no free workers available").client_message(),
            "actor n/a unavailable: no free workers available"
        );
        assert_eq!(
            m(tonic::Code::Unavailable, "tcp connect error").client_message(),
            "actor n/a unavailable"
        );
        assert_eq!(m(tonic::Code::DeadlineExceeded, "").http_status(), 504);
        assert_eq!(m(tonic::Code::PermissionDenied, "").http_status(), 403);
        assert_eq!(m(tonic::Code::Unauthenticated, "").http_status(), 401);
        assert_eq!(
            m(tonic::Code::DataLoss, "secret internals").client_message(),
            "error resuming actor n/a"
        );
    }
}
