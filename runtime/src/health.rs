//! Readiness and status registration. Components register named readiness checks and named
//! `/statusz` sections in one [`Health`] registry; the admin server renders whatever is
//! registered (`/readyz` from [`Health::ready`], `/statusz` from [`Health::status_json`] and
//! [`render_html`]) without knowing the components.
//!
//! Checks are synchronous and cheap (they read state a component keeps up to date, e.g. the
//! debounced result of its own probe loop, see [`ProbeHysteresis`]): `/readyz` is polled often.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use serde::Serialize;
use serde_json::Value;

/// A readiness check: `Ok(())` when ready, or `Err(reason)` for operators (not client-facing).
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// A `/statusz` section: the component's current status as JSON.
pub type Section = Arc<dyn Fn() -> Value + Send + Sync>;

/// Names that [`Health::status_json`] uses itself, so no section may have them.
pub const RESERVED_SECTIONS: [&str; 3] = ["ready", "draining", "checks"];

/// Registration problems (a wiring mistake, reported at startup).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// A check or section of that name is already registered.
    #[error("a {kind} named {name:?} is already registered")]
    Duplicate {
        /// `readiness check` or `status section`.
        kind: &'static str,
        /// The name registered twice.
        name: String,
    },
    /// The section name is one of [`RESERVED_SECTIONS`].
    #[error("the status section name {0:?} is reserved")]
    Reserved(String),
}

/// The registry of readiness checks and status sections, plus the draining flag. Cheap to clone
/// (clones share the registry).
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    checks: RwLock<Vec<(String, Check)>>,
    sections: RwLock<Vec<(String, Section)>>,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The name the check was registered under.
    pub name: String,
    /// `Ok(())` when ready, else why not.
    pub result: Result<(), String>,
}

/// The answer to "is this process ready?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Not draining and every check passed.
    pub ready: bool,
    /// The process is draining (then it is not ready, whatever the checks say).
    pub draining: bool,
    /// Every registered check's result, in registration order.
    pub checks: Vec<CheckResult>,
}

impl Readiness {
    /// The reasons for being unready, one per line (`draining`, `<check>: <reason>`); empty
    /// when ready.
    pub fn reasons(&self) -> String {
        let mut out = String::new();
        if self.draining {
            out.push_str("draining\n");
        }
        for c in &self.checks {
            if let Err(e) = &c.result {
                let _ = writeln!(out, "{}: {e}", c.name);
            }
        }
        out
    }
}

impl Health {
    /// An empty registry, not draining.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a readiness check under `name` (unique).
    pub fn register_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Result<(), HealthError> {
        let name = name.into();
        let mut checks = self.inner.checks.write();
        if checks.iter().any(|(n, _)| *n == name) {
            return Err(HealthError::Duplicate {
                kind: "readiness check",
                name,
            });
        }
        checks.push((name, Arc::new(check)));
        Ok(())
    }

    /// Registers a `/statusz` section under `name` (unique, not one of [`RESERVED_SECTIONS`]).
    pub fn register_section(
        &self,
        name: impl Into<String>,
        section: impl Fn() -> Value + Send + Sync + 'static,
    ) -> Result<(), HealthError> {
        let name = name.into();
        if RESERVED_SECTIONS.contains(&name.as_str()) {
            return Err(HealthError::Reserved(name));
        }
        let mut sections = self.inner.sections.write();
        if sections.iter().any(|(n, _)| *n == name) {
            return Err(HealthError::Duplicate {
                kind: "status section",
                name,
            });
        }
        sections.push((name, Arc::new(section)));
        Ok(())
    }

    /// Marks the process as draining: from now on it is not ready.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Whether [`Health::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Runs every check. Ready when not draining and every check passed (no checks: ready).
    pub fn ready(&self) -> Readiness {
        // Clone the list so a check may register or read the registry without deadlocking.
        let checks: Vec<(String, Check)> = self.inner.checks.read().clone();
        let checks: Vec<CheckResult> = checks
            .into_iter()
            .map(|(name, check)| CheckResult {
                name,
                result: check(),
            })
            .collect();
        let draining = self.is_draining();
        Readiness {
            ready: !draining && checks.iter().all(|c| c.result.is_ok()),
            draining,
            checks,
        }
    }

