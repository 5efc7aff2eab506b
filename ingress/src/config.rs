//! The config sections the ingress crate owns (DESIGN §1): `ingress` (the HTTP proxy's
//! listeners, how it talks to workers, request limits, and the HTTP resolve endpoint's listener)
//! and `echo_worker` (the demo backend), with their defaults, validation and conversion into
//! [`ProxySettings`], [`ListenerLimits`] and the TLS file sets of the listeners and of the
//! connections to workers.
//!
//! Problems are reported with paths relative to the section (`upstream.tls.ca_file`); the
//! composer of the whole file prefixes them with the section's path. Defaults are those of
//! [`ProxySettings::default`] and [`ListenerLimits::default`], so each is written once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use identity::config::{ClientTlsConfig, ServerTlsConfig};
use identity::tls::ClientAuth;
use identity::tls::{ClientTlsFiles, ServerTlsFiles};
use runtime::config::FieldErrors;
use runtime::config::{check_duration, socket_addr};
use serde::{Deserialize, Serialize};

use crate::trusted_peers::TrustedPeers;
use crate::{ListenerLimits, ProxySettings, UpstreamProtocol};

/// The ingress section: the HTTP proxy and the HTTP resolve endpoint's listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Turn the proxy (the `http` and `https` listeners) off, e.g. when only the control-plane
    /// simulator is wanted. `resolve` does not depend on it.
    pub enabled: bool,
    /// The plaintext listener.
    pub http: HttpListenerConfig,
    /// HTTPS listener (ALPN h2 and http/1.1); off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsListenerConfig>,
    /// How the proxy talks to workers.
    pub upstream: UpstreamConfig,
    /// Request limits of the proxy's listeners.
    pub limits: LimitsConfig,
    /// The HTTP resolve endpoint (`/resolve`, for nginx `auth_request` and similar) on a
    /// listener of its own; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolve: Option<ResolveListenerConfig>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            http: HttpListenerConfig::default(),
            https: None,
            upstream: UpstreamConfig::default(),
            limits: LimitsConfig::default(),
            resolve: None,
        }
    }
}

/// The plaintext listener: HTTP/1.1 and h2c (prior knowledge).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerConfig {
    /// `ip:port` to listen on.
    #[serde(default = "default_http_listen")]
    pub listen: String,
}

impl Default for HttpListenerConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
        }
    }
}

fn default_http_listen() -> String {
    "0.0.0.0:8080".to_owned()
}

/// The TLS listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsListenerConfig {
    /// `ip:port` to listen on.
    #[serde(default = "default_https_listen")]
    pub listen: String,
    /// Certificate, key and client-certificate policy.
    pub tls: ServerTlsConfig,
    /// Client identities trusted to send `ate-source-actor` (the egress PEPs; DESIGN §5):
    /// SPIFFE IDs, or prefixes ending in `/*`. Needs `tls.client_auth` `optional` or
    /// `required`. Default none: the header is stripped from every request.
    #[serde(default)]
    pub trusted_peers: Vec<String>,
}

fn default_https_listen() -> String {
    "0.0.0.0:8443".to_owned()
}

/// The listener of the HTTP resolve endpoint (`ingress.resolve`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveListenerConfig {
    /// `ip:port` to listen on; no default: whoever reaches it can resume actors.
    pub listen: String,
}

/// How the proxy talks to workers; defaults are [`ProxySettings::default`]'s.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `auto` (HTTP/2 for gRPC, HTTP/1.1 otherwise), `http1` or `http2`; with TLS to workers ALPN
    /// offers only the chosen protocol.
    pub protocol: UpstreamProtocol,
    /// Bound on connecting to a worker.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From sending the request (body included) to the worker's response headers; past it: 504.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Longest pause inside a worker's response body; past it the stream is cut.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long an idle pooled connection to a worker is kept.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections per worker.
    pub pool_max_idle_per_host: usize,
    /// TLS to workers (the worker agent's mTLS); required when
    /// `routing.worker_transport.mode` is `agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsConfig>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        let p = ProxySettings::default();
        Self {
            protocol: p.upstream_protocol,
            connect_timeout: p.connect_timeout,
            response_timeout: p.response_timeout,
            idle_timeout: p.idle_timeout,
            pool_idle_timeout: p.pool_idle_timeout,
            pool_max_idle_per_host: p.pool_max_idle_per_host,
            tls: None,
        }
    }
}

