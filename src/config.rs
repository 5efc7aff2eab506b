//! The configuration file: one YAML document, validated on load. Every problem is reported as
//! one line naming its field path (`directory.static.actors[2].endpoint: invalid socket address
//! "10.0.0.1"`). `deploy/local/actorgate.yaml` is the annotated example.
//!
//! Each component owns its section — serde types with defaults, validation, conversion into
//! its settings: `routing`, `resolver` and `directory` in [`routing_core::config`], `ingress` and
//! `echo_worker` in [`ingress::config`], TLS files in [`identity::config`], and the binary's own
//! `logging`, `admin`, `grpc` and `shutdown` in this module's children, `egress` in
//! [`egress_pep::config`]. This module reads the
//! file, composes the sections (prefixing their problems with the section's path) and checks
//! the rules that span sections: which components need a `directory`, agent mode's worker TLS,
//! the simulator's static directory, and listeners that would share a port.

mod admin;
mod grpc;
mod logging;
mod shutdown;

use std::net::SocketAddr;
use std::path::Path;

use egress_pep::config::{EgressConfig, EgressSettings, PolicySourceKind};
use identity::tls::ServerTlsFiles;
use ingress::config::{EchoWorkerConfig, IngressConfig, IngressSettings};
use routing_core::config::{
    DIRECTORY_SECTION, DirectoryConfig, ResolverConfig, RoutingConfig, WorkerMode,
};
use routing_core::field_error::{FieldError, FieldErrors};
use routing_core::{Extractor, ResolverSettings, WorkerTransport};
use runtime::config::{parse_yaml, read_file};
use serde::{Deserialize, Serialize};

pub use admin::{AdminConfig, ReadinessConfig};
pub use grpc::GrpcConfig;
pub use logging::{LogFormat, LoggingConfig};
pub use routing_core::config::DirectorySettings;
pub use shutdown::ShutdownConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log output.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The admin server.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The gRPC server.
    #[serde(default)]
    pub grpc: GrpcConfig,
    /// The ingress proxy and the HTTP resolve endpoint.
    #[serde(default)]
    pub ingress: IngressConfig,
    /// Run an embedded echo worker (the local demo's backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_worker: Option<EchoWorkerConfig>,
    /// How requests name actors and how workers are reached.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Resolver tuning.
    #[serde(default)]
    pub resolver: ResolverConfig,
    /// Where actors are looked up; required only by the components that route to actors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryConfig>,
    /// SIGTERM handling.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The egress PEP; off unless the file has an `egress` section.
    #[serde(default)]
    pub egress: EgressConfig,
    /// The tunnel agent (capture listeners, tunnels to the PEP); off without the section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<egress_pep::agent::config::AgentConfig>,
    /// The embedded actor-token signer (the simulator's `MintActorJWT`); off without the
    /// section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<identity::config::SignerConfig>,
}

/// A loaded config that passed validation, with everything derived from it.
pub struct Loaded {
    /// The config with defaults filled in (what `check-config` prints).
    pub config: Config,
    /// The admin server's address.
    pub admin_listen: SocketAddr,
    /// The gRPC server's address, when any gRPC service is on.
    pub grpc_listen: Option<SocketAddr>,
    /// TLS of the gRPC listener (paths resolved against the config's directory).
    pub grpc_tls: Option<ServerTlsFiles>,
    /// Callers of the gRPC listener trusted to name a source actor.
    pub grpc_trusted_peers: ingress::TrustedPeers,
    /// Which Envoy-reported downstream peers may name the source actor on the ExtProc path.
    pub extproc_source_trust: Option<std::sync::Arc<ingress::extproc::SourceTrust>>,
    /// The ingress proxy, when enabled.
    pub ingress: Option<IngressSettings>,
    /// The HTTP resolve endpoint's own listener (`ingress.resolve.listen`), when set.
    pub resolve_listen: Option<SocketAddr>,
    /// The embedded echo worker's address and name.
    pub echo_worker: Option<(SocketAddr, String)>,
    /// Request → actor extraction.
    pub extractor: Extractor,
    /// Resolver settings.
    pub resolver: ResolverSettings,
    /// The directory back-end; `None` when no component routes to actors.
    pub directory: Option<DirectorySettings>,
    /// The egress PEP, when enabled.
    pub egress: Option<EgressSettings>,
    /// The tunnel agent, when configured.
    pub agent: Option<egress_pep::agent::config::AgentSettings>,
    /// The embedded actor-token signer, its key loaded.
    pub signer: Option<std::sync::Arc<identity::Signer>>,
}

