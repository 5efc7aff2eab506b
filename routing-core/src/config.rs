//! The config sections routing-core owns (DESIGN §1): `routing` (how requests name actors and
//! how workers are reached), `resolver` (DESIGN §4 tuning) and `directory` (where actors are
//! looked up), with their defaults, validation and conversion into [`Extractor`],
//! [`WorkerTransport`], [`ResolverSettings`] and [`DirectorySettings`].
//!
//! Problems are reported with paths relative to the section (`backoff.jitter`); the composer of
//! the whole file prefixes them with the section's path ([`FieldErrors::extend_prefixed`]).
//! `directory` is the exception, see [`DirectoryConfig::settings`].
//!
//! A section's defaults are those of the settings it converts into where such settings have a
//! `Default` ([`ResolverSettings::default`]), so each default is written once.
//!
//! The helpers every section uses (reading a file with a size cap, YAML with field paths, range
//! and address checks) are in [`runtime::config`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use identity::config::{check_client_material, existing_file, resolve_path};
use runtime::config::{FieldError, FieldErrors, check_duration, parse_yaml, read_file};
use serde::{Deserialize, Serialize};

use crate::directory::AddressFamily;
use crate::directory::ateapi::{AteApiSettings, TlsMode};
use crate::directory::static_dir::{
    StaticActorSpec, StaticDirectorySpec, StaticLoader, ValidStaticSpec,
};
use crate::extract::{
    ConflictPolicy, DEFAULT_ATESPACE, DEFAULT_HOST_SUFFIX, ExtractorConfigError, ExtractorKind,
};
use crate::resolver::BackoffSettings;
use crate::{Extractor, ResolverSettings, WorkerTransport};

/// The path of the `directory` section in the config file: an inline static directory is
/// reloaded by reading it there again.
pub const DIRECTORY_SECTION: &str = "directory";

/// How requests name actors and how workers are reached (`routing`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The extractors, in the order they are tried.
    pub extractors: Vec<ExtractorKind>,
    /// Domain suffix of actor hosts (`<name>.<atespace>.<suffix>`).
    pub host_suffix: String,
    /// Atespace of legacy `<name>.<suffix>` hosts; required by the `legacy_host` extractor.
    pub default_atespace: Option<String>,
    /// `ate-target-actor` and the authority name different actors: `refuse` (400, default) or
    /// `first_extractor_wins` (the extractor order decides).
    pub conflicting_actors: ConflictPolicy,
    /// How workers are dialed.
    pub worker_transport: WorkerTransportConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            extractors: vec![
                ExtractorKind::Header,
                ExtractorKind::Host,
                ExtractorKind::LegacyHost,
            ],
            host_suffix: DEFAULT_HOST_SUFFIX.to_owned(),
            default_atespace: Some(DEFAULT_ATESPACE.to_owned()),
            conflicting_actors: ConflictPolicy::default(),
            worker_transport: WorkerTransportConfig::default(),
        }
    }
}

impl RoutingConfig {
    /// The request → actor extractor; a problem names `host_suffix`, `default_atespace` or
    /// `extractors`.
    pub fn extractor(&self) -> Result<Extractor, FieldErrors> {
        Extractor::new(
            self.extractors.clone(),
            &self.host_suffix,
            self.default_atespace.as_deref(),
        )
        .map(|e| e.with_conflict_policy(self.conflicting_actors))
        .map_err(|e| {
            let field = match e {
                ExtractorConfigError::BadSuffix(_) => "host_suffix",
                ExtractorConfigError::BadDefaultAtespace(..) => "default_atespace",
                _ => "extractors",
            };
            FieldError::new(field, e.to_string()).into()
        })
    }

    /// How the resolver reaches workers; agent mode needs a port other than 0.
    pub fn worker_transport(&self) -> Result<WorkerTransport, FieldErrors> {
        let wt = &self.worker_transport;
        match wt.mode {
            WorkerMode::Plain => Ok(WorkerTransport::Plain),
            WorkerMode::Agent if wt.agent_port == 0 => {
                Err(FieldError::new("worker_transport.agent_port", "must not be 0").into())
            }
            WorkerMode::Agent => Ok(WorkerTransport::Agent {
                port: wt.agent_port,
            }),
        }
    }
}

