//! The store against a real SQLite file, and a real PostgreSQL server when the tests are given
//! one (`SALTPETER_TEST_POSTGRES`): events in, answers out.

use futures_util::FutureExt;

use super::*;
use crate::journal::{Claim, MissReason, RetryPlan, SkipReason, SlotFate, Trigger};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn started(instance: &str, job: &str, at: i64) -> RunEvent {
    RunEvent::Started {
        instance: instance.into(),
        job: job.into(),
        trigger: Trigger::Schedule,
        scheduled: Some(t(at)),
        at: t(at),
        token: "tok".into(),
    }
}

fn open(dir: &tempfile::TempDir, retention: Retention) -> History {
    History::connect(&db::testing::database(dir.path()), retention, QUEUE_LIMIT).unwrap()
}

fn run_events(instance: &str, job: &str, at: i64) -> Vec<RunEvent> {
    let i = instance.to_string();
    vec![
        started(instance, job, at),
        RunEvent::Published {
            instance: i.clone(),
            jid: "2026".into(),
            machines: vec!["a".into(), "b".into()],
        },
        RunEvent::Confirmed {
            instance: i.clone(),
            machine: "a".into(),
            at: t(at + 1),
        },
        RunEvent::WrapperStarted {
            instance: i.clone(),
            machine: "a".into(),
            pid: 42,
            version: "0.1.0".into(),
        },
        RunEvent::Output {
            instance: i.clone(),
            machine: "a".into(),
            data: "hello ".into(),
            seq: Some(0),
        },
        RunEvent::Output {
            instance: i.clone(),
            machine: "a".into(),
            data: "world\n".into(),
            seq: Some(1),
        },
        RunEvent::TargetEnded {
            instance: i.clone(),
            machine: "a".into(),
            code: 0,
            note: None,
            at: t(at + 2),
        },
        RunEvent::TargetEnded {
            instance: i.clone(),
            machine: "b".into(),
            code: 127,
            note: Some("not found".into()),
            at: t(at + 1),
        },
        RunEvent::RunEnded {
            instance: i,
            success: false,
            succeeded: 1,
            total: 2,
            at: t(at + 2),
        },
    ]
}

/// How many of a run's events come before its first result (the run is in flight then).
fn in_flight_until(events: &[RunEvent]) -> usize {
    events
        .iter()
        .position(|e| matches!(e, RunEvent::TargetEnded { .. }))
        .unwrap()
}

#[tokio::test]
async fn a_run_is_stored_with_its_targets_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    for e in run_events("j_1", "j", 0) {
        h.record(e);
    }
    let run = h.run("j_1").await.unwrap().unwrap();
    assert_eq!(
        (
            run.run.success,
            run.run.succeeded,
            run.run.total,
            run.run.running
        ),
        (Some(false), Some(1), Some(2), false)
    );
    assert_eq!(run.run.jid.as_deref(), Some("2026"));
    let a = &run.targets[0];
    assert_eq!(
        (
            a.machine.as_str(),
            a.state.as_str(),
            a.exit_code,
            a.pid,
            a.output_bytes
        ),
        ("a", "done", Some(0), Some(42), 12)
    );
    let b = &run.targets[1];
    assert_eq!(
        (b.exit_code, b.meaning.as_deref(), b.note.as_deref()),
        (Some(127), Some("wrapper not found"), Some("not found"))
    );
    let (slice, done) = h.output("j_1", "a", 6).await.unwrap().unwrap();
    assert_eq!(
        (slice.text.as_str(), slice.next, done),
        ("world\n", 12, true)
    );
    assert!(h.output("j_1", "zz", 0).await.unwrap().is_none());
    assert!(h.run("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn history_survives_reopening_and_in_flight_runs_are_found() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = open(&dir, Retention::default());
        for e in run_events("j_1", "j", 0).into_iter().take(5) {
            h.record(e);
        }
        h.flush().await.unwrap();
    }
    let h = open(&dir, Retention::default());
    let open_runs = h.in_flight().await.unwrap();
    assert_eq!(open_runs.len(), 1);
    let open: Vec<(&str, bool, i64)> = open_runs[0]
        .open
        .iter()
        .map(|t| (t.machine.as_str(), t.confirmed, t.next_seq))
        .collect();
    // `a` streamed message 0 ("hello "): its wrapper resumes at 1.
    assert_eq!(open, [("a", true, 1), ("b", false, 0)]);
    // Output appended after the restart continues the stored stream.
    h.record(RunEvent::Output {
        instance: "j_1".into(),
        machine: "a".into(),
        data: "again".into(),
        seq: None,
    });
    let (slice, done) = h.output("j_1", "a", 0).await.unwrap().unwrap();
    assert_eq!((slice.text.as_str(), done), ("hello again", false));
}

