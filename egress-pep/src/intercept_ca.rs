//! The interception CA and its leaf minter (DESIGN §7.2, `https` rules; issue 12): the PEP
//! terminates an actor's TLS for an intercepted name with a leaf certificate for that name,
//! signed by a CA the actors trust.
//!
//! * [`InterceptCa`]: the CA certificate and key (PEM files), checked on load: a CA certificate
//!   (basic constraints CA) that may sign certificates, with the key that matches it.
//! * [`LeafMinter`]: one leaf per name — a DNS SAN, or an IP SAN for an IP-literal SNI —
//!   server-auth EKU, a fresh P-256 key per leaf (upstream shares one key across all names),
//!   valid for [`MinterSettings::lifetime`] (never past the CA's own expiry) and replaced once
//!   less than [`MinterSettings::renew_before`] remains. Concurrent first requests for a name
//!   mint once (single flight); the cache is bounded. The CA files are reloaded through the
//!   runtime's reload helper: a rotated CA applies to the next leaf minted, a broken one keeps
//!   the previous CA and is reported.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use runtime::reload::{ReloadStatus, Reloader};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What can go wrong loading the CA or minting a leaf.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InterceptCaError {
    /// A CA file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (the I/O error's text).
        reason: String,
    },
    /// The CA certificate or key is unusable (not PEM, not a CA, key does not match, expired).
    #[error("interception CA: {0}")]
    BadCa(String),
    /// A name no certificate can carry (empty, not a DNS name or IP address).
    #[error("cannot mint a certificate for {0:?}")]
    BadName(String),
    /// Key generation or signing failed, or the CA has expired.
    #[error("minting a leaf: {0}")]
    Mint(String),
    /// [`MinterSettings`] out of bounds.
    #[error("interception leaf settings: {0}")]
    Settings(String),
}

/// The interception CA: what leaves are signed with.
pub struct InterceptCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    not_after: OffsetDateTime,
    /// Distinguishes CAs across reloads (cache keys carry it, so a rotated CA mints anew).
    generation: u64,
}

impl std::fmt::Debug for InterceptCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterceptCa")
            .field("not_after", &self.not_after)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl InterceptCa {
    /// A CA from PEM text: the certificate must be a currently valid CA certificate that may
    /// sign certificates (key usage `keyCertSign` when the extension is present), and the key
    /// (PKCS#8) must be its key.
    ///
    /// # Errors
    /// [`InterceptCaError::BadCa`] saying which of these fails.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, InterceptCaError> {
        let bad = |s: String| InterceptCaError::BadCa(s);
        let cert = first_certificate(cert_pem)?;
        let (_, parsed) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| bad(format!("certificate does not parse: {e}")))?;
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca);
        if !is_ca {
            return Err(bad("the certificate is not a CA (basic constraints)".into()));
        }
        match parsed.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => {
                return Err(bad(
                    "the certificate may not sign certificates (key usage)".into()
                ));
            }
            Err(e) => return Err(bad(format!("key usage extension does not parse: {e}"))),
            _ => {}
        }
        let now = OffsetDateTime::now_utc();
        let not_before = parsed.validity().not_before.to_datetime();
        if not_before > now {
            return Err(bad(format!(
                "the certificate is not valid before {not_before}"
            )));
        }
        let not_after = parsed.validity().not_after.to_datetime();
        if not_after <= now {
            return Err(bad(format!("the certificate expired at {not_after}")));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("key: {e}")))?;
        if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(bad("the key does not belong to the certificate".into()));
        }
        let issuer =
            Issuer::from_ca_cert_der(&cert, key).map_err(|e| bad(format!("certificate: {e}")))?;
        Ok(Self {
            issuer,
            cert,
            not_after,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Reads and checks the CA files (see [`InterceptCa::from_pem`]).
    ///
    /// # Errors
    /// [`InterceptCaError::Read`] naming the file, or [`InterceptCaError::BadCa`].
    pub fn load(
        cert_file: &std::path::Path,
        key_file: &std::path::Path,
    ) -> Result<Self, InterceptCaError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| InterceptCaError::Read {
                path: p.to_path_buf(),
                reason: e.to_string(),
            })
        };
        Self::from_pem(&read(cert_file)?, &read(key_file)?)
    }

    /// When the CA certificate expires (leaves are clamped to it).
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA certificate (DER), sent after each leaf.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }
}

