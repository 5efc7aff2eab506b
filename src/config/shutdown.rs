//! `shutdown`: how SIGTERM drains.

use std::time::Duration;

use routing_core::field_error::FieldErrors;
use runtime::config::check_duration;
use serde::{Deserialize, Serialize};

/// SIGTERM handling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long `/readyz` answers 503 before listeners close (lets load
    /// balancers stop sending new connections).
    #[serde(default, with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How long in-flight requests may take to finish once listeners close.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ShutdownConfig {
    /// Checks both durations' ranges.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        let (zero, s) = (Duration::ZERO, Duration::from_secs);
        check_duration(&mut errs, "drain_delay", self.drain_delay, zero, s(600));
        check_duration(
            &mut errs,
            "drain_timeout",
            self.drain_timeout,
            zero,
            s(3600),
        );
        errs.into_result(())
    }
}
