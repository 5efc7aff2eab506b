//! The configuration file: one YAML document, validated on load. Every problem is reported as
//! one line naming its field path (`directory.static.actors[2].endpoint: invalid socket address
//! "10.0.0.1"`). `deploy/local/actorgate.yaml` is the annotated example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use routing_core::directory::AddressFamily;
use routing_core::directory::ateapi::{AteApiSettings, TlsMode};
use routing_core::directory::static_dir::{
    StaticActorSpec, StaticDirectorySpec, StaticLoader, ValidStaticSpec,
};
use routing_core::extract::{ConflictPolicy, DEFAULT_ATESPACE, DEFAULT_HOST_SUFFIX, ExtractorKind};
use routing_core::field_error::FieldErrors;
use routing_core::resolver::BackoffSettings;
use routing_core::{Extractor, ResolverSettings, WorkerTransport};
use serde::{Deserialize, Serialize};

/// Largest config or actors file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub grpc: GrpcConfig,
    #[serde(default)]
    pub ingress: IngressConfig,
    /// Run an embedded echo worker (the local demo's backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_worker: Option<EchoWorkerConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub resolver: ResolverConfig,
    #[serde(default)]
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `actorgate=debug,info`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The admin server: health, readiness, metrics, status page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// How `/readyz` follows the directory's health probe.
    #[serde(default)]
    pub readiness: ReadinessConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            readiness: ReadinessConfig::default(),
        }
    }
}

fn default_admin_listen() -> String {
    "0.0.0.0:9090".to_owned()
}

/// The directory health probe behind `/readyz`. Like a Kubernetes probe's `periodSeconds`,
/// `timeoutSeconds`, `failureThreshold` and `successThreshold`: one slow or failed probe does
/// not flip readiness; draining flips it at once regardless.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessConfig {
    /// Time between the starts of two probes.
    #[serde(default = "d_probe_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one probe may take before it counts as failed (at most `interval`).
    #[serde(default = "d_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed probes that make a ready gateway unready.
    #[serde(default = "d_failure_threshold")]
    pub failure_threshold: u32,
    /// Consecutive successful probes that make an unready gateway ready (at start too).
    #[serde(default = "d_success_threshold")]
    pub success_threshold: u32,
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        Self {
            interval: d_probe_interval(),
            timeout: d_probe_timeout(),
            failure_threshold: d_failure_threshold(),
            success_threshold: d_success_threshold(),
        }
    }
}

fn d_probe_interval() -> Duration {
    Duration::from_secs(2)
}
fn d_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn d_failure_threshold() -> u32 {
    3
}
fn d_success_threshold() -> u32 {
    1
}

/// The gRPC server: Envoy ExtProc, `actorgate.router.v1.Router`, gRPC health and reflection, and
/// optionally the `ateapi.Control` simulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    #[serde(default = "default_grpc_listen")]
    pub listen: String,
    /// Serve the static directory as `ateapi.Control` (a control-plane simulator).
    #[serde(default)]
    pub control_plane_simulator: bool,
    /// Serve Envoy ExtProc (`envoy.service.ext_proc.v3.ExternalProcessor`).
    #[serde(default = "d_true")]
    pub extproc: bool,
    /// Serve `actorgate.router.v1.Router/ResolveRoute`.
    #[serde(default = "d_true")]
    pub resolve_route: bool,
    /// Serve gRPC server reflection (v1) for the Router and health services.
    #[serde(default = "d_true")]
    pub reflection: bool,
    /// TLS for the gRPC listener (plaintext when absent). Files are reloaded on change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: default_grpc_listen(),
            control_plane_simulator: false,
            extproc: true,
            resolve_route: true,
            reflection: true,
            tls: None,
        }
    }
}

/// The ingress HTTP proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// Turn the proxy off (e.g. when only the control-plane simulator is wanted).
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(default)]
    pub http: HttpListenerConfig,
    /// HTTPS listener (ALPN h2 and http/1.1); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsListenerConfig>,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            http: HttpListenerConfig::default(),
            https: None,
            upstream: UpstreamConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// The plaintext listener: HTTP/1.1 and h2c (prior knowledge).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerConfig {
    #[serde(default = "d_http_listen")]
    pub listen: String,
}

impl Default for HttpListenerConfig {
    fn default() -> Self {
        Self {
            listen: d_http_listen(),
        }
    }
}

fn d_http_listen() -> String {
    "0.0.0.0:8080".to_owned()
}

/// The TLS listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsListenerConfig {
    #[serde(default = "d_https_listen")]
    pub listen: String,
    pub tls: ServerTlsConfig,
}

fn d_https_listen() -> String {
    "0.0.0.0:8443".to_owned()
}

/// How the proxy talks to workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `auto` (HTTP/2 for gRPC, HTTP/1.1 otherwise), `http1` or `http2`; with TLS to workers ALPN
    /// offers only the chosen protocol.
    #[serde(default)]
    pub protocol: ingress::UpstreamProtocol,
    #[serde(default = "d_connect", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From sending the request (body included) to the worker's response headers; past it: 504.
    #[serde(default = "d_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Longest pause inside a worker's response body; past it the stream is cut.
    #[serde(default = "d_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default = "d_pool_idle", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "d_pool_max")]
    pub pool_max_idle_per_host: usize,
    /// TLS to workers (the worker agent's mTLS); required when
    /// `routing.worker_transport.mode` is `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
}

