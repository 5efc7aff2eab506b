//! The tunnel agent (`agent`, DESIGN §7.5): capture listeners whose connections (redirected by
//! the capture rules, `actorgate agent install-rules`) are carried to the PEP, one
//! tunnel each (`per-connection`, as upstream atunnel) or CONNECT streams over shared h2
//! connections (`pooled`), with the actor certificate (watched for renewal).

use std::sync::Arc;

use anyhow::{Context, Result};
use egress_pep::agent::config::AgentAssertionSettings;
use egress_pep::agent::metrics::TunnelResult;
use egress_pep::agent::per_connection::{Assertions, PepEndpoint, PerConnection};
use egress_pep::agent::pooled::Pooled;
use egress_pep::agent::tunnels::Tunnels;
use egress_pep::forward::SpliceLimits;
use identity::assertion::AssertionMinter;
use identity::tls::{ClientTlsFiles, ReloadableClientConfig, ServerIdentity};

use runtime::reload::{DEFAULT_DEBOUNCE, Reloader};

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
        // per-connection, as upstream atunnel: no ALPN, one HTTP/1.1 CONNECT per connection;
        // pooled: h2.
        alpn: if s.pooled.is_some() {
            vec![b"h2".to_vec()]
        } else {
            Vec::new()
        },
    })
    .context("agent.pep")?;
    match tls.watch() {
        Ok(handle) => w.keep(handle),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the agent's certificate files; renewal needs a restart")
        }
    }
    let assertions = match &s.assertion {
        None => None,
        Some(a) => Some(assertions(w, a)?),
    };
    let metrics = egress_pep::agent::metrics::AgentMetrics::new(&mut w.registry);
    let pep = PepEndpoint::new(s.pep, &s.server_name, tls, s.connect_timeout)
        .context("agent.pep.server_name")?
        .with_mark(s.mark)
        .with_assertions(assertions);
    let tunnels = match s.pooled {
        None => Tunnels::PerConnection(PerConnection::new(pep)),
        Some(streams) => Tunnels::Pooled(Pooled::new(pep, streams).with_metrics(metrics.clone())),
    };
    let mode = tunnels.mode();
    let tunnels = Arc::new(tunnels);
    let limits = SpliceLimits::with_idle(s.idle_timeout);
    for (i, addr) in s.listen.iter().enumerate() {
        let name = if i == 0 {
            "agent".to_owned()
        } else {
            format!("agent_{i}")
        };
        let listener = w
            .bind_tcp(name, &format!("agent.listen[{i}]"), *addr)
            .await?;
        tokio::spawn(egress_pep::agent::capture::serve(
            listener,
            tunnels.clone(),
            limits,
            metrics.clone(),
            w.drain.signal(),
        ));
    }
    if let Some(addr) = s.proxy_listen {
        let listener = w
            .bind_tcp("agent_proxy", "agent.proxy_listen", addr)
            .await?;
        let settings = egress_pep::resolve::ResolverSettings {
            name_servers: s.proxy_name_servers.clone(),
            ..Default::default()
        };
        let resolver =
            egress_pep::resolve::PepResolver::new(&settings).context("agent.proxy_name_servers")?;
        tokio::spawn(egress_pep::agent::explicit_proxy::serve(
            listener,
            tunnels.clone(),
            Arc::new(egress_pep::agent::explicit_proxy::ProxyResolver::new(
                resolver,
            )),
            limits,
            metrics.clone(),
            w.drain.signal(),
        ));
    }
    let (pep, name, listen) = (s.pep, s.server_name.clone(), s.listen.clone());
    let status_tunnels = tunnels.clone();
    w.health.register_section("agent", move || {
        let pep_connections = match &*status_tunnels {
            Tunnels::Pooled(p) => p.connections(),
            Tunnels::PerConnection(_) => usize::try_from(metrics.pep_connections()).unwrap_or(0),
        };
        serde_json::json!({
            "mode": mode,
            "pep_connections": pep_connections,
            "pep": pep.to_string(),
            "server_name": name,
            "listen": listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "captured": metrics.captured_count(),
            "tunnels": {
                "opened": metrics.tunnels(mode, TunnelResult::Opened),
                "refused": metrics.tunnels(mode, TunnelResult::Refused),
                "failed": metrics.tunnels(mode, TunnelResult::Failed),
                "not_captured": metrics.tunnels(mode, TunnelResult::NotCaptured),
                "client_gone": metrics.tunnels(mode, TunnelResult::ClientGone),
            },
        })
    })?;
    tracing::info!(pep = %s.pep, mode, "tunnel agent capturing");
    Ok(())
}

/// The egress assertions of a shared agent (`agent.assertion`), minted with the signing key
/// from its file; the file is watched, so a rotated key signs the next tunnels' assertions
/// without a restart (a bad new key keeps the previous one and is logged).
fn assertions(w: &mut Wiring, a: &AgentAssertionSettings) -> Result<Arc<Assertions>> {
    let alg = identity::keys::parse_algorithm(&a.alg).context("agent.assertion.alg")?;
    let (file, kid, issuer, audience, lifetime) = (
        a.signing_key_file.clone(),
        a.kid.clone(),
        a.issuer.clone(),
        a.audience.clone(),
        a.lifetime,
    );
    let load = move || -> Result<AssertionMinter> {
        let pem = std::fs::read(&file)
            .with_context(|| format!("agent.assertion.signing_key_file {}", file.display()))?;
        let signer = identity::Signer::from_pem(alg, &kid, &pem, &issuer)
            .with_context(|| format!("agent.assertion.signing_key_file {}", file.display()))?;
        Ok(AssertionMinter::new(signer, &audience, lifetime))
    };
    let assertions = Arc::new(Assertions::new(load()?, a.actor.clone()));
    let installed = assertions.clone();
    let reloader = Reloader::new(
        "agent signing key",
        [a.signing_key_file.clone()],
        move || load().map_err(|e| format!("{e:#}")),
        move |minter| installed.replace_minter(minter),
    );
    match reloader.watch(DEFAULT_DEBOUNCE) {
        Ok(handle) => w.keep(handle),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the agent's signing key; rotation needs a restart")
        }
    }
    Ok(assertions)
}