/// Why a config could not be loaded; displays as one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Every problem found, each with its field path.
    #[error("{0}")]
    Invalid(FieldErrors),
}

/// Reads and validates the config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = read_file(path)
        .map_err(|e| ConfigError::Invalid(FieldError::new("", e.to_string()).into()))?;
    let config = parse(&text).map_err(ConfigError::Invalid)?;
    validate(config, path).map_err(ConfigError::Invalid)
}

/// Which switches of the components that route to actors the file writes out (their values do
/// not matter here).
#[derive(Deserialize, Default)]
struct Written {
    #[serde(default)]
    ingress: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    grpc: Option<WrittenGrpc>,
    #[serde(default)]
    egress: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct WrittenGrpc {
    #[serde(default)]
    extproc: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    resolve_route: Option<serde::de::IgnoredAny>,
}

/// Parses the config file's text. Without a `directory`, the components that route to actors
/// are off unless the file asks for them: `ingress.enabled` is false when there is no `ingress`
/// section, `grpc.extproc` and `grpc.resolve_route` when they are not written out. (With a
/// directory their defaults are true.) `egress.enabled` is false when there is no `egress`
/// section. What the file does ask for is checked by [`validate`].
pub fn parse(text: &str) -> Result<Config, FieldErrors> {
    let mut config: Config = parse_yaml(text)?;
    let written: Written = parse_yaml(text)?;
    config.egress.enabled &= written.egress.is_some();
    if config.directory.is_none() {
        let grpc = written.grpc.unwrap_or_default();
        config.ingress.enabled &= written.ingress.is_some();
        config.grpc.extproc &= grpc.extproc.is_some();
        config.grpc.resolve_route &= grpc.resolve_route.is_some();
    }
    Ok(config)
}

/// Reports every pair of listeners that would bind the same address, once, on the later field,
/// naming the earlier one: the same `ip:port`, or the same port where one address is
/// unspecified (`0.0.0.0` / `[::]` takes the port on every address). Port 0 never collides: the
/// kernel gives each listener a port of its own.
/// Field paths of the first agent capture listeners, for collision messages (later ones share
/// the last name).
const AGENT_LISTEN_FIELDS: [&str; 4] = [
    "agent.listen[0]",
    "agent.listen[1]",
    "agent.listen[2]",
    "agent.listen[3]",
];

fn check_listener_collisions(errs: &mut FieldErrors, listeners: &[(&str, SocketAddr)]) {
    for (i, (field, addr)) in listeners.iter().enumerate() {
        let earlier = listeners[..i].iter().find(|(_, other)| {
            addr.port() != 0
                && addr.port() == other.port()
                && (addr.ip() == other.ip()
                    || addr.ip().is_unspecified()
                    || other.ip().is_unspecified())
        });
        match earlier {
            Some((other_field, other)) if other == addr => {
                errs.push(*field, format!("{addr} is also {other_field}"))
            }
            Some((other_field, other)) => {
                errs.push(*field, format!("{addr} overlaps {other_field} ({other})"))
            }
            None => {}
        }
    }
}

/// The components on in `config` that route requests to actors, by the field that turns each
/// on: they need a `directory`.
fn actor_routing_components(config: &Config) -> Vec<&'static str> {
    let (i, g) = (&config.ingress, &config.grpc);
    [
        (i.enabled, "ingress"),
        (i.resolve.is_some(), "ingress.resolve"),
        (g.extproc, "grpc.extproc"),
        (g.resolve_route, "grpc.resolve_route"),
        (g.control_plane_simulator, "grpc.control_plane_simulator"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

/// Validates a parsed config (see [`parse`]); `path` locates relative files.
pub fn validate(config: Config, path: &Path) -> Result<Loaded, FieldErrors> {
    let mut errs = FieldErrors::default();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

    errs.collect("logging", config.logging.validate());
    let admin_listen = errs.collect("admin", config.admin.listen_addr());
    let grpc_addr = errs.collect("grpc", config.grpc.listen_addr());

    let r = &config.routing;
    let extractor = errs.collect("routing", r.extractor());
    let worker_transport = errs.collect("routing", r.worker_transport());
    if r.worker_transport.mode == WorkerMode::Agent
        && config.ingress.enabled
        && config.ingress.upstream.tls.is_none()
    {
        errs.push(
            "routing.worker_transport.mode",
            "agent mode dials the worker agent over mTLS: set ingress.upstream.tls",
        );
    }
    let resolver = errs.collect(
        "resolver",
        config
            .resolver
            .settings(worker_transport.unwrap_or(WorkerTransport::Plain)),
    );
    errs.collect("shutdown", config.shutdown.validate());

    let directory = match &config.directory {
        Some(d) => errs.collect("", d.settings(path)),
        None => {
            let needs = actor_routing_components(&config);
            if !needs.is_empty() {
                errs.push(
                    DIRECTORY_SECTION,
                    format!(
                        "is required by {} ({} requests to actors): set static or ateapi, or \
                         turn {} off",
                        needs.join(", "),
                        if needs.len() == 1 {
                            "it routes"
                        } else {
                            "they route"
                        },
                        if needs.len() == 1 { "it" } else { "them" }
                    ),
                );
            }
            None
        }
    };
    let egress = config
        .egress
        .enabled
        .then(|| errs.collect("egress", config.egress.settings(&base)))
        .flatten();
    // The policy files themselves: every problem, so check-config catches a bad policy too.
    if let Some(egress_pep::config::PolicySourceSettings::Files(files)) =
        egress.as_ref().map(|e| &e.policy)
        && let Err(e) = egress_pep::policy::files::PolicySet::load(files)
    {
        for problem in e.0 {
            let i = files.iter().position(|f| *f == problem.file).unwrap_or(0);
            errs.push(format!("egress.policy.files[{i}]"), problem.to_string());
        }
    }
    if config.egress.enabled {
        match &config.directory {
            None => errs.push(
                DIRECTORY_SECTION,
                "is required by egress (the PEP checks that each tunnel's actor is running): \
                 set static or ateapi, or turn egress off",
            ),
            Some(d)
                if config.egress.policy.source == PolicySourceKind::Ateapi
                    && d.ateapi.is_none() =>
            {
                errs.push(
                    "egress.policy.source",
                    "ateapi asks GetActorEgressPolicy over directory.ateapi: set directory.ateapi, \
                     or use source: files",
                )
            }
            Some(_) => {}
        }
    }
    if config.grpc.control_plane_simulator
        && config
            .directory
            .as_ref()
            .is_some_and(|d| d.static_.is_none())
    {
        errs.push("grpc.control_plane_simulator", "requires directory.static");
    }
    let ingress = config
        .ingress
        .enabled
        .then(|| errs.collect("ingress", config.ingress.proxy_settings(&base)))
        .flatten();
    let resolve_listen = errs
        .collect("ingress", config.ingress.resolve_listen())
        .flatten();
    let echo_worker = config.echo_worker.as_ref().and_then(|e| {
        let addr = errs.collect("echo_worker", e.listen_addr())?;
        Some((addr, e.name.clone()))
    });
    let grpc_listen = grpc_addr.filter(|_| config.grpc.served());
    // The simulator mints actor tokens for whoever calls it: only on loopback or for callers
    // with a verified certificate.
    if config.signer.is_some()
        && config.grpc.control_plane_simulator
        && grpc_listen.is_some_and(|a| !a.ip().is_loopback())
        && config
            .grpc
            .tls
            .as_ref()
            .is_none_or(|t| t.client_auth != identity::tls::ClientAuth::Required)
    {
        errs.push(
            "signer",
            "the control-plane simulator would mint actor tokens for anyone who reaches \
             grpc.listen: put grpc.listen on a loopback address or set grpc.tls.client_auth \
             required",
        );
    }
    let mut listeners: Vec<(&str, SocketAddr)> = Vec::new();
    listeners.extend(admin_listen.map(|a| ("admin.listen", a)));
    listeners.extend(grpc_listen.map(|a| ("grpc.listen", a)));
    if let Some(i) = &ingress {
        listeners.push(("ingress.http.listen", i.http_listen));
        listeners.extend(i.https.as_ref().map(|(a, _)| ("ingress.https.listen", *a)));
    }
    listeners.extend(resolve_listen.map(|a| ("ingress.resolve.listen", a)));
    listeners.extend(
        echo_worker
            .as_ref()
            .map(|(a, _)| ("echo_worker.listen", *a)),
    );
    // From the field itself, so a collision shows even when another egress field is wrong.
    let agent = config
        .agent
        .as_ref()
        .and_then(|a| errs.collect("agent", a.settings(&base)));
    for (i, a) in agent.iter().flat_map(|a| a.listen.iter()).enumerate() {
        listeners.push((
            AGENT_LISTEN_FIELDS
                .get(i)
                .copied()
                .unwrap_or("agent.listen"),
            *a,
        ));
    }
    let egress_listen = config
        .egress
        .enabled
        .then(|| config.egress.listen.parse().ok());
    listeners.extend(egress_listen.flatten().map(|a| ("egress.listen", a)));
    check_listener_collisions(&mut errs, &listeners);
    let grpc_tls = errs.collect("grpc", config.grpc.tls_files(&base)).flatten();
    let grpc_trusted_peers = errs
        .collect("grpc", config.grpc.trusted_peers())
        .unwrap_or_default();
    let extproc_source_trust = errs
        .collect("grpc", config.grpc.extproc_source_trust())
        .flatten()
        .map(std::sync::Arc::new);
    let signer = config
        .signer
        .as_ref()
        .and_then(|s| errs.collect("signer", s.signer(&base)))
        .map(std::sync::Arc::new);

    match (errs.is_empty(), admin_listen, extractor, resolver) {
        (true, Some(admin_listen), Some(extractor), Some(resolver)) => Ok(Loaded {
            config,
            admin_listen,
            grpc_listen,
            grpc_tls,
            grpc_trusted_peers,
            extproc_source_trust,
            ingress,
            resolve_listen,
            echo_worker,
            extractor,
            resolver,
            directory,
            egress,
            agent,
            signer,
        }),
        _ => Err(errs),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn check(yaml: &str) -> Result<Loaded, String> {
        let config = parse(yaml).map_err(|e| e.to_string())?;
        validate(config, Path::new("/nonexistent/actorgate.yaml")).map_err(|e| e.to_string())
    }

    fn err(yaml: &str) -> String {
        match check(yaml) {
            Ok(_) => panic!("expected an error for {yaml:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn minimal_static_config_is_valid_with_defaults() {
        let l = check("directory:\n  static:\n    actors:\n    - {atespace: demo, name: a, endpoint: '127.0.0.1:8081'}\n").unwrap();
        assert_eq!(l.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(
            l.grpc_listen.map(|a| a.to_string()).as_deref(),
            Some("0.0.0.0:50051"),
            "ExtProc and ResolveRoute are on by default"
        );
        assert_eq!(l.resolver.budget, Duration::from_secs(5));
        assert_eq!(l.resolver.parking_limit, 1000);
        assert!(l.ingress.is_some() && l.directory.is_some());
        assert_eq!(
            l.resolve_listen, None,
            "the resolve listener is off by default"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let msg = err("admin: {listen: 'nope'}\n\
             resolver: {parking_limit: 0, backoff: {jitter: 2}}\n\
             routing: {host_suffix: 'bad_suffix'}\n\
             grpc: {control_plane_simulator: true}\n\
             directory:\n  static:\n    actors:\n\
             \x20   - {atespace: a, name: b, endpoint: '10.0.0.1:1'}\n\
             \x20   - {atespace: a, name: c, endpoint: '10.0.0.1:2'}\n\
             \x20   - {atespace: a, name: d, endpoint: '10.0.0.1'}\n");
        for want in [
            r#"admin.listen: invalid socket address "nope""#,
            "resolver.parking_limit: 0 is out of range",
            "resolver.backoff.jitter: 2 is out of range",
            "routing.host_suffix: invalid host suffix",
            r#"directory.static.actors[2].endpoint: invalid socket address "10.0.0.1""#,
        ] {
            assert!(
                msg.lines().any(|l| l.starts_with(want)),
                "missing {want:?} in:\n{msg}"
            );
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        let e = err("resolver:\n  budget: soon\ndirectory: {static: {}}\n");
        assert!(e.starts_with("resolver.budget:"), "{e}");
        let e = err("resolver:\n  budgett: 1s\n");
        assert!(e.starts_with("resolver.budgett: unknown field"), "{e}");
    }

    #[test]
    fn directory_choice_is_exclusive() {
        assert!(err("directory: {}").starts_with("directory: set one of"));
        let both = err("directory: {static: {}, ateapi: {address: 'x:1'}}");
        assert!(both.starts_with("directory: set exactly one"), "{both}");
        let mtls = err("directory: {ateapi: {address: 'api:8443', tls: mtls}}");
        assert!(
            mtls.contains("directory.ateapi.ca_file: is required"),
            "{mtls}"
        );
        assert!(
            mtls.contains("directory.ateapi.cert_file: is required"),
            "{mtls}"
        );
    }

    #[test]
    fn directory_is_needed_only_by_what_routes_to_actors() {
        // Nothing routes to actors: loads, and the effective config says what is off.
        let l = check("admin: {listen: '127.0.0.1:0'}\n").unwrap();
        assert!(l.directory.is_none() && l.ingress.is_none() && l.grpc_listen.is_none());
        assert!(!l.config.ingress.enabled && !l.config.grpc.extproc);
        // Each component that routes to actors, asked for without a directory: one line.
        for (yaml, component) in [
            ("ingress: {http: {listen: '127.0.0.1:0'}}\n", "ingress"),
            ("grpc: {extproc: true}\n", "grpc.extproc"),
            ("grpc: {resolve_route: true}\n", "grpc.resolve_route"),
            (
                "ingress: {enabled: false, resolve: {listen: '127.0.0.1:0'}}\n",
                "ingress.resolve",
            ),
            (
                "grpc: {control_plane_simulator: true}\n",
                "grpc.control_plane_simulator",
            ),
        ] {
            let e = err(yaml);
            assert_eq!(e.lines().count(), 1, "{yaml}: {e}");
            assert!(
                e.starts_with(&format!("directory: is required by {component} (")),
                "{yaml}: {e}"
            );
        }
    }

    #[test]
    fn the_resolve_listener_is_checked_and_collides_like_the_others() {
        let l = check("ingress: {resolve: {listen: '127.0.0.1:8081'}}\ndirectory: {static: {}}\n")
            .unwrap();
        assert_eq!(l.resolve_listen, Some("127.0.0.1:8081".parse().unwrap()));
        let e = err("ingress: {resolve: {listen: '0.0.0.0:9090'}}\ndirectory: {static: {}}\n");
        assert_eq!(
            e,
            "ingress.resolve.listen: 0.0.0.0:9090 is also admin.listen"
        );
        let e = err("ingress: {resolve: {listen: 'x'}}\ndirectory: {static: {}}\n");
        assert!(
            e.starts_with("ingress.resolve.listen: invalid socket address"),
            "{e}"
        );
    }

    #[test]
    fn agent_mode_needs_upstream_tls_with_a_spiffe_identity() {
        let e = err("routing: {worker_transport: {mode: agent}}\ndirectory: {static: {}}\n");
        assert!(
            e.contains(
                "routing.worker_transport.mode: agent mode dials the worker agent over mTLS"
            ),
            "{e}"
        );
        let e = err(
            "ingress: {upstream: {tls: {ca_file: /nonexistent/ca.crt}}}\ndirectory: {static: {}}\n",
        );
        assert!(
            e.contains("ingress.upstream.tls.ca_file: /nonexistent/ca.crt does not exist"),
            "{e}"
        );
        assert!(
            e.contains(
                "ingress.upstream.tls: set exactly one of server_spiffe_id or server_spiffe_prefix"
            ),
            "{e}"
        );
    }
}
