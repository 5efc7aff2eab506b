//! Terminating an actor's TLS for an intercepted name (DESIGN §7.2, `https` rules; issue 12):
//! the ClientHello's SNI selects a leaf from the [`LeafMinter`], the handshake completes with
//! ALPN `h2` or `http/1.1` when the actor offers it, else `http/1.1` (the PEP's order decides), and the decrypted stream
//! is what requests are then read from and decided on. A ClientHello without SNI is refused:
//! there is no name to speak for.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::intercept_ca::{InterceptCaError, LeafMinter};

/// ALPN offered to actors, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a termination failed.
#[derive(Debug, thiserror::Error)]
pub enum TerminateError {
    /// The ClientHello named no server (SNI absent): nothing to mint a leaf for.
    #[error("ClientHello without SNI")]
    NoSni,
    /// rustls read another SNI from the ClientHello than the one policy decided on.
    #[error("the ClientHello's SNI is not the one decided on")]
    SniMismatch,
    /// No leaf for the name.
    #[error(transparent)]
    Leaf(#[from] InterceptCaError),
    /// The actor refused the leaf (its alert says it does not trust the interception CA: the
    /// actor's image or sandbox lacks it, or the client pins certificates).
    #[error("the actor does not trust the interception CA")]
    CaNotTrusted,
    /// The actor offered ALPN protocols and none is HTTP (`h2`, `http/1.1`): nothing the PEP
    /// can read requests from.
    #[error("the actor offered no HTTP ALPN protocol")]
    NotHttp,
    /// Any other handshake failure (no TLS, the actor went away).
    #[error("TLS handshake with the actor: {0}")]
    Handshake(std::io::Error),
    /// The handshake did not finish in time.
    #[error("TLS handshake with the actor timed out")]
    Timeout,
}

/// A terminated actor connection.
pub struct Terminated<IO> {
    /// The decrypted stream.
    pub stream: TlsStream<IO>,
    /// The SNI the leaf was minted for (lowercase, no trailing dot).
    pub sni: String,
    /// `true` when the actor and the PEP agreed on ALPN `h2`.
    pub h2: bool,
}

/// Terminates actor TLS with leaves from one minter.
pub struct Terminator {
    minter: Arc<LeafMinter>,
    /// TLS 1.3 sessions of all terminations: one bounded store, so an actor's next connection
    /// to a name resumes (no full handshake) and no connection carries a store of its own.
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
}

/// Sessions kept for resumption across all terminated connections.
pub const SESSION_CACHE_ENTRIES: usize = 4096;

impl Terminator {
    /// Terminates with leaves from `minter`.
    pub fn new(minter: Arc<LeafMinter>) -> Self {
        Self {
            minter,
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
        }
    }

    /// Reads the ClientHello from `io`, mints (or reuses) the leaf for its SNI and completes the
    /// handshake, all within `timeout`. `decided` is the SNI the policy decided on (read from the
    /// same ClientHello by the classifier); when given, rustls's reading of the SNI must agree
    /// (case and a trailing dot aside), so the leaf is never for a name policy did not see.
    ///
    /// # Errors
    /// See [`TerminateError`]; `io` is dropped (closed) with the error.
    pub async fn terminate<IO>(
        &self,
        io: IO,
        decided: Option<&str>,
        timeout: Duration,
    ) -> Result<Terminated<IO>, TerminateError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio::time::timeout(timeout, self.handshake(io, decided))
            .await
            .unwrap_or(Err(TerminateError::Timeout))
    }

    async fn handshake<IO>(
        &self,
        io: IO,
        decided: Option<&str>,
    ) -> Result<Terminated<IO>, TerminateError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io)
            .await
            .map_err(TerminateError::Handshake)?;
        let sni = sni_of(&start.client_hello()).ok_or(TerminateError::NoSni)?;
        if let Some(decided) = decided
            && !decided.trim_end_matches('.').eq_ignore_ascii_case(&sni)
        {
            return Err(TerminateError::SniMismatch);
        }
        let leaf = self.minter.leaf(&sni).await?;
        let config = server_config(leaf, self.sessions.clone()).map_err(|e| {
            TerminateError::Handshake(std::io::Error::other(format!("TLS config: {e}")))
        })?;
        let stream = start
            .into_stream(Arc::new(config))
            .await
            .map_err(classify)?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        Ok(Terminated { stream, sni, h2 })
    }
}

/// A handshake error: the actor's distrust and a non-HTTP ALPN apart from the rest.
fn classify(e: std::io::Error) -> TerminateError {
    use rustls::AlertDescription as A;
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::AccessDenied,
        )) => TerminateError::CaNotTrusted,
        Some(rustls::Error::NoApplicationProtocol) => TerminateError::NotHttp,
        _ => TerminateError::Handshake(e),
    }
}

/// The SNI, lowercase without a trailing dot; `None` when absent or empty.
fn sni_of(hello: &ClientHello<'_>) -> Option<String> {
    let name = hello
        .server_name()?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

/// A server config presenting `leaf`, TLS 1.2 and 1.3, ALPN [`ALPN`], no client certificate,
/// sessions kept in `sessions` (rustls checks on resumption that the SNI is the same).
fn server_config(
    leaf: Arc<CertifiedKey>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(identity::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Leaf(leaf)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = sessions;
    Ok(config)
}

/// Always the one leaf minted for this connection's SNI.
#[derive(Debug)]
struct Leaf(Arc<CertifiedKey>);

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
