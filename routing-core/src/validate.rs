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
//!   routes to: the host compares ASCII case-insensitively (RFC 3986 §6.2.2.1) and the port
//!   after filling in the scheme's default (RFC 3986 §6.2.3: `http://h:80/` with `Host: h`
//!   agree);
//! * `ate-target-actor` fails closed ([`wire::target_actor`]): two values or a non-UTF-8 value
//!   are an invalid reference, never "absent";
//! * the header and the authority must not name different actors unless configured otherwise
//!   ([`ConflictPolicy`](crate::extract::ConflictPolicy)).
//!
//! Fronts collect what they saw into a [`MetaInput`] (from a header map with [`Values::header`],
//! from name/value pairs with [`MetaInput::push_header`]) and call
//! [`MetaInput::validate_target`]; the result is the [`RequestMeta`] routing reads and the
//! target extracted from it, which the front routes with [`Validated::route`] (or resolves
//! with [`Resolver::resolve`] when it needs the target itself).

use std::net::Ipv6Addr;

use http::HeaderMap;
use http::header::AsHeaderName;

use crate::error::RouteError;
use crate::extract::{Extractor, InvalidActorRef, RequestMeta, Target};
use crate::resolver::{Resolver, Route};
use crate::wire;

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

    /// Every line of header `name` in `headers` (raw bytes, so a non-UTF-8 line still counts).
    pub fn header<K: AsHeaderName>(headers: &'a HeaderMap, name: K) -> Self {
        Self::collect(
            headers
                .get_all(name)
                .iter()
                .map(http::HeaderValue::as_bytes),
        )
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
    /// `target_authority` and `host`, when both are present, must name the same host (ASCII
    /// case-insensitive) and port (see `default_port`). False where `host` legitimately names
    /// another hop (the forward-auth subrequest of `/resolve`).
    pub authority_must_match_host: bool,
    /// The port an authority without one stands for, from the request's scheme (80 for
    /// `http`, 443 for `https`) when the front knows it, so `h:80` and `h` agree. `None`: the
    /// ports must be written alike (an empty port counts as absent).
    pub default_port: Option<u16>,
}

/// The port an authority without one stands for under `scheme`: 80 for `http`, 443 for `https`
/// (ASCII case-insensitive), `None` for any other scheme.
pub fn scheme_default_port(scheme: &[u8]) -> Option<u16> {
    if scheme.eq_ignore_ascii_case(b"http") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case(b"https") {
        Some(443)
    } else {
        None
    }
}

/// Validated request metadata with its extraction already done ([`MetaInput::validate_target`]).
#[derive(Debug, Clone)]
pub struct Validated<'a> {
    /// What routing reads; `meta.authority` is the authority to route on and forward as Host.
    pub meta: RequestMeta<'a>,
    /// The extractor's answer for `meta` (what `Extractor::extract` would return), so a front
    /// can resolve it without extracting again.
    pub target: Result<Target, InvalidActorRef>,
}

impl Validated<'_> {
    /// The route for this request: resolves the extracted target, or, when the request names no
    /// valid actor, lets the resolver answer (and count) the invalid reference as on every front.
    pub async fn route(&self, resolver: &Resolver) -> Result<Route, RouteError> {
        match &self.target {
            Ok(target) => resolver.resolve(target).await,
            Err(_) => resolver.route(&self.meta).await,
        }
    }
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
        let meta = self.check()?;
        if extractor.conflicting(&meta) {
            return Err(BadRequest::ConflictingActors);
        }
        Ok(meta)
    }

    /// [`MetaInput::validate`] that also hands over the extracted target: the conflict check
    /// and the extraction are one pass over the header and the authority.
    pub fn validate_target(&self, extractor: &Extractor) -> Result<Validated<'a>, BadRequest> {
        let meta = self.check()?;
        let decision = extractor.decide(&meta, true);
        if decision.conflicting {
            return Err(BadRequest::ConflictingActors);
        }
        Ok(Validated {
            meta,
            target: decision.target,
        })
    }

    /// Records one request header of a front that sees headers as name/value pairs (Envoy
    /// ExtProc, the `ResolveRoute` header map): `ate-target-actor`, `:authority` (as the
    /// request target's authority), `host`, and `:scheme`, which sets
    /// [`default_port`](Self::default_port) ([`scheme_default_port`]). Names compare ASCII
    /// case-insensitively, so differently cased copies of a name count as several values; other
    /// names are ignored.
    pub fn push_header(&mut self, name: &str, value: &'a [u8]) {
        if name.eq_ignore_ascii_case(wire::name::TARGET_ACTOR) {
            self.target_actor.push(value);
        } else if name.eq_ignore_ascii_case(":authority") {
            self.target_authority.push(value);
        } else if name.eq_ignore_ascii_case("host") {
            self.host.push(value);
        } else if name.eq_ignore_ascii_case(":scheme") {
            self.default_port = scheme_default_port(value);
        }
    }

    /// Every rule except the conflicting-actors one.
    fn check(&self) -> Result<RequestMeta<'a>, BadRequest> {
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
            && !same_authority(t, h, self.default_port)
        {
            return Err(BadRequest::AuthorityHostMismatch);
        }
        if self.require_host && !self.target_authority.is_present() && !self.host.is_present() {
            return Err(BadRequest::MissingHost);
        }
        Ok(RequestMeta {
            target_actor: wire::target_actor(self.target_actor),
            authority: target.or(host),
        })
    }
}

