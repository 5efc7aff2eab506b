//! Proxy header rules: hop-by-hop removal (RFC 9110 §7.6.1, including headers named in
//! `Connection`), `X-Forwarded-*` and `Forwarded`, request ids, and identity headers only a
//! trusted peer may set.

use std::net::SocketAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// `x-request-id`: kept when the client sent a sane one, generated otherwise.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The actor a request is for, as `<atespace>/<name>`; overwritten with the resolved actor.
pub static TARGET_ACTOR: HeaderName = HeaderName::from_static("ate-target-actor");
/// The verified source actor of an actor-to-actor call; only trusted peers may send it.
pub static SOURCE_ACTOR: HeaderName = HeaderName::from_static("ate-source-actor");
/// Worker agent mode: the actor port the request is for.
pub static TARGET_PORT: HeaderName = HeaderName::from_static("x-ate-target-port");
/// Worker agent mode: set on a 421 when the actor no longer runs on that worker.
pub static ASSIGNMENT_STALE: HeaderName = HeaderName::from_static("x-ate-assignment-stale");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static GATEWAY_DESTINATION: HeaderName = HeaderName::from_static("x-gateway-destination-endpoint");

/// Longest client-supplied request id that is kept.
const MAX_REQUEST_ID: usize = 128;

/// Headers that identify a caller and that only a trusted peer may set. Removed from every
/// request of an untrusted client, so an external client can never claim to be an actor.
pub fn untrusted_identity_headers() -> [&'static HeaderName; 3] {
    [&SOURCE_ACTOR, &XFCC, &GATEWAY_DESTINATION]
}

/// Removes hop-by-hop headers and every header the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive (for protocol upgrades).
/// `TE: trailers` survives (gRPC needs it); other `TE` values are removed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in Connection are hop-by-hop for this message.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
            .collect();
        for n in named {
            headers.remove(&n);
        }
        headers.remove(header::CONNECTION);
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether an HTTP/1.1 request asks for a protocol upgrade (WebSocket and others).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Appends the client to `X-Forwarded-For` and `Forwarded`, and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` to what this hop saw.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: SocketAddr,
    proto: &'static str,
    host: Option<&str>,
) {
    let ip = client.ip();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    // RFC 7239: IPv6 addresses are quoted and bracketed.
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut elem = format!("for={node};proto={proto}");
    if let Some(h) = host.filter(|h| {
        h.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        if let Ok(v) = HeaderValue::from_str(h) {
            headers.insert(&X_FORWARDED_HOST, v);
        }
        elem.push_str(";host=\"");
        elem.push_str(h);
        elem.push('"');
    } else {
        headers.remove(&X_FORWARDED_HOST);
    }
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {elem}"),
        _ => elem,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

/// Keeps a sane client request id or generates one; returns the value in use.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID)
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    let id = new_request_id();
    headers.insert(&REQUEST_ID, id.clone());
    id
}

/// A random 128-bit id, hex.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    for i in 0..16 {
        buf[i] = HEX[((a >> (60 - 4 * i)) & 0xf) as usize];
        buf[16 + i] = HEX[((b >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic x"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        let mut g = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        remove_hop_by_hop(&mut g, true);
        assert_eq!(g.get("te").unwrap(), "trailers");
        assert_eq!(g.get("upgrade").unwrap(), "websocket");
        assert_eq!(g.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=1.1.1.1")]);
        add_forwarded(
            &mut h,
            "10.0.0.9:5555".parse().unwrap(),
            "https",
            Some("app.example:8443"),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "app.example:8443");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=1.1.1.1, for=10.0.0.9;proto=https;host=\"app.example:8443\""
        );
        let mut v6 = HeaderMap::new();
        add_forwarded(&mut v6, "[::1]:1".parse().unwrap(), "http", None);
        assert_eq!(v6.get("forwarded").unwrap(), "for=\"[::1]\";proto=http");
    }

    #[test]
    fn request_ids() {
        let mut h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(ensure_request_id(&mut h), "abc-123");
        let mut bad = map(&[("x-request-id", "has space")]);
        let id = ensure_request_id(&mut bad);
        assert_eq!(id.len(), 32);
        assert_eq!(bad.get("x-request-id").unwrap(), &id);
        assert_ne!(new_request_id(), new_request_id());
    }
}
