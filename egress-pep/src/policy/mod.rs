//! Egress policy (DESIGN §7.2): one compiled model with upstream's hostname grammar,
//! normalisation and precedence, plus actorgate's extensions (`tcp` CIDR rules, `actors` rules,
//! methods and path prefixes on `http` rules, `audit` mode), and the two sources that produce it:
//! `files` (YAML with selectors, hot-reloaded) and `ateapi` (upstream `GetActorEgressPolicy`,
//! DESIGN §9, cached per actor).
//!
//! * [`hostname`]: pattern grammar and authority normalisation (upstream rules).
//! * [`model`]: rules as written (the common form both sources produce), validated.
//! * [`compile`]: [`compile::CompiledPolicy`], the matcher (no linear scan over rules).
//! * [`files`]: actorgate's file format, selectors, reload.
//! * [`upstream`]: upstream `EgressPolicy` proto ↔ model.
//! * [`ateapi`]: the per-actor cached `GetActorEgressPolicy` source.

pub mod ateapi;
pub mod compile;
pub mod files;
pub mod hostname;
pub mod model;
pub mod upstream;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::subject::Subject;

pub use compile::CompiledPolicy;

/// A source could not say which policy applies (the control plane did not answer): the tunnel is
/// refused with 503 and nothing is cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress policy unavailable: {0}")]
pub struct PolicyUnavailable(pub String);

/// Where the policy for an actor comes from.
pub trait PolicySource: Send + Sync + 'static {
    /// `files` or `ateapi` (logs, metrics, `/statusz`).
    fn kind(&self) -> &'static str;
    /// The compiled policy for `subject`; `Ok(None)` when the actor has no policy (deny).
    fn policy_for(
        &self,
        subject: &Subject,
    ) -> BoxFuture<'static, Result<Option<Arc<CompiledPolicy>>, PolicyUnavailable>>;
    /// The source's state for `/statusz` (files and their reload state, cache sizes, errors).
    fn status(&self) -> serde_json::Value;
}
