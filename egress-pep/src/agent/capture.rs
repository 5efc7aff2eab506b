//! The capture listener (DESIGN §7.5): every TCP connection the rules redirect here is carried to
//! the PEP in its own tunnel to its original destination, bytes spliced both ways with
//! half-close honoured (an actor that shuts down its write side still receives the whole
//! answer), under the runtime's drain. A tunnel the PEP refuses closes the actor's connection
//! without a byte.

use std::net::SocketAddr;
use std::sync::Arc;

use runtime::drain::DrainSignal;
use tokio::net::{TcpListener, TcpStream};

use crate::agent::metrics::{AgentMetrics, TunnelResult};
use crate::agent::original_dst::original_destination;
use crate::agent::per_connection::TunnelError;
use crate::agent::tunnels::{TunnelStream, Tunnels};
use crate::forward::{SpliceCounters, SpliceLimits, splice_counted};

/// Serves captured connections from `listener` until the drain starts; each connection is a
/// task the drain waits for (up to its deadline).
pub async fn serve(
    listener: TcpListener,
    tunnels: Arc<Tunnels>,
    limits: SpliceLimits,
    metrics: AgentMetrics,
    drain: DrainSignal,
) {
    let own = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            () = drain.draining() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: keep serving the connections that fit.
                tracing::warn!(error = %e, "capture listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let tunnels = tunnels.clone();
        let metrics = metrics.clone();
        metrics.captured();
        drain.spawn(async move {
            if let Err(why) = carry(stream, own, &tunnels, limits, &metrics).await {
                tracing::debug!(%peer, why, "captured connection not carried");
            }
        });
    }
}

/// One captured connection: its original destination, a tunnel there, the splice.
async fn carry(
    stream: TcpStream,
    own: Option<SocketAddr>,
    tunnels: &Tunnels,
    limits: SpliceLimits,
    metrics: &AgentMetrics,
) -> Result<(), String> {
    let mode = tunnels.mode();
    let _ = stream.set_nodelay(true);
    let dst = match original_destination(&stream) {
        Ok(dst) if Some(dst) != own => dst,
        Ok(_) => {
            metrics.tunnel(mode, TunnelResult::NotCaptured);
            return Err("a connection to the capture listener itself".into());
        }
        Err(e) => {
            metrics.tunnel(mode, TunnelResult::NotCaptured);
            return Err(format!("no original destination (not redirected?): {e}"));
        }
    };
    // Boxed: the handshake's state is large and only needed until the tunnel is open; the
    // task of an idle captured connection keeps only what the splice needs.
    let tunnel = match Box::pin(tunnels.open_for(&stream, dst)).await {
        Ok(t) => {
            metrics.tunnel(mode, TunnelResult::Opened);
            metrics.connect_status(200);
            t
        }
        Err(e) => {
            if let TunnelError::Refused { status, .. } = &e {
                metrics.tunnel(mode, TunnelResult::Refused);
                metrics.connect_status(*status);
                // The status and reason are logged; the actor's connection closes with no bytes.
                tracing::info!(%dst, status, "the PEP refused the tunnel");
            } else if let TunnelError::Client(_) = &e {
                metrics.tunnel(mode, TunnelResult::ClientGone);
            } else {
                metrics.tunnel(mode, TunnelResult::Failed);
                tracing::warn!(%dst, error = %e, "no tunnel to the PEP");
            }
            return Err(format!("tunnel to {dst}: {e}"));
        }
    };
    // A per-connection tunnel is a connection to the PEP of its own (pooled ones count theirs).
    let _pep_connection = matches!(tunnel, TunnelStream::Tls(_)).then(|| metrics.pep_connection());
    let early = match &tunnel {
        TunnelStream::H2(t) => t.sent_early(),
        TunnelStream::Tls(_) => 0,
    };
    let counters = SpliceCounters::new();
    let spliced = splice_counted(stream, tunnel, limits, &counters).await;
    metrics.bytes(counters.up() + early, counters.down());
    spliced
        .map(|_| ())
        .map_err(|e| format!("splice to {dst}: {e}"))
}
