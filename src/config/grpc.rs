//! `grpc`: the gRPC server (Envoy ExtProc, `actorgate.router.v1.Router`, health, reflection,
//! and optionally the `ateapi.Control` simulator).

use std::net::SocketAddr;
use std::path::Path;

use identity::config::ServerTlsConfig;
use identity::tls::ServerTlsFiles;
use routing_core::field_error::FieldErrors;
use runtime::config::socket_addr;
use serde::{Deserialize, Serialize};

/// The gRPC server. `extproc` and `resolve_route` route requests to actors: without a
/// `directory` they are off unless written out (see [`super::parse`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// `ip:port` to listen on.
    pub listen: String,
    /// Serve the static directory as `ateapi.Control` (a control-plane simulator).
    pub control_plane_simulator: bool,
    /// Serve Envoy ExtProc (`envoy.service.ext_proc.v3.ExternalProcessor`).
    pub extproc: bool,
    /// Serve `actorgate.router.v1.Router/ResolveRoute`.
    pub resolve_route: bool,
    /// Serve gRPC server reflection (v1) for the Router and health services.
    pub reflection: bool,
    /// TLS for the gRPC listener (plaintext when absent). Files are reloaded on change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
    /// Callers trusted to name the source actor in `ResolveRoute` (the egress PEPs; DESIGN §5):
    /// SPIFFE IDs, or prefixes ending in `/*`. Needs `tls.client_auth` `optional` or
    /// `required`. Default none.
    pub trusted_peers: Vec<String>,
    /// Which downstream peers, as Envoy reports them, may name the calling actor in
    /// `ate-source-actor` on the ExtProc path (DESIGN §5); absent: it is removed from every
    /// request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extproc_source_actor: Option<ExtProcSourceActorConfig>,
}

/// `grpc.extproc_source_actor`: where Envoy reports the downstream peer, and which peers are
/// trusted (the egress PEPs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcSourceActorConfig {
    /// `uri_san` (the attribute `connection.uri_san_peer_certificate`, listed in the ext_proc
    /// filter's `request_attributes`) or `xfcc` (`x-forwarded-client-cert` with
    /// `forward_client_cert_details: SANITIZE_SET`).
    pub peer_identity: PeerIdentityConfig,
    /// SPIFFE IDs, or prefixes ending in `/*`.
    pub trusted_peers: Vec<String>,
}

/// Where Envoy reports the downstream peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerIdentityConfig {
    /// `connection.uri_san_peer_certificate`.
    UriSan,
    /// `x-forwarded-client-cert`'s `URI`.
    Xfcc,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:50051".to_owned(),
            control_plane_simulator: false,
            extproc: true,
            resolve_route: true,
            reflection: true,
            tls: None,
            trusted_peers: Vec::new(),
            extproc_source_actor: None,
        }
    }
}

impl GrpcConfig {
    /// Whether any gRPC service of ours is on (else nothing listens on `listen`).
    pub fn served(&self) -> bool {
        self.control_plane_simulator || self.extproc || self.resolve_route
    }

    /// The listen address (checked even when nothing is served).
    pub fn listen_addr(&self) -> Result<SocketAddr, FieldErrors> {
        let mut errs = FieldErrors::default();
        match socket_addr(&mut errs, "listen", &self.listen) {
            Some(a) => Ok(a),
            None => Err(errs),
        }
    }

    /// The callers trusted to name a source actor.
    ///
    /// # Errors
    /// A bad entry (by index), or a list without client certificates to check it against.
    pub fn trusted_peers(&self) -> Result<ingress::TrustedPeers, FieldErrors> {
        let mut errs = FieldErrors::default();
        let client_auth = self
            .tls
            .as_ref()
            .map_or(identity::tls::ClientAuth::None, |t| t.client_auth);
        if !self.trusted_peers.is_empty() && client_auth == identity::tls::ClientAuth::None {
            errs.push(
                "trusted_peers",
                "needs tls.client_auth optional or required (a peer is known by its client certificate)",
            );
        }
        let peers = ingress::TrustedPeers::parse(&self.trusted_peers).unwrap_or_else(|bad| {
            for (i, e) in bad {
                errs.push(format!("trusted_peers[{i}]"), e.to_string());
            }
            ingress::TrustedPeers::default()
        });
        errs.into_result(peers)
    }

    /// The ExtProc path's trust in Envoy-reported peers, when configured.
    ///
    /// # Errors
    /// A bad entry of `extproc_source_actor.trusted_peers` (by index), or an empty list.
    pub fn extproc_source_trust(
        &self,
    ) -> Result<Option<ingress::extproc::SourceTrust>, FieldErrors> {
        let Some(c) = &self.extproc_source_actor else {
            return Ok(None);
        };
        let mut errs = FieldErrors::default();
        if c.trusted_peers.is_empty() {
            errs.push(
                "extproc_source_actor.trusted_peers",
                "name at least one peer (or leave extproc_source_actor out)",
            );
        }
        let peers = ingress::TrustedPeers::parse(&c.trusted_peers).unwrap_or_else(|bad| {
            for (i, e) in bad {
                errs.push(
                    format!("extproc_source_actor.trusted_peers[{i}]"),
                    e.to_string(),
                );
            }
            ingress::TrustedPeers::default()
        });
        let identity = match c.peer_identity {
            PeerIdentityConfig::UriSan => ingress::extproc::PeerIdentitySource::UriSan,
            PeerIdentityConfig::Xfcc => ingress::extproc::PeerIdentitySource::Xfcc,
        };
        errs.into_result(Some(ingress::extproc::SourceTrust { identity, peers }))
    }

    /// The listener's TLS files (ALPN h2), when `tls` is set.
    pub fn tls_files(&self, base: &Path) -> Result<Option<ServerTlsFiles>, FieldErrors> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let mut errs = FieldErrors::default();
        let files = errs.collect("tls", tls.files(base, vec![b"h2".to_vec()]));
        errs.into_result(files)
    }
}
