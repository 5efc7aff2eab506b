//! Gateway-neutral actor routing (DESIGN §1–§4): request metadata → `ActorRef` → resume or
//! locate through the control plane → routable worker endpoint, or a client-safe error.
//!
//! Every front of actorgate (HTTP proxy, Envoy ExtProc, ResolveRoute, HTTP resolve) is an adapter
//! over [`Resolver::route`]; they read and write the actor headers named in [`wire`] and check
//! request metadata with [`validate`].

#![warn(missing_docs)]

pub mod actor_ref;
pub mod config;
pub mod directory;
pub mod error;
pub mod extract;
pub mod field_error;
pub mod metrics;
pub mod resolver;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod validate;
pub mod wire;

/// Generated `ateapi` protobuf types, client (`control_client`) and server (`control_server`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("ateapi");
}

pub use actor_ref::{ActorRef, ActorRefError};
pub use directory::{ActorDirectory, ActorRecord, DirectoryError};
pub use error::RouteError;
pub use extract::{Extractor, ExtractorKind, RequestMeta, Target};
pub use metrics::{ResolveKind, ResolverMetrics};
pub use resolver::{Resolver, ResolverSettings, Route, WorkerTransport};
