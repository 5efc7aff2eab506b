//! Load generator and sink for `bench/egress.sh`: the same client and the same sink for every
//! target (actorgate's PEP, Envoy terminating CONNECT), so only the PEP differs.
//!
//! ```text
//! tunnel_bench sink   LISTEN                       # first byte 'e' → echo, anything else → discard
//! tunnel_bench bulk   PEP SNI CERTS TARGET SECS h1|h2        # one tunnel, upload for SECS → Gbit/s
//! tunnel_bench setup  PEP SNI CERTS TARGET SECS h1|h2 CONC   # new tunnels/s, 1-byte echo each, p50/p99
//! tunnel_bench hold   PEP SNI CERTS TARGET COUNT h1|h2       # open COUNT idle tunnels, print "held N", wait for stdin EOF
//! tunnel_bench https  PEP SNI CERTS TARGET SECS h1|h2 CONC NAME CA   # intercepted HTTPS requests/s, p50/p99
//! tunnel_bench https-conns PEP SNI CERTS TARGET SECS h1 CONC NAME CA # new intercepted connections/s
//! tunnel_bench plain-setup TARGET SECS CONC    # new plain TCP connections/s, 1-byte echo each, p50/p99
//! tunnel_bench plain-bulk  TARGET SECS         # one plain TCP connection, upload for SECS → Gbit/s
//! tunnel_bench plain-hold  TARGET COUNT        # COUNT idle plain connections (one echo each), "held N", until stdin EOF
//! tunnel_bench http   PEP SNI CERTS TARGET SECS CONC HOST  # cleartext HTTP/1.1 requests/s inside CONC tunnels, p50/p99
//! tunnel_bench plain-http  TARGET SECS CONC HOST  # the same requests on CONC plain connections to TARGET
//! tunnel_bench wire NETNS_A DEV_A NETNS_B DEV_B DELAY_US  # a link between two TUN devices, DELAY_US each way
//! ```
//!
//! `wire` stands in for `tc qdisc … netem delay` on kernels without `netem` (bench/agent.sh
//! `RTT_MS`): it attaches to TUN device `DEV_A` in the network namespace `NETNS_A` (a path such
//! as `/var/run/netns/NAME`) and `DEV_B` in `NETNS_B`, and passes every IP packet from one to
//! the other after `DELAY_US` microseconds, in order: a link whose round-trip time is twice the
//! delay. Each packet costs the wire a wakeup or two (tens of µs here), as a real hop costs;
//! it is meant for latency, not throughput. Runs until killed.
//!
//! `BENCH_HEADER='name: value'` adds one header to every request of `https`, `http` and
//! `plain-http` (a credential placeholder the PEP replaces, for the injection benchmark).
//!
//! The `plain-*` modes are an actor's own connections, for `bench/agent.sh`: straight to the
//! sink, or captured by the tunnel agent's rules on the way.
//!
//! `https`: CONC keep-alive HTTP/1.1 connections (`h1`), or CONC streams over CONC/8 (at least
//! one) h2 connections (`h2`), each inside its own tunnel (one atunnel-style HTTP/1.1 CONNECT
//! per connection), TLS to NAME trusting only the CA file CA, `GET /` in a loop.
//! `https-conns`: each iteration opens a tunnel, TLS to NAME, one HTTP/1.1 `GET /`, closes.
//!
//! `CERTS` is a directory with `ca.crt`, `client.crt`, `client.key`. `h1` is what upstream atunnel
//! sends (a new TLS connection without ALPN and one HTTP/1.1 CONNECT per tunnel); `h2` opens
//! CONNECT streams (RFC 9113 §8.5) over shared connections (one per worker for `setup`, up to 100
//! streams per connection for `hold`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("wire") {
        return wire(&args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("BENCH_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.first().map(String::as_str) {
            Some("sink") => sink(args[1].parse()?).await,
            Some("bulk") => {
                let c = Client::new(&args)?;
                bulk(&c, args[5].parse()?).await
            }
            Some("setup") => {
                let c = Client::new(&args)?;
                setup(Arc::new(c), args[5].parse()?, args[7].parse()?).await
            }
            Some("hold") => {
                let c = Client::new(&args)?;
                hold(&c, args[5].parse()?).await
            }
            Some(mode @ ("https" | "https-conns")) => {
                // The tunnel is always what atunnel sends; the protocol argument is the inner one.
                let mut tunnel_args = args.clone();
                tunnel_args[6] = "h1".into();
                let c = Arc::new(Client::new(&tunnel_args)?);
                let inner = Arc::new(Inner::new(&args[6], &args[8], Path::new(&args[9]))?);
                https(
                    c,
                    inner,
                    args[5].parse()?,
                    args[7].parse()?,
                    mode == "https-conns",
                )
                .await
            }
            Some("plain-setup") => {
                plain_setup(args[1].parse()?, args[2].parse()?, args[3].parse()?).await
            }
            Some("plain-bulk") => plain_bulk(args[1].parse()?, args[2].parse()?).await,
            Some("http") => {
                let mut tunnel_args = args.clone();
                tunnel_args.insert(6, "h1".into());
                let c = Arc::new(Client::new(&tunnel_args)?);
                let open: Opener = Arc::new(move || {
                    let c = c.clone();
                    Box::pin(async move {
                        let t = c.h1_tunnel().await?;
                        Ok(Box::new(t) as Box<dyn Stream>)
                    })
                });
                plain_requests(open, args[5].parse()?, args[6].parse()?, &args[7]).await
            }
            Some("plain-http") => {
                let target: SocketAddr = args[1].parse()?;
                let open: Opener = Arc::new(move || {
                    Box::pin(async move { Ok(Box::new(plain(target).await?) as Box<dyn Stream>) })
                });
                plain_requests(open, args[2].parse()?, args[3].parse()?, &args[4]).await
            }
            Some("plain-hold") => plain_hold(args[1].parse()?, args[2].parse()?).await,
            _ => Err("usage: tunnel_bench sink|bulk|setup|hold|https|https-conns|plain-setup|plain-bulk|plain-hold|wire …".into()),
        }
    })
}

