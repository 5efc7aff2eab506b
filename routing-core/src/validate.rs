//! Request-metadata validation shared by every front (HTTP proxy, `/resolve`, ExtProc,
//! ResolveRoute), so that one input gets one answer whichever front reads it:
//!
//! * exactly one Host / authority value (RFC 9112 §3.2: more than one Host line is a 400);
//! * the authority is `host[:port]` per RFC 3986 §3.2.2–3.2.3 (reg-name, IPv4 or bracketed IPv6
//!   literal; port digits at most 65535) — an invalid value is a 400, never forwarded;
//! * no userinfo (`user:pw@host`, RFC 9110 §4.2.4 forbids it in http(s) URIs): 400, and the
//!   value is neither logged nor forwarded;
//! * a request-target authority (absolute form, HTTP/2 `:authority`) and a `Host` header must
//!   agree (RFC 9113 §8.3.1), so a Host-keyed policy before actorgate sees the actor actorgate
//!   routes to;
//! * `ate-target-actor` fails closed: two values or a non-UTF-8 value are an invalid reference,
//!   never "absent";
//! * the header and the authority must not name different actors unless configured otherwise
//!   ([`ConflictPolicy`](crate::extract::ConflictPolicy)).
//!
//! Fronts collect what they saw into a [`MetaInput`] and call [`MetaInput::validate`]; the
//! result is the [`RequestMeta`] routing reads.

use std::net::Ipv6Addr;

use crate::extract::{Extractor, RequestMeta};

/// How many values of one request field a front saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Values<'a> {
    /// The field is absent.
    #[default]
    Absent,
    /// Exactly one value (raw bytes, possibly not UTF-8).
    One(&'a [u8]),
    /// More than one value.
    Many,
}

impl<'a> Values<'a> {
    /// Records one more value.
    pub fn push(&mut self, v: &'a [u8]) {
        *self = match self {
            Self::Absent => Self::One(v),
            _ => Self::Many,
        };
    }

    /// Collects every value of a field.
    pub fn collect<I: IntoIterator<Item = &'a [u8]>>(values: I) -> Self {
        let mut out = Self::Absent;
        for v in values {
            out.push(v);
            if out == Self::Many {
                break;
            }
        }
        out
    }

    fn is_present(&self) -> bool {
        !matches!(self, Self::Absent)
    }
}

/// What a front saw of the request fields routing depends on.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetaInput<'a> {
    /// Values of `ate-target-actor`.
    pub target_actor: Values<'a>,
    /// The authority of the request target: absolute form, HTTP/2 `:authority`, or the
    /// `X-Forwarded-Host` a forward-auth proxy passes. Takes precedence over `host`.
    pub target_authority: Values<'a>,
    /// Values of the `Host` header.
    pub host: Values<'a>,
    /// Neither an authority nor a Host is a 400 (HTTP/1.1, RFC 9112 §3.2).
    pub require_host: bool,
    /// `target_authority` and `host`, when both are present, must be equal (ASCII
    /// case-insensitive). False where `host` legitimately names another hop (the forward-auth
    /// subrequest of `/resolve`).
    pub authority_must_match_host: bool,
}

/// Request metadata refused before routing; every variant is answered with 400 and its
/// client-safe message (which never echoes the offending value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// HTTP/1.1 request without Host (RFC 9112 §3.2).
    #[error("missing host")]
    MissingHost,
    /// More than one Host line or authority value.
    #[error("multiple host values")]
    MultipleHosts,
    /// Host / authority is not `host[:port]` (RFC 3986).
    #[error("invalid host")]
    InvalidHost,
    /// The authority carries userinfo.
    #[error("userinfo is not allowed in the authority")]
    Userinfo,
    /// The request-target authority and Host differ.
    #[error("conflicting :authority and host")]
    AuthorityHostMismatch,
    /// `ate-target-actor` and the authority name different actors.
    #[error("conflicting actor references")]
    ConflictingActors,
}

impl BadRequest {
    /// The HTTP status clients receive: always 400.
    pub fn http_status(&self) -> u16 {
        400
    }

    /// The `text/plain` body clients receive.
    pub fn client_message(&self) -> String {
        self.to_string()
    }

    /// The gRPC code for gRPC-speaking fronts.
    pub fn grpc_code(&self) -> tonic::Code {
        tonic::Code::InvalidArgument
    }

    /// A low-cardinality label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::MissingHost => "missing_host",
            Self::MultipleHosts => "multiple_hosts",
            Self::InvalidHost => "invalid_host",
            Self::Userinfo => "userinfo",
            Self::AuthorityHostMismatch => "authority_host_mismatch",
            Self::ConflictingActors => "conflicting_actors",
        }
    }
}

