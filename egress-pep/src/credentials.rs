//! Credential injection (DESIGN §7.3, §9): the values a rule's `replace_headers` effects put
//! into an actor's request, so that the actor never holds the secret.
//!
//! * `credential_uri` (`ate-secret://<provider-class>/<provider-name>/<tail>`) goes to the
//!   provider configured for its class (the URI authority): upstream's
//!   `credprovider.CredentialProvider/FetchSecret` over mTLS with the PEP's component identity
//!   (asked with the actor's `spiffe://<td>/actor/<atespace>/<name>`; the provider decides), or,
//!   for the embedded default, a directory of files or allow-listed environment variables.
//!   Secrets are cached per (actor, URI) for a short TTL; concurrent misses share one fetch;
//!   failures are never cached.
//! * `actor_jwt` is an actor identity token for the request's actor, minted with `MintActorJWT`
//!   through the directory or by the local signer, cached per (actor, audiences, lifetime) and
//!   reused until a third of its lifetime remains.
//!
//! Provider errors map as upstream: NOT_FOUND, PERMISSION_DENIED and anything unexpected →
//! [`Reason::CredentialDenied`] (403); UNAVAILABLE, DEADLINE_EXCEEDED, a timeout →
//! [`Reason::CredentialUnavailable`] (503). A secret's trailing CR/LF is stripped; an empty one,
//! or one with another control byte, is unusable (503). Secrets and tokens never reach logs,
//! audit records, metrics or `/statusz`: errors name the header and the URI only, and the values
//! are marked sensitive (not indexed by HPACK).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use identity::ActorIdentity;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use routing_core::ActorRef;

use crate::decision::Reason;
use crate::policy::model::{CredentialHeader, CredentialSource};

/// Generated client (and, for test fakes, server) of upstream's credential provider API.
pub mod proto {
    #![allow(missing_docs)]
    tonic::include_proto!("credprovider");
}

/// The URI scheme of provider-held secrets (upstream `credential_uri`).
pub const SECRET_SCHEME: &str = "ate-secret://";
/// Most bytes of one secret (a provider's answer, a file).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Why a credential could not be had: the reason the request is refused with, and a detail for
/// the log (never the secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct CredentialError {
    /// [`Reason::CredentialDenied`] or [`Reason::CredentialUnavailable`].
    pub reason: Reason,
    /// What happened (the source URI, the provider's status code).
    pub detail: String,
}

impl CredentialError {
    fn denied(detail: impl Into<String>) -> Self {
        Self {
            reason: Reason::CredentialDenied,
            detail: detail.into(),
        }
    }

    fn unavailable(detail: impl Into<String>) -> Self {
        Self {
            reason: Reason::CredentialUnavailable,
            detail: detail.into(),
        }
    }
}

/// A secret's bytes: shown nowhere (its `Debug` is redacted).
#[derive(Clone)]
pub struct Secret(Bytes);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Checks a secret as upstream does: trailing CR/LF stripped; empty, or another control
    /// byte (tab included), is unusable.
    ///
    /// # Errors
    /// [`Reason::CredentialUnavailable`], naming `what` (the URI).
    pub fn checked(mut bytes: Bytes, what: &str) -> Result<Self, CredentialError> {
        while bytes.last().is_some_and(|b| *b == b'\r' || *b == b'\n') {
            bytes.truncate(bytes.len() - 1);
        }
        if bytes.is_empty() {
            return Err(CredentialError::unavailable(format!(
                "{what}: empty secret"
            )));
        }
        if bytes.iter().any(|b| b.is_ascii_control()) {
            return Err(CredentialError::unavailable(format!(
                "{what}: the secret has a control byte"
            )));
        }
        Ok(Secret(bytes))
    }

    /// `prefix` followed by the secret, as a sensitive header value.
    fn header_value(&self, prefix: &str) -> Result<HeaderValue, CredentialError> {
        let mut v = Vec::with_capacity(prefix.len() + self.0.len());
        v.extend_from_slice(prefix.as_bytes());
        v.extend_from_slice(&self.0);
        let mut value = HeaderValue::from_bytes(&v)
            .map_err(|_| CredentialError::unavailable("the secret is not a header value"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// Where one provider class's secrets come from.
#[derive(Clone)]
pub enum Provider {
    /// Upstream's `FetchSecret` over a gRPC channel (mTLS with the PEP's identity).
    Grpc(proto::credential_provider_client::CredentialProviderClient<tonic::transport::Channel>),
    /// Files under a directory: `ate-secret://<class>/<name>/<tail>` is `<dir>/<name>/<tail>`
    /// (no `..`, no absolute tail).
    Files(PathBuf),
    /// Environment variables: `ate-secret://<class>/<name>/<VAR>` is `$VAR`, only for the
    /// listed names.
    Env(Vec<String>),
}

impl Provider {
    /// `grpc`, `files` or `env` (`/statusz`, metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Grpc(_) => "grpc",
            Provider::Files(_) => "files",
            Provider::Env(_) => "env",
        }
    }
}

/// Mints actor identity tokens (`actor_jwt` effects).
pub trait ActorTokens: Send + Sync + 'static {
    /// A token for `actor` (its UID when known) with `audiences`, valid `seconds`: the compact
    /// JWS and its `exp` (seconds since the epoch).
    fn mint(
        &self,
        actor: &ActorIdentity,
        audiences: &[String],
        seconds: i64,
    ) -> BoxFuture<'static, Result<(String, u64), CredentialError>>;
    /// `directory` or `signer` (`/statusz`).
    fn kind(&self) -> &'static str;
}