    /// The status document: `ready`, `draining`, `checks` (name → `"ok"` or
    /// `{"error": reason}`), then every section under its name, in registration order.
    pub fn status_json(&self) -> Value {
        let readiness = self.ready();
        let mut doc = serde_json::Map::new();
        doc.insert("ready".into(), Value::Bool(readiness.ready));
        doc.insert("draining".into(), Value::Bool(readiness.draining));
        let checks = readiness
            .checks
            .into_iter()
            .map(|c| {
                let v = match c.result {
                    Ok(()) => Value::String("ok".into()),
                    Err(e) => serde_json::json!({ "error": e }),
                };
                (c.name, v)
            })
            .collect();
        doc.insert("checks".into(), Value::Object(checks));
        let sections: Vec<(String, Section)> = self.inner.sections.read().clone();
        for (name, section) in sections {
            doc.insert(name, section());
        }
        Value::Object(doc)
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("draining", &self.is_draining())
            .field(
                "checks",
                &self
                    .inner
                    .checks
                    .read()
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field(
                "sections",
                &self
                    .inner
                    .sections
                    .read()
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders a status document (any JSON, typically [`Health::status_json`]) as an HTML page:
/// objects become two-column tables (nested objects nest), lists of objects become tables with
/// one column per key, other values are escaped text.
pub fn render_html(title: &str, status: &Value) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        "<!doctype html><meta charset=utf-8><title>{t}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}</style>\
         <h1>{t}</h1>",
        t = escape_html(title)
    );
    render_value(&mut h, status);
    h.push('\n');
    h
}

fn render_value(h: &mut String, v: &Value) {
    match v {
        Value::Null => {}
        Value::String(s) => h.push_str(&escape_html(s)),
        Value::Object(map) => {
            h.push_str("<table>");
            for (k, v) in map {
                let _ = write!(h, "<tr><th>{}</th><td>", escape_html(k));
                render_value(h, v);
                h.push_str("</td></tr>");
            }
            h.push_str("</table>");
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let mut columns: Vec<&String> = Vec::new();
            for item in items.iter().filter_map(Value::as_object) {
                for k in item.keys() {
                    if !columns.contains(&k) {
                        columns.push(k);
                    }
                }
            }
            h.push_str("<table><tr>");
            for c in &columns {
                let _ = write!(h, "<th>{}</th>", escape_html(c));
            }
            h.push_str("</tr>");
            for item in items.iter().filter_map(Value::as_object) {
                h.push_str("<tr>");
                for c in &columns {
                    h.push_str("<td>");
                    if let Some(v) = item.get(*c) {
                        render_value(h, v);
                    }
                    h.push_str("</td>");
                }
                h.push_str("</tr>");
            }
            h.push_str("</table>");
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    h.push_str(", ");
                }
                render_value(h, item);
            }
        }
        other => h.push_str(&escape_html(&other.to_string())),
    }
}

/// Turns a stream of probe results into a readiness state that changes only after
/// `failure_threshold` failures in a row (ready → unready) or `success_threshold` successes in a
/// row (unready → ready), as Kubernetes probes' `failureThreshold` / `successThreshold` do. It
/// starts unready: the first `success_threshold` successes make it ready. Draining is not its
/// business (the [`Health`] registry's draining flag overrides every check).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

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

    #[test]
    fn readiness_is_every_check_and_not_draining() {
        let health = Health::new();
        assert!(health.ready().ready, "no checks: ready");
        let directory = Arc::new(AtomicBool::new(false));
        let d = directory.clone();
        health
            .register_check("directory", move || {
                if d.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err("unreachable".into())
                }
            })
            .expect("first registration");
        health
            .register_check("tls", || Ok(()))
            .expect("first registration");
        let r = health.ready();
        assert!(!r.ready);
        assert_eq!(
            r.checks,
            [
                CheckResult {
                    name: "directory".into(),
                    result: Err("unreachable".into())
                },
                CheckResult {
                    name: "tls".into(),
                    result: Ok(())
                },
            ]
        );
        assert_eq!(r.reasons(), "directory: unreachable\n");
        directory.store(true, Ordering::Release);
        assert!(health.ready().ready);
        health.set_draining();
        let r = health.ready();
        assert!(!r.ready && r.draining);
        assert_eq!(r.reasons(), "draining\n");
        assert_eq!(
            health.register_check("tls", || Ok(())),
            Err(HealthError::Duplicate {
                kind: "readiness check",
                name: "tls".into()
            })
        );
    }

    #[test]
    fn status_has_the_checks_and_every_section_live() {
        let health = Health::new();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        health
            .register_section(
                "resolver",
                move || serde_json::json!({ "cache_hits": h.load(Ordering::Acquire) }),
            )
            .expect("first registration");
        health
            .register_check("directory", || Err("no answer within 1s".into()))
            .expect("first registration");
        hits.store(3, Ordering::Release);
        assert_eq!(
            health.status_json(),
            serde_json::json!({
                "ready": false,
                "draining": false,
                "checks": { "directory": { "error": "no answer within 1s" } },
                "resolver": { "cache_hits": 3 },
            })
        );
        assert_eq!(
            health.register_section("ready", || Value::Null),
            Err(HealthError::Reserved("ready".into()))
        );
        let html = render_html("actorgate <status>", &health.status_json());
        assert!(
            html.contains("<title>actorgate &lt;status&gt;</title>"),
            "{html}"
        );
        assert!(
            html.contains("<tr><th>cache_hits</th><td>3</td></tr>"),
            "{html}"
        );
        assert!(html.contains("no answer within 1s"), "{html}");
    }
}
