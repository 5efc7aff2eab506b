//! actorgate's ingress fronts (DESIGN §5). Today: the HTTP reverse proxy ([`proxy`], served by
//! [`server`]) and the echo worker used by the demo, tests and benchmarks ([`echo`]).

pub mod body;
pub mod connector;
pub mod echo;
pub mod extproc;
pub mod headers;
pub mod local_reply;
pub mod metrics;
pub mod proxy;
pub mod router_api;
pub mod server;

pub use metrics::IngressMetrics;
pub use proxy::{ConnInfo, Proxy, ProxySettings, UpstreamProtocol};
pub use server::{ListenerLimits, serve};