/// TLS material for dialing workers and the identity they must present.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// CA bundle that signs worker certificates.
    pub ca_file: PathBuf,
    /// The gateway's client certificate and key (workers require mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The exact SPIFFE ID every worker presents, or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_spiffe_id: Option<String>,
    /// a SPIFFE ID prefix ending in `/` (e.g. `spiffe://cluster.local/ns/ate-workers/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_spiffe_prefix: Option<String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            protocol: ingress::UpstreamProtocol::Auto,
            connect_timeout: d_connect(),
            response_timeout: d_response_timeout(),
            idle_timeout: d_idle_timeout(),
            pool_idle_timeout: d_pool_idle(),
            pool_max_idle_per_host: d_pool_max(),
            tls: None,
        }
    }
}

fn d_response_timeout() -> Duration {
    Duration::from_secs(60)
}
fn d_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn d_pool_idle() -> Duration {
    Duration::from_secs(90)
}
fn d_pool_max() -> usize {
    256
}

/// Request limits of the ingress listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "d_header_read", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(default = "d_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "d_headers")]
    pub max_headers: usize,
    #[serde(default = "d_streams")]
    pub max_concurrent_streams: u32,
    /// A connection with no request in progress (HTTP/2: no open stream) this long is closed
    /// (HTTP/2: GOAWAY).
    #[serde(default = "d_idle_connection", with = "humantime_serde")]
    pub idle_connection_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: d_header_read(),
            max_header_bytes: d_header_bytes(),
            max_headers: d_headers(),
            max_concurrent_streams: d_streams(),
            idle_connection_timeout: d_idle_connection(),
        }
    }
}

fn d_header_read() -> Duration {
    Duration::from_secs(30)
}
fn d_header_bytes() -> usize {
    64 * 1024
}
fn d_headers() -> usize {
    100
}
fn d_streams() -> u32 {
    250
}
fn d_idle_connection() -> Duration {
    Duration::from_secs(300)
}

/// An embedded echo worker, for the local demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoWorkerConfig {
    pub listen: String,
    #[serde(default = "d_echo_name")]
    pub name: String,
}

fn d_echo_name() -> String {
    "echo".to_owned()
}

/// Server TLS material and client-certificate policy of a listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle for client certificates; required unless `client_auth` is `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// `none`, `optional` or `required` (mTLS).
    #[serde(default)]
    pub client_auth: identity::tls::ClientAuth,
    /// When set, client certificates must also carry a valid SPIFFE identity in this trust
    /// domain (checked in the handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_trust_domain: Option<String>,
}

fn default_grpc_listen() -> String {
    "0.0.0.0:50051".to_owned()
}

/// How requests name actors and how workers are reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default = "default_extractors")]
    pub extractors: Vec<ExtractorKind>,
    #[serde(default = "default_suffix")]
    pub host_suffix: String,
    /// Atespace of legacy `<name>.<suffix>` hosts; required by the `legacy_host` extractor.
    #[serde(default = "default_atespace")]
    pub default_atespace: Option<String>,
    /// `ate-target-actor` and the authority name different actors: `refuse` (400, default) or
    /// `first_extractor_wins` (the extractor order decides).
    #[serde(default)]
    pub conflicting_actors: ConflictPolicy,
    #[serde(default)]
    pub worker_transport: WorkerTransportConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            extractors: default_extractors(),
            host_suffix: default_suffix(),
            default_atespace: default_atespace(),
            conflicting_actors: ConflictPolicy::default(),
            worker_transport: WorkerTransportConfig::default(),
        }
    }
}

fn default_extractors() -> Vec<ExtractorKind> {
    vec![
        ExtractorKind::Header,
        ExtractorKind::Host,
        ExtractorKind::LegacyHost,
    ]
}
fn default_suffix() -> String {
    DEFAULT_HOST_SUFFIX.to_owned()
}
fn default_atespace() -> Option<String> {
    Some(DEFAULT_ATESPACE.to_owned())
}

/// `plain` (worker_pod_ip:<actor port>) or `agent` (worker_pod_ip:<agent_port> over mTLS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTransportConfig {
    #[serde(default)]
    pub mode: WorkerMode,
    #[serde(default = "default_agent_port")]
    pub agent_port: u16,
}

impl Default for WorkerTransportConfig {
    fn default() -> Self {
        Self {
            mode: WorkerMode::Plain,
            agent_port: default_agent_port(),
        }
    }
}

fn default_agent_port() -> u16 {
    443
}

/// Worker transport mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMode {
    #[default]
    Plain,
    Agent,
}

/// Resolver tuning (DESIGN §4 defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    #[serde(default = "d_budget", with = "humantime_serde")]
    pub budget: Duration,
    #[serde(default)]
    pub backoff: BackoffConfig,
    #[serde(default = "d_parking")]
    pub parking_limit: usize,
    #[serde(default)]
    pub route_cache: RouteCacheConfig,
    /// Ask `GetActor` before `ResumeActor`, so running actors never need a parking slot.
    #[serde(default = "d_true")]
    pub probe_with_get_actor: bool,
    /// The `boot` flag sent with `ResumeActor`.
    #[serde(default)]
    pub resume_boot: bool,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            budget: d_budget(),
            backoff: BackoffConfig::default(),
            parking_limit: d_parking(),
            route_cache: RouteCacheConfig::default(),
            probe_with_get_actor: true,
            resume_boot: false,
        }
    }
}

