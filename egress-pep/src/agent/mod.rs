//! The tunnel agent (DESIGN §7.5): in the actor's network namespace, TCP is redirected to the
//! agent's capture listener ([`rules`]: the nftables ruleset), which reads each captured
//! connection's original destination ([`original_dst`]) and carries it to the PEP
//! ([`capture`]) through a tunnel ([`tunnels`]: [`per_connection`], upstream atunnel's wire
//! behaviour, or [`pooled`] h2 CONNECT streams), configured by the `agent` section
//! ([`config`]) and observed through [`metrics`]; [`explicit_proxy`] serves actors that set
//! `HTTP_PROXY`. A shared agent proves each tunnel with an egress assertion
//! ([`per_connection::Assertions`]). Issue 13 in progress: the agent benchmark comes next.

pub mod capture;
pub mod config;
pub mod explicit_proxy;
pub mod metrics;
pub mod original_dst;
pub mod per_connection;
pub mod pooled;
pub mod rules;
pub mod tunnels;
