//! Forwarding actor-to-actor traffic to ingress as a trusted peer (DESIGN §7.4): the PEP opens
//! mTLS to ingress's HTTPS listener with its own component certificate (ingress lists it in
//! `ingress.https.trusted_peers`). Readable requests go as requests with `ate-target-actor` and
//! the verified `ate-source-actor`; other traffic goes as `CONNECT <actor-host>:<port>` with the
//! same headers and is spliced. Ingress keeps target lookup, resume and worker routing.
//!
//! Every forwarded request and CONNECT carries `Via: <protocol> actorgate-pep` (RFC 9110
//! §7.6.3); one that arrives at a PEP again is a loop and is refused ([`is_loop`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use identity::tls::ReloadableClientConfig;
use routing_core::ActorRef;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::decision::Reason;
use crate::forward::DialRefusal;

/// The `Via` received-by pseudonym of a PEP: a request or CONNECT carrying it was forwarded by
/// a PEP already.
pub const VIA_PSEUDONYM: &str = "actorgate-pep";

/// CONNECT header (actorgate extension) with which a tunnel agent names the host the actor asked
/// for (`CONNECT b.demo.<suffix>:7000` to its explicit proxy) when the tunnel's target is the
/// address that name resolved to. The PEP uses it only to name the actor of opaque traffic to an
/// ingress address; it is never identity.
pub const DESTINATION_HOST_HEADER: &str = "ate-destination-host";

/// The target actor header ingress routes by (routing-core's `ate-target-actor`).
static TARGET_ACTOR: HeaderName = HeaderName::from_static("ate-target-actor");
/// The verified calling actor, believed by ingress only from trusted peers.
static SOURCE_ACTOR: HeaderName = HeaderName::from_static("ate-source-actor");
/// Client certificate details a proxy may add; never from an actor (ingress strips it too).
static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// See [`DESTINATION_HOST_HEADER`].
static DESTINATION_HOST: HeaderName = HeaderName::from_static(DESTINATION_HOST_HEADER);

/// Most bytes of ingress's answer head to a forwarded CONNECT.
const MAX_CONNECT_ANSWER_BYTES: usize = 16 * 1024;
/// Longest wait for ingress's answer to a forwarded CONNECT, once connected: ingress resolves and
/// resumes the actor first (bounded by its own resolver budget, then it answers 504).
pub const CONNECT_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the forwarding settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ActorForwardError {
    /// `server_name` is not a DNS name or IP address.
    #[error("{0:?} is not a DNS name or IP address")]
    BadServerName(String),
}

