//! Hostname patterns and authority normalisation with upstream's grammar (DESIGN §7.2).
//!
//! * A [`HostPattern`] is a lowercase DNS-1123 subdomain without a trailing dot (exact), a
//!   `*.<subdomain>` whose `*` is exactly one non-empty leftmost label (wildcard), or `*` alone
//!   (any name, and the only pattern that matches an IP-literal authority). Punycode only; IP
//!   literals, ports, URLs and other `*` placements are invalid.
//! * An authority (an SNI, a `Host` header, an absolute-form target's host) is normalised before
//!   matching: the port is split off (and ignored by policy: the dialed port counts), IPv6 is
//!   unbracketed, zones are refused, IPv4-mapped IPv6 is unmapped, ASCII is lowercased, one
//!   trailing dot is removed; a name whose last label is all digits is not a hostname.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS name (without the trailing dot), RFC 1123.
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label, RFC 1123.
const MAX_LABEL_LEN: usize = 63;

/// A hostname pattern as written in a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Exactly this name (`api.example.com`).
    Exact(String),
    /// Any name with exactly one more, non-empty label in front of this suffix:
    /// `*.example.com` is `Wildcard("example.com")` and matches `api.example.com`, not
    /// `example.com`, not `a.b.example.com`.
    Wildcard(String),
    /// `*`: every name, and IP-literal authorities.
    Any,
}

