//! Configuration problems that name the offending field. The types live in
//! [`runtime::config`] (every component's config section uses them); re-exported here so
//! `routing_core::field_error` paths keep working.

pub use runtime::config::*;