/// `plain` (worker_pod_ip:<actor port>) or `agent` (worker_pod_ip:<agent_port> over mTLS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTransportConfig {
    /// `plain` or `agent`.
    #[serde(default)]
    pub mode: WorkerMode,
    /// The worker agent's port (agent mode).
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
    /// Plain HTTP to the actor port.
    #[default]
    Plain,
    /// mTLS to the worker agent.
    Agent,
}

/// Resolver tuning (`resolver`, DESIGN §4); defaults are [`ResolverSettings::default`]'s.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// Time budget of one lookup and the longest a request waits for one.
    #[serde(with = "humantime_serde")]
    pub budget: Duration,
    /// Retry backoff.
    pub backoff: BackoffConfig,
    /// Requests that may wait for resuming actors at once.
    pub parking_limit: usize,
    /// Route cache for RUNNING actors.
    pub route_cache: RouteCacheConfig,
    /// Ask `GetActor` before `ResumeActor`, so running actors never need a parking slot.
    pub probe_with_get_actor: bool,
    /// The `boot` flag sent with `ResumeActor`.
    pub resume_boot: bool,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        let s = ResolverSettings::default();
        Self {
            budget: s.budget,
            backoff: BackoffConfig::default(),
            parking_limit: s.parking_limit,
            route_cache: RouteCacheConfig::default(),
            probe_with_get_actor: s.probe_with_get,
            resume_boot: s.resume_boot,
        }
    }
}

impl ResolverConfig {
    /// The resolver's settings with `worker_transport` (from `routing`), after checking every
    /// range.
    pub fn settings(
        &self,
        worker_transport: WorkerTransport,
    ) -> Result<ResolverSettings, FieldErrors> {
        let mut errs = FieldErrors::default();
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        check_duration(&mut errs, "budget", self.budget, ms(10), s(600));
        let b = &self.backoff;
        check_duration(&mut errs, "backoff.initial", b.initial, ms(1), s(60));
        check_duration(&mut errs, "backoff.max", b.max, b.initial, s(300));
        if !(1.0..=10.0).contains(&b.factor) {
            errs.push(
                "backoff.factor",
                format!("{} is out of range (1 to 10)", b.factor),
            );
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            errs.push(
                "backoff.jitter",
                format!("{} is out of range (0 to 1)", b.jitter),
            );
        }
        if self.parking_limit == 0 || self.parking_limit > 1_000_000 {
            errs.push(
                "parking_limit",
                format!("{} is out of range (1 to 1000000)", self.parking_limit),
            );
        }
        let c = &self.route_cache;
        check_duration(&mut errs, "route_cache.ttl", c.ttl, Duration::ZERO, s(3600));
        if c.max_entries == 0 || c.max_entries > 10_000_000 {
            errs.push(
                "route_cache.max_entries",
                format!("{} is out of range (1 to 10000000)", c.max_entries),
            );
        }
        errs.into_result(ResolverSettings {
            budget: self.budget,
            backoff: BackoffSettings {
                initial: b.initial,
                factor: b.factor,
                jitter: b.jitter,
                max: b.max,
            },
            parking_limit: self.parking_limit,
            cache_ttl: c.ttl,
            cache_max_entries: c.max_entries,
            worker_transport,
            probe_with_get: self.probe_with_get_actor,
            resume_boot: self.resume_boot,
        })
    }
}

/// Retry backoff (`resolver.backoff`); defaults are [`BackoffSettings::default`]'s.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// First delay.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth of each next delay.
    pub factor: f64,
    /// Fraction of each delay added or removed at random.
    pub jitter: f64,
    /// Longest delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        let b = BackoffSettings::default();
        Self {
            initial: b.initial,
            factor: b.factor,
            jitter: b.jitter,
            max: b.max,
        }
    }
}

/// Route cache for RUNNING actors (`resolver.route_cache`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCacheConfig {
    /// How long a route is served from the cache; `0s` disables the cache.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most cached routes.
    pub max_entries: u64,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        let s = ResolverSettings::default();
        Self {
            ttl: s.cache_ttl,
            max_entries: s.cache_max_entries,
        }
    }
}

/// Where actors are looked up (`directory`): exactly one of `static` or `ateapi`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The embedded static directory.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_: Option<StaticConfig>,
    /// The real control plane.
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
    /// How long a simulated resume takes.
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
    /// The actors, inline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<StaticActorSpec>,
}

impl StaticConfig {
    fn spec(&self) -> StaticDirectorySpec {
        StaticDirectorySpec {
            resume_delay: self.resume_delay,
            latency: self.latency,
            actors: self.actors.clone(),
        }
    }
}

