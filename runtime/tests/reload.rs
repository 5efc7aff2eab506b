//! The file-watch/reload helper on a real file system: good edits apply, bad edits keep the
//! previous value and report why, a later good edit clears the error, and a Kubernetes-style
//! `..data` symlink swap is seen.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::BOUND;
use runtime::reload::{ReloadMetrics, Reloader};

const DEBOUNCE: Duration = Duration::from_millis(50);

fn parse(path: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces `path` the way editors save: write a temporary file, then rename it over.
fn save(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the file");
}

/// A reloader of a number from `file`, applied to the returned cell.
fn number_reloader(file: PathBuf) -> (Reloader, Arc<AtomicU32>) {
    let value = Arc::new(AtomicU32::new(parse(&file).expect("initial value")));
    let applied = value.clone();
    let path = file.clone();
    let reloader = Reloader::new(
        "number",
        [file],
        move || parse(&path),
        move |v| applied.store(v, Ordering::Release),
    );
    (reloader, value)
}

/// Waits (reload by reload, never by sleeping) until `done` holds.
async fn wait_until(reloader: &Reloader, what: &str, done: impl Fn() -> bool) {
    let mut attempts = reloader.attempts();
    let waited = tokio::time::timeout(BOUND, async {
        while !done() {
            attempts.changed().await.expect("reloader dropped");
        }
    })
    .await;
    if waited.is_err() {
        panic!(
            "timed out waiting for {what}; status {:?}",
            reloader.status()
        );
    }
}

#[tokio::test]
async fn good_edits_apply_and_bad_ones_keep_the_previous_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("number");
    std::fs::write(&file, "1").expect("write");
    let (reloader, value) = number_reloader(file.clone());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ReloadMetrics::register(&mut registry);
    let reloader = reloader.with_metrics(&metrics);
    let _watch = reloader.watch(DEBOUNCE).expect("watch");

    save(&file, "2");
    wait_until(&reloader, "the good edit", || {
        value.load(Ordering::Acquire) == 2
    })
    .await;
    let status = reloader.status();
    assert_eq!(status.last_error, None);
    assert!(
        status.reloads >= 1 && status.last_success.is_some(),
        "{status:?}"
    );

    save(&file, "two");
    wait_until(&reloader, "the bad edit to be reported", || {
        reloader.status().last_error.is_some()
    })
    .await;
    assert_eq!(value.load(Ordering::Acquire), 2, "the previous value stays");
    let status = reloader.status();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("invalid digit")),
        "{status:?}"
    );
    assert!(
        status.failures >= 1 && status.last_error_at.is_some(),
        "{status:?}"
    );

    // Edited in place this time (truncate + write).
    std::fs::write(&file, "3").expect("write");
    wait_until(&reloader, "the later good edit", || {
        value.load(Ordering::Acquire) == 3 && reloader.status().last_error.is_none()
    })
    .await;
    let status = reloader.status();
    assert_eq!(metrics.get("number", "success"), status.reloads);
    assert_eq!(metrics.get("number", "failure"), status.failures);
}

#[tokio::test]
async fn a_kubernetes_data_symlink_swap_is_seen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // The layout kubelet makes for a mounted Secret: file -> ..data/file, ..data -> ..<version>.
    std::fs::create_dir(d.join("..v1")).expect("mkdir");
    std::fs::write(d.join("..v1/number"), "10").expect("write");
    std::os::unix::fs::symlink("..v1", d.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/number", d.join("number")).expect("symlink");
    let (reloader, value) = number_reloader(d.join("number"));
    assert_eq!(value.load(Ordering::Acquire), 10);
    let _watch = reloader.watch(DEBOUNCE).expect("watch");

    std::fs::create_dir(d.join("..v2")).expect("mkdir");
    std::fs::write(d.join("..v2/number"), "20").expect("write");
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).expect("symlink");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap ..data");
    wait_until(&reloader, "the swapped value", || {
        value.load(Ordering::Acquire) == 20
    })
    .await;
    assert_eq!(reloader.status().last_error, None);
}

#[test]
fn a_manual_reload_reports_like_a_watched_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("number");
    std::fs::write(&file, "1").expect("write");
    let (reloader, value) = number_reloader(file.clone());
    std::fs::write(&file, "x").expect("write");
    let err = reloader.reload().expect_err("bad file");
    assert!(err.contains("invalid digit"), "{err}");
    assert_eq!(value.load(Ordering::Acquire), 1);
    std::fs::write(&file, "5").expect("write");
    reloader.reload().expect("good file");
    let status = reloader.status();
    assert_eq!((status.reloads, status.failures), (1, 1));
    assert_eq!(status.last_error, None);
    assert_eq!(value.load(Ordering::Acquire), 5);
    assert!(
        Reloader::new("outside", [file], || Ok::<_, String>(()), |_| ())
            .watch(DEBOUNCE)
            .is_err(),
        "a watch outside a runtime is refused"
    );
}