/// The one certificate of a CA file. More than one is refused: leaves are sent with their CA
/// only, so a CA under another root would give actors an incomplete chain.
fn first_certificate(pem: &str) -> Result<CertificateDer<'static>, InterceptCaError> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InterceptCaError::BadCa(format!("CA certificate PEM: {e}")))?;
    match <[_; 1]>::try_from(certs) {
        Ok([cert]) => Ok(cert),
        Err(v) if v.is_empty() => Err(InterceptCaError::BadCa(
            "no certificate in the CA file".into(),
        )),
        Err(v) => Err(InterceptCaError::BadCa(format!(
            "{} certificates in the CA file; give the interception CA alone (a self-signed root)",
            v.len()
        ))),
    }
}

/// How leaves are minted and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinterSettings {
    /// How long a leaf is valid after it is minted (its validity starts five minutes earlier,
    /// for slow clocks; it never outlives the CA). 1 minute to 7 days; default 15 minutes.
    pub lifetime: Duration,
    /// A cached leaf is replaced once less than this of its lifetime remains; below `lifetime`.
    /// Default 5 minutes.
    pub renew_before: Duration,
    /// Most names whose leaf is cached, at least 1. Default 10,000.
    pub max_entries: u64,
    /// Most leaves minted at once (each is a key generation and a signature, run off the
    /// async workers); more wait. At least 1; default 4.
    pub max_concurrent_mints: usize,
}

impl MinterSettings {
    /// Checks the bounds documented on the fields.
    ///
    /// # Errors
    /// [`InterceptCaError::Settings`] saying which bound is broken.
    pub fn validate(&self) -> Result<(), InterceptCaError> {
        let bad = |s: &str| Err(InterceptCaError::Settings(s.to_owned()));
        if !(Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600)).contains(&self.lifetime)
        {
            return bad("lifetime must be between 1 minute and 7 days");
        }
        if self.renew_before >= self.lifetime {
            return bad("renew_before must be below lifetime");
        }
        if self.max_concurrent_mints == 0 {
            return bad("max_concurrent_mints must be at least 1");
        }
        if self.max_entries == 0 {
            return bad("max_entries must be at least 1");
        }
        Ok(())
    }
}

impl Default for MinterSettings {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(15 * 60),
            renew_before: Duration::from_secs(5 * 60),
            max_entries: 10_000,
            max_concurrent_mints: 4,
        }
    }
}

/// Mints and caches leaf certificates signed by the (reloadable) interception CA.
pub struct LeafMinter {
    ca: Arc<ArcSwap<InterceptCa>>,
    reloader: Reloader,
    cache: moka::future::Cache<(u64, String), Arc<CertifiedKey>>,
    settings: MinterSettings,
    minted: AtomicU64,
    mints: Arc<tokio::sync::Semaphore>,
}