impl<'a> MetaInput<'a> {
    /// Applies the rules of this module; on success returns what routing reads. The authority
    /// in the result is the one to route on and to forward as Host.
    pub fn validate(&self, extractor: &Extractor) -> Result<RequestMeta<'a>, BadRequest> {
        let target = match self.target_authority {
            Values::Absent => None,
            Values::One(v) => Some(check_authority(v)?),
            Values::Many => return Err(BadRequest::MultipleHosts),
        };
        let host = match self.host {
            Values::Absent => None,
            Values::One(v) => Some(check_authority(v)?),
            Values::Many => return Err(BadRequest::MultipleHosts),
        };
        if self.authority_must_match_host
            && let (Some(t), Some(h)) = (target, host)
            && !t.eq_ignore_ascii_case(h)
        {
            return Err(BadRequest::AuthorityHostMismatch);
        }
        if self.require_host && !self.target_authority.is_present() && !self.host.is_present() {
            return Err(BadRequest::MissingHost);
        }
        let target_actor = match self.target_actor {
            Values::Absent => None,
            // Not UTF-8, or two values: an invalid reference (fail closed), never "absent".
            Values::One(v) => Some(std::str::from_utf8(v).unwrap_or("")),
            Values::Many => Some(""),
        };
        let meta = RequestMeta {
            target_actor,
            authority: target.or(host),
        };
        if extractor.conflicting(&meta) {
            return Err(BadRequest::ConflictingActors);
        }
        Ok(meta)
    }
}

