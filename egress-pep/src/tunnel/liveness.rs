//! Actor liveness (DESIGN §7.1): the actor must be RUNNING per `GetActor`, with the UID the
//! identity carries when it carries one. Unlike upstream (one uncached `GetActor` per CONNECT),
//! answers are cached briefly per actor and concurrent lookups for one actor share one call;
//! NOT_FOUND is cached too, failures never.

use std::sync::Arc;
use std::time::Duration;

use identity::ActorIdentity;
use routing_core::ActorRef;
use routing_core::directory::{ActorDirectory, DirectoryError, TemplateRef};
use routing_core::proto::ActorState;

use crate::decision::Reason;

/// Default time an answer is reused.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);
/// Default most actors cached.
pub const DEFAULT_CAPACITY: u64 = 100_000;

/// What `GetActor` said about an actor.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Found {
        uid: String,
        template: Option<TemplateRef>,
        state: ActorState,
    },
    NotFound,
}

/// A live actor: its directory UID and template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// The directory's UID.
    pub uid: String,
    /// The template, when known.
    pub template: Option<TemplateRef>,
}

/// The cached liveness check.
pub struct Liveness {
    directory: Arc<dyn ActorDirectory>,
    cache: moka::future::Cache<(String, String), Answer>,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("directory", &self.directory.kind())
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Liveness {
    /// Checks against `directory`, reusing an answer for `ttl` (at most `capacity` actors).
    pub fn new(directory: Arc<dyn ActorDirectory>, ttl: Duration, capacity: u64) -> Self {
        Self {
            directory,
            cache: moka::future::Cache::builder()
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .max_capacity(capacity)
                .build(),
        }
    }

    /// Whether `actor` may open tunnels: `Ok` with its UID and template when RUNNING (and its
    /// UID equals the identity's, when that has one); otherwise the refusal reason
    /// (`actor_not_found`, `actor_not_running`: 403; `control_plane_unavailable`: 503) and a
    /// detail for the log.
    pub async fn check(&self, actor: &ActorIdentity) -> Result<Live, (Reason, String)> {
        let r = ActorRef::new(&actor.atespace, &actor.name)
            .map_err(|e| (Reason::IdentityInvalid, e.to_string()))?;
        let key = (actor.atespace.clone(), actor.name.clone());
        let directory = self.directory.clone();
        let answer = self
            .cache
            .try_get_with(key, async move {
                match directory.get(&r).await {
                    Ok(rec) => Ok(Answer::Found {
                        uid: rec.uid,
                        template: rec.template,
                        state: rec.state,
                    }),
                    Err(e) if e.code == tonic::Code::NotFound => Ok(Answer::NotFound),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e: Arc<DirectoryError>| {
                (
                    Reason::ControlPlaneUnavailable,
                    format!("GetActor {actor}: {e}"),
                )
            })?;
        match answer {
            Answer::NotFound => Err((Reason::ActorNotFound, format!("actor {actor} not found"))),
            Answer::Found { state, .. } if state != ActorState::Running => Err((
                Reason::ActorNotRunning,
                format!("actor {actor} is {}", state.as_str_name()),
            )),
            Answer::Found { uid, .. } if actor.uid.as_ref().is_some_and(|u| *u != uid) => Err((
                Reason::ActorNotRunning,
                format!("actor {actor}: the credential's UID is not the directory's ({uid})"),
            )),
            Answer::Found { uid, template, .. } => Ok(Live { uid, template }),
        }
    }

    /// Actors cached now (approximate).
    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}
