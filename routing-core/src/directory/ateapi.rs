//! The `ateapi.Control` back-end: a tonic client of the real ate-api-server (DESIGN §3, with
//! upstream v0.4's shapes of §9), over plaintext, TLS or mTLS, with an optional bearer token file
//! that is watched and re-read when it changes, so rotated tokens are picked up (a bad
//! replacement keeps the previous token).
//!
//! TLS goes through `identity`'s reloadable client configuration, not tonic's own TLS: the CA,
//! certificate and key files are watched, and every new connection is dialled with the material
//! current at that moment, so a rotated client certificate is used without a restart (an
//! established connection keeps the certificate it was opened with until it closes).
//!
//! The client remembers how its connection attempts went: the first failure to reach the
//! control plane (and every change of reason) is logged as a warning naming the cause, and
//! [`ActorDirectory::connection`] reports the latest one for `/statusz`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use hyper_util::rt::TokioIo;
use identity::tls::{
    ClientTlsFiles, ReloadableClientConfig, ServerIdentity, TlsError, WatchHandle,
};
use parking_lot::Mutex;
use runtime::reload::{DEFAULT_DEBOUNCE, Reloader};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::convert::{object_ref, page_from_proto, record_from_proto, resume_from_proto};
use super::{
    ActorDirectory, ActorPage, ActorRecord, AddressFamily, ConnectionStatus, DirFuture,
    DirectoryError, ResumeOutcome, transport_failure,
};
use crate::actor_ref::ActorRef;
use crate::proto;
use crate::proto::control_client::ControlClient;

/// Largest control-plane response accepted.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// The ALPN protocol gRPC needs; a server that does not select it is refused (as tonic does).
const ALPN_H2: &[u8] = b"h2";

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
    /// Plaintext, TLS or mTLS.
    pub tls: TlsMode,
    /// PEM CA bundle that signs the server certificate (tls, mtls). Watched: a changed file is
    /// used from the next connection on.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mtls). Watched like `ca_file`, so a rotated certificate is
    /// presented on the next connection without a restart.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (mtls); replace both together (or swap a Kubernetes
    /// Secret's `..data` link).
    pub key_file: Option<PathBuf>,
    /// Name expected in the server certificate (DNS name or IP); defaults to the address's host.
    pub server_name: Option<String>,
    /// File holding a bearer token sent as `authorization: Bearer …`.
    pub token_file: Option<PathBuf>,
    /// Bound on one connection attempt: DNS lookup, TCP connect and (tls, mtls) the handshake.
    pub connect_timeout: Duration,
    /// Deadline sent with each RPC (`grpc-timeout`); the only bound on a resume the resolver
    /// has stopped waiting for.
    pub rpc_timeout: Duration,
}

