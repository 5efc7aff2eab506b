//! The `egress` config section (DESIGN §7): the PEP's tunnel listener and its mTLS, how actor
//! identities are accepted, actor liveness caching, where policies come from, the PEP's own
//! resolver, the guard's address lists, limits and the audit sink.
//!
//! The section is off unless the config file writes it (the binary composes that rule); when
//! on, `tls` is required and the listener always requires client certificates. Problems are
//! reported with paths relative to the section (`policy.files[1]`, `guard.exempt[0]`), one per
//! line; the composer prefixes them with `egress`. [`EgressConfig::settings`] turns a valid
//! section into [`EgressSettings`], whose `*_settings()` converters give each PEP module its
//! settings.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use identity::config::{ServerTlsConfig, existing_file};
use identity::tls::{ClientAuth, ServerTlsFiles};
use ipnet::IpNet;
use runtime::config::{FieldErrors, check_duration, item, socket_addr};
use serde::{Deserialize, Serialize};

/// The PEP's default tunnel listener (DESIGN §8: PEP 15008).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15008";

/// The private ranges hostname rules reach only when the rule says so (DESIGN §7.2): RFC 1918,
/// CGNAT and IPv6 ULA.
pub const DEFAULT_PRIVATE: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// The `egress` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Whether the PEP runs. The binary turns it off when the file has no `egress` section.
    pub enabled: bool,
    /// The tunnel listener, `ip:port` (any port, 443 included).
    pub listen: String,
    /// The listener's certificate and the CA of client certificates; required when enabled.
    /// ALPN is always `h2`, `http/1.1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<EgressTlsConfig>,
    /// The trust domain of actor SPIFFE IDs (DESIGN §6).
    pub trust_domain: String,
    /// Accept the older actor spelling `spiffe://<td>/atespace/<atespace>/actor/<name>`.
    pub accept_legacy_actor_ids: bool,
    /// Accept (and check) upstream's older ActorIdentity certificate extension; its UID is then
    /// compared with the control plane's.
    pub accept_actor_identity_extension: bool,
    /// Tunnel agents that serve several actors with one component certificate.
    pub agents: AgentsConfig,
    /// Actor liveness (`GetActor` RUNNING) caching.
    pub liveness: LivenessConfig,
    /// Where actors' policies come from.
    pub policy: PolicyConfig,
    /// The PEP's own DNS resolver (hostname rules dial by name).
    pub resolver: EgressResolverConfig,
    /// The SSRF floor's operator lists.
    pub guard: GuardConfig,
    /// Tunnel limits and timeouts.
    pub limits: EgressLimitsConfig,
    /// The decision audit stream.
    pub audit: AuditConfig,
    /// TLS interception for `https` rules (DESIGN §7.2); absent: `https` rules deny with
    /// `interception not configured`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interception: Option<InterceptionConfig>,
    /// Actor-to-actor forwarding through ingress (DESIGN §7.4); absent: traffic to actor hosts
    /// is denied with `actor_forwarding_not_configured`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_forwarding: Option<ActorForwardingConfig>,
    /// Credential sources of `replace_headers` effects (DESIGN §7.3).
    pub credentials: CredentialsConfig,
}

/// `egress.credentials`: where `credential_uri` secrets come from (providers by URI class) and
/// how long they are reused (DESIGN §7.3, §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// One entry per provider class (the authority of `ate-secret://<class>/…`).
    pub providers: Vec<CredentialProviderConfig>,
    /// How long a fetched secret is reused for the same actor and URI.
    #[serde(with = "humantime_serde")]
    pub secret_ttl: Duration,
    /// Most cached secrets (and, separately, actor tokens).
    pub max_entries: u64,
    /// Longest wait for one provider answer or actor token.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        let l = crate::credentials::CredentialLimits::default();
        Self {
            providers: Vec::new(),
            secret_ttl: l.secret_ttl,
            max_entries: l.max_entries,
            fetch_timeout: l.fetch_timeout,
        }
    }
}

/// One credential provider: exactly one of `grpc`, `files`, `env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialProviderConfig {
    /// The provider class it serves (`ate-secret://<class>/…`).
    pub class: String,
    /// Upstream's `credprovider.CredentialProvider` over mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcProviderConfig>,
    /// Files under a directory: `<dir>/<name>/<tail>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesProviderConfig>,
    /// Environment variables named by the URI's tail, only those listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvProviderConfig>,
}

/// `grpc`: a credential provider service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcProviderConfig {
    /// `host:port`.
    pub address: String,
    /// The name its certificate must carry; default: the host of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Its CA bundle; default: `egress.tls.client_ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The PEP's client certificate; default: `egress.tls.cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its key; default: `egress.tls.key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `files`: a directory of secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesProviderConfig {
    /// The directory (relative to the config file).
    pub dir: PathBuf,
}

/// `env`: environment variables of the PEP's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvProviderConfig {
    /// The variables that may be read (exact names).
    pub allow: Vec<String>,
}

/// A validated credential provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderSettings {
    /// FetchSecret over mTLS.
    Grpc(PeerTls),
    /// A directory (resolved).
    Files(PathBuf),
    /// Allowed variable names.
    Env(Vec<String>),
}

/// Validated `egress.credentials`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsSettings {
    /// Providers by class.
    pub providers: Vec<(String, ProviderSettings)>,
    /// Cache and fetch bounds.
    pub limits: crate::credentials::CredentialLimits,
}

