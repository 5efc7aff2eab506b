//! The original destination of a connection the kernel redirected to the agent (nftables
//! `redirect`, iptables `REDIRECT`): `SO_ORIGINAL_DST` for IPv4 and `IP6T_SO_ORIGINAL_DST` for
//! IPv6, read through socket2.

use std::io;
use std::net::SocketAddr;

/// The address the actor dialed before its connection was redirected to the listener that
/// accepted `stream` (`ip:port`). The family follows the accepted connection's local address.
///
/// # Errors
/// The `getsockopt` error: `ENOENT` when the connection was not redirected (no conntrack NAT
/// entry), or an address that is not IP.
pub fn original_destination(stream: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the original destination is not an IP address",
        )
    })
}
