//! `/readyz` hysteresis (issue 9, fault 14): the real binary against the scriptable fake
//! ate-api-server, whose `ListActors` is the readiness probe. One slow or failed probe leaves
//! the gateway ready; `failure_threshold` failures in a row make it unready; it is ready again
//! only after `success_threshold` successes in a row; draining flips it at once. Every wait polls
//! `/readyz` and the fake's call counters against a deadline.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use routing_core::testing::{FakeControlPlane, Method, Step};

const LIST: Method = Method::ListActors;
const DEADLINE: Duration = Duration::from_secs(20);
/// Pause between two polls (pacing only: every wait ends on an observed event).
const POLL: Duration = Duration::from_millis(5);

fn unavailable() -> Step {
    Step::Fail(tonic::Code::Unavailable, "scripted outage".into())
}

/// `ListActors` probes the fake has seen (counted when a probe starts).
fn probes(fake: &FakeControlPlane) -> usize {
    fake.calls(LIST, "")
}

async fn readyz(gw: &Gateway) -> (u16, String) {
    get(gw.admin, "/readyz")
        .await
        .unwrap_or_else(|e| panic!("/readyz: {e}\n{}", gw.log_text()))
}

/// Polls `/readyz` until the fake has seen `until` probes, asserting every answer is 200.
async fn stays_ready(gw: &Gateway, fake: &FakeControlPlane, until: usize, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = readyz(gw).await;
        assert_eq!(
            status,
            200,
            "{what}: /readyz answered {status} {body:?} after {} probes\n{}",
            probes(fake),
            gw.log_text()
        );
        if probes(fake) >= until {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {until} probes within {DEADLINE:?}\n{}",
            probes(fake),
            gw.log_text()
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn readiness_changes_only_after_consecutive_probe_results() {
    let fake = FakeControlPlane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(
        dir.path(),
        &format!(
            "admin:\n  listen: ADMIN_ADDR\n  readiness: {{interval: 200ms, timeout: 200ms, \
             failure_threshold: 3, success_threshold: 2}}\n\
             shutdown: {{drain_delay: 5s, drain_timeout: 1s}}\n\
             directory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
            fake.addr
        ),
    )
    .await;
    let admin = gw.admin;
    assert!(
        probes(&fake) >= 2,
        "ready only after success_threshold (2) probes, saw {}",
        probes(&fake)
    );

    // One probe slower than its timeout: the gateway gives up on it (the fake sees the RPC
    // cancelled), logs it, and stays ready. The scripted step goes to the next probe or, if one
    // started meanwhile, the one after; by the time `base + 3` starts it has completed.
    let base = probes(&fake);
    fake.script(LIST, "", [Step::Delay(Duration::from_secs(3))]);
    stays_ready(&gw, &fake, base + 3, "one slow probe").await;
    let deadline = Instant::now() + DEADLINE;
    while fake.cancelled() == 0 || !gw.log_text().contains("probe failed; still ready") {
        assert!(
            Instant::now() < deadline,
            "the slow probe was neither given up (cancelled = {}) nor logged\n{}",
            fake.cancelled(),
            gw.log_text()
        );
        tokio::time::sleep(POLL).await;
    }

    // failure_threshold - 1 failures in a row: still ready.
    let base = probes(&fake);
    fake.script(LIST, "", [unavailable(), unavailable()]);
    stays_ready(&gw, &fake, base + 4, "two failed probes").await;

    // Three failures in a row → 503; then success, failure (resets the count), success,
    // success → 200 only once the seventh scripted probe has answered.
    let base = probes(&fake);
    fake.script(
        LIST,
        "",
        [
            unavailable(),
            unavailable(),
            unavailable(),
            Step::Delay(Duration::ZERO),
            unavailable(),
            Step::Delay(Duration::ZERO),
            Step::Delay(Duration::ZERO),
        ],
    );
    // The gauge follows each probe (no hysteresis): it reads 0 at some point of the failure
    // stretch, sampled on every poll (a sample after the 503 may already see the next success).
    let mut gauge_down = false;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = readyz(&gw).await;
        let seen = probes(&fake);
        gauge_down |= metric(&gw.metrics().await, "actorgate_directory_up", &[]) == 0.0;
        if status == 503 {
            assert_eq!(body, "directory unreachable\n");
            assert!(
                seen >= base + 3,
                "unready after only {} failed probes (threshold 3)\n{}",
                seen - base,
                gw.log_text()
            );
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "never unready after three failed probes ({} probes seen)\n{}",
            seen - base,
            gw.log_text()
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(gauge_down, "the gauge shows the failed probe");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = readyz(&gw).await;
        let seen = probes(&fake);
        if status == 200 {
            assert!(
                seen >= base + 7,
                "ready again after {} scripted probes; needs two successes in a row (7)\n{}",
                seen - base,
                gw.log_text()
            );
            break;
        }
        assert_eq!((status, body.as_str()), (503, "directory unreachable\n"));
        assert!(
            Instant::now() < deadline,
            "never ready again ({} probes seen)\n{}",
            seen - base,
            gw.log_text()
        );
        tokio::time::sleep(POLL).await;
    }
    let log = gw.log_text();
    assert!(
        log.contains("actor directory is unreachable; not ready"),
        "{log}"
    );
    assert!(log.contains("actor directory is reachable; ready"), "{log}");
    let (_, status) = get(admin, "/statusz?format=json").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["ready"], true);
    assert_eq!(status["directory"]["health"]["consecutive_failures"], 0);

    // Draining needs no probe: 503 `draining` before the probe after next has started.
    let at_signal = probes(&fake);
    gw.signal("TERM");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = readyz(&gw).await;
        if status == 503 {
            assert_eq!(body, "draining\n");
            assert!(
                probes(&fake) <= at_signal + 1,
                "draining waited for {} probes",
                probes(&fake) - at_signal
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never draining\n{}",
            gw.log_text()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `check-config` refuses bad readiness settings with one line naming the field.
#[test]
fn readiness_settings_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "admin:\n  readiness: {interval: 1s, timeout: 2s, failure_threshold: 0, success_threshold: 101}\n\
         directory: {static: {}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("actorgate: {}: ", bad.display());
    for want in [
        "admin.readiness.timeout: 2s is longer than admin.readiness.interval (1s)",
        "admin.readiness.failure_threshold: 0 is out of range (1 to 100)",
        "admin.readiness.success_threshold: 101 is out of range (1 to 100)",
    ] {
        assert!(
            stderr.lines().any(|l| l == format!("{prefix}{want}")),
            "missing {want:?} in:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
}
