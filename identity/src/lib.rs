//! Identity for actorgate (DESIGN §6): who is on the other end of every hop.
//!
//! * [`token`]: actor identity tokens (JWT) — `Signer`, strict `Verifier` over a [`jwks::KeySet`].
//! * [`assertion`]: egress assertions (per-tunnel JWT with the original destination) and their
//!   bounded [`replay`] cache.
//! * [`cert`]: the verified `ActorIdentity` (or component identity) of a peer certificate,
//!   using [`spiffe`] IDs and the upstream ActorIdentity extension.
//! * [`devca`]: a development CA; [`keys`]: JWT signing keys and JWKS.
//! * [`tls`]: rustls server/client configs from files, reloaded without restart.
//! * [`config`]: the config sections for that TLS material, validated with field paths.

#![warn(missing_docs)]

pub mod actor;
pub mod assertion;
pub mod cert;
pub mod config;
pub mod devca;
pub mod jwks;
pub mod keys;
pub mod pem;
pub mod replay;
pub mod spiffe;
/// Test helpers (test CA, JWT keys, TLS test server); feature `test-util`.
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tls;
pub mod token;

pub use actor::ActorIdentity;
pub use cert::{CertIdentityError, PeerIdentity};
pub use token::{Signer, TokenError, Verified, Verifier, VerifierSettings};
