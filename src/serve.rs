//! `actorgate serve`: builds the directory and resolver, binds the listeners, runs the admin and
//! gRPC servers, and drains on SIGTERM/SIGINT (readiness flips to 503, listeners close after
//! `shutdown.drain_delay`, in-flight work gets `shutdown.drain_timeout`, then exit 0).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use routing_core::directory::ateapi::AteApiDirectory;
use routing_core::directory::control_service::ControlService;
use routing_core::directory::static_dir::StaticDirectory;
use routing_core::{ActorDirectory, Resolver, ResolverMetrics};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;

use crate::admin::{AdminState, DirectoryHealth, ProbeHysteresis};
use crate::config::{DirectorySettings, Loaded, ReadinessConfig};

async fn bind(addr: SocketAddr, field: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{field}: cannot listen on {addr}"))
}

/// Runs until a termination signal, then drains.
pub async fn run(loaded: Loaded) -> Result<()> {
    crate::telemetry::init(&loaded.config.logging);
    // Install signal handlers before anything listens, so an early SIGTERM drains too.
    let mut signals = Signals::install()?;
    let mut registry = Registry::default();
    registry.register(
        "actorgate_build",
        "Build information",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let directory_up = Gauge::<i64>::default();
    registry.register(
        "actorgate_directory_up",
        "1 when the actor directory answered its last health probe",
        directory_up.clone(),
    );
    let metrics = ResolverMetrics::register(&mut registry);
    let ingress_metrics = ingress::IngressMetrics::register(&mut registry);

    let mut _watch = None;
    let (directory, static_directory): (Arc<dyn ActorDirectory>, Option<StaticDirectory>) =
        match loaded.directory {
            DirectorySettings::Static {
                loader,
                watch,
                initial,
            } => {
                tracing::info!(actors = initial.len(), source = %watch.display(), "static directory loaded");
                let d = StaticDirectory::new(loader)
                    .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace('\n', "; ")))?;
                match d.watch(&watch) {
                    Ok(w) => _watch = Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, file = %watch.display(), "cannot watch the static directory; edits need a restart")
                    }
                }
                (Arc::new(d.clone()), Some(d))
            }
            DirectorySettings::AteApi {
                settings: s,
                worker_address_family,
            } => {
                tracing::info!(address = %s.address, tls = ?s.tls, ?worker_address_family, "using ate-api-server");
                let d = AteApiDirectory::new(&s)
                    .context("directory.ateapi")?
                    .with_worker_address_family(worker_address_family);
                (Arc::new(d), None)
            }
        };
    let directory_kind = directory.kind();
    let resolver = Resolver::new(
        directory.clone(),
        loaded.resolver.clone(),
        loaded.extractor.clone(),
        metrics,
    );

    // Bind everything before announcing readiness, so a port in use is one clear error.
    let admin_listener = bind(loaded.admin_listen, "admin.listen").await?;
    let admin_addr = admin_listener.local_addr()?;
    let grpc_listener = match loaded.grpc_listen {
        Some(addr) => Some(bind(addr, "grpc.listen").await?),
        None => None,
    };
    let grpc_addr = grpc_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(addr) = grpc_addr
        && !addr.ip().is_loopback()
        && loaded
            .grpc_tls
            .as_ref()
            .is_none_or(|t| t.client_auth != identity::tls::ClientAuth::Required)
    {
        tracing::warn!(
            %addr,
            "the gRPC listener accepts peers without a client certificate on a non-loopback \
             address: anyone who reaches it can resolve and resume any actor; set grpc.tls with \
             client_auth required, or restrict it with a NetworkPolicy"
        );
    }
    // Ingress listeners.
    let http_listener = match &loaded.ingress {
        Some(i) => Some(bind(i.http_listen, "ingress.http.listen").await?),
        None => None,
    };
    let mut _https_watch = None;
    let https_listener = match loaded.ingress.as_ref().and_then(|i| i.https.clone()) {
        Some((addr, files)) => {
            let listener = bind(addr, "ingress.https.listen").await?;
            let tls = identity::tls::ReloadableServerConfig::server(files)
                .context("ingress.https.tls")?;
            match tls.watch() {
                Ok(w) => _https_watch = Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the ingress TLS files; rotation needs a restart")
                }
            }
            Some((listener, tls))
        }
        None => None,
    };
    let echo_listener = match &loaded.echo_worker {
        Some((addr, name)) => Some((bind(*addr, "echo_worker.listen").await?, name.clone())),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let https_addr = https_listener
        .as_ref()
        .and_then(|(l, _)| l.local_addr().ok());
    // TLS material is loaded (and its files watched) before anything is served.
    let (grpc_tls, _grpc_tls_watch) = match loaded.grpc_tls.clone() {
        None => (None, None),
        Some(files) => {
            let tls = identity::tls::ReloadableServerConfig::server(files).context("grpc.tls")?;
            let watch = match tls.watch() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the gRPC TLS files; rotation needs a restart");
                    None
                }
            };
            (Some(tls), watch)
        }
    };

    let state = Arc::new(AdminState {
        started: Instant::now(),
        draining: AtomicBool::new(false),
        directory_ok: AtomicBool::new(false),
        directory_health: Mutex::new(DirectoryHealth {
            healthy: false,
            checked_at: None,
            error: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
        }),
        directory_kind,
        directory: directory.clone(),
        resolver: resolver.clone(),
        static_directory: static_directory.clone(),
        registry,
        summary: serde_json::json!({
            "admin_listen": admin_addr.to_string(),
            "grpc_listen": grpc_addr.map(|a| a.to_string()),
            "ingress_http_listen": http_addr.map(|a| a.to_string()),
            "ingress_https_listen": https_addr.map(|a| a.to_string()),
            "ingress_upstream": loaded.config.ingress.upstream,
            "grpc_tls": loaded.grpc_tls.as_ref().map(|t| format!("{:?}", t.client_auth)),
            "control_plane_simulator": loaded.config.grpc.control_plane_simulator,
            "routing": loaded.config.routing,
            "readiness": loaded.config.admin.readiness,
            "resolver": loaded.resolver,
            "shutdown": loaded.config.shutdown,
        }),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let health_task = tokio::spawn(probe_directory(
        directory.clone(),
        state.clone(),
        directory_up,
        loaded.config.admin.readiness.clone(),
    ));
    let admin_task = tokio::spawn(crate::admin::serve(
        admin_listener,
        state.clone(),
        stop_rx.clone(),
    ));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // The gRPC services being served, by their health-check names.
    let mut served: Vec<&'static str> = Vec::new();
    let grpc_task = match grpc_listener {
        Some(listener) => {
            let g = &loaded.config.grpc;
            let simulator = g
                .control_plane_simulator
                .then(|| {
                    static_directory
                        .clone()
                        .map(|d| ControlService::new(d).into_server())
                })
                .flatten();
            if simulator.is_some() {
                served.push(
                    <routing_core::proto::control_server::ControlServer<
                        ControlService<StaticDirectory>,
                    > as NamedService>::NAME,
                );
            }
            let extproc = g
                .extproc
                .then(|| ingress::extproc::ExtProcService::new(resolver.clone()).into_server());
            if extproc.is_some() {
                served.push(<envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer<ingress::extproc::ExtProcService> as NamedService>::NAME);
            }
            let router_api = g
                .resolve_route
                .then(|| ingress::router_api::RouterService::new(resolver.clone()).into_server());
            if router_api.is_some() {
                served.push(
                    <ingress::router_api::proto::router_server::RouterServer<
                        ingress::router_api::RouterService,
                    > as NamedService>::NAME,
                );
            }
            for name in &served {
                health_reporter
                    .set_service_status(*name, tonic_health::ServingStatus::Serving)
                    .await;
            }
            let reflection = if g.reflection {
                Some(
                    tonic_reflection::server::Builder::configure()
                        .register_encoded_file_descriptor_set(ingress::router_api::DESCRIPTOR_SET)
                        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                        .build_v1()
                        .context("gRPC reflection")?,
                )
            } else {
                None
            };
            let mut stop = stop_rx.clone();
            // Bounded: streams per connection (one per in-flight request from each Envoy worker),
            // header list size, and dead peers found by keepalive. Messages are capped at tonic's
            // 4 MiB decoding limit; an ExtProc stream must carry request_headers within 30 s.
            let router = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                .max_concurrent_streams(4096)
                .http2_max_header_list_size(64 * 1024)
                .add_service(health_service)
                .add_optional_service(simulator)
                .add_optional_service(extproc)
                .add_optional_service(router_api)
                .add_optional_service(reflection);
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Some(match &grpc_tls {
                None => {
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
                }
                Some(tls) => {
                    let incoming = crate::tls_incoming::incoming(listener, tls.clone());
                    tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
                }
            })
        }
        None => None,
    };
    let mut ingress_tasks = Vec::new();
    let mut _worker_tls_watch = None;
    if let Some(i) = &loaded.ingress {
        let worker_tls = match &i.worker_tls {
            None => None,
            Some(files) => {
                let tls = identity::tls::ReloadableClientConfig::client(files.clone())
                    .context("ingress.upstream.tls")?;
                match tls.watch() {
                    Ok(w) => _worker_tls_watch = Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the worker TLS files; rotation needs a restart")
                    }
                }
                Some(tls)
            }
        };
        let proxy = ingress::Proxy::new(
            resolver.clone(),
            i.proxy.clone(),
            ingress_metrics.clone(),
            worker_tls,
        );
        if let Some(l) = http_listener {
            ingress_tasks.push(tokio::spawn(ingress::serve(
                l,
                proxy.clone(),
                None,
                i.limits.clone(),
                "http",
                ingress_metrics.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some((l, tls)) = https_listener {
            ingress_tasks.push(tokio::spawn(ingress::serve(
                l,
                proxy,
                Some(tls),
                i.limits.clone(),
                "https",
                ingress_metrics.clone(),
                stop_rx.clone(),
            )));
        }
    }
    let echo_task = echo_listener.map(|(l, name)| {
        let mut stop = stop_rx.clone();
        tokio::spawn(ingress::echo::serve(l, name, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    tracing::info!(
        admin = %admin_addr,
        grpc = ?grpc_addr,
        http = ?http_addr,
        https = ?https_addr,
        directory = directory_kind,
        "actorgate started"
    );

    signals.next().await;
    tracing::info!(drain_delay = ?loaded.config.shutdown.drain_delay, "shutdown requested: readiness is now 503");
    // Every service we serve, and the server as a whole, reports NOT_SERVING while draining.
    for name in served.iter().copied().chain([""]) {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    state.draining.store(true, Ordering::Release);
    // A second signal skips the drain.
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("actorgate: second signal: exiting without waiting for the drain");
        std::process::exit(1);
    });
    tokio::time::sleep(loaded.config.shutdown.drain_delay).await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(loaded.config.shutdown.drain_timeout, async {
        for t in ingress_tasks {
            let _ = t.await;
        }
        if let Some(t) = echo_task {
            let _ = t.await;
        }
        let _ = admin_task.await;
        if let Some(t) = grpc_task {
            match t.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
                Ok(Ok(())) => {}
            }
        }
    })
    .await;
    health_task.abort();
    match drained {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!(
            timeout = ?loaded.config.shutdown.drain_timeout,
            "drain timeout reached; exiting with requests still open"
        ),
    }
    Ok(())
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Probes the directory now and every `readiness.interval`, feeding the gauge (the latest
/// probe) and `/readyz` (debounced by [`ProbeHysteresis`]: one slow or failed probe does not flip
/// it; `failure_threshold` failures in a row do, and `success_threshold` successes in a row undo).
async fn probe_directory(
    directory: Arc<dyn ActorDirectory>,
    state: Arc<AdminState>,
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
        up.set(healthy as i64);
        let changed = gate.record(healthy);
        state.directory_ok.store(gate.ready(), Ordering::Release);
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
        if let Ok(mut h) = state.directory_health.lock() {
            *h = DirectoryHealth {
                healthy,
                checked_at: Some(SystemTime::now()),
                error: result.err(),
                consecutive_failures: gate.consecutive_failures(),
                consecutive_successes: gate.consecutive_successes(),
            };
        }
    }
}
