//! `per-connection` tunnels (DESIGN §7.1): exactly upstream atunnel's wire behaviour — a new TLS
//! connection to the PEP per captured connection (SNI = the PEP's name, no ALPN, the actor's
//! client certificate), then `CONNECT <ip>:<port> HTTP/1.1` with `Host` the same and a Go
//! `User-Agent`, nothing else. A non-2xx answer ends the tunnel before any byte of the actor's
//! connection is sent (the agent closes the actor's connection with no bytes, as upstream does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use identity::tls::ReloadableClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Most bytes of the PEP's answer head read.
pub const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// Why a tunnel did not open.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The PEP's name is not a DNS name or IP address.
    #[error("PEP name {0:?} is not a DNS name or IP address")]
    BadName(String),
    /// TCP to the PEP failed.
    #[error("connecting to the PEP: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake with the PEP failed (its certificate, ours, or the network).
    #[error("TLS handshake with the PEP: {0}")]
    Handshake(std::io::Error),
    /// The PEP answered the CONNECT with a status other than 2xx; the reason phrase is the
    /// PEP's (its body, `egress denied` or `egress unavailable`, is not read).
    #[error("the PEP answered {status} {reason}")]
    Refused {
        /// The status code.
        status: u16,
        /// The reason phrase, as sent.
        reason: String,
    },
    /// The answer is not HTTP/1.1, or its head is longer than [`MAX_ANSWER_HEAD`].
    #[error("the PEP's answer is not a CONNECT answer: {0}")]
    BadAnswer(String),
    /// Writing the CONNECT or reading the answer failed.
    #[error("CONNECT to the PEP: {0}")]
    Io(std::io::Error),
    /// Reading the actor's own connection failed while its tunnel opened (`pooled` reads it
    /// before the PEP answers): the actor went away, nothing is wrong with the PEP.
    #[error("the captured connection failed: {0}")]
    Client(std::io::Error),
    /// Connect, handshake and answer did not finish in time.
    #[error("the PEP did not answer within {0:?}")]
    Timeout(Duration),
    /// The egress assertion could not be signed.
    #[error("signing the egress assertion: {0}")]
    Assertion(String),
}

/// Where and as whom the agent reaches the PEP, shared by both tunnel modes: the address, the
/// name its certificate must carry, the client TLS config (the actor certificate, reloaded when
/// its files change; ALPN per mode), how long opening a tunnel may take, the `SO_MARK` of the
/// agent's sockets and, for a shared agent, its egress assertions.
#[derive(Clone)]
pub struct PepEndpoint {
    addr: SocketAddr,
    name: ServerName<'static>,
    tls: Arc<ReloadableClientConfig>,
    timeout: Duration,
    mark: Option<u32>,
    assertions: Option<Arc<Assertions>>,
}

impl PepEndpoint {
    /// The PEP at `addr` (`ip:port`) whose certificate names `name`, reached with `tls`, each
    /// tunnel opened within `timeout`.
    ///
    /// # Errors
    /// [`TunnelError::BadName`] for a `name` that is not a DNS name or IP address.
    pub fn new(
        addr: SocketAddr,
        name: &str,
        tls: Arc<ReloadableClientConfig>,
        timeout: Duration,
    ) -> Result<Self, TunnelError> {
        let server = ServerName::try_from(name.to_owned())
            .map_err(|_| TunnelError::BadName(name.to_owned()))?;
        Ok(Self {
            addr,
            name: server,
            tls,
            timeout,
            mark: None,
            assertions: None,
        })
    }

    /// Sets `SO_MARK` on the connections to the PEP (needs `CAP_NET_ADMIN`): capture rules
    /// installed with `--exclude-mark` leave them alone. `None`: unmarked.
    pub fn with_mark(mut self, mark: Option<u32>) -> Self {
        self.mark = mark;
        self
    }

    /// Sends an egress assertion with every CONNECT (a shared agent with a component
    /// certificate); without them the wire is exactly atunnel's.
    pub fn with_assertions(mut self, assertions: Option<Arc<Assertions>>) -> Self {
        self.assertions = assertions;
        self
    }

