//! Proxy header rules: hop-by-hop removal (RFC 9110 §7.6.1, including headers named in
//! `Connection`), `X-Forwarded-*` and `Forwarded`, request ids, and identity headers only a
//! trusted peer may set. The actor headers themselves (`ate-target-actor`, `ate-source-actor`,
//! `x-ate-*`, `x-gateway-destination-endpoint`) are named in [`routing_core::wire`].

use std::net::SocketAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use routing_core::wire;

/// `x-request-id`: kept when the client sent a sane one, generated otherwise.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the client's Host as a forwarding proxy saw it.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Envoy's client-certificate header: an identity claim the proxy never passes on.
static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Longest client-supplied request id that is kept.
const MAX_REQUEST_ID: usize = 128;

/// Headers that identify a caller or pick a worker. Removed from every request, so an external
/// client can never claim to be an actor; only `ate-source-actor` from a trusted peer (an
/// egress PEP, DESIGN §7.4) is kept, when valid.
pub fn untrusted_identity_headers() -> [&'static HeaderName; 3] {
    [
        &wire::SOURCE_ACTOR,
        &XFCC,
        &wire::GATEWAY_DESTINATION_ENDPOINT,
    ]
}

/// Comma-separated tokens of every line of a header, from the raw bytes (so a non-UTF-8 line is
/// still honoured), trimmed, lowercase-insensitive comparisons left to the caller.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers and every header the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive (for protocol upgrades).
/// `TE: trailers` survives (gRPC needs it); other `TE` codings are removed. `Trailer` is
/// end-to-end and stays (HTTP/1.1 only sends the trailers it lists).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Read TE before the Connection-named headers go: RFC 9110 §10.1.4 requires a sender of TE
    // to list it in Connection, so `TE: trailers` + `Connection: TE` is the normal form.
    let te_trailers = tokens(headers, &header::TE).any(|t| {
        let coding = t
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        coding.eq_ignore_ascii_case(b"trailers")
    });
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
            .filter_map(|t| HeaderName::from_bytes(t).ok())
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
    headers.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether an HTTP/1.1 request asks for a WebSocket upgrade. Other upgrades (notably `h2c`, which
/// would let a client speak HTTP/2 straight to the worker, past header stripping) are not
/// tunneled: their `Upgrade` header is removed and the request is proxied as a normal one.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    tokens(headers, &header::UPGRADE).any(|t| t.eq_ignore_ascii_case(b"websocket"))
        && tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// Joins several `Cookie` lines into one (`; `-separated): HTTP/2 clients may split cookies,
/// HTTP/1.1 servers expect one line (RFC 9113 §8.2.3).
pub fn merge_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
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
    let xff = match joined(headers, &X_FORWARDED_FOR) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
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
    let forwarded = match joined(headers, &header::FORWARDED) {
        Some(prev) => format!("{prev}, {elem}"),
        None => elem,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

/// Every line of a header joined with `, ` (earlier hops may have used separate lines); `None`
/// when absent or empty. Lines that are not visible ASCII are dropped rather than the chain.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
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
            ("te", "trailers;q=1, deflate"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("trailer", "grpc-status"),
        ]);
        remove_hop_by_hop(&mut g, true);
        assert_eq!(g.get("te").unwrap(), "trailers");
        assert_eq!(g.get("upgrade").unwrap(), "websocket");
        // `Connection: TE` (what RFC 9110 requires of a TE sender) keeps `te: trailers`.
        let mut t = map(&[("te", "trailers"), ("connection", "TE")]);
        remove_hop_by_hop(&mut t, false);
        assert_eq!(t.get("te").unwrap(), "trailers");
        assert!(t.get("connection").is_none());
        assert_eq!(g.get("connection").unwrap(), "upgrade");
        assert_eq!(
            g.get("trailer").unwrap(),
            "grpc-status",
            "Trailer is end-to-end"
        );
        // Non-UTF-8 Connection lines still name hop-by-hop headers.
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_bytes(b"x-hop, \xe9").unwrap(),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn only_websocket_upgrades_are_tunneled() {
        assert!(wants_upgrade(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket")
        ])));
        assert!(!wants_upgrade(&map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c")
        ])));
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn cookies_and_multi_line_chains_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        merge_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
        let mut f = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        add_forwarded(&mut f, "10.0.0.1:1".parse().unwrap(), "http", None);
        assert_eq!(
            f.get("x-forwarded-for").unwrap(),
            "1.1.1.1, 2.2.2.2, 10.0.0.1"
        );
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
