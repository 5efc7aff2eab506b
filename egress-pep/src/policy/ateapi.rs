//! The `ateapi` policy source (DESIGN §7.2 "Sources"): upstream's per-actor
//! `GetActorEgressPolicy` (DESIGN §9), read with [`super::upstream::from_proto`], compiled once
//! per fetch and cached per actor (atespace, name, UID) for a TTL (default 10 s), as upstream's
//! gateway does:
//!
//! * concurrent lookups for one actor share one RPC (single flight);
//! * "no policy" (NOT_FOUND) is cached like a policy, so a flood of denied tunnels does not
//!   reach the control plane;
//! * errors are never cached: the caller gets [`PolicyUnavailable`] (503) and the next lookup
//!   asks again;
//! * a policy actorgate cannot take whole is logged and cached as "deny everything" (reason
//!   `policy_invalid`) — fail closed, not a partially understood allow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use routing_core::ActorRef;
use routing_core::directory::ateapi::AteApiDirectory;
use routing_core::directory::{DirFuture, DirectoryError};
use routing_core::proto;

use super::compile::CompiledPolicy;
use super::upstream::{self, UPSTREAM_POLICY_NAME};
use super::{PolicySource, PolicyUnavailable};
use crate::decision::Reason;
use crate::subject::Subject;

/// Default time a fetched policy (or "no policy") is used before it is fetched again.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default bound on cached actors.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// What [`AteapiPolicySource`] needs from the control plane: one actor's upstream policy,
/// `Ok(None)` when it has none (NOT_FOUND). Implemented by [`AteApiDirectory`] (same channel,
/// TLS and token as `GetActor`); tests substitute their own.
pub trait EgressPolicyClient: Send + Sync + 'static {
    /// `GetActorEgressPolicy` for `actor`.
    fn egress_policy(&self, actor: &ActorRef) -> DirFuture<Option<proto::EgressPolicy>>;
}

impl EgressPolicyClient for AteApiDirectory {
    fn egress_policy(&self, actor: &ActorRef) -> DirFuture<Option<proto::EgressPolicy>> {
        AteApiDirectory::egress_policy(self, actor)
    }
}

/// Cache key: the actor and, when the identity carries one, its UID (a recreated actor is
/// another entry).
type Key = (String, String, Option<String>);

/// A cached answer: `None` is "no policy".
type Entry = Option<Arc<CompiledPolicy>>;

/// Counters for `/statusz`.
#[derive(Default)]
struct Stats {
    fetches: AtomicU64,
    errors: AtomicU64,
    invalid: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_invalid: Mutex<Option<String>>,
}

/// The `ateapi` [`PolicySource`]: per-actor cached `GetActorEgressPolicy` (module docs).
pub struct AteapiPolicySource {
    client: Arc<dyn EgressPolicyClient>,
    cache: moka::future::Cache<Key, Entry>,
    ttl: Duration,
    max_entries: u64,
    stats: Arc<Stats>,
}

impl AteapiPolicySource {
    /// A source asking `client`, keeping each actor's answer for `ttl` (upstream's default is
    /// [`DEFAULT_TTL`]) and at most `max_entries` actors (least recently used evicted first).
    pub fn new(client: Arc<dyn EgressPolicyClient>, ttl: Duration, max_entries: u64) -> Self {
        Self {
            client,
            cache: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
            ttl,
            max_entries,
            stats: Arc::new(Stats::default()),
        }
    }

    /// Number of actors cached now (approximate: moka counts lazily).
    pub fn cached_entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Number of `GetActorEgressPolicy` calls made so far (answered or not).
    pub fn fetches(&self) -> u64 {
        self.stats.fetches.load(Ordering::Relaxed)
    }
}

/// One fetch: ask, read, compile. Runs once per flight.
async fn fetch(
    client: Arc<dyn EgressPolicyClient>,
    stats: Arc<Stats>,
    actor: ActorRef,
) -> Result<Entry, DirectoryError> {
    stats.fetches.fetch_add(1, Ordering::Relaxed);
    let answer = match client.egress_policy(&actor).await {
        Ok(a) => a,
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            *stats.last_error.lock() = Some(format!("{actor}: {e}"));
            return Err(e);
        }
    };
    let Some(p) = answer else {
        return Ok(None);
    };
    let compiled = upstream::from_proto(&p)
        .map_err(|e| e.to_string())
        .and_then(|model| CompiledPolicy::compile(&model).map_err(|e| e.to_string()));
    match compiled {
        Ok(c) => Ok(Some(Arc::new(c))),
        Err(why) => {
            stats.invalid.fetch_add(1, Ordering::Relaxed);
            *stats.last_invalid.lock() = Some(format!("{actor}: {why}"));
            tracing::warn!(%actor, problem = %why, "egress policy from the control plane is invalid; denying all egress of this actor");
            Ok(Some(Arc::new(deny_all()?)))
        }
    }
}