    /// How long opening a tunnel may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `ate-egress-assertion` value for a tunnel to `dst`, when assertions are configured.
    ///
    /// # Errors
    /// [`TunnelError::Assertion`] when signing fails.
    pub fn assertion(&self, dst: SocketAddr) -> Result<Option<String>, TunnelError> {
        self.assertions.as_ref().map(|a| a.for_dst(dst)).transpose()
    }

    /// A new TLS connection to the PEP (its ALPN decides HTTP/1.1 or h2).
    ///
    /// # Errors
    /// [`TunnelError::Connect`] or [`TunnelError::Handshake`].
    pub async fn connect(&self) -> Result<TlsStream<TcpStream>, TunnelError> {
        connect_tls(self.addr, &self.name, &self.tls, self.mark).await
    }
}

/// Opens `per-connection` tunnels to one PEP.
pub struct PerConnection {
    pep: PepEndpoint,
}

/// Egress assertions for a shared agent (DESIGN §6): with a component certificate, each CONNECT
/// carries `ate-egress-assertion`, a short-lived JWT naming the actor and the tunnel's
/// destination (`dst`), signed with the agent's key (the PEP checks it against its JWKS and
/// refuses a replayed `jti`).
pub struct Assertions {
    minter: arc_swap::ArcSwap<identity::assertion::AssertionMinter>,
    actor: identity::ActorIdentity,
}

impl Assertions {
    /// Assertions for `actor` minted by `minter`.
    pub fn new(
        minter: identity::assertion::AssertionMinter,
        actor: identity::ActorIdentity,
    ) -> Self {
        Self {
            minter: arc_swap::ArcSwap::from_pointee(minter),
            actor,
        }
    }

    /// Mints the next assertions with `minter` (a rotated signing key); tunnels already open
    /// keep theirs.
    pub fn replace_minter(&self, minter: identity::assertion::AssertionMinter) {
        self.minter.store(Arc::new(minter));
    }

    /// The header value for a tunnel to `dst`.
    ///
    /// # Errors
    /// [`TunnelError::Assertion`] when signing fails.
    pub fn for_dst(&self, dst: SocketAddr) -> Result<String, TunnelError> {
        self.minter
            .load()
            .mint(&self.actor, dst)
            .map_err(|e| TunnelError::Assertion(e.to_string()))
    }
}

impl PerConnection {
    /// Tunnels to `pep`, whose client config offers no ALPN (as atunnel).
    pub fn new(pep: PepEndpoint) -> Self {
        Self { pep }
    }

    /// A tunnel to `dst`: the stream is positioned right after the PEP's `200` answer head.
    ///
    /// # Errors
    /// [`TunnelError`]; on [`TunnelError::Refused`] nothing was sent for the actor.
    pub async fn open(&self, dst: SocketAddr) -> Result<TlsStream<TcpStream>, TunnelError> {
        self.open_named(dst, None).await
    }

    /// [`PerConnection::open`], the CONNECT naming `host` (`name[:port]`, what the actor asked
    /// for) in `ate-destination-host` when given (an actorgate extension: the PEP uses it to
    /// name the actor of opaque traffic to ingress, DESIGN §7.4).
    ///
    /// # Errors
    /// As [`PerConnection::open`].
    pub async fn open_named(
        &self,
        dst: SocketAddr,
        host: Option<&str>,
    ) -> Result<TlsStream<TcpStream>, TunnelError> {
        let timeout = self.pep.timeout();
        tokio::time::timeout(timeout, self.open_now(dst, host))
            .await
            .map_err(|_| TunnelError::Timeout(timeout))?
    }

    async fn open_now(
        &self,
        dst: SocketAddr,
        host: Option<&str>,
    ) -> Result<TlsStream<TcpStream>, TunnelError> {
        let mut tls = self.pep.connect().await?;
        let assertion = self.pep.assertion(dst)?;
        tls.write_all(connect_head(dst, assertion.as_deref(), host).as_bytes())
            .await
            .map_err(TunnelError::Io)?;
        tls.flush().await.map_err(TunnelError::Io)?;
        let head = read_head(&mut tls).await?;
        let (status, reason) = status_line(&head)?;
        if !(200..300).contains(&status) {
            return Err(TunnelError::Refused { status, reason });
        }
        Ok(tls)
    }
}

