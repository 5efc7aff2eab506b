//! `ActorRef`: the validated `(atespace, name)` pair that names one actor (DESIGN §2).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Longest DNS-1123 label.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a string is not a valid actor reference; never shown to clients (they get
/// `invalid actor reference`), but useful in config errors and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActorRefError {
    /// A part is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which part (`atespace` or `name`).
        what: &'static str,
    },
    /// A part is longer than a DNS label may be (63 characters).
    #[error("{what} is longer than 63 characters")]
    TooLong {
        /// Which part (`atespace` or `name`).
        what: &'static str,
    },
    /// A part is not a DNS-1123 label.
    #[error("{what} must be a DNS-1123 label ([a-z0-9]([-a-z0-9]*[a-z0-9])?)")]
    NotDnsLabel {
        /// Which part (`atespace` or `name`).
        what: &'static str,
    },
    /// Not `<atespace>/<name>` with exactly one `/`.
    #[error("expected <atespace>/<name> with exactly one '/'")]
    BadShape,
}

/// A validated actor reference. Stored as one shared `"atespace/name"` string so that cloning is
/// a reference-count increment and formatting needs no allocation.
#[derive(Clone)]
pub struct ActorRef {
    key: Arc<str>,
    slash: usize,
}

impl ActorRef {
    /// Builds a reference from two labels, validating both.
    pub fn new(atespace: &str, name: &str) -> Result<Self, ActorRefError> {
        check_label(atespace, "atespace")?;
        check_label(name, "name")?;
        Ok(Self::from_valid_lowercase(atespace, name))
    }

    /// Builds from labels that may contain ASCII uppercase (hosts are case-insensitive);
    /// lowercases them, then validates.
    pub fn new_case_insensitive(atespace: &str, name: &str) -> Result<Self, ActorRefError> {
        if atespace.bytes().any(|b| b.is_ascii_uppercase())
            || name.bytes().any(|b| b.is_ascii_uppercase())
        {
            Self::new(&atespace.to_ascii_lowercase(), &name.to_ascii_lowercase())
        } else {
            Self::new(atespace, name)
        }
    }

    /// Parses `<atespace>/<name>` (exactly one `/`).
    pub fn parse(s: &str) -> Result<Self, ActorRefError> {
        let (atespace, name) = s.split_once('/').ok_or(ActorRefError::BadShape)?;
        if name.contains('/') {
            return Err(ActorRefError::BadShape);
        }
        Self::new(atespace, name)
    }

    fn from_valid_lowercase(atespace: &str, name: &str) -> Self {
        // Both labels are validated ASCII of at most 63 bytes: build the key on the stack and
        // allocate once.
        let mut buf = [0u8; 2 * MAX_LABEL_LEN + 1];
        let n = atespace.len() + 1 + name.len();
        buf[..atespace.len()].copy_from_slice(atespace.as_bytes());
        buf[atespace.len()] = b'/';
        buf[atespace.len() + 1..n].copy_from_slice(name.as_bytes());
        let key: &str = std::str::from_utf8(&buf[..n]).unwrap_or_default();
        Self {
            key: Arc::from(key),
            slash: atespace.len(),
        }
    }

    /// The actor's atespace (namespace).
    pub fn atespace(&self) -> &str {
        &self.key[..self.slash]
    }

    /// The actor's name within its atespace.
    pub fn name(&self) -> &str {
        &self.key[self.slash + 1..]
    }

    /// `"atespace/name"`, the form used in headers, logs and error bodies.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

impl PartialEq for ActorRef {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for ActorRef {}
impl Hash for ActorRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}
impl fmt::Display for ActorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}
impl fmt::Debug for ActorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorRef({})", self.key)
    }
}
impl std::str::FromStr for ActorRef {
    type Err = ActorRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks a DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn check_label(s: &str, what: &'static str) -> Result<(), ActorRefError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(ActorRefError::Empty { what });
    }
    if b.len() > MAX_LABEL_LEN {
        return Err(ActorRefError::TooLong { what });
    }
    let edge_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner_ok = |c: u8| edge_ok(c) || c == b'-';
    if !edge_ok(b[0]) || !edge_ok(b[b.len() - 1]) || !b.iter().all(|&c| inner_ok(c)) {
        return Err(ActorRefError::NotDnsLabel { what });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_exposes_parts() {
        let r = ActorRef::parse("team-a/agent-7").unwrap();
        assert_eq!(r.atespace(), "team-a");
        assert_eq!(r.name(), "agent-7");
        assert_eq!(r.to_string(), "team-a/agent-7");
    }

    #[test]
    fn rejects_bad_labels() {
        for bad in [
            "", "/", "a/", "/b", "a/b/c", "A/b", "a/B", "a_b/c", "-a/b", "a/b-", "a.b/c",
        ] {
            assert!(ActorRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = "a".repeat(64);
        assert_eq!(
            ActorRef::new(&long, "x"),
            Err(ActorRefError::TooLong { what: "atespace" })
        );
        assert!(ActorRef::new(&"a".repeat(63), "x").is_ok());
    }

    #[test]
    fn case_insensitive_constructor_lowercases() {
        let r = ActorRef::new_case_insensitive("Team", "AGENT").unwrap();
        assert_eq!(r.as_str(), "team/agent");
    }
}
