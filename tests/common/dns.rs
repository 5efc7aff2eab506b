//! A DNS responder for tests: one name, one IPv4 address, over UDP.

use std::net::{Ipv4Addr, SocketAddr};

/// The answer to a DNS query: for an A question about `name` one record, `ip` (the name
/// compressed to the question's); for its other types none (NOERROR); for any other name
/// NXDOMAIN. `None` for a message that is not a query with one question.
pub fn dns_answer(query: &[u8], name: &str, ip: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    // The question's name: labels up to the root.
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    let mut wire = Vec::with_capacity(name.len() + 1);
    for label in name.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    let known = query[12..end].eq_ignore_ascii_case(&wire);
    let qtype = query.get(end + 1..end + 3)?;
    let a = known && qtype == [0, 1];
    let mut out = query.get(..end + 5)?.to_vec();
    out[2] = 0x81; // QR, RD
    out[3] = if known { 0x80 } else { 0x83 }; // RA, NOERROR or NXDOMAIN
    out[6..8].copy_from_slice(&u16::from(a).to_be_bytes()); // ANCOUNT
    out[8..12].fill(0); // no authority or additional records (no EDNS)
    if a {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// Answers DNS queries on `bind` (UDP) with [`dns_answer`] for `name` → `ip`, until the test
/// ends; returns the bound address.
pub async fn dns_server(bind: &str, name: &'static str, ip: Ipv4Addr) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind(bind).await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if let Some(answer) = dns_answer(&buf[..n], name, ip) {
                let _ = sock.send_to(&answer, from).await;
            }
        }
    });
    addr
}