/// The real control plane (`directory.ateapi`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AteApiConfig {
    /// `host:port` of ate-api-server (no scheme: `tls` decides it).
    pub address: String,
    /// `plaintext`, `tls` or `mtls`. Required, with no default: the real ate-api-server requires
    /// mTLS, and a forgotten key must not silently mean plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
    /// CA bundle of the server certificate (tls, mtls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (mtls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file` (mtls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name expected in the server certificate; defaults to the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// File holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Bound on one connection attempt (DNS, TCP, TLS).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline sent with each RPC.
    #[serde(default = "default_rpc_timeout", with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// Which of a dual-stack worker's addresses to dial (`ipv4` or `ipv6`, default `ipv4`):
    /// upstream v0.4 sends up to two in `worker_pod_ips` (DESIGN §9); the first of this family
    /// is used, else the first of the other.
    #[serde(default)]
    pub worker_address_family: AddressFamily,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_rpc_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The chosen directory back-end, validated.
pub enum DirectorySettings {
    /// The embedded static directory.
    Static {
        /// Reads and validates the source again (at start and on every change).
        loader: StaticLoader,
        /// The file to watch for changes.
        watch: PathBuf,
        /// The actors read at load time.
        initial: ValidStaticSpec,
    },
    /// ate-api-server.
    AteApi {
        /// The control-plane client's settings (address, TLS, timeouts, token), validated.
        settings: AteApiSettings,
        /// Which of a dual-stack worker's addresses to dial.
        worker_address_family: AddressFamily,
    },
}

impl DirectoryConfig {
    /// The directory back-end, reading an actors file (or, for inline actors, preparing to
    /// re-read `config_file`, the file this section is in, at [`DIRECTORY_SECTION`]). Relative
    /// files are resolved against `config_file`'s directory.
    ///
    /// Unlike the other sections, problems carry full paths: the section's own
    /// (`directory.static.actors[2].endpoint`), or, for problems inside a separate actors file,
    /// that file's (`/etc/actorgate/actors.yaml: actors[2].endpoint`). Compose them unprefixed.
    pub fn settings(&self, config_file: &Path) -> Result<DirectorySettings, FieldErrors> {
        let base = config_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match (&self.static_, &self.ateapi) {
            (Some(_), Some(_)) => Err(FieldError::new(
                DIRECTORY_SECTION,
                "set exactly one of static or ateapi, not both",
            )
            .into()),
            (None, None) => {
                Err(FieldError::new(DIRECTORY_SECTION, "set one of static or ateapi").into())
            }
            (Some(st), None) => static_settings(st, &base, config_file),
            (None, Some(api)) => {
                let mut errs = FieldErrors::default();
                let at = format!("{DIRECTORY_SECTION}.ateapi");
                let got = errs.collect(&at, api.settings(&base));
                match got {
                    Some((settings, worker_address_family)) => Ok(DirectorySettings::AteApi {
                        settings,
                        worker_address_family,
                    }),
                    None => Err(errs),
                }
            }
        }
    }
}

/// The document around the `directory` section, read again to reload inline actors; the other
/// sections are not looked at.
#[derive(Deserialize)]
struct DirectoryOnly {
    #[serde(default)]
    directory: Option<DirectoryConfig>,
}

fn static_settings(
    st: &StaticConfig,
    base: &Path,
    config_file: &Path,
) -> Result<DirectorySettings, FieldErrors> {
    let at = format!("{DIRECTORY_SECTION}.static");
    match &st.file {
        Some(file) => {
            if !st.actors.is_empty() || st.resume_delay.is_some() || st.latency.is_some() {
                return Err(FieldError::new(
                    format!("{at}.file"),
                    "put actors and resume_delay in the file, or inline here, not both",
                )
                .into());
            }
            let file = resolve_path(base, file);
            let f = file.clone();
            let loader: StaticLoader = Arc::new(move || {
                let text = read_file(&f).map_err(|e| one_error(&f, e.to_string()))?;
                let spec: StaticDirectorySpec = parse_yaml(&text).map_err(|e| in_file(&f, e))?;
                spec.validate("").map_err(|e| in_file(&f, e))
            });
            let initial = loader()?;
            Ok(DirectorySettings::Static {
                loader,
                watch: file,
                initial,
            })
        }
        None => {
            // Inline actors: reload re-reads this config file and takes directory.static from it.
            let cfg = config_file.to_path_buf();
            let section = at.clone();
            let loader: StaticLoader = Arc::new(move || {
                let text = read_file(&cfg).map_err(|e| one_error(&cfg, e.to_string()))?;
                let doc: DirectoryOnly = parse_yaml(&text).map_err(|e| in_file(&cfg, e))?;
                let st = doc.directory.and_then(|d| d.static_).ok_or_else(|| {
                    one_error(
                        &cfg,
                        format!("{section} was removed; keeping the previous actors"),
                    )
                })?;
                st.spec().validate(&section).map_err(|e| in_file(&cfg, e))
            });
            // Validate what was just parsed, with paths relative to the config.
            let initial = st.spec().validate(&at)?;
            Ok(DirectorySettings::Static {
                loader,
                watch: config_file.to_path_buf(),
                initial,
            })
        }
    }
}

