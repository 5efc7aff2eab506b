//! Verification keys by `kid`, from a JWKS file or an HTTPS URL, cached, refreshed on an interval
//! and (rate-limited) when a token names an unknown `kid`. A JWKS file is also reloaded when it
//! changes, through the runtime's reload helper. A failed refresh keeps the previous keys.
//! Symmetric (`oct`) keys are never accepted from a JWKS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use runtime::reload::{DEFAULT_DEBOUNCE, Reloader, WatchHandle};

use crate::keys::ALLOWED_ALGORITHMS;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A local JWKS file (e.g. a mounted ConfigMap).
    File(PathBuf),
    /// An `https://` URL (or `http://` for local development), with an optional CA bundle.
    Url {
        /// The JWKS URL.
        url: String,
        /// CA bundle (PEM) to verify the server with, instead of the system roots.
        ca_file: Option<PathBuf>,
    },
    /// Fixed keys (tests).
    Fixed(JwkSet),
}

/// JWKS problems.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwksError {
    /// The JWKS file could not be read (path and reason).
    #[error("cannot read JWKS {0}")]
    Read(String),
    /// The JWKS URL could not be fetched.
    #[error("cannot fetch JWKS {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why (connection, TLS, HTTP status, size).
        reason: String,
    },
    /// The document is not a JWKS.
    #[error("invalid JWKS: {0}")]
    Parse(String),
    /// The JWKS holds no key actorgate can verify with (ES256, EdDSA, RS256/384/512 signing keys).
    #[error("JWKS has no usable signing keys")]
    Empty,
}

/// A usable verification key.
#[derive(Clone)]
pub struct VerifyKey {
    /// The algorithm this key verifies (from the JWK's `alg` or key type).
    pub alg: Algorithm,
    /// The public key.
    pub key: Arc<DecodingKey>,
}

/// Refresh bookkeeping, for status pages.
#[derive(Debug, Clone)]
pub struct KeySetStatus {
    /// Usable keys in the set.
    pub keys: usize,
    /// When the keys were last loaded successfully.
    pub last_refresh: SystemTime,
    /// The last load error; `None` once a later load succeeds.
    pub last_error: Option<String>,
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// How keys are fetched (the HTTPS client is built once, at load).
enum Fetcher {
    File(PathBuf),
    Url {
        url: String,
        client: Box<HttpsClient>,
    },
    Fixed(JwkSet),
}

/// The shortest interval between periodic refreshes.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The keys in use and their refresh status, shared with the file reloader.
struct Installed {
    keys: ArcSwap<HashMap<String, VerifyKey>>,
    status: Mutex<KeySetStatus>,
    /// Serialises file reads with their installs, so a watched reload and a refresh cannot
    /// install in the opposite order of their reads.
    file_serial: Mutex<()>,
}

impl Installed {
    /// Reads the JWKS file at `path` and installs its keys (blocking).
    fn reload_file(&self, path: &Path, log: bool) -> Result<usize, JwksError> {
        let _serial = self.file_serial.lock();
        self.apply(read_jwks_file(path), log)
    }

    /// Installs freshly read keys, or records why reading failed (keeping the previous keys).
    /// `log` is false for the file reloader, which logs failures itself.
    fn apply(
        &self,
        result: Result<HashMap<String, VerifyKey>, JwksError>,
        log: bool,
    ) -> Result<usize, JwksError> {
        let mut status = self.status.lock();
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.keys.store(Arc::new(keys));
                status.keys = n;
                status.last_refresh = SystemTime::now();
                status.last_error = None;
                Ok(n)
            }
            Err(e) => {
                let text = e.to_string();
                if log && status.last_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %e, "JWKS refresh failed; keeping the previous keys");
                }
                status.last_error = Some(text);
                Err(e)
            }
        }
    }
}

/// Watches a JWKS file: the reloader (for its status) and the watch (dropped with the key set).
struct FileWatch {
    reloader: Reloader,
    _watch: WatchHandle,
}

/// The current keys and how to refresh them.
pub struct KeySet {
    source: Fetcher,
    installed: Arc<Installed>,
    last_kid_refresh: Mutex<Option<Instant>>,
    min_kid_refresh_interval: Duration,
    /// Serialises refreshes (a watched file reload runs on its own).
    refresh_lock: tokio::sync::Mutex<()>,
    file_watch: Option<FileWatch>,
}

