//! Ingress metrics: requests by status class and outcome, upstream latency, active connections.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The worker answered.
    Proxied,
    /// Routing failed (DESIGN §4 table).
    RouteError,
    /// The worker could not be reached or failed mid-request.
    UpstreamError,
    /// The worker did not answer in time.
    UpstreamTimeout,
    /// A protocol upgrade (WebSocket) or a trusted peer's CONNECT tunnel was established.
    Upgraded,
    /// The client's request was malformed (its body, authority or target; 400, 405, 417, 431)
    /// or its body stalled while the worker waited for it (408): answered by actorgate, never
    /// counted against the worker.
    ClientError,
}

const OUTCOMES: [Outcome; 6] = [
    Outcome::Proxied,
    Outcome::RouteError,
    Outcome::UpstreamError,
    Outcome::UpstreamTimeout,
    Outcome::Upgraded,
    Outcome::ClientError,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Proxied => "proxied",
            Self::RouteError => "route_error",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Upgraded => "upgraded",
            Self::ClientError => "client_error",
        }
    }
    fn index(self) -> usize {
        OUTCOMES.iter().position(|o| *o == self).unwrap_or(0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    class: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

/// Metric handles; label combinations are created up front so requests touch only atomics
/// (and one histogram lock).
#[derive(Clone)]
pub struct IngressMetrics {
    requests: Vec<Counter>,
    upstream_latency: Histogram,
    connections: Family<ListenerLabels, Gauge>,
    retries: Counter,
}

impl Default for IngressMetrics {
    fn default() -> Self {
        Self::build(None)
    }
}

impl IngressMetrics {
    /// Creates and registers the metrics (prefix `actorgate_ingress_`).
    pub fn register(registry: &mut Registry) -> Self {
        Self::build(Some(registry))
    }

    fn build(registry: Option<&mut Registry>) -> Self {
        let family: Family<RequestLabels, Counter> = Family::default();
        let mut requests = Vec::with_capacity(OUTCOMES.len() * CLASSES.len());
        for o in OUTCOMES {
            for c in CLASSES {
                requests.push(family.get_or_create_owned(&RequestLabels {
                    class: c,
                    outcome: o.label(),
                }));
            }
        }
        let upstream_latency = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]);
        let connections: Family<ListenerLabels, Gauge> = Family::default();
        let retries = Counter::default();
        if let Some(r) = registry {
            r.register(
                "actorgate_ingress_requests",
                "Ingress requests by status class and outcome",
                family,
            );
            r.register(
                "actorgate_ingress_upstream_response_seconds",
                "Time from sending a request to a worker to its response headers",
                upstream_latency.clone(),
            );
            r.register(
                "actorgate_ingress_connections_active",
                "Open client connections by listener",
                connections.clone(),
            );
            r.register(
                "actorgate_ingress_retries",
                "Requests retried once after a worker refused the connection or answered 421",
                retries.clone(),
            );
        }
        Self {
            requests,
            upstream_latency,
            connections,
            retries,
        }
    }

    /// Counts one finished request.
    #[inline]
    pub fn request(&self, status: u16, outcome: Outcome) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        self.requests[outcome.index() * CLASSES.len() + class].inc();
    }

    /// Records the time to a worker's response headers.
    #[inline]
    pub fn upstream_latency(&self, seconds: f64) {
        self.upstream_latency.observe(seconds);
    }

    /// Counts one request retried after a worker refused the connection or answered 421.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// The active-connections gauge of a listener.
    pub fn connections(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create_owned(&ListenerLabels { listener })
    }
}
