//! The ingress component over the resolver: the HTTP and HTTPS proxy listeners
//! (`ingress.http`, `ingress.https`), the ResolveRoute gRPC API (`grpc.resolve_route`) and the
//! ingress ExtProc handler (`grpc.extproc`). Proxy connections, HTTP/2 streams and WebSocket
//! tunnels hold the drain; the proxy sees each client's verified certificate identity, and
//! `ingress.https.trusted_peers` may send `ate-source-actor`.

use std::sync::Arc;

use anyhow::{Context, Result};
use ingress::extproc::{INGRESS_DIRECTION, IngressExtProc};
use ingress::router_api::RouterService;
use ingress::{IngressMetrics, Proxy};
use routing_core::Resolver;

use super::Wiring;
use crate::config::Loaded;

/// Starts what of ingress the config turns on.
pub async fn start(w: &mut Wiring, loaded: &Loaded, resolver: &Resolver) -> Result<()> {
    let g = &loaded.config.grpc;
    if g.resolve_route {
        w.grpc.add(
            RouterService::new(resolver.clone())
                .with_trusted_peers(Arc::new(loaded.grpc_trusted_peers.clone()))
                .into_server(),
        );
    }
    if g.extproc {
        let handler = IngressExtProc::new(resolver.clone())
            .with_source_trust(loaded.extproc_source_trust.clone());
        w.extproc.add(INGRESS_DIRECTION, move |inbound, opened| {
            handler.process(inbound, opened)
        });
    }
    let Some(i) = &loaded.ingress else {
        return Ok(());
    };
    let metrics = IngressMetrics::register(&mut w.registry);
    let http = w
        .bind("ingress_http", "ingress.http.listen", i.http_listen)
        .await?;
    let https = match &i.https {
        Some((addr, _)) => Some(
            w.bind("ingress_https", "ingress.https.listen", *addr)
                .await?,
        ),
        None => None,
    };
    let worker_tls = match &i.worker_tls {
        None => None,
        Some(files) => {
            let tls = identity::tls::ReloadableClientConfig::client(files.clone())
                .context("ingress.upstream.tls")?;
            match tls.watch() {
                Ok(handle) => w.keep(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the worker TLS files; rotation needs a restart")
                }
            }
            Some(tls)
        }
    };
    let proxy = Proxy::new(
        resolver.clone(),
        i.proxy.clone(),
        metrics.clone(),
        worker_tls,
        w.drain.signal(),
    );
    let limits = i.limits.clone();
    // Nobody on the plaintext listener can prove an identity.
    let mut listeners = vec![(
        "http",
        http.with_limits(limits.listener_limits()),
        Arc::new(ingress::TrustedPeers::default()),
    )];
    if let (Some(listener), Some((_, files))) = (https, &i.https) {
        let tls = identity::tls::ReloadableServerConfig::server(files.clone())
            .context("ingress.https.tls")?;
        match tls.watch() {
            Ok(handle) => w.keep(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the ingress TLS files; rotation needs a restart")
            }
        }
        listeners.push((
            "https",
            listener.with_tls(tls).with_limits(limits.listener_limits()),
            Arc::new(i.trusted_peers.clone()),
        ));
        if !i.trusted_peers.is_empty() {
            tracing::info!(
                trusted_peers = i.trusted_peers.len(),
                "ingress.https: trusted peers may send ate-source-actor"
            );
        }
    }
    for (name, listener, trusted) in listeners {
        let (proxy, limits, metrics) = (proxy.clone(), limits.clone(), metrics.clone());
        let drain = w.drain.signal();
        tokio::spawn(async move {
            ingress::serve(listener, proxy, &limits, name, trusted, &metrics, drain).await
        });
    }
    Ok(())
}
