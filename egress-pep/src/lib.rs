//! The egress policy enforcement point (PEP), DESIGN §7: every outbound connection of an actor
//! arrives through an mTLS tunnel (HTTP/1.1 CONNECT as upstream atunnel sends it, or RFC 9113
//! CONNECT streams over h2) carrying the actor's verified identity and the original destination;
//! the PEP classifies the tunnel's first bytes, decides by policy, audits and forwards.
//!
//! * [`actor_hosts`]: names (and ingress addresses) that belong to actors, and how actor traffic
//!   is decided.
//! * [`actor_forward`]: forwarding actor traffic to ingress as a trusted peer; loop detection.
//! * [`decision`]: what a decision is (verdict, reason, deciding rule, where to dial) — the
//!   vocabulary every other module speaks.
//! * [`subject`]: the verified actor behind a tunnel.
//! * [`policy`]: the compiled policy model (upstream grammar and precedence, actorgate's
//!   extensions) and its sources (`files`, `ateapi`).
//! * [`guard`]: the SSRF floor applied to every address about to be dialled.
//! * [`resolve`]: the PEP's own DNS resolver (hickory, static entries, bounded TTL cache).
//! * [`forward`]: dialling by name or address through the guard, splicing bytes.
//! * [`classify`]: TLS ClientHello / HTTP/1.x / opaque from a tunnel's first bytes.
//! * [`cleartext`]: cleartext HTTP proxied and decided per request.
//! * [`credentials`]: credential injection: provider secrets, files, environment, actor tokens.
//! * [`intercept_ca`]: the interception CA and the leaf certificates minted with it.
//! * [`intercept_tls`]: terminating an actor's TLS with the leaf for its SNI.
//! * [`intercept_upstream`]: re-originating TLS to the authorised name, verified.
//! * [`h2_tunnel`]: an h2 CONNECT stream's bytes as a byte stream (both ends of pooled tunnels).
//! * [`tunnel`]: the tunnel server (h1 and h2 CONNECT over mTLS), identity and liveness.
//! * [`audit`]: one record per tunnel and per readable request, to the log and a JSON-lines file.
//! * [`metrics`]: Prometheus metrics of the PEP.
//! * [`config`]: the `egress` config section.

#![warn(missing_docs)]

pub mod actor_forward;
pub mod actor_hosts;
pub mod agent;
pub mod audit;
pub mod classify;
pub mod cleartext;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod forward;
pub mod guard;
pub mod h2_tunnel;
pub mod intercept_ca;
pub mod intercept_tls;
pub mod intercept_upstream;
pub mod intercepted;
pub mod metrics;
pub mod policy;
pub mod resolve;
pub mod subject;
pub mod tunnel;
pub mod upstream_pool;
