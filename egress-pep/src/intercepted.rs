//! The intercepted path of a tunnel (DESIGN §7.2 `https` rules): a ClientHello an `https` rule
//! allows is terminated with a leaf for its SNI (minted by the interception CA, which actors
//! trust), and every decrypted request — HTTP/1.1 or h2, as the actor and the PEP agreed by
//! ALPN — is proxied and decided on its own authority, method and path by the cleartext
//! proxy's machinery ([`crate::cleartext`]) with re-originated TLS upstream
//! ([`crate::intercept_upstream`]: SNI = the authorised name, verified against the configured
//! roots).
//!
//! With `readable_denials`, a ClientHello no rule allows is intercepted too and every request
//! inside is answered with the tunnel's denial (`403 egress denied`) without contacting any
//! upstream, so an agent reads why instead of seeing a failed handshake.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::cleartext::{
    self, CleartextHooks, CleartextLimits, InterceptedOrigin, Origin, Upstreams,
};
use crate::decision::{Decision, Reason};
use crate::intercept_ca::LeafMinter;
use crate::intercept_tls::{TerminateError, Terminator};
use crate::intercept_upstream::UpstreamTls;

/// What interception needs, built once from `egress.interception`.
pub struct Interception {
    minter: Arc<LeafMinter>,
    terminator: Terminator,
    upstream_tls: Arc<UpstreamTls>,
    handshake_timeout: Duration,
    readable_denials: bool,
    /// New leaves minted for readable denials, per actor, in the current minute.
    denial_mints: moka::sync::Cache<String, Arc<AtomicU32>>,
}

/// New leaves one actor may have minted for readable denials per minute; beyond, a denied
/// ClientHello for a name without a cached leaf is closed instead (an actor cannot make the PEP
/// generate keys for random names at will; names with a leaf are always answered readably).
pub const DENIAL_MINTS_PER_MINUTE: u32 = 20;

/// Why an intercepted tunnel ended before any request: the tunnel record's reason
/// ([`Reason::NotHttp`] or [`Reason::InterceptHandshakeFailed`]) and a detail for the log.
#[derive(Debug)]
pub struct InterceptRefusal {
    /// The reason recorded.
    pub reason: Reason,
    /// What happened (log only: may name the SNI).
    pub detail: String,
}

impl Interception {
    /// Interception with leaves from `minter`, re-originated TLS trusting `upstream_tls`'s
    /// roots, actor handshakes bounded by `handshake_timeout` (also each upstream handshake),
    /// and `readable_denials` as configured.
    pub fn new(
        minter: Arc<LeafMinter>,
        upstream_tls: Arc<UpstreamTls>,
        handshake_timeout: Duration,
        readable_denials: bool,
    ) -> Self {
        Self {
            terminator: Terminator::new(minter.clone()),
            minter,
            upstream_tls,
            handshake_timeout,
            readable_denials,
            denial_mints: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// The leaf minter (its CA reloads, counts and cache).
    pub fn minter(&self) -> &Arc<LeafMinter> {
        &self.minter
    }

    /// Whether denied ClientHellos are intercepted to answer `403` readably.
    pub fn readable_denials(&self) -> bool {
        self.readable_denials
    }

    /// Whether `actor`'s denied ClientHello for `sni` is answered readably: readable denials are
    /// on, and the name has a cached leaf or the actor is within
    /// [`DENIAL_MINTS_PER_MINUTE`] new leaves for denials this minute.
    pub fn readable_denial(&self, actor: &str, sni: &str) -> bool {
        if !self.readable_denials {
            return false;
        }
        if self.minter.has_leaf(sni) {
            return true;
        }
        let minted = self
            .denial_mints
            .get_with_by_ref(actor, || Arc::new(AtomicU32::new(0)));
        minted.fetch_add(1, Ordering::Relaxed) < DENIAL_MINTS_PER_MINUTE
    }

    /// `/statusz`: the CA (`not_after`, RFC 3339), its reload state, leaves minted and cached,
    /// upstream roots.
    pub fn status(&self) -> serde_json::Value {
        let ca = self.minter.ca();
        serde_json::json!({
            "ca_not_after": humantime::format_rfc3339_seconds(ca.not_after().into()).to_string(),
            "ca_reload": self.minter.status(),
            "leaves_minted": self.minter.minted(),
            "leaves_cached": self.minter.cached(),
            "readable_denials": self.readable_denials,
            "upstream_roots": self.upstream_tls.roots(),
        })
    }

    /// Terminates `io` (its first bytes are the ClientHello the policy decided on, with SNI
    /// `sni`) and serves its requests until the actor closes the connection or a limit ends
    /// it. `refuse_all`: the ClientHello's denial, answered to every request.
    ///
    /// # Errors
    /// [`InterceptRefusal`] when the handshake with the actor fails (no HTTP ALPN, the actor
    /// distrusts the CA, timeout, no leaf) — the connection is closed.
    pub(crate) async fn serve<IO>(
        &self,
        io: IO,
        sni: &str,
        hooks: Arc<dyn CleartextHooks>,
        limits: CleartextLimits,
        refuse_all: Option<Decision>,
        upstreams: Upstreams,
    ) -> Result<(), InterceptRefusal>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let terminated = self
            .terminator
            .terminate(io, Some(sni), self.handshake_timeout)
            .await
            .map_err(|e| InterceptRefusal {
                reason: match e {
                    TerminateError::NotHttp => Reason::NotHttp,
                    _ => Reason::InterceptHandshakeFailed,
                },
                detail: e.to_string(),
            })?;
        let origin = Origin::Intercepted(Arc::new(InterceptedOrigin {
            sni: Arc::from(terminated.sni.as_str()),
            h2: terminated.h2,
            upstream_tls: self.upstream_tls.clone(),
            handshake_timeout: self.handshake_timeout,
            refuse_all,
        }));
        let served = cleartext::serve_proxy(terminated.stream, hooks, limits, origin, upstreams);
        if let Err(e) = served.await {
            tracing::debug!(error = %e, "intercepted connection ended");
        }
        Ok(())
    }
}