#[tokio::test]
async fn paging_last_runs_retention_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(
        &dir,
        Retention {
            max_runs_per_job: 3,
            ..Retention::default()
        },
    );
    for n in 0..5 {
        for e in run_events(&format!("j_{n}"), "j", n * 10) {
            h.record(e);
        }
    }
    for e in run_events("k_0", "k", 1) {
        h.record(e);
    }
    let skip = skipped("j", t(99), "j_4 is still running");
    assert_eq!(h.claim(vec![skip], "me").await.unwrap(), [Ok(())]);
    let page: Vec<String> = h
        .runs("j", None, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.instance)
        .collect();
    assert_eq!(page, ["j_4", "j_3"]);
    let next: Vec<String> = h
        .runs("j", Some("j_3".into()), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.instance)
        .collect();
    assert_eq!(next, ["j_2"], "only 3 runs per job are kept");
    let last = h.last_runs().await.unwrap();
    assert_eq!(
        (last["j"].instance.as_str(), last["k"].instance.as_str()),
        ("j_4", "k_0")
    );
    let skips = h.skips("j", 10).await.unwrap();
    assert_eq!((skips.len(), skips[0].reason.as_str()), (1, "overlap"));
}

#[tokio::test]
async fn maintenance_switches_persist() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = open(&dir, Retention::default());
        h.set_maintenance(None, true).await.unwrap();
        h.set_maintenance(Some("m2".into()), true).await.unwrap();
        let s = h.set_maintenance(Some("m1".into()), true).await.unwrap();
        assert_eq!(s.machines, ["m1", "m2"]);
        h.set_maintenance(Some("m2".into()), false).await.unwrap();
    }
    let h = open(&dir, Retention::default());
    let s = h.maintenance().await.unwrap();
    assert_eq!((s.global, s.machines), (true, vec!["m1".to_string()]));
}

#[tokio::test]
async fn live_subscribers_see_events_after_they_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    let mut live = h.subscribe();
    h.record(started("j_1", "j", 0));
    let notice = live.next().await.unwrap();
    assert!(notice.touched_run("j_1") && !notice.touched_run("j_2"));
    assert!(h.run("j_1").await.unwrap().unwrap().run.running);
}

fn output(instance: &str, machine: &str, data: String, seq: i64) -> RunEvent {
    RunEvent::Output {
        instance: instance.into(),
        machine: machine.into(),
        data,
        seq: Some(seq),
    }
}

#[tokio::test]
async fn one_small_notice_per_commit_not_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    for e in run_events("j_1", "j", 0).into_iter().take(4) {
        h.record(e);
    }
    h.flush().await.unwrap();
    let mut live = h.subscribe();
    // The store is held while 100 messages of 64 KiB arrive: one burst, one transaction.
    let resume = h.pause().await;
    let chunk = "x".repeat(64 * 1024);
    for seq in 0..100 {
        h.record(output("j_1", "a", chunk.clone(), seq));
    }
    drop(resume);
    h.flush().await.unwrap();
    let Some(Notice::Commit(c)) = live.next().await else {
        panic!("no commit notice");
    };
    assert!(c.touched_target("j_1", "a"));
    assert!(!c.touched_target("j_1", "b") && !c.touched_run("j_2"));
    assert_eq!(c.runs().collect::<Vec<_>>(), ["j_1"]);
    // Names only: the output stays in the database.
    assert!(format!("{c:?}").len() < 1000, "{c:?}");
    assert!(
        live.next().now_or_never().is_none(),
        "one notice for 101 events in one commit"
    );
    // The next commit has the next serial; a read-only batch (the flush) sends nothing.
    h.record(output("j_1", "b", "b".into(), 0));
    h.flush().await.unwrap();
    h.flush().await.unwrap();
    let Some(Notice::Commit(next)) = live.next().await else {
        panic!("no commit notice");
    };
    assert_eq!(next.serial(), c.serial() + 1);
    assert!(next.touched_target("j_1", "b") && !next.touched_target("j_1", "a"));
    assert!(live.next().now_or_never().is_none());
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_anything_may_have_changed() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    let mut live = h.subscribe();
    for n in 0..(NOTICES as i64 + 10) {
        h.record(started(&format!("j_{n}"), "j", n));
        h.flush().await.unwrap();
    }
    let first = live.next().await.unwrap();
    assert!(matches!(first, Notice::Missed));
    assert!(first.touched_target("anything", "at all"));
}

#[tokio::test]
async fn writable_waits_while_the_queue_is_over_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 1 << 20;
    let h = History::connect(
        &db::testing::database(dir.path()),
        Retention::default(),
        limit,
    )
    .unwrap();
    h.record(started("j_1", "j", 0));
    h.flush().await.unwrap();
    assert_eq!(h.queued_bytes(), 0);
    h.writable().await;
    // A disk slower than the input: the store is held while 20 × 64 KiB arrive.
    let resume = h.pause().await;
    let chunk = "x".repeat(64 * 1024);
    for seq in 0..20 {
        h.record(output("j_1", "a", chunk.clone(), seq));
    }
    assert!(h.queued_bytes() >= 20 * 64 * 1024, "{}", h.queued_bytes());
    let waiting = h.writable();
    tokio::pin!(waiting);
    assert!(
        waiting.as_mut().now_or_never().is_none(),
        "over the limit: the producer waits"
    );
    // Still waiting after a while: it is woken by the store, not by a timer.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(waiting.as_mut().now_or_never().is_none());
    drop(resume);
    waiting.await;
    h.flush().await.unwrap();
    assert_eq!(h.queued_bytes(), 0);
    let (slice, _) = h.output("j_1", "a", 0).await.unwrap().unwrap();
    assert_eq!(slice.next, 20 * 64 * 1024);
}

