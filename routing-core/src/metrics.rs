//! Prometheus metrics of the resolver. Handles are created once so the hot path touches only
//! atomics (cached resolves are counted, not timed; histograms cover control-plane flights).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How a successful resolve was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolveKind {
    /// From the route cache, no RPC.
    Cached,
    /// The control plane said the actor was already RUNNING.
    Running,
    /// The control plane resumed the actor for this request.
    Resumed,
}

impl ResolveKind {
    /// The name used in metric labels, logs and `/statusz` (`cached`, `running`, `resumed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Running => "running",
            Self::Resumed => "resumed",
        }
    }
}

/// Every outcome label, in the order of `outcome_index`.
pub const OUTCOMES: [&str; 11] = [
    "ok",
    "invalid_ref",
    "not_found",
    "unavailable",
    "control_plane_unavailable",
    "at_capacity",
    "timeout",
    "access_denied",
    "unauthenticated",
    "routing_failed",
    "internal",
];
const KINDS: [&str; 4] = ["cached", "running", "resumed", "none"];

fn outcome_index(outcome: &str) -> usize {
    OUTCOMES
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(OUTCOMES.len() - 1)
}
fn kind_index(kind: Option<ResolveKind>) -> usize {
    match kind {
        Some(ResolveKind::Cached) => 0,
        Some(ResolveKind::Running) => 1,
        Some(ResolveKind::Resumed) => 2,
        None => 3,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    outcome: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

/// Resolver metric handles. Cloning shares the underlying metrics.
#[derive(Clone)]
pub struct ResolverMetrics {
    routes: Vec<Counter>,
    flight_duration: Vec<Histogram>,
    rpcs: Family<RpcLabels, Counter>,
    pub(crate) cache_hits: Counter,
    pub(crate) cache_misses: Counter,
    pub(crate) cache_invalidations: Counter,
    pub(crate) parked: Gauge,
    pub(crate) parking_rejected: Counter,
    pub(crate) flights_in_progress: Gauge,
    pub(crate) flights: Counter,
}

impl Default for ResolverMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ResolverMetrics {
    /// Unregistered metrics (tests, benchmarks).
    pub fn new() -> Self {
        let n = OUTCOMES.len() * KINDS.len();
        Self {
            routes: (0..n).map(|_| Counter::default()).collect(),
            flight_duration: (0..n).map(|_| new_histogram()).collect(),
            rpcs: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_invalidations: Counter::default(),
            parked: Gauge::default(),
            parking_rejected: Counter::default(),
            flights_in_progress: Gauge::default(),
            flights: Counter::default(),
        }
    }

    /// Creates the metrics and registers them (prefix `actorgate_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::new();
        let routes: Family<RouteLabels, Counter> = Family::default();
        let durations: Family<RouteLabels, Histogram> = Family::new_with_constructor(new_histogram);
        // Pre-create every label combination so the hot path never takes the family lock.
        let mut m = m;
        for (oi, outcome) in OUTCOMES.iter().enumerate() {
            for (ki, kind) in KINDS.iter().enumerate() {
                // Successes have a kind; failures have none. Register only those pairs.
                if (*outcome == "ok") == (*kind == "none") {
                    continue;
                }
                let l = RouteLabels { outcome, kind };
                m.routes[oi * KINDS.len() + ki] = routes.get_or_create_owned(&l);
                if *kind != "cached" {
                    m.flight_duration[oi * KINDS.len() + ki] = durations.get_or_create_owned(&l);
                }
            }
        }
        registry.register(
            "actorgate_routes",
            "Route resolutions by outcome and how they were answered",
            routes,
        );
        registry.register(
            "actorgate_route_resolve_duration_seconds",
            "Time to resolve a route that needed the control plane, by outcome and kind",
            durations,
        );
        registry.register(
            "actorgate_control_plane_requests",
            "Control-plane RPCs by method and gRPC code",
            m.rpcs.clone(),
        );
        registry.register(
            "actorgate_route_cache_hits",
            "Route cache hits",
            m.cache_hits.clone(),
        );
        registry.register(
            "actorgate_route_cache_misses",
            "Route cache misses",
            m.cache_misses.clone(),
        );
        registry.register(
            "actorgate_route_cache_invalidations",
            "Routes removed from the cache after a worker failure",
            m.cache_invalidations.clone(),
        );
        registry.register(
            "actorgate_parked_requests",
            "Requests currently waiting for an actor to resume",
            m.parked.clone(),
        );
        registry.register(
            "actorgate_parking_rejected",
            "Requests refused because the parking limit was reached",
            m.parking_rejected.clone(),
        );
        registry.register(
            "actorgate_resolve_flights_in_progress",
            "Control-plane lookups in progress (one per actor)",
            m.flights_in_progress.clone(),
        );
        registry.register(
            "actorgate_resolve_flights",
            "Control-plane lookups started",
            m.flights.clone(),
        );
        m
    }

    /// Counts one resolve (every path).
    #[inline]
    pub(crate) fn route(&self, outcome: &str, kind: Option<ResolveKind>) {
        self.routes[outcome_index(outcome) * KINDS.len() + kind_index(kind)].inc();
    }

    /// Times one resolve that waited on the control plane.
    pub(crate) fn flight_wait(&self, outcome: &str, kind: Option<ResolveKind>, seconds: f64) {
        self.flight_duration[outcome_index(outcome) * KINDS.len() + kind_index(kind)]
            .observe(seconds);
    }

    pub(crate) fn rpc(&self, method: &'static str, code: tonic::Code) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// Current number of parked requests.
    pub fn parked_now(&self) -> i64 {
        self.parked.get()
    }
    /// Route cache hits so far.
    pub fn cache_hits_total(&self) -> u64 {
        self.cache_hits.get()
    }
    /// Route cache misses so far.
    pub fn cache_misses_total(&self) -> u64 {
        self.cache_misses.get()
    }
    /// Requests refused for lack of a parking slot.
    pub fn parking_rejected_total(&self) -> u64 {
        self.parking_rejected.get()
    }
}

fn new_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// The gRPC code's canonical upper-snake name.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
