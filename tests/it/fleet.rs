//! The whole daemon under many wrappers: a run of 2,000 targets (adopted from its database, so
//! no minions are needed) killed from the API while every target streams output ends with
//! every target at 143, within a deadline. The daemon and its hub must never wait on each
//! other's full queues (the old shape could deadlock here).

// The benchmarks' harness, whole; it brings its own copy of `tests/common/net.rs`.
#[path = "../../benches/common/mod.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::daemon::{Daemon, all_ended_with};
use common::wrapper::{Fleet, Plan, Shared};
use tokio::sync::watch;

const TARGETS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_2000_target_run_while_every_target_streams_ends_each_at_143() {
    let limit = common::raise_nofile(3 * TARGETS as u64 + 1024);
    assert!(
        limit > 2 * TARGETS as u64,
        "descriptor limit {limit} is too low for this test"
    );
    let daemon = Daemon::start("killfleet", TARGETS).await;
    let shared = Arc::new(Shared::default());
    let (_stop_tx, stop) = watch::channel(false);
    // 1 KiB a second each (2 MB/s in all), spread over the second.
    let plan = |i: usize| Plan {
        chunk: 1024,
        every: Duration::from_secs(1),
        offset: Duration::from_millis((i % 1000) as u64),
        complete_after: Duration::ZERO,
    };
    let fleet = Fleet::connect(&daemon, plan, &shared, &stop).await;
    assert!(
        fleet.failed.is_empty(),
        "{:?}",
        &fleet.failed[..fleet.failed.len().min(3)]
    );
    // Every target streams before the kill.
    let flowing = tokio::time::timeout(Duration::from_secs(60), async {
        while shared
            .acked_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            < 2 * 1024 * TARGETS as u64
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        flowing.is_ok(),
        "output never flowed:\n{}",
        daemon.log_tail(20)
    );
    let url = format!(
        "{}/api/v1/runs/{}/kill",
        daemon.api, daemon.identity.instance
    );
    let status = tokio::task::spawn_blocking(move || {
        ureq::post(&url)
            .header("Content-Type", "application/json")
            .send_empty()
            .map(|r| r.status().as_u16())
            .unwrap_or_else(|e| panic!("kill: {e}"))
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let reports = fleet.reports().await;
    let errors: Vec<&String> = reports.iter().filter_map(|r| r.error.as_ref()).collect();
    assert!(
        errors.is_empty(),
        "{}\n{} wrappers failed, e.g. {:?}",
        daemon.log_tail(40),
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(reports.iter().all(|r| r.killed && r.complete_ack.is_some()));
    let (_, run) = daemon
        .wait_ended(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(20)));
    all_ended_with(&run, TARGETS, 143).unwrap();
}