/// Problems building the client (bad files, bad address). Connection failures are not
/// reported here: the channel connects lazily and RPCs then fail with UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
pub enum AteApiError {
    /// The address (or the server name derived from it) cannot be used; the second field says
    /// why.
    #[error("invalid ate-api-server address {0:?}: {1}")]
    Address(String, String),
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file (`CA file`, `token file`, …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A TLS mode lacks a setting it needs: (mode, setting).
    #[error("{0} requires {1}")]
    Missing(&'static str, &'static str),
    /// The TLS material was refused; `files` names what was loaded, `source` says why.
    #[error("TLS setup failed ({files}): {source}")]
    Tls {
        /// The files that were loaded.
        files: String,
        /// Why they were refused.
        source: TlsError,
    },
    /// The token file's content cannot be sent as a header value.
    #[error("token file {0} does not hold a valid header value")]
    BadToken(PathBuf),
}

/// Why dialling the control plane over TLS failed. Only seen through a transport failure's
/// source chain, which [`super::describe_transport_error`] turns into the logged reason: the
/// messages keep the words it looks for (`dns error`, the I/O error kinds, rustls's alerts).
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("dns error: cannot resolve {host}")]
    Dns {
        host: String,
        source: std::io::Error,
    },
    #[error("dns error: no address found for {host}")]
    NoAddress { host: String },
    #[error("tcp connect error")]
    Tcp(#[source] std::io::Error),
    #[error("TLS handshake failed")]
    Handshake(#[source] std::io::Error),
    #[error("HTTP/2 was not negotiated: the server did not select ALPN h2")]
    NoHttp2,
}

/// Dials ate-api-server for tonic: TCP, then a TLS handshake with the reloadable config's
/// *current* material, so each new connection picks up rotated files.
struct TlsDialer {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<ReloadableClientConfig>,
}

impl TlsDialer {
    async fn dial(&self) -> Result<TokioIo<TlsStream<TcpStream>>, DialError> {
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|source| DialError::Dns {
                host: self.host.clone(),
                source,
            })?;
        // Addresses in the resolver's order; the first that accepts wins.
        let mut last_error = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let tcp = match (tcp, last_error) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(DialError::Tcp(e)),
            (None, None) => {
                return Err(DialError::NoAddress {
                    host: self.host.clone(),
                });
            }
        };
        // Small unary RPCs: do not let Nagle hold them back. Failing to set it is harmless.
        let _ = tcp.set_nodelay(true);
        let stream = self
            .tls
            .connector()
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(DialError::Handshake)?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(DialError::NoHttp2);
        }
        Ok(TokioIo::new(stream))
    }
}

/// A lazily connecting gRPC channel configured as `ep` (timeouts, keepalive; its URI is
/// replaced) to `address` (`host:port`, no scheme) over TLS with `tls` (the material current at
/// each dial; ALPN `h2` must be among its protocols), the server verified as `server_name`
/// (default: the host of `address`). Names are resolved by the system at each dial; the first
/// address that accepts wins. Shared by every gRPC client of actorgate that dials over
/// TLS (the control plane, credential providers).
///
/// # Errors
/// [`AteApiError::Address`] for an address or server name that cannot be used.
pub fn tls_channel(
    ep: Endpoint,
    address: &str,
    server_name: Option<&str>,
    tls: Arc<ReloadableClientConfig>,
) -> Result<Channel, AteApiError> {
    let (host, port) = host_port(address)?;
    let name = server_name.map_or_else(|| host.clone(), str::to_owned);
    let server_name = ServerName::try_from(name.clone()).map_err(|e| {
        AteApiError::Address(
            address.to_owned(),
            format!("server name {name:?} is not a DNS name or IP address: {e}"),
        )
    })?;
    // The channel speaks `http` to its connector (the connector does the TLS handshake, not
    // tonic); requests still carry `:scheme https` through the origin.
    let origin = http::Uri::try_from(format!("https://{address}"))
        .map_err(|e| AteApiError::Address(address.to_owned(), e.to_string()))?;
    let ep = ep.origin(origin).tcp_nodelay(true);
    let dialer = Arc::new(TlsDialer {
        host,
        port,
        server_name,
        tls,
    });
    let connector = tower::service_fn(move |_: http::Uri| {
        let dialer = dialer.clone();
        async move { dialer.dial().await }
    });
    Ok(ep.connect_with_connector_lazy(connector))
}

/// Splits `host:port` (IPv6 in brackets) into the host without brackets and the port (443 when
/// absent, as for `https://`).
fn host_port(address: &str) -> Result<(String, u16), AteApiError> {
    let bad = |why: String| AteApiError::Address(address.to_owned(), why);
    let authority: http::uri::Authority = address.parse().map_err(|e| bad(format!("{e}")))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(bad("no host".into()));
    }
    Ok((host, authority.port_u16().unwrap_or(443)))
}