/// Ingress as the PEP reaches it: `host:port` of its HTTPS listener, the name its certificate
/// must carry, and client TLS configs with the PEP's component certificate (reloaded when the
/// files change) offering `http/1.1` alone or `h2` first.
pub struct IngressPeer {
    address: String,
    name: ServerName<'static>,
    h1: Arc<ReloadableClientConfig>,
    h2: Arc<ReloadableClientConfig>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for IngressPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressPeer")
            .field("address", &self.address)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl IngressPeer {
    /// Ingress at `address` (`ip:port` or `name:port`, names resolved by the system at each
    /// dial), verified as `server_name`, reached with `h1` (ALPN `http/1.1`) or `h2` (ALPN `h2`,
    /// `http/1.1`) within `connect_timeout` (TCP and TLS together).
    ///
    /// # Errors
    /// [`ActorForwardError::BadServerName`].
    pub fn new(
        address: String,
        server_name: &str,
        h1: Arc<ReloadableClientConfig>,
        h2: Arc<ReloadableClientConfig>,
        connect_timeout: Duration,
    ) -> Result<Self, ActorForwardError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| ActorForwardError::BadServerName(server_name.to_owned()))?;
        Ok(IngressPeer {
            address,
            name,
            h1,
            h2,
            connect_timeout,
        })
    }

    /// `host:port` of ingress.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A TLS connection to ingress, offering `h2` when `h2` (check the negotiated ALPN).
    ///
    /// # Errors
    /// [`Reason::DialFailed`] when TCP fails or the time runs out, [`Reason::UpstreamTlsFailed`]
    /// when the handshake fails (ingress's certificate, or it refused ours).
    pub async fn connect(&self, h2: bool) -> Result<TlsStream<TcpStream>, DialRefusal> {
        let config = if h2 { &self.h2 } else { &self.h1 };
        let connector = config.connector();
        let dial = async {
            let tcp = TcpStream::connect(self.address.as_str())
                .await
                .map_err(|e| DialRefusal {
                    reason: Reason::DialFailed,
                    detail: format!("ingress {}: {e}", self.address),
                })?;
            let _ = tcp.set_nodelay(true);
            connector
                .connect(self.name.clone(), tcp)
                .await
                .map_err(|e| DialRefusal {
                    reason: Reason::UpstreamTlsFailed,
                    detail: format!("ingress {} TLS: {e}", self.address),
                })
        };
        tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| DialRefusal {
                reason: Reason::DialFailed,
                detail: format!("ingress {}: no connection within the timeout", self.address),
            })?
    }

    /// A raw byte stream to `target`'s worker: `CONNECT <host>:<port>` to ingress with
    /// `ate-target-actor`, `ate-source-actor: <source>` and `Via`, answered 2xx.
    ///
    /// # Errors
    /// As [`IngressPeer::connect`]; [`Reason::ActorUnreachable`] when ingress answers anything
    /// but 2xx (the status is in the detail), the exchange fails, or no answer comes within
    /// [`CONNECT_ANSWER_TIMEOUT`].
    pub async fn tunnel(
        &self,
        target: &ActorRef,
        host: &str,
        port: u16,
        source: &str,
    ) -> Result<TokioIo<Upgraded>, DialRefusal> {
        let tls = self.connect(false).await?;
        let unreachable = |detail: String| DialRefusal {
            reason: Reason::ActorUnreachable,
            detail,
        };
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                .max_buf_size(MAX_CONNECT_ANSWER_BYTES)
                .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(format!("ingress CONNECT handshake: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "ingress CONNECT connection ended");
                }
            });
            let authority = format!("{host}:{port}");
            let mut req = Request::builder()
                .method(Method::CONNECT)
                .uri(authority.as_str())
                .header(http::header::HOST, authority.as_str())
                .body(Empty::new())
                .map_err(|e| unreachable(format!("CONNECT {authority}: {e}")))?;
            let source = HeaderValue::from_str(source)
                .map_err(|_| unreachable(format!("ate-source-actor {source:?}")))?;
            set_forwarded(req.headers_mut(), target, source, Version::HTTP_11)
                .map_err(|e| unreachable(format!("CONNECT {authority}: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(format!("ingress CONNECT {authority}: {e}")))?;
            if !resp.status().is_success() {
                return Err(unreachable(format!(
                    "ingress answered {} to CONNECT {authority}",
                    resp.status()
                )));
            }
            hyper::upgrade::on(resp)
                .await
                .map(TokioIo::new)
                .map_err(|e| unreachable(format!("ingress CONNECT {authority} upgrade: {e}")))
        };
        tokio::time::timeout(CONNECT_ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| DialRefusal {
                reason: Reason::ActorUnreachable,
                detail: format!("ingress did not answer CONNECT {host}:{port} in time"),
            })?
    }
}

/// Invalid forwarded header values (an actor reference or source that is not a header value).
#[derive(Debug, thiserror::Error)]
#[error("not a header value: {0}")]
pub struct BadHeaderValue(&'static str);

/// Shapes the headers of a request forwarded to `target` on behalf of `source`
/// (`<atespace>/<name>` of the verified actor, as a header value): whatever the actor sent as `ate-target-actor`,
/// `ate-source-actor`, `x-forwarded-client-cert` or `ate-destination-host` is replaced by the
/// PEP's own, and `Via: <version> actorgate-pep` is appended (`version`: the protocol the PEP
/// received the request with).
///
/// # Errors
/// [`BadHeaderValue`] when `target` cannot be a header value (a validated actor reference
/// always can).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    target: &ActorRef,
    source: HeaderValue,
    version: Version,
) -> Result<(), BadHeaderValue> {
    headers.remove(&XFCC);
    headers.remove(&DESTINATION_HOST);
    let target =
        HeaderValue::from_str(target.as_str()).map_err(|_| BadHeaderValue("ate-target-actor"))?;
    headers.insert(TARGET_ACTOR.clone(), target);
    headers.insert(SOURCE_ACTOR.clone(), source);
    // `<received-protocol> actorgate-pep` ([`VIA_PSEUDONYM`]).
    let protocol = match version {
        Version::HTTP_2 => "2 actorgate-pep",
        Version::HTTP_10 => "1.0 actorgate-pep",
        _ => "1.1 actorgate-pep",
    };
    headers.append(http::header::VIA, HeaderValue::from_static(protocol));
    Ok(())
}