/// Echo (first byte `e`) or discard, counting nothing: the sink must cost the same for all.
async fn sink(listen: SocketAddr) -> Result<(), Error> {
    let l = TcpListener::bind(listen).await?;
    loop {
        let (mut s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let Ok(n) = s.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            if buf[0] == b'e' {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            } else {
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }
        });
    }
}

struct Client {
    pep: SocketAddr,
    sni: ServerName<'static>,
    target: String,
    h2: bool,
    tls: TlsConnector,
}

impl Client {
    fn new(args: &[String]) -> Result<Self, Error> {
        let pep: SocketAddr = args[1].parse()?;
        let sni = ServerName::try_from(args[2].clone())?;
        let dir = Path::new(&args[3]);
        let h2 = match args[6].as_str() {
            "h1" => false,
            "h2" => true,
            other => return Err(format!("protocol {other:?}: h1 or h2").into()),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(dir.join("ca.crt"))? {
            roots.add(c?)?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("client.crt"))?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(dir.join("client.key"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        // Like atunnel: no resumption across tunnels would be unfair to nobody, but upstream's Go
        // client does resume; keep rustls's default session cache for every target alike.
        if h2 {
            cfg.alpn_protocols = vec![b"h2".to_vec()];
        }
        Ok(Client {
            pep,
            sni,
            target: args[4].clone(),
            h2,
            tls: TlsConnector::from(Arc::new(cfg)),
        })
    }

    async fn tls(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
        let tcp = TcpStream::connect(self.pep).await?;
        tcp.set_nodelay(true)?;
        Ok(self.tls.connect(self.sni.clone(), tcp).await?)
    }

    /// One HTTP/1.1 CONNECT on a new TLS connection, exactly as atunnel writes it.
    async fn h1_tunnel(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
        let mut s = self.tls().await?;
        let req = format!(
            "CONNECT {t} HTTP/1.1\r\nHost: {t}\r\nUser-Agent: Go-http-client/1.1\r\n\r\n",
            t = self.target
        );
        s.write_all(req.as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).await? == 0 || head.len() > 8192 {
                return Err("CONNECT answer truncated".into());
            }
            head.push(b[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into());
        }
        Ok(s)
    }

    async fn h2_conn(&self) -> Result<http2::SendRequest<Empty<Bytes>>, Error> {
        let s = self.tls().await?;
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(TokioIo::new(s))
            .await?;
        tokio::spawn(conn);
        Ok(send)
    }

    async fn h2_tunnel(
        &self,
        send: &mut http2::SendRequest<Empty<Bytes>>,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, Error> {
        send.ready().await?;
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(self.target.as_str())
            .body(Empty::new())?;
        let resp = send.send_request(req).await?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("CONNECT refused: {}", resp.status()).into());
        }
        Ok(TokioIo::new(hyper::upgrade::on(resp).await?))
    }
}

async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<(), Error> {
    s.write_all(b"e").await?;
    s.flush().await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(())
}

/// Half-closes the tunnel and reads until the PEP closes its side (the sink closed after our
/// EOF), so no tunnel ends in a reset: Envoy counts streams reset early (its premature-reset
/// protection closes the whole h2 connection), and atunnel ends tunnels this way too.
async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<(), Error> {
    s.shutdown().await?;
    let mut b = [0u8; 64];
    while s.read(&mut b).await? != 0 {}
    Ok(())
}

async fn bulk(c: &Client, secs: u64) -> Result<(), Error> {
    let chunk = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut sent: u64 = 0;
    let start = Instant::now();
    if c.h2 {
        let mut send = c.h2_conn().await?;
        let mut t = c.h2_tunnel(&mut send).await?;
        while Instant::now() < deadline {
            t.write_all(&chunk).await?;
            sent += chunk.len() as u64;
        }
        t.shutdown().await?;
    } else {
        let mut t = c.h1_tunnel().await?;
        while Instant::now() < deadline {
            t.write_all(&chunk).await?;
            sent += chunk.len() as u64;
        }
        t.shutdown().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bytes {sent} seconds {secs:.3} gbps {:.3}",
        sent as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

async fn setup(c: Arc<Client>, secs: u64, conc: usize) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..conc {
        let c = c.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut send = None;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r: Result<(), Error> = async {
                    if c.h2 {
                        if send.is_none() {
                            send = Some(c.h2_conn().await?);
                        }
                        let Some(s) = send.as_mut() else {
                            unreachable!()
                        };
                        let mut t = c.h2_tunnel(s).await?;
                        echo_once(&mut t).await?;
                        close_gracefully(&mut t).await?;
                    } else {
                        let mut t = c.h1_tunnel().await?;
                        echo_once(&mut t).await?;
                        close_gracefully(&mut t).await?;
                    }
                    Ok(())
                }
                .await;
                match r {
                    Ok(()) => lat.push(t0.elapsed()),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failed tunnel: {e}");
                        }
                        send = None;
                    }
                }
            }
            lat
        }));
    }
    report("tunnels", secs, start, tasks, &stop, &errors).await
}

