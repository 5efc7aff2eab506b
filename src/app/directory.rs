//! The actor directory (static file or ate-api-server) and the resolver over it, for the
//! components that route to actors. Registers the `directory` readiness check (the debounced
//! result of a probe loop), the `directory` and `resolver` `/statusz` sections, the resolver's
//! metrics and `actorgate_directory_up`, and — when `grpc.control_plane_simulator` is on — the
//! `ateapi.Control` simulator over the static directory (answering `GetActorEgressPolicy` from
//! the egress policy files when the egress PEP uses them).
//!
//! Without a `directory` in the config nothing of this runs: no resolver, no readiness check
//! (config validation refuses the components that would need one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use prometheus_client::metrics::gauge::Gauge;
use routing_core::directory::ateapi::AteApiDirectory;
use routing_core::directory::control_service::{ControlService, EgressPolicyProvider};
use routing_core::directory::static_dir::StaticDirectory;
use routing_core::{ActorDirectory, Resolver, ResolverMetrics};
use runtime::ProbeHysteresis;
use serde::Serialize;

use super::Wiring;
use crate::config::{DirectorySettings, Loaded, ReadinessConfig};

/// The name of the readiness check and of the `/statusz` section.
pub const CHECK: &str = "directory";
/// Why the `directory` check fails (`/readyz` answers `directory unreachable`); the probe's
/// own error is in the `directory` section of `/statusz`.
const UNREACHABLE: &str = "unreachable";

/// What the directory component gives the components that route to actors.
pub struct Directory {
    /// The resolver over the directory.
    pub resolver: Resolver,
    /// The directory's kind (`static`, `ateapi`), for the start-up line.
    pub kind: &'static str,
    /// The directory itself (the egress PEP's actor liveness checks).
    pub directory: Arc<dyn ActorDirectory>,
    /// The ate-api-server client, when the directory is `ateapi` (the egress PEP's
    /// `GetActorEgressPolicy` source shares its connection).
    pub ateapi: Option<Arc<AteApiDirectory>>,
}

/// Result of the latest directory health probe.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirectoryHealth {
    /// Whether the latest probe succeeded (readiness follows [`ProbeHysteresis`], not this).
    pub healthy: bool,
    /// When the latest probe ended.
    pub checked_at: Option<SystemTime>,
    /// Why the last probe failed (not client-facing; operators only).
    pub error: Option<String>,
    /// Failed probes in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Successful probes in a row (0 after a failure).
    pub consecutive_successes: u32,
}

/// What the probe loop shares with the readiness check and the status section.
#[derive(Default)]
struct ProbeState {
    /// The debounced readiness.
    ready: AtomicBool,
    latest: Mutex<DirectoryHealth>,
}

impl ProbeState {
    fn latest(&self) -> DirectoryHealth {
        self.latest
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// Builds the directory and resolver from `loaded.directory` (taken), when there is one.
/// Without one, only the `/statusz` section `directory` (`{"kind": "none"}`) is registered: no
/// readiness check, nothing to wait for. `egress_policies` answers the simulator's
/// `GetActorEgressPolicy` (NOT_FOUND for every actor without it).
pub fn start(
    w: &mut Wiring,
    loaded: &mut Loaded,
    egress_policies: Option<Arc<dyn EgressPolicyProvider>>,
) -> Result<Option<Directory>> {
    let Some(settings) = loaded.directory.take() else {
        w.health
            .register_section(CHECK, || serde_json::json!({"kind": "none"}))?;
        return Ok(None);
    };
    let (directory, static_directory, ateapi): (
        Arc<dyn ActorDirectory>,
        Option<StaticDirectory>,
        Option<Arc<AteApiDirectory>>,
    ) = match settings {
        DirectorySettings::Static {
            loader,
            watch,
            initial,
        } => {
            tracing::info!(actors = initial.len(), source = %watch.display(), "static directory loaded");
            let d = StaticDirectory::new(loader)
                .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace('\n', "; ")))?;
            match d.watch(&watch) {
                Ok(handle) => w.keep(handle),
                Err(e) => {
                    tracing::warn!(error = %e, file = %watch.display(), "cannot watch the static directory; edits need a restart")
                }
            }
            (Arc::new(d.clone()), Some(d), None)
        }
        DirectorySettings::AteApi {
            settings: s,
            worker_address_family,
        } => {
            tracing::info!(address = %s.address, tls = ?s.tls, ?worker_address_family, "using ate-api-server");
            let d = Arc::new(
                AteApiDirectory::new(&s)
                    .context("directory.ateapi")?
                    .with_worker_address_family(worker_address_family),
            );
            (d.clone(), None, Some(d))
        }
    };
    let kind = directory.kind();
    let resolver = Resolver::new(
        directory.clone(),
        loaded.resolver.clone(),
        loaded.extractor.clone(),
        ResolverMetrics::register(&mut w.registry),
    );
    let up = Gauge::<i64>::default();
    w.registry.register(
        "actorgate_directory_up",
        "1 when the actor directory answered its last health probe",
        up.clone(),
    );

