//! The running gateway: each component wires itself onto the shared runtime in a module of its
//! own, and [`App::start`] calls them in order. Adding a component (e.g. `egress`) is one new
//! module here.
//!
//! Every component does the same four things with the [`Wiring`] it is given:
//! * binds its listeners ([`Wiring::bind`]: a runtime [`BoundListener`], port 0 capable, logged
//!   as one `listening` line with `listener` and `address` fields);
//! * registers its readiness checks and `/statusz` sections in the one [`Health`] registry and
//!   its metrics in the one Prometheus registry;
//! * registers its gRPC services ([`grpc::GrpcServices`]) or ExtProc direction handler
//!   ([`extproc::Directions`]);
//! * spawns its work under the one [`Drain`]: every connection, HTTP/2 stream, upgraded
//!   connection and gRPC stream holds it, so a shutdown waits for all of them.
//!
//! | module | component | listener |
//! |---|---|---|
//! | [`directory`] | actor directory, resolver, readiness probe, `ateapi.Control` simulator | — |
//! | [`ingress`] | HTTP(S) proxy, ResolveRoute, the ingress ExtProc handler | `ingress_http`, `ingress_https` |
//! | [`resolve`] | the HTTP resolve endpoint for `auth_request` proxies | `ingress_resolve` |
//! | [`extproc`] | the ExtProc dispatcher over the direction handlers | — |
//! | [`grpc`] | the gRPC server and its health service | `grpc` |
//! | [`echo`] | the embedded echo worker | `echo_worker` |
//! | [`egress`] | the egress PEP (tunnels, policy, guard, audit) | `egress` |
//! | [`admin`] | `/healthz`, `/readyz`, `/metrics`, `/statusz` | `admin` |
//!
//! Shutdown ([`RunningApp::shutdown`]): readiness turns 503 and every gRPC health service
//! NOT_SERVING at once; after `shutdown.drain_delay` the listeners stop accepting and open work
//! drains; what is still open at `shutdown.drain_timeout` is closed and counted
//! (`actorgate_drain_forced_total`). [`run`] adds the signals: SIGTERM/SIGINT starts that
//! sequence, a second signal exits 1 at once.

pub mod admin;
pub mod agent;
pub mod directory;
pub mod echo;
pub mod egress;
pub mod extproc;
pub mod grpc;
pub mod ingress;
pub mod resolve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use runtime::{BoundListener, Drain, DrainReport, Health};
use tokio::task::JoinHandle;

use crate::config::{Loaded, ShutdownConfig};

/// What the components register with while the app starts.
pub struct Wiring {
    /// Readiness checks and `/statusz` sections.
    pub health: Health,
    /// The process's drain: every connection and stream holds it.
    pub drain: Drain,
    /// Prometheus metrics (handed to the admin server once every component has registered).
    pub registry: Registry,
    /// Listener name → bound address.
    pub addresses: BTreeMap<String, SocketAddr>,
    /// gRPC services to serve on the gRPC listener.
    pub grpc: grpc::GrpcServices,
    /// ExtProc direction handlers for the dispatcher.
    pub extproc: extproc::Directions,
    /// Values kept alive while the app runs (file watches).
    keep: Vec<Box<dyn std::any::Any + Send>>,
    /// Background tasks that hold nothing open (probes): stopped at shutdown.
    background: Vec<JoinHandle<()>>,
}

