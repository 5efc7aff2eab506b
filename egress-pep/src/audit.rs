//! Audit records (DESIGN §7.2 "Audit"): one per tunnel and one per cleartext/intercepted request,
//! to the log (tracing target `actorgate::audit`) and an optional JSON-lines file, plus a bounded
//! ring of recent records for `/statusz`. Never a secret, token or header value: only the fields
//! of [`AuditRecord`].
//!
//! Writing never blocks the runtime: records go through a bounded queue to one writer task; when
//! the queue is full the record is dropped from the file (still logged) and counted
//! ([`AuditSink::dropped`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Serialize, Serializer};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::decision::{Reason, RuleRef, Verdict};
use crate::subject::IdentityKind;

/// Records waiting for the file writer; beyond it records are dropped from the file and counted.
pub const QUEUE_CAPACITY: usize = 8192;
/// Recent records kept for `/statusz`.
pub const RECENT_CAPACITY: usize = 64;
/// Records buffered for [`AuditSink::subscribe`] receivers that lag.
const SUBSCRIBE_CAPACITY: usize = 1024;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A tunnel (one CONNECT), written when it ends or is refused.
    Tunnel,
    /// One cleartext HTTP request inside a tunnel.
    Request,
}

/// The actor a record is about, as far as it is known (a refused identity may leave it empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditActor {
    /// The actor's atespace.
    pub atespace: String,
    /// The actor's name.
    pub name: String,
    /// The actor's UID, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One audit record (DESIGN §7.2 list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// When the tunnel or request ended (or was refused); RFC 3339 in JSON.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// Tunnel or request.
    pub kind: RecordKind,
    /// The actor, when the identity was read (`None` when no identity could be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<AuditActor>,
    /// How the identity was proven, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityKind>,
    /// The original destination (the CONNECT target), when it parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<SocketAddr>,
    /// The TLS ClientHello's SNI (tunnels classified as TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The cleartext request's authority (requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// The cleartext request's method (requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The cleartext request's path without the query (requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The deciding rule, when one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// The HTTP status the actor received (requests; `101` for an upgrade); absent when no
    /// response was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Allow, deny or audit.
    pub verdict: Verdict,
    /// The reason code.
    pub reason: Reason,
    /// The destination the actor dialed is not among the addresses the authorised name
    /// resolved to (the PEP dialled the name's own address).
    pub dst_mismatch: bool,
    /// Bytes from the actor to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the actor.
    pub bytes_down: u64,
    /// From CONNECT (or the request's start) to the end, milliseconds.
    pub duration_ms: u64,
}

impl AuditRecord {
    /// A record of `kind` with `verdict` and `reason`, now, everything else empty.
    pub fn new(kind: RecordKind, verdict: Verdict, reason: Reason) -> Self {
        Self {
            time: SystemTime::now(),
            kind,
            actor: None,
            identity: None,
            dst: None,
            sni: None,
            authority: None,
            method: None,
            path: None,
            rule: None,
            status: None,
            verdict,
            reason,
            dst_mismatch: false,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
        }
    }

    /// Sets `duration_ms` from a duration.
    pub fn with_duration(mut self, d: Duration) -> Self {
        self.duration_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self
    }
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// Errors opening the audit file.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be opened for appending.
    #[error("audit file {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

enum Msg {
    Record(Box<AuditRecord>),
    Flush(oneshot::Sender<()>),
}

/// Where audit records go: the log, an optional JSON-lines file, the recent ring and live
/// subscribers.
pub struct AuditSink {
    file: Option<PathBuf>,
    queue: Option<mpsc::Sender<Msg>>,
    recent: Mutex<VecDeque<AuditRecord>>,
    dropped: AtomicU64,
    written: std::sync::Arc<AtomicU64>,
    write_errors: std::sync::Arc<AtomicU64>,
    live: broadcast::Sender<AuditRecord>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("file", &self.file)
            .finish()
    }
}