fn d_budget() -> Duration {
    Duration::from_secs(5)
}
fn d_parking() -> usize {
    1000
}
fn d_true() -> bool {
    true
}

/// Retry backoff.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "d_initial", with = "humantime_serde")]
    pub initial: Duration,
    #[serde(default = "d_factor")]
    pub factor: f64,
    #[serde(default = "d_jitter")]
    pub jitter: f64,
    #[serde(default = "d_max", with = "humantime_serde")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: d_initial(),
            factor: d_factor(),
            jitter: d_jitter(),
            max: d_max(),
        }
    }
}

fn d_initial() -> Duration {
    Duration::from_millis(100)
}
fn d_factor() -> f64 {
    1.1
}
fn d_jitter() -> f64 {
    0.1
}
fn d_max() -> Duration {
    Duration::from_secs(2)
}

/// Route cache for RUNNING actors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// `0s` disables the cache.
    #[serde(default = "d_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(default = "d_entries")]
    pub max_entries: u64,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        Self {
            ttl: d_ttl(),
            max_entries: d_entries(),
        }
    }
}

fn d_ttl() -> Duration {
    Duration::from_secs(5)
}
fn d_entries() -> u64 {
    100_000
}

/// Where actors are looked up: exactly one of `static` or `ateapi`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_: Option<StaticConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ateapi: Option<AteApiConfig>,
}

/// The embedded static directory: inline `actors` or a `file` holding `actors` (and
/// `resume_delay`). The source is watched and reloaded on change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Actors file, relative to this config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub resume_delay: Option<Duration>,
    /// Simulated latency of every directory call (benchmarks).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<StaticActorSpec>,
}

/// The real control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AteApiConfig {
    /// `host:port` of ate-api-server (no scheme: `tls` decides it).
    pub address: String,
    /// `plaintext`, `tls` or `mtls`. Required, with no default: the real ate-api-server requires
    /// mTLS, and a forgotten key must not silently mean plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default = "d_connect", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "d_rpc", with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// Which of a dual-stack worker's addresses to dial (`ipv4` or `ipv6`, default `ipv4`):
    /// upstream v0.4 sends up to two in `worker_pod_ips` (DESIGN §9); the first of this family
    /// is used, else the first of the other.
    #[serde(default)]
    pub worker_address_family: AddressFamily,
}

fn d_connect() -> Duration {
    Duration::from_secs(2)
}
fn d_rpc() -> Duration {
    Duration::from_secs(60)
}

/// SIGTERM handling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long `/readyz` answers 503 before listeners close (lets load
    /// balancers stop sending new connections).
    #[serde(default, with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How long in-flight requests may take to finish once listeners close.
    #[serde(default = "d_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            drain_timeout: d_drain_timeout(),
        }
    }
}

fn d_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A loaded config that passed validation, with everything derived from it.
pub struct Loaded {
    /// The config with defaults filled in (what `check-config` prints).
    pub config: Config,
    pub admin_listen: SocketAddr,
    pub grpc_listen: Option<SocketAddr>,
    /// TLS of the gRPC listener (paths resolved against the config's directory).
    pub grpc_tls: Option<identity::tls::ServerTlsFiles>,
    /// The ingress proxy, when enabled.
    pub ingress: Option<IngressSettings>,
    pub echo_worker: Option<(SocketAddr, String)>,
    pub extractor: Extractor,
    pub resolver: ResolverSettings,
    pub directory: DirectorySettings,
}

/// The validated ingress proxy settings.
pub struct IngressSettings {
    pub http_listen: SocketAddr,
    /// TLS to workers.
    pub worker_tls: Option<identity::tls::ClientTlsFiles>,
    pub https: Option<(SocketAddr, identity::tls::ServerTlsFiles)>,
    pub proxy: ingress::ProxySettings,
    pub limits: ingress::ListenerLimits,
}

/// The chosen directory back-end.
pub enum DirectorySettings {
    Static {
        loader: StaticLoader,
        /// The file to watch for changes.
        watch: PathBuf,
        initial: ValidStaticSpec,
    },
    AteApi {
        settings: AteApiSettings,
        /// Which of a dual-stack worker's addresses to dial.
        worker_address_family: AddressFamily,
    },
}

/// Why a config could not be loaded; displays as one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(FieldErrors),
}

fn read_capped(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{} is larger than 16 MiB", path.display()));
    }
    Ok(text)
}

/// Parses YAML into `T`, reporting the field path of a type error.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, FieldErrors> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let msg = e.without_snippet().to_string().replace('\n', " ");
        let path = if path == "." { String::new() } else { path };
        FieldErrors(vec![routing_core::field_error::FieldError::new(path, msg)])
    })
}

/// Reads and validates the config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let fail = |m: String| {
        ConfigError::Invalid(FieldErrors(vec![
            routing_core::field_error::FieldError::new("", m),
        ]))
    };
    let text = read_capped(path).map_err(fail)?;
    let config: Config = parse_yaml(&text).map_err(ConfigError::Invalid)?;
    validate(config, path).map_err(ConfigError::Invalid)
}

