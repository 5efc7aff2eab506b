//! Serves any `ActorDirectory` as `ateapi.Control`, so Substrate clients (the upstream router
//! included) can be developed against the embedded static directory. Answers are in upstream
//! v0.4's shapes (DESIGN §9, see [`record_to_proto`]); requests of both shapes are accepted
//! (a v0.4 `ResumeActorRequest` has no `boot`, which reads as `false`).
//!
//! `GetActorEgressPolicy` is answered through an [`EgressPolicyProvider`] set with
//! [`ControlService::with_egress_policy`] (actorgate's egress PEP serves its policy files this
//! way); without one, every actor has no policy (NOT_FOUND). `MintActorJWT` is served by the
//! embedded signer set with [`ControlService::with_actor_tokens`] (the `signer` config
//! section), in upstream's token form (DESIGN §6); without one it is UNIMPLEMENTED.

use std::sync::Arc;

use super::convert::record_to_proto;
use super::{ActorDirectory, ActorRecord};
use crate::actor_ref::ActorRef;
use crate::proto;
use crate::proto::control_server::{Control, ControlServer};

/// Largest page a client may ask for.
const MAX_PAGE_SIZE: i32 = 1000;
/// `MintActorJWT` lifetimes accepted, seconds (upstream's `ActorJWTSource` bounds, DESIGN §9);
/// 0 asks for the longest.
const TOKEN_LIFETIME_SECS: std::ops::RangeInclusive<i64> = 300..=3600;
/// Most audiences one token may name.
const MAX_AUDIENCES: usize = 16;

/// Where the simulator's `GetActorEgressPolicy` answers come from (DESIGN §7.2 "Sources": the
/// `files` policies, reduced to what upstream's `EgressPolicy` can express).
pub trait EgressPolicyProvider: Send + Sync + 'static {
    /// The egress policy of actor `atespace/name` in upstream's shape, or `None` when it has
    /// none (the simulator then answers NOT_FOUND, which upstream reads as "deny all").
    fn egress_policy(&self, atespace: &str, name: &str) -> Option<proto::EgressPolicy>;

    /// The same, given the directory's record of the actor (its template, for policies
    /// selected by template). The simulator calls this one; the default ignores the template.
    fn egress_policy_for(&self, record: &ActorRecord) -> Option<proto::EgressPolicy> {
        self.egress_policy(record.actor.atespace(), record.actor.name())
    }
}

/// The `ateapi.Control` service over a directory.
pub struct ControlService<D> {
    directory: D,
    egress: Option<Arc<dyn EgressPolicyProvider>>,
    tokens: Option<Arc<identity::Signer>>,
}

impl<D: ActorDirectory> ControlService<D> {
    /// Wraps a directory; add the result to a tonic server with `into_server()`.
    pub fn new(directory: D) -> Self {
        Self {
            directory,
            egress: None,
            tokens: None,
        }
    }

    /// Serves `MintActorJWT` with `signer`: tokens for the directory's actors, with the
    /// audiences and lifetime (300 to 3600 s; 0: 3600) asked for.
    pub fn with_actor_tokens(mut self, signer: Arc<identity::Signer>) -> Self {
        self.tokens = Some(signer);
        self
    }

    /// Serves `GetActorEgressPolicy` from `provider` for the directory's actors (an actor the
    /// directory does not know is NOT_FOUND, as is an actor the provider has no policy for).
    pub fn with_egress_policy(mut self, provider: Arc<dyn EgressPolicyProvider>) -> Self {
        self.egress = Some(provider);
        self
    }

    /// The tonic service for this directory.
    pub fn into_server(self) -> ControlServer<Self> {
        ControlServer::new(self)
    }
}

fn actor_arg(r: Option<proto::ObjectRef>) -> Result<ActorRef, tonic::Status> {
    let r = r.ok_or_else(|| tonic::Status::invalid_argument("actor is required"))?;
    ActorRef::new(&r.atespace, &r.name)
        .map_err(|e| tonic::Status::invalid_argument(format!("invalid actor reference: {e}")))
}

