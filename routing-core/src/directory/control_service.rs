//! Serves any `ActorDirectory` as `ateapi.Control`, so Substrate clients (the upstream router
//! included) can be developed against the embedded static directory. Answers are in upstream
//! v0.4's shapes (DESIGN §9, see [`record_to_proto`]); requests of both shapes are accepted
//! (a v0.4 `ResumeActorRequest` has no `boot`, which reads as `false`).

use super::ActorDirectory;
use super::convert::record_to_proto;
use crate::actor_ref::ActorRef;
use crate::proto;
use crate::proto::control_server::{Control, ControlServer};

/// Largest page a client may ask for.
const MAX_PAGE_SIZE: i32 = 1000;

/// The `ateapi.Control` service over a directory.
pub struct ControlService<D> {
    directory: D,
}

impl<D: ActorDirectory> ControlService<D> {
    /// Wraps a directory; add the result to a tonic server with `into_server()`.
    pub fn new(directory: D) -> Self {
        Self { directory }
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
}
