//! `logging`: log line format and filter.

use routing_core::field_error::FieldErrors;
use serde::{Deserialize, Serialize};

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` or `json` lines on stderr.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `actorgate=debug,info`); `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".to_owned()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LoggingConfig {
    /// Checks that `level` is a valid tracing filter.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            errs.push("level", format!("invalid filter {:?}: {e}", self.level));
        }
        errs.into_result(())
    }
}