#[test]
fn an_old_database_is_migrated_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // A database from before any migration: an empty file with another table in it.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE unrelated (x INTEGER);")
            .unwrap();
    }
    let c = db::Db::open(&Database::File(path.clone())).unwrap();
    schema::migrate(&c).unwrap();
    assert_eq!(
        schema::version(&c).unwrap() as usize,
        schema::MIGRATIONS.len()
    );
    // Migrating again is a no-op.
    schema::migrate(&c).unwrap();
    c.batch("PRAGMA user_version = 99").unwrap();
    let err = schema::migrate(&c).unwrap_err();
    assert!(err.to_string().contains("newer saltpeter"), "{err}");
}

#[test]
fn a_version_1_database_keeps_its_output_through_later_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(schema::MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute_batch(
            "INSERT INTO runs (instance, job, trigger, started_ms, token) VALUES ('j_1', 'j', 'schedule', 1, 't');
             INSERT INTO targets (instance, machine, state, head) VALUES ('j_1', 'a', 'running', 'old output');",
        )
        .unwrap();
    }
    let c = db::Db::open(&Database::File(path.clone())).unwrap();
    schema::migrate(&c).unwrap();
    let (data, bytes, next): (String, i64, i64) = c
        .row(
            "SELECT c.data, t.output_bytes, t.next_seq FROM targets t JOIN chunks c USING (instance, machine)",
            p![],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
        .unwrap();
    assert_eq!((data.as_str(), bytes, next), ("old output", 10, 0));
}

#[tokio::test]
async fn heartbeats_are_seen_at_once_and_written_with_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/history.db");
    let h = History::open(&path, Retention::default()).unwrap();
    let events = run_events("j_1", "j", 0);
    // Up to the first TargetEnded: the run is in flight, `a` confirmed.
    let cut = in_flight_until(&events);
    for e in &events[..cut] {
        h.record(e.clone());
    }
    for s in 2..=9 {
        h.record(RunEvent::Heartbeat {
            instance: "j_1".into(),
            machine: "a".into(),
            at: t(s),
        });
    }
    let detail = h.run("j_1").await.unwrap().unwrap();
    let a = detail.targets.iter().find(|x| x.machine == "a").unwrap();
    assert_eq!(
        a.last_heartbeat,
        Some(t(9).to_string()),
        "the latest beat, not yet written"
    );
    // Not written row by row: the row still has the confirmation's time.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let stored = || -> Option<i64> {
        conn.query_row(
            "SELECT heartbeat_ms FROM targets WHERE instance = 'j_1' AND machine = 'a'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(stored(), Some(t(1).as_millisecond()));
    h.record(events[cut].clone());
    h.flush().await.unwrap();
    assert_eq!(
        stored(),
        Some(t(9).as_millisecond()),
        "written with the result"
    );
}

/// A full disk (here SQLite's `max_page_count`): a flush is an error, not an Ok for data that
/// is not stored; the events are kept and stored once there is room again, exactly once.
#[tokio::test]
async fn a_commit_that_fails_is_an_error_and_is_retried_until_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    // SQLite's own way to fill a disk.
    let h = History::open(&dir.path().join("history.db"), Retention::default()).unwrap();
    let events = run_events("j_1", "j", 0);
    h.record(events[0].clone());
    h.record(events[1].clone());
    h.flush().await.unwrap();
    let health = h.health();
    assert_eq!(health(), (0, false));
    // The disk is full: nothing more fits.
    h.exec("PRAGMA max_page_count = 1").await;
    let mut big = String::new();
    for i in 0..2_000 {
        big.push_str(&format!("line {i} of output that needs pages of its own\n"));
    }
    h.record(RunEvent::Output {
        instance: "j_1".into(),
        machine: "a".into(),
        data: big.clone(),
        seq: Some(0),
    });
    h.record(events[6].clone()); // a's result
    let err = h.flush().await.unwrap_err();
    assert!(matches!(err, HistoryError::NotStored(_)), "{err}");
    let (failures, failing) = health();
    assert!(failures >= 1 && failing);
    // Not stored, so not shown as stored either.
    let run = h.run("j_1").await.unwrap().unwrap();
    assert_eq!(run.targets[0].exit_code, None);
    // Still full: still an error (retried meanwhile).
    assert!(h.flush().await.is_err());
    // Room again: the kept events are stored once, in order, and the flush says so.
    h.exec("PRAGMA max_page_count = 1073741823").await;
    h.flush().await.unwrap();
    assert!(!health().1);
    let run = h.run("j_1").await.unwrap().unwrap();
    let a = &run.targets[0];
    assert_eq!((a.exit_code, a.output_bytes), (Some(0), big.len() as u64));
    let (slice, done) = h.output("j_1", "a", 0).await.unwrap().unwrap();
    assert_eq!((slice.text.len(), done), (big.len(), true));
    assert_eq!(slice.text, big);
}