/// Checks `host[:port]` (RFC 3986 §3.2.2–3.2.3; RFC 9110 §7.2): a reg-name, an IPv4 address or
/// a bracketed IPv6 (or IPvFuture) literal, then optionally `:` and at most five digits no
/// greater than 65535. An empty value is valid (RFC 9112 §3.2: a target without authority).
/// Userinfo is refused as [`BadRequest::Userinfo`].
pub fn check_authority(a: &[u8]) -> Result<&str, BadRequest> {
    if a.contains(&b'@') {
        return Err(BadRequest::Userinfo);
    }
    let (host, port) = if a.first() == Some(&b'[') {
        let end = a
            .iter()
            .position(|b| *b == b']')
            .ok_or(BadRequest::InvalidHost)?;
        let (lit, rest) = a.split_at(end + 1);
        if !ip_literal(&lit[1..end]) {
            return Err(BadRequest::InvalidHost);
        }
        match rest.split_first() {
            None => (lit, None),
            Some((b':', p)) => (lit, Some(p)),
            Some(_) => return Err(BadRequest::InvalidHost),
        }
    } else {
        match a.iter().position(|b| *b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    if host.first() != Some(&b'[') && !reg_name(host) {
        return Err(BadRequest::InvalidHost);
    }
    if let Some(p) = port
        && (p.len() > 5
            || !p.iter().all(u8::is_ascii_digit)
            || p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) > 65535)
    {
        return Err(BadRequest::InvalidHost);
    }
    // Only ASCII passed the checks above.
    std::str::from_utf8(a).map_err(|_| BadRequest::InvalidHost)
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )` (IPv4 addresses are reg-names too).
fn reg_name(h: &[u8]) -> bool {
    let mut i = 0;
    while i < h.len() {
        let b = h[i];
        if b == b'%' {
            if !(h.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && h.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
            continue;
        }
        if !(unreserved(b) || sub_delim(b)) {
            return false;
        }
        i += 1;
    }
    true
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// The inside of `[...]`: an IPv6 address (no zone id) or `v<hex>.<chars>` (IPvFuture).
fn ip_literal(inner: &[u8]) -> bool {
    if let Some(rest) = inner
        .strip_prefix(b"v")
        .or_else(|| inner.strip_prefix(b"V"))
    {
        let Some(dot) = rest.iter().position(|b| *b == b'.') else {
            return false;
        };
        let (ver, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !ver.is_empty()
            && ver.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|b| unreserved(*b) || sub_delim(*b) || *b == b':');
    }
    std::str::from_utf8(inner).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{ConflictPolicy, ExtractorKind};

    #[test]
    fn authority_syntax() {
        for ok in [
            "",
            "a",
            "example.com",
            "example.com:8080",
            "example.com:",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[v1.fe:80]",
            "a%41b",
            "hello.demo.actors.resources.substrate.ate.dev:65535",
        ] {
            assert_eq!(check_authority(ok.as_bytes()), Ok(ok), "{ok:?}");
        }
        for bad in [
            "[::1",
            "::1",
            "[::1]x",
            "[fe80::1%eth0]",
            "a b",
            "a:b:c",
            "a:65536",
            "a:123456",
            "a:8x",
            "a/b",
            "a%4",
            "a%zz",
            "é.example",
            "a\"b",
        ] {
            assert_eq!(
                check_authority(bad.as_bytes()),
                Err(BadRequest::InvalidHost),
                "{bad:?}"
            );
        }
        for userinfo in ["user:pw@host", "@host", "u@[::1]:80"] {
            assert_eq!(
                check_authority(userinfo.as_bytes()),
                Err(BadRequest::Userinfo)
            );
        }
    }

    fn input<'a>(
        target_actor: &[&'a str],
        authority: &[&'a str],
        host: &[&'a str],
    ) -> MetaInput<'a> {
        MetaInput {
            target_actor: Values::collect(target_actor.iter().map(|s| s.as_bytes())),
            target_authority: Values::collect(authority.iter().map(|s| s.as_bytes())),
            host: Values::collect(host.iter().map(|s| s.as_bytes())),
            require_host: true,
            authority_must_match_host: true,
        }
    }

    #[test]
    fn host_rules() {
        let e = Extractor::default();
        let m = input(&[], &[], &["a.b"]).validate(&e).unwrap();
        assert_eq!(m.authority, Some("a.b"));
        let m = input(&[], &["X.y:1"], &["x.Y:1"]).validate(&e).unwrap();
        assert_eq!(m.authority, Some("X.y:1"), "the target's authority wins");
        assert_eq!(
            input(&[], &[], &["a", "b"]).validate(&e).unwrap_err(),
            BadRequest::MultipleHosts
        );
        assert_eq!(
            input(&[], &["a", "a"], &[]).validate(&e).unwrap_err(),
            BadRequest::MultipleHosts
        );
        assert_eq!(
            input(&[], &["a"], &["b"]).validate(&e).unwrap_err(),
            BadRequest::AuthorityHostMismatch
        );
        assert_eq!(
            input(&[], &[], &[]).validate(&e).unwrap_err(),
            BadRequest::MissingHost
        );
        assert_eq!(
            input(&[], &["u:p@a"], &[]).validate(&e).unwrap_err(),
            BadRequest::Userinfo
        );
        let mut loose = input(&[], &["a"], &["b"]);
        loose.authority_must_match_host = false;
        loose.require_host = false;
        assert_eq!(loose.validate(&e).unwrap().authority, Some("a"));
        assert_eq!(
            MetaInput::default().validate(&e).unwrap().authority,
            None,
            "nothing required"
        );
    }

    #[test]
    fn target_actor_fails_closed() {
        let e = Extractor::default();
        let m = input(&["a/b", "c/d"], &[], &["x"]).validate(&e).unwrap();
        assert_eq!(m.target_actor, Some(""));
        let mut i = input(&[], &[], &["x"]);
        i.target_actor = Values::One(b"\xff/\xfe");
        assert_eq!(i.validate(&e).unwrap().target_actor, Some(""));
    }

    #[test]
    fn conflicting_actor_references() {
        const SFX: &str = "actors.resources.substrate.ate.dev";
        let host = format!("hello.demo.{SFX}");
        let legacy = format!("hello.{SFX}");
        let e = Extractor::default();
        let conflict = |e: &Extractor, hdr: &str, h: &str| {
            input(&[hdr], &[], &[h]).validate(e).err() == Some(BadRequest::ConflictingActors)
        };
        assert!(conflict(&e, "demo/other", &host));
        assert!(
            conflict(&e, "demo/hello", &legacy),
            "legacy host names default/hello"
        );
        assert!(!conflict(&e, "demo/hello", &host), "the same actor");
        assert!(
            !conflict(&e, "DEMO/hello", &host),
            "an invalid header fails later"
        );
        assert!(!conflict(&e, "demo/other", "gateway.example:8080"));
        assert!(!conflict(&e, "demo/other", &format!("a_b.demo.{SFX}")));
        let first = Extractor::default().with_conflict_policy(ConflictPolicy::FirstExtractorWins);
        assert!(!conflict(&first, "demo/other", &host));
        // Only configured extractors count.
        let host_only = Extractor::new(vec![ExtractorKind::Host], SFX, None).unwrap();
        assert!(!conflict(&host_only, "demo/other", &host));
    }
}
