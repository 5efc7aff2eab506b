//! Prometheus metrics of the PEP (DESIGN §7.2 "Audit"): tunnels and cleartext requests by verdict
//! and reason, active tunnels, bytes each way, the time to answer a CONNECT, policy decision
//! latency, identity failures by reason,
//! limits that closed something, the policy source's reload state, the DNS cache size, and for
//! interception: requests by verdict, upstream TLS failures, leaves minted and cached. Every
//! label is a fixed, low-cardinality code ([`Verdict::as_str`], [`Reason::as_str`],
//! [`Limit::as_str`]): never an actor, a name or an address.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::decision::{Reason, Verdict};

/// A limit that closed or refused something (label `limit` of
/// `actorgate_egress_limits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// The CONNECT request's head (h2: the connection preface and the first CONNECT's
    /// HEADERS) did not arrive within the header read timeout.
    SlowHeader,
    /// The CONNECT request's head was larger than the header limit (answered 431).
    OversizedHeader,
    /// An h2 stream beyond the connection's stream limit (refused).
    TooManyStreams,
    /// A tunnel with no bytes either way for the idle timeout, or an h2 connection without an
    /// open tunnel for that long (closed).
    Idle,
    /// The tunnel's first bytes did not classify within the classification timeout.
    ClassifyTimeout,
    /// An h2 connection closed by the h2 layer with GOAWAY `ENHANCE_YOUR_CALM`: the peer sent
    /// more small DATA frames than were taken in (their framing overhead is bounded to half
    /// the connection window), or more resets, empty DATA or CONTINUATION frames, or refused
    /// and failed streams than h2 allows over the connection's life.
    H2Flood,
}