/// `egress.actor_forwarding`: where ingress's HTTPS listener is, how the PEP proves itself to it
/// (a component certificate ingress lists in `ingress.https.trusted_peers`), and which original
/// destinations are ingress (DESIGN §7.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorForwardingConfig {
    /// Ingress's HTTPS listener, `host:port` (`10.96.0.20:8443`, `actorgate.ate-system:8443`).
    pub ingress: String,
    /// The name ingress's certificate must carry; default: the host of `ingress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The CA bundle ingress's certificate chains to; default: `egress.tls.client_ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The PEP's client certificate for ingress; default: `egress.tls.cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its key; default: `egress.tls.key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Original destinations that are ingress (the address actor host names resolve to, e.g.
    /// its Service IP): `ip` (every port) or `ip:port`. Traffic to them is actor traffic even
    /// without an actor host in its SNI or authority.
    #[serde(default)]
    pub ingress_addresses: Vec<String>,
}

/// A TLS peer the PEP dials as a client with its own identity (ingress, a credential
/// provider): validated, paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// `host:port`.
    pub address: String,
    /// The name the peer's certificate must carry.
    pub server_name: String,
    /// The CA bundle of the peer's certificate.
    pub ca_file: PathBuf,
    /// The PEP's client certificate.
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
}

/// Validated `egress.actor_forwarding`, paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorForwardingSettings {
    /// Ingress's HTTPS listener and how the PEP reaches it.
    pub ingress: PeerTls,
    /// Original destinations that are ingress.
    pub ingress_addresses: Vec<crate::actor_hosts::IngressAddress>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_LISTEN.to_owned(),
            tls: None,
            trust_domain: identity::spiffe::DEFAULT_TRUST_DOMAIN.to_owned(),
            accept_legacy_actor_ids: false,
            accept_actor_identity_extension: false,
            agents: AgentsConfig::default(),
            liveness: LivenessConfig::default(),
            policy: PolicyConfig::default(),
            resolver: EgressResolverConfig::default(),
            guard: GuardConfig::default(),
            limits: EgressLimitsConfig::default(),
            audit: AuditConfig::default(),
            interception: None,
            actor_forwarding: None,
            credentials: CredentialsConfig::default(),
        }
    }
}

/// `egress.interception`: the interception CA (reloaded when its files change), the leaves it
/// mints, and the trust of re-originated TLS (DESIGN §7.2 `https` rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptionConfig {
    /// The interception CA's certificate (PEM, exactly one; `actorgate dev-ca intercept-ca`
    /// writes one). Actors must trust it.
    pub ca_cert_file: PathBuf,
    /// The CA's private key (PEM).
    pub ca_key_file: PathBuf,
    /// Lifetime of a minted leaf (clamped to the CA's `notAfter`). Default 15m; 1m to 7d.
    #[serde(default = "default_leaf_lifetime", with = "humantime_serde")]
    pub leaf_lifetime: Duration,
    /// A cached leaf is replaced this long before it expires. Default 5m; below
    /// `leaf_lifetime`.
    #[serde(default = "default_renew_before", with = "humantime_serde")]
    pub renew_before: Duration,
    /// Leaves cached at most (one per name). Default 10000.
    #[serde(default = "default_max_leaves")]
    pub max_leaves: u64,
    /// Leaves minted at the same time at most (key generation runs off the request path).
    /// Default 4.
    #[serde(default = "default_max_concurrent_mints")]
    pub max_concurrent_mints: usize,
    /// The TLS handshake with the actor must finish within this. Default 10s.
    #[serde(default = "default_intercept_handshake", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A ClientHello no rule allows is intercepted too and every request answered
    /// `403 egress denied` (no upstream contacted), so the agent sees why; `false` closes the
    /// connection instead. Default true (DESIGN §7.2).
    #[serde(default = "yes")]
    pub readable_denials: bool,
    /// Trust of the re-originated TLS connections.
    #[serde(default)]
    pub upstream: UpstreamTrustConfig,
}

/// `egress.interception.upstream`: the roots re-originated TLS is verified against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTrustConfig {
    /// Trust the operating system's root store. Default true.
    pub system_roots: bool,
    /// Further CA certificates (PEM files, relative to the config file) to trust.
    pub extra_ca_files: Vec<PathBuf>,
}

impl Default for UpstreamTrustConfig {
    fn default() -> Self {
        Self {
            system_roots: true,
            extra_ca_files: Vec::new(),
        }
    }
}

fn default_leaf_lifetime() -> Duration {
    crate::intercept_ca::MinterSettings::default().lifetime
}
fn default_renew_before() -> Duration {
    crate::intercept_ca::MinterSettings::default().renew_before
}
fn default_max_leaves() -> u64 {
    crate::intercept_ca::MinterSettings::default().max_entries
}
fn default_max_concurrent_mints() -> usize {
    crate::intercept_ca::MinterSettings::default().max_concurrent_mints
}
fn default_intercept_handshake() -> Duration {
    Duration::from_secs(10)
}
fn yes() -> bool {
    true
}

/// A valid `egress.interception` section, paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptionSettings {
    /// The CA certificate file.
    pub ca_cert_file: PathBuf,
    /// The CA key file.
    pub ca_key_file: PathBuf,
    /// Leaf lifetime, renewal and cache bounds.
    pub minter: crate::intercept_ca::MinterSettings,
    /// The actor handshake's deadline.
    pub handshake_timeout: Duration,
    /// Whether denied ClientHellos are intercepted to answer `403` readably.
    pub readable_denials: bool,
    /// Trust the system roots upstream.
    pub system_roots: bool,
    /// Extra upstream CA files (resolved).
    pub extra_ca_files: Vec<PathBuf>,
}

/// `egress.tls`: the tunnel listener's TLS (reloaded on change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressTlsConfig {
    /// PEM certificate chain the PEP presents (its DNS name: atunnel sends it as SNI).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// CA bundle for actor and agent client certificates.
    pub client_ca_file: PathBuf,
    /// Must be `required` (the default): tunnels are identified by their client certificate.
    #[serde(default = "required")]
    pub client_auth: ClientAuth,
}