/// Tokens from the local signer (the embedded default: the `signer` config section).
pub struct SignerTokens(pub Arc<identity::Signer>);

impl ActorTokens for SignerTokens {
    fn mint(
        &self,
        actor: &ActorIdentity,
        audiences: &[String],
        seconds: i64,
    ) -> BoxFuture<'static, Result<(String, u64), CredentialError>> {
        let ttl = Duration::from_secs(seconds.unsigned_abs());
        let (signer, actor, audiences) = (self.0.clone(), actor.clone(), audiences.to_vec());
        // Off the async workers: an RSA signature takes milliseconds.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || signer.mint_actor_token(&actor, audiences, ttl))
                .await
                .map_err(|e| CredentialError::unavailable(format!("signing an actor token: {e}")))?
                .map_err(|e| CredentialError::unavailable(format!("signing an actor token: {e}")))
        })
    }

    fn kind(&self) -> &'static str {
        "signer"
    }
}

/// Tokens from the control plane's `MintActorJWT` (the `ateapi` directory).
pub struct DirectoryTokens(pub Arc<routing_core::directory::ateapi::AteApiDirectory>);

impl ActorTokens for DirectoryTokens {
    fn mint(
        &self,
        actor: &ActorIdentity,
        audiences: &[String],
        seconds: i64,
    ) -> BoxFuture<'static, Result<(String, u64), CredentialError>> {
        let actor_ref = match ActorRef::new(&actor.atespace, &actor.name) {
            Ok(a) => a,
            Err(e) => {
                let e = CredentialError::denied(format!("actor token: {e}"));
                return Box::pin(async move { Err(e) });
            }
        };
        let call = self
            .0
            .mint_actor_jwt(&actor_ref, actor.uid.as_deref(), audiences, seconds);
        Box::pin(async move {
            let resp = call.await.map_err(|e| {
                let detail = format!("MintActorJWT: {e}");
                match e.code {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                        CredentialError::unavailable(detail)
                    }
                    _ => CredentialError::denied(detail),
                }
            })?;
            let exp = resp
                .expires_at
                .and_then(|t| u64::try_from(t.seconds).ok())
                .unwrap_or_else(|| now_secs() + seconds.unsigned_abs());
            Ok((resp.actor_jwt, exp))
        })
    }

    fn kind(&self) -> &'static str {
        "directory"
    }
}

/// Bounds of the caches and of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialLimits {
    /// How long a fetched secret is reused for the same (actor, URI).
    pub secret_ttl: Duration,
    /// Most cached secrets, and most cached tokens.
    pub max_entries: u64,
    /// Longest wait for one provider answer or token.
    pub fetch_timeout: Duration,
}

