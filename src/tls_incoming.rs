//! A stream of TLS connections for tonic servers: accepts TCP, runs each handshake on its own
//! task (bounded by a timeout, so a slow client cannot stall others), and yields the streams.
//! The reloadable config is read per connection, so certificate rotation applies to new
//! connections.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use identity::tls::ReloadableServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to pick them up.
const BACKLOG: usize = 256;
/// Handshakes in progress at once; past it, new connections wait to start theirs.
const MAX_HANDSHAKES: usize = 1024;

/// TLS connections accepted on `listener`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadableServerConfig>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                // The server is gone (shut down): stop accepting at once.
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let peer = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = conn_tx.send(stream).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|s| (Ok(s), rx)) },
    )
}