fn required() -> ClientAuth {
    ClientAuth::Required
}

/// `egress.agents`: component certificates allowed to open tunnels for actors they name in an
/// `ate-egress-assertion` (DESIGN §6). Empty `allow`: only actor certificates are accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Component SPIFFE IDs (`spiffe://<td>/ns/<ns>/sa/<sa>`) on the allow-list.
    pub allow: Vec<String>,
    /// How their assertions are verified; required when `allow` is not empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assertion: Option<AssertionConfig>,
}

/// `egress.agents.assertion`: the egress assertion verifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// JWKS file with the agents' signing keys (reloaded on change).
    pub jwks_file: PathBuf,
    /// Accepted `iss` values (at least one).
    pub issuers: Vec<String>,
    /// The audience assertions must name (the PEP).
    pub audience: String,
    /// How many `jti`s the replay cache holds (default 100000).
    #[serde(default = "default_replay_capacity")]
    pub replay_capacity: usize,
    /// Clock skew allowed on `iat`/`nbf`/`exp` (default 30s).
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

fn default_replay_capacity() -> usize {
    100_000
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// `egress.liveness`: how long a `GetActor` answer is reused per actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// Reuse an answer this long (0s: ask the control plane for every tunnel, as upstream).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Actors cached at most.
    pub max_entries: u64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(2),
            max_entries: 100_000,
        }
    }
}

/// Which policy source serves the PEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicySourceKind {
    /// YAML policy files with selectors (the embedded default).
    #[default]
    Files,
    /// Upstream's `GetActorEgressPolicy` over the `directory.ateapi` connection.
    Ateapi,
}

impl PolicySourceKind {
    /// `files` or `ateapi`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySourceKind::Files => "files",
            PolicySourceKind::Ateapi => "ateapi",
        }
    }
}

/// `egress.policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `files` or `ateapi`.
    pub source: PolicySourceKind,
    /// Policy files (relative to the config file), required with `source: files`; watched and
    /// reloaded, a bad edit keeps the previous set.
    pub files: Vec<PathBuf>,
    /// `ateapi`: how long a fetched policy (or "no policy") is reused per actor.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// `ateapi`: actors cached at most.
    pub max_entries: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            source: PolicySourceKind::Files,
            files: Vec::new(),
            ttl: Duration::from_secs(10),
            max_entries: 100_000,
        }
    }
}

/// `egress.resolver`: the PEP's own resolver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressResolverConfig {
    /// Names answered from the config, before and instead of DNS (tests, air-gapped sites).
    #[serde(rename = "static")]
    pub static_: BTreeMap<String, Vec<String>>,
    /// Ask DNS for names without a static entry (false: static entries only).
    pub system: bool,
    /// DNS servers (`ip:port`) to ask instead of `/etc/resolv.conf`'s; empty: the system's.
    pub name_servers: Vec<String>,
    /// Names cached at most.
    pub cache_size: u64,
    /// Answers are cached at least this long.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// And at most this long, whatever their TTL.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// One lookup's time budget.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for EgressResolverConfig {
    fn default() -> Self {
        Self {
            static_: BTreeMap::new(),
            system: true,
            name_servers: Vec::new(),
            cache_size: 4096,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
        }
    }
}

/// `egress.guard`: the operator's lists (DESIGN §7.2 guard). The guarded list itself (loopback,
/// link-local, metadata addresses, the PEP's own listeners …) is fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Private ranges: hostname rules reach them only with `allow_private`.
    pub private: Vec<String>,
    /// Ranges taken out of both lists (a lab's own loopback range); default none.
    pub exempt: Vec<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            private: DEFAULT_PRIVATE.iter().map(|s| (*s).to_owned()).collect(),
            exempt: Vec::new(),
        }
    }
}

/// `egress.limits`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressLimitsConfig {
    /// The tunnel's TLS handshake must finish within this, and then the CONNECT's request head
    /// (h2: the connection preface and first CONNECT) must arrive within this again.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest CONNECT (and cleartext request) head, bytes.
    pub max_header_bytes: usize,
    /// h2: CONNECT streams per connection.
    pub max_concurrent_streams: u32,
    /// h2: flow-control window per stream, bytes: how much an agent may send on a tunnel
    /// before the PEP has passed it on. Default 4 MiB (a bulk tunnel keeps moving across a
    /// round trip; `bench/agent.sh`).
    pub stream_window: u32,
    /// h2: flow-control window per connection, bytes: what all tunnels of one agent connection
    /// may have in flight towards the PEP together. Default 4 MiB (one bulk tunnel may use it
    /// all).
    pub connection_window: u32,
    /// A tunnel with no bytes either way this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Dialling an upstream address.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Reading a tunnel's first bytes (a whole TLS ClientHello or HTTP request head).
    #[serde(with = "humantime_serde")]
    pub classify_timeout: Duration,
    /// With no byte from the actor this long, the tunnel is opaque (server-first protocols).
    #[serde(with = "humantime_serde")]
    pub peek_timeout: Duration,
    /// Largest first flight classified, bytes (a ClientHello may span several records).
    pub classify_max_bytes: usize,
    /// How far a busy tunnel's buffers grow, bytes: the read-ahead under the tunnel's TLS and
    /// each splice direction (h2 tunnels: also at most `stream_window`) start small and double while
    /// reads keep filling them (bulk transfers cost less CPU per byte with larger batches);
    /// buffers exist only while bytes are in flight. A busy HTTP/1.1 tunnel holds at most about
    /// three times this. Default 1 MiB; 64 KiB to 64 MiB.
    pub stream_buffer_bytes: usize,
}

