//! Actor identity tokens (DESIGN §6), in upstream's `MintActorJWT` form: compact JWS (ES256
//! default; EdDSA, RS256, RS384, RS512 accepted) with `iss`, `sub` = `actor/<atespace>/<name>`,
//! `aud`, `iat`, `nbf` (minted 5 minutes before `iat`), `exp`, `jti` and `ate.dev` =
//! `{atespace, actorName, actorUid}` (`actorUID` accepted). Verification is strict: no `crit` header
//! (actorgate understands no JWS extension, RFC 7515 §4.1.11), only the accepted asymmetric
//! algorithms, a known `kid` whose key fits the header's `alg`, the configured issuer(s) and
//! audience (`aud` a string or an array, RFC 7519 §4.1.3), time checks with bounded skew, a
//! bounded lifetime, and claims that agree with each other. Every refusal reads as one line of
//! plain text (no debug formatting, token-supplied text escaped and shortened).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use crate::actor::{ActorIdentity, is_dns_label};
use crate::jwks::KeySet;
use crate::keys::{ALLOWED_ALGORITHMS, KeyError, algorithm_name, encoding_key};

/// Longest token accepted, in bytes (bounds parsing work).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest clock skew a verifier may be configured with.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// How far before `iat` minted tokens set `nbf`, as upstream's `MintActorJWT` does (5 minutes).
pub const NBF_BACKDATE: Duration = Duration::from_secs(300);

/// The `ate.dev` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AteClaim {
    /// The actor's atespace.
    pub atespace: String,
    /// The actor's name.
    #[serde(rename = "actorName")]
    pub actor_name: String,
    /// The actor's UID; empty when unknown. Written as `actorUid`; `actorUID` is read too.
    #[serde(rename = "actorUid", alias = "actorUID", default)]
    pub actor_uid: String,
}

