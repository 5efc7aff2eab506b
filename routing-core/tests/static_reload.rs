//! The static directory follows its file: edits apply, broken edits keep the previous actors.
//! Tests wait on reload attempts (never on sleeps), every await bounded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use routing_core::directory::static_dir::{StaticDirectory, StaticDirectorySpec};
use routing_core::field_error::{FieldError, FieldErrors};
use routing_core::testing::within;
use routing_core::{ActorDirectory, ActorRef};
use runtime::reload::Reloader;

fn loader(path: PathBuf) -> routing_core::directory::static_dir::StaticLoader {
    Arc::new(move || {
        let fail = |m: String| FieldErrors(vec![FieldError::new(path.display().to_string(), m)]);
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
        let spec: StaticDirectorySpec =
            serde_saphyr::from_str(&text).map_err(|e| fail(e.without_snippet().to_string()))?;
        spec.validate("")
    })
}

fn write(path: &Path, text: &str) {
    // Write-then-rename, as editors and ConfigMap updates do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn endpoint_port(d: &StaticDirectory, a: &ActorRef) -> Option<u16> {
    within("directory get", d.get(a))
        .await
        .ok()
        .and_then(|r| r.worker)
        .and_then(|w| w.port)
}

/// Waits, reload attempt by reload attempt, until `done` holds (bounded).
async fn reloaded_until(reloader: &Reloader, what: &str, done: impl Fn() -> bool) {
    let mut attempts = reloader.attempts();
    within(what, async {
        while !done() {
            attempts.changed().await.expect("the reloader is alive");
        }
    })
    .await;
}

#[tokio::test]
async fn an_edit_changes_the_next_resolution_despite_the_route_cache() {
    use routing_core::extract::{ExtractorKind, Target};
    use routing_core::{
        Extractor, ResolveKind, Resolver, ResolverMetrics, ResolverSettings, Route,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("actors.yaml");
    write(
        &path,
        "actors:\n- {atespace: demo, name: one, endpoint: '127.0.0.1:1001'}\n",
    );
    let d = StaticDirectory::new(loader(path.clone())).unwrap();
    let _watch = d.watch(&path).unwrap();
    let settings = ResolverSettings {
        cache_ttl: Duration::from_secs(3600),
        ..ResolverSettings::default()
    };
    let r = Resolver::new(
        Arc::new(d.clone()),
        settings,
        Extractor::default(),
        ResolverMetrics::new(),
    );
    let t = Target {
        actor: ActorRef::parse("demo/one").unwrap(),
        port: 80,
        via: ExtractorKind::Header,
    };
    let reloader = d.reloader();
    let port = |r: Route| r.endpoint.port();
    assert_eq!(port(within("resolve", r.resolve(&t)).await.unwrap()), 1001);
    assert_eq!(
        within("resolve", r.resolve(&t)).await.unwrap().kind,
        ResolveKind::Cached
    );
    write(
        &path,
        "actors:\n- {atespace: demo, name: one, endpoint: '127.0.0.1:2002'}\n",
    );
    reloaded_until(&reloader, "the edit", || d.status().generation == 2).await;
    assert_eq!(
        port(within("resolve", r.resolve(&t)).await.unwrap()),
        2002,
        "the edit reached the resolver although the cached route had an hour left"
    );

    // Unrelated files in the same folder do not trigger reloads: after one, a change to the
    // watched file is the next (and only) reload attempt.
    let mut attempts = reloader.attempts();
    let before = *attempts.borrow_and_update();
    std::fs::write(dir.path().join("other.log"), "noise").unwrap();
    write(
        &path,
        "actors:\n- {atespace: demo, name: one, endpoint: '127.0.0.1:3003'}\n",
    );
    within("the reload after the sentinel edit", attempts.changed())
        .await
        .expect("the reloader is alive");
    assert_eq!(*attempts.borrow(), before + 1, "exactly one reload attempt");
    assert_eq!(d.status().generation, 3, "it loaded the sentinel edit");
    assert_eq!(port(within("resolve", r.resolve(&t)).await.unwrap()), 3003);
}

#[tokio::test]
async fn edits_apply_and_broken_edits_keep_the_old_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("actors.yaml");
    write(
        &path,
        "actors:\n- {atespace: demo, name: one, endpoint: '127.0.0.1:1001'}\n",
    );
    let d = StaticDirectory::new(loader(path.clone())).unwrap();
    let _watch = d.watch(&path).unwrap();
    let reloader = d.reloader();
    let one = ActorRef::parse("demo/one").unwrap();
    let two = ActorRef::parse("demo/two").unwrap();
    assert_eq!(endpoint_port(&d, &one).await, Some(1001));
    assert!(d.get(&two).await.is_err());

    write(
        &path,
        "actors:\n- {atespace: demo, name: one, endpoint: '127.0.0.1:2002'}\n- {atespace: demo, name: two, endpoint: '127.0.0.1:3003'}\n",
    );
    reloaded_until(&reloader, "the edit", || d.status().generation == 2).await;
    assert_eq!(
        endpoint_port(&d, &one).await,
        Some(2002),
        "the edit was applied"
    );
    assert_eq!(
        endpoint_port(&d, &two).await,
        Some(3003),
        "the edit was applied"
    );
    assert!(d.status().last_error.is_none());

    write(
        &path,
        "actors:\n- {atespace: demo, name: one, endpoint: '10.0.0.1'}\n",
    );
    reloaded_until(&reloader, "the broken edit to be reported", || {
        d.status().last_error.is_some()
    })
    .await;
    let err = d.status().last_error.expect("the broken edit is reported");
    assert!(
        err.contains(r#"actors[0].endpoint: invalid socket address "10.0.0.1""#),
        "{err}"
    );
    assert_eq!(
        endpoint_port(&d, &one).await,
        Some(2002),
        "previous directory kept"
    );
    assert_eq!(
        endpoint_port(&d, &two).await,
        Some(3003),
        "previous directory kept"
    );
    assert_eq!(d.status().generation, 2);
}
