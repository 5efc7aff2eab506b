//! The tunnel agent (`agent`, DESIGN §7.5): capture listeners whose connections (redirected by
//! the capture rules, `actorgate agent install-rules`) are carried to the PEP, one
//! `per-connection` tunnel each, with the actor certificate (watched for renewal).

use std::sync::Arc;

use anyhow::{Context, Result};
use egress_pep::agent::metrics::TunnelResult;
use egress_pep::agent::per_connection::PerConnection;
use egress_pep::forward::SpliceLimits;
use identity::tls::{ClientTlsFiles, ReloadableClientConfig, ServerIdentity};

use super::Wiring;
use crate::config::Loaded;

/// Starts the capture listeners when `agent` is configured.
pub async fn start(w: &mut Wiring, loaded: &Loaded) -> Result<()> {
    let Some(s) = &loaded.agent else {
        return Ok(());
    };
    let tls = ReloadableClientConfig::client(ClientTlsFiles {
        ca_file: s.ca_file.clone(),
        cert_file: Some(s.cert_file.clone()),
        key_file: Some(s.key_file.clone()),
        server_identity: ServerIdentity::Hostname,
        // As upstream atunnel: no ALPN, one HTTP/1.1 CONNECT per TLS connection.
        alpn: Vec::new(),
    })
    .context("agent.pep")?;
    match tls.watch() {
        Ok(handle) => w.keep(handle),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the agent's certificate files; renewal needs a restart")
        }
    }
    let mut tunnels = PerConnection::new(s.pep, &s.server_name, tls, s.connect_timeout)
        .context("agent.pep.server_name")?;
    if let Some(mark) = s.mark {
        tunnels = tunnels.with_mark(mark);
    }
    let tunnels = Arc::new(tunnels);
    let limits = SpliceLimits::with_idle(s.idle_timeout);
    let metrics = egress_pep::agent::metrics::AgentMetrics::new(&mut w.registry);
    for (i, addr) in s.listen.iter().enumerate() {
        let field = format!("agent.listen[{i}]");
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("{field}: cannot listen on {addr}"))?;
        let bound = listener
            .local_addr()
            .with_context(|| format!("{field}: no local address"))?;
        let name = if i == 0 {
            "agent".to_owned()
        } else {
            format!("agent_{i}")
        };
        tracing::info!(listener = %name, address = %bound, "listening");
        w.addresses.insert(name, bound);
        tokio::spawn(egress_pep::agent::capture::serve(
            listener,
            tunnels.clone(),
            limits,
            metrics.clone(),
            w.drain.signal(),
        ));
    }
    let (pep, name, listen) = (s.pep, s.server_name.clone(), s.listen.clone());
    w.health.register_section("agent", move || {
        serde_json::json!({
            "mode": "per-connection",
            "pep": pep.to_string(),
            "server_name": name,
            "listen": listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "captured": metrics.captured_count(),
            "tunnels": {
                "opened": metrics.tunnels("per-connection", TunnelResult::Opened),
                "refused": metrics.tunnels("per-connection", TunnelResult::Refused),
                "failed": metrics.tunnels("per-connection", TunnelResult::Failed),
                "not_captured": metrics.tunnels("per-connection", TunnelResult::NotCaptured),
            },
        })
    })?;
    tracing::info!(pep = %s.pep, mode = "per-connection", "tunnel agent capturing");
    Ok(())
}