/// Request limits of the ingress listeners; defaults are [`ListenerLimits::default`]'s.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest time to receive a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// A connection with no request in progress (HTTP/2: no open stream) this long is closed
    /// (HTTP/2: GOAWAY).
    #[serde(with = "humantime_serde")]
    pub idle_connection_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = ListenerLimits::default();
        Self {
            header_read_timeout: l.header_read_timeout,
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            max_concurrent_streams: l.max_concurrent_streams,
            idle_connection_timeout: l.idle_connection_timeout,
        }
    }
}

/// The validated proxy settings.
#[derive(Debug)]
pub struct IngressSettings {
    /// The plaintext listener's address.
    pub http_listen: SocketAddr,
    /// TLS to workers.
    pub worker_tls: Option<ClientTlsFiles>,
    /// The TLS listener's address and files.
    pub https: Option<(SocketAddr, ServerTlsFiles)>,
    /// Who on the TLS listener may send `ate-source-actor`.
    pub trusted_peers: TrustedPeers,
    /// Proxy tuning.
    pub proxy: ProxySettings,
    /// Listener limits.
    pub limits: ListenerLimits,
}

impl IngressConfig {
    /// The proxy's settings, after checking every listener, timeout, limit and TLS file
    /// (relative files resolved against `base`, the config file's directory).
    pub fn proxy_settings(&self, base: &Path) -> Result<IngressSettings, FieldErrors> {
        let mut errs = FieldErrors::default();
        let http_listen = socket_addr(&mut errs, "http.listen", &self.http.listen);
        let https = self.https.as_ref().and_then(|h| {
            let addr = socket_addr(&mut errs, "https.listen", &h.listen)?;
            let alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let tls = errs.collect("https.tls", h.tls.files(base, alpn))?;
            Some((addr, tls))
        });
        let trusted_peers = match &self.https {
            None => TrustedPeers::default(),
            Some(h) => {
                if !h.trusted_peers.is_empty() && h.tls.client_auth == ClientAuth::None {
                    errs.push(
                        "https.trusted_peers",
                        "needs tls.client_auth optional or required (a peer is known by its client certificate)",
                    );
                }
                TrustedPeers::parse(&h.trusted_peers).unwrap_or_else(|bad| {
                    for (i, e) in bad {
                        errs.push(format!("https.trusted_peers[{i}]"), e.to_string());
                    }
                    TrustedPeers::default()
                })
            }
        };
        let u = &self.upstream;
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        check_duration(
            &mut errs,
            "upstream.connect_timeout",
            u.connect_timeout,
            ms(10),
            s(60),
        );
        check_duration(
            &mut errs,
            "upstream.response_timeout",
            u.response_timeout,
            ms(10),
            s(3600),
        );
        check_duration(
            &mut errs,
            "upstream.idle_timeout",
            u.idle_timeout,
            ms(10),
            s(86400),
        );
        check_duration(
            &mut errs,
            "upstream.pool_idle_timeout",
            u.pool_idle_timeout,
            Duration::ZERO,
            s(3600),
        );
        if u.pool_max_idle_per_host > 100_000 {
            errs.push("upstream.pool_max_idle_per_host", "must be at most 100000");
        }
        let l = &self.limits;
        check_duration(
            &mut errs,
            "limits.header_read_timeout",
            l.header_read_timeout,
            ms(100),
            s(600),
        );
        if !(1024..=1024 * 1024).contains(&l.max_header_bytes) {
            errs.push(
                "limits.max_header_bytes",
                format!("{} is out of range (1024 to 1048576)", l.max_header_bytes),
            );
        }
        if !(1..=1000).contains(&l.max_headers) {
            errs.push(
                "limits.max_headers",
                format!("{} is out of range (1 to 1000)", l.max_headers),
            );
        }
        if !(1..=100_000).contains(&l.max_concurrent_streams) {
            errs.push(
                "limits.max_concurrent_streams",
                format!("{} is out of range (1 to 100000)", l.max_concurrent_streams),
            );
        }
        check_duration(
            &mut errs,
            "limits.idle_connection_timeout",
            l.idle_connection_timeout,
            ms(100),
            s(86_400),
        );
        let worker_tls = u
            .tls
            .as_ref()
            .and_then(|t| errs.collect("upstream.tls", t.files(base)));
        let (Some(http_listen), true) = (http_listen, errs.is_empty()) else {
            return Err(errs);
        };
        Ok(IngressSettings {
            http_listen,
            worker_tls,
            https,
            trusted_peers,
            proxy: ProxySettings {
                connect_timeout: u.connect_timeout,
                response_timeout: u.response_timeout,
                idle_timeout: u.idle_timeout,
                upstream_protocol: u.protocol,
                pool_idle_timeout: u.pool_idle_timeout,
                pool_max_idle_per_host: u.pool_max_idle_per_host,
                max_headers: l.max_headers,
            },
            limits: ListenerLimits {
                header_read_timeout: l.header_read_timeout,
                max_header_bytes: l.max_header_bytes,
                max_headers: l.max_headers,
                max_concurrent_streams: l.max_concurrent_streams,
                idle_connection_timeout: l.idle_connection_timeout,
                ..ListenerLimits::default()
            },
        })
    }

