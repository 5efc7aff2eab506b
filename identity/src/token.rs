//! Actor identity tokens (DESIGN §6): compact JWS (ES256 default; EdDSA, RS256 accepted) with
//! `iss`, `sub` = `atespaces:<atespace>:actors:<name>`, `aud`, `iat`, `nbf`, `exp`, `jti` and
//! `ate.dev` = `{atespace, actorName, actorUid}`. Verification is strict: only the three
//! asymmetric algorithms, a known `kid` whose key fits the header's `alg`, the configured
//! issuer(s) and audience, time checks with bounded skew, a bounded lifetime, and claims that
//! agree with each other.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::actor::{ActorIdentity, is_dns_label};
use crate::jwks::KeySet;
use crate::keys::{ALLOWED_ALGORITHMS, KeyError, encoding_key};

/// Longest token accepted, in bytes (bounds parsing work).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest clock skew a verifier may be configured with.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// The `ate.dev` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AteClaim {
    pub atespace: String,
    #[serde(rename = "actorName")]
    pub actor_name: String,
    #[serde(rename = "actorUid", default)]
    pub actor_uid: String,
}

/// The claims of actor tokens and egress assertions (`dst` only in the latter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    #[serde(rename = "ate.dev")]
    pub ate: AteClaim,
    /// Egress assertions: the original destination `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
}

/// Why a token was refused. Never shown to the token's bearer; logged and audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token too large")]
    TooLarge,
    #[error("algorithm {0:?} is not accepted")]
    UnsupportedAlgorithm(String),
    #[error("token has no kid")]
    MissingKid,
    #[error("unknown key id {0:?}")]
    UnknownKid(String),
    #[error("token alg {header:?} does not match key {kid:?} ({key:?})")]
    AlgorithmMismatch {
        header: String,
        kid: String,
        key: Algorithm,
    },
    #[error("bad signature")]
    BadSignature,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lifetime {lifetime}s exceeds {max}s")]
    LifetimeTooLong { lifetime: u64, max: u64 },
    #[error("missing or invalid claim {0}")]
    BadClaim(&'static str),
    #[error("sub does not match ate.dev")]
    SubjectMismatch,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random 128-bit token id, hex, from the system CSPRNG (ids must never repeat across
/// processes, or valid assertions would be refused as replays).
pub fn new_jti() -> String {
    let mut b = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // Practically unreachable; still unique enough to not collide by accident.
        b[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        b[8..].copy_from_slice(&now_secs().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `typ` of egress assertions; actor tokens use `JWT`. Keeps one kind of token from being
/// accepted as the other.
pub const ASSERTION_TYP: &str = "ate-egress+jwt";

/// Checks a uid claim or extension value: printable ASCII, at most 128 bytes.
pub fn valid_uid(uid: &str) -> bool {
    uid.len() <= 128 && uid.bytes().all(|b| b.is_ascii_graphic())
}

/// Signs tokens with one key.
pub struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    issuer: String,
}

impl Signer {
    /// A signer from a private key PEM.
    pub fn from_pem(alg: Algorithm, kid: &str, pem: &[u8], issuer: &str) -> Result<Self, KeyError> {
        if !ALLOWED_ALGORITHMS.contains(&alg) {
            return Err(KeyError::Unsupported(format!("{alg:?}")));
        }
        Ok(Self {
            alg,
            kid: kid.to_owned(),
            key: encoding_key(alg, pem)?,
            issuer: issuer.to_owned(),
        })
    }

    /// The claims of a token for `actor`, valid from now for `ttl`.
    pub fn claims(&self, actor: &ActorIdentity, audience: &str, ttl: Duration) -> Claims {
        let now = now_secs();
        Claims {
            iss: self.issuer.clone(),
            sub: actor.subject(),
            aud: audience.to_owned(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl.as_secs().max(1)),
            jti: new_jti(),
            ate: AteClaim {
                atespace: actor.atespace.clone(),
                actor_name: actor.name.clone(),
                actor_uid: actor.uid.clone().unwrap_or_default(),
            },
            dst: None,
        }
    }

    /// Signs arbitrary claims: an egress assertion (typ `ate-egress+jwt`) when they carry `dst`,
    /// an actor token (typ `JWT`) otherwise.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some(
            if claims.dst.is_some() {
                ASSERTION_TYP
            } else {
                "JWT"
            }
            .to_owned(),
        );
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| KeyError::BadKey {
            alg: self.alg,
            reason: e.to_string(),
        })
    }

    /// Mints an actor identity token.
    pub fn actor_token(
        &self,
        actor: &ActorIdentity,
        audience: &str,
        ttl: Duration,
    ) -> Result<String, KeyError> {
        self.sign(&self.claims(actor, audience, ttl))
    }

    /// The signing key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// Verification policy.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// Accepted issuers (at least one).
    pub issuers: Vec<String>,
    /// The audience this verifier is (required in every token).
    pub audience: String,
    /// Allowed clock skew, at most `MAX_LEEWAY`.
    pub leeway: Duration,
    /// Longest `exp - iat` accepted.
    pub max_lifetime: Duration,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub actor: ActorIdentity,
    pub claims: Claims,
}

/// Verifies tokens against a key set.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<KeySet>,
    settings: VerifierSettings,
    leeway: u64,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
}

