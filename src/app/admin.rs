//! The admin listener (`admin.listen`): serves [`crate::admin`] over what every component
//! registered (readiness checks, `/statusz` sections, metrics). Started last, once the
//! registries are complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use runtime::BoundListener;
use runtime::http::{HttpServer, HttpSettings};

use super::Wiring;
use crate::admin::Admin;
use crate::config::Loaded;

/// Longest time to receive an admin request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers the admin's own `/statusz` facts (`version`, `uptime_seconds`, counted from
/// `started`) and binds `admin.listen`; [`serve`] serves it once every component has
/// registered (the app's summary sections name the admin address too, so binding comes first).
pub async fn bind(w: &mut Wiring, loaded: &Loaded, started: Instant) -> Result<BoundListener> {
    w.health
        .register_section("version", || env!("CARGO_PKG_VERSION").into())?;
    w.health
        .register_section("uptime_seconds", move || started.elapsed().as_secs().into())?;
    w.bind("admin", "admin.listen", loaded.admin_listen).await
}

/// Serves the admin endpoints on `listener` over what the components registered.
pub fn serve(w: &mut Wiring, listener: BoundListener) {
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
}