/// The reloadable TLS client config for `s` (tls, mtls), with ALPN h2 and the server checked
/// against the name given at connect time.
fn tls_config(s: &AteApiSettings) -> Result<Arc<ReloadableClientConfig>, AteApiError> {
    let ca = s
        .ca_file
        .as_ref()
        .ok_or(AteApiError::Missing("tls", "ca_file"))?;
    let mut files = format!("ca_file {}", ca.display());
    let (cert_file, key_file) = if s.tls == TlsMode::Mtls {
        let cert = s
            .cert_file
            .as_ref()
            .ok_or(AteApiError::Missing("mtls", "cert_file"))?;
        let key = s
            .key_file
            .as_ref()
            .ok_or(AteApiError::Missing("mtls", "key_file"))?;
        files = format!(
            "{files}, cert_file {}, key_file {}",
            cert.display(),
            key.display()
        );
        (Some(cert.clone()), Some(key.clone()))
    } else {
        (None, None)
    };
    ReloadableClientConfig::client(ClientTlsFiles {
        ca_file: ca.clone(),
        cert_file,
        key_file,
        server_identity: ServerIdentity::Hostname,
        alpn: vec![ALPN_H2.to_vec()],
    })
    .map_err(|source| AteApiError::Tls { files, source })
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
        {
            let mut st = self.status.lock();
            st.last_answer_at = Some(SystemTime::now());
            st.ever_connected = true;
        }
        let had_logged = self.logged.lock().take().is_some();
        if had_logged {
            let address = self.address();
            tracing::info!(%address, "ate-api-server is reachable now");
        }
    }

    fn failed(&self, reason: &str) {
        let ever = {
            let mut st = self.status.lock();
            st.last_connect_error = Some(reason.to_owned());
            st.last_connect_error_at = Some(SystemTime::now());
            st.ever_connected
        };
        let new_reason = {
            let mut l = self.logged.lock();
            let new = l.as_deref() != Some(reason);
            if new {
                *l = Some(reason.to_owned());
            }
            new
        };
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
        self.status.lock().address.clone()
    }

    fn snapshot(&self) -> Option<ConnectionStatus> {
        Some(self.status.lock().clone())
    }
}