/// Why a hostname pattern is invalid (the message names the problem).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hostname pattern {pattern:?}: {problem}")]
pub struct HostPatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl HostPattern {
    /// Parses a pattern with upstream's grammar (see the module docs).
    ///
    /// # Errors
    /// [`HostPatternError`] for anything outside the grammar: uppercase, a trailing dot, an IP
    /// literal, a port, a URL, non-ASCII (punycode only), `*` anywhere but as the whole leftmost
    /// label, empty or over-long labels.
    pub fn parse(pattern: &str) -> Result<Self, HostPatternError> {
        let fail = |problem| HostPatternError {
            pattern: pattern.to_owned(),
            problem,
        };
        if pattern == "*" {
            return Ok(HostPattern::Any);
        }
        if pattern.contains("://") || pattern.contains('/') {
            return Err(fail("a hostname, not a URL"));
        }
        if pattern.contains(':') || pattern.contains('[') {
            return Err(fail("ports and IPv6 literals are not allowed"));
        }
        let (wildcard, name) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        if name.contains('*') {
            return Err(fail("`*` is allowed only as the whole leftmost label"));
        }
        if name.parse::<Ipv4Addr>().is_ok() {
            return Err(fail("IP literals are not allowed"));
        }
        check_pattern_name(name).map_err(fail)?;
        Ok(if wildcard {
            HostPattern::Wildcard(name.to_owned())
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Whether this pattern matches a normalised authority.
    pub fn matches(&self, authority: &AuthorityRef<'_>) -> bool {
        match (self, authority) {
            (HostPattern::Any, _) => true,
            (_, AuthorityRef::Ip(_)) => false,
            (HostPattern::Exact(e), AuthorityRef::Name(n)) => e == n.as_ref(),
            (HostPattern::Wildcard(suffix), AuthorityRef::Name(n)) => {
                wildcard_suffix(n).is_some_and(|s| s == suffix)
            }
        }
    }

    /// The specificity rank used by precedence: exact (2) > one-label wildcard (1) > `*` (0).
    pub fn specificity(&self) -> u8 {
        match self {
            HostPattern::Exact(_) => 2,
            HostPattern::Wildcard(_) => 1,
            HostPattern::Any => 0,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

impl std::str::FromStr for HostPattern {
    type Err = HostPatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPattern::parse(s)
    }
}

/// The suffix a one-label wildcard would need to match `name`: everything after the first
/// label (`api.example.com` → `example.com`); `None` for a single-label name.
pub fn wildcard_suffix(name: &str) -> Option<&str> {
    let (first, rest) = name.split_once('.')?;
    (!first.is_empty() && !rest.is_empty()).then_some(rest)
}

/// Checks a pattern's name part: lowercase DNS-1123 subdomain, no trailing dot, last label not
/// all digits.
fn check_pattern_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.ends_with('.') {
        return Err("trailing dot is not allowed");
    }
    if !name.is_ascii() {
        return Err("non-ASCII name (use punycode)");
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("uppercase letters are not allowed");
    }
    check_labels(name)
}

/// Checks labels of a lowercase ASCII name: 1..=63 characters of `[a-z0-9-]` (and `_` when
/// `lenient`), no leading/trailing `-`, at most 253 in all, last label not all digits.
fn check_labels(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_NAME_LEN {
        return Err("name longer than 253 characters");
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("label longer than 63 characters");
        }
        let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
        if !label.bytes().all(ok) {
            return Err("labels may hold only a-z, 0-9 and '-'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("labels must not start or end with '-'");
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the last label is all digits (not a hostname)");
    }
    Ok(())
}

/// A normalised authority (owned).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Authority {
    /// A hostname: ASCII lowercase, no trailing dot.
    Name(String),
    /// An IP literal (IPv4-mapped IPv6 unmapped to IPv4).
    Ip(IpAddr),
}

/// A normalised authority borrowing from the input when it was already normal (the decision
/// hot path uses this to avoid allocating).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuthorityRef<'a> {
    /// A hostname: ASCII lowercase, no trailing dot.
    Name(Cow<'a, str>),
    /// An IP literal (IPv4-mapped IPv6 unmapped to IPv4).
    Ip(IpAddr),
}

impl AuthorityRef<'_> {
    /// The owned form.
    pub fn into_owned(self) -> Authority {
        match self {
            AuthorityRef::Name(n) => Authority::Name(n.into_owned()),
            AuthorityRef::Ip(ip) => Authority::Ip(ip),
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authority::Name(n) => f.write_str(n),
            Authority::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why an authority could not be normalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid authority: {0}")]
pub struct AuthorityError(pub &'static str);

/// Splits an authority into host and port: `host:port`, `[v6]:port`, `[v6]`, a bare IPv6
/// literal (more than one `:`, no port) or a bare host. An empty port (`host:`) is `None`.
///
/// # Errors
/// [`AuthorityError`] for an empty host, an unclosed bracket, text after `]` other than
/// `:port`, or a port that is not a number in 1..=65535.
pub fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), AuthorityError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(AuthorityError("unclosed '['"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or(AuthorityError("text after ']'"))?,
                ),
            ),
        }
    } else {
        match authority.bytes().filter(|&b| b == b':').count() {
            0 => (authority, None),
            1 => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
            _ => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(AuthorityError("empty host"));
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => {
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(AuthorityError("port is not a number"));
            }
            match p.parse::<u16>() {
                // Upstream refuses port 0 as a malformed authority.
                Ok(0) | Err(_) => return Err(AuthorityError("port out of range")),
                Ok(n) => Some(n),
            }
        }
    };
    Ok((host, port))
}

/// Normalises an authority (SNI, `Host`, absolute-form host) per DESIGN §7.2; the port, if any,
/// is dropped (policy uses the dialed port).
///
/// # Errors
/// [`AuthorityError`] when the port part is malformed, an IPv6 literal carries a zone, the name
/// is not ASCII, has empty or over-long labels or characters outside `[A-Za-z0-9-]`, or its
/// last label is all digits without being an IPv4 literal.
pub fn normalize_authority(authority: &str) -> Result<Authority, AuthorityError> {
    normalize_authority_ref(authority).map(AuthorityRef::into_owned)
}

/// [`normalize_authority`] borrowing from `authority` when it needs no rewriting (no
/// allocation for an already lowercase name).
///
/// # Errors
/// As [`normalize_authority`].
pub fn normalize_authority_ref(authority: &str) -> Result<AuthorityRef<'_>, AuthorityError> {
    let (host, _port) = split_host_port(authority)?;
    if host.contains('%') {
        return Err(AuthorityError("IPv6 zones are not allowed"));
    }
    if host.contains(':') {
        let v6: Ipv6Addr = host
            .parse()
            .map_err(|_| AuthorityError("invalid IPv6 literal"))?;
        return Ok(AuthorityRef::Ip(unmap(v6)));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return Ok(AuthorityRef::Ip(IpAddr::V4(v4)));
    }
    if !host.is_ascii() {
        return Err(AuthorityError("non-ASCII name (punycode only)"));
    }
    let name: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    // Upstream refuses `_` in authorities too (its NormalizeAuthority tests), so a name such as
    // `_dmarc.example.com` never matches `*.example.com`.
    check_labels(&name).map_err(AuthorityError)?;
    Ok(AuthorityRef::Name(name))
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) → IPv4; anything else unchanged.
fn unmap(v6: Ipv6Addr) -> IpAddr {
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_upstream_grammar() {
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        assert_eq!(
            HostPattern::parse("api.example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.com"),
            Ok(HostPattern::Wildcard("example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("xn--bcher-kva.example"),
            Ok(HostPattern::Exact("xn--bcher-kva.example".into()))
        );
        for bad in [
            "",
            "API.example.com",
            "example.com.",
            "10.0.0.1",
            "example.com:443",
            "https://example.com",
            "example.com/path",
            "*.*.example.com",
            "a*.example.com",
            "api.*.com",
            "*example.com",
            "**",
            "*.",
            "bücher.example",
            "a..b",
            "-a.example.com",
            "a-.example.com",
            "foo.123",
            "under_score.example.com",
            "[::1]",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} must be invalid");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(HostPattern::parse(&long).is_err());
    }

    #[test]
    fn wildcard_matches_exactly_one_leftmost_label() {
        let p = HostPattern::parse("*.example.com").unwrap();
        let n = |s: &'static str| AuthorityRef::Name(Cow::Borrowed(s));
        assert!(p.matches(&n("api.example.com")));
        assert!(!p.matches(&n("example.com")));
        assert!(!p.matches(&n("a.b.example.com")));
        assert!(!p.matches(&n("api.example.org")));
        assert!(!p.matches(&AuthorityRef::Ip("10.0.0.1".parse().unwrap())));
        assert!(HostPattern::Any.matches(&AuthorityRef::Ip("10.0.0.1".parse().unwrap())));
    }

    #[test]
    fn authorities_are_normalised() {
        let name = |s: &str| Ok(Authority::Name(s.to_owned()));
        let ip = |s: &str| Ok(Authority::Ip(s.parse().unwrap()));
        assert_eq!(
            normalize_authority("API.Example.COM:8080"),
            name("api.example.com")
        );
        assert_eq!(normalize_authority("example.com."), name("example.com"));
        assert_eq!(normalize_authority("example.com.:443"), name("example.com"));
        assert_eq!(normalize_authority("example.com:"), name("example.com"));
        assert_eq!(normalize_authority("10.1.2.3:80"), ip("10.1.2.3"));
        assert_eq!(normalize_authority("[2001:db8::1]:443"), ip("2001:db8::1"));
        assert_eq!(normalize_authority("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(normalize_authority("2001:db8::1"), ip("2001:db8::1"));
        assert_eq!(normalize_authority("[::ffff:10.0.0.1]:80"), ip("10.0.0.1"));
        for bad in [
            "",
            ":80",
            "[fe80::1%eth0]:80",
            "fe80::1%25eth0",
            "example.com..",
            "example..com",
            "foo.123",
            "1.2.3",
            "0x7f.1",
            "bücher.example",
            "example.com:http",
            "example.com:70000",
            "[::1",
            "[::1]x",
            "a b.com",
        ] {
            assert!(normalize_authority(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn lowercase_names_are_borrowed() {
        assert!(matches!(
            normalize_authority_ref("api.example.com:443"),
            Ok(AuthorityRef::Name(Cow::Borrowed("api.example.com")))
        ));
    }
}
