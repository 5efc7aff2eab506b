//! Protobuf wire format by hand, with upstream Substrate v0.4's field numbers (DESIGN §9): the
//! bytes of `EgressPolicy` messages as upstream's ate-api-server sends them, built without
//! actorgate's generated types, and the decoding of `GetActorEgressPolicyRequest`. Shared by the
//! upstream-equivalence tests of egress-pep and the end-to-end tests of the binary.

#![allow(dead_code)]

use bytes::Bytes;

/// Appends `v` as a base-128 varint.
pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field key: `(field << 3) | wire_type`.
pub fn key(field: u32, wire_type: u8, out: &mut Vec<u8>) {
    varint((u64::from(field) << 3) | u64::from(wire_type), out);
}

/// A length-delimited field (wire type 2): strings, bytes, embedded messages, packed scalars.
pub fn len_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// v0.4 field numbers (DESIGN §9).
pub mod f {
    pub const POLICY_METADATA: u32 = 1;
    pub const POLICY_RULES: u32 = 2;
    pub const META_ATESPACE: u32 = 1;
    pub const META_NAME: u32 = 2;
    pub const RULE_HTTP: u32 = 1;
    pub const RULE_HTTPS: u32 = 2;
    pub const RULE_TLS_PASSTHROUGH: u32 = 3;
    pub const HOST_HOSTNAMES: u32 = 1;
    pub const HOST_PORTS: u32 = 2;
    pub const HOST_EFFECTS: u32 = 3;
    pub const PORTS_ALL: u32 = 1;
    pub const PORTS_NUMBERS: u32 = 2;
    pub const EFFECTS_REPLACE_HEADERS: u32 = 1;
    pub const CRED_HEADER: u32 = 1;
    pub const CRED_PREFIX: u32 = 2;
    pub const CRED_URI: u32 = 3;
    pub const CRED_ACTOR_JWT: u32 = 4;
    pub const JWT_AUDIENCES: u32 = 1;
    pub const JWT_EXPIRATION_SECONDS: u32 = 2;
    pub const REQ_ACTOR: u32 = 1;
    pub const REF_ATESPACE: u32 = 1;
    pub const REF_NAME: u32 = 2;
}

/// How a rule's `Ports` is written.
#[derive(Clone)]
pub enum P {
    /// Field absent (http → 80, https → 443).
    Default,
    /// `Ports { all: AllPorts {} }`.
    All,
    /// `Ports { numbers }`, packed (what Go and most encoders write).
    Packed(Vec<i32>),
    /// `Ports { numbers }`, one key per element (also legal proto3 on the wire).
    Unpacked(Vec<i32>),
}

pub fn ports_msg(p: &P) -> Option<Vec<u8>> {
    let mut m = Vec::new();
    match p {
        P::Default => return None,
        P::All => len_field(f::PORTS_ALL, &[], &mut m),
        P::Packed(ns) => {
            let mut packed = Vec::new();
            for &n in ns {
                varint(n as u64, &mut packed);
            }
            len_field(f::PORTS_NUMBERS, &packed, &mut m);
        }
        P::Unpacked(ns) => {
            for &n in ns {
                key(f::PORTS_NUMBERS, 0, &mut m);
                varint(n as u64, &mut m);
            }
        }
    }
    Some(m)
}

/// An `EgressRule` with one kind set (`kind` = 1 http, 2 https, 3 tls_passthrough).
pub fn rule(kind: u32, hostnames: &[&str], ports: P) -> Vec<u8> {
    rule_with(kind, hostnames, ports, &[])
}

pub fn rule_with(kind: u32, hostnames: &[&str], ports: P, extra: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for h in hostnames {
        len_field(f::HOST_HOSTNAMES, h.as_bytes(), &mut body);
    }
    if let Some(p) = ports_msg(&ports) {
        len_field(f::HOST_PORTS, &p, &mut body);
    }
    body.extend_from_slice(extra);
    let mut r = Vec::new();
    len_field(kind, &body, &mut r);
    r
}

