//! The admin server (DESIGN §8). It renders whatever the components registered, without
//! knowing them:
//!
//! * `/healthz`: liveness, `ok`.
//! * `/readyz`: 200 `ready` when not draining and every registered readiness check passes;
//!   otherwise 503 with `draining`, or one line per failed check (`<check> <reason>`, e.g.
//!   `directory unreachable`). `/readyz?verbose` lists every check (`[+]name ok`,
//!   `[-]name failed: reason`) before that line. A process with no checks is ready.
//! * `/metrics`: the Prometheus registry (OpenMetrics text).
//! * `/statusz`: [`Health::status_json`] (`ready`, `draining`, `checks`, then every section) as
//!   HTML, or as JSON with `?format=json` or `Accept: application/json`.
//!
//! The HTTP resolve endpoint is not here (it resumes actors): `/resolve` answers 404.

use std::convert::Infallible;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use runtime::Health;
use runtime::health::render_html;
use serde_json::Value;

type Body = Full<Bytes>;

/// The admin endpoints over the health registry and the metrics registry.
pub struct Admin {
    health: Health,
    registry: Registry,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

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

const TEXT: &str = "text/plain; charset=utf-8";

/// Whether the query string has the parameter `name` (`name` or `name=…`).
fn has_param(req: &Request<Incoming>, name: &str) -> bool {
    req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == name || p.split_once('=').is_some_and(|(k, _)| k == name))
    })
}

impl Admin {
    /// Serves `health`'s checks and sections and `registry`'s metrics.
    pub fn new(health: Health, registry: Registry) -> Self {
        Self { health, registry }
    }

    /// Answers one request. Only GET and HEAD are allowed (405 otherwise).
    pub async fn handle(
        self: std::sync::Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(text(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "method not allowed\n",
            ));
        }
        let resp = match req.uri().path() {
            "/healthz" => text(StatusCode::OK, TEXT, "ok\n"),
            "/readyz" => self.readyz(has_param(&req, "verbose")),
            "/metrics" => self.metrics(),
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
                let status = self.health.status_json();
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
                        render_html("actorgate status", &labels(&status)),
                    )
                }
            }
            "/" => text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                "<!doctype html><title>actorgate</title><ul><li><a href=/statusz>/statusz</a><li><a href=/metrics>/metrics</a><li><a href=/readyz>/readyz</a><li><a href=/healthz>/healthz</a></ul>\n",
            ),
            _ => text(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        };
        Ok(resp)
    }

    fn readyz(&self, verbose: bool) -> Response<Body> {
        let r = self.health.ready();
        let mut body = String::new();
        if verbose {
            for c in &r.checks {
                let _ = match &c.result {
                    Ok(()) => writeln!(body, "[+]{} ok", c.name),
                    Err(e) => writeln!(body, "[-]{} failed: {e}", c.name),
                };
            }
        }
        if r.ready {
            body.push_str("ready\n");
            return text(StatusCode::OK, TEXT, body);
        }
        if r.draining {
            body.push_str("draining\n");
        } else {
            for c in &r.checks {
                if let Err(e) = &c.result {
                    let _ = writeln!(body, "{} {e}", c.name);
                }
            }
        }
        text(StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
    }

    fn metrics(&self) -> Response<Body> {
        let mut out = String::with_capacity(16 * 1024);
        match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            Ok(()) => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                out,
            ),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "encoding failed\n"),
        }
    }
}

/// The status document with its keys as labels for the HTML page (`last_connect_error` →
/// `last connect error`); values are unchanged.
fn labels(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.replace('_', " "), labels(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(labels).collect()),
        other => other.clone(),
    }
}
