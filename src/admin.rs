//! The admin server (DESIGN §8): `/healthz` (liveness), `/readyz` (directory reachable and not
//! draining), `/metrics` (Prometheus text), `/statusz` (HTML, or JSON with `?format=json` or
//! `Accept: application/json`).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use routing_core::Resolver;
use routing_core::directory::static_dir::StaticDirectory;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Result of the latest directory health probe.
#[derive(Debug, Clone, Serialize)]
pub struct DirectoryHealth {
    /// Whether the latest probe succeeded (readiness follows [`ProbeHysteresis`], not this).
    pub healthy: bool,
    pub checked_at: Option<SystemTime>,
    /// Why the last probe failed (not client-facing; operators only).
    pub error: Option<String>,
    /// Failed probes in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Successful probes in a row (0 after a failure).
    pub consecutive_successes: u32,
}

/// Turns a stream of probe results into a readiness state that changes only after
/// `failure_threshold` failures in a row (ready → unready) or `success_threshold` successes in a
/// row (unready → ready), as Kubernetes probes' `failureThreshold` / `successThreshold` do. It
/// starts unready: the first `success_threshold` successes make it ready. Draining is not its
/// business (it flips readiness at once, see [`AdminState::ready`]).
#[derive(Debug, Clone)]
pub struct ProbeHysteresis {
    failure_threshold: u32,
    success_threshold: u32,
    ready: bool,
    failures: u32,
    successes: u32,
}

impl ProbeHysteresis {
    /// Starts unready. A threshold of 0 is taken as 1 (config validation refuses 0).
    pub fn new(failure_threshold: u32, success_threshold: u32) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            success_threshold: success_threshold.max(1),
            ready: false,
            failures: 0,
            successes: 0,
        }
    }

    /// Records one probe result; returns the new readiness when this result changed it.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.ready && self.successes >= self.success_threshold {
                self.ready = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.ready && self.failures >= self.failure_threshold {
                self.ready = false;
                return Some(false);
            }
        }
        None
    }

    /// The debounced readiness.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Failed probes in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Successful probes in a row.
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }
}

/// Everything the admin endpoints report on.
pub struct AdminState {
    pub started: Instant,
    pub draining: AtomicBool,
    pub directory_ok: AtomicBool,
    pub directory_health: Mutex<DirectoryHealth>,
    pub directory_kind: &'static str,
    /// The directory itself, for what it reports live (the control-plane connection).
    pub directory: Arc<dyn routing_core::ActorDirectory>,
    pub resolver: Resolver,
    pub static_directory: Option<StaticDirectory>,
    pub registry: Registry,
    /// Static facts for `/statusz` (listeners, settings).
    pub summary: serde_json::Value,
}

impl AdminState {
    /// Ready: not draining (checked first, so a drain flips it at once) and the directory probe's
    /// debounced state ([`ProbeHysteresis`]) is ready.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.directory_ok.load(Ordering::Acquire)
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        ));
    }
    let full = |s: String| Full::new(Bytes::from(s));
    let resp = match req.uri().path() {
        "/resolve" => crate::resolve_endpoint::resolve(&state.resolver, req.headers(), full).await,
        "/resolve/error" => crate::resolve_endpoint::replay_error(req.headers(), full),
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        "/readyz" => {
            if state.draining.load(Ordering::Acquire) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "draining\n",
                )
            } else if !state.directory_ok.load(Ordering::Acquire) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "directory unreachable\n",
                )
            } else {
                text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n")
            }
        }
        "/metrics" => {
            let mut out = String::with_capacity(16 * 1024);
            match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "encoding failed\n",
                ),
            }
        }
        "/statusz" => {
            let wants_json = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "format=json"))
                || req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/json"));
            let status = status_json(&state);
            if wants_json {
                text(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec_pretty(&status).unwrap_or_default(),
                )
            } else {
                text(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    status_html(&status),
                )
            }
        }
        "/" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<!doctype html><title>actorgate</title><ul><li><a href=/statusz>/statusz</a><li><a href=/metrics>/metrics</a><li><a href=/readyz>/readyz</a><li><a href=/healthz>/healthz</a></ul>\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    };
    Ok(resp)
}