#[tonic::async_trait]
impl<D: ActorDirectory> Control for ControlService<D> {
    async fn get_actor(
        &self,
        request: tonic::Request<proto::GetActorRequest>,
    ) -> Result<tonic::Response<proto::Actor>, tonic::Status> {
        let actor = actor_arg(request.into_inner().actor)?;
        let rec = self.directory.get(&actor).await?;
        Ok(tonic::Response::new(record_to_proto(&rec)))
    }

    async fn resume_actor(
        &self,
        request: tonic::Request<proto::ResumeActorRequest>,
    ) -> Result<tonic::Response<proto::ResumeActorResponse>, tonic::Status> {
        let req = request.into_inner();
        let actor = actor_arg(req.actor)?;
        let out = self.directory.resume(&actor, req.boot).await?;
        Ok(tonic::Response::new(proto::ResumeActorResponse {
            actor: Some(record_to_proto(&out.record)),
            resumed: out.resumed,
        }))
    }

    async fn list_actors(
        &self,
        request: tonic::Request<proto::ListActorsRequest>,
    ) -> Result<tonic::Response<proto::ListActorsResponse>, tonic::Status> {
        let req = request.into_inner();
        if req.page_size < 0 {
            return Err(tonic::Status::invalid_argument(
                "page_size must not be negative",
            ));
        }
        let page = self
            .directory
            .list(
                &req.atespace,
                req.page_size.min(MAX_PAGE_SIZE),
                &req.page_token,
            )
            .await?;
        Ok(tonic::Response::new(proto::ListActorsResponse {
            actors: page.actors.iter().map(record_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_actor_egress_policy(
        &self,
        request: tonic::Request<proto::GetActorEgressPolicyRequest>,
    ) -> Result<tonic::Response<proto::EgressPolicy>, tonic::Status> {
        let actor = actor_arg(request.into_inner().actor)?;
        let Some(provider) = &self.egress else {
            return Err(tonic::Status::not_found(format!(
                "actor {actor} has no egress policy"
            )));
        };
        let rec = self.directory.get(&actor).await?;
        match provider.egress_policy_for(&rec) {
            Some(policy) => Ok(tonic::Response::new(policy)),
            None => Err(tonic::Status::not_found(format!(
                "actor {actor} has no egress policy"
            ))),
        }
    }

    async fn mint_actor_jwt(
        &self,
        request: tonic::Request<proto::MintActorJwtRequest>,
    ) -> Result<tonic::Response<proto::MintActorJwtResponse>, tonic::Status> {
        let Some(signer) = &self.tokens else {
            return Err(tonic::Status::unimplemented(
                "MintActorJWT needs the simulator's signer (the signer config section)",
            ));
        };
        let req = request.into_inner();
        let actor = actor_arg(req.actor)?;
        if req.audience.is_empty() || req.audience.len() > MAX_AUDIENCES {
            return Err(tonic::Status::invalid_argument(format!(
                "audience: name 1 to {MAX_AUDIENCES} audiences"
            )));
        }
        if req
            .audience
            .iter()
            .any(|a| a.is_empty() || a.len() > 256 || a.chars().any(char::is_control))
        {
            return Err(tonic::Status::invalid_argument(
                "audience: each must be 1 to 256 printable characters",
            ));
        }
        let secs = match req.expiration_seconds {
            0 => *TOKEN_LIFETIME_SECS.end(),
            s if TOKEN_LIFETIME_SECS.contains(&s) => s,
            s => {
                return Err(tonic::Status::invalid_argument(format!(
                    "expiration_seconds: {s} is out of range (300 to 3600)"
                )));
            }
        };
        let rec = self.directory.get(&actor).await?;
        if !req.actor_uid.is_empty() && req.actor_uid != rec.uid {
            return Err(tonic::Status::failed_precondition(format!(
                "actor {actor} has another uid"
            )));
        }
        let identity = identity::ActorIdentity {
            atespace: actor.atespace().to_owned(),
            name: actor.name().to_owned(),
            uid: (!rec.uid.is_empty()).then(|| rec.uid.clone()),
        };
        let lifetime = std::time::Duration::from_secs(secs.unsigned_abs());
        let (jwt, exp) = signer
            .mint_actor_token(&identity, req.audience, lifetime)
            .map_err(|e| tonic::Status::internal(format!("signing failed: {e}")))?;
        Ok(tonic::Response::new(proto::MintActorJwtResponse {
            actor_jwt: jwt,
            expires_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(exp).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::static_dir::{StaticActorSpec, StaticDirectory, StaticDirectorySpec};
    use super::*;

    /// Answers for `team-a/web` only, naming the template it was asked with.
    struct Provider;

    impl EgressPolicyProvider for Provider {
        fn egress_policy(&self, atespace: &str, name: &str) -> Option<proto::EgressPolicy> {
            (atespace == "team-a" && name == "web").then(|| proto::EgressPolicy {
                metadata: Some(proto::ResourceMetadata {
                    atespace: atespace.into(),
                    name: "default".into(),
                    ..Default::default()
                }),
                rules: Vec::new(),
            })
        }

        fn egress_policy_for(&self, record: &ActorRecord) -> Option<proto::EgressPolicy> {
            let mut p = self.egress_policy(record.actor.atespace(), record.actor.name())?;
            if let (Some(m), Some(t)) = (p.metadata.as_mut(), &record.template) {
                m.uid = format!("{}/{}", t.namespace, t.name);
            }
            Some(p)
        }
    }

    fn directory() -> StaticDirectory {
        let actor = |name: &str| StaticActorSpec {
            atespace: "team-a".into(),
            name: name.into(),
            uid: None,
            template: Some("templates/agent".into()),
            state: Default::default(),
            endpoint: "127.0.0.1:8080".into(),
        };
        let spec = StaticDirectorySpec {
            actors: vec![actor("web"), actor("db")],
            ..Default::default()
        };
        StaticDirectory::from_spec(spec.validate("directory").expect("valid spec"))
    }

    fn ask(ns: &str, name: &str) -> tonic::Request<proto::GetActorEgressPolicyRequest> {
        tonic::Request::new(proto::GetActorEgressPolicyRequest {
            actor: Some(proto::ObjectRef {
                atespace: ns.into(),
                name: name.into(),
            }),
        })
    }

    #[tokio::test]
    async fn egress_policy_comes_from_the_provider() {
        let svc = ControlService::new(directory()).with_egress_policy(Arc::new(Provider));
        let p = svc
            .get_actor_egress_policy(ask("team-a", "web"))
            .await
            .expect("policy")
            .into_inner();
        let meta = p.metadata.expect("metadata");
        assert_eq!(meta.atespace, "team-a");
        assert_eq!(
            meta.uid, "templates/agent",
            "the record (template) reaches the provider"
        );
        // Known actor without a policy, unknown actor: NOT_FOUND.
        for (ns, name) in [("team-a", "db"), ("team-a", "ghost")] {
            let e = svc
                .get_actor_egress_policy(ask(ns, name))
                .await
                .expect_err("no policy");
            assert_eq!(e.code(), tonic::Code::NotFound, "{ns}/{name}: {e:?}");
        }
        let e = svc
            .get_actor_egress_policy(tonic::Request::new(proto::GetActorEgressPolicyRequest {
                actor: None,
            }))
            .await
            .expect_err("no actor");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn without_a_provider_every_actor_has_no_policy_and_jwt_is_unimplemented() {
        let svc = ControlService::new(directory());
        let e = svc
            .get_actor_egress_policy(ask("team-a", "web"))
            .await
            .expect_err("no provider");
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = svc
            .mint_actor_jwt(tonic::Request::new(proto::MintActorJwtRequest::default()))
            .await
            .expect_err("unimplemented");
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    }
}
