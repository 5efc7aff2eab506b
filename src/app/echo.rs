//! The embedded echo worker (`echo_worker`), the local demo's backend: served on the runtime's
//! listener, its connections and WebSocket sessions held by the drain.

use anyhow::Result;

use super::Wiring;
use crate::config::Loaded;

/// Binds `echo_worker.listen`, when set, and serves the echo worker on it.
pub async fn start(w: &mut Wiring, loaded: &Loaded) -> Result<()> {
    let Some((addr, name)) = &loaded.echo_worker else {
        return Ok(());
    };
    let listener = w.bind("echo_worker", "echo_worker.listen", *addr).await?;
    tokio::spawn(ingress::echo::serve_listener(
        listener,
        name.clone(),
        w.drain.signal(),
    ));
    Ok(())
}