/// The actor's TLS inside a tunnel: SNI, ALPN and the only trusted CA.
struct Inner {
    name: String,
    sni: ServerName<'static>,
    h2: bool,
    tls: TlsConnector,
}

type InnerTls = tokio_rustls::client::TlsStream<tokio_rustls::client::TlsStream<TcpStream>>;

impl Inner {
    fn new(proto: &str, name: &str, ca: &Path) -> Result<Self, Error> {
        let h2 = match proto {
            "h1" => false,
            "h2" => true,
            other => return Err(format!("protocol {other:?}: h1 or h2").into()),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Ok(Inner {
            name: name.to_owned(),
            sni: ServerName::try_from(name.split(':').next().unwrap_or(name).to_owned())?,
            h2,
            tls: TlsConnector::from(Arc::new(cfg)),
        })
    }

    async fn connect(&self, c: &Client) -> Result<InnerTls, Error> {
        let tunnel = c.h1_tunnel().await?;
        Ok(self.tls.connect(self.sni.clone(), tunnel).await?)
    }

    fn request(&self) -> Result<http::Request<Empty<Bytes>>, Error> {
        let req = if self.h2 {
            http::Request::get(format!("https://{}/", self.name))
        } else {
            http::Request::get("/").header(http::header::HOST, self.name.as_str())
        };
        Ok(with_bench_header(req).body(Empty::new())?)
    }
}

/// A request's whole response; an error unless 200.
async fn fetch<F>(sent: F) -> Result<(), Error>
where
    F: std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
{
    use http_body_util::BodyExt;
    let resp = sent.await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    if status != http::StatusCode::OK {
        return Err(format!("status {status}").into());
    }
    Ok(())
}

/// An HTTP/1.1 client over a new intercepted connection.
async fn h1_client(
    c: &Client,
    inner: &Inner,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, Error> {
    let tls = inner.connect(c).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn https(
    c: Arc<Client>,
    inner: Arc<Inner>,
    secs: u64,
    conc: usize,
    new_conns: bool,
) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let fail = |errors: &AtomicU64, e: Error| {
        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("first failed request: {e}");
        }
    };
    // h2: shared connections, CONC/8 of them.
    let mut h2_conns = Vec::new();
    if inner.h2 && !new_conns {
        for _ in 0..(conc / 8).max(1) {
            let tls = inner.connect(&c).await?;
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(tls))
                .await?;
            tokio::spawn(conn);
            h2_conns.push(send);
        }
    }
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..conc {
        let (c, inner, stop, errors) = (c.clone(), inner.clone(), stop.clone(), errors.clone());
        let mut h2 = h2_conns.get(i % h2_conns.len().max(1)).cloned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut h1 = None;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r: Result<(), Error> = async {
                    if new_conns {
                        let mut send = h1_client(&c, &inner).await?;
                        return fetch(send.send_request(inner.request()?)).await;
                    }
                    if let Some(send) = h2.as_mut() {
                        send.ready().await?;
                        return fetch(send.send_request(inner.request()?)).await;
                    }
                    if h1.is_none() {
                        h1 = Some(h1_client(&c, &inner).await?);
                    }
                    let Some(send) = h1.as_mut() else {
                        unreachable!()
                    };
                    send.ready().await?;
                    fetch(send.send_request(inner.request()?)).await
                }
                .await;
                match r {
                    Ok(()) => lat.push(t0.elapsed()),
                    Err(e) => {
                        fail(&errors, e);
                        h1 = None;
                        if h2.is_some() {
                            // A broken shared connection ends this worker.
                            break;
                        }
                    }
                }
            }
            lat
        }));
    }
    report("requests", secs, start, tasks, &stop, &errors).await
}

