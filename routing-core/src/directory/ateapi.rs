//! The `ateapi.Control` back-end: a tonic client of the real ate-api-server (DESIGN §3, with
//! upstream v0.4's shapes of §9), over plaintext, TLS or mTLS, with an optional bearer token file
//! that is re-read periodically so rotated tokens are picked up.
//!
//! The client remembers how its connection attempts went: the first failure to reach the
//! control plane (and every change of reason) is logged as a warning naming the cause, and
//! [`ActorDirectory::connection`] reports the latest one for `/statusz`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::convert::{object_ref, page_from_proto, record_from_proto, resume_from_proto};
use super::{
    ActorDirectory, ActorPage, ActorRecord, AddressFamily, ConnectionStatus, DirFuture,
    DirectoryError, ResumeOutcome, describe_transport_error, transport_failure,
};
use crate::actor_ref::ActorRef;
use crate::proto;
use crate::proto::control_client::ControlClient;

/// Largest control-plane response accepted.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How often the bearer token file is re-read.
const TOKEN_REFRESH: Duration = Duration::from_secs(30);

/// How to secure the connection to ate-api-server. There is deliberately no default: the real
/// server requires mTLS, so plaintext must be asked for explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// No TLS (local development, or a sidecar doing TLS).
    Plaintext,
    /// Server-authenticated TLS.
    Tls,
    /// Mutual TLS: the real ate-api-server requires this.
    Mtls,
}

/// Settings of the ateapi back-end.
#[derive(Debug, Clone)]
pub struct AteApiSettings {
    /// `host:port` of ate-api-server (no scheme: `tls` decides http or https).
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
    #[error("CA file {0}: no PEM certificate found")]
    NoCaCertificate(PathBuf),
    /// The TLS material was refused; `files` names what was loaded, `reason` is the cause from
    /// the error's source chain.
    #[error("TLS setup failed ({files}): {reason}")]
    Tls { files: String, reason: String },
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

/// Records how RPCs went, logs connection failures once per reason, and feeds `/statusz`.
struct ConnTracker {
    status: Mutex<ConnectionStatus>,
    /// The reason last logged; cleared when the control plane answers again.
    logged: Mutex<Option<String>>,
}

impl ConnTracker {
    fn new(address: &str) -> Self {
        Self {
            status: Mutex::new(ConnectionStatus {
                address: address.to_owned(),
                ..ConnectionStatus::default()
            }),
            logged: Mutex::new(None),
        }
    }

    /// Notes the outcome of one RPC and converts its error.
    fn observe<T>(&self, r: Result<T, tonic::Status>) -> Result<T, DirectoryError> {
        match r {
            Ok(v) => {
                self.answered();
                Ok(v)
            }
            Err(s) => match transport_failure(&s) {
                Some(reason) => {
                    self.failed(&reason);
                    Err(DirectoryError::new(tonic::Code::Unavailable, reason))
                }
                None => {
                    // A status the server sent (or our own deadline): it was reachable.
                    if std::error::Error::source(&s).is_none() {
                        self.answered();
                    }
                    Err(s.into())
                }
            },
        }
    }

    fn answered(&self) {
        if let Ok(mut st) = self.status.lock() {
            st.last_answer_at = Some(SystemTime::now());
            st.ever_connected = true;
        }
        let had_logged = self.logged.lock().ok().and_then(|mut l| l.take()).is_some();
        if had_logged {
            let address = self.address();
            tracing::info!(%address, "ate-api-server is reachable now");
        }
    }

    fn failed(&self, reason: &str) {
        let ever = match self.status.lock() {
            Ok(mut st) => {
                st.last_connect_error = Some(reason.to_owned());
                st.last_connect_error_at = Some(SystemTime::now());
                st.ever_connected
            }
            Err(_) => true,
        };
        let new_reason = self
            .logged
            .lock()
            .map(|mut l| {
                let new = l.as_deref() != Some(reason);
                if new {
                    *l = Some(reason.to_owned());
                }
                new
            })
            .unwrap_or(false);
        if new_reason {
            let address = self.address();
            if ever {
                tracing::warn!(%address, %reason, "cannot reach ate-api-server");
            } else {
                tracing::warn!(%address, %reason, "ate-api-server has never been reachable; requests get 503 until it is");
            }
        }
    }

    fn address(&self) -> String {
        self.status
            .lock()
            .map(|s| s.address.clone())
            .unwrap_or_default()
    }

    fn snapshot(&self) -> Option<ConnectionStatus> {
        self.status.lock().ok().map(|s| s.clone())
    }
}

/// `ActorDirectory` over a remote `ateapi.Control`.
pub struct AteApiDirectory {
    client: Client,
    rpc_timeout: Duration,
    family: AddressFamily,
    conn: Arc<ConnTracker>,
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
    /// Worker addresses are chosen with [`AddressFamily::Ipv4`] until
    /// [`with_worker_address_family`](Self::with_worker_address_family) says otherwise.
    pub fn new(s: &AteApiSettings) -> Result<Self, AteApiError> {
        if s.address.contains("://") {
            return Err(AteApiError::Address(
                s.address.clone(),
                "write host:port without a scheme (tls decides http or https)".into(),
            ));
        }
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
            let ca_pem = read("CA file", ca)?;
            // tonic skips what it cannot parse; a CA file without certificates would only
            // show as failed handshakes (unknown CA) later.
            if !ca_pem
                .windows(b"-----BEGIN CERTIFICATE-----".len())
                .any(|w| w == b"-----BEGIN CERTIFICATE-----")
            {
                return Err(AteApiError::NoCaCertificate(ca.clone()));
            }
            let mut files = format!("ca_file {}", ca.display());
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
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
                files = format!(
                    "{files}, cert_file {}, key_file {}",
                    cert.display(),
                    key.display()
                );
            }
            ep = ep.tls_config(tls).map_err(|e| AteApiError::Tls {
                files,
                reason: describe_transport_error(&e),
            })?;
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
            family: AddressFamily::default(),
            conn: Arc::new(ConnTracker::new(&s.address)),
            _token_refresher: refresher,
        })
    }

    /// Which of a dual-stack worker's addresses (`worker_pod_ips`) to route to.
    pub fn with_worker_address_family(mut self, family: AddressFamily) -> Self {
        self.family = family;
        self
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
        let (family, conn) = (self.family, self.conn.clone());
        Box::pin(async move {
            let resp = conn.observe(client.get_actor(req).await)?;
            record_from_proto(Some(&asked), resp.into_inner(), family)
        })
    }

    fn resume(&self, actor: &ActorRef, boot: bool) -> DirFuture<ResumeOutcome> {
        let mut client = self.client.clone();
        let req = self.request(proto::ResumeActorRequest {
            actor: Some(object_ref(actor)),
            boot,
        });
        let asked = actor.clone();
        let (family, conn) = (self.family, self.conn.clone());
        Box::pin(async move {
            let resp = conn.observe(client.resume_actor(req).await)?;
            resume_from_proto(&asked, resp.into_inner(), family)
        })
    }

    fn list(&self, atespace: &str, page_size: i32, page_token: &str) -> DirFuture<ActorPage> {
        let mut client = self.client.clone();
        let req = self.request(proto::ListActorsRequest {
            atespace: atespace.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        });
        let (family, conn) = (self.family, self.conn.clone());
        Box::pin(async move {
            let resp = conn.observe(client.list_actors(req).await)?;
            page_from_proto(resp.into_inner(), family)
        })
    }

    fn connection(&self) -> Option<ConnectionStatus> {
        self.conn.snapshot()
    }
}