/// Whether a PEP already forwarded this request or CONNECT: an element of one of its `Via`
/// headers is received by [`VIA_PSEUDONYM`] (case-insensitive; comments ignored).
pub fn is_loop(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::VIA).iter().any(|v| {
        let Ok(v) = v.to_str() else {
            return false;
        };
        v.split(',').any(|element| {
            let mut parts = element.split_whitespace();
            let _protocol = parts.next();
            parts
                .next()
                .is_some_and(|by| by.eq_ignore_ascii_case(VIA_PSEUDONYM))
        })
    })
}

/// The one valid `ate-destination-host` of a CONNECT (a DNS name, port optional), or `None`.
pub fn destination_host(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(&DESTINATION_HOST).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return None;
    };
    let v = v.to_str().ok()?;
    let (host, port) = v.rsplit_once(':').map_or((v, None), |(h, p)| (h, Some(p)));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    let valid = port_ok
        && !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_replace_the_actors_and_append_via() {
        let mut h = HeaderMap::new();
        h.insert("ate-source-actor", HeaderValue::from_static("evil/x"));
        h.append("ate-target-actor", HeaderValue::from_static("evil/y"));
        h.append("ate-target-actor", HeaderValue::from_static("evil/z"));
        h.insert("x-forwarded-client-cert", HeaderValue::from_static("By=x"));
        h.insert("ate-destination-host", HeaderValue::from_static("a.b"));
        h.insert("via", HeaderValue::from_static("1.1 proxy"));
        assert!(!is_loop(&h));
        let target = ActorRef::parse("demo/b").unwrap();
        set_forwarded(
            &mut h,
            &target,
            HeaderValue::from_static("demo/a"),
            Version::HTTP_2,
        )
        .unwrap();
        let all =
            |n: &str| -> Vec<&str> { h.get_all(n).iter().map(|v| v.to_str().unwrap()).collect() };
        assert_eq!(all("ate-source-actor"), ["demo/a"]);
        assert_eq!(all("ate-target-actor"), ["demo/b"]);
        assert!(all("x-forwarded-client-cert").is_empty());
        assert!(all("ate-destination-host").is_empty());
        assert_eq!(all("via"), ["1.1 proxy", "2 actorgate-pep"]);
        assert!(is_loop(&h));
    }

    #[test]
    fn loops_are_found_in_any_via_element() {
        let mut h = HeaderMap::new();
        h.insert(
            "via",
            HeaderValue::from_static("1.0 fred, 1.1 ActorGate-PEP (comment)"),
        );
        assert!(is_loop(&h));
        h.insert("via", HeaderValue::from_static("1.1 actorgate-pep-not"));
        assert!(!is_loop(&h));
    }

    #[test]
    fn destination_hosts_are_names_given_once() {
        let mut h = HeaderMap::new();
        assert_eq!(destination_host(&h), None);
        h.insert(
            "ate-destination-host",
            HeaderValue::from_static("b.demo.x:7000"),
        );
        assert_eq!(destination_host(&h), Some("b.demo.x:7000"));
        h.append("ate-destination-host", HeaderValue::from_static("c.demo.x"));
        assert_eq!(destination_host(&h), None);
        h.insert("ate-destination-host", HeaderValue::from_static("b/../x"));
        assert_eq!(destination_host(&h), None);
        h.insert(
            "ate-destination-host",
            HeaderValue::from_static("b.demo.x:http"),
        );
        assert_eq!(destination_host(&h), None);
    }
}
