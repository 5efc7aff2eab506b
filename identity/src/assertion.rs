//! Egress assertions (DESIGN §6): the tunnel agent's per-tunnel JWT carrying the actor identity
//! and the original destination (`dst`, as captured by `SO_ORIGINAL_DST`), audience = the PEP,
//! lifetime ≤ 60 s. The PEP requires `dst` to equal the CONNECT target and refuses a `jti` seen
//! within its lifetime.

use std::net::SocketAddr;
use std::time::Duration;

use crate::actor::ActorIdentity;
use crate::keys::KeyError;
use crate::replay::{ReplayCache, ReplayError};
use crate::token::{Audience, Kind, Signer, TokenError, Verified, Verifier, now_secs, printable};

/// Longest lifetime of an egress assertion.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// Why an assertion was refused. Every `Display` is one line of plain text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// The assertion is not a valid token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The assertion carries no `dst` claim.
    #[error("assertion has no dst")]
    MissingDst,
    /// The assertion names another destination than the one being connected to.
    #[error("assertion dst {asserted} does not match the destination {actual}")]
    DstMismatch {
        /// The `dst` claim.
        asserted: String,
        /// Where the connection actually goes.
        actual: SocketAddr,
    },
    /// The assertion's `jti` was seen before, or the replay cache is full.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Mints assertions (the tunnel agent's side).
pub struct AssertionMinter {
    signer: Signer,
    audience: String,
    lifetime: Duration,
}

impl AssertionMinter {
    /// `lifetime` is capped at 60 s.
    pub fn new(signer: Signer, pep_audience: &str, lifetime: Duration) -> Self {
        Self {
            signer,
            audience: pep_audience.to_owned(),
            lifetime: lifetime.min(MAX_ASSERTION_LIFETIME),
        }
    }

    /// An assertion that `actor` opened a connection to `dst`. `aud` is a plain string (the
    /// form every actorgate PEP accepts; verifiers accept an array too).
    pub fn mint(&self, actor: &ActorIdentity, dst: SocketAddr) -> Result<String, KeyError> {
        let mut claims = self.signer.claims(actor, &self.audience, self.lifetime);
        claims.aud = Audience::One(self.audience.clone());
        claims.dst = Some(dst.to_string());
        self.signer.sign(&claims)
    }
}

/// Verifies assertions (the PEP's side). The inner verifier's `max_lifetime` should be ≤ 60 s.
pub struct AssertionVerifier {
    verifier: Verifier,
    replay: ReplayCache,
}

impl AssertionVerifier {
    /// A verifier of assertions remembering up to `replay_capacity` token ids (until they expire).
    pub fn new(verifier: Verifier, replay_capacity: usize) -> Self {
        Self {
            verifier,
            replay: ReplayCache::new(replay_capacity),
        }
    }

    /// Verifies the token, that its `dst` is `actual_dst`, that it lives at most 60 s (whatever
    /// the inner verifier allows), and that its `jti` is new.
    pub async fn verify(
        &self,
        token: &str,
        actual_dst: SocketAddr,
    ) -> Result<Verified, AssertionError> {
        let v = self.verifier.verify_kind(token, Kind::Assertion).await?;
        let lifetime = v.claims.exp.saturating_sub(v.claims.iat);
        if lifetime > MAX_ASSERTION_LIFETIME.as_secs() {
            return Err(TokenError::LifetimeTooLong {
                lifetime,
                max: MAX_ASSERTION_LIFETIME.as_secs(),
            }
            .into());
        }
        let asserted = v.claims.dst.as_deref().ok_or(AssertionError::MissingDst)?;
        // Compare as addresses so "[::1]:80" and an equivalent spelling agree.
        if asserted.parse::<SocketAddr>().ok() != Some(actual_dst) {
            return Err(AssertionError::DstMismatch {
                asserted: printable(asserted),
                actual: actual_dst,
            });
        }
        // The verifier accepts the token until exp + leeway: remember the id that long too.
        let accepted_until = v.claims.exp.saturating_add(self.verifier.leeway_secs());
        self.replay
            .check_and_insert(&v.claims.jti, accepted_until, now_secs())?;
        Ok(v)
    }

    /// Token ids currently remembered.
    pub fn replay_entries(&self) -> usize {
        self.replay.len()
    }
}
