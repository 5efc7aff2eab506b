//! The HTTP resolve endpoint's own listener (`ingress.resolve.listen`), for `auth_request` /
//! ForwardAuth-style proxies: `GET /resolve` and `GET /resolve/error` (see
//! [`ingress::resolve_endpoint`]). It resumes actors, so it is not on the admin port: whoever can
//! scrape metrics cannot wake actors. Everything else answers 404.

use std::convert::Infallible;

use anyhow::Result;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use ingress::resolve_endpoint::{replay_error, resolve};
use routing_core::Resolver;
use runtime::http::{HttpServer, HttpSettings};

use super::Wiring;
use crate::config::Loaded;

/// Binds `ingress.resolve.listen`, when set, and serves the resolve endpoint on it.
pub async fn start(w: &mut Wiring, loaded: &Loaded, resolver: &Resolver) -> Result<()> {
    let Some(addr) = loaded.resolve_listen else {
        return Ok(());
    };
    let listener = w
        .bind("ingress_resolve", "ingress.resolve.listen", addr)
        .await?;
    let resolver = resolver.clone();
    let server = HttpServer::new(&HttpSettings::default());
    tokio::spawn(server.serve(listener, w.drain.signal(), move |_| {
        let resolver = resolver.clone();
        hyper::service::service_fn(move |req| {
            let resolver = resolver.clone();
            async move { Ok::<_, Infallible>(handle(&resolver, req).await) }
        })
    }));
    Ok(())
}

/// Routes one request of the resolve listener.
async fn handle(resolver: &Resolver, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let full = |s: String| Full::new(Bytes::from(s));
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/resolve" => resolve(resolver, req.headers(), full).await,
        "/resolve/error" => replay_error(req.headers(), full),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