impl Default for EgressLimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 256,
            stream_window: 4 * 1024 * 1024,
            connection_window: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            classify_timeout: Duration::from_secs(5),
            peek_timeout: Duration::from_secs(1),
            classify_max_bytes: 16 * 1024 + 5,
            stream_buffer_bytes: crate::forward::DEFAULT_SPLICE_BUFFER_MAX,
        }
    }
}

/// `egress.audit`: one record per tunnel and per cleartext request, always to the log
/// (target `actorgate::audit`), and to a JSON-lines file when `file` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// JSON-lines file (relative to the config file), appended to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// Where the policies of a valid section come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySourceSettings {
    /// Policy files, paths resolved against the config file's directory.
    Files(Vec<PathBuf>),
    /// `GetActorEgressPolicy` over the directory's ateapi connection.
    Ateapi {
        /// Cache TTL per actor.
        ttl: Duration,
        /// Actors cached at most.
        max_entries: u64,
    },
}

/// The assertion verifier's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionSettings {
    /// JWKS file (resolved).
    pub jwks_file: PathBuf,
    /// Accepted issuers.
    pub issuers: Vec<String>,
    /// Required audience.
    pub audience: String,
    /// Replay cache capacity (`jti`s).
    pub replay_capacity: usize,
    /// Allowed clock skew.
    pub leeway: Duration,
}

/// A valid `egress` section, paths resolved and addresses parsed.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// The tunnel listener.
    pub listen: SocketAddr,
    /// The listener's TLS files (client certificate required, ALPN `h2`, `http/1.1`).
    pub tls: ServerTlsFiles,
    /// Actor SPIFFE IDs' trust domain.
    pub trust_domain: String,
    /// Accept the older actor spelling.
    pub accept_legacy_actor_ids: bool,
    /// Accept the ActorIdentity extension.
    pub accept_actor_identity_extension: bool,
    /// Allow-listed component SPIFFE IDs.
    pub agents: Vec<String>,
    /// Their assertions' verifier, when `agents` is not empty.
    pub assertion: Option<AssertionSettings>,
    /// Liveness cache TTL.
    pub liveness_ttl: Duration,
    /// Liveness cache size.
    pub liveness_max_entries: u64,
    /// The policy source.
    pub policy: PolicySourceSettings,
    /// Static resolver entries.
    pub static_entries: BTreeMap<String, Vec<IpAddr>>,
    /// Whether the system resolver is asked.
    pub system_resolver: bool,
    /// DNS servers replacing the system's.
    pub name_servers: Vec<SocketAddr>,
    /// The resolver's config as written (cache and TTL bounds).
    pub resolver: EgressResolverConfig,
    /// Private ranges.
    pub private: Vec<IpNet>,
    /// Exempt ranges.
    pub exempt: Vec<IpNet>,
    /// Limits.
    pub limits: EgressLimitsConfig,
    /// The audit file (resolved), if any.
    pub audit_file: Option<PathBuf>,
    /// Interception, when configured.
    pub interception: Option<InterceptionSettings>,
    /// Actor forwarding, when configured.
    pub actor_forwarding: Option<ActorForwardingSettings>,
    /// Credential sources.
    pub credentials: CredentialsSettings,
}

impl EgressSettings {
    /// The guard's operator lists.
    pub fn guard_settings(&self) -> crate::guard::GuardSettings {
        crate::guard::GuardSettings {
            private: self.private.clone(),
            exempt: self.exempt.clone(),
        }
    }

    /// The PEP resolver's settings.
    pub fn resolver_settings(&self) -> crate::resolve::ResolverSettings {
        crate::resolve::ResolverSettings {
            static_entries: self
                .static_entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            use_system: self.system_resolver,
            name_servers: self.name_servers.clone(),
            cache_size: self.resolver.cache_size,
            min_ttl: self.resolver.min_ttl,
            max_ttl: self.resolver.max_ttl,
            timeout: self.resolver.timeout,
        }
    }

    /// Limits of cleartext HTTP proxied inside a tunnel (request heads, idle tunnels).
    pub fn cleartext_limits(&self) -> crate::cleartext::CleartextLimits {
        crate::cleartext::CleartextLimits {
            max_header_bytes: self.limits.max_header_bytes,
            header_timeout: self.limits.header_read_timeout,
            idle: self.limits.idle_timeout,
        }
    }

    /// Limits of the tunnel listener: the TLS handshake is bounded by
    /// `limits.header_read_timeout` (the CONNECT head then gets the same time again).
    pub fn listener_limits(&self) -> runtime::listener::ListenerLimits {
        runtime::listener::ListenerLimits {
            tls_handshake_timeout: self.limits.header_read_timeout,
            // As the default (64 KiB + 256): a little over a whole number of records.
            read_ahead_bytes: self.limits.stream_buffer_bytes + 256,
            ..runtime::listener::ListenerLimits::default()
        }
    }

    /// Bounds of the tunnel server (CONNECT heads, h2 streams and windows, idle tunnels,
    /// liveness cache).
    pub fn tunnel_limits(&self) -> crate::tunnel::TunnelLimits {
        crate::tunnel::TunnelLimits {
            header_read_timeout: self.limits.header_read_timeout,
            max_header_bytes: self.limits.max_header_bytes,
            max_streams_per_connection: self.limits.max_concurrent_streams,
            idle_timeout: self.limits.idle_timeout,
            h2_stream_window: self.limits.stream_window,
            h2_connection_window: self.limits.connection_window,
            stream_buffer_bytes: self.limits.stream_buffer_bytes,
            liveness_ttl: self.liveness_ttl,
            liveness_capacity: self.liveness_max_entries,
        }
    }

    /// Bounds of the classification of a tunnel's first bytes.
    pub fn classify_limits(&self) -> crate::classify::ClassifyLimits {
        crate::classify::ClassifyLimits {
            max_bytes: self.limits.classify_max_bytes,
            timeout: self.limits.classify_timeout,
            peek_timeout: self.limits.peek_timeout,
        }
    }
}