impl Default for CredentialLimits {
    fn default() -> Self {
        Self {
            secret_ttl: Duration::from_secs(30),
            max_entries: 10_000,
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    source: &'static str,
    result: &'static str,
}

/// Metrics of credential sources: fetches and mints by source (`grpc`, `files`, `env`,
/// `actor_jwt`) and result (`ok`, `denied`, `unavailable`); cache hits are not fetches.
#[derive(Clone, Default)]
pub struct CredentialMetrics {
    fetches: Family<FetchLabels, Counter>,
    injected: Counter,
}

impl CredentialMetrics {
    /// Registers `actorgate_egress_credential_fetches` and
    /// `actorgate_egress_credentials_injected`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "actorgate_egress_credential_fetches",
            "Secrets fetched and actor tokens minted for credential injection, by source and result (cache hits excluded)",
            m.fetches.clone(),
        );
        registry.register(
            "actorgate_egress_credentials_injected",
            "Request headers replaced with a credential",
            m.injected.clone(),
        );
        m
    }

    fn fetch(&self, source: &'static str, r: &Result<impl Sized, CredentialError>) {
        let result = match r {
            Ok(_) => "ok",
            Err(e) if e.reason == Reason::CredentialUnavailable => "unavailable",
            Err(_) => "denied",
        };
        self.fetches
            .get_or_create(&FetchLabels { source, result })
            .inc();
    }

    /// Fetches (and mints) with `source` and `result` so far.
    pub fn fetches(&self, source: &'static str, result: &'static str) -> u64 {
        self.fetches
            .get_or_create(&FetchLabels { source, result })
            .get()
    }
}

/// A cached secret or token and when to stop reusing it (a secret's TTL, a token's renewal).
#[derive(Clone)]
struct Fresh {
    secret: Secret,
    until: Instant,
}

/// Expires a cached token when it is due for renewal.
struct RenewAt;

impl moka::Expiry<(String, Vec<String>, i64), Fresh> for RenewAt {
    fn expire_after_create(
        &self,
        _key: &(String, Vec<String>, i64),
        value: &Fresh,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }
}

/// One resolved credential: the header, its value (prefix and secret, sensitive), and until
/// when it may be reused.
#[derive(Clone)]
pub struct Credential {
    /// The header replaced.
    pub name: HeaderName,
    /// Its value.
    pub value: HeaderValue,
    /// When the secret's cache entry goes stale (or the token is due for renewal).
    pub until: Instant,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

/// The credentials one tunnel already resolved, reused until they go stale: a tunnel carries one
/// actor's requests, so the value of a rule's effect is the same for each of them until then.
/// Keyed by the effects list itself (held, so a reloaded policy never matches an old entry) and
/// the effect's index; at most [`CredentialMemo::CAPACITY`] entries.
#[derive(Default)]
pub struct CredentialMemo {
    entries: parking_lot::Mutex<Vec<MemoEntry>>,
}

/// A remembered value: the effects list, the effect's index in it, the credential.
type MemoEntry = (Arc<[CredentialHeader]>, usize, Credential);

impl CredentialMemo {
    /// Most remembered values per tunnel.
    pub const CAPACITY: usize = 8;

    /// The fresh values of `effects[i]` for each `i` of `wanted`, when all are remembered.
    pub fn get(
        &self,
        effects: &Arc<[CredentialHeader]>,
        wanted: &[usize],
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let now = Instant::now();
        let entries = self.entries.lock();
        wanted
            .iter()
            .map(|&i| {
                entries
                    .iter()
                    .find(|(e, j, c)| *j == i && Arc::ptr_eq(e, effects) && now < c.until)
                    .map(|(_, _, c)| (c.name.clone(), c.value.clone()))
            })
            .collect()
    }

    /// Remembers the value of `effects[index]`, replacing a stale or the oldest entry.
    pub fn put(&self, effects: &Arc<[CredentialHeader]>, index: usize, credential: Credential) {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        entries.retain(|(e, j, c)| now < c.until && !(*j == index && Arc::ptr_eq(e, effects)));
        if entries.len() >= Self::CAPACITY {
            entries.remove(0);
        }
        entries.push((effects.clone(), index, credential));
    }
}

/// The credential sources of the PEP and their caches.
pub struct Credentials {
    trust_domain: String,
    providers: HashMap<String, Provider>,
    tokens: Option<Arc<dyn ActorTokens>>,
    limits: CredentialLimits,
    secrets: moka::future::Cache<(String, String), Fresh>,
    jwts: moka::future::Cache<(String, Vec<String>, i64), Fresh>,
    metrics: CredentialMetrics,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credential sources: `providers` by class (the URI authority), `tokens` for `actor_jwt`
    /// effects (`None`: they are unavailable), actors' SPIFFE IDs in `trust_domain`.
    pub fn new(
        trust_domain: String,
        providers: HashMap<String, Provider>,
        tokens: Option<Arc<dyn ActorTokens>>,
        limits: CredentialLimits,
        metrics: CredentialMetrics,
    ) -> Self {
        let secrets = moka::future::Cache::builder()
            .max_capacity(limits.max_entries)
            .time_to_live(limits.secret_ttl)
            .build();
        let jwts = moka::future::Cache::builder()
            .max_capacity(limits.max_entries)
            .expire_after(RenewAt)
            .build();
        Self {
            trust_domain,
            providers,
            tokens,
            limits,
            secrets,
            jwts,
            metrics,
        }
    }