/// The algorithm a JWK is for: its `alg`, or inferred from its key type.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let inferred = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        _ => None,
    }?;
    match jwk.common.key_algorithm {
        None => Some(inferred),
        Some(KeyAlgorithm::ES256) if inferred == Algorithm::ES256 => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) if inferred == Algorithm::EdDSA => Some(Algorithm::EdDSA),
        Some(KeyAlgorithm::RS256) if inferred == Algorithm::RS256 => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) if inferred == Algorithm::RS256 => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) if inferred == Algorithm::RS256 => Some(Algorithm::RS512),
        Some(_) => None, // an alg that does not fit the key, or one we do not accept
    }
}

/// Parses a JWKS document into usable keys, skipping (and logging) keys that cannot be used.
pub fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, VerifyKey>, JwksError> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| JwksError::Parse(e.to_string()))?;
    keys_from_set(&set)
}

fn keys_from_set(set: &JwkSet) -> Result<HashMap<String, VerifyKey>, JwksError> {
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
            tracing::warn!("JWKS key without kid skipped");
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let Some(alg) = jwk_algorithm(jwk).filter(|a| ALLOWED_ALGORITHMS.contains(a)) else {
            tracing::warn!(
                kid,
                "JWKS key with an unsupported type or algorithm skipped"
            );
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                out.insert(
                    kid,
                    VerifyKey {
                        alg,
                        key: Arc::new(key),
                    },
                );
            }
            Err(e) => tracing::warn!(kid, error = %e, "invalid JWKS key skipped"),
        }
    }
    if out.is_empty() {
        return Err(JwksError::Empty);
    }
    Ok(out)
}

impl KeySet {
    /// Loads the keys once; fails when the source cannot be read or has no usable key. A file
    /// source is then watched and reloaded on change (debounced, [`DEFAULT_DEBOUNCE`]) for as
    /// long as the key set lives; see [`KeySet::file_reloader`].
    pub async fn load(
        source: JwksSource,
        min_kid_refresh_interval: Duration,
    ) -> Result<Arc<Self>, JwksError> {
        let source = match source {
            JwksSource::File(p) => Fetcher::File(p),
            JwksSource::Fixed(set) => Fetcher::Fixed(set),
            JwksSource::Url { url, ca_file } => Fetcher::Url {
                client: Box::new(https_client(&url, ca_file.as_deref()).await?),
                url,
            },
        };
        let keys = fetch(&source).await?;
        let installed = Arc::new(Installed {
            status: Mutex::new(KeySetStatus {
                keys: keys.len(),
                last_refresh: SystemTime::now(),
                last_error: None,
            }),
            keys: ArcSwap::from_pointee(keys),
            file_serial: Mutex::new(()),
        });
        let file_watch = match &source {
            Fetcher::File(path) => watch_file(path, &installed),
            _ => None,
        };
        Ok(Arc::new(Self {
            source,
            installed,
            last_kid_refresh: Mutex::new(None),
            min_kid_refresh_interval,
            refresh_lock: tokio::sync::Mutex::new(()),
            file_watch,
        }))
    }

    /// The key for a `kid`, if currently known.
    pub fn get(&self, kid: &str) -> Option<VerifyKey> {
        self.installed.keys.load().get(kid).cloned()
    }

    /// Re-reads the source. On failure the previous keys stay and the error is returned.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let _one = self.refresh_lock.lock().await;
        if let Fetcher::File(path) = &self.source {
            let (p, installed) = (path.clone(), self.installed.clone());
            return tokio::task::spawn_blocking(move || installed.reload_file(&p, true))
                .await
                .map_err(|e| JwksError::Read(format!("{}: {e}", path.display())))?;
        }
        let result = fetch(&self.source).await;
        self.installed.apply(result, true)
    }

    /// Refreshes because a token named an unknown `kid`, at most once per
    /// `min_kid_refresh_interval` (so garbage `kid`s cannot hammer the JWKS endpoint).
    /// Returns whether a refresh happened.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let allowed = {
            let mut last = self.last_kid_refresh.lock();
            let allowed = !last.is_some_and(|t| t.elapsed() < self.min_kid_refresh_interval);
            if allowed {
                *last = Some(Instant::now());
            }
            allowed
        };
        if allowed {
            return self.refresh().await.is_ok();
        }
        // A refresh may be under way for this very kid: wait for it; the caller looks again.
        let _wait = self.refresh_lock.lock().await;
        false
    }

    /// Refreshes every `every` until the returned task is aborted.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(MIN_REFRESH_INTERVAL));
            tick.tick().await;
            loop {
                tick.tick().await;
                let _ = this.refresh().await;
            }
        })
    }

    /// Refresh status (refreshes and file reloads alike).
    pub fn status(&self) -> KeySetStatus {
        self.installed.status.lock().clone()
    }

    /// The reloader that follows a JWKS file (`None` for other sources, or when the file's
    /// directory could not be watched): reload counts and the last error for `/statusz`,
    /// [`Reloader::attempts`] to wait for a reload.
    pub fn file_reloader(&self) -> Option<&Reloader> {
        self.file_watch.as_ref().map(|w| &w.reloader)
    }
}

