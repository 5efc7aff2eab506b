//! Prometheus metrics of the tunnel agent: captured connections, tunnels by result, the PEP's
//! CONNECT answers by status, open connections to the PEP, bytes each way. Labels are fixed
//! codes, never addresses.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::DirectionLabels;

/// How a captured connection's tunnel went (label `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelResult {
    /// The tunnel opened (the PEP answered 2xx).
    Opened,
    /// The PEP answered the CONNECT with another status.
    Refused,
    /// No tunnel: the PEP unreachable, a failed handshake, a bad answer, a timeout.
    Failed,
    /// The connection was not redirected (no original destination) or pointed at the agent.
    NotCaptured,
    /// The actor's connection failed before its tunnel opened (the actor went away).
    ClientGone,
}

impl TunnelResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelResult::Opened => "opened",
            TunnelResult::Refused => "refused",
            TunnelResult::Failed => "failed",
            TunnelResult::NotCaptured => "not_captured",
            TunnelResult::ClientGone => "client_gone",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    mode: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

/// The agent's metric handles (clones share the series).
#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    captured: Counter,
    tunnels: Family<ResultLabels, Counter>,
    statuses: Family<StatusLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    pep_connections: Gauge,
}

/// One open connection to the PEP, counted in `actorgate_agent_pep_connections` until dropped.
#[derive(Debug)]
pub struct PepConnection(Gauge);

impl Drop for PepConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl AgentMetrics {
    /// Creates and registers `actorgate_agent_captured_total`,
    /// `actorgate_agent_tunnels_total{mode,result}`,
    /// `actorgate_agent_connect_status_total{status}` (`2xx`, `403`, `503`, `other`),
    /// `actorgate_agent_pep_connections` (open TLS connections to the PEP: one per tunnel in
    /// `per-connection`, the shared h2 connections in `pooled`) and
    /// `actorgate_agent_bytes_total{direction="up"|"down"}` (up: actor → destination).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "actorgate_agent_captured",
            "Connections accepted on the capture listeners",
            m.captured.clone(),
        );
        registry.register(
            "actorgate_agent_tunnels",
            "Tunnels to the PEP by mode and result",
            m.tunnels.clone(),
        );
        registry.register(
            "actorgate_agent_connect_status",
            "The PEP's answers to the agent's CONNECTs by status",
            m.statuses.clone(),
        );
        registry.register(
            "actorgate_agent_pep_connections",
            "Open TLS connections to the PEP (per-connection: one per tunnel; pooled: shared h2 connections)",
            m.pep_connections.clone(),
        );
        registry.register(
            "actorgate_agent_bytes",
            "Bytes carried; up = actor to destination, down = destination to actor",
            m.bytes.clone(),
        );
        m
    }

    /// Counts one open connection to the PEP until the returned guard is dropped.
    pub fn pep_connection(&self) -> PepConnection {
        self.pep_connections.inc();
        PepConnection(self.pep_connections.clone())
    }

    /// Open connections to the PEP now.
    pub fn pep_connections(&self) -> i64 {
        self.pep_connections.get()
    }

    /// Counts an accepted connection.
    pub fn captured(&self) {
        self.captured.inc();
    }

    /// Connections accepted so far.
    pub fn captured_count(&self) -> u64 {
        self.captured.get()
    }

    /// Counts a tunnel's result (`mode`: `per-connection`).
    pub fn tunnel(&self, mode: &'static str, result: TunnelResult) {
        self.tunnels
            .get_or_create(&ResultLabels {
                mode,
                result: result.as_str(),
            })
            .inc();
    }

    /// Tunnels counted with this result so far.
    pub fn tunnels(&self, mode: &'static str, result: TunnelResult) -> u64 {
        self.tunnels
            .get_or_create(&ResultLabels {
                mode,
                result: result.as_str(),
            })
            .get()
    }

    /// Counts the PEP's answer to a CONNECT.
    pub fn connect_status(&self, status: u16) {
        let status = match status {
            200..=299 => "2xx",
            403 => "403",
            503 => "503",
            _ => "other",
        };
        self.statuses.get_or_create(&StatusLabels { status }).inc();
    }

    /// Adds bytes carried.
    pub fn bytes(&self, up: u64, down: u64) {
        crate::metrics::count_bytes(&self.bytes, up, down);
    }
}