/// The stand-in for an invalid policy: every decision is a denial with reason
/// `policy_invalid` (the log line and `/statusz` name the problem).
fn deny_all() -> Result<CompiledPolicy, DirectoryError> {
    Ok(CompiledPolicy::deny_all(
        Arc::from(UPSTREAM_POLICY_NAME),
        Reason::PolicyInvalid,
    ))
}

impl PolicySource for AteapiPolicySource {
    fn kind(&self) -> &'static str {
        "ateapi"
    }

    fn policy_for(
        &self,
        subject: &Subject,
    ) -> BoxFuture<'static, Result<Option<Arc<CompiledPolicy>>, PolicyUnavailable>> {
        let a = &subject.actor;
        let key: Key = (a.atespace.clone(), a.name.clone(), a.uid.clone());
        let actor = ActorRef::new(&a.atespace, &a.name);
        let (cache, client, stats) = (self.cache.clone(), self.client.clone(), self.stats.clone());
        Box::pin(async move {
            let actor =
                actor.map_err(|e| PolicyUnavailable(format!("invalid actor reference: {e}")))?;
            cache
                .try_get_with(key, fetch(client, stats, actor))
                .await
                .map_err(|e: Arc<DirectoryError>| {
                    PolicyUnavailable(format!("GetActorEgressPolicy: {e}"))
                })
        })
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "ateapi",
            "ttl_ms": u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
            "max_entries": self.max_entries,
            "cached_actors": self.cache.entry_count(),
            "fetches": self.stats.fetches.load(Ordering::Relaxed),
            "fetch_errors": self.stats.errors.load(Ordering::Relaxed),
            "invalid_policies": self.stats.invalid.load(Ordering::Relaxed),
            "last_error": *self.stats.last_error.lock(),
            "last_invalid_policy": *self.stats.last_invalid.lock(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Future, poll_fn};
    use std::sync::atomic::AtomicUsize;

    use identity::ActorIdentity;
    use tokio::sync::{Notify, Semaphore};

    use super::*;
    use crate::decision::{Query, Traffic, Verdict};
    use crate::subject::IdentityKind;

    const WAIT: Duration = Duration::from_secs(10);

    /// What the fake answers, in order; the last answer repeats.
    #[derive(Clone)]
    enum Answer {
        Policy(proto::EgressPolicy),
        NoPolicy,
        Fail(tonic::Code),
    }

    struct FakeClient {
        answers: Mutex<Vec<Answer>>,
        calls: AtomicUsize,
        /// Each call takes a permit before answering (tests hold calls with it).
        gate: Arc<Semaphore>,
    }

    impl FakeClient {
        fn new(answers: Vec<Answer>, open: bool) -> Arc<Self> {
            let gate = Arc::new(Semaphore::new(0));
            if open {
                gate.add_permits(Semaphore::MAX_PERMITS);
            }
            Arc::new(Self {
                answers: Mutex::new(answers),
                calls: AtomicUsize::new(0),
                gate,
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl EgressPolicyClient for FakeClient {
        fn egress_policy(&self, _actor: &ActorRef) -> DirFuture<Option<proto::EgressPolicy>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = {
                let mut a = self.answers.lock();
                if a.len() > 1 {
                    a.remove(0)
                } else {
                    a[0].clone()
                }
            };
            let gate = self.gate.clone();
            Box::pin(async move {
                let _permit = gate
                    .acquire()
                    .await
                    .map_err(|_| DirectoryError::new(tonic::Code::Cancelled, "gate closed"))?;
                match answer {
                    Answer::Policy(p) => Ok(Some(p)),
                    Answer::NoPolicy => Ok(None),
                    Answer::Fail(code) => Err(DirectoryError::new(code, "scripted failure")),
                }
            })
        }
    }

    fn subject(name: &str, uid: Option<&str>) -> Subject {
        Subject {
            actor: ActorIdentity {
                atespace: "team-a".into(),
                name: name.into(),
                uid: uid.map(str::to_owned),
            },
            template: None,
            kind: IdentityKind::Certificate,
        }
    }

    fn allow_api() -> proto::EgressPolicy {
        proto::EgressPolicy {
            metadata: None,
            rules: vec![proto::EgressRule {
                http: Some(proto::HttpRule {
                    hostnames: vec!["api.example.com".into()],
                    ports: None,
                    effects: None,
                }),
                ..Default::default()
            }],
        }
    }

    fn api_request() -> Query<'static> {
        Query {
            dst: "192.0.2.1:80".parse().unwrap(),
            traffic: Traffic::Http {
                authority: "api.example.com",
                method: "GET",
                path: "/",
            },
        }
    }

    async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(WAIT, f)
            .await
            .unwrap_or_else(|_| panic!("timed out: {what}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_lookups_make_one_rpc() {
        let client = FakeClient::new(vec![Answer::Policy(allow_api())], false);
        let source = Arc::new(AteapiPolicySource::new(client.clone(), DEFAULT_TTL, 100));
        let polled = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let mut fut = source.policy_for(&subject("web", Some("uid-1")));
            let (polled, notify) = (polled.clone(), notify.clone());
            let mut first = true;
            tasks.push(tokio::spawn(poll_fn(move |cx| {
                let r = fut.as_mut().poll(cx);
                if first {
                    first = false;
                    polled.fetch_add(1, Ordering::SeqCst);
                    notify.notify_one();
                }
                r
            })));
        }
        // Every lookup has started (and joined the flight) before the one RPC may answer.
        bounded("all lookups polled", async {
            while polled.load(Ordering::SeqCst) < 50 {
                notify.notified().await;
            }
        })
        .await;
        assert_eq!(client.calls(), 1, "one RPC for 50 concurrent lookups");
        client.gate.add_permits(Semaphore::MAX_PERMITS);
        let mut got = Vec::new();
        for t in tasks {
            let r = bounded("lookup", t).await.expect("task");
            got.push(r.expect("policy").expect("some policy"));
        }
        assert_eq!(client.calls(), 1);
        assert!(got.iter().all(|p| Arc::ptr_eq(p, &got[0])), "compiled once");
        let d = got[0].decide(&api_request());
        assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
        assert_eq!(source.fetches(), 1);
    }

    #[tokio::test]
    async fn no_policy_is_cached() {
        let client = FakeClient::new(vec![Answer::NoPolicy], true);
        let source = AteapiPolicySource::new(client.clone(), DEFAULT_TTL, 100);
        for _ in 0..3 {
            let r = bounded("lookup", source.policy_for(&subject("web", None))).await;
            assert!(matches!(r, Ok(None)), "{r:?}");
        }
        assert_eq!(client.calls(), 1);
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_are_unavailable() {
        let client = FakeClient::new(
            vec![
                Answer::Fail(tonic::Code::Unavailable),
                Answer::Fail(tonic::Code::DeadlineExceeded),
                Answer::Policy(allow_api()),
            ],
            true,
        );
        let source = AteapiPolicySource::new(client.clone(), DEFAULT_TTL, 100);
        for _ in 0..2 {
            let r = bounded("lookup", source.policy_for(&subject("web", None))).await;
            assert!(
                matches!(&r, Err(PolicyUnavailable(m)) if m.contains("scripted failure")),
                "{r:?}"
            );
        }
        let r = bounded("lookup", source.policy_for(&subject("web", None))).await;
        assert!(matches!(r, Ok(Some(_))), "{r:?}");
        let r = bounded("lookup", source.policy_for(&subject("web", None))).await;
        assert!(matches!(r, Ok(Some(_))), "{r:?}");
        assert_eq!(
            client.calls(),
            3,
            "two failures asked again, the success cached"
        );
        let status = source.status();
        assert_eq!(status["fetch_errors"], 2);
        assert!(
            status["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("team-a/web"))
        );
    }

    #[tokio::test]
    async fn actors_and_uids_are_separate_entries() {
        let client = FakeClient::new(vec![Answer::NoPolicy], true);
        let source = AteapiPolicySource::new(client.clone(), DEFAULT_TTL, 100);
        for s in [
            subject("web", Some("uid-1")),
            subject("web", Some("uid-1")),
            subject("web", Some("uid-2")),
            subject("db", Some("uid-1")),
        ] {
            bounded("lookup", source.policy_for(&s))
                .await
                .expect("answer");
        }
        assert_eq!(client.calls(), 3);
    }

    #[tokio::test]
    async fn an_invalid_policy_denies_everything_and_is_reported() {
        // tls_passthrough without ports: upstream requires them.
        let invalid = proto::EgressPolicy {
            metadata: None,
            rules: vec![
                allow_api().rules[0].clone(),
                proto::EgressRule {
                    tls_passthrough: Some(proto::TlsPassthroughRule {
                        hostnames: vec!["*".into()],
                        ports: None,
                    }),
                    ..Default::default()
                },
            ],
        };
        let client = FakeClient::new(vec![Answer::Policy(invalid)], true);
        let source = AteapiPolicySource::new(client.clone(), DEFAULT_TTL, 100);
        let p = bounded("lookup", source.policy_for(&subject("web", None)))
            .await
            .expect("answer")
            .expect("a deny-all policy");
        let d = p.decide(&api_request());
        assert_eq!(d.verdict, Verdict::Deny, "{d:?}");
        assert_eq!(d.rule, None, "{d:?}");
        bounded("lookup", source.policy_for(&subject("web", None)))
            .await
            .expect("answer");
        assert_eq!(
            client.calls(),
            1,
            "the verdict on an invalid policy is cached"
        );
        let status = source.status();
        assert_eq!(status["invalid_policies"], 1);
        assert!(
            status["last_invalid_policy"]
                .as_str()
                .is_some_and(|e| e.contains("rules[1].tls_passthrough.ports"))
        );
    }
}
