//! The `agent` config section: the tunnel agent's capture listeners and its tunnels to the PEP
//! (DESIGN §7.5). Validated on load; every problem names its field path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use identity::config::existing_file;
use runtime::config::{FieldErrors, check_duration, item, socket_addr};
use serde::{Deserialize, Serialize};

/// The `agent` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Capture listeners, `ip:port` each: where the capture rules redirect TCP (nftables
    /// `redirect` sends IPv4 to 127.0.0.1 and IPv6 to ::1). Default both on port 15001.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// The explicit-proxy listener, `ip:port`, for actors that set `HTTP_PROXY` /
    /// `HTTPS_PROXY` (`CONNECT host:port` and absolute-form `http://` requests). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_listen: Option<String>,
    /// DNS servers (`ip:port`) the explicit proxy resolves names with; empty (the default) =
    /// the system's (`/etc/resolv.conf`, hosts file).
    #[serde(default)]
    pub proxy_name_servers: Vec<String>,
    /// The PEP and the agent's identity towards it.
    pub pep: AgentPepConfig,
    /// `per-connection` (upstream atunnel's wire behaviour: a TLS connection and CONNECT per
    /// captured connection) or `pooled` (h2 CONNECT streams over shared connections). Default
    /// `per-connection`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// `pooled`: tunnels per h2 connection at most (the PEP's `max_concurrent_streams` bounds
    /// it too). Default 100.
    #[serde(default = "default_streams")]
    pub max_streams_per_connection: usize,
    /// `SO_MARK` on the agent's connections to the PEP (capture rules installed with
    /// `--exclude-mark` leave them alone; needs `CAP_NET_ADMIN`). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<u32>,
    /// Opening a tunnel (TCP, TLS, CONNECT answer). Default 10s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A tunnel with no bytes either way this long is closed. Default 10m.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A shared agent with a component certificate (`pep.cert_file`): each CONNECT carries an
    /// egress assertion for `actor` signed with this key (DESIGN §6). Default none (the
    /// certificate is the actor's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion: Option<AgentAssertionConfig>,
}

/// `agent.assertion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAssertionConfig {
    /// The actor the captured connections belong to, `<atespace>/<name>`.
    pub actor: String,
    /// The signing key (PEM, as `actorgate token keygen` writes it).
    pub signing_key_file: PathBuf,
    /// The key's id (`kid`, as in the PEP's JWKS).
    pub kid: String,
    /// The algorithm. Default `ES256`.
    #[serde(default = "default_alg")]
    pub alg: String,
    /// The issuer (`iss`, one of the PEP's `agents.assertion.issuers`).
    pub issuer: String,
    /// The audience (`aud`, the PEP's `agents.assertion.audience`).
    pub audience: String,
    /// Each assertion's lifetime (at most 60s). Default 30s.
    #[serde(default = "default_assertion_lifetime", with = "humantime_serde")]
    pub lifetime: Duration,
}

fn default_alg() -> String {
    "ES256".into()
}
fn default_assertion_lifetime() -> Duration {
    Duration::from_secs(30)
}

/// A valid `agent.assertion`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAssertionSettings {
    /// The actor.
    pub actor: identity::ActorIdentity,
    /// The key file (resolved).
    pub signing_key_file: PathBuf,
    /// `kid`.
    pub kid: String,
    /// The algorithm's name (validated, e.g. `ES256`).
    pub alg: String,
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// Lifetime.
    pub lifetime: Duration,
}

/// `agent.pep`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPepConfig {
    /// The PEP's tunnel listener, `ip:port`.
    pub address: String,
    /// The PEP's name: the SNI sent and the name its certificate must carry.
    pub server_name: String,
    /// The CA the PEP's certificate chains to (PEM).
    pub ca_file: PathBuf,
    /// The actor certificate (PEM; reloaded when it changes, as upstream renews it).
    pub cert_file: PathBuf,
    /// Its key (PEM).
    pub key_file: PathBuf,
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:15001".into(), "[::1]:15001".into()]
}
fn default_mode() -> String {
    "per-connection".into()
}
fn default_streams() -> usize {
    100
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}

/// A valid `agent` section, paths resolved and addresses parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// Capture listeners.
    pub listen: Vec<SocketAddr>,
    /// The explicit-proxy listener.
    pub proxy_listen: Option<SocketAddr>,
    /// The explicit proxy's DNS servers (empty: the system's).
    pub proxy_name_servers: Vec<SocketAddr>,
    /// The PEP's address.
    pub pep: SocketAddr,
    /// The PEP's name.
    pub server_name: String,
    /// CA, certificate and key files (resolved).
    pub ca_file: PathBuf,
    /// The actor certificate.
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// `SO_MARK` of the agent's connections.
    pub mark: Option<u32>,
    /// Pooled h2 connections (`Some`: streams per connection) or per-connection tunnels.
    pub pooled: Option<usize>,
    /// Opening a tunnel.
    pub connect_timeout: Duration,
    /// Idle tunnels.
    pub idle_timeout: Duration,
    /// Egress assertions of a shared agent.
    pub assertion: Option<AgentAssertionSettings>,
}