    /// The header value (`prefix` + secret, sensitive) of `effect` for `actor`.
    ///
    /// # Errors
    /// [`CredentialError`] with [`Reason::CredentialDenied`] or
    /// [`Reason::CredentialUnavailable`].
    pub async fn value(
        &self,
        actor: &ActorIdentity,
        effect: &CredentialHeader,
    ) -> Result<Credential, CredentialError> {
        let name = HeaderName::from_bytes(effect.header.as_bytes())
            .map_err(|_| CredentialError::denied(format!("{:?} is not a header", effect.header)))?;
        let fresh = match &effect.source {
            CredentialSource::Uri(uri) => self.secret(actor, uri).await?,
            CredentialSource::ActorJwt {
                audiences,
                expiration_seconds,
            } => self.token(actor, audiences, *expiration_seconds).await?,
        };
        let value = fresh.secret.header_value(&effect.prefix)?;
        Ok(Credential {
            name,
            value,
            until: fresh.until,
        })
    }

    /// Counts `n` headers replaced in a request that goes upstream (the proxy counts after it
    /// set them).
    pub fn injected(&self, n: u64) {
        self.metrics.injected.inc_by(n);
    }

    /// The providers (class → kind) and token source, for `/statusz`.
    pub fn status(&self) -> serde_json::Value {
        let mut providers: Vec<(&String, &Provider)> = self.providers.iter().collect();
        providers.sort_by(|a, b| a.0.cmp(b.0));
        serde_json::json!({
            "providers": providers
                .into_iter()
                .map(|(class, p)| serde_json::json!({"class": class, "kind": p.kind()}))
                .collect::<Vec<_>>(),
            "actor_tokens": self.tokens.as_ref().map(|t| t.kind()),
            "cached_secrets": self.secrets.entry_count(),
            "cached_tokens": self.jwts.entry_count(),
        })
    }

    async fn secret(&self, actor: &ActorIdentity, uri: &str) -> Result<Fresh, CredentialError> {
        let key = (format!("{}/{}", actor.atespace, actor.name), uri.to_owned());
        let ttl = self.limits.secret_ttl;
        let fetch = async move {
            let secret = self.fetch(actor, uri).await?;
            Ok::<_, CredentialError>(Fresh {
                secret,
                until: Instant::now() + ttl,
            })
        };
        self.secrets
            .try_get_with(key, fetch)
            .await
            .map_err(|e| (*e).clone())
    }

    async fn fetch(&self, actor: &ActorIdentity, uri: &str) -> Result<Secret, CredentialError> {
        let unknown = |detail: String| {
            let e = CredentialError::denied(detail);
            self.metrics.fetch("none", &Err::<(), _>(e.clone()));
            tracing::warn!(reason = e.reason.as_str(), detail = %e.detail, "credential not fetched");
            e
        };
        let Some((class, name, tail)) = parse_uri(uri) else {
            return Err(unknown(format!(
                "{uri}: not ate-secret://<class>/<name>/<tail>"
            )));
        };
        let Some(provider) = self.providers.get(class) else {
            return Err(unknown(format!("{uri}: no provider for class {class:?}")));
        };
        let fetched = match provider {
            Provider::Grpc(client) => {
                let spiffe = identity::spiffe::actor_uri_in(
                    identity::spiffe::ActorIdForm::Actor,
                    &self.trust_domain,
                    &actor.atespace,
                    &actor.name,
                );
                let mut client = client.clone();
                let mut req = tonic::Request::new(proto::FetchSecretRequest {
                    uri: uri.to_owned(),
                    actor_spiffe_id: spiffe,
                });
                req.set_timeout(self.limits.fetch_timeout);
                let call =
                    tokio::time::timeout(self.limits.fetch_timeout, client.fetch_secret(req));
                match call.await {
                    Err(_) => Err(CredentialError::unavailable(format!(
                        "{uri}: no answer in time"
                    ))),
                    Ok(Err(status)) => Err(provider_error(uri, &status)),
                    Ok(Ok(resp)) => {
                        let bytes = Bytes::from(resp.into_inner().opaque_bytes);
                        if bytes.len() > MAX_SECRET_BYTES {
                            Err(CredentialError::unavailable(format!(
                                "{uri}: secret too large"
                            )))
                        } else {
                            Secret::checked(bytes, uri)
                        }
                    }
                }
            }
            Provider::Files(dir) => read_file(dir, name, tail, uri).await,
            Provider::Env(allow) => {
                if allow.iter().any(|a| a == tail) {
                    match std::env::var_os(tail) {
                        Some(v) => Secret::checked(Bytes::from(v.into_encoded_bytes()), uri),
                        None => Err(CredentialError::denied(format!("{uri}: variable not set"))),
                    }
                } else {
                    Err(CredentialError::denied(format!(
                        "{uri}: variable not allowed"
                    )))
                }
            }
        };
        self.metrics.fetch(provider.kind(), &fetched);
        if let Err(e) = &fetched {
            tracing::warn!(reason = e.reason.as_str(), detail = %e.detail, "credential not fetched");
        }
        fetched
    }