#[tokio::test]
async fn batches_left_are_found_again_with_the_run_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    h.record(started("j_1", "j", 0));
    let batches = vec![
        vec!["b".to_string()],
        vec!["c".to_string(), "d".to_string()],
    ];
    h.record(RunEvent::BatchesLeft {
        instance: "j_1".into(),
        batches: batches.clone(),
    });
    let found = h.in_flight().await.unwrap();
    assert_eq!(found[0].batches, batches);
    h.record(RunEvent::BatchesLeft {
        instance: "j_1".into(),
        batches: Vec::new(),
    });
    assert!(h.in_flight().await.unwrap()[0].batches.is_empty());
}

#[tokio::test]
async fn a_late_result_is_added_to_the_targets_note() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    for e in run_events("j_1", "j", 0) {
        h.record(e);
    }
    h.record(RunEvent::LateResult {
        instance: "j_1".into(),
        machine: "b".into(),
        retcode: 0,
        at: t(90),
    });
    let run = h.run("j_1").await.unwrap().unwrap();
    let b = &run.targets[1];
    assert_eq!(b.exit_code, Some(127), "the result stands");
    let note = b.note.as_deref().unwrap();
    assert!(
        note.starts_with("not found\n[saltpeter: the wrapper reported exit code 0 (success) at "),
        "{note}"
    );
}

#[tokio::test]
async fn a_launch_without_its_reply_is_found_again_with_its_jid() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    h.record(started("j_1", "j", 0));
    let launching = |jid: &str| RunEvent::Launching {
        instance: "j_1".into(),
        jid: jid.into(),
    };
    h.record(launching("J1"));
    assert_eq!(
        h.in_flight().await.unwrap()[0].launching.as_deref(),
        Some("J1")
    );
    h.record(RunEvent::Published {
        instance: "j_1".into(),
        jid: "J1".into(),
        machines: vec!["a".into()],
    });
    let run = &h.in_flight().await.unwrap()[0];
    assert_eq!(
        (run.jid.as_deref(), run.launching.as_deref()),
        (Some("J1"), None)
    );
    // The next batch's launch, not yet answered.
    h.record(launching("J2"));
    assert_eq!(
        h.in_flight().await.unwrap()[0].launching.as_deref(),
        Some("J2")
    );
}

fn skipped(job: &str, slot: Timestamp, detail: &str) -> Claim {
    Claim {
        job: job.into(),
        slot: Some(slot),
        last: None,
        count: 1,
        fate: SlotFate::Skipped(SkipReason::Overlap),
        trigger: Trigger::Schedule,
        instance: None,
        detail: detail.into(),
        at: slot,
    }
}

fn fired(job: &str, slot: Option<Timestamp>, instance: &str) -> Claim {
    Claim {
        job: job.into(),
        slot,
        last: None,
        count: 1,
        fate: SlotFate::Fired,
        trigger: if slot.is_some() {
            Trigger::Schedule
        } else {
            Trigger::Manual
        },
        instance: Some(instance.into()),
        detail: String::new(),
        at: slot.unwrap_or(t(1_000)),
    }
}

#[tokio::test]
async fn the_ledger_refuses_a_second_claim_of_a_slot_even_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, Retention::default());
    // A second store on the same file: another daemon started by mistake.
    let b = open(&dir, Retention::default());
    let mut live = a.subscribe();
    let answers = a
        .claim(
            vec![
                fired("j", Some(t(60)), "j_60"),
                fired("j", None, "j_61_manual"),
                fired("j", None, "j_62_manual"),
            ],
            "host-a:1",
        )
        .await
        .unwrap();
    assert_eq!(answers, [Ok(()), Ok(()), Ok(())], "manual rows never clash");
    let Some(Notice::Commit(c)) = live.next().await else {
        panic!("no commit notice");
    };
    assert_eq!(c.slots().collect::<Vec<_>>(), ["j"]);
    let answers = b
        .claim(
            vec![
                fired("j", Some(t(60)), "j_60"),
                fired("j", Some(t(120)), "j_120"),
            ],
            "host-b:2",
        )
        .await
        .unwrap();
    let Err(taken) = &answers[0] else {
        panic!("a slot claimed twice: {answers:?}");
    };
    assert_eq!(
        (
            taken.state.as_str(),
            taken.instance.as_deref(),
            taken.claimed_by.as_str()
        ),
        ("fired", Some("j_60"), "host-a:1")
    );
    assert_eq!(answers[1], Ok(()));
    let heads = a.heads().await.unwrap();
    assert_eq!(heads["j"].last_claimed, Some(t(120)));
    assert_eq!(heads["j"].last_fired, Some(t(120)));
    assert_eq!(heads["j"].last_state.as_deref(), Some("fired"));
    // A job planned afresh later resumes from then; its head keeps its last claim.
    a.planned(vec!["j".into(), "k".into()], t(500))
        .await
        .unwrap();
    let heads = a.heads().await.unwrap();
    assert_eq!(heads["j"].resume_from, Some(t(500)));
    assert_eq!(heads["j"].last_claimed, Some(t(120)));
    assert_eq!(
        (heads["k"].resume_from, heads["k"].last_claimed),
        (Some(t(500)), None)
    );
}

