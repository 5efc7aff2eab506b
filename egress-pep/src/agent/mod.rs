//! The tunnel agent's building blocks (DESIGN §7.5): in the actor's network namespace, TCP is
//! redirected to the agent's capture listener ([`rules`]: the nftables ruleset), the agent reads
//! each captured connection's original destination ([`original_dst`]) and carries it to the PEP
//! through a tunnel ([`per_connection`]: upstream atunnel's wire behaviour). Work in progress
//! (issue 13): the capture listener, the pooled h2 mode, egress assertions, the explicit proxy
//! and the `actorgate agent` process come next.

pub mod capture;
pub mod config;
pub mod metrics;
pub mod original_dst;
pub mod per_connection;
pub mod rules;