/// Reloads the JWKS file at `path` whenever it changes, through the runtime's reload helper; a
/// bad edit keeps the previous keys and shows in the status. Without a watch (no inotify
/// instance left, say) the interval and unknown-`kid` refreshes still apply, so this warns
/// instead of failing.
fn watch_file(path: &Path, installed: &Arc<Installed>) -> Option<FileWatch> {
    let (file, target) = (path.to_path_buf(), installed.clone());
    // Reading and installing happen together (see `Installed::file_serial`), so the load step
    // installs and the apply step has nothing left to do.
    let reloader = Reloader::new(
        "jwks_file",
        [path.to_path_buf()],
        move || target.reload_file(&file, false),
        |_keys: usize| (),
    );
    match reloader.watch(DEFAULT_DEBOUNCE) {
        Ok(watch) => Some(FileWatch {
            reloader,
            _watch: watch,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the JWKS file; edits apply at the next refresh");
            None
        }
    }
}

/// Reads and parses a JWKS file (blocking), refusing files over 1 MiB.
fn read_jwks_file(path: &Path) -> Result<HashMap<String, VerifyKey>, JwksError> {
    let read_err = |e: std::io::Error| JwksError::Read(format!("{}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_JWKS_BYTES as u64 {
        return Err(JwksError::Read(format!(
            "{}: larger than 1 MiB",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    parse_jwks(&bytes)
}

async fn fetch(source: &Fetcher) -> Result<HashMap<String, VerifyKey>, JwksError> {
    match source {
        Fetcher::Fixed(set) => keys_from_set(set),
        Fetcher::File(path) => {
            let p = path.clone();
            tokio::task::spawn_blocking(move || read_jwks_file(&p))
                .await
                .map_err(|e| JwksError::Read(format!("{}: {e}", path.display())))?
        }
        Fetcher::Url { url, client } => {
            let bytes = tokio::time::timeout(FETCH_TIMEOUT, fetch_url(url, client))
                .await
                .map_err(|_| JwksError::Fetch {
                    url: url.clone(),
                    reason: format!("no answer within {FETCH_TIMEOUT:?}"),
                })??;
            parse_jwks(&bytes)
        }
    }
}

/// An HTTPS-only client trusting `ca_file`, or the system's roots without one.
async fn https_client(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<HttpsClient, JwksError> {
    let fail = |reason: String| JwksError::Fetch {
        url: url.to_owned(),
        reason,
    };
    if !url.starts_with("https://") {
        return Err(fail("a JWKS URL must be https://".into()));
    }
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_file {
        Some(ca) => {
            use rustls_pki_types::pem::PemObject;
            let bytes = tokio::fs::read(ca)
                .await
                .map_err(|e| fail(format!("{}: {e}", ca.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| fail(format!("{}: {e}", ca.display())))?;
                roots.add(cert).map_err(|e| fail(e.to_string()))?;
            }
            let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| fail(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(tls)
        }
        None => builder
            .with_provider_and_native_roots(crate::tls::provider())
            .map_err(|e| fail(format!("no system CA roots: {e}")))?,
    };
    let connector = builder.https_only().enable_http1().build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

async fn fetch_url(url: &str, client: &HttpsClient) -> Result<Vec<u8>, JwksError> {
    use http_body_util::{BodyExt, Limited};
    let fail = |reason: String| JwksError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
    let resp = client.get(uri).await.map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(body.to_bytes().to_vec())
}