fn parse_addr(errs: &mut FieldErrors, field: &str, v: &str) -> Option<SocketAddr> {
    match v.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                field,
                format!("invalid socket address {v:?} (want ip:port)"),
            );
            None
        }
    }
}

fn check_duration(errs: &mut FieldErrors, field: &str, v: Duration, min: Duration, max: Duration) {
    if v < min || v > max {
        errs.push(
            field,
            format!(
                "{} is out of range ({} to {})",
                humantime::format_duration(v),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        );
    }
}

/// Validates a parsed config; `path` locates relative files.
pub fn validate(config: Config, path: &Path) -> Result<Loaded, FieldErrors> {
    let mut errs = FieldErrors::default();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.logging.level) {
        errs.push(
            "logging.level",
            format!("invalid filter {:?}: {e}", config.logging.level),
        );
    }

    let admin_listen = parse_addr(&mut errs, "admin.listen", &config.admin.listen);
    let rd = &config.admin.readiness;
    check_duration(
        &mut errs,
        "admin.readiness.interval",
        rd.interval,
        Duration::from_millis(50),
        Duration::from_secs(300),
    );
    if rd.timeout > rd.interval {
        errs.push(
            "admin.readiness.timeout",
            format!(
                "{} is longer than admin.readiness.interval ({})",
                humantime::format_duration(rd.timeout),
                humantime::format_duration(rd.interval)
            ),
        );
    } else {
        check_duration(
            &mut errs,
            "admin.readiness.timeout",
            rd.timeout,
            Duration::from_millis(10),
            Duration::from_secs(300),
        );
    }
    for (field, v) in [
        ("admin.readiness.failure_threshold", rd.failure_threshold),
        ("admin.readiness.success_threshold", rd.success_threshold),
    ] {
        if !(1..=100).contains(&v) {
            errs.push(field, format!("{v} is out of range (1 to 100)"));
        }
    }
    let grpc_addr = parse_addr(&mut errs, "grpc.listen", &config.grpc.listen);
    if let (Some(a), Some(g)) = (admin_listen, grpc_addr)
        && a == g
        && a.port() != 0
    {
        errs.push("grpc.listen", format!("{g} is also admin.listen"));
    }

    let r = &config.routing;
    let extractor = match Extractor::new(
        r.extractors.clone(),
        &r.host_suffix,
        r.default_atespace.as_deref(),
    ) {
        Ok(e) => Some(e.with_conflict_policy(r.conflicting_actors)),
        Err(e) => {
            let field = match e {
                routing_core::extract::ExtractorConfigError::BadSuffix(_) => "routing.host_suffix",
                routing_core::extract::ExtractorConfigError::BadDefaultAtespace(..) => {
                    "routing.default_atespace"
                }
                _ => "routing.extractors",
            };
            errs.push(field, e.to_string());
            None
        }
    };
    if r.worker_transport.mode == WorkerMode::Agent && r.worker_transport.agent_port == 0 {
        errs.push("routing.worker_transport.agent_port", "must not be 0");
    }
    if r.worker_transport.mode == WorkerMode::Agent
        && config.ingress.enabled
        && config.ingress.upstream.tls.is_none()
    {
        errs.push(
            "routing.worker_transport.mode",
            "agent mode dials the worker agent over mTLS: set ingress.upstream.tls",
        );
    }

    let rc = &config.resolver;
    let ms = Duration::from_millis;
    check_duration(
        &mut errs,
        "resolver.budget",
        rc.budget,
        ms(10),
        Duration::from_secs(600),
    );
    check_duration(
        &mut errs,
        "resolver.backoff.initial",
        rc.backoff.initial,
        ms(1),
        Duration::from_secs(60),
    );
    check_duration(
        &mut errs,
        "resolver.backoff.max",
        rc.backoff.max,
        rc.backoff.initial,
        Duration::from_secs(300),
    );
    if !(1.0..=10.0).contains(&rc.backoff.factor) {
        errs.push(
            "resolver.backoff.factor",
            format!("{} is out of range (1 to 10)", rc.backoff.factor),
        );
    }
    if !(0.0..=1.0).contains(&rc.backoff.jitter) {
        errs.push(
            "resolver.backoff.jitter",
            format!("{} is out of range (0 to 1)", rc.backoff.jitter),
        );
    }
    if rc.parking_limit == 0 || rc.parking_limit > 1_000_000 {
        errs.push(
            "resolver.parking_limit",
            format!("{} is out of range (1 to 1000000)", rc.parking_limit),
        );
    }
    check_duration(
        &mut errs,
        "resolver.route_cache.ttl",
        rc.route_cache.ttl,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    if rc.route_cache.max_entries == 0 || rc.route_cache.max_entries > 10_000_000 {
        errs.push(
            "resolver.route_cache.max_entries",
            format!(
                "{} is out of range (1 to 10000000)",
                rc.route_cache.max_entries
            ),
        );
    }

    let s = &config.shutdown;
    check_duration(
        &mut errs,
        "shutdown.drain_delay",
        s.drain_delay,
        Duration::ZERO,
        Duration::from_secs(600),
    );
    check_duration(
        &mut errs,
        "shutdown.drain_timeout",
        s.drain_timeout,
        Duration::ZERO,
        Duration::from_secs(3600),
    );

    let directory = match (&config.directory.static_, &config.directory.ateapi) {
        (Some(_), Some(_)) => {
            errs.push("directory", "set exactly one of static or ateapi, not both");
            None
        }
        (None, None) => {
            errs.push("directory", "set one of static or ateapi");
            None
        }
        (Some(st), None) => static_settings(&mut errs, st, &base, path),
        (None, Some(api)) => ateapi_settings(&mut errs, api, &base),
    };
    if config.grpc.control_plane_simulator && config.directory.static_.is_none() {
        errs.push("grpc.control_plane_simulator", "requires directory.static");
    }
    let ingress = config
        .ingress
        .enabled
        .then(|| ingress_settings(&mut errs, &config.ingress, &base))
        .flatten();
    if let (Some(i), Some(a)) = (&ingress, admin_listen)
        && i.http_listen == a
        && a.port() != 0
    {
        errs.push("ingress.http.listen", format!("{a} is also admin.listen"));
    }
    let echo_worker = match &config.echo_worker {
        None => None,
        Some(e) => {
            parse_addr(&mut errs, "echo_worker.listen", &e.listen).map(|a| (a, e.name.clone()))
        }
    };
    let grpc_tls = config
        .grpc
        .tls
        .as_ref()
        .and_then(|t| server_tls(&mut errs, "grpc.tls", t, &base, vec![b"h2".to_vec()]));

    let resolver = ResolverSettings {
        budget: rc.budget,
        backoff: BackoffSettings {
            initial: rc.backoff.initial,
            factor: rc.backoff.factor,
            jitter: rc.backoff.jitter,
            max: rc.backoff.max,
        },
        parking_limit: rc.parking_limit,
        cache_ttl: rc.route_cache.ttl,
        cache_max_entries: rc.route_cache.max_entries,
        worker_transport: match r.worker_transport.mode {
            WorkerMode::Plain => WorkerTransport::Plain,
            WorkerMode::Agent => WorkerTransport::Agent {
                port: r.worker_transport.agent_port,
            },
        },
        probe_with_get: rc.probe_with_get_actor,
        resume_boot: rc.resume_boot,
    };
    match (errs.is_empty(), admin_listen, extractor, directory) {
        (true, Some(admin_listen), Some(extractor), Some(directory)) => Ok(Loaded {
            grpc_tls,
            ingress,
            echo_worker,
            grpc_listen: (config.grpc.control_plane_simulator
                || config.grpc.extproc
                || config.grpc.resolve_route)
                .then_some(grpc_addr)
                .flatten(),
            config,
            admin_listen,
            extractor,
            resolver,
            directory,
        }),
        _ => Err(errs),
    }
}

fn ingress_settings(
    errs: &mut FieldErrors,
    c: &IngressConfig,
    base: &Path,
) -> Option<IngressSettings> {
    let before = errs.0.len();
    let http_listen = parse_addr(errs, "ingress.http.listen", &c.http.listen);
    let https = c.https.as_ref().and_then(|h| {
        let addr = parse_addr(errs, "ingress.https.listen", &h.listen)?;
        let tls = server_tls(
            errs,
            "ingress.https.tls",
            &h.tls,
            base,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        )?;
        Some((addr, tls))
    });
    let u = &c.upstream;
    let s = Duration::from_secs;
    check_duration(
        errs,
        "ingress.upstream.connect_timeout",
        u.connect_timeout,
        Duration::from_millis(10),
        s(60),
    );
    check_duration(
        errs,
        "ingress.upstream.response_timeout",
        u.response_timeout,
        Duration::from_millis(10),
        s(3600),
    );
    check_duration(
        errs,
        "ingress.upstream.idle_timeout",
        u.idle_timeout,
        Duration::from_millis(10),
        s(86400),
    );
    check_duration(
        errs,
        "ingress.upstream.pool_idle_timeout",
        u.pool_idle_timeout,
        Duration::ZERO,
        s(3600),
    );
    if u.pool_max_idle_per_host > 100_000 {
        errs.push(
            "ingress.upstream.pool_max_idle_per_host",
            "must be at most 100000",
        );
    }
    let l = &c.limits;
    check_duration(
        errs,
        "ingress.limits.header_read_timeout",
        l.header_read_timeout,
        Duration::from_millis(100),
        s(600),
    );
    if !(1024..=1024 * 1024).contains(&l.max_header_bytes) {
        errs.push(
            "ingress.limits.max_header_bytes",
            format!("{} is out of range (1024 to 1048576)", l.max_header_bytes),
        );
    }
    if !(1..=1000).contains(&l.max_headers) {
        errs.push(
            "ingress.limits.max_headers",
            format!("{} is out of range (1 to 1000)", l.max_headers),
        );
    }
    if !(1..=100_000).contains(&l.max_concurrent_streams) {
        errs.push(
            "ingress.limits.max_concurrent_streams",
            format!("{} is out of range (1 to 100000)", l.max_concurrent_streams),
        );
    }
    check_duration(
        errs,
        "ingress.limits.idle_connection_timeout",
        l.idle_connection_timeout,
        Duration::from_millis(100),
        s(86_400),
    );
    let worker_tls = u.tls.as_ref().and_then(|t| upstream_tls(errs, t, base));
    if errs.0.len() != before {
        return None;
    }
    Some(IngressSettings {
        worker_tls,
        http_listen: http_listen?,
        https,
        proxy: ingress::ProxySettings {
            connect_timeout: u.connect_timeout,
            response_timeout: u.response_timeout,
            idle_timeout: u.idle_timeout,
            upstream_protocol: u.protocol,
            pool_idle_timeout: u.pool_idle_timeout,
            pool_max_idle_per_host: u.pool_max_idle_per_host,
            max_headers: l.max_headers,
        },
        limits: ingress::ListenerLimits {
            header_read_timeout: l.header_read_timeout,
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            max_concurrent_streams: l.max_concurrent_streams,
            tls_handshake_timeout: s(10),
            idle_connection_timeout: l.idle_connection_timeout,
        },
    })
}

fn upstream_tls(
    errs: &mut FieldErrors,
    t: &UpstreamTlsConfig,
    base: &Path,
) -> Option<identity::tls::ClientTlsFiles> {
    let before = errs.0.len();
    let mut file = |name: &str, p: &Path| {
        let full = resolve_path(base, p);
        if !full.is_file() {
            errs.push(
                format!("ingress.upstream.tls.{name}"),
                format!("{} does not exist or is not a file", full.display()),
            );
        }
        full
    };
    let ca_file = file("ca_file", &t.ca_file);
    let cert_file = t.cert_file.as_ref().map(|p| file("cert_file", p));
    let key_file = t.key_file.as_ref().map(|p| file("key_file", p));
    if cert_file.is_some() != key_file.is_some() {
        errs.push(
            "ingress.upstream.tls.cert_file",
            "cert_file and key_file go together",
        );
    }
    let server_identity = match (&t.server_spiffe_id, &t.server_spiffe_prefix) {
        (Some(id), None) => {
            if identity::spiffe::SpiffeId::parse(id).is_err() {
                errs.push(
                    "ingress.upstream.tls.server_spiffe_id",
                    format!("{id:?} is not an actor or component SPIFFE ID"),
                );
            }
            identity::tls::ServerIdentity::Spiffe(id.clone())
        }
        (None, Some(prefix)) => identity::tls::ServerIdentity::SpiffePrefix(prefix.clone()),
        _ => {
            errs.push(
                "ingress.upstream.tls",
                "set exactly one of server_spiffe_id or server_spiffe_prefix (workers are dialed by IP)",
            );
            identity::tls::ServerIdentity::Hostname
        }
    };
    (errs.0.len() == before).then_some(identity::tls::ClientTlsFiles {
        ca_file,
        cert_file,
        key_file,
        server_identity,
        alpn: vec![],
    })
}

/// Checks a listener's TLS section: files exist, client auth has a CA.
fn server_tls(
    errs: &mut FieldErrors,
    field: &str,
    t: &ServerTlsConfig,
    base: &Path,
    alpn: Vec<Vec<u8>>,
) -> Option<identity::tls::ServerTlsFiles> {
    let before = errs.0.len();
    let mut file = |name: &str, p: &Path| {
        let full = resolve_path(base, p);
        if !full.is_file() {
            errs.push(
                format!("{field}.{name}"),
                format!("{} does not exist or is not a file", full.display()),
            );
        }
        full
    };
    let cert_file = file("cert_file", &t.cert_file);
    let key_file = file("key_file", &t.key_file);
    let client_ca_file = t.client_ca_file.as_ref().map(|p| file("client_ca_file", p));
    if let Some(td) = &t.client_trust_domain
        && !identity::spiffe::is_trust_domain(td)
    {
        errs.push(
            format!("{field}.client_trust_domain"),
            format!("{td:?} is not a valid SPIFFE trust domain"),
        );
    }
    if t.client_auth != identity::tls::ClientAuth::None && client_ca_file.is_none() {
        errs.push(
            format!("{field}.client_ca_file"),
            "is required when client_auth is optional or required",
        );
    }
    (errs.0.len() == before).then_some(identity::tls::ServerTlsFiles {
        cert_file,
        key_file,
        client_ca_file,
        client_auth: t.client_auth,
        client_trust_domain: t.client_trust_domain.clone(),
        alpn,
    })
}

fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Prefixes each problem found in an actors file with the file, so every line says where it is.
fn in_file(file: &Path, errs: FieldErrors) -> FieldErrors {
    FieldErrors(
        errs.0
            .into_iter()
            .map(|e| {
                let path = if e.path.is_empty() {
                    file.display().to_string()
                } else {
                    format!("{}: {}", file.display(), e.path)
                };
                routing_core::field_error::FieldError::new(path, e.message)
            })
            .collect(),
    )
}

fn one_error(path: &Path, message: String) -> FieldErrors {
    FieldErrors(vec![routing_core::field_error::FieldError::new(
        path.display().to_string(),
        message,
    )])
}

fn static_settings(
    errs: &mut FieldErrors,
    st: &StaticConfig,
    base: &Path,
    config_path: &Path,
) -> Option<DirectorySettings> {
    let (loader, watch): (StaticLoader, PathBuf) = match &st.file {
        Some(file) => {
            if !st.actors.is_empty() || st.resume_delay.is_some() || st.latency.is_some() {
                errs.push(
                    "directory.static.file",
                    "put actors and resume_delay in the file, or inline here, not both",
                );
                return None;
            }
            let file = resolve_path(base, file);
            let f = file.clone();
            let loader: StaticLoader = Arc::new(move || {
                let text = read_capped(&f).map_err(|m| one_error(&f, m))?;
                let spec: StaticDirectorySpec = parse_yaml(&text).map_err(|e| in_file(&f, e))?;
                spec.validate("").map_err(|e| in_file(&f, e))
            });
            (loader, file)
        }
        None => {
            // Inline actors: reload re-reads this config file and takes directory.static from it.
            let cfg = config_path.to_path_buf();
            let loader: StaticLoader = Arc::new(move || {
                let text = read_capped(&cfg).map_err(|m| one_error(&cfg, m))?;
                let config: Config = parse_yaml(&text).map_err(|e| in_file(&cfg, e))?;
                let st = config.directory.static_.ok_or_else(|| {
                    one_error(
                        &cfg,
                        "directory.static was removed; keeping the previous actors".into(),
                    )
                })?;
                StaticDirectorySpec {
                    resume_delay: st.resume_delay,
                    latency: st.latency,
                    actors: st.actors,
                }
                .validate("directory.static")
                .map_err(|e| in_file(&cfg, e))
            });
            (loader, config_path.to_path_buf())
        }
    };
    let initial = match &st.file {
        // Inline: validate what was just parsed, with paths relative to the config.
        None => StaticDirectorySpec {
            resume_delay: st.resume_delay,
            latency: st.latency,
            actors: st.actors.clone(),
        }
        .validate("directory.static"),
        Some(_) => loader(),
    };
    match initial {
        Ok(initial) => Some(DirectorySettings::Static {
            loader,
            watch,
            initial,
        }),
        Err(e) => {
            errs.0.extend(e.0);
            None
        }
    }
}

fn ateapi_settings(
    errs: &mut FieldErrors,
    api: &AteApiConfig,
    base: &Path,
) -> Option<DirectorySettings> {
    let before = errs.0.len();
    let tls = api.tls.clone();
    if tls.is_none() {
        errs.push(
            "directory.ateapi.tls",
            "is required: mtls (what ate-api-server requires), tls, or plaintext written out",
        );
    }
    if let Some(reason) = ateapi_address_problem(&api.address, tls.as_ref()) {
        errs.push("directory.ateapi.address", reason);
    }
    let file = |errs: &mut FieldErrors,
                field: &str,
                p: &Option<PathBuf>,
                required: bool|
     -> Option<PathBuf> {
        match p {
            Some(p) => {
                let full = resolve_path(base, p);
                if !full.is_file() {
                    errs.push(
                        field,
                        format!("{} does not exist or is not a file", full.display()),
                    );
                    return None;
                }
                Some(full)
            }
            None if required => {
                errs.push(field, "is required for this tls mode");
                None
            }
            None => None,
        }
    };
    let (needs_ca, needs_cert) = match &tls {
        Some(TlsMode::Plaintext) | None => (false, false),
        Some(TlsMode::Tls) => (true, false),
        Some(TlsMode::Mtls) => (true, true),
    };
    let ca_file = file(errs, "directory.ateapi.ca_file", &api.ca_file, needs_ca);
    let cert_file = file(
        errs,
        "directory.ateapi.cert_file",
        &api.cert_file,
        needs_cert,
    );
    let key_file = file(errs, "directory.ateapi.key_file", &api.key_file, needs_cert);
    if needs_ca {
        check_ateapi_tls_material(
            errs,
            ca_file.as_deref(),
            cert_file.as_deref().zip(key_file.as_deref()),
        );
    }
    let token_file = file(errs, "directory.ateapi.token_file", &api.token_file, false);
    check_duration(
        errs,
        "directory.ateapi.connect_timeout",
        api.connect_timeout,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    check_duration(
        errs,
        "directory.ateapi.rpc_timeout",
        api.rpc_timeout,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let tls = tls?;
    (errs.0.len() == before).then(|| DirectorySettings::AteApi {
        settings: AteApiSettings {
            address: api.address.clone(),
            tls,
            ca_file,
            cert_file,
            key_file,
            server_name: api.server_name.clone(),
            token_file,
            connect_timeout: api.connect_timeout,
            rpc_timeout: api.rpc_timeout,
        },
        worker_address_family: api.worker_address_family,
    })
}

/// What is wrong with `directory.ateapi.address`, if anything: it must be `host:port` (a DNS
/// name, an IPv4 address or a bracketed IPv6 address, and a port 1..65535) without a scheme,
/// because `tls` decides between http and https; a scheme that contradicts `tls` is named.
fn ateapi_address_problem(address: &str, tls: Option<&TlsMode>) -> Option<String> {
    if let Some((scheme, _)) = address.split_once("://") {
        let mode = match tls {
            Some(TlsMode::Plaintext) => "plaintext",
            Some(TlsMode::Tls) => "tls",
            Some(TlsMode::Mtls) => "mtls",
            None => "not set",
        };
        let contradiction = match (scheme.to_ascii_lowercase().as_str(), tls) {
            ("http", Some(TlsMode::Tls | TlsMode::Mtls)) => {
                format!("http:// means plaintext but tls is {mode}; ")
            }
            ("https", Some(TlsMode::Plaintext)) => {
                "https:// means TLS but tls is plaintext; ".to_owned()
            }
            _ => String::new(),
        };
        return Some(format!(
            "{address:?} has a scheme: {contradiction}write host:port (tls decides the scheme)"
        ));
    }
    let want = || format!("invalid address {address:?} (want host:port)");
    let Some((host, port)) = address.rsplit_once(':') else {
        return Some(want());
    };
    if host.is_empty() || !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return Some(want());
    }
    // The authority must survive URI parsing as tonic will do it, with nothing after the port.
    match format!("http://{address}").parse::<http::Uri>() {
        Ok(uri) if uri.path() == "/" && uri.host().is_some() && uri.port_u16().is_some() => None,
        _ => Some(want()),
    }
}

/// Loads the control-plane TLS material the way the client will use it and reports what would
/// make the connection fail, one line per field: a CA file with no parsable certificate (empty
/// or garbage), a client certificate or key that cannot be read, a certificate that does not
/// belong to its key. Files that do not exist were reported already (`None` here).
fn check_ateapi_tls_material(
    errs: &mut FieldErrors,
    ca: Option<&Path>,
    pair: Option<(&Path, &Path)>,
) {
    use identity::pem::PemError;
    use identity::tls::TlsError;
    let ca_ok = ca.is_some_and(|ca| {
        let files = identity::tls::ClientTlsFiles {
            ca_file: ca.to_path_buf(),
            cert_file: None,
            key_file: None,
            server_identity: identity::tls::ServerIdentity::Hostname,
            alpn: Vec::new(),
        };
        match identity::tls::client_config(&files) {
            Ok(_) => true,
            Err(TlsError::Pem(PemError::NoCertificate { path })) => {
                errs.push(
                    "directory.ateapi.ca_file",
                    format!("{path}: no PEM certificate found (empty or not a PEM CA bundle)"),
                );
                false
            }
            Err(TlsError::BadMaterial { path, reason }) => {
                errs.push(
                    "directory.ateapi.ca_file",
                    format!(
                        "{path}: a certificate in it cannot be parsed ({})",
                        reason.trim_start_matches("invalid peer certificate: ")
                    ),
                );
                false
            }
            Err(e) => {
                errs.push("directory.ateapi.ca_file", e.to_string());
                false
            }
        }
    });
    let Some((cert, key)) = pair else { return };
    if !ca_ok {
        // The pair can only be matched inside a client config, which needs the CA; still
        // report unreadable certificate and key files.
        if let Err(e) = identity::pem::load_certs(cert) {
            errs.push("directory.ateapi.cert_file", e.to_string());
        }
        if let Err(e) = identity::pem::load_key(key) {
            errs.push("directory.ateapi.key_file", e.to_string());
        }
        return;
    }
    let files = identity::tls::ClientTlsFiles {
        ca_file: ca.map(Path::to_path_buf).unwrap_or_default(),
        cert_file: Some(cert.to_path_buf()),
        key_file: Some(key.to_path_buf()),
        server_identity: identity::tls::ServerIdentity::Hostname,
        alpn: Vec::new(),
    };
    match identity::tls::client_config(&files) {
        Ok(_) => {}
        Err(TlsError::Pem(e @ PemError::NoKey { .. })) => {
            errs.push("directory.ateapi.key_file", e.to_string())
        }
        Err(TlsError::Pem(e)) => errs.push("directory.ateapi.cert_file", e.to_string()),
        Err(TlsError::BadMaterial { reason, .. }) => errs.push(
            "directory.ateapi.cert_file",
            format!(
                "{} does not belong to key_file {} ({})",
                cert.display(),
                key.display(),
                if reason.contains("KeyMismatch") {
                    "the certificate's public key is not the key's"
                } else {
                    &reason
                }
            ),
        ),
        Err(e) => errs.push("directory.ateapi.cert_file", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Loaded, String> {
        let config: Config = parse_yaml(yaml).map_err(|e| e.to_string())?;
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
    fn directory_choice_is_exclusive_and_required() {
        assert!(err("{}").starts_with("directory: set one of"));
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
    fn inline_actors_reload_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actorgate.yaml");
        std::fs::write(&path, "directory:\n  static:\n    actors:\n    - {atespace: a, name: one, endpoint: '127.0.0.1:1'}\n").unwrap();
        let loaded = load(&path).unwrap();
        let DirectorySettings::Static {
            loader,
            watch,
            initial,
        } = loaded.directory
        else {
            panic!("static expected");
        };
        assert_eq!(watch, path);
        assert_eq!(initial.len(), 1);
        std::fs::write(
            &path,
            "directory:\n  static:\n    actors:\n    - {atespace: a, name: one, endpoint: '127.0.0.1:1'}\n    - {atespace: a, name: two, endpoint: '127.0.0.1:2'}\n",
        )
        .unwrap();
        assert_eq!(loader().unwrap().len(), 2);
        std::fs::write(
            &path,
            "directory:\n  static:\n    actors:\n    - {atespace: a, name: one, endpoint: 'x'}\n",
        )
        .unwrap();
        let e = match loader() {
            Ok(_) => panic!("broken edit accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(r#"directory.static.actors[0].endpoint: invalid socket address "x""#),
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