    async fn token(
        &self,
        actor: &ActorIdentity,
        audiences: &[String],
        seconds: i64,
    ) -> Result<Fresh, CredentialError> {
        let key = (
            format!(
                "{}/{}#{}",
                actor.atespace,
                actor.name,
                actor.uid.as_deref().unwrap_or("")
            ),
            audiences.to_vec(),
            seconds,
        );
        // Entries expire at their renewal time ([`RenewAt`]); concurrent misses share a mint.
        self.jwts
            .try_get_with(key, self.mint(actor, audiences, seconds))
            .await
            .map_err(|e| (*e).clone())
    }

    async fn mint(
        &self,
        actor: &ActorIdentity,
        audiences: &[String],
        seconds: i64,
    ) -> Result<Fresh, CredentialError> {
        let Some(tokens) = &self.tokens else {
            let e = CredentialError::unavailable(
                "actor_jwt: no token source (an ateapi directory or the signer section)",
            );
            self.metrics.fetch("actor_jwt", &Err::<(), _>(e.clone()));
            return Err(e);
        };
        let minted = tokio::time::timeout(
            self.limits.fetch_timeout,
            tokens.mint(actor, audiences, seconds),
        )
        .await
        .unwrap_or_else(|_| Err(CredentialError::unavailable("actor_jwt: no token in time")));
        self.metrics.fetch("actor_jwt", &minted);
        let (token, exp) = minted?;
        let token = Secret::checked(Bytes::from(token), "actor_jwt")?;
        // Reused until a third of its lifetime remains (DESIGN §7.3).
        let left = exp.saturating_sub(now_secs());
        let until = Instant::now() + Duration::from_secs(left.saturating_sub(left / 3 + 1));
        Ok(Fresh {
            secret: token,
            until,
        })
    }
}

/// Upstream's mapping of provider errors (DESIGN §9).
fn provider_error(uri: &str, status: &tonic::Status) -> CredentialError {
    let detail = format!("{uri}: provider answered {:?}", status.code());
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            CredentialError::unavailable(detail)
        }
        _ => CredentialError::denied(detail),
    }
}

/// `ate-secret://<class>/<name>/<tail>` → its three parts (none empty), or `None`.
pub fn parse_uri(uri: &str) -> Option<(&str, &str, &str)> {
    let rest = uri.strip_prefix(SECRET_SCHEME)?;
    let mut parts = rest.splitn(3, '/');
    let (class, name, tail) = (parts.next()?, parts.next()?, parts.next()?);
    (!class.is_empty() && !name.is_empty() && !tail.is_empty()).then_some((class, name, tail))
}