#[tokio::test]
async fn a_missed_gap_is_one_row_and_the_head_is_its_last_slot() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    let gap = Claim {
        job: "j".into(),
        slot: Some(t(60)),
        last: Some(t(60 * 4320)),
        count: 4320,
        fate: SlotFate::Missed(MissReason::DaemonDown),
        trigger: Trigger::Schedule,
        instance: None,
        detail: "the daemon was down".into(),
        at: t(60 * 4321),
    };
    let answers = h
        .claim(vec![gap, fired("j", Some(t(60 * 4321)), "j_x")], "me")
        .await
        .unwrap();
    assert_eq!(answers, [Ok(()), Ok(())]);
    for e in run_events("j_x", "j", 5) {
        h.record(e);
    }
    let rows = h.slots("j", SlotFilter::default(), 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].state.as_str(), rows[0].ended), ("fired", true));
    assert_eq!(rows[0].success, Some(false));
    assert_eq!(
        (
            rows[1].state.as_str(),
            rows[1].reason.as_deref(),
            rows[1].count
        ),
        ("missed", Some("daemon down"), 4320)
    );
    let missed = SlotFilter {
        state: Some("missed".into()),
        ..SlotFilter::default()
    };
    assert_eq!(h.slots("j", missed, 10).await.unwrap().len(), 1);
    let page = SlotFilter {
        before: Some(rows[0].id),
        ..SlotFilter::default()
    };
    assert_eq!(h.slots("j", page, 10).await.unwrap()[0].id, rows[1].id);
    let head = &h.heads().await.unwrap()["j"];
    assert_eq!(head.last_fired, Some(t(60 * 4321)));
    // An older gap claimed late does not move the head back.
    let old = Claim {
        slot: Some(t(1)),
        last: Some(t(2)),
        count: 2,
        fate: SlotFate::Missed(MissReason::ClockJump),
        ..skipped("j", t(1), "")
    };
    assert_eq!(h.claim(vec![old], "me").await.unwrap(), [Ok(())]);
    let head = &h.heads().await.unwrap()["j"];
    assert_eq!(
        (head.last_claimed, head.last_state.as_deref()),
        (Some(t(60 * 4321)), Some("fired"))
    );
}

#[tokio::test]
async fn a_fired_slot_that_never_reached_salt_is_missed_after_all() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    let claims = vec![
        fired("j", Some(t(60)), "j_60"),
        fired("j", Some(t(120)), "j_120"),
    ];
    assert_eq!(h.claim(claims, "me").await.unwrap(), [Ok(()), Ok(())]);
    h.record(started("j_120", "j", 120));
    h.record(RunEvent::NotLaunched {
        instance: "j_120".into(),
        why: "cannot connect to the Salt master".into(),
        at: t(125),
    });
    h.flush().await.unwrap();
    let rows = h.slots("j", SlotFilter::default(), 10).await.unwrap();
    assert_eq!(
        (rows[0].state.as_str(), rows[0].reason.as_deref()),
        ("missed", Some("master unreachable"))
    );
    assert!(rows[0].detail.contains("cannot connect"), "{:?}", rows[0]);
    assert_eq!(rows[1].state, "fired");
    let head = &h.heads().await.unwrap()["j"];
    assert_eq!(
        (head.last_state.as_deref(), head.last_fired),
        (Some("missed"), Some(t(60)))
    );
}

#[tokio::test]
async fn pages_follow_the_row_order_even_for_a_slot_claimed_late() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    // A manual run at 1000 s, then a catch-up of the 500 s slot, claimed after it.
    let claims = vec![fired("j", None, "j_manual")];
    h.claim(claims, "me").await.unwrap();
    h.claim(vec![fired("j", Some(t(500)), "j_500")], "me")
        .await
        .unwrap();
    let first = h.slots("j", SlotFilter::default(), 1).await.unwrap();
    assert_eq!(first[0].instance.as_deref(), Some("j_manual"));
    let page = SlotFilter {
        before: Some(first[0].id),
        ..SlotFilter::default()
    };
    let second = h.slots("j", page, 1).await.unwrap();
    assert_eq!(second[0].instance.as_deref(), Some("j_500"));
}

#[tokio::test]
async fn a_run_whose_every_target_was_under_maintenance_skipped_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    let claims = vec![
        fired("j", Some(t(60)), "j_60"),
        fired("j", Some(t(120)), "j_120"),
    ];
    h.claim(claims, "me").await.unwrap();
    for (instance, at, machines) in [("j_60", 60, ["a", "b"]), ("j_120", 120, ["a", "c"])] {
        h.record(started(instance, "j", at));
        for m in machines {
            h.record(RunEvent::MachineSkipped {
                instance: instance.into(),
                machine: m.into(),
            });
        }
    }
    // `c` was not under maintenance in the second run: it ran.
    h.record(RunEvent::TargetEnded {
        instance: "j_120".into(),
        machine: "c".into(),
        code: 0,
        note: None,
        at: t(121),
    });
    for (instance, at) in [("j_60", 61), ("j_120", 122)] {
        h.record(RunEvent::RunEnded {
            instance: instance.into(),
            success: true,
            succeeded: 0,
            total: 0,
            at: t(at),
        });
    }
    h.flush().await.unwrap();
    let rows = h.slots("j", SlotFilter::default(), 10).await.unwrap();
    assert_eq!(rows[0].state, "fired", "{rows:?}");
    assert_eq!(
        (rows[1].state.as_str(), rows[1].reason.as_deref()),
        ("skipped", Some("machine maintenance")),
        "{rows:?}"
    );
}

