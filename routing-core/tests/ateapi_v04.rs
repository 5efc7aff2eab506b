//! Upstream Substrate v0.4's control-plane shapes (DESIGN §9, issue 9 fault 17):
//! `WorkerAssignment.worker_pod_ips` (field 5, repeated: dual stack), the template only in
//! `Actor.actor_template` (field 4; fields 2 and 3 are gone) and no `boot` in
//! `ResumeActorRequest`. The wire checks use messages written here with v0.4's exact field
//! numbers, independent of actorgate's own .proto; the end-to-end ones run the client against
//! the fake control plane over real sockets.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use routing_core::directory::AddressFamily;
use routing_core::directory::ateapi::AteApiDirectory;
use routing_core::directory::convert::{record_from_proto, record_to_proto};
use routing_core::extract::{ExtractorKind, Target};
use routing_core::proto;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, Method, within};
use routing_core::{
    ActorDirectory, ActorRef, Extractor, Resolver, ResolverMetrics, ResolverSettings,
};

// --- v0.4 messages, written by hand with upstream's field numbers -----------------------------

#[derive(Clone, PartialEq, Message)]
struct V04ObjectRef {
    #[prost(string, tag = "1")]
    atespace: String,
    #[prost(string, tag = "2")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct V04ResourceMetadata {
    #[prost(string, tag = "1")]
    atespace: String,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, tag = "3")]
    uid: String,
}