impl AuditSink {
    /// A sink writing JSON lines to `file` (appended, created if missing) besides the log; `None`:
    /// the log only. With a file, must be called inside a tokio runtime (the writer task is
    /// spawned here).
    ///
    /// # Errors
    /// [`AuditError::Open`] when the file cannot be opened for appending.
    pub fn new(file: Option<PathBuf>) -> Result<Self, AuditError> {
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let write_errors = std::sync::Arc::new(AtomicU64::new(0));
        let queue = match &file {
            None => None,
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AuditError::Open {
                        path: path.display().to_string(),
                        source,
                    })?;
                let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
                tokio::spawn(writer(
                    path.clone(),
                    tokio::fs::File::from_std(f),
                    rx,
                    written.clone(),
                    write_errors.clone(),
                ));
                Some(tx)
            }
        };
        Ok(Self {
            file,
            queue,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CAPACITY)),
            dropped: AtomicU64::new(0),
            written,
            write_errors,
            live: broadcast::channel(SUBSCRIBE_CAPACITY).0,
        })
    }

    /// Records one decision: logs it, keeps it among the recent ones, queues it for the file.
    pub fn record(&self, r: AuditRecord) {
        let actor = r
            .actor
            .as_ref()
            .map(|a| format!("{}/{}", a.atespace, a.name));
        let rule = r
            .rule
            .as_ref()
            .map(|x| format!("{}#{}:{}", x.policy, x.index, x.kind.as_str()));
        tracing::info!(
            target: "actorgate::audit",
            kind = ?r.kind,
            actor = actor.as_deref().unwrap_or(""),
            uid = r.actor.as_ref().and_then(|a| a.uid.as_deref()).unwrap_or(""),
            identity = r.identity.map(IdentityKind::as_str).unwrap_or(""),
            dst = %r.dst.map(|d| d.to_string()).unwrap_or_default(),
            sni = r.sni.as_deref().unwrap_or(""),
            authority = r.authority.as_deref().unwrap_or(""),
            method = r.method.as_deref().unwrap_or(""),
            path = r.path.as_deref().unwrap_or(""),
            rule = rule.as_deref().unwrap_or(""),
            status = r.status.unwrap_or(0),
            verdict = r.verdict.as_str(),
            reason = r.reason.as_str(),
            dst_mismatch = r.dst_mismatch,
            bytes_up = r.bytes_up,
            bytes_down = r.bytes_down,
            duration_ms = r.duration_ms,
            "egress decision"
        );
        {
            let mut recent = self.recent.lock();
            if recent.len() == RECENT_CAPACITY {
                recent.pop_front();
            }
            recent.push_back(r.clone());
        }
        if self.live.receiver_count() > 0 {
            // Fails only when every receiver went away meanwhile.
            let _ = self.live.send(r.clone());
        }
        if let Some(q) = &self.queue
            && q.try_send(Msg::Record(Box::new(r))).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The most recent records, oldest first (at most [`RECENT_CAPACITY`]).
    pub fn recent(&self) -> Vec<AuditRecord> {
        self.recent.lock().iter().cloned().collect()
    }

    /// Every record from now on (a receiver that lags more than 1024 records misses some).
    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.live.subscribe()
    }

    /// Records not written to the file because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every record queued so far is written and flushed to the file (at once
    /// without a file).
    pub async fn flush(&self) {
        let Some(q) = &self.queue else { return };
        let (tx, rx) = oneshot::channel();
        if q.send(Msg::Flush(tx)).await.is_ok() {
            // Err only when the writer ended (it logged why).
            let _ = rx.await;
        }
    }

    /// The audit file, when one is configured.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The sink's state for `/statusz`: file, records written, dropped, write errors, and the
    /// recent records.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file.as_ref().map(|p| p.display().to_string()),
            "written": self.written.load(Ordering::Relaxed),
            "dropped": self.dropped(),
            "write_errors": self.write_errors.load(Ordering::Relaxed),
            "recent": self.recent(),
        })
    }
}

/// The file writer: one JSON line per record, flushed whenever the queue runs empty.
async fn writer(
    path: PathBuf,
    file: tokio::fs::File,
    mut rx: mpsc::Receiver<Msg>,
    written: std::sync::Arc<AtomicU64>,
    errors: std::sync::Arc<AtomicU64>,
) {
    let mut out = tokio::io::BufWriter::new(file);
    let mut line = Vec::with_capacity(512);
    while let Some(msg) = rx.recv().await {
        let mut flushes = Vec::new();
        let mut next = Some(msg);
        while let Some(m) = next {
            match m {
                Msg::Record(r) => {
                    line.clear();
                    if serde_json::to_writer(&mut line, &*r).is_ok() {
                        line.push(b'\n');
                        if let Err(e) = out.write_all(&line).await {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(file = %path.display(), error = %e, "audit write failed");
                        } else {
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Msg::Flush(tx) => flushes.push(tx),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush().await {
            errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(file = %path.display(), error = %e, "audit flush failed");
        }
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_json_lines_and_keeps_recent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::new(Some(path.clone())).unwrap();
        let mut r = AuditRecord::new(RecordKind::Tunnel, Verdict::Deny, Reason::NoPolicy);
        r.dst = Some("10.0.0.1:443".parse().unwrap());
        r.sni = Some("example.com".into());
        sink.record(r.clone());
        sink.record(AuditRecord::new(
            RecordKind::Request,
            Verdict::Allow,
            Reason::Allowed,
        ));
        tokio::time::timeout(Duration::from_secs(5), sink.flush())
            .await
            .expect("flushed within 5 s");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["verdict"], "deny");
        assert_eq!(lines[0]["reason"], "no_policy");
        assert_eq!(lines[0]["dst"], "10.0.0.1:443");
        assert_eq!(lines[0]["sni"], "example.com");
        assert_eq!(lines[0]["kind"], "tunnel");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["kind"], "request");
        assert_eq!(sink.recent().len(), 2);
        assert_eq!(sink.recent()[0], r);
        assert_eq!(sink.status()["written"], 2);
    }
}