/// The ALPN protocols the tunnel listener offers, in preference order.
pub fn tunnel_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

fn cidrs(errs: &mut FieldErrors, field: &str, list: &[String]) -> Vec<IpNet> {
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        match s.parse::<IpNet>() {
            Ok(net) if net != net.trunc() => errs.push(
                item(field, i),
                format!("{s:?} has host bits set (the network is {})", net.trunc()),
            ),
            Ok(net) => out.push(net),
            Err(_) => errs.push(
                item(field, i),
                format!("invalid CIDR {s:?} (want e.g. 10.0.0.0/8 or fc00::/7)"),
            ),
        }
    }
    out
}

/// Validates `egress.interception` (field paths relative to the section).
fn interception_settings(
    errs: &mut FieldErrors,
    base: &Path,
    i: &InterceptionConfig,
) -> InterceptionSettings {
    let ca_cert_file = existing_file(errs, "interception.ca_cert_file", base, &i.ca_cert_file);
    let ca_key_file = existing_file(errs, "interception.ca_key_file", base, &i.ca_key_file);
    check_duration(
        errs,
        "interception.leaf_lifetime",
        i.leaf_lifetime,
        Duration::from_secs(60),
        Duration::from_secs(7 * 86_400),
    );
    if i.renew_before >= i.leaf_lifetime {
        errs.push(
            "interception.renew_before",
            format!(
                "{} is not below leaf_lifetime ({})",
                humantime::format_duration(i.renew_before),
                humantime::format_duration(i.leaf_lifetime)
            ),
        );
    }
    if !(1..=10_000_000).contains(&i.max_leaves) {
        errs.push(
            "interception.max_leaves",
            format!("{} is out of range (1 to 10000000)", i.max_leaves),
        );
    }
    if !(1..=256).contains(&i.max_concurrent_mints) {
        errs.push(
            "interception.max_concurrent_mints",
            format!("{} is out of range (1 to 256)", i.max_concurrent_mints),
        );
    }
    check_duration(
        errs,
        "interception.handshake_timeout",
        i.handshake_timeout,
        Duration::from_millis(100),
        Duration::from_secs(120),
    );
    let extra_ca_files: Vec<PathBuf> = i
        .upstream
        .extra_ca_files
        .iter()
        .enumerate()
        .map(|(n, f)| {
            existing_file(
                errs,
                &item("interception.upstream.extra_ca_files", n),
                base,
                f,
            )
        })
        .collect();
    if !i.upstream.system_roots && extra_ca_files.is_empty() {
        errs.push(
            "interception.upstream",
            "trusts nothing: set system_roots: true or name extra_ca_files",
        );
    }
    InterceptionSettings {
        ca_cert_file,
        ca_key_file,
        minter: crate::intercept_ca::MinterSettings {
            lifetime: i.leaf_lifetime,
            renew_before: i.renew_before,
            max_entries: i.max_leaves,
            max_concurrent_mints: i.max_concurrent_mints,
        },
        handshake_timeout: i.handshake_timeout,
        readable_denials: i.readable_denials,
        system_roots: i.upstream.system_roots,
        extra_ca_files,
    }
}