/// Whether two authorities that passed [`check_authority`] name the same origin: the host
/// compares ASCII case-insensitively, the port numerically after an absent or empty port is
/// replaced by `default_port` (RFC 3986 §6.2.2.1, §6.2.3).
fn same_authority(a: &str, b: &str, default_port: Option<u16>) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let (ah, ap) = split_port(a);
    let (bh, bp) = split_port(b);
    let port = |p: Option<&str>| match p {
        None | Some("") => default_port.map(u32::from),
        // At most five digits (check_authority).
        Some(p) => p.parse::<u32>().ok(),
    };
    ah.eq_ignore_ascii_case(bh) && port(ap) == port(bp)
}

/// `host[:port]` → (host, port digits if a `:` is present); IPv6 literals keep their brackets.
fn split_port(a: &str) -> (&str, Option<&str>) {
    if a.starts_with('[') {
        return match a.find(']') {
            Some(i) => (&a[..=i], a[i + 1..].strip_prefix(':')),
            None => (a, None),
        };
    }
    match a.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (a, None),
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
            default_port: None,
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
        // Absolute form with the scheme's default port written out (curl -x): the same origin.
        let mut abs = input(&[], &["H:80"], &["h"]);
        abs.default_port = Some(80);
        assert_eq!(abs.validate(&e).unwrap().authority, Some("H:80"));
        abs.target_authority = Values::One(b"h");
        abs.host = Values::One(b"h:080");
        assert!(abs.validate(&e).is_ok(), "ports compare as numbers");
        abs.host = Values::One(b"h:");
        assert!(abs.validate(&e).is_ok(), "an empty port is the default");
        let mut tls = input(&[], &["[::1]:443"], &["[::1]"]);
        tls.default_port = Some(443);
        assert!(tls.validate(&e).is_ok());
        // Still refused: another port, another host, or a port without a known scheme.
        for (t, h, default) in [
            ("h:8080", "h", Some(80)),
            ("h:443", "h", Some(80)),
            ("h:80", "g", Some(80)),
            ("h:80", "h", None),
            ("[::1]:80", "[::2]", Some(80)),
        ] {
            let mut i = input(&[], &[t], &[h]);
            i.default_port = default;
            assert_eq!(
                i.validate(&e).unwrap_err(),
                BadRequest::AuthorityHostMismatch,
                "{t} vs {h} ({default:?})"
            );
        }
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
    fn name_value_pairs_and_header_maps_read_alike() {
        let e = Extractor::default();
        // Envoy's pseudo-headers: `:scheme` supplies the default port, so `h:80` and `h` agree.
        let mut i = MetaInput {
            authority_must_match_host: true,
            ..MetaInput::default()
        };
        for (k, v) in [
            (":scheme", "http"),
            (":authority", "h:80"),
            ("host", "h"),
            ("ate-target-actor", "a/b"),
            ("x-other", "1"),
        ] {
            i.push_header(k, v.as_bytes());
        }
        assert_eq!(i.default_port, Some(80));
        let m = i.validate_target(&e).unwrap().meta;
        assert_eq!((m.authority, m.target_actor), (Some("h:80"), Some("a/b")));
        // Differently cased copies of the target header are two values: fail closed.
        let mut twice = MetaInput::default();
        twice.push_header("ate-target-actor", b"a/b");
        twice.push_header("Ate-Target-Actor", b"c/d");
        assert_eq!(
            twice.validate_target(&e).unwrap().meta.target_actor,
            Some("")
        );
        // A header map gives the same values.
        let mut h = HeaderMap::new();
        h.append("ate-target-actor", http::HeaderValue::from_static("a/b"));
        assert_eq!(Values::header(&h, &wire::TARGET_ACTOR), Values::One(b"a/b"));
        h.append("ate-target-actor", http::HeaderValue::from_static("c/d"));
        assert_eq!(Values::header(&h, &wire::TARGET_ACTOR), Values::Many);
        assert_eq!(Values::header(&h, http::header::HOST), Values::Absent);
        assert_eq!(scheme_default_port(b"HTTPS"), Some(443));
        assert_eq!(scheme_default_port(b"ftp"), None);
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

    #[test]
    fn validate_target_hands_over_what_extract_finds() {
        const SFX: &str = "actors.resources.substrate.ate.dev";
        let host = format!("hello.demo.{SFX}");
        let legacy = format!("hello.{SFX}");
        let orders = [
            vec![
                ExtractorKind::Header,
                ExtractorKind::Host,
                ExtractorKind::LegacyHost,
            ],
            vec![
                ExtractorKind::LegacyHost,
                ExtractorKind::Header,
                ExtractorKind::Host,
            ],
            vec![ExtractorKind::Host, ExtractorKind::Header],
        ];
        for order in orders {
            let e = Extractor::new(order.clone(), SFX, Some("default"))
                .unwrap()
                .with_conflict_policy(ConflictPolicy::FirstExtractorWins);
            for (hdr, h) in [
                (&[][..], host.as_str()),
                (&["demo/hello"][..], host.as_str()),
                (&["demo/other"][..], host.as_str()),
                (&["demo/other"][..], legacy.as_str()),
                (&["bad ref"][..], host.as_str()),
                (&["demo/x"][..], "gateway:8080"),
                (&[][..], "gateway"),
                (&[][..], "bad_label.demo.actors.resources.substrate.ate.dev"),
            ] {
                let i = input(hdr, &[], &[h]);
                let v = i.validate_target(&e).unwrap();
                assert_eq!(v.target, e.extract(&v.meta), "{order:?} {hdr:?} {h}");
            }
        }
    }
}