#[tokio::test]
async fn ledger_rows_follow_the_history_retention_but_keep_each_head() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = open(&dir, Retention::default());
        let claims = (1..=5)
            .map(|n| fired("j", Some(t(60 * n)), &format!("j_{n}")))
            .chain([1_000, 2_000].map(|s| {
                let at = Timestamp::from_second(s).unwrap();
                skipped("k", at, "in 1970")
            }))
            .collect();
        h.claim(claims, "me").await.unwrap();
    }
    // Reopened with at most 2 rows per job and 1 day of age: pruned at start-up.
    let h = open(
        &dir,
        Retention {
            max_runs_per_job: 2,
            max_age_days: 1,
            ..Retention::default()
        },
    );
    let rows = h.slots("j", SlotFilter::default(), 10).await.unwrap();
    let kept: Vec<_> = rows.iter().map(|r| r.instance.clone().unwrap()).collect();
    assert_eq!(kept, ["j_5", "j_4"]);
    // Both of `k`'s rows are older than a day: the older goes, the newer is where its plan
    // resumes.
    let heads = h.heads().await.unwrap();
    let k = h.slots("k", SlotFilter::default(), 10).await.unwrap();
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0].slot.as_deref(), Some("1970-01-01T00:33:20Z"));
    assert_eq!(heads["j"].last_claimed, Some(t(300)));
}

fn notified(
    job: &str,
    at: i64,
    streak: Option<(u32, bool)>,
    channels: &[(&str, bool)],
) -> RunEvent {
    RunEvent::Notified(crate::journal::Notified {
        job: job.into(),
        streak,
        deliveries: channels
            .iter()
            .map(|(c, suppressed)| crate::journal::NewDelivery {
                channel: c.to_string(),
                event: "failure".into(),
                instance: Some(format!("{job}_{at}")),
                slot: Some(t(at)),
                body: format!("{{\"job\":\"{job}\"}}"),
                suppressed: *suppressed,
            })
            .collect(),
        at: t(at),
    })
}

#[tokio::test]
async fn the_outbox_keeps_deliveries_and_streaks_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = open(&dir, Retention::default());
        h.record_together(vec![
            started("j_1", "j", 0),
            notified("j", 0, Some((1, true)), &[("hook", false), ("mail", false)]),
        ]);
        let (due, next) = h.due_deliveries(ms(t(0)), 10, vec![]).await.unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(next, None);
        assert_eq!(due[0].channel, "hook");
        assert_eq!(due[0].body, "{\"job\":\"j\"}");
        // One delivered, one to retry in a minute.
        h.attempted(due[0].id, outbox::Attempt::Delivered, ms(t(1)))
            .await
            .unwrap();
        h.attempted(
            due[1].id,
            outbox::Attempt::Retry {
                error: "HTTP 503".into(),
                next_ms: ms(t(60)),
            },
            ms(t(1)),
        )
        .await
        .unwrap();
    }
    let h = open(&dir, Retention::default());
    assert_eq!(h.streaks().await.unwrap()["j"], (1, true));
    // Nothing due before the retry time; then only the undelivered one, never the other.
    let (due, next) = h.due_deliveries(ms(t(30)), 10, vec![]).await.unwrap();
    assert!(due.is_empty());
    assert_eq!(next, Some(ms(t(60))));
    let (due, _) = h.due_deliveries(ms(t(60)), 10, vec![]).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].channel.as_str(), due[0].attempts), ("mail", 1));
    // Busy ones (a send in flight) are left out.
    let (busy, _) = h
        .due_deliveries(ms(t(60)), 10, vec![due[0].id])
        .await
        .unwrap();
    assert!(busy.is_empty());
    h.attempted(
        due[0].id,
        outbox::Attempt::Failed {
            error: "SMTP 550".into(),
        },
        ms(t(61)),
    )
    .await
    .unwrap();
    let rows = h.deliveries(Some("j"), None, 10).await.unwrap();
    let states: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|r| (r.channel.as_str(), r.state.as_str(), r.attempts))
        .collect();
    assert_eq!(
        states,
        vec![("mail", "failed", 2), ("hook", "delivered", 1)]
    );
    assert_eq!(rows[0].last_error.as_deref(), Some("SMTP 550"));
    // Paging by id.
    let older = h.deliveries(None, Some(rows[0].id), 10).await.unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].channel, "hook");
}