pub fn http(hostnames: &[&str], ports: P) -> Vec<u8> {
    rule(f::RULE_HTTP, hostnames, ports)
}
pub fn https(hostnames: &[&str], ports: P) -> Vec<u8> {
    rule(f::RULE_HTTPS, hostnames, ports)
}
pub fn passthrough(hostnames: &[&str], ports: P) -> Vec<u8> {
    rule(f::RULE_TLS_PASSTHROUGH, hostnames, ports)
}

/// `EgressPolicy { metadata { atespace, name: "default" }, rules }`.
pub fn policy_in(atespace: &str, rules: &[Vec<u8>]) -> Bytes {
    let mut meta = Vec::new();
    len_field(f::META_ATESPACE, atespace.as_bytes(), &mut meta);
    len_field(f::META_NAME, b"default", &mut meta);
    let mut p = Vec::new();
    len_field(f::POLICY_METADATA, &meta, &mut p);
    for r in rules {
        len_field(f::POLICY_RULES, r, &mut p);
    }
    Bytes::from(p)
}

/// Reads one length-delimited field's payload or skips a scalar; `None` at the end.
pub fn next_field(buf: &mut &[u8]) -> Option<(u32, Option<Vec<u8>>)> {
    fn read_varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.first()?;
            *buf = &buf[1..];
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    if buf.is_empty() {
        return None;
    }
    let k = read_varint(buf)?;
    let field = (k >> 3) as u32;
    match k & 7 {
        0 => {
            read_varint(buf)?;
            Some((field, None))
        }
        2 => {
            let n = read_varint(buf)? as usize;
            let data = buf.get(..n)?.to_vec();
            *buf = &buf[n..];
            Some((field, Some(data)))
        }
        _ => None,
    }
}

/// Decodes `GetActorEgressPolicyRequest { actor: ObjectRef { atespace, name } }` by hand.
pub fn decode_request(mut buf: &[u8]) -> Option<(String, String)> {
    let mut actor = None;
    while let Some((field, data)) = next_field(&mut buf) {
        if field == f::REQ_ACTOR {
            actor = data;
        }
    }
    let actor = actor?;
    let (mut ns, mut name) = (String::new(), String::new());
    let mut a = actor.as_slice();
    while let Some((field, data)) = next_field(&mut a) {
        match (field, data) {
            (f::REF_ATESPACE, Some(d)) => ns = String::from_utf8(d).ok()?,
            (f::REF_NAME, Some(d)) => name = String::from_utf8(d).ok()?,
            _ => {}
        }
    }
    Some((ns, name))
}

/// `CredentialHeader { header, prefix, credential_uri }`.
pub fn credential_uri(header: &str, prefix: &str, uri: &str) -> Vec<u8> {
    let mut c = Vec::new();
    len_field(f::CRED_HEADER, header.as_bytes(), &mut c);
    if !prefix.is_empty() {
        len_field(f::CRED_PREFIX, prefix.as_bytes(), &mut c);
    }
    len_field(f::CRED_URI, uri.as_bytes(), &mut c);
    c
}

/// `CredentialHeader { header, prefix, actor_jwt: ActorJWTSource { audiences, expiration_seconds } }`.
pub fn credential_jwt(header: &str, prefix: &str, audiences: &[&str], seconds: u64) -> Vec<u8> {
    let mut j = Vec::new();
    for a in audiences {
        len_field(f::JWT_AUDIENCES, a.as_bytes(), &mut j);
    }
    key(f::JWT_EXPIRATION_SECONDS, 0, &mut j);
    varint(seconds, &mut j);
    let mut c = Vec::new();
    len_field(f::CRED_HEADER, header.as_bytes(), &mut c);
    if !prefix.is_empty() {
        len_field(f::CRED_PREFIX, prefix.as_bytes(), &mut c);
    }
    len_field(f::CRED_ACTOR_JWT, &j, &mut c);
    c
}

/// The `effects` field of a hostname rule: `HttpRuleEffects { replace_headers }`, to pass as
/// `extra` of [`rule_with`].
pub fn effects(headers: &[Vec<u8>]) -> Vec<u8> {
    let mut e = Vec::new();
    for h in headers {
        len_field(f::EFFECTS_REPLACE_HEADERS, h, &mut e);
    }
    let mut out = Vec::new();
    len_field(f::HOST_EFFECTS, &e, &mut out);
    out
}