impl LeafMinter {
    /// Loads the CA from `cert_file` and `key_file`; reloads (through [`LeafMinter::reload`] or
    /// [`LeafMinter::reloader`]`().watch(..)`) are named `interception CA`.
    ///
    /// # Errors
    /// The CA's load error (see [`InterceptCa::load`]).
    pub fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        settings: MinterSettings,
    ) -> Result<Self, InterceptCaError> {
        settings.validate()?;
        let ca = Arc::new(ArcSwap::from_pointee(InterceptCa::load(
            &cert_file, &key_file,
        )?));
        // Entries live until renewal is due; the key carries the CA generation, so a rotated
        // CA is never answered from a leaf of the old one.
        let ttl = settings.lifetime.saturating_sub(settings.renew_before);
        let cache: moka::future::Cache<(u64, String), Arc<CertifiedKey>> =
            moka::future::Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(ttl.max(Duration::from_secs(1)))
                .build();
        let installed = ca.clone();
        let old_leaves = cache.clone();
        let (c, k) = (cert_file.clone(), key_file.clone());
        let reloader = Reloader::new(
            "interception CA",
            [cert_file, key_file],
            move || InterceptCa::load(&c, &k),
            move |new| {
                // Files rewritten with the same CA: keep its leaves.
                if installed.load().cert == new.cert {
                    return;
                }
                installed.store(Arc::new(new));
                // Leaves of the old CA are never served again (their keys name its
                // generation); free them now rather than at their expiry.
                old_leaves.invalidate_all();
            },
        );
        Ok(Self {
            ca,
            reloader,
            cache,
            settings,
            minted: AtomicU64::new(0),
            mints: Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent_mints)),
        })
    }

    /// The leaf for `name` (a DNS name from SNI, or an IP literal): cached, or minted once for
    /// all concurrent callers.
    ///
    /// # Errors
    /// [`InterceptCaError::BadName`] for a name no certificate can carry,
    /// [`InterceptCaError::Mint`] when signing fails (the failure is not cached).
    pub async fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, InterceptCaError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let ca = self.ca.load_full();
        let key = (ca.generation, name);
        let loaded = self
            .cache
            .try_get_with_by_ref(&key, async {
                let _permit = self
                    .mints
                    .acquire()
                    .await
                    .map_err(|_| InterceptCaError::Mint("minter closed".into()))?;
                let (ca, name, lifetime) = (ca.clone(), key.1.clone(), self.settings.lifetime);
                // Key generation and signing are CPU work: off the async workers.
                let leaf = tokio::task::spawn_blocking(move || mint(&ca, &name, lifetime))
                    .await
                    .map_err(|e| InterceptCaError::Mint(format!("minting task: {e}")))??;
                self.minted.fetch_add(1, Ordering::Relaxed);
                Ok::<_, InterceptCaError>(Arc::new(leaf))
            })
            .await;
        loaded.map_err(|e: Arc<InterceptCaError>| (*e).clone())
    }

    /// Whether a leaf for `name` (from the current CA) is cached: a connection for it mints
    /// nothing.
    pub fn has_leaf(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.cache.contains_key(&(self.ca.load().generation, name))
    }

    /// Leaves minted since start.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// Leaves cached now (approximate, as the cache's own count).
    pub fn cached(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The CA leaves are signed with now.
    pub fn ca(&self) -> Arc<InterceptCa> {
        self.ca.load_full()
    }

    /// Re-reads the CA files now (blocking file reads). A broken CA keeps the previous one.
    ///
    /// # Errors
    /// The load error's text.
    pub fn reload(&self) -> Result<(), String> {
        self.reloader.reload()
    }

    /// Reload counts and the last error, for `/statusz`.
    pub fn status(&self) -> ReloadStatus {
        self.reloader.status()
    }

    /// The reloader behind the CA (to watch the files, or wait for a reload in tests).
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }
}

/// Mints one leaf for `name` under `ca`.
fn mint(
    ca: &InterceptCa,
    name: &str,
    lifetime: Duration,
) -> Result<CertifiedKey, InterceptCaError> {
    let bad = || InterceptCaError::BadName(name.to_owned());
    let san = match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => {
            // A host name as SNI carries it (RFC 6066 §3): DNS syntax, no wildcard.
            if name.contains('*') || rustls_pki_types::DnsName::try_from(name).is_err() {
                return Err(bad());
            }
            SanType::DnsName(name.to_owned().try_into().map_err(|_| bad())?)
        }
    };
    let now = OffsetDateTime::now_utc();
    if ca.not_after <= now {
        return Err(InterceptCaError::Mint(format!(
            "the interception CA expired at {}",
            ca.not_after
        )));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // X.520 bounds a common name to 64 characters; the SAN carries the name either way.
    if name.len() <= 64 {
        dn.push(DnType::CommonName, name);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = vec![san];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Lets clients that trust two interception CAs (a rotation overlap) find the right issuer.
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::minutes(5);
    // `lifetime` is bounded by `MinterSettings::validate`.
    let lifetime = time::Duration::seconds(lifetime.as_secs().min(7 * 24 * 3600) as i64);
    params.not_after = (now + lifetime).min(ca.not_after);
    let key = KeyPair::generate().map_err(|e| InterceptCaError::Mint(e.to_string()))?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|e| InterceptCaError::Mint(e.to_string()))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = identity::tls::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| InterceptCaError::Mint(e.to_string()))?;
    Ok(CertifiedKey::new(
        vec![cert.der().clone(), ca.cert.clone()],
        signing_key,
    ))
}
