//! Configuration problems that name the offending field, e.g.
//! `directory.static.actors[2].endpoint: invalid socket address "10.0.0.1"`.
//!
//! Each component validates its own config section with paths relative to the section
//! (`actors[2].endpoint`); whoever composes the sections prefixes them with the section's path
//! ([`FieldErrors::extend_prefixed`]), so every problem of a file is reported at once, each with
//! its full path.
//!
//! Also the helpers every section uses: reading a config file with a size cap ([`read_file`]),
//! parsing YAML with the failing field's path ([`parse_yaml`]), and the range and address checks
//! ([`check_duration`], [`socket_addr`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One configuration problem at a dotted field path (empty path: the document as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, with `[i]` for list items, e.g. `ingress.https.tls.cert_file`.
    pub path: String,
    /// What is wrong, for a person (no trailing period).
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same problem with its path under `prefix` (see [`join`]).
    pub fn prefixed(self, prefix: &str) -> Self {
        Self {
            path: join(prefix, &self.path),
            message: self.message,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems found in one configuration document, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    /// Whether no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems were recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in the order they were recorded.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }

    /// `Ok(v)` when no problem was recorded.
    pub fn into_result<T>(self, v: T) -> Result<T, FieldErrors> {
        if self.0.is_empty() { Ok(v) } else { Err(self) }
    }

    /// Adds a section's problems with their paths under `prefix` (the section's own path).
    pub fn extend_prefixed(&mut self, prefix: &str, other: FieldErrors) {
        self.0
            .extend(other.0.into_iter().map(|e| e.prefixed(prefix)));
    }

    /// Keeps `result`'s value, or records its problems under `prefix` and returns `None`: lets
    /// a composer validate every section before giving up.
    pub fn collect<T>(&mut self, prefix: &str, result: Result<T, FieldErrors>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.extend_prefixed(prefix, e);
                None
            }
        }
    }
}

impl From<FieldError> for FieldErrors {
    fn from(e: FieldError) -> Self {
        Self(vec![e])
    }
}

impl Extend<FieldError> for FieldErrors {
    fn extend<I: IntoIterator<Item = FieldError>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl IntoIterator for FieldErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Joins a field path under a prefix: `join("ingress", "http.listen")` is
/// `ingress.http.listen`, `join("actors", "[2].name")` is `actors[2].name`, and an empty side
/// leaves the other unchanged.
pub fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// The path of item `index` of the list at `path`: `item("actors", 2)` is `actors[2]`.
pub fn item(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// Largest config or actors file [`read_file`] reads, in bytes (16 MiB).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why [`read_file`] could not read a config file; displayed as one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    /// The file could not be opened or read, or is not UTF-8.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{} is larger than 16 MiB", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
}

/// Reads a config (or actors) file of at most [`MAX_FILE_BYTES`].
///
/// # Errors
/// [`ReadFileError`] when the file cannot be read or is too large.
pub fn read_file(path: &Path) -> Result<String, ReadFileError> {
    use std::io::Read;
    let io = |source| ReadFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Parses YAML into `T`; a syntax or type error is one problem at the path of the field that
/// failed (`resolver.budget: invalid duration …`, `resolver.budgett: unknown field …`).
///
/// # Errors
/// One [`FieldError`] at the failing field's path (empty for the document as a whole).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, FieldErrors> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let msg = e.without_snippet().to_string().replace('\n', " ");
        let path = if path == "." { String::new() } else { path };
        FieldError::new(path, msg).into()
    })
}

/// Records `<v> is out of range (<min> to <max>)` at `field` unless `min <= v <= max`.
pub fn check_duration(
    errs: &mut FieldErrors,
    field: &str,
    v: Duration,
    min: Duration,
    max: Duration,
) {
    if v < min || v > max {
        errs.push(
            field,
            format!(
                "{} is out of range ({} to {})",
                humantime::format_duration(v),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        );
    }
}

/// `v` as a listen address (`ip:port`), or `None` after recording why not at `field`.
pub fn socket_addr(errs: &mut FieldErrors, field: &str, v: &str) -> Option<SocketAddr> {
    match v.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                field,
                format!("invalid socket address {v:?} (want ip:port)"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_per_problem_with_its_path() {
        let mut errs = FieldErrors::default();
        errs.push("a.b", "bad");
        errs.push("", "whole document");
        assert_eq!(errs.to_string(), "a.b: bad\nwhole document");
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn sections_are_prefixed_with_their_path() {
        let mut section = FieldErrors::default();
        section.push("listen", "port in use");
        section.push(item("routes", 1), "empty");
        section.push("", "section missing");
        let mut all = FieldErrors::default();
        let kept: Option<()> = all.collect("ingress", Err(section));
        assert!(kept.is_none());
        assert_eq!(all.collect("admin", Ok(5)), Some(5));
        let paths: Vec<_> = all.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["ingress.listen", "ingress.routes[1]", "ingress"]);
        assert_eq!(join("actors", "[2].name"), "actors[2].name");
        assert_eq!(join("", "x"), "x");
    }

    #[test]
    fn into_result_is_ok_only_without_problems() {
        assert_eq!(FieldErrors::default().into_result(1), Ok(1));
        let one: FieldErrors = FieldError::new("x", "y").into();
        assert_eq!(one.clone().into_result(1), Err(one));
    }
}