/// Lets the workers run for `secs`, stops them, and prints what they did:
/// `<what> N seconds S per_sec R p50_ms A p99_ms B errors E`.
async fn report(
    what: &str,
    secs: u64,
    start: Instant,
    tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
    stop: &AtomicBool,
    errors: &AtomicU64,
) -> Result<(), Error> {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN)
    };
    println!(
        "{what} {} seconds {elapsed:.3} per_sec {:.0} p50_ms {:.3} p99_ms {:.3} errors {}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn hold(c: &Client, count: usize) -> Result<(), Error> {
    let mut h1 = Vec::new();
    let mut h2 = Vec::new();
    let mut conns = Vec::new();
    // A PEP that stops answering (e.g. at its open-file limit) must not hang the benchmark.
    let bound = Duration::from_secs(10);
    for i in 0..count {
        if i.is_multiple_of(1000) {
            eprintln!("hold: {i} open");
        }
        tokio::time::timeout(bound, hold_one(c, i, &mut h1, &mut h2, &mut conns))
            .await
            .map_err(|_| format!("tunnel {i}: no answer within {bound:?}"))??;
    }
    println!("held {count}");
    // Keep them open until the script closes stdin.
    let mut stdin = tokio::io::stdin();
    let mut b = [0u8; 1];
    let _ = stdin.read(&mut b).await;
    drop((h1, h2, conns));
    Ok(())
}

