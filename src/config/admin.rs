//! `admin`: the admin server's address and how `/readyz` follows the directory probe.

use std::net::SocketAddr;
use std::time::Duration;

use routing_core::field_error::FieldErrors;
use runtime::config::{check_duration, socket_addr};
use serde::{Deserialize, Serialize};

/// The admin server: health, readiness, metrics, status page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How `/readyz` follows the directory's health probe.
    #[serde(default)]
    pub readiness: ReadinessConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            readiness: ReadinessConfig::default(),
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:9090".to_owned()
}

/// The directory health probe behind `/readyz`. Like a Kubernetes probe's `periodSeconds`,
/// `timeoutSeconds`, `failureThreshold` and `successThreshold`: one slow or failed probe does
/// not flip readiness; draining flips it at once regardless.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadinessConfig {
    /// Time between the starts of two probes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one probe may take before it counts as failed (at most `interval`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed probes that make a ready gateway unready.
    pub failure_threshold: u32,
    /// Consecutive successful probes that make an unready gateway ready (at start too).
    pub success_threshold: u32,
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

impl AdminConfig {
    /// The admin listener's address, after checking it and the readiness settings.
    pub fn listen_addr(&self) -> Result<SocketAddr, FieldErrors> {
        let mut errs = FieldErrors::default();
        let listen = socket_addr(&mut errs, "listen", &self.listen);
        let rd = &self.readiness;
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        check_duration(&mut errs, "readiness.interval", rd.interval, ms(50), s(300));
        if rd.timeout > rd.interval {
            errs.push(
                "readiness.timeout",
                format!(
                    "{} is longer than admin.readiness.interval ({})",
                    humantime::format_duration(rd.timeout),
                    humantime::format_duration(rd.interval)
                ),
            );
        } else {
            check_duration(&mut errs, "readiness.timeout", rd.timeout, ms(10), s(300));
        }
        for (field, v) in [
            ("readiness.failure_threshold", rd.failure_threshold),
            ("readiness.success_threshold", rd.success_threshold),
        ] {
            if !(1..=100).contains(&v) {
                errs.push(field, format!("{v} is out of range (1 to 100)"));
            }
        }
        match listen {
            Some(a) if errs.is_empty() => Ok(a),
            _ => Err(errs),
        }
    }
}