/// Validates `egress.credentials` (field paths relative to the section).
fn credentials_settings(
    errs: &mut FieldErrors,
    base: &Path,
    c: &CredentialsConfig,
    tls: Option<&EgressTlsConfig>,
) -> CredentialsSettings {
    check_duration(
        errs,
        "credentials.secret_ttl",
        c.secret_ttl,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    check_duration(
        errs,
        "credentials.fetch_timeout",
        c.fetch_timeout,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    if !(1..=10_000_000).contains(&c.max_entries) {
        errs.push(
            "credentials.max_entries",
            format!("{} is out of range (1 to 10000000)", c.max_entries),
        );
    }
    let mut providers = Vec::with_capacity(c.providers.len());
    for (i, p) in c.providers.iter().enumerate() {
        let field = item("credentials.providers", i);
        let valid_class = !p.class.is_empty()
            && p.class.len() <= 253
            && p.class
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_class {
            errs.push(
                format!("{field}.class"),
                format!(
                    "{:?} is not a provider class (lowercase letters, digits, '-', '.')",
                    p.class
                ),
            );
        } else if c.providers[..i].iter().any(|o| o.class == p.class) {
            errs.push(format!("{field}.class"), format!("{:?} repeated", p.class));
        }
        let settings = match (&p.grpc, &p.files, &p.env) {
            (Some(g), None, None) => {
                match peer_tls(
                    errs,
                    base,
                    &format!("{field}.grpc"),
                    ("address", &g.address),
                    &g.server_name,
                    [&g.ca_file, &g.cert_file, &g.key_file],
                    tls,
                ) {
                    Some(peer) => ProviderSettings::Grpc(peer),
                    None => continue,
                }
            }
            (None, Some(d), None) => {
                let dir = identity::config::resolve_path(base, &d.dir);
                if !dir.is_dir() {
                    errs.push(
                        format!("{field}.files.dir"),
                        format!("{} is not a directory", dir.display()),
                    );
                }
                ProviderSettings::Files(dir)
            }
            (None, None, Some(e)) => {
                for (j, v) in e.allow.iter().enumerate() {
                    if v.is_empty() || v.contains('=') || v.contains('\0') || v.contains('/') {
                        errs.push(
                            item(&format!("{field}.env.allow"), j),
                            format!("{v:?} is not an environment variable name"),
                        );
                    }
                }
                ProviderSettings::Env(e.allow.clone())
            }
            _ => {
                errs.push(field, "set exactly one of grpc, files, env");
                continue;
            }
        };
        providers.push((p.class.clone(), settings));
    }
    CredentialsSettings {
        providers,
        limits: crate::credentials::CredentialLimits {
            secret_ttl: c.secret_ttl,
            max_entries: c.max_entries,
            fetch_timeout: c.fetch_timeout,
        },
    }
}

/// Validates `egress.actor_forwarding` (field paths relative to the section); `None` after a
/// problem was reported.
fn actor_forwarding_settings(
    errs: &mut FieldErrors,
    base: &Path,
    a: &ActorForwardingConfig,
    tls: Option<&EgressTlsConfig>,
) -> Option<ActorForwardingSettings> {
    let ingress = peer_tls(
        errs,
        base,
        "actor_forwarding",
        ("ingress", &a.ingress),
        &a.server_name,
        [&a.ca_file, &a.cert_file, &a.key_file],
        tls,
    );
    let mut ingress_addresses = Vec::with_capacity(a.ingress_addresses.len());
    for (i, s) in a.ingress_addresses.iter().enumerate() {
        if let Ok(ip) = s.parse::<IpAddr>() {
            ingress_addresses.push(crate::actor_hosts::IngressAddress::Ip(ip));
        } else if let Ok(sa) = s.parse::<SocketAddr>() {
            ingress_addresses.push(crate::actor_hosts::IngressAddress::Socket(sa));
        } else {
            errs.push(
                item("actor_forwarding.ingress_addresses", i),
                format!("{s:?} is not an IP address or ip:port"),
            );
        }
    }
    Some(ActorForwardingSettings {
        ingress: ingress?,
        ingress_addresses,
    })
}

/// Validates a TLS peer under `prefix`: its `address` field (`(name, value)`, `host:port`), the
/// `server_name` (default: the host), and `[ca_file, cert_file, key_file]` (defaults: the
/// listener's `client_ca_file`, `cert_file`, `key_file`). `None` after a problem was reported.
fn peer_tls(
    errs: &mut FieldErrors,
    base: &Path,
    prefix: &str,
    (address_field, address): (&str, &str),
    server_name: &Option<String>,
    [ca, cert, key]: [&Option<PathBuf>; 3],
    tls: Option<&EgressTlsConfig>,
) -> Option<PeerTls> {
    let before = errs.len();
    if cert.is_some() != key.is_some() {
        errs.push(
            format!(
                "{prefix}.{}",
                if cert.is_some() {
                    "key_file"
                } else {
                    "cert_file"
                }
            ),
            "set cert_file and key_file together (one alone would pair with the other's default)",
        );
    }
    let host = match address.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) => {
            Some(h.trim_start_matches('[').trim_end_matches(']').to_owned())
        }
        _ => {
            errs.push(
                format!("{prefix}.{address_field}"),
                format!(
                    "{address:?} is not host:port (e.g. 10.96.0.20:8443 or actorgate.ate-system:8443)"
                ),
            );
            None
        }
    };
    let server_name = server_name.clone().or(host).unwrap_or_default();
    if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
        errs.push(
            format!("{prefix}.server_name"),
            format!("{server_name:?} is not a DNS name or IP address"),
        );
    }
    let mut file = |field: &str, own: &Option<PathBuf>, default: Option<&PathBuf>| match own
        .as_ref()
        .or(default)
    {
        Some(path) => Some(existing_file(
            errs,
            &format!("{prefix}.{field}"),
            base,
            path,
        )),
        None => {
            errs.push(
                format!("{prefix}.{field}"),
                "is required without egress.tls",
            );
            None
        }
    };
    let ca_file = file("ca_file", ca, tls.map(|t| &t.client_ca_file));
    let cert_file = file("cert_file", cert, tls.map(|t| &t.cert_file));
    let key_file = file("key_file", key, tls.map(|t| &t.key_file));
    if errs.len() != before {
        return None;
    }
    Some(PeerTls {
        address: address.to_owned(),
        server_name,
        ca_file: ca_file?,
        cert_file: cert_file?,
        key_file: key_file?,
    })
}

fn is_static_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && name.parse::<IpAddr>().is_err()
}