type H1Tunnel = tokio_rustls::client::TlsStream<TcpStream>;
type H2Tunnel = TokioIo<hyper::upgrade::Upgraded>;

async fn hold_one(
    c: &Client,
    i: usize,
    h1: &mut Vec<H1Tunnel>,
    h2: &mut Vec<H2Tunnel>,
    conns: &mut Vec<http2::SendRequest<Empty<Bytes>>>,
) -> Result<(), Error> {
    {
        if c.h2 {
            if i.is_multiple_of(100) {
                conns.push(c.h2_conn().await?);
            }
            let Some(send) = conns.last_mut() else {
                unreachable!()
            };
            let mut t = c.h2_tunnel(send).await?;
            echo_once(&mut t).await?;
            h2.push(t);
        } else {
            let mut t = c.h1_tunnel().await?;
            echo_once(&mut t).await?;
            h1.push(t);
        }
    }
    Ok(())
}

/// A plain TCP connection to `target` (no delay), as an actor opens one.
async fn plain(target: SocketAddr) -> Result<TcpStream, Error> {
    let s = TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// New connections/s at `conc` concurrent: connect, one echoed byte, graceful close; the
/// latency is connect + first byte.
async fn plain_setup(target: SocketAddr, secs: u64, conc: usize) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..conc {
        let (stop, errors) = (stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r: Result<Duration, Error> = async {
                    let mut s = plain(target).await?;
                    echo_once(&mut s).await?;
                    let first_byte = t0.elapsed();
                    close_gracefully(&mut s).await?;
                    Ok(first_byte)
                }
                .await;
                match r {
                    Ok(d) => lat.push(d),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failed connection: {e}");
                        }
                    }
                }
            }
            lat
        }));
    }
    report("connections", secs, start, tasks, &stop, &errors).await
}

/// One connection uploading for `secs`, then a half-close and the sink's EOF: the rate counts
/// only bytes the sink has read.
async fn plain_bulk(target: SocketAddr, secs: u64) -> Result<(), Error> {
    let chunk = vec![0u8; 256 * 1024];
    let mut s = plain(target).await?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut sent: u64 = 0;
    while Instant::now() < deadline {
        s.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    close_gracefully(&mut s).await?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bytes {sent} seconds {secs:.3} gbps {:.3}",
        sent as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

/// Opens `count` connections, each proven open end to end by one echoed byte, and keeps them
/// idle until stdin closes.
async fn plain_hold(target: SocketAddr, count: usize) -> Result<(), Error> {
    let bound = Duration::from_secs(10);
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let s = tokio::time::timeout(bound, async {
            let mut s = plain(target).await?;
            echo_once(&mut s).await?;
            Ok::<_, Error>(s)
        })
        .await
        .map_err(|_| format!("connection {i}: no echo within {bound:?}"))??;
        held.push(s);
    }
    println!("held {count}");
    let mut stdin = tokio::io::stdin();
    let mut b = [0u8; 1];
    let _ = stdin.read(&mut b).await;
    drop(held);
    Ok(())
}

/// `req` with the header of `BENCH_HEADER` (`name: value`), when set.
fn with_bench_header(req: http::request::Builder) -> http::request::Builder {
    match std::env::var("BENCH_HEADER")
        .ok()
        .as_deref()
        .and_then(|h| h.split_once(':'))
    {
        Some((name, value)) => req.header(name.trim(), value.trim()),
        None => req,
    }
}

/// A byte stream requests run on: a tunnel, or a plain connection.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Opens the stream of one keep-alive HTTP/1.1 client.
type Opener = Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Box<dyn Stream>, Error>> + Send>,
        > + Send
        + Sync,
>;

/// Cleartext HTTP/1.1 `GET /` with `Host: host` in a loop on `conc` keep-alive connections,
/// each on a stream `open` makes (a new one after a failure).
async fn plain_requests(open: Opener, secs: u64, conc: usize, host: &str) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..conc {
        let (open, stop, errors, host) =
            (open.clone(), stop.clone(), errors.clone(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut send: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r: Result<(), Error> = async {
                    if send.is_none() {
                        let stream = open().await?;
                        let (s, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                        tokio::spawn(conn);
                        send = Some(s);
                    }
                    let Some(s) = send.as_mut() else {
                        unreachable!()
                    };
                    s.ready().await?;
                    let req = with_bench_header(
                        http::Request::get("/").header(http::header::HOST, host.as_str()),
                    )
                    .body(Empty::new())?;
                    fetch(s.send_request(req)).await
                }
                .await;
                match r {
                    Ok(()) => lat.push(t0.elapsed()),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failed request: {e}");
                        }
                        send = None;
                    }
                }
            }
            lat
        }));
    }
    report("requests", secs, start, tasks, &stop, &errors).await
}

