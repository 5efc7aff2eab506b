//! The static directory follows its file: edits apply, broken edits keep the previous actors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use routing_core::directory::static_dir::{StaticDirectory, StaticDirectorySpec};
use routing_core::field_error::{FieldError, FieldErrors};
use routing_core::{ActorDirectory, ActorRef};

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
    d.get(a)
        .await
        .ok()
        .and_then(|r| r.worker)
        .and_then(|w| w.port)
}

#[tokio::test]
async fn an_edit_changes_the_next_resolution_despite_the_route_cache() {
    use routing_core::extract::{ExtractorKind, Target};
    use routing_core::{Extractor, ResolveKind, Resolver, ResolverMetrics, ResolverSettings};
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
    assert_eq!(r.resolve(&t).await.unwrap().endpoint.port(), 1001);
    assert_eq!(r.resolve(&t).await.unwrap().kind, ResolveKind::Cached);
    write(
        &path,
        "actors:\n- {atespace: demo, name: one, endpoint: '127.0.0.1:2002'}\n",
    );
    let mut port = 0;
    for _ in 0..300 {
        port = r.resolve(&t).await.unwrap().endpoint.port();
        if port == 2002 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        port, 2002,
        "the edit reached the resolver although the cached route had an hour left"
    );
    // Unrelated files in the same folder do not trigger reloads.
    let generation = d.status().generation;
    std::fs::write(dir.path().join("other.log"), "noise").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.status().generation, generation);
    assert!(d.status().last_reload < std::time::SystemTime::now() - Duration::from_millis(250));
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
    let one = ActorRef::parse("demo/one").unwrap();
    let two = ActorRef::parse("demo/two").unwrap();
    assert_eq!(endpoint_port(&d, &one).await, Some(1001));
    assert!(d.get(&two).await.is_err());

    write(
        &path,
        "actors:\n- {atespace: demo, name: one, endpoint: '127.0.0.1:2002'}\n- {atespace: demo, name: two, endpoint: '127.0.0.1:3003'}\n",
    );
    let mut ok = false;
    for _ in 0..300 {
        if endpoint_port(&d, &one).await == Some(2002)
            && endpoint_port(&d, &two).await == Some(3003)
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "the edit was applied");
    assert_eq!(d.status().generation, 2);
    assert!(d.status().last_error.is_none());

    write(
        &path,
        "actors:\n- {atespace: demo, name: one, endpoint: '10.0.0.1'}\n",
    );
    let mut err = None;
    for _ in 0..300 {
        err = d.status().last_error;
        if err.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = err.expect("the broken edit is reported");
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