/// Which kind of token a verification expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ActorToken,
    Assertion,
}

fn algorithm_named(s: &str) -> Option<Algorithm> {
    ALLOWED_ALGORITHMS.iter().copied().find(|a| {
        matches!(
            (a, s),
            (Algorithm::ES256, "ES256") | (Algorithm::EdDSA, "EdDSA") | (Algorithm::RS256, "RS256")
        )
    })
}

impl Verifier {
    pub fn new(keys: Arc<KeySet>, settings: VerifierSettings) -> Self {
        let leeway = settings.leeway.min(MAX_LEEWAY).as_secs();
        Self {
            keys,
            settings,
            leeway,
        }
    }

    /// The key set behind this verifier.
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// The clock skew this verifier allows, in seconds (a token is accepted until `exp + leeway`).
    pub fn leeway_secs(&self) -> u64 {
        self.leeway
    }

    /// Verifies an actor identity token (egress assertions are refused here).
    pub async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_kind(token, Kind::ActorToken).await
    }

    pub(crate) async fn verify_kind(
        &self,
        token: &str,
        kind: Kind,
    ) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        // Read the header ourselves so `alg: none` and HMAC get a precise refusal.
        let header_b64 = token.split('.').next().unwrap_or_default();
        let header_json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| TokenError::Malformed("header is not base64url".into()))?;
        let header: RawHeader = serde_json::from_slice(&header_json)
            .map_err(|_| TokenError::Malformed("header is not JSON".into()))?;
        let alg = algorithm_named(&header.alg)
            .ok_or_else(|| TokenError::UnsupportedAlgorithm(header.alg.clone()))?;
        let is_assertion = header.typ.as_deref() == Some(ASSERTION_TYP);
        if is_assertion != (kind == Kind::Assertion) {
            return Err(TokenError::BadClaim("typ"));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or(TokenError::MissingKid)?;
        let key = match self.keys.get(&kid) {
            Some(k) => k,
            None => {
                self.keys.refresh_for_unknown_kid().await;
                self.keys
                    .get(&kid)
                    .ok_or_else(|| TokenError::UnknownKid(kid.clone()))?
            }
        };
        if key.alg != alg {
            return Err(TokenError::AlgorithmMismatch {
                header: header.alg,
                kid,
                key: key.alg,
            });
        }
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.set_audience(&[&self.settings.audience]);
        v.set_issuer(&self.settings.issuers);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAlgorithm => TokenError::UnsupportedAlgorithm(format!("{alg:?}")),
                other => TokenError::Malformed(format!("{other:?}")),
            })?;
        let c = data.claims;
        let now = now_secs();
        if c.iat > now + self.leeway {
            return Err(TokenError::IssuedInFuture);
        }
        let lifetime = c.exp.saturating_sub(c.iat);
        if c.exp < c.iat || lifetime > self.settings.max_lifetime.as_secs() {
            return Err(TokenError::LifetimeTooLong {
                lifetime,
                max: self.settings.max_lifetime.as_secs(),
            });
        }
        if c.jti.is_empty() || c.jti.len() > 128 {
            return Err(TokenError::BadClaim("jti"));
        }
        if !is_dns_label(&c.ate.atespace)
            || !is_dns_label(&c.ate.actor_name)
            || !valid_uid(&c.ate.actor_uid)
        {
            return Err(TokenError::BadClaim("ate.dev"));
        }
        if c.dst.is_some() != (kind == Kind::Assertion) {
            return Err(TokenError::BadClaim("dst"));
        }
        match ActorIdentity::from_subject(&c.sub) {
            Some((ns, name)) if ns == c.ate.atespace && name == c.ate.actor_name => {}
            _ => return Err(TokenError::SubjectMismatch),
        }
        Ok(Verified {
            actor: ActorIdentity {
                atespace: c.ate.atespace.clone(),
                name: c.ate.actor_name.clone(),
                uid: (!c.ate.actor_uid.is_empty()).then(|| c.ate.actor_uid.clone()),
            },
            claims: c,
        })
    }
}
