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