impl AgentConfig {
    /// Validates the section; `base` is the config file's directory. Paths are relative to the
    /// section.
    ///
    /// # Errors
    /// One field error per problem.
    pub fn settings(&self, base: &Path) -> Result<AgentSettings, FieldErrors> {
        let mut errs = FieldErrors::default();
        if self.listen.is_empty() {
            errs.push("listen", "name at least one capture listener");
        }
        let listen: Vec<SocketAddr> = self
            .listen
            .iter()
            .enumerate()
            .filter_map(|(i, a)| socket_addr(&mut errs, &item("listen", i), a))
            .collect();
        let proxy_listen = self
            .proxy_listen
            .as_ref()
            .and_then(|a| socket_addr(&mut errs, "proxy_listen", a));
        let proxy_name_servers: Vec<SocketAddr> = self
            .proxy_name_servers
            .iter()
            .enumerate()
            .filter_map(|(i, a)| socket_addr(&mut errs, &item("proxy_name_servers", i), a))
            .collect();
        let pep = socket_addr(&mut errs, "pep.address", &self.pep.address);
        if rustls_pki_types::ServerName::try_from(self.pep.server_name.as_str()).is_err() {
            errs.push(
                "pep.server_name",
                format!("{:?} is not a DNS name or IP address", self.pep.server_name),
            );
        }
        let ca_file = existing_file(&mut errs, "pep.ca_file", base, &self.pep.ca_file);
        let cert_file = existing_file(&mut errs, "pep.cert_file", base, &self.pep.cert_file);
        let key_file = existing_file(&mut errs, "pep.key_file", base, &self.pep.key_file);
        let pooled = match self.mode.as_str() {
            "per-connection" => None,
            "pooled" => Some(self.max_streams_per_connection),
            other => {
                errs.push(
                    "mode",
                    format!("{other:?} is not a tunnel mode (per-connection or pooled)"),
                );
                None
            }
        };
        if !(1..=10_000).contains(&self.max_streams_per_connection) {
            errs.push(
                "max_streams_per_connection",
                format!(
                    "{} is out of range (1 to 10000)",
                    self.max_streams_per_connection
                ),
            );
        }
        check_duration(
            &mut errs,
            "connect_timeout",
            self.connect_timeout,
            Duration::from_millis(100),
            Duration::from_secs(120),
        );
        check_duration(
            &mut errs,
            "idle_timeout",
            self.idle_timeout,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
        let assertion = self.assertion.as_ref().and_then(|a| {
            let actor = identity::ActorIdentity::parse_ref(&a.actor)
                .map_err(|e| errs.push("assertion.actor", format!("{:?}: {e}", a.actor)))
                .ok();
            let key = existing_file(
                &mut errs,
                "assertion.signing_key_file",
                base,
                &a.signing_key_file,
            );
            let alg = identity::keys::parse_algorithm(&a.alg)
                .map(|_| a.alg.clone())
                .map_err(|e| errs.push("assertion.alg", e.to_string()))
                .ok();
            for (field, value) in [
                ("assertion.kid", &a.kid),
                ("assertion.issuer", &a.issuer),
                ("assertion.audience", &a.audience),
            ] {
                if value.is_empty() {
                    errs.push(field, "must not be empty");
                }
            }
            check_duration(
                &mut errs,
                "assertion.lifetime",
                a.lifetime,
                Duration::from_secs(1),
                identity::assertion::MAX_ASSERTION_LIFETIME,
            );
            Some(AgentAssertionSettings {
                actor: actor?,
                signing_key_file: key,
                kid: a.kid.clone(),
                alg: alg?,
                issuer: a.issuer.clone(),
                audience: a.audience.clone(),
                lifetime: a.lifetime,
            })
        });
        match (errs.is_empty(), pep) {
            (true, Some(pep)) => Ok(AgentSettings {
                listen,
                proxy_listen,
                proxy_name_servers,
                pep,
                server_name: self.pep.server_name.clone(),
                ca_file,
                cert_file,
                key_file,
                mark: self.mark,
                pooled,
                connect_timeout: self.connect_timeout,
                idle_timeout: self.idle_timeout,
                assertion,
            }),
            _ => Err(errs),
        }
    }
}