impl Wiring {
    fn new() -> Self {
        let drain = Drain::new();
        let mut registry = Registry::default();
        registry.register(
            "actorgate_build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        drain.register_metrics(registry.sub_registry_with_prefix("actorgate"));
        Self {
            health: Health::new(),
            drain,
            registry,
            addresses: BTreeMap::new(),
            grpc: grpc::GrpcServices::default(),
            extproc: extproc::Directions::default(),
            keep: Vec::new(),
            background: Vec::new(),
        }
    }

    /// Binds `addr`, the config field `field`, for the listener named `listener`, and logs the
    /// address it got as one `listening` line with `listener` and `address` fields, right after
    /// binding: with port 0 in the config, that line is how operators and tests learn the port.
    pub async fn bind(
        &mut self,
        listener: &'static str,
        field: &str,
        addr: SocketAddr,
    ) -> Result<BoundListener> {
        let bound = BoundListener::bind(field, addr).await?;
        let address = bound.local_addr();
        tracing::info!(listener, address = %address, "listening");
        self.addresses.insert(listener.to_owned(), address);
        Ok(bound)
    }

    /// Binds a plain tokio listener (for servers that need the socket itself, e.g. the tunnel
    /// agent's capture listeners read `SO_ORIGINAL_DST`), logged and recorded as [`Wiring::bind`]
    /// does; errors name `field`.
    pub async fn bind_tcp(
        &mut self,
        listener: impl Into<String>,
        field: &str,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpListener> {
        let bound = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("{field}: cannot listen on {addr}"))?;
        let address = bound
            .local_addr()
            .with_context(|| format!("{field}: no local address"))?;
        let listener = listener.into();
        tracing::info!(listener = %listener, address = %address, "listening");
        self.addresses.insert(listener, address);
        Ok(bound)
    }

    /// Keeps `value` (e.g. a file watch) alive as long as the app runs.
    pub fn keep(&mut self, value: impl std::any::Any + Send) {
        self.keep.push(Box::new(value));
    }

    /// Runs `task` until the app shuts down (for work that holds nothing open, e.g. a probe).
    pub fn background(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.background.push(tokio::spawn(task));
    }
}

/// Starts the gateway's components.
#[derive(Debug)]
pub struct App;

impl App {
    /// Starts every component `loaded` turns on: binds their listeners, registers their checks,
    /// sections and metrics, and serves. Returns once everything is bound and serving. On an
    /// error (a port in use, unusable TLS files) what had started is drained at once.
    pub async fn start(loaded: Loaded) -> Result<RunningApp> {
        let mut w = Wiring::new();
        let shutdown = loaded.config.shutdown.clone();
        match start_components(&mut w, loaded).await {
            Ok(grpc_health) => Ok(RunningApp {
                addresses: w.addresses,
                health: w.health,
                drain: w.drain,
                grpc_health,
                shutdown,
                _keep: w.keep,
                background: w.background,
            }),
            Err(e) => {
                w.drain.start();
                for t in &w.background {
                    t.abort();
                }
                Err(e)
            }
        }
    }
}

/// Starts the components in order; returns the gRPC health service's handle, when it runs.
async fn start_components(w: &mut Wiring, mut loaded: Loaded) -> Result<Option<grpc::GrpcHealth>> {
    let started = Instant::now();
    // The egress policy files first: the simulator answers GetActorEgressPolicy from them.
    let egress_files = egress::load_files(&loaded)?;
    let simulator_policies = egress_files
        .as_ref()
        .filter(|_| loaded.config.grpc.control_plane_simulator)
        .map(egress::EgressFiles::provider);
    let directory = directory::start(w, &mut loaded, simulator_policies)?;
    if let Some(d) = &directory {
        ingress::start(w, &loaded, &d.resolver).await?;
        resolve::start(w, &loaded, &d.resolver).await?;
    }
    extproc::start(w, &loaded);
    let grpc_health = grpc::start(w, &loaded).await?;
    echo::start(w, &loaded).await?;
    let admin_listener = admin::bind(w, &loaded, started).await?;
    // After admin and gRPC are bound: the PEP guards their addresses.
    egress::start(w, &loaded, directory.as_ref(), egress_files).await?;
    agent::start(w, &loaded).await?;
    register_summary(w, &loaded)?;
    admin::serve(w, admin_listener);
    // Plain addresses (`admin=127.0.0.1:9090`); a listener that is off is left out.
    let addr = |name: &str| w.addresses.get(name).copied().map(tracing::field::display);
    tracing::info!(
        admin = addr("admin"),
        grpc = addr("grpc"),
        http = addr("ingress_http"),
        https = addr("ingress_https"),
        resolve = addr("ingress_resolve"),
        egress = addr("egress"),
        directory = directory.as_ref().map_or("none", |d| d.kind),
        "actorgate started"
    );
    Ok(grpc_health)
}

/// The `/statusz` sections of the app as a whole: the listeners (every bound address by name)
/// and the effective settings. The config summary keeps its `*_listen` keys (`null` when off)
/// for whoever reads them.
fn register_summary(w: &mut Wiring, loaded: &Loaded) -> Result<()> {
    let listeners = w.addresses.clone();
    let listen = |name: &str| listeners.get(name).map(|a| a.to_string());
    let c = &loaded.config;
    let config = serde_json::json!({
        "admin_listen": listen("admin"),
        "grpc_listen": listen("grpc"),
        "ingress_http_listen": listen("ingress_http"),
        "ingress_https_listen": listen("ingress_https"),
        "egress_listen": listen("egress"),
        "ingress_upstream": c.ingress.upstream,
        "grpc_tls": loaded.grpc_tls.as_ref().map(|t| format!("{:?}", t.client_auth)),
        "control_plane_simulator": c.grpc.control_plane_simulator,
        "routing": c.routing,
        "readiness": c.admin.readiness,
        "resolver": loaded.resolver,
        "shutdown": c.shutdown,
    });
    w.health
        .register_section("listeners", move || serde_json::json!(listeners))?;
    w.health
        .register_section("config", move || config.clone())?;
    Ok(())
}

/// The started gateway.
pub struct RunningApp {
    addresses: BTreeMap<String, SocketAddr>,
    health: Health,
    drain: Drain,
    grpc_health: Option<grpc::GrpcHealth>,
    shutdown: ShutdownConfig,
    _keep: Vec<Box<dyn std::any::Any + Send>>,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningApp")
            .field("addresses", &self.addresses)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl RunningApp {
    /// Every listener's bound address by listener name (`admin`, `grpc`, `ingress_http`,
    /// `ingress_https`, `ingress_resolve`, `echo_worker`, `egress`): the ports the system chose
    /// for port 0.
    pub fn addresses(&self) -> &BTreeMap<String, SocketAddr> {
        &self.addresses
    }

    /// The bound address of the listener `name`, if it runs.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addresses.get(name).copied()
    }