/// `<dir>/<name>/<tail>`, read whole (at most [`MAX_SECRET_BYTES`]); `..`, absolute and empty
/// components are refused. A missing file is denied (as NOT_FOUND), another error unavailable.
async fn read_file(
    dir: &Path,
    name: &str,
    tail: &str,
    uri: &str,
) -> Result<Secret, CredentialError> {
    let rel = Path::new(name).join(tail);
    if rel.components().any(|c| !matches!(c, Component::Normal(_)))
        || tail.split('/').any(str::is_empty)
    {
        return Err(CredentialError::denied(format!(
            "{uri}: not a plain relative path"
        )));
    }
    let path = dir.join(rel);
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CredentialError::denied(format!("{uri}: no such secret")));
        }
        Err(e) => return Err(CredentialError::unavailable(format!("{uri}: {e}"))),
    };
    if !meta.is_file() || meta.len() > MAX_SECRET_BYTES as u64 {
        return Err(CredentialError::unavailable(format!(
            "{uri}: not a file of at most {MAX_SECRET_BYTES} bytes"
        )));
    }
    match tokio::fs::read(&path).await {
        Ok(b) => Secret::checked(Bytes::from(b), uri),
        Err(e) => Err(CredentialError::unavailable(format!("{uri}: {e}"))),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_as_upstream_does() {
        let ok = Secret::checked(Bytes::from_static(b"s3cret\r\n\n"), "u").unwrap();
        assert_eq!(&ok.0[..], b"s3cret");
        assert_eq!(format!("{ok:?}"), "Secret(<redacted>)");
        for bad in [&b""[..], b"\r\n", b"a\x01b", b"a\tb", b"a\rb"] {
            let e = Secret::checked(Bytes::copy_from_slice(bad), "u").unwrap_err();
            assert_eq!(e.reason, Reason::CredentialUnavailable, "{bad:?}");
        }
        let v = ok.header_value("Bearer ").unwrap();
        assert_eq!(v, "Bearer s3cret");
        assert!(v.is_sensitive());
    }

    #[test]
    fn uris_have_a_class_a_name_and_a_tail() {
        assert_eq!(
            parse_uri("ate-secret://vault/team/keys/openai"),
            Some(("vault", "team", "keys/openai"))
        );
        assert_eq!(parse_uri("ate-secret://vault/team"), None);
        assert_eq!(parse_uri("ate-secret:///team/x"), None);
        assert_eq!(parse_uri("https://vault/team/x"), None);
    }

    #[test]
    fn provider_errors_map_as_upstream() {
        let cases = [
            (tonic::Code::NotFound, Reason::CredentialDenied),
            (tonic::Code::PermissionDenied, Reason::CredentialDenied),
            (tonic::Code::Internal, Reason::CredentialDenied),
            (tonic::Code::Unavailable, Reason::CredentialUnavailable),
            (tonic::Code::DeadlineExceeded, Reason::CredentialUnavailable),
        ];
        for (code, reason) in cases {
            let e = provider_error("u", &tonic::Status::new(code, "secret-ish message"));
            assert_eq!(e.reason, reason, "{code:?}");
            assert!(!e.detail.contains("secret-ish"), "{}", e.detail);
        }
    }

    /// Counts mints; tokens expire `lifetime` seconds from now.
    struct CountingTokens {
        minted: std::sync::atomic::AtomicUsize,
        lifetime: u64,
    }

    impl ActorTokens for CountingTokens {
        fn mint(
            &self,
            actor: &ActorIdentity,
            audiences: &[String],
            _seconds: i64,
        ) -> BoxFuture<'static, Result<(String, u64), CredentialError>> {
            let n = self
                .minted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let token = format!("{}.{}.{n}", actor.name, audiences.join(","));
            let exp = now_secs() + self.lifetime;
            Box::pin(async move { Ok((token, exp)) })
        }
        fn kind(&self) -> &'static str {
            "test"
        }
    }

    fn jwt_effect(audience: &str) -> CredentialHeader {
        CredentialHeader {
            header: "authorization".into(),
            prefix: "Bearer ".into(),
            source: CredentialSource::ActorJwt {
                audiences: vec![audience.into()],
                expiration_seconds: 600,
            },
            allow_cleartext: false,
        }
    }

    #[tokio::test]
    async fn actor_tokens_are_reused_until_a_third_of_their_lifetime_remains() {
        let actor = ActorIdentity::new("demo", "a", Some("u1".into())).unwrap();
        for (lifetime, mints_for_three_calls) in [(600, 1), (0, 3)] {
            let tokens = Arc::new(CountingTokens {
                minted: Default::default(),
                lifetime,
            });
            let c = Credentials::new(
                "td".into(),
                HashMap::new(),
                Some(tokens.clone()),
                CredentialLimits::default(),
                CredentialMetrics::default(),
            );
            let first = c.value(&actor, &jwt_effect("x")).await.unwrap();
            assert_eq!(
                (first.name.as_str(), first.value.to_str().unwrap()),
                ("authorization", "Bearer a.x.0")
            );
            c.value(&actor, &jwt_effect("x")).await.unwrap();
            c.value(&actor, &jwt_effect("x")).await.unwrap();
            assert_eq!(
                tokens.minted.load(std::sync::atomic::Ordering::SeqCst),
                mints_for_three_calls,
                "lifetime {lifetime}"
            );
        }
        // Without a token source: unavailable.
        let none = Credentials::new(
            "td".into(),
            HashMap::new(),
            None,
            CredentialLimits::default(),
            CredentialMetrics::default(),
        );
        let e = none.value(&actor, &jwt_effect("x")).await.unwrap_err();
        assert_eq!(e.reason, Reason::CredentialUnavailable);
    }

    #[test]
    fn a_tunnel_remembers_fresh_values_of_the_same_effects_only() {
        let memo = CredentialMemo::default();
        let effects: Arc<[CredentialHeader]> = Arc::from(vec![jwt_effect("a"), jwt_effect("b")]);
        let same_content: Arc<[CredentialHeader]> = Arc::from(effects.to_vec());
        let credential = |v: &'static str, fresh_for: Duration| Credential {
            name: HeaderName::from_static("authorization"),
            value: HeaderValue::from_static(v),
            until: Instant::now() + fresh_for,
        };
        assert!(memo.get(&effects, &[0]).is_none());
        memo.put(&effects, 0, credential("one", Duration::from_secs(60)));
        let got = memo.get(&effects, &[0]).unwrap();
        assert_eq!(got[0].1, "one");
        // Every wanted value must be there; another list (a reloaded policy) never matches.
        assert!(memo.get(&effects, &[0, 1]).is_none());
        assert!(memo.get(&same_content, &[0]).is_none());
        // A stale value is not used, and is replaced.
        memo.put(&effects, 1, credential("two", Duration::ZERO));
        assert!(memo.get(&effects, &[1]).is_none());
        memo.put(&effects, 1, credential("three", Duration::from_secs(60)));
        assert_eq!(memo.get(&effects, &[0, 1]).unwrap()[1].1, "three");
        // Bounded.
        for i in 0..20 {
            memo.put(&same_content, i, credential("x", Duration::from_secs(60)));
        }
        assert_eq!(memo.entries.lock().len(), CredentialMemo::CAPACITY);
    }

    #[tokio::test]
    async fn environment_variables_are_read_only_when_allowed() {
        let actor = ActorIdentity::new("demo", "a", None).unwrap();
        let providers = HashMap::from([("env".to_owned(), Provider::Env(vec!["PATH".into()]))]);
        let c = Credentials::new(
            "td".into(),
            providers,
            None,
            CredentialLimits::default(),
            CredentialMetrics::default(),
        );
        let effect = |uri: &str| CredentialHeader {
            header: "x-key".into(),
            prefix: String::new(),
            source: CredentialSource::Uri(uri.into()),
            allow_cleartext: false,
        };
        let v = c
            .value(&actor, &effect("ate-secret://env/local/PATH"))
            .await
            .unwrap();
        assert_eq!(v.value.to_str().unwrap(), std::env::var("PATH").unwrap());
        for uri in [
            "ate-secret://env/local/HOME",
            "ate-secret://other/local/PATH",
        ] {
            let e = c.value(&actor, &effect(uri)).await.unwrap_err();
            assert_eq!(e.reason, Reason::CredentialDenied, "{uri}");
        }
    }

    #[tokio::test]
    async fn files_are_plain_relative_paths_under_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("team")).unwrap();
        std::fs::write(dir.path().join("team/key"), "v\n").unwrap();
        let got = read_file(dir.path(), "team", "key", "u").await.unwrap();
        assert_eq!(&got.0[..], b"v");
        let missing = read_file(dir.path(), "team", "nope", "u")
            .await
            .unwrap_err();
        assert_eq!(missing.reason, Reason::CredentialDenied);
        for (name, tail) in [
            ("team", "../team/key"),
            ("..", "x"),
            ("team", "/etc/passwd"),
        ] {
            let e = read_file(dir.path(), name, tail, "u").await.unwrap_err();
            assert_eq!(e.reason, Reason::CredentialDenied, "{name}/{tail}");
        }
    }
}