/// The `aud` claim: one string or an array of strings (RFC 7519 §4.1.3). Upstream's
/// `MintActorJWT` always writes an array (DESIGN §6); a verifier accepts the token when the
/// configured audience is one of the values (an empty array names nobody).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "x"`.
    One(String),
    /// `"aud": ["x", …]`.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `audience` is one of the values.
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(v) => v.iter().any(|a| a == audience),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Audience;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("aud as a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Audience, A::Error> {
                let mut out = Vec::new();
                while let Some(a) = seq.next_element::<serde_json::Value>()? {
                    let serde_json::Value::String(a) = a else {
                        return Err(serde::de::Error::custom("aud values must be strings"));
                    };
                    if out.len() == 64 {
                        return Err(serde::de::Error::custom("aud has more than 64 values"));
                    }
                    out.push(a);
                }
                Ok(Audience::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The claims of actor tokens and egress assertions (`dst` only in the latter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the actor's SPIFFE ID.
    pub sub: String,
    /// A string or an array; actor tokens minted here use an array (upstream's form), egress
    /// assertions a string.
    pub aud: Audience,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Not before, seconds since the Unix epoch.
    pub nbf: u64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Token id, for replay detection.
    pub jti: String,
    /// The actor the token speaks for (claim `ate.dev`).
    #[serde(rename = "ate.dev")]
    pub ate: AteClaim,
    /// Egress assertions: the original destination `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
}

/// Why a token was refused. Never shown to the token's bearer; logged and audited. Every
/// `Display` is one line of plain text; strings taken from the token are passed through
/// [`printable`] when the error is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts with JSON header and claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Longer than the accepted maximum.
    #[error("token too large")]
    TooLarge,
    /// The header's `alg` is not ES256, EdDSA, RS256, RS384 or RS512.
    #[error("algorithm {0} is not accepted (ES256, EdDSA, RS256, RS384 or RS512)")]
    UnsupportedAlgorithm(String),
    /// The header has `crit`: actorgate implements no JWS extension, so RFC 7515 §4.1.11 makes
    /// every such token invalid. Holds the listed names, comma-separated.
    #[error("token header crit lists {0}; actorgate supports no JWS extensions")]
    UnsupportedCritical(String),
    /// The header has a `crit` that is not a non-empty array of names (RFC 7515 §4.1.11).
    #[error("token header has an invalid crit (must be a non-empty array of names)")]
    InvalidCritical,
    /// The header has no `kid`.
    #[error("token has no kid")]
    MissingKid,
    /// No key in the JWKS has this `kid` (after the rate-limited refresh).
    #[error("unknown key id {0}")]
    UnknownKid(String),
    /// The header's `alg` is not the algorithm of the key its `kid` names.
    #[error("token alg {header} does not match key {kid} ({})", algorithm_name(*.key))]
    AlgorithmMismatch {
        /// The header's `alg`.
        header: String,
        /// The key id.
        kid: String,
        /// The key's algorithm.
        key: Algorithm,
    },
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `aud` does not name this verifier's audience.
    #[error("wrong audience (aud does not name this verifier)")]
    WrongAudience,
    /// `iss` is not an accepted issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `exp - iat` is longer than the verifier allows.
    #[error("token lifetime {lifetime}s exceeds {max}s")]
    LifetimeTooLong {
        /// The token's lifetime, seconds.
        lifetime: u64,
        /// The allowed maximum, seconds.
        max: u64,
    },
    /// A required claim is missing or malformed (its name).
    #[error("missing or invalid claim {0}")]
    BadClaim(&'static str),
    /// `sub` is not the SPIFFE ID of the actor in `ate.dev`.
    #[error("sub does not match ate.dev")]
    SubjectMismatch,
}

/// Token-supplied text made fit for a one-line reason: at most 64 characters, printable ASCII
/// except quotes, backslashes and braces (others become `?`), `…` when cut.
pub fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| {
            if (c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '{' | '}')) || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if s.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

/// A JSON error as one plain line: serde's message without its position, made [`printable`].
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    printable(&text.replace('"', "'"))
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

    /// The claims of an actor token for `actor`, issued now and valid for `ttl`; `aud` is a
    /// one-element array and `nbf` is [`NBF_BACKDATE`] before `iat`, as upstream's `MintActorJWT`
    /// writes them (DESIGN §6).
    pub fn claims(&self, actor: &ActorIdentity, audience: &str, ttl: Duration) -> Claims {
        let now = now_secs();
        Claims {
            iss: self.issuer.clone(),
            sub: actor.subject(),
            aud: Audience::Many(vec![audience.to_owned()]),
            iat: now,
            nbf: now.saturating_sub(NBF_BACKDATE.as_secs()),
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

    /// An actor token as upstream's `MintActorJWT` answers it (DESIGN §6, §9): every one of
    /// `audiences` in `aud`, valid for `ttl` from now. Returns the compact JWS and its `exp`
    /// (seconds since the epoch).
    ///
    /// # Errors
    /// [`KeyError`] when signing fails.
    pub fn mint_actor_token(
        &self,
        actor: &ActorIdentity,
        audiences: Vec<String>,
        ttl: Duration,
    ) -> Result<(String, u64), KeyError> {
        let mut claims = self.claims(actor, "", ttl);
        claims.aud = Audience::Many(audiences);
        Ok((self.sign(&claims)?, claims.exp))
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
    /// The actor the token speaks for.
    pub actor: ActorIdentity,
    /// All verified claims.
    pub claims: Claims,
}

/// Verifies tokens against a key set.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<KeySet>,
    settings: VerifierSettings,
    leeway: u64,
}

/// The protected header as read before verification. Unknown parameters are ignored (RFC 7515
/// §4: unless listed in `crit`); duplicate ones are refused by serde.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    /// `Some` whenever the parameter is present, even as `null`.
    #[serde(default, deserialize_with = "present")]
    crit: Option<serde_json::Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Refuses any `crit` (RFC 7515 §4.1.11): actorgate understands no extension, so a well-formed
/// list is unsupported and anything else (empty, not an array, non-string names) is invalid.
fn check_crit(crit: Option<&serde_json::Value>) -> Result<(), TokenError> {
    let Some(crit) = crit else {
        return Ok(());
    };
    let names: Option<Vec<&str>> = crit.as_array().filter(|a| !a.is_empty()).and_then(|a| {
        a.iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty()))
            .collect()
    });
    match names {
        Some(names) => Err(TokenError::UnsupportedCritical(printable(
            &names.iter().take(8).copied().collect::<Vec<_>>().join(", "),
        ))),
        None => Err(TokenError::InvalidCritical),
    }
}

/// Which claim of a (signature-checked) token does not have the shape of [`Claims`], as one
/// plain line; `None` when the payload cannot be read or every claim fits.
fn claims_reason(token: &str) -> Option<String> {
    fn check<T: serde::de::DeserializeOwned>(
        claims: &serde_json::Map<String, serde_json::Value>,
        name: &str,
        required: bool,
    ) -> Option<String> {
        match claims.get(name) {
            None if required => Some(format!("missing claim {name}")),
            None => None,
            Some(v) => T::deserialize(v)
                .err()
                .map(|e| format!("claim {name}: {}", json_reason(&e))),
        }
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let Some(c) = value.as_object() else {
        return Some("claims are not a JSON object".into());
    };
    check::<String>(c, "iss", true)
        .or_else(|| check::<String>(c, "sub", true))
        .or_else(|| check::<Audience>(c, "aud", true))
        .or_else(|| check::<u64>(c, "iat", true))
        .or_else(|| check::<u64>(c, "nbf", true))
        .or_else(|| check::<u64>(c, "exp", true))
        .or_else(|| check::<String>(c, "jti", true))
        .or_else(|| check::<AteClaim>(c, "ate.dev", true))
        .or_else(|| check::<Option<String>>(c, "dst", false))
}

/// A jsonwebtoken refusal as a [`TokenError`] with a plain-text reason.
fn from_jwt_error(e: &jsonwebtoken::errors::Error, token: &str, alg: Algorithm) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAlgorithm => TokenError::UnsupportedAlgorithm(algorithm_name(alg).into()),
        ErrorKind::MissingRequiredClaim(c) => {
            TokenError::Malformed(format!("missing claim {}", printable(c)))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            TokenError::Malformed(format!("claim {} has the wrong type", printable(c)))
        }
        ErrorKind::Json(j) => TokenError::Malformed(
            claims_reason(token).unwrap_or_else(|| format!("header or claims: {}", json_reason(j))),
        ),
        ErrorKind::Base64(_) => TokenError::Malformed("a part is not base64url".into()),
        ErrorKind::Utf8(_) => TokenError::Malformed("claims are not UTF-8".into()),
        ErrorKind::InvalidToken => {
            TokenError::Malformed("not a compact JWS (header.payload.signature)".into())
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => {
            TokenError::Malformed("the key for this kid cannot check this token".into())
        }
        _ => TokenError::Malformed("verification failed".into()),
    }
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
            (Algorithm::ES256, "ES256")
                | (Algorithm::EdDSA, "EdDSA")
                | (Algorithm::RS256, "RS256")
                | (Algorithm::RS384, "RS384")
                | (Algorithm::RS512, "RS512")
        )
    })
}

