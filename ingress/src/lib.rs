//! actorgate's ingress fronts (DESIGN §5): the HTTP reverse proxy ([`proxy`], served on a
//! runtime listener by [`server`]), the ingress ExtProc handler ([`extproc`], which the binary's
//! dispatcher hands ingress streams to), the `ResolveRoute` gRPC API ([`router_api`]), the HTTP resolve endpoint for
//! `auth_request`-style proxies ([`resolve_endpoint`]) and the
//! echo worker used by the demo, tests and benchmarks ([`echo`]).

#![warn(missing_docs)]

pub mod body;
pub mod config;
pub mod connector;
pub mod echo;
pub mod extproc;
pub mod headers;
pub mod idle_splice;
pub mod local_reply;
pub mod metrics;
pub mod proxy;
pub mod resolve_endpoint;
pub mod router_api;
pub mod server;
pub mod trusted_peers;

pub use metrics::IngressMetrics;
pub use proxy::{ConnInfo, Proxy, ProxySettings, UpstreamProtocol};
pub use server::{ListenerLimits, serve};
pub use trusted_peers::TrustedPeers;
