//! Conversions between `ateapi` protobuf messages and the directory's record types.

use super::{
    ActorPage, ActorRecord, AddressFamily, DirectoryError, ResumeOutcome, TemplateRef, Worker,
};
use crate::actor_ref::ActorRef;
use crate::proto;

/// The request-side `ObjectRef` for an actor.
pub fn object_ref(actor: &ActorRef) -> proto::ObjectRef {
    proto::ObjectRef {
        atespace: actor.atespace().to_owned(),
        name: actor.name().to_owned(),
    }
}

/// Reads an `Actor` message. `asked` is the actor the call was about: it fills a missing
/// metadata name, and an answer about a different actor is an internal error. `family` picks
/// the worker address among `worker_pod_ips` (DESIGN §9). The template comes from
/// `actor_template` (field 4; all v0.4 servers send only that), else from the pre-v0.4 fields
/// 2 and 3.
pub fn record_from_proto(
    asked: Option<&ActorRef>,
    a: proto::Actor,
    family: AddressFamily,
) -> Result<ActorRecord, DirectoryError> {
    let meta = a.metadata.unwrap_or_default();
    let actor = if meta.atespace.is_empty() && meta.name.is_empty() {
        asked.cloned().ok_or_else(|| {
            DirectoryError::new(tonic::Code::Internal, "actor without metadata in response")
        })?
    } else {
        let r = ActorRef::new(&meta.atespace, &meta.name).map_err(|e| {
            DirectoryError::new(
                tonic::Code::Internal,
                format!("bad actor name in response: {e}"),
            )
        })?;
        if let Some(asked) = asked
            && *asked != r
        {
            return Err(DirectoryError::new(
                tonic::Code::Internal,
                format!("asked for actor {asked}, control plane answered about {r}"),
            ));
        }
        r
    };
    let template = match a.actor_template {
        Some(t) if !t.name.is_empty() => Some(TemplateRef {
            namespace: t.atespace,
            name: t.name,
        }),
        _ if !a.actor_template_name.is_empty() => Some(TemplateRef {
            namespace: a.actor_template_namespace,
            name: a.actor_template_name,
        }),
        _ => None,
    };
    let status = a.status.unwrap_or_default();
    let state = proto::ActorState::try_from(status.state).unwrap_or(proto::ActorState::Unspecified);
    let worker = status.worker_assignment.map(|w| Worker {
        pod_ip: family
            .choose(&w.worker_pod_ips)
            .unwrap_or_default()
            .to_owned(),
        pod: w.worker_pod,
        namespace: w.worker_namespace,
        pool: w.worker_pool,
        port: None,
    });
    Ok(ActorRecord {
        actor,
        uid: meta.uid,
        template,
        state,
        worker,
    })
}

/// Writes an `Actor` message (used when serving a directory as `ateapi.Control`) that both
/// v0.4 and older clients read: the template as `actor_template` (field 4, what v0.4 reads) and
/// also in the pre-v0.4 fields 2 and 3 (a v0.4 client skips them as unknown fields), the worker
/// address in `worker_pod_ips`.
pub fn record_to_proto(r: &ActorRecord) -> proto::Actor {
    proto::Actor {
        metadata: Some(proto::ResourceMetadata {
            atespace: r.actor.atespace().to_owned(),
            name: r.actor.name().to_owned(),
            uid: r.uid.clone(),
            version: 1,
            create_time: None,
            update_time: None,
        }),
        actor_template_namespace: r
            .template
            .as_ref()
            .map(|t| t.namespace.clone())
            .unwrap_or_default(),
        actor_template_name: r
            .template
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default(),
        actor_template: r.template.as_ref().map(|t| proto::ObjectRef {
            atespace: t.namespace.clone(),
            name: t.name.clone(),
        }),
        status: Some(proto::ActorStatus {
            state: r.state as i32,
            worker_assignment: r.worker.as_ref().map(|w| proto::WorkerAssignment {
                worker_namespace: w.namespace.clone(),
                worker_pool: w.pool.clone(),
                worker_pod: w.pod.clone(),
                worker_pod_uid: String::new(),
                worker_pod_ips: if w.pod_ip.is_empty() {
                    Vec::new()
                } else {
                    vec![w.pod_ip.clone()]
                },
                worker: if w.pod.is_empty() {
                    None
                } else {
                    Some(proto::ObjectRef {
                        atespace: w.namespace.clone(),
                        name: w.pod.clone(),
                    })
                },
            }),
        }),
    }
}

/// Reads a `ResumeActorResponse` (`family` as in [`record_from_proto`]).
pub fn resume_from_proto(
    asked: &ActorRef,
    r: proto::ResumeActorResponse,
    family: AddressFamily,
) -> Result<ResumeOutcome, DirectoryError> {
    let actor = r.actor.ok_or_else(|| {
        DirectoryError::new(tonic::Code::Internal, "ResumeActor response without actor")
    })?;
    Ok(ResumeOutcome {
        record: record_from_proto(Some(asked), actor, family)?,
        resumed: r.resumed,
    })
}

/// Reads a `ListActorsResponse` (`family` as in [`record_from_proto`]).
pub fn page_from_proto(
    r: proto::ListActorsResponse,
    family: AddressFamily,
) -> Result<ActorPage, DirectoryError> {
    Ok(ActorPage {
        actors: r
            .actors
            .into_iter()
            .map(|a| record_from_proto(None, a, family))
            .collect::<Result<_, _>>()?,
        next_page_token: r.next_page_token,
    })
}