impl Verifier {
    /// A verifier over `keys`; the leeway is capped at [`MAX_LEEWAY`].
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
        // Read the protected header ourselves, strictly, before anything is verified: `crit`
        // (jsonwebtoken parses it but does not enforce it), and a precise refusal for `alg:
        // none` and HMAC.
        let mut parts = token.split('.');
        let header_b64 = parts.next().unwrap_or_default();
        if parts.count() != 2 {
            return Err(TokenError::Malformed(
                "not a compact JWS (header.payload.signature)".into(),
            ));
        }
        let header_json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| TokenError::Malformed("header is not base64url".into()))?;
        let header: RawHeader = serde_json::from_slice(&header_json)
            .map_err(|e| TokenError::Malformed(format!("header: {}", json_reason(&e))))?;
        check_crit(header.crit.as_ref())?;
        let alg = algorithm_named(&header.alg)
            .ok_or_else(|| TokenError::UnsupportedAlgorithm(printable(&header.alg)))?;
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
                    .ok_or_else(|| TokenError::UnknownKid(printable(&kid)))?
            }
        };
        if key.alg != alg {
            return Err(TokenError::AlgorithmMismatch {
                header: printable(&header.alg),
                kid: printable(&kid),
                key: key.alg,
            });
        }
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.set_audience(&[&self.settings.audience]);
        v.set_issuer(&self.settings.issuers);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v)
            .map_err(|e| from_jwt_error(&e, token, alg))?;
        let c = data.claims;
        // jsonwebtoken checks this too; kept here so the rule does not depend on its version.
        if !c.aud.contains(&self.settings.audience) {
            return Err(TokenError::WrongAudience);
        }
        let now = now_secs();
        if c.iat > now + self.leeway {
            return Err(TokenError::IssuedInFuture);
        }
        // A token expiring before it was issued has no lifetime to compare: its exp is invalid
        // (reported as "lifetime 0s exceeds …" before, which misled whoever read the log).
        if c.exp < c.iat {
            return Err(TokenError::BadClaim("exp"));
        }
        let lifetime = c.exp - c.iat;
        if lifetime > self.settings.max_lifetime.as_secs() {
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