    /// The HTTP resolve endpoint's listen address, when `resolve` is set.
    pub fn resolve_listen(&self) -> Result<Option<SocketAddr>, FieldErrors> {
        let Some(r) = &self.resolve else {
            return Ok(None);
        };
        let mut errs = FieldErrors::default();
        let addr = socket_addr(&mut errs, "resolve.listen", &r.listen);
        errs.into_result(addr)
    }
}

/// An embedded echo worker (`echo_worker`), for the local demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoWorkerConfig {
    /// `ip:port` to listen on.
    pub listen: String,
    /// Reported in `x-echo-worker` and in echo bodies.
    #[serde(default = "default_echo_name")]
    pub name: String,
}

fn default_echo_name() -> String {
    "echo".to_owned()
}

impl EchoWorkerConfig {
    /// The address to listen on.
    pub fn listen_addr(&self) -> Result<SocketAddr, FieldErrors> {
        let mut errs = FieldErrors::default();
        let addr = socket_addr(&mut errs, "listen", &self.listen);
        match addr {
            Some(a) => Ok(a),
            None => Err(errs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::config::parse_yaml;

    fn paths(errs: &FieldErrors) -> Vec<&str> {
        errs.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn defaults_are_the_settings_defaults() {
        let s = IngressConfig::default()
            .proxy_settings(Path::new("/"))
            .unwrap();
        let (p, l) = (ProxySettings::default(), ListenerLimits::default());
        assert_eq!(s.http_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(
            (s.proxy.response_timeout, s.proxy.pool_max_idle_per_host),
            (p.response_timeout, p.pool_max_idle_per_host)
        );
        assert_eq!(
            (
                s.limits.max_concurrent_streams,
                s.limits.tls_handshake_timeout
            ),
            (l.max_concurrent_streams, l.tls_handshake_timeout)
        );
        assert_eq!(IngressConfig::default().resolve_listen().unwrap(), None);
    }

    #[test]
    fn every_problem_is_reported_relative_to_the_section() {
        let c: IngressConfig = parse_yaml(
            "{http: {listen: nope}, https: {tls: {cert_file: x.crt, key_file: x.key}},\
              upstream: {connect_timeout: 0s, tls: {ca_file: ca.crt}},\
              limits: {max_headers: 0}, resolve: {listen: '127.0.0.1'}}",
        )
        .unwrap();
        let errs = c.proxy_settings(Path::new("/nonexistent")).unwrap_err();
        assert_eq!(
            paths(&errs),
            [
                "http.listen",
                "https.tls.cert_file",
                "https.tls.key_file",
                "upstream.connect_timeout",
                "limits.max_headers",
                "upstream.tls.ca_file",
                "upstream.tls",
            ]
        );
        assert_eq!(paths(&c.resolve_listen().unwrap_err()), ["resolve.listen"]);
    }

    #[test]
    fn echo_worker_needs_an_address() {
        let e: EchoWorkerConfig = parse_yaml("{listen: '127.0.0.1:0'}").unwrap();
        assert_eq!(e.name, "echo");
        assert!(e.listen_addr().is_ok());
        let e: EchoWorkerConfig = parse_yaml("{listen: 'x'}").unwrap();
        assert_eq!(paths(&e.listen_addr().unwrap_err()), ["listen"]);
    }
}