impl EgressConfig {
    /// Validates the section; `base` is the config file's directory (relative paths). Every
    /// problem is reported, with its path relative to the section.
    ///
    /// # Errors
    /// One [`runtime::config::FieldError`] per problem.
    pub fn settings(&self, base: &Path) -> Result<EgressSettings, FieldErrors> {
        let mut errs = FieldErrors::default();
        let listen = socket_addr(&mut errs, "listen", &self.listen);
        let tls = match &self.tls {
            None => {
                errs.push(
                    "tls",
                    "is required: the PEP serves tunnels over mTLS (cert_file, key_file, client_ca_file)",
                );
                None
            }
            Some(t) => {
                if t.client_auth != ClientAuth::Required {
                    errs.push(
                        "tls.client_auth",
                        "must be required: tunnels are identified by their client certificate",
                    );
                }
                let server = ServerTlsConfig {
                    cert_file: t.cert_file.clone(),
                    key_file: t.key_file.clone(),
                    client_ca_file: Some(t.client_ca_file.clone()),
                    client_auth: ClientAuth::Required,
                    client_trust_domain: None,
                };
                errs.collect("tls", server.files(base, tunnel_alpn()))
            }
        };
        if !identity::spiffe::is_trust_domain(&self.trust_domain) {
            errs.push(
                "trust_domain",
                format!("{:?} is not a valid SPIFFE trust domain", self.trust_domain),
            );
        }

        for (i, id) in self.agents.allow.iter().enumerate() {
            match identity::spiffe::SpiffeId::parse(id) {
                Ok(identity::spiffe::SpiffeId::Component { .. }) => {}
                Ok(_) => errs.push(
                    item("agents.allow", i),
                    format!("{id:?} is an actor ID; the allow-list names components (spiffe://<td>/ns/<ns>/sa/<sa>)"),
                ),
                Err(e) => errs.push(item("agents.allow", i), format!("{id:?}: {e}")),
            }
        }
        let assertion = match (&self.agents.assertion, self.agents.allow.is_empty()) {
            (None, false) => {
                errs.push(
                    "agents.assertion",
                    "is required when agents.allow is not empty",
                );
                None
            }
            (None, true) => None,
            (Some(a), _) => {
                let jwks_file =
                    existing_file(&mut errs, "agents.assertion.jwks_file", base, &a.jwks_file);
                if a.issuers.is_empty() || a.issuers.iter().any(String::is_empty) {
                    errs.push(
                        "agents.assertion.issuers",
                        "name at least one issuer, none empty",
                    );
                }
                if a.audience.is_empty() {
                    errs.push("agents.assertion.audience", "must not be empty");
                }
                if !(1..=10_000_000).contains(&a.replay_capacity) {
                    errs.push(
                        "agents.assertion.replay_capacity",
                        format!("{} is out of range (1 to 10000000)", a.replay_capacity),
                    );
                }
                check_duration(
                    &mut errs,
                    "agents.assertion.leeway",
                    a.leeway,
                    Duration::ZERO,
                    identity::token::MAX_LEEWAY,
                );
                Some(AssertionSettings {
                    jwks_file,
                    issuers: a.issuers.clone(),
                    audience: a.audience.clone(),
                    replay_capacity: a.replay_capacity,
                    leeway: a.leeway,
                })
            }
        };

        check_duration(
            &mut errs,
            "liveness.ttl",
            self.liveness.ttl,
            Duration::ZERO,
            Duration::from_secs(300),
        );
        if self.liveness.max_entries == 0 {
            errs.push("liveness.max_entries", "0 is out of range (at least 1)");
        }

        let p = &self.policy;
        let policy = match p.source {
            PolicySourceKind::Files => {
                if p.files.is_empty() {
                    errs.push(
                        "policy.files",
                        "name at least one policy file with source: files",
                    );
                }
                let files = p
                    .files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| existing_file(&mut errs, &item("policy.files", i), base, f))
                    .collect();
                PolicySourceSettings::Files(files)
            }
            PolicySourceKind::Ateapi => {
                if !p.files.is_empty() {
                    errs.push(
                        "policy.files",
                        "is only read with source: files (ateapi serves GetActorEgressPolicy)",
                    );
                }
                PolicySourceSettings::Ateapi {
                    ttl: p.ttl,
                    max_entries: p.max_entries,
                }
            }
        };
        check_duration(
            &mut errs,
            "policy.ttl",
            p.ttl,
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        if p.max_entries == 0 {
            errs.push("policy.max_entries", "0 is out of range (at least 1)");
        }

        let r = &self.resolver;
        let mut static_entries = BTreeMap::new();
        for (name, ips) in &r.static_ {
            let field = format!("resolver.static.{name}");
            if !is_static_name(name) {
                errs.push(&field, format!("{name:?} is not a DNS name"));
                continue;
            }
            if ips.is_empty() {
                errs.push(&field, "name at least one address");
            }
            let mut parsed = Vec::with_capacity(ips.len());
            for (i, ip) in ips.iter().enumerate() {
                match ip.parse::<IpAddr>() {
                    Ok(a) => parsed.push(a),
                    Err(_) => errs.push(item(&field, i), format!("invalid IP address {ip:?}")),
                }
            }
            let key = name.trim_end_matches('.').to_ascii_lowercase();
            static_entries.insert(key, parsed);
        }
        let name_servers = r
            .name_servers
            .iter()
            .enumerate()
            .filter_map(|(i, a)| socket_addr(&mut errs, &item("resolver.name_servers", i), a))
            .collect();
        if r.cache_size == 0 {
            errs.push("resolver.cache_size", "0 is out of range (at least 1)");
        }
        if r.min_ttl > r.max_ttl {
            errs.push(
                "resolver.min_ttl",
                format!(
                    "{} is above max_ttl ({})",
                    humantime::format_duration(r.min_ttl),
                    humantime::format_duration(r.max_ttl)
                ),
            );
        }
        check_duration(
            &mut errs,
            "resolver.max_ttl",
            r.max_ttl,
            Duration::ZERO,
            Duration::from_secs(86_400),
        );
        check_duration(
            &mut errs,
            "resolver.timeout",
            r.timeout,
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        if !r.system && r.static_.is_empty() {
            errs.push(
                "resolver.system",
                "is false and resolver.static is empty: hostname rules could never dial",
            );
        }

        let private = cidrs(&mut errs, "guard.private", &self.guard.private);
        let exempt = cidrs(&mut errs, "guard.exempt", &self.guard.exempt);

        let l = &self.limits;
        check_duration(
            &mut errs,
            "limits.header_read_timeout",
            l.header_read_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        if !(1024..=1024 * 1024).contains(&l.max_header_bytes) {
            errs.push(
                "limits.max_header_bytes",
                format!("{} is out of range (1024 to 1048576)", l.max_header_bytes),
            );
        }
        if !(1..=100_000).contains(&l.max_concurrent_streams) {
            errs.push(
                "limits.max_concurrent_streams",
                format!("{} is out of range (1 to 100000)", l.max_concurrent_streams),
            );
        }
        // h2 windows: at least the protocol's initial 65535, at most 2^31-1.
        for (field, v) in [
            ("limits.stream_window", l.stream_window),
            ("limits.connection_window", l.connection_window),
        ] {
            if !(65_535..=i32::MAX as u32).contains(&v) {
                errs.push(field, format!("{v} is out of range (65535 to 2147483647)"));
            }
        }
        if l.connection_window < l.stream_window {
            errs.push(
                "limits.connection_window",
                format!(
                    "{} is below stream_window ({})",
                    l.connection_window, l.stream_window
                ),
            );
        }
        for (field, v, min, max) in [
            (
                "limits.idle_timeout",
                l.idle_timeout,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            ),
            (
                "limits.connect_timeout",
                l.connect_timeout,
                Duration::from_millis(10),
                Duration::from_secs(120),
            ),
            (
                "limits.classify_timeout",
                l.classify_timeout,
                Duration::from_millis(10),
                Duration::from_secs(120),
            ),
            (
                "limits.peek_timeout",
                l.peek_timeout,
                Duration::from_millis(1),
                Duration::from_secs(60),
            ),
        ] {
            check_duration(&mut errs, field, v, min, max);
        }
        if l.peek_timeout > l.classify_timeout {
            errs.push(
                "limits.peek_timeout",
                format!(
                    "{} is above classify_timeout ({})",
                    humantime::format_duration(l.peek_timeout),
                    humantime::format_duration(l.classify_timeout)
                ),
            );
        }
        if !(5 + 512..=64 * 1024 + 5).contains(&l.classify_max_bytes) {
            errs.push(
                "limits.classify_max_bytes",
                format!("{} is out of range (517 to 65541)", l.classify_max_bytes),
            );
        }
        if !(crate::forward::SPLICE_BUFFER_START..=64 * 1024 * 1024)
            .contains(&l.stream_buffer_bytes)
        {
            errs.push(
                "limits.stream_buffer_bytes",
                format!(
                    "{} is out of range ({} to 67108864)",
                    l.stream_buffer_bytes,
                    crate::forward::SPLICE_BUFFER_START
                ),
            );
        }
        let audit_file = self
            .audit
            .file
            .as_ref()
            .map(|f| identity::config::resolve_path(base, f));
        let interception = self
            .interception
            .as_ref()
            .map(|i| interception_settings(&mut errs, base, i));
        let actor_forwarding = self
            .actor_forwarding
            .as_ref()
            .map(|a| actor_forwarding_settings(&mut errs, base, a, self.tls.as_ref()));
        let credentials =
            credentials_settings(&mut errs, base, &self.credentials, self.tls.as_ref());

        match (errs.is_empty(), listen, tls) {
            (true, Some(listen), Some(tls)) => Ok(EgressSettings {
                listen,
                tls,
                trust_domain: self.trust_domain.clone(),
                accept_legacy_actor_ids: self.accept_legacy_actor_ids,
                accept_actor_identity_extension: self.accept_actor_identity_extension,
                agents: self.agents.allow.clone(),
                assertion,
                liveness_ttl: self.liveness.ttl,
                liveness_max_entries: self.liveness.max_entries,
                policy,
                static_entries,
                system_resolver: r.system,
                name_servers,
                resolver: r.clone(),
                private,
                exempt,
                limits: l.clone(),
                audit_file,
                interception,
                actor_forwarding: actor_forwarding.flatten(),
                credentials,
            }),
            _ => Err(errs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> String {
        let c: EgressConfig = runtime::config::parse_yaml(yaml).unwrap();
        match c.settings(Path::new("/nonexistent")) {
            Ok(_) => panic!("expected problems for {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_problem_is_one_line_with_its_path() {
        let e = problems(
            "listen: nope\ntrust_domain: 'Bad Domain'\n\
             agents: {allow: ['spiffe://x/actor/a/b']}\n\
             policy: {files: []}\n\
             resolver: {static: {'bad_name': ['1.2.3.4'], 'ok.example': ['nope']}, min_ttl: 10m, max_ttl: 1m}\n\
             guard: {exempt: ['127.0.0.1/8', 'x']}\n\
             limits: {max_concurrent_streams: 0, peek_timeout: 10s}\n",
        );
        for want in [
            "listen: invalid socket address \"nope\"",
            "tls: is required",
            "trust_domain: \"Bad Domain\" is not a valid SPIFFE trust domain",
            "agents.allow[0]: \"spiffe://x/actor/a/b\" is an actor ID",
            "agents.assertion: is required when agents.allow is not empty",
            "policy.files: name at least one policy file",
            "resolver.static.bad_name: \"bad_name\" is not a DNS name",
            "resolver.static.ok.example[0]: invalid IP address \"nope\"",
            "resolver.min_ttl: 10m is above max_ttl (1m)",
            "guard.exempt[0]: \"127.0.0.1/8\" has host bits set",
            "guard.exempt[1]: invalid CIDR \"x\"",
            "limits.max_concurrent_streams: 0 is out of range",
            "limits.peek_timeout: 10s is above classify_timeout (5s)",
        ] {
            assert!(
                e.lines().any(|l| l.starts_with(want)),
                "missing {want:?} in:\n{e}"
            );
        }
    }

    #[test]
    fn client_auth_must_be_required() {
        let e = problems(
            "tls: {cert_file: a.crt, key_file: a.key, client_ca_file: ca.crt, client_auth: optional}\npolicy: {files: [p.yaml]}\n",
        );
        assert!(e.contains("tls.client_auth: must be required"), "{e}");
        assert!(e.contains("tls.cert_file: "), "{e}");
        assert!(e.contains("policy.files[0]: "), "{e}");
    }

    #[test]
    fn defaults_round_trip() {
        let c: EgressConfig = runtime::config::parse_yaml("{}").unwrap();
        let yaml = serde_saphyr::to_string(&c).unwrap();
        assert_eq!(
            yaml,
            serde_saphyr::to_string(&EgressConfig::default()).unwrap()
        );
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.guard.private.len(), 5);
        let back: EgressConfig = runtime::config::parse_yaml(&yaml).unwrap();
        assert_eq!(serde_saphyr::to_string(&back).unwrap(), yaml);
    }
}
