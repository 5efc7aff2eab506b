//! The `ateapi.Control` back-end: a tonic client of the real ate-api-server (DESIGN §3), over
//! plaintext, TLS or mTLS, with an optional bearer token file that is re-read periodically so
//! rotated tokens are picked up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::convert::{object_ref, page_from_proto, record_from_proto, resume_from_proto};
use super::{ActorDirectory, ActorPage, ActorRecord, DirFuture, ResumeOutcome};
use crate::actor_ref::ActorRef;
use crate::proto;
use crate::proto::control_client::ControlClient;

/// Largest control-plane response accepted.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How often the bearer token file is re-read.
const TOKEN_REFRESH: Duration = Duration::from_secs(30);

/// How to secure the connection to ate-api-server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// No TLS (local development, or a sidecar doing TLS).
    #[default]
    Plaintext,
    /// Server-authenticated TLS.
    Tls,
    /// Mutual TLS: the real ate-api-server requires this.
    Mtls,
}

/// Settings of the ateapi back-end.
#[derive(Debug, Clone)]
pub struct AteApiSettings {
    /// `host:port` of ate-api-server.
    pub address: String,
    pub tls: TlsMode,
    /// PEM CA bundle that signs the server certificate (tls, mtls).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key (mtls).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name expected in the server certificate; defaults to the address's host.
    pub server_name: Option<String>,
    /// File holding a bearer token sent as `authorization: Bearer …`.
    pub token_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Deadline sent with each RPC (`grpc-timeout`); the only bound on a resume the resolver
    /// has stopped waiting for.
    pub rpc_timeout: Duration,
}

/// Problems building the client (bad files, bad address). Connection failures are not
/// reported here: the channel connects lazily and RPCs then fail with UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
pub enum AteApiError {
    #[error("invalid ate-api-server address {0:?}: {1}")]
    Address(String, String),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} requires {1}")]
    Missing(&'static str, &'static str),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("token file {0} does not hold a valid header value")]
    BadToken(PathBuf),
}

/// Adds the bearer token, if any, to every RPC.
#[derive(Clone)]
struct BearerToken(Arc<ArcSwapOption<AsciiMetadataValue>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = self.0.load_full() {
            req.metadata_mut().insert("authorization", (*v).clone());
        }
        Ok(req)
    }
}

type Client = ControlClient<InterceptedService<Channel, BearerToken>>;

/// `ActorDirectory` over a remote `ateapi.Control`.
pub struct AteApiDirectory {
    client: Client,
    rpc_timeout: Duration,
    _token_refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for AteApiDirectory {
    fn drop(&mut self) {
        if let Some(h) = &self._token_refresher {
            h.abort();
        }
    }
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, AteApiError> {
    std::fs::read(path).map_err(|source| AteApiError::Read {
        what,
        path: path.clone(),
        source,
    })
}

fn load_token(path: &PathBuf) -> Result<AsciiMetadataValue, AteApiError> {
    let raw = read("token file", path)?;
    let token = String::from_utf8(raw).map_err(|_| AteApiError::BadToken(path.clone()))?;
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| AteApiError::BadToken(path.clone()))
}

impl AteApiDirectory {
    /// Builds the client. Must run inside a tokio runtime (the token refresher is a task).
    pub fn new(s: &AteApiSettings) -> Result<Self, AteApiError> {
        let scheme = if s.tls == TlsMode::Plaintext {
            "http"
        } else {
            "https"
        };
        let uri = format!("{scheme}://{}", s.address);
        let mut ep = Endpoint::from_shared(uri)
            .map_err(|e| AteApiError::Address(s.address.clone(), e.to_string()))?
            .connect_timeout(s.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if s.tls != TlsMode::Plaintext {
            let ca = s
                .ca_file
                .as_ref()
                .ok_or(AteApiError::Missing("tls", "ca_file"))?;
            let mut tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA file", ca)?));
            if let Some(name) = &s.server_name {
                tls = tls.domain_name(name.clone());
            }
            if s.tls == TlsMode::Mtls {
                let cert = s
                    .cert_file
                    .as_ref()
                    .ok_or(AteApiError::Missing("mtls", "cert_file"))?;
                let key = s
                    .key_file
                    .as_ref()
                    .ok_or(AteApiError::Missing("mtls", "key_file"))?;
                tls = tls.identity(Identity::from_pem(
                    read("certificate file", cert)?,
                    read("key file", key)?,
                ));
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| AteApiError::Tls(e.to_string()))?;
        }
        let token = Arc::new(ArcSwapOption::empty());
        let refresher = match &s.token_file {
            None => None,
            Some(path) => {
                token.store(Some(Arc::new(load_token(path)?)));
                let (token, path) = (token.clone(), path.clone());
                Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(TOKEN_REFRESH);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let p = path.clone();
                        match tokio::task::spawn_blocking(move || load_token(&p)).await {
                            Ok(Ok(v)) => token.store(Some(Arc::new(v))),
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, "keeping the previous control-plane token")
                            }
                            Err(_) => {}
                        }
                    }
                }))
            }
        };
        let channel = ep.connect_lazy();
        let client = ControlClient::with_interceptor(channel, BearerToken(token))
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(Self {
            client,
            rpc_timeout: s.rpc_timeout,
            _token_refresher: refresher,
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.rpc_timeout);
        req
    }
}

impl ActorDirectory for AteApiDirectory {
    fn kind(&self) -> &'static str {
        "ateapi"
    }

    fn get(&self, actor: &ActorRef) -> DirFuture<ActorRecord> {
        let mut client = self.client.clone();
        let req = self.request(proto::GetActorRequest {
            actor: Some(object_ref(actor)),
        });
        let asked = actor.clone();
        Box::pin(async move {
            let resp = client.get_actor(req).await?;
            record_from_proto(Some(&asked), resp.into_inner())
        })
    }

    fn resume(&self, actor: &ActorRef, boot: bool) -> DirFuture<ResumeOutcome> {
        let mut client = self.client.clone();
        let req = self.request(proto::ResumeActorRequest {
            actor: Some(object_ref(actor)),
            boot,
        });
        let asked = actor.clone();
        Box::pin(async move {
            let resp = client.resume_actor(req).await?;
            resume_from_proto(&asked, resp.into_inner())
        })
    }

    fn list(&self, atespace: &str, page_size: i32, page_token: &str) -> DirFuture<ActorPage> {
        let mut client = self.client.clone();
        let req = self.request(proto::ListActorsRequest {
            atespace: atespace.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        });
        Box::pin(async move {
            let resp = client.list_actors(req).await?;
            page_from_proto(resp.into_inner())
        })
    }
}