    let probe = Arc::new(ProbeState::default());
    let p = probe.clone();
    w.health.register_check(CHECK, move || {
        if p.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(UNREACHABLE.to_owned())
        }
    })?;
    let (p, d, s) = (probe.clone(), directory.clone(), static_directory.clone());
    w.health.register_section(CHECK, move || {
        serde_json::json!({
            "kind": kind,
            // ateapi only: whether the control plane ever answered and the latest reason a
            // connection failed (refused, unknown CA, DNS, …).
            "connection": d.connection(),
            "health": p.latest(),
            "static": s.as_ref().map(|d| d.status()),
        })
    })?;
    let r = resolver.clone();
    w.health
        .register_section("resolver", move || serde_json::json!(r.status()))?;
    w.background(probe_directory(
        directory.clone(),
        probe,
        up,
        loaded.config.admin.readiness.clone(),
    ));

    if loaded.config.grpc.control_plane_simulator
        && let Some(d) = static_directory
    {
        let mut control = ControlService::new(d);
        if let Some(p) = egress_policies {
            control = control.with_egress_policy(p);
        }
        if let Some(signer) = &loaded.signer {
            control = control.with_actor_tokens(signer.clone());
        }
        w.grpc.add(control.into_server());
    }
    Ok(Some(Directory {
        resolver,
        kind,
        directory,
        ateapi,
    }))
}

/// Probes the directory now and every `readiness.interval`, feeding the gauge (the latest
/// probe) and the readiness check (debounced by [`ProbeHysteresis`]: one slow or failed probe
/// does not flip it; `failure_threshold` failures in a row do, and `success_threshold`
/// successes in a row undo).
async fn probe_directory(
    directory: Arc<dyn ActorDirectory>,
    state: Arc<ProbeState>,
    up: Gauge<i64>,
    readiness: ReadinessConfig,
) {
    let mut gate = ProbeHysteresis::new(readiness.failure_threshold, readiness.success_threshold);
    let mut tick = tokio::time::interval(readiness.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match tokio::time::timeout(readiness.timeout, directory.health()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(readiness.timeout)
            )),
        };
        let healthy = result.is_ok();
        up.set(i64::from(healthy));
        let changed = gate.record(healthy);
        state.ready.store(gate.ready(), Ordering::Release);
        match (&result, changed) {
            (Err(e), Some(false)) => tracing::warn!(
                error = %e,
                failures = gate.consecutive_failures(),
                "actor directory is unreachable; not ready"
            ),
            (Err(e), None) if gate.ready() => tracing::info!(
                error = %e,
                failures = gate.consecutive_failures(),
                threshold = readiness.failure_threshold,
                "actor directory probe failed; still ready"
            ),
            (Ok(()), Some(true)) => tracing::info!("actor directory is reachable; ready"),
            _ => {}
        }
        let latest = DirectoryHealth {
            healthy,
            checked_at: Some(SystemTime::now()),
            error: result.err(),
            consecutive_failures: gate.consecutive_failures(),
            consecutive_successes: gate.consecutive_successes(),
        };
        match state.latest.lock() {
            Ok(mut h) => *h = latest,
            Err(p) => *p.into_inner() = latest,
        }
    }
}