/// `ActorDirectory` over a remote `ateapi.Control`.
pub struct AteApiDirectory {
    client: Client,
    rpc_timeout: Duration,
    family: AddressFamily,
    conn: Arc<ConnTracker>,
    /// Re-reads the bearer token file when it changes (with `token_file`).
    token_reloader: Option<Reloader>,
    /// Keeps the token file watched for as long as the client lives.
    _token_watch: Option<WatchHandle>,
    /// The reloadable TLS client configuration (tls, mtls).
    tls: Option<Arc<ReloadableClientConfig>>,
    /// Keeps the TLS files watched for as long as the client lives (tls, mtls).
    _tls_watch: Option<WatchHandle>,
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
    /// Builds the client. Must run inside a tokio runtime (the token file and TLS file watches
    /// are tasks). Worker addresses are chosen with [`AddressFamily::Ipv4`] until
    /// [`with_worker_address_family`](Self::with_worker_address_family) says otherwise.
    ///
    /// With `tls` or `mtls` the CA, certificate and key files are loaded now (an unusable file
    /// is an error) and then watched: each new connection uses the material current when it is
    /// dialled, and a broken replacement keeps the previous material (logged). When the files
    /// cannot be watched, a warning says rotation needs a restart.
    pub fn new(s: &AteApiSettings) -> Result<Self, AteApiError> {
        if s.address.contains("://") {
            return Err(AteApiError::Address(
                s.address.clone(),
                "write host:port without a scheme (tls decides http or https)".into(),
            ));
        }
        // The channel always speaks `http` to its connector (for TLS the connector below does
        // the handshake, not tonic); requests still carry `:scheme https` through the origin.
        let ep = Endpoint::from_shared(format!("http://{}", s.address))
            .map_err(|e| AteApiError::Address(s.address.clone(), e.to_string()))?
            .connect_timeout(s.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let (channel, tls, tls_watch) = if s.tls == TlsMode::Plaintext {
            (ep.connect_lazy(), None, None)
        } else {
            let tls = tls_config(s)?;
            let watch = match tls.watch() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, address = %s.address, "cannot watch the control-plane TLS files; rotation needs a restart");
                    None
                }
            };
            let channel = tls_channel(ep, &s.address, s.server_name.as_deref(), tls.clone())?;
            (channel, Some(tls), watch)
        };
        let token = Arc::new(ArcSwapOption::empty());
        let (token_reloader, token_watch) = match &s.token_file {
            None => (None, None),
            Some(path) => {
                token.store(Some(Arc::new(load_token(path)?)));
                let (current, file) = (token.clone(), path.clone());
                let reloader = Reloader::new(
                    "control_plane_token",
                    [path.clone()],
                    move || load_token(&file),
                    move |v| current.store(Some(Arc::new(v))),
                );
                let watch = match reloader.watch(DEFAULT_DEBOUNCE) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the control-plane token file; a rotated token needs a restart");
                        None
                    }
                };
                (Some(reloader), watch)
            }
        };
        let client = ControlClient::with_interceptor(channel, BearerToken(token))
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(Self {
            client,
            rpc_timeout: s.rpc_timeout,
            family: AddressFamily::default(),
            conn: Arc::new(ConnTracker::new(&s.address)),
            token_reloader,
            _token_watch: token_watch,
            tls,
            _tls_watch: tls_watch,
        })
    }

    /// The reloader of the bearer token file (with `token_file`): its status for `/statusz`, and
    /// [`Reloader::attempts`] to wait for a re-read. A token file that becomes unreadable or
    /// invalid keeps the previous token.
    pub fn token_reloader(&self) -> Option<&Reloader> {
        self.token_reloader.as_ref()
    }

    /// The reloader of the TLS files (tls, mtls): its status, and [`Reloader::attempts`] to wait
    /// for a reload. `None` for plaintext.
    pub fn tls_reloader(&self) -> Option<&Reloader> {
        self.tls.as_ref().map(|t| t.reloader())
    }

    /// Which of a dual-stack worker's addresses (`worker_pod_ips`) to route to.
    pub fn with_worker_address_family(mut self, family: AddressFamily) -> Self {
        self.family = family;
        self
    }

    /// The actor's upstream egress policy (`GetActorEgressPolicy`, DESIGN §9), over the same
    /// channel, TLS material, bearer token and RPC deadline as `GetActor`. `Ok(None)` when the
    /// server answers NOT_FOUND (the actor has no policy: deny all). Other answers are errors
    /// as for the directory's RPCs (a transport failure is UNAVAILABLE and shows in
    /// [`ActorDirectory::connection`]).
    pub fn egress_policy(&self, actor: &ActorRef) -> DirFuture<Option<proto::EgressPolicy>> {
        let mut client = self.client.clone();
        let req = self.request(proto::GetActorEgressPolicyRequest {
            actor: Some(object_ref(actor)),
        });
        let conn = self.conn.clone();
        Box::pin(async move {
            match conn.observe(client.get_actor_egress_policy(req).await) {
                Ok(resp) => Ok(Some(resp.into_inner())),
                Err(e) if e.code == tonic::Code::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// An actor identity token for `actor` (`MintActorJWT`, DESIGN §9): `audiences`, lifetime
    /// `expiration_seconds` (300–3600), the actor's `uid` when known (the server refuses a
    /// mismatch). Over the same channel, TLS material, bearer token and RPC deadline as
    /// `GetActor`; errors as for the directory's RPCs.
    pub fn mint_actor_jwt(
        &self,
        actor: &ActorRef,
        uid: Option<&str>,
        audiences: &[String],
        expiration_seconds: i64,
    ) -> DirFuture<proto::MintActorJwtResponse> {
        let mut client = self.client.clone();
        let req = self.request(proto::MintActorJwtRequest {
            audience: audiences.to_vec(),
            actor: Some(object_ref(actor)),
            actor_uid: uid.unwrap_or_default().to_owned(),
            expiration_seconds,
        });
        let conn = self.conn.clone();
        Box::pin(async move {
            conn.observe(client.mint_actor_jwt(req).await)
                .map(tonic::Response::into_inner)
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