#[derive(Clone, PartialEq, Message)]
struct V04WorkerAssignment {
    #[prost(string, tag = "1")]
    worker_namespace: String,
    #[prost(string, tag = "2")]
    worker_pool: String,
    #[prost(string, tag = "3")]
    worker_pod: String,
    #[prost(string, repeated, tag = "5")]
    worker_pod_ips: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct V04ActorStatus {
    #[prost(int32, tag = "1")]
    state: i32,
    #[prost(message, optional, tag = "2")]
    worker_assignment: Option<V04WorkerAssignment>,
}

/// v0.4's `Actor`: no fields 2 and 3.
#[derive(Clone, PartialEq, Message)]
struct V04Actor {
    #[prost(message, optional, tag = "1")]
    metadata: Option<V04ResourceMetadata>,
    #[prost(message, optional, tag = "4")]
    actor_template: Option<V04ObjectRef>,
    #[prost(message, optional, tag = "7")]
    status: Option<V04ActorStatus>,
}

/// v0.4's `ResumeActorRequest`: no `boot`.
#[derive(Clone, PartialEq, Message)]
struct V04ResumeActorRequest {
    #[prost(message, optional, tag = "1")]
    actor: Option<V04ObjectRef>,
}

/// What pre-v0.4 servers sent: one address in field 5, the template in fields 2 and 3.
#[derive(Clone, PartialEq, Message)]
struct LegacyWorkerAssignment {
    #[prost(string, tag = "5")]
    worker_pod_ip: String,
}

#[derive(Clone, PartialEq, Message)]
struct LegacyActorStatus {
    #[prost(int32, tag = "1")]
    state: i32,
    #[prost(message, optional, tag = "2")]
    worker_assignment: Option<LegacyWorkerAssignment>,
}

#[derive(Clone, PartialEq, Message)]
struct LegacyActor {
    #[prost(message, optional, tag = "1")]
    metadata: Option<V04ResourceMetadata>,
    #[prost(string, tag = "2")]
    actor_template_namespace: String,
    #[prost(string, tag = "3")]
    actor_template_name: String,
    #[prost(message, optional, tag = "7")]
    status: Option<LegacyActorStatus>,
}

fn v04_actor(ips: &[&str]) -> V04Actor {
    V04Actor {
        metadata: Some(V04ResourceMetadata {
            atespace: "ns".into(),
            name: "dual".into(),
            uid: "u-1".into(),
        }),
        actor_template: Some(V04ObjectRef {
            atespace: "templates".into(),
            name: "python".into(),
        }),
        status: Some(V04ActorStatus {
            state: ActorState::Running as i32,
            worker_assignment: Some(V04WorkerAssignment {
                worker_namespace: "workers".into(),
                worker_pool: "pool".into(),
                worker_pod: "worker-0".into(),
                worker_pod_ips: ips.iter().map(|s| (*s).to_owned()).collect(),
            }),
        }),
    }
}

/// Encodes `msg` with one schema and decodes it with actorgate's.
fn as_ours(msg: &impl Message) -> proto::Actor {
    proto::Actor::decode(msg.encode_to_vec().as_slice()).expect("actorgate decodes it")
}

fn chosen(a: proto::Actor, family: AddressFamily) -> String {
    let rec = record_from_proto(None, a, family).expect("valid record");
    rec.worker.expect("worker assignment").pod_ip
}

#[test]
fn dual_stack_addresses_are_chosen_by_family_in_either_order() {
    for ips in [["127.0.4.2", "::1"], ["::1", "127.0.4.2"]] {
        let a = as_ours(&v04_actor(&ips));
        assert_eq!(
            a.status
                .as_ref()
                .unwrap()
                .worker_assignment
                .as_ref()
                .unwrap()
                .worker_pod_ips,
            ips,
            "both addresses decoded, in order"
        );
        assert_eq!(
            chosen(a.clone(), AddressFamily::Ipv4),
            "127.0.4.2",
            "{ips:?}"
        );
        assert_eq!(chosen(a, AddressFamily::Ipv6), "::1", "{ips:?}");
    }
    // A single-stack worker: the other family is the fallback.
    assert_eq!(
        chosen(as_ours(&v04_actor(&["fd00::7"])), AddressFamily::Ipv4),
        "fd00::7"
    );
    assert_eq!(
        chosen(as_ours(&v04_actor(&["10.1.2.3"])), AddressFamily::Ipv6),
        "10.1.2.3"
    );
}

#[test]
fn the_template_comes_from_field_4_when_fields_2_and_3_are_absent() {
    let rec = record_from_proto(
        None,
        as_ours(&v04_actor(&["10.0.0.1"])),
        AddressFamily::Ipv4,
    )
    .unwrap();
    let t = rec.template.expect("template from actor_template");
    assert_eq!(
        (t.namespace.as_str(), t.name.as_str()),
        ("templates", "python")
    );
    assert_eq!(rec.uid, "u-1");
    assert_eq!(rec.state, ActorState::Running);
}

#[test]
fn pre_v04_servers_still_work() {
    let old = LegacyActor {
        metadata: Some(V04ResourceMetadata {
            atespace: "ns".into(),
            name: "old".into(),
            uid: "u-2".into(),
        }),
        actor_template_namespace: "templates".into(),
        actor_template_name: "node".into(),
        status: Some(LegacyActorStatus {
            state: ActorState::Running as i32,
            worker_assignment: Some(LegacyWorkerAssignment {
                worker_pod_ip: "10.0.0.9".into(),
            }),
        }),
    };
    let rec = record_from_proto(None, as_ours(&old), AddressFamily::Ipv6).unwrap();
    assert_eq!(rec.worker.unwrap().pod_ip, "10.0.0.9");
    let t = rec.template.expect("template from fields 2 and 3");
    assert_eq!(
        (t.namespace.as_str(), t.name.as_str()),
        ("templates", "node")
    );
}

#[test]
fn the_simulator_writes_v04_shapes() {
    let rec = record_from_proto(
        None,
        as_ours(&v04_actor(&["10.0.0.1"])),
        AddressFamily::Ipv4,
    )
    .unwrap();
    let bytes = record_to_proto(&rec).encode_to_vec();
    let v04 = V04Actor::decode(bytes.as_slice()).unwrap();
    assert_eq!(v04, v04_actor(&["10.0.0.1"]), "what a v0.4 client reads");
    assert!(v04.actor_template.is_some(), "field 4 is sent");
    // Fields 2 and 3 are sent too (pre-v0.4 clients read only them) and name the same template.
    let legacy = LegacyActor::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        (
            legacy.actor_template_namespace.as_str(),
            legacy.actor_template_name.as_str()
        ),
        ("templates", "python"),
        "fields 2 and 3 agree with field 4"
    );
}