/// `wire` (see the module docs): two threads per direction, one reading packets, one writing
/// each when it is due.
fn wire(args: &[String]) -> Result<(), Error> {
    let [_, netns_a, dev_a, netns_b, dev_b, delay] = args else {
        return Err("usage: tunnel_bench wire NETNS_A DEV_A NETNS_B DEV_B DELAY_US".into());
    };
    let delay = Duration::from_micros(delay.parse()?);
    // Sleeps end within a microsecond of their deadline instead of glibc's default 50 µs slack;
    // threads created below inherit it. SAFETY: prctl with an integer argument, no pointers.
    unsafe { nix::libc::prctl(nix::libc::PR_SET_TIMERSLACK, 1 as nix::libc::c_ulong) };
    let a = open_tun(netns_a, dev_a)?;
    let b = open_tun(netns_b, dev_b)?;
    let (a_out, b_out) = (a.try_clone()?, b.try_clone()?);
    // Either direction failing ends the wire (the process), not just that direction.
    let (name_a, name_b) = (dev_a.clone(), dev_b.clone());
    let back = std::thread::spawn(move || {
        let failed = pass(b, a_out, delay);
        eprintln!("wire: {name_b} -> {name_a}: {failed:?}");
        std::process::exit(1);
    });
    let failed = pass(a, b_out, delay);
    drop(back);
    Err(format!("wire: {dev_a} -> {dev_b}: {failed:?}").into())
}

/// The TUN device `dev` (IP packets, no packet information header) in the network namespace
/// at `netns`; the calling thread stays in that namespace.
fn open_tun(netns: &str, dev: &str) -> Result<std::fs::File, Error> {
    use std::os::fd::AsRawFd;
    /// `struct ifreq` as TUNSETIFF reads it: the name, then the flags at the start of the union.
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: nix::libc::c_short,
        _union_rest: [u8; 22],
    }
    if dev.len() >= 16 {
        return Err(format!("TUN device name {dev:?}: at most 15 bytes").into());
    }
    let ns = std::fs::File::open(netns).map_err(|e| format!("{netns}: {e}"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {netns}: {e}"))?;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (nix::libc::IFF_TUN | nix::libc::IFF_NO_PI) as nix::libc::c_short,
        _union_rest: [0; 22],
    };
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is laid out as (40
    // bytes) and outlives the call.
    if unsafe { nix::libc::ioctl(tun.as_raw_fd(), nix::libc::TUNSETIFF, &mut req) } < 0 {
        return Err(format!("TUNSETIFF {dev}: {}", std::io::Error::last_os_error()).into());
    }
    Ok(tun)
}

/// Packets read from `from` are written to `to` once `delay` has passed since each arrived.
fn pass(mut from: std::fs::File, mut to: std::fs::File, delay: Duration) -> Result<(), Error> {
    use std::io::{Read, Write};
    let (due, packets) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        for (at, packet) in packets {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // A packet the kernel refuses is a packet lost on the wire.
            let _ = to.write(&packet);
        }
    });
    let mut buf = vec![0u8; 65536];
    loop {
        let n = from.read(&mut buf)?;
        due.send((Instant::now() + delay, buf[..n].to_vec()))
            .map_err(|_| "wire writer ended")?;
    }
}