    /// The readiness checks and status sections the components registered.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The process's drain (e.g. for [`Drain::forced_total`]).
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The first step of a shutdown, at once: readiness turns 503 and the gRPC health service
    /// reports every service (and the server, `""`) NOT_SERVING, so load balancers and Envoy
    /// health checks move traffic away. Serving goes on.
    pub async fn begin_shutdown(&self) {
        self.health.set_draining();
        if let Some(g) = &self.grpc_health {
            g.not_serving().await;
        }
    }

    /// Shuts down: [`RunningApp::begin_shutdown`], then after `shutdown.drain_delay` the
    /// listeners stop accepting and open work drains for up to `shutdown.drain_timeout`; what
    /// is still open then is closed and counted (the report's `forced`, and
    /// `actorgate_drain_forced_total`).
    pub async fn shutdown(self) -> DrainReport {
        tracing::info!(drain_delay = ?self.shutdown.drain_delay, "shutdown requested: readiness is now 503");
        self.begin_shutdown().await;
        tokio::time::sleep(self.shutdown.drain_delay).await;
        let report = self.drain.shutdown(self.shutdown.drain_timeout).await;
        for t in &self.background {
            t.abort();
        }
        if report.forced == 0 {
            tracing::info!(finished = report.finished, elapsed = ?report.elapsed, "drained; exiting");
        } else {
            tracing::warn!(
                forced = report.forced,
                finished = report.finished,
                timeout = ?self.shutdown.drain_timeout,
                "drain timeout reached; exiting with requests still open"
            );
        }
        report
    }
}

/// `actorgate serve`: sets up logging, starts the app, and on SIGTERM or SIGINT shuts it down
/// ([`RunningApp::shutdown`]); a second signal exits 1 at once.
pub async fn run(loaded: Loaded) -> Result<()> {
    crate::telemetry::init(&loaded.config.logging);
    // Install signal handlers before anything listens, so an early SIGTERM drains too.
    let mut signals = Signals::install()?;
    let app = App::start(loaded).await?;
    signals.next().await;
    // A second signal skips the drain.
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("actorgate: second signal: exiting without waiting for the drain");
        std::process::exit(1);
    });
    app.shutdown().await;
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
