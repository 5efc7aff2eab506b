//! The static directory follows its file: edits apply, broken edits keep the previous actors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use routing_core::directory::static_dir::{StaticDirectory, StaticDirectorySpec};
use routing_core::{ActorDirectory, ActorRef};

fn loader(path: PathBuf) -> routing_core::directory::static_dir::StaticLoader {
    Arc::new(move || {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec: StaticDirectorySpec = serde_saphyr::from_str(&text)
            .map_err(|e| format!("{}: {}", path.display(), e.without_snippet()))?;
        spec.validate("")
            .map_err(|e| format!("{}: {e}", path.display()))
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