impl Limit {
    /// The label value: `slow_header`, `oversized_header`, `too_many_streams`, `idle`,
    /// `classify_timeout`, `h2_flood`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::SlowHeader => "slow_header",
            Limit::OversizedHeader => "oversized_header",
            Limit::TooManyStreams => "too_many_streams",
            Limit::Idle => "idle",
            Limit::ClassifyTimeout => "classify_timeout",
            Limit::H2Flood => "h2_flood",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictOnly {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Label `direction` (`up`: actor → destination, `down`: back) of byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    direction: &'static str,
}

/// Adds `up` and `down` bytes to a byte counter family (zero adds nothing).
pub(crate) fn count_bytes(family: &Family<DirectionLabels, Counter>, up: u64, down: u64) {
    if up > 0 {
        family
            .get_or_create(&DirectionLabels { direction: "up" })
            .inc_by(up);
    }
    if down > 0 {
        family
            .get_or_create(&DirectionLabels { direction: "down" })
            .inc_by(down);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// The PEP's metric handles. Cloning shares the underlying metrics (every clone counts into the
/// same series).
#[derive(Clone, Debug)]
pub struct EgressMetrics {
    tunnels: Family<VerdictLabels, Counter>,
    requests: Family<VerdictLabels, Counter>,
    active: Gauge,
    bytes: Family<DirectionLabels, Counter>,
    connect_seconds: Histogram,
    decision_seconds: Histogram,
    identity_failures: Family<ReasonLabels, Counter>,
    limits: Family<LimitLabels, Counter>,
    policy_reload_ok: Gauge,
    dns_cache_entries: Gauge,
    intercepted_requests: Family<VerdictOnly, Counter>,
    upstream_tls_failures: Family<ReasonLabels, Counter>,
    leaves_minted: Counter,
    /// The minter's count last copied into `leaves_minted`.
    leaves_minted_seen: Arc<AtomicU64>,
    leaf_cache_entries: Gauge,
    /// Decisions observed (for tests and `/statusz`, without reading the histogram).
    decisions: Arc<AtomicU64>,
}

impl EgressMetrics {
    /// Creates the metrics and registers them in `registry`:
    /// `actorgate_egress_tunnels_total{verdict,reason}`, `actorgate_egress_tunnels_active`,
    /// `actorgate_egress_bytes_total{direction="up"|"down"}` (up: actor → destination),
    /// `actorgate_egress_connect_seconds` (CONNECT received → answered 200: identity, liveness,
    /// policy fetch), `actorgate_egress_decision_seconds` (one compiled-policy decision: SNI,
    /// opaque or cleartext request), `actorgate_egress_identity_failures_total{reason}`,
    /// `actorgate_egress_requests_total{verdict,reason}`, `actorgate_egress_limits_total{limit}`,
    /// `actorgate_egress_policy_reload_ok` (1 while the policy source's latest load succeeded)
    /// and `actorgate_egress_dns_cache_entries`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        registry.register(
            "actorgate_egress_tunnels",
            "Tunnels by verdict and reason (one per CONNECT; refused CONNECTs included)",
            m.tunnels.clone(),
        );
        registry.register(
            "actorgate_egress_tunnels_active",
            "Tunnels open now",
            m.active.clone(),
        );
        registry.register(
            "actorgate_egress_bytes",
            "Bytes carried by tunnels; up = actor to destination, down = destination to actor",
            m.bytes.clone(),
        );
        registry.register(
            "actorgate_egress_connect_seconds",
            "Time to answer a CONNECT with 200: identity, actor liveness and the actor's policy (refusals excluded)",
            m.connect_seconds.clone(),
        );
        registry.register(
            "actorgate_egress_decision_seconds",
            "Time of one compiled-policy decision (a tunnel's SNI or opaque bytes, a cleartext request)",
            m.decision_seconds.clone(),
        );
        registry.register(
            "actorgate_egress_identity_failures",
            "CONNECTs refused for their identity, by reason",
            m.identity_failures.clone(),
        );
        registry.register(
            "actorgate_egress_requests",
            "Cleartext HTTP requests inside tunnels by verdict and reason",
            m.requests.clone(),
        );
        registry.register(
            "actorgate_egress_limits",
            "Connections, streams and tunnels closed or refused by a limit",
            m.limits.clone(),
        );
        registry.register(
            "actorgate_egress_policy_reload_ok",
            "1 while the egress policy source's latest load or reload succeeded, 0 after a failed one",
            m.policy_reload_ok.clone(),
        );
        registry.register(
            "actorgate_egress_dns_cache_entries",
            "Names in the PEP resolver's cache",
            m.dns_cache_entries.clone(),
        );
        registry.register(
            "actorgate_egress_intercepted_requests",
            "Requests inside intercepted TLS connections by verdict (also in requests_total with their reason)",
            m.intercepted_requests.clone(),
        );
        registry.register(
            "actorgate_egress_upstream_tls_failures",
            "Re-originated TLS connections that failed, by reason (upstream_certificate_invalid, upstream_tls_failed)",
            m.upstream_tls_failures.clone(),
        );
        registry.register(
            "actorgate_egress_intercept_leaves_minted",
            "Leaf certificates minted by the interception CA",
            m.leaves_minted.clone(),
        );
        registry.register(
            "actorgate_egress_intercept_leaf_cache_entries",
            "Leaf certificates cached (one per name)",
            m.leaf_cache_entries.clone(),
        );
        m
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        let policy_reload_ok = Gauge::default();
        policy_reload_ok.set(1);
        Self {
            tunnels: Family::default(),
            requests: Family::default(),
            active: Gauge::default(),
            bytes: Family::default(),
            // 10 µs … ~42 s.
            connect_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 12)),
            // 100 ns … ~0.4 s (a decision takes about a microsecond).
            decision_seconds: Histogram::new(exponential_buckets(1e-7, 4.0, 12)),
            identity_failures: Family::default(),
            limits: Family::default(),
            policy_reload_ok,
            dns_cache_entries: Gauge::default(),
            intercepted_requests: Family::default(),
            upstream_tls_failures: Family::default(),
            leaves_minted: Counter::default(),
            leaves_minted_seen: Arc::new(AtomicU64::new(0)),
            leaf_cache_entries: Gauge::default(),
            decisions: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts one tunnel's outcome.
    pub fn tunnel(&self, verdict: Verdict, reason: Reason) {
        self.tunnels
            .get_or_create(&VerdictLabels {
                verdict: verdict.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Tunnels counted with this verdict and reason so far.
    pub fn tunnels(&self, verdict: Verdict, reason: Reason) -> u64 {
        self.tunnels
            .get_or_create(&VerdictLabels {
                verdict: verdict.as_str(),
                reason: reason.as_str(),
            })
            .get()
    }

    /// Counts one cleartext request's outcome.
    pub fn request(&self, verdict: Verdict, reason: Reason) {
        self.requests
            .get_or_create(&VerdictLabels {
                verdict: verdict.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Cleartext requests counted with this verdict and reason so far.
    pub fn requests(&self, verdict: Verdict, reason: Reason) -> u64 {
        self.requests
            .get_or_create(&VerdictLabels {
                verdict: verdict.as_str(),
                reason: reason.as_str(),
            })
            .get()
    }

    /// Counts a CONNECT refused for its identity (also counted as a tunnel by the caller).
    pub fn identity_failure(&self, reason: Reason) {
        self.identity_failures
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Identity failures counted with this reason so far.
    pub fn identity_failures(&self, reason: Reason) -> u64 {
        self.identity_failures
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    /// Counts something a limit closed or refused.
    pub fn limit(&self, limit: Limit) {
        self.limits
            .get_or_create(&LimitLabels {
                limit: limit.as_str(),
            })
            .inc();
    }

    /// How often `limit` closed or refused something so far.
    pub fn limits(&self, limit: Limit) -> u64 {
        self.limits
            .get_or_create(&LimitLabels {
                limit: limit.as_str(),
            })
            .get()
    }

    /// Adds bytes carried: `up` from the actor to the destination, `down` back.
    pub fn bytes(&self, up: u64, down: u64) {
        count_bytes(&self.bytes, up, down);
    }

    /// Records how long answering a CONNECT took (from its arrival to the 200).
    pub fn connect(&self, took: Duration) {
        self.connect_seconds.observe(took.as_secs_f64());
    }

    /// Records how long one compiled-policy decision took.
    pub fn decision(&self, took: Duration) {
        self.decision_seconds.observe(took.as_secs_f64());
        self.decisions.fetch_add(1, Ordering::Relaxed);
    }

    /// Compiled-policy decisions recorded so far.
    pub fn decisions(&self) -> u64 {
        self.decisions.load(Ordering::Relaxed)
    }

    /// A tunnel opened: the active gauge goes up until the returned guard is dropped.
    pub fn open_tunnel(&self) -> ActiveTunnel {
        self.active.inc();
        ActiveTunnel {
            active: self.active.clone(),
        }
    }

    /// Tunnels open now.
    pub fn active_tunnels(&self) -> i64 {
        self.active.get()
    }

    /// Sets the policy source's reload state (`true`: latest load succeeded).
    pub fn set_policy_reload_ok(&self, ok: bool) {
        self.policy_reload_ok.set(i64::from(ok));
    }

    /// Counts one request inside an intercepted connection (it is counted in
    /// [`EgressMetrics::request`] too).
    pub fn intercepted_request(&self, verdict: Verdict) {
        self.intercepted_requests
            .get_or_create(&VerdictOnly {
                verdict: verdict.as_str(),
            })
            .inc();
    }

    /// Intercepted requests counted with this verdict so far.
    pub fn intercepted_requests(&self, verdict: Verdict) -> u64 {
        self.intercepted_requests
            .get_or_create(&VerdictOnly {
                verdict: verdict.as_str(),
            })
            .get()
    }

    /// Counts a re-originated TLS connection that failed (`reason`:
    /// [`Reason::UpstreamCertificateInvalid`] or [`Reason::UpstreamTlsFailed`]).
    pub fn upstream_tls_failure(&self, reason: Reason) {
        self.upstream_tls_failures
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Copies the leaf minter's counts: `minted` since start (the counter advances by what is
    /// new) and `cached` now.
    pub fn set_interception_leaves(&self, minted: u64, cached: u64) {
        let before = self.leaves_minted_seen.fetch_max(minted, Ordering::Relaxed);
        if minted > before {
            self.leaves_minted.inc_by(minted - before);
        }
        self.leaf_cache_entries
            .set(i64::try_from(cached).unwrap_or(i64::MAX));
    }

    /// Sets the number of names in the resolver's cache.
    pub fn set_dns_cache_entries(&self, entries: u64) {
        self.dns_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

/// Holds one unit of `actorgate_egress_tunnels_active` while a tunnel is open.
#[derive(Debug)]
pub struct ActiveTunnel {
    active: Gauge,
}

impl Drop for ActiveTunnel {
    fn drop(&mut self) {
        self.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_documented_names() {
        let mut reg = Registry::default();
        let m = EgressMetrics::new(&mut reg);
        m.tunnel(Verdict::Deny, Reason::NoPolicy);
        m.request(Verdict::Allow, Reason::Allowed);
        m.identity_failure(Reason::IdentityInvalid);
        m.limit(Limit::Idle);
        m.bytes(3, 4);
        m.decision(Duration::from_micros(3));
        m.connect(Duration::from_millis(2));
        m.intercepted_request(Verdict::Deny);
        m.upstream_tls_failure(Reason::UpstreamCertificateInvalid);
        m.set_interception_leaves(2, 1);
        m.set_interception_leaves(3, 2);
        m.set_interception_leaves(1, 2);
        let t = m.open_tunnel();
        assert_eq!(m.active_tunnels(), 1);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for line in [
            "actorgate_egress_tunnels_total{verdict=\"deny\",reason=\"no_policy\"} 1",
            "actorgate_egress_requests_total{verdict=\"allow\",reason=\"allowed\"} 1",
            "actorgate_egress_identity_failures_total{reason=\"identity_invalid\"} 1",
            "actorgate_egress_limits_total{limit=\"idle\"} 1",
            "actorgate_egress_bytes_total{direction=\"up\"} 3",
            "actorgate_egress_bytes_total{direction=\"down\"} 4",
            "actorgate_egress_tunnels_active 1",
            "actorgate_egress_decision_seconds_count 1",
            "actorgate_egress_connect_seconds_count 1",
            "actorgate_egress_policy_reload_ok 1",
            "actorgate_egress_dns_cache_entries 0",
            "actorgate_egress_intercepted_requests_total{verdict=\"deny\"} 1",
            "actorgate_egress_upstream_tls_failures_total{reason=\"upstream_certificate_invalid\"} 1",
            "actorgate_egress_intercept_leaves_minted_total 3",
            "actorgate_egress_intercept_leaf_cache_entries 2",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        drop(t);
        assert_eq!(m.active_tunnels(), 0);
    }
}
