//! The admin listener (`admin.listen`): serves [`crate::admin`] over what every component
//! registered (readiness checks, `/statusz` sections, metrics). Started last, once the
//! registries are complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use runtime::http::{HttpServer, HttpSettings};

use super::Wiring;
use crate::admin::Admin;
use crate::config::Loaded;

/// Longest time to receive an admin request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers the admin's own `/statusz` facts (`version`, `uptime_seconds`, counted from
/// `started`), binds `admin.listen` and serves.
pub async fn start(w: &mut Wiring, loaded: &Loaded, started: Instant) -> Result<()> {
    w.health
        .register_section("version", || env!("CARGO_PKG_VERSION").into())?;
    w.health
        .register_section("uptime_seconds", move || started.elapsed().as_secs().into())?;
    let listener = w.bind("admin", "admin.listen", loaded.admin_listen).await?;
    let admin = Arc::new(Admin::new(
        w.health.clone(),
        std::mem::take(&mut w.registry),
    ));
    let server = HttpServer::new(&HttpSettings {
        header_read_timeout: HEADER_READ_TIMEOUT,
        ..HttpSettings::default()
    });
    tokio::spawn(server.serve(listener, w.drain.signal(), move |_| {
        let admin = admin.clone();
        hyper::service::service_fn(move |req| admin.clone().handle(req))
    }));
    Ok(())
}