/// Prefixes each problem found in an actors file with the file, so every line says where it is.
fn in_file(file: &Path, errs: FieldErrors) -> FieldErrors {
    FieldErrors(
        errs.into_iter()
            .map(|e| {
                let path = if e.path.is_empty() {
                    file.display().to_string()
                } else {
                    format!("{}: {}", file.display(), e.path)
                };
                FieldError::new(path, e.message)
            })
            .collect(),
    )
}

fn one_error(path: &Path, message: String) -> FieldErrors {
    FieldError::new(path.display().to_string(), message).into()
}

impl AteApiConfig {
    /// The control-plane client's settings and the worker address family, after checking the
    /// address, that `tls` is set and its files exist and load as the client will use them, and
    /// the timeouts; relative files are resolved against `base`.
    pub fn settings(&self, base: &Path) -> Result<(AteApiSettings, AddressFamily), FieldErrors> {
        let mut errs = FieldErrors::default();
        if self.tls.is_none() {
            errs.push(
                "tls",
                "is required: mtls (what ate-api-server requires), tls, or plaintext written out",
            );
        }
        if let Some(reason) = address_problem(&self.address, self.tls.as_ref()) {
            errs.push("address", reason);
        }
        let file = |errs: &mut FieldErrors,
                    field: &str,
                    p: &Option<PathBuf>,
                    required: bool|
         -> Option<PathBuf> {
            match p {
                Some(p) => {
                    let before = errs.len();
                    let full = existing_file(errs, field, base, p);
                    (errs.len() == before).then_some(full)
                }
                None if required => {
                    errs.push(field, "is required for this tls mode");
                    None
                }
                None => None,
            }
        };
        let (needs_ca, needs_cert) = match &self.tls {
            Some(TlsMode::Plaintext) | None => (false, false),
            Some(TlsMode::Tls) => (true, false),
            Some(TlsMode::Mtls) => (true, true),
        };
        let ca_file = file(&mut errs, "ca_file", &self.ca_file, needs_ca);
        let cert_file = file(&mut errs, "cert_file", &self.cert_file, needs_cert);
        let key_file = file(&mut errs, "key_file", &self.key_file, needs_cert);
        if needs_ca {
            errs.extend(check_client_material(
                ca_file.as_deref(),
                cert_file.as_deref().zip(key_file.as_deref()),
            ));
        }
        let token_file = file(&mut errs, "token_file", &self.token_file, false);
        check_duration(
            &mut errs,
            "connect_timeout",
            self.connect_timeout,
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        check_duration(
            &mut errs,
            "rpc_timeout",
            self.rpc_timeout,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        );
        let (Some(tls), true) = (self.tls.clone(), errs.is_empty()) else {
            return Err(errs);
        };
        Ok((
            AteApiSettings {
                address: self.address.clone(),
                tls,
                ca_file,
                cert_file,
                key_file,
                server_name: self.server_name.clone(),
                token_file,
                connect_timeout: self.connect_timeout,
                rpc_timeout: self.rpc_timeout,
            },
            self.worker_address_family,
        ))
    }
}

/// What is wrong with `directory.ateapi.address`, if anything: it must be `host:port` (a DNS
/// name, an IPv4 address or a bracketed IPv6 address, and a port 1..65535) without a scheme,
/// because `tls` decides between http and https; a scheme that contradicts `tls` is named.
fn address_problem(address: &str, tls: Option<&TlsMode>) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(errs: &FieldErrors) -> Vec<&str> {
        errs.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn resolver_defaults_are_the_settings_defaults_and_ranges_name_fields() {
        let s = ResolverConfig::default()
            .settings(WorkerTransport::Plain)
            .unwrap();
        let d = ResolverSettings::default();
        assert_eq!(
            (s.budget, s.parking_limit, s.cache_ttl, s.backoff),
            (d.budget, d.parking_limit, d.cache_ttl, d.backoff)
        );
        let bad: ResolverConfig =
            parse_yaml("{parking_limit: 0, backoff: {jitter: 2}, budget: 0s}").unwrap();
        let errs = bad.settings(WorkerTransport::Plain).unwrap_err();
        assert_eq!(paths(&errs), ["budget", "backoff.jitter", "parking_limit"]);
    }

    #[test]
    fn routing_problems_name_their_field() {
        let r: RoutingConfig = parse_yaml("{host_suffix: 'bad_suffix'}").unwrap();
        assert_eq!(paths(&r.extractor().unwrap_err()), ["host_suffix"]);
        let r: RoutingConfig =
            parse_yaml("{worker_transport: {mode: agent, agent_port: 0}}").unwrap();
        assert_eq!(
            paths(&r.worker_transport().unwrap_err()),
            ["worker_transport.agent_port"]
        );
        let r: RoutingConfig = parse_yaml("{worker_transport: {mode: agent}}").unwrap();
        assert_eq!(
            r.worker_transport().unwrap(),
            WorkerTransport::Agent { port: 443 }
        );
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse_yaml::<ResolverConfig>("budgett: 1s").unwrap_err();
        assert!(e.to_string().starts_with("budgett: unknown field"), "{e}");
    }

    #[test]
    fn ateapi_problems_are_relative_to_the_section() {
        let api: AteApiConfig =
            parse_yaml("{address: 'https://api:8443', tls: plaintext, rpc_timeout: 1ms}").unwrap();
        let errs = api.settings(Path::new("/nonexistent")).unwrap_err();
        assert_eq!(paths(&errs), ["address", "rpc_timeout"]);
        assert!(
            errs.to_string()
                .contains("https:// means TLS but tls is plaintext"),
            "{errs}"
        );
        let api: AteApiConfig = parse_yaml("{address: 'api:8443', tls: mtls}").unwrap();
        let errs = api.settings(Path::new("/nonexistent")).unwrap_err();
        assert_eq!(paths(&errs), ["ca_file", "cert_file", "key_file"]);
    }

    #[test]
    fn inline_actors_reload_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actorgate.yaml");
        let section = |actors: &str| {
            format!(
                "admin: {{listen: '127.0.0.1:0'}}\ndirectory:\n  static:\n    actors:\n{actors}"
            )
        };
        let one = "    - {atespace: a, name: one, endpoint: '127.0.0.1:1'}\n";
        std::fs::write(&path, section(one)).unwrap();
        let doc: DirectoryOnly = parse_yaml(&section(one)).unwrap();
        let Ok(DirectorySettings::Static {
            loader,
            watch,
            initial,
        }) = doc.directory.unwrap().settings(&path)
        else {
            panic!("static expected");
        };
        assert_eq!(watch, path);
        assert_eq!(initial.len(), 1);
        let two = format!("{one}    - {{atespace: a, name: two, endpoint: '127.0.0.1:2'}}\n");
        std::fs::write(&path, section(&two)).unwrap();
        assert_eq!(loader().unwrap().len(), 2);
        std::fs::write(
            &path,
            section("    - {atespace: a, name: one, endpoint: 'x'}\n"),
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
        std::fs::write(&path, "admin: {listen: '127.0.0.1:0'}\n").unwrap();
        let e = match loader() {
            Ok(_) => panic!("removed section accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.ends_with("directory.static was removed; keeping the previous actors"),
            "{e}"
        );
    }

    #[test]
    fn a_separate_actors_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let actors = dir.path().join("actors.yaml");
        std::fs::write(
            &actors,
            "actors:\n- {atespace: a, name: b, endpoint: 'nope'}\n",
        )
        .unwrap();
        let d: DirectoryConfig = parse_yaml("{static: {file: actors.yaml}}").unwrap();
        let e = match d.settings(&dir.path().join("actorgate.yaml")) {
            Ok(_) => panic!("bad endpoint accepted"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            e,
            format!(
                "{}: actors[0].endpoint: invalid socket address \"nope\"",
                actors.display()
            )
        );
    }
}