#[tokio::test]
async fn suppressed_deliveries_are_recorded_and_never_due() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    h.record_together(vec![notified("j", 0, None, &[("hook", true)])]);
    let (due, next) = h.due_deliveries(ms(t(100)), 10, vec![]).await.unwrap();
    assert!(due.is_empty() && next.is_none());
    let rows = h.deliveries(None, None, 10).await.unwrap();
    assert_eq!(rows[0].state, "suppressed");
    // A streak left out (`None`) is not written.
    assert!(h.streaks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_run_end_and_its_notifications_share_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    let mut commits = h.subscribe();
    h.record_together(vec![
        started("j_1", "j", 0),
        notified("j", 0, Some((1, true)), &[("hook", false)]),
    ]);
    h.flush().await.unwrap();
    let Some(Notice::Commit(c)) = commits.next().await else {
        panic!("a commit notice")
    };
    assert!(c.touched_run("j_1") && c.deliveries_queued());
}

#[tokio::test]
async fn a_missed_gaps_notifications_are_stored_with_its_row_only_when_the_claim_is_won() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    let notice = || match notified("j", 0, None, &[("hook", false)]) {
        RunEvent::Notified(n) => Some(n),
        _ => None,
    };
    let gap = skipped("j", t(0), "");
    let won = h
        .claim_notifying(vec![gap.clone()], vec![notice()], "a:1")
        .await
        .unwrap();
    assert!(won[0].is_ok());
    // Another daemon's claim of the same slot loses, and its notice is not stored.
    let lost = h
        .claim_notifying(vec![gap], vec![notice()], "b:2")
        .await
        .unwrap();
    assert!(lost[0].is_err());
    assert_eq!(h.deliveries(Some("j"), None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_planned_attempt_is_found_again_until_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(&dir, Retention::default());
    h.record(started("j_1", "j", 0));
    let plan = RetryPlan {
        job: "j".into(),
        previous: "j_1".into(),
        first: "j_1".into(),
        attempt: 2,
        slot: Some(t(0)),
        machines: vec!["b".into()],
        due: t(60),
    };
    h.record(RunEvent::RetryPlanned(plan.clone()));
    h.record(RunEvent::RunEnded {
        instance: "j_1".into(),
        success: false,
        succeeded: 1,
        total: 2,
        at: t(1),
    });
    h.claim(vec![fired("j", Some(t(0)), "j_1")], "a:1")
        .await
        .unwrap();
    let pending = h.pending_retries().await.unwrap();
    assert_eq!(pending, [plan]);
    assert_eq!(
        h.run("j_1").await.unwrap().unwrap().run.retry_at,
        Some(t(60).to_string())
    );
    // The attempt starts: the plan is done, and the slot's row follows the new run.
    h.record(started("j_1_retry2", "j", 60));
    h.record(RunEvent::Attempt {
        instance: "j_1_retry2".into(),
        first: "j_1".into(),
        previous: "j_1".into(),
        attempt: 2,
    });
    assert!(h.pending_retries().await.unwrap().is_empty());
    let run = h.run("j_1_retry2").await.unwrap().unwrap().run;
    assert_eq!(
        (run.attempt, run.first_instance.as_deref()),
        (2, Some("j_1"))
    );
    let rows = h
        .slots("j", ledger::SlotFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(rows[0].instance.as_deref(), Some("j_1_retry2"));
}

/// Two stores (two daemons) claim the same slots at the same moment, many times over: each
/// slot is won exactly once, and the loser is told who holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_of_the_same_slots_are_won_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, Retention::default());
    let b = open(&dir, Retention::default());
    let mut wins = HashMap::<String, usize>::new();
    for round in 0..50 {
        // Several jobs' slots in one claim, in the same order for both.
        let claims: Vec<Claim> = ["j", "k", "l"]
            .iter()
            .map(|job| fired(job, Some(t(round * 60)), &format!("{job}_{round}")))
            .collect();
        let (ra, rb) = tokio::join!(
            a.claim(claims.clone(), "daemon-a"),
            b.claim(claims.clone(), "daemon-b")
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        for (i, c) in claims.iter().enumerate() {
            match (&ra[i], &rb[i]) {
                (Ok(()), Err(taken)) => {
                    assert_eq!(taken.claimed_by, "daemon-a");
                    *wins.entry("a".into()).or_default() += 1;
                }
                (Err(taken), Ok(())) => {
                    assert_eq!(taken.claimed_by, "daemon-b");
                    *wins.entry("b".into()).or_default() += 1;
                }
                other => panic!("slot {} of {}: {other:?}", round, c.job),
            }
        }
    }
    assert_eq!(wins.values().sum::<usize>(), 150);
    let rows = a.slots("j", SlotFilter::default(), 1_000).await.unwrap();
    assert_eq!(rows.len(), 50, "one row per slot");
}

/// PostgreSQL starts from its own baseline; it must be the schema SQLite's migrations give,
/// column for column.
#[test]
fn both_engines_have_the_same_tables_and_columns() {
    let Some(_) = db::testing::server() else {
        eprintln!("SALTPETER_TEST_POSTGRES unset: only SQLite here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let columns = |database: Database| {
        std::thread::spawn(move || {
            let conn = db::Db::open(&database).unwrap();
            schema::migrate(&conn).unwrap();
            let sql = match conn.kind() {
                db::Kind::Sqlite => {
                    "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
                     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY 1, 2"
                }
                db::Kind::Postgres => {
                    "SELECT table_name::text, column_name::text FROM information_schema.columns
                     WHERE table_schema = 'public' AND table_name != 'saltpeter_schema'
                     ORDER BY 1, 2"
                }
            };
            conn.query(sql, p![], |r| {
                Ok((r.get::<String>(0)?, r.get::<String>(1)?))
            })
            .unwrap()
        })
        .join()
        .unwrap()
    };
    let sqlite = columns(Database::File(dir.path().join("s.db")));
    let postgres = columns(db::testing::database(dir.path()));
    assert!(sqlite.len() > 50, "{sqlite:?}");
    assert_eq!(sqlite, postgres);
}

fn daemon_info(name: &str) -> fleet::DaemonInfo {
    fleet::DaemonInfo {
        name: name.into(),
        master: "master1".into(),
        host: "host".into(),
        pid: 1,
        version: "test".into(),
        api_url: String::new(),
        machines_url: format!("ws://{name}:8889"),
    }
}

/// Two daemons on one store: while the owner renews its lease its run stays its own; once the
/// lease lapses (by the database's clock) the other adopts it, under a new generation, and
/// the old owner is told it lost it. On PostgreSQL what the old owner sends meanwhile is never
/// stored (fencing at its commit) and never counts as held.
#[tokio::test]
async fn a_run_whose_owners_lease_lapsed_is_adopted_and_fenced_from_its_old_owner() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, Retention::default());
    let b = open(&dir, Retention::default());
    let lease = fleet::LEASE;
    assert_eq!(a.register(daemon_info("a"), lease).await.unwrap(), 0);
    assert_eq!(b.register(daemon_info("b"), lease).await.unwrap(), 1);
    let events = run_events("j_1", "j", 0);
    let cut = in_flight_until(&events);
    for e in &events[..cut] {
        a.record(e.clone());
    }
    let connected = |at| RunEvent::Connected {
        instance: "j_1".into(),
        machine: "a".into(),
        at: t(at),
    };
    a.record(connected(2));
    a.flush().await.unwrap();
    // `a` is alive: nothing to adopt; `b` learns where `a` takes wrappers.
    let beat = b.beat(lease).await.unwrap();
    assert!(beat.adopted.is_empty() && beat.lost.is_empty());
    assert_eq!(beat.peers, ["ws://a:8889"]);
    assert_eq!(b.run("j_1").await.unwrap().unwrap().run.owner, "a");
    // A maintenance switch set through `a` reaches `b` with its next heartbeat.
    a.set_maintenance(Some("m1".into()), true).await.unwrap();
    assert_eq!(b.beat(lease).await.unwrap().maintenance.machines, ["m1"]);
    // `a` stops renewing (frozen): its heartbeat is older than the lease.
    b.exec("UPDATE daemons SET heartbeat_ms = heartbeat_ms - 31000 WHERE name = 'a'")
        .await;
    let beat = b.beat(lease).await.unwrap();
    let adopted: Vec<&str> = beat.adopted.iter().map(|r| r.instance.as_str()).collect();
    assert_eq!(adopted, ["j_1"]);
    assert_eq!(beat.adopted[0].token, "tok");
    assert!(
        !beat.adopted[0].open.is_empty(),
        "its open targets come with it"
    );
    assert!(
        b.beat(lease).await.unwrap().adopted.is_empty(),
        "adopted once"
    );
    // `a` wakes and, before its next heartbeat, stores output of the run it lost.
    a.record(output("j_1", "a", "from the old owner\n".into(), 99));
    let fenced = db::testing::server().is_some();
    if fenced {
        assert!(a.flush().await.is_err(), "the batch went again without it");
        a.flush().await.unwrap();
        assert!(!a.holds("j_1"), "nothing of it is acknowledged from here");
    }
    let beat = a.beat(lease).await.unwrap();
    assert_eq!(beat.lost, ["j_1"]);
    assert!(
        beat.adopted.is_empty(),
        "its own lease is fresh again: nothing to take back"
    );
    assert!(!a.holds("j_1"));
    // The wrapper reconnects to the adopter: the history shows its second connection.
    b.record(connected(40));
    let run = b.run("j_1").await.unwrap().unwrap();
    assert_eq!(run.run.owner, "b");
    let target = run.targets.iter().find(|x| x.machine == "a").unwrap();
    assert_eq!(
        (target.connections, target.connected_to.as_str()),
        (2, "b"),
        "{target:?}"
    );
    assert_eq!(target.connected_at, Some(t(40).to_string()));
    if fenced {
        let (slice, _) = b.output("j_1", "a", 0).await.unwrap().unwrap();
        assert!(!slice.text.contains("old owner"), "{:?}", slice.text);
    }
    let listed = b.daemons(lease).await.unwrap();
    let names: Vec<(&str, bool, usize)> = listed
        .iter()
        .map(|d| (d.info.name.as_str(), d.alive, d.runs.len()))
        .collect();
    assert_eq!(names, [("a", true, 0), ("b", true, 1)]);
}