fn status_json(state: &AdminState) -> serde_json::Value {
    let health = state
        .directory_health
        .lock()
        .map(|h| h.clone())
        .unwrap_or(DirectoryHealth {
            healthy: false,
            checked_at: None,
            error: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
        });
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "ready": state.ready(),
        "draining": state.draining.load(Ordering::Acquire),
        "config": state.summary,
        "directory": {
            "kind": state.directory_kind,
            // ateapi only: whether the control plane ever answered and the latest reason a
            // connection failed (refused, unknown CA, DNS, …).
            "connection": state.directory.connection(),
            "health": health,
            "static": state.static_directory.as_ref().map(|d| d.status()),
        },
        "resolver": state.resolver.status(),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A JSON value as display text: strings without quotes, null as empty.
fn plain(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn status_html(v: &serde_json::Value) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let g = |p: &str| plain(v.pointer(p));
    let _ = write!(
        h,
        "<!doctype html><meta charset=utf-8><title>actorgate status</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}.bad{{color:#b00}}.ok{{color:#070}}</style>\
         <h1>actorgate {}</h1><p>uptime {}s · ready: <b class={}>{}</b> · draining: {}</p>",
        esc(&g("/version")),
        esc(&g("/uptime_seconds")),
        if g("/ready") == "true" { "ok" } else { "bad" },
        esc(&g("/ready")),
        esc(&g("/draining")),
    );
    let _ = write!(
        h,
        "<h2>Directory</h2><table><tr><th>kind</th><td>{}</td></tr><tr><th>healthy</th><td>{}</td></tr><tr><th>last probe error</th><td>{}</td></tr>",
        esc(&g("/directory/kind")),
        esc(&g("/directory/health/healthy")),
        esc(&g("/directory/health/error")),
    );
    if let Some(c) = v.pointer("/directory/connection").filter(|c| !c.is_null()) {
        let f = |k: &str| plain(c.get(k));
        let err = f("last_connect_error");
        let _ = write!(
            h,
            "<tr><th>control plane</th><td>{}</td></tr><tr><th>ever connected</th><td>{}</td></tr>\
             <tr><th>last connect error</th><td class={}>{}</td></tr>",
            esc(&f("address")),
            esc(&f("ever_connected")),
            if err.is_empty() { "ok" } else { "bad" },
            esc(if err.is_empty() { "none" } else { &err }),
        );
    }
    if let Some(st) = v.pointer("/directory/static").filter(|s| !s.is_null()) {
        let f = |k: &str| plain(st.get(k));
        let err = f("last_error");
        let _ = write!(
            h,
            "<tr><th>static generation</th><td>{}</td></tr><tr><th>static actors</th><td>{}</td></tr>\
             <tr><th>last reload error</th><td class={}>{}</td></tr>",
            esc(&f("generation")),
            esc(&f("actors")),
            if err.is_empty() { "ok" } else { "bad" },
            esc(if err.is_empty() { "none" } else { &err }),
        );
    }
    h.push_str("</table><h2>Resolver</h2><table>");
    for k in [
        "cache_entries",
        "cache_hits",
        "cache_misses",
        "parked",
        "parking_limit",
        "parking_rejected",
        "flights_in_progress",
    ] {
        let _ = write!(
            h,
            "<tr><th>{k}</th><td>{}</td></tr>",
            esc(&g(&format!("/resolver/{k}")))
        );
    }
    h.push_str("</table><h2>Recent decisions</h2><table><tr><th>actor</th><th>outcome</th><th>kind</th><th>ms</th><th>error</th></tr>");
    if let Some(recent) = v.pointer("/resolver/recent").and_then(|r| r.as_array()) {
        for d in recent {
            let f = |k: &str| plain(d.get(k));
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
                esc(&f("actor")),
                esc(&f("outcome")),
                esc(&f("kind")),
                d.get("duration_ms")
                    .and_then(|x| x.as_f64())
                    .unwrap_or_default(),
                esc(&f("error")),
            );
        }
    }
    let _ = write!(
        h,
        "</table><h2>Config</h2><pre>{}</pre>",
        esc(
            &serde_json::to_string_pretty(v.get("config").unwrap_or(&serde_json::Value::Null))
                .unwrap_or_default()
        )
    );
    h
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves the admin endpoints until `shutdown` flips, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let conn = http.serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::ProbeHysteresis;

    /// Feeds `results` and returns the readiness after each.
    fn run(h: &mut ProbeHysteresis, results: &[bool]) -> Vec<bool> {
        results
            .iter()
            .map(|&ok| {
                h.record(ok);
                h.ready()
            })
            .collect()
    }

    #[test]
    fn starts_unready_and_needs_the_success_threshold() {
        let mut h = ProbeHysteresis::new(3, 2);
        assert!(!h.ready());
        assert_eq!(
            run(&mut h, &[true, false, true, true]),
            [false, false, false, true]
        );
    }

    #[test]
    fn one_failure_does_not_flip_readiness_but_the_threshold_does() {
        let mut h = ProbeHysteresis::new(3, 1);
        assert_eq!(h.record(true), Some(true));
        assert_eq!(
            run(&mut h, &[false, true, false, false, true, false, false]),
            [true; 7],
            "failures that are not consecutive never reach the threshold"
        );
        assert_eq!(h.consecutive_failures(), 2);
        assert_eq!(h.record(false), Some(false), "third failure in a row");
        assert_eq!(h.record(false), None, "already unready");
        assert_eq!(h.consecutive_failures(), 4);
    }

    #[test]
    fn recovery_needs_consecutive_successes() {
        let mut h = ProbeHysteresis::new(2, 3);
        run(&mut h, &[true, true, true, false, false]);
        assert!(!h.ready());
        assert_eq!(
            run(&mut h, &[true, true, false, true, true]),
            [false; 5],
            "a failure resets the success count"
        );
        assert_eq!(h.record(true), Some(true));
        assert_eq!(h.consecutive_successes(), 3);
    }

    #[test]
    fn thresholds_of_one_follow_every_probe() {
        let mut h = ProbeHysteresis::new(1, 1);
        assert_eq!(run(&mut h, &[true, false, true]), [true, false, true]);
        let mut zero = ProbeHysteresis::new(0, 0);
        assert_eq!(run(&mut zero, &[true, false]), [true, false], "0 acts as 1");
    }
}