/// A TLS connection to the PEP at `pep` named `name` with `tls` (its ALPN decides HTTP/1.1 or
/// h2), its socket marked with `mark` when given.
async fn connect_tls(
    pep: SocketAddr,
    name: &ServerName<'static>,
    tls: &ReloadableClientConfig,
    mark: Option<u32>,
) -> Result<TlsStream<TcpStream>, TunnelError> {
    let socket = match pep {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(TunnelError::Connect)?;
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket)
            .set_mark(mark)
            .map_err(TunnelError::Connect)?;
    }
    let tcp = socket.connect(pep).await.map_err(TunnelError::Connect)?;
    let _ = tcp.set_nodelay(true);
    tls.connector()
        .connect(name.clone(), tcp)
        .await
        .map_err(TunnelError::Handshake)
}

/// The CONNECT request head atunnel writes for `dst` (`[v6]:port` for IPv6), with the
/// `ate-egress-assertion` header and the `ate-destination-host` header when given (neither of
/// which upstream atunnel sends).
pub fn connect_head(dst: SocketAddr, assertion: Option<&str>, host: Option<&str>) -> String {
    let mut head =
        format!("CONNECT {dst} HTTP/1.1\r\nHost: {dst}\r\nUser-Agent: Go-http-client/1.1\r\n");
    if let Some(a) = assertion {
        head.push_str(crate::tunnel::ASSERTION_HEADER);
        head.push_str(": ");
        head.push_str(a);
        head.push_str("\r\n");
    }
    if let Some(h) = host {
        head.push_str(crate::actor_forward::DESTINATION_HOST_HEADER);
        head.push_str(": ");
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Reads the answer head byte by byte (the tunnel's bytes follow it), bounded.
async fn read_head(tls: &mut TlsStream<TcpStream>) -> Result<Vec<u8>, TunnelError> {
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_ANSWER_HEAD {
            return Err(TunnelError::BadAnswer(format!(
                "no end of the head within {MAX_ANSWER_HEAD} bytes"
            )));
        }
        match tls.read(&mut byte).await.map_err(TunnelError::Io)? {
            0 => {
                return Err(TunnelError::BadAnswer(
                    "the connection closed before the answer".into(),
                ));
            }
            _ => head.push(byte[0]),
        }
    }
    Ok(head)
}

/// The status code and reason phrase of an HTTP/1.x status line.
fn status_line(head: &[u8]) -> Result<(u16, String), TunnelError> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next());
    match (version, code.and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && (100..600).contains(&code) => {
            Ok((code, reason.unwrap_or("").to_owned()))
        }
        _ => Err(TunnelError::BadAnswer(format!("status line {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_head_is_atunnels() {
        assert_eq!(
            connect_head("10.1.2.3:443".parse().unwrap(), None, None),
            "CONNECT 10.1.2.3:443 HTTP/1.1\r\nHost: 10.1.2.3:443\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"
        );
        assert!(
            connect_head("[2001:db8::1]:80".parse().unwrap(), None, None)
                .starts_with("CONNECT [2001:db8::1]:80 HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n")
        );
    }

    #[test]
    fn a_shared_agent_adds_its_assertion_header() {
        assert_eq!(
            connect_head("10.1.2.3:443".parse().unwrap(), Some("e.y.j"), None),
            "CONNECT 10.1.2.3:443 HTTP/1.1\r\nHost: 10.1.2.3:443\r\nUser-Agent: Go-http-client/1.1\r\nate-egress-assertion: e.y.j\r\n\r\n"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_line(b"HTTP/1.1 403 Forbidden\r\n\r\n").unwrap(),
            (403, "Forbidden".to_owned())
        );
        assert_eq!(
            status_line(b"HTTP/1.1 200\r\n\r\n").unwrap(),
            (200, String::new())
        );
        assert!(status_line(b"SSH-2.0-x\r\n\r\n").is_err());
    }
}