#[test]
fn resume_requests_are_v04_requests() {
    let actor = proto::ObjectRef {
        atespace: "ns".into(),
        name: "a".into(),
    };
    let v04 = V04ResumeActorRequest {
        actor: Some(V04ObjectRef {
            atespace: "ns".into(),
            name: "a".into(),
        }),
    };
    // boot=false (the default) is not encoded at all: byte-for-byte v0.4's request.
    let default = proto::ResumeActorRequest {
        actor: Some(actor.clone()),
        boot: false,
    };
    assert_eq!(default.encode_to_vec(), v04.encode_to_vec());
    // boot=true reaches a v0.4 server as an unknown field, which it skips.
    let boot = proto::ResumeActorRequest {
        actor: Some(actor),
        boot: true,
    };
    assert_eq!(
        V04ResumeActorRequest::decode(boot.encode_to_vec().as_slice()).unwrap(),
        v04
    );
}

// --- over real sockets ---------------------------------------------------------------------

fn resolver(dir: AteApiDirectory) -> Resolver {
    Resolver::new(
        Arc::new(dir),
        ResolverSettings {
            budget: Duration::from_secs(2),
            ..ResolverSettings::default()
        },
        Extractor::default(),
        ResolverMetrics::new(),
    )
}

async fn endpoint(r: &Resolver, actor: &str) -> std::net::SocketAddr {
    let t = Target {
        actor: ActorRef::parse(actor).unwrap(),
        port: 8080,
        via: ExtractorKind::Header,
    };
    within("resolve", r.resolve(&t))
        .await
        .unwrap_or_else(|e| panic!("resolve {actor}: {}", e.client_message()))
        .endpoint
}

#[tokio::test]
async fn the_client_routes_dual_stack_workers_by_family() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/v4first", ActorState::Running, "x", Duration::ZERO);
    fake.set_pod_ips("ns/v4first", &["127.0.4.2", "::1"]);
    fake.add_actor("ns/v6first", ActorState::Suspended, "x", Duration::ZERO);
    fake.set_pod_ips("ns/v6first", &["::1", "127.0.4.2"]);

    let v4 = resolver(AteApiDirectory::new(&fake.plaintext_settings()).unwrap());
    assert_eq!(
        endpoint(&v4, "ns/v4first").await,
        "127.0.4.2:8080".parse().unwrap()
    );
    // Through ResumeActor too (the actor is suspended).
    assert_eq!(
        endpoint(&v4, "ns/v6first").await,
        "127.0.4.2:8080".parse().unwrap()
    );
    assert_eq!(fake.calls(Method::ResumeActor, "ns/v6first"), 1);
    assert_eq!(fake.last_resume_boot(), Some(false), "v0.4 shape: no boot");

    let v6 = resolver(
        AteApiDirectory::new(&fake.plaintext_settings())
            .unwrap()
            .with_worker_address_family(AddressFamily::Ipv6),
    );
    assert_eq!(
        endpoint(&v6, "ns/v4first").await,
        "[::1]:8080".parse().unwrap()
    );
    assert_eq!(
        endpoint(&v6, "ns/v6first").await,
        "[::1]:8080".parse().unwrap()
    );
}

#[tokio::test]
async fn an_unreachable_control_plane_is_explained() {
    // A port with nothing listening: connection refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut s = FakeControlPlane::start().await.plaintext_settings();
    s.address = addr.to_string();
    let dir = AteApiDirectory::new(&s).unwrap();
    let status = dir.connection().expect("ateapi reports its connection");
    assert!(!status.ever_connected && status.last_connect_error.is_none());

    let err = within("health", dir.health()).await.unwrap_err();
    assert_eq!(err.code, tonic::Code::Unavailable);
    assert!(
        err.message.starts_with("connection refused"),
        "{}",
        err.message
    );
    let status = dir.connection().unwrap();
    assert!(!status.ever_connected);
    let e = status.last_connect_error.expect("last connect error");
    assert!(e.starts_with("connection refused ("), "{e}");
    assert!(status.last_connect_error_at.is_some());

    // A name that does not resolve.
    s.address = "no-such-host.invalid:8443".into();
    let dir = AteApiDirectory::new(&s).unwrap();
    let err = within("health", dir.health()).await.unwrap_err();
    assert!(
        err.message.starts_with("DNS lookup failed"),
        "{}",
        err.message
    );

    // Once the server answers, the status says so.
    let fake = FakeControlPlane::start().await;
    let dir = AteApiDirectory::new(&fake.plaintext_settings()).unwrap();
    within("health", dir.health()).await.unwrap();
    let status = dir.connection().unwrap();
    assert!(status.ever_connected && status.last_answer_at.is_some());
    assert_eq!(status.address, fake.addr.to_string());
}
