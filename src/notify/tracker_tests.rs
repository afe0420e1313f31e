//! The tracker's decisions, with virtual time: failures, streaks, recovery, launch failures,
//! missed slots, long runs, the hourly limit and a restart's resumed streak.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::*;
use crate::config::notify::{NotifyPolicy, When};
use crate::journal::{Claim, MissReason, RunEvent, SlotFate, Trigger};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn tracker(when: Vec<When>) -> Tracker {
    let mut tr = Tracker::new("master-1");
    let policy = NotifyPolicy {
        when,
        to: vec!["hook".into(), "mail".into()],
    };
    tr.set_policies([("backup".to_string(), Arc::new(policy))], 20);
    tr
}

/// One run of `backup` with the given targets' codes; what its end decided.
fn run(tr: &mut Tracker, n: i64, codes: &[(&str, i64, Option<&str>)]) -> Option<Decided> {
    let instance = format!("backup_{n}");
    let at = t(n * 60);
    let mono = Duration::from_secs(n as u64 * 60);
    tr.observe(
        &RunEvent::Started {
            instance: instance.clone(),
            job: "backup".into(),
            trigger: Trigger::Schedule,
            scheduled: Some(at),
            at,
            token: "x".into(),
        },
        mono,
        at,
    );
    for (machine, code, note) in codes {
        tr.observe(
            &RunEvent::TargetEnded {
                instance: instance.clone(),
                machine: machine.to_string(),
                code: *code,
                note: note.map(str::to_string),
                at,
            },
            mono,
            at,
        );
    }
    let succeeded = codes.iter().filter(|c| c.1 == 0).count();
    tr.observe(
        &RunEvent::RunEnded {
            instance,
            success: succeeded == codes.len() && !codes.is_empty(),
            succeeded,
            total: codes.len(),
            at,
        },
        mono,
        at,
    )
}

fn events(d: &Option<Decided>) -> Vec<(Event, String, bool)> {
    d.iter()
        .flat_map(|d| &d.deliveries)
        .map(|o| (o.notice.event, o.channel.clone(), o.suppressed))
        .collect()
}

#[test]
fn each_failure_then_one_recovery() {
    let mut tr = tracker(vec![When::Failure, When::Recovery]);
    let first = run(&mut tr, 1, &[("a", 0, None), ("b", 3, None)]);
    assert_eq!(
        events(&first),
        vec![
            (Event::Failure, "hook".into(), false),
            (Event::Failure, "mail".into(), false)
        ]
    );
    let notice = &first.as_ref().unwrap().deliveries[0].notice;
    assert_eq!(notice.summary, "failed on 1 of 2 targets");
    assert_eq!(notice.targets[0].machine, "b", "failed targets first");
    assert_eq!(notice.targets[0].code, Some(3));
    assert_eq!(notice.targets[0].meaning, "the command's exit status");
    assert_eq!(notice.slot.as_deref(), Some(t(60).to_string().as_str()));
    assert_eq!(
        first.unwrap().streak,
        Some(Streak {
            failures: 1,
            told: true
        })
    );
    let second = run(&mut tr, 2, &[("a", 124, Some("timeout"))]);
    assert_eq!(
        second.as_ref().unwrap().deliveries[0]
            .notice
            .consecutive_failures,
        2
    );
    assert_eq!(
        second.as_ref().unwrap().deliveries[0].notice.targets[0].meaning,
        "job timeout"
    );
    let third = run(&mut tr, 3, &[("a", 0, None)]);
    assert_eq!(events(&third)[0].0, Event::Recovery);
    assert_eq!(third.unwrap().streak, Some(Streak::default()));
    // A second success is quiet.
    assert!(events(&run(&mut tr, 4, &[("a", 0, None)])).is_empty());
}

#[test]
fn consecutive_failures_tells_once_per_streak_and_recovery_only_if_told() {
    let mut tr = tracker(vec![When::ConsecutiveFailures(2), When::Recovery]);
    assert!(events(&run(&mut tr, 1, &[("a", 1, None)])).is_empty());
    // One failure, then a success: nobody was told, so no recovery either.
    assert!(events(&run(&mut tr, 2, &[("a", 0, None)])).is_empty());
    assert!(events(&run(&mut tr, 3, &[("a", 1, None)])).is_empty());
    let told = run(&mut tr, 4, &[("a", 1, None)]);
    assert_eq!(events(&told).len(), 2);
    assert_eq!(told.unwrap().deliveries[0].notice.consecutive_failures, 2);
    assert!(
        events(&run(&mut tr, 5, &[("a", 1, None)])).is_empty(),
        "once per streak"
    );
    assert_eq!(
        events(&run(&mut tr, 6, &[("a", 0, None)]))[0].0,
        Event::Recovery
    );
}

#[test]
fn a_restart_resumes_the_streak() {
    let mut before = tracker(vec![When::Failure, When::Recovery]);
    let d = run(&mut before, 1, &[("a", 1, None)]).unwrap();
    let mut after = tracker(vec![When::Failure, When::Recovery]);
    after.resume([(d.job.clone(), d.streak.unwrap())]);
    let second = run(&mut after, 2, &[("a", 1, None)]);
    assert_eq!(second.unwrap().deliveries[0].notice.consecutive_failures, 2);
    assert_eq!(
        events(&run(&mut after, 3, &[("a", 0, None)]))[0].0,
        Event::Recovery
    );
}

#[test]
fn launch_failures_are_told_apart_from_a_commands_own_127() {
    let mut tr = tracker(vec![When::LaunchFailure]);
    // The command itself exited 127: not a launch failure, and `failure` is not wanted.
    assert!(events(&run(&mut tr, 1, &[("a", 127, None)])).is_empty());
    let d = run(&mut tr, 2, &[("a", 127, Some("sp-wrapper: not found"))]);
    assert_eq!(events(&d)[0].0, Event::LaunchFailure);
    let notice = &d.unwrap().deliveries[0].notice;
    assert!(
        notice
            .detail
            .as_deref()
            .unwrap()
            .contains("sp-wrapper: not found")
    );
    assert_eq!(notice.targets[0].meaning, "wrapper not found");
}

#[test]
fn nothing_reaching_the_master_is_a_launch_failure() {
    let mut tr = tracker(vec![When::LaunchFailure]);
    let at = t(0);
    tr.observe(
        &RunEvent::Started {
            instance: "backup_x".into(),
            job: "backup".into(),
            trigger: Trigger::Manual,
            scheduled: None,
            at,
            token: "x".into(),
        },
        Duration::ZERO,
        at,
    );
    tr.observe(
        &RunEvent::NotLaunched {
            instance: "backup_x".into(),
            why: "connection refused".into(),
            at,
        },
        Duration::ZERO,
        at,
    );
    let d = tr.observe(
        &RunEvent::RunEnded {
            instance: "backup_x".into(),
            success: false,
            succeeded: 0,
            total: 0,
            at,
        },
        Duration::ZERO,
        at,
    );
    let notice = &d.unwrap().deliveries[0].notice;
    assert_eq!(notice.event, Event::LaunchFailure);
    assert!(
        notice
            .detail
            .as_deref()
            .unwrap()
            .contains("connection refused")
    );
    assert_eq!(notice.trigger.as_deref(), Some("manual"));
}

#[test]
fn jobs_without_a_policy_are_told_nothing() {
    let mut tr = Tracker::new("m");
    assert!(run(&mut tr, 1, &[("a", 1, None)]).is_none());
}

#[test]
fn a_missed_gap_is_one_notice_with_its_count_and_reason() {
    let mut tr = tracker(vec![When::Missed]);
    let claim = Claim {
        job: "backup".into(),
        slot: Some(t(0)),
        last: Some(t(120)),
        count: 3,
        fate: SlotFate::Missed(MissReason::DaemonDown),
        trigger: Trigger::Schedule,
        instance: None,
        detail: String::new(),
        at: t(200),
    };
    let d = tr.claimed(&claim, t(200)).unwrap();
    assert_eq!(d.streak, None);
    let notice = &d.deliveries[0].notice;
    assert_eq!(notice.event, Event::Missed);
    assert_eq!(notice.slots, Some(3));
    assert_eq!(notice.summary, "3 slots were missed (daemon down)");
    let fired = Claim {
        fate: SlotFate::Fired,
        ..claim
    };
    assert!(tr.claimed(&fired, t(200)).is_none());
}

#[test]
fn a_long_run_is_told_once_at_its_deadline() {
    let mut tr = tracker(vec![When::RunningLongerThan(600)]);
    let at = t(0);
    tr.observe(
        &RunEvent::Started {
            instance: "backup_1".into(),
            job: "backup".into(),
            trigger: Trigger::Schedule,
            scheduled: Some(at),
            at,
            token: "x".into(),
        },
        Duration::from_secs(100),
        at,
    );
    assert_eq!(tr.poll_timeout(), Some(Duration::from_secs(700)));
    assert!(
        tr.handle_timeout(Duration::from_secs(699), t(599))
            .is_empty()
    );
    let d = tr.handle_timeout(Duration::from_secs(700), t(600));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].deliveries[0].notice.event, Event::RunningLong);
    assert_eq!(
        d[0].deliveries[0].notice.summary,
        "still running after 600 s"
    );
    assert_eq!(tr.poll_timeout(), None, "once per run");
}

#[test]
fn a_long_run_that_ended_first_is_not_told() {
    let mut tr = tracker(vec![When::RunningLongerThan(600)]);
    run(&mut tr, 0, &[("a", 0, None)]);
    assert!(tr.poll_timeout().is_some());
    assert!(
        tr.handle_timeout(Duration::from_secs(10_000), t(10_000))
            .is_empty()
    );
}

#[test]
fn an_adopted_run_counts_from_its_real_start() {
    let mut tr = tracker(vec![When::RunningLongerThan(600)]);
    // Started 500 s before the restart: 100 s left.
    let done = [("a".to_string(), 2)];
    let run = Adopted {
        instance: "backup_1",
        job: "backup",
        started: t(0),
        slot: Some(t(0)),
        done: &done,
    };
    tr.adopt(run, Duration::from_secs(5), t(500));
    assert_eq!(tr.poll_timeout(), Some(Duration::from_secs(105)));
}

#[test]
fn past_the_hourly_limit_deliveries_are_suppressed() {
    let mut tr = tracker(vec![When::Failure]);
    tr.set_policies(
        [(
            "backup".to_string(),
            Arc::new(NotifyPolicy {
                when: vec![When::Failure],
                to: vec!["hook".into()],
            }),
        )],
        2,
    );
    // Runs a minute apart: the third within the hour is suppressed.
    let mut kept = Vec::new();
    for n in 1..=3 {
        kept.push(events(&run(&mut tr, n, &[("a", 1, None)]))[0].2);
    }
    assert_eq!(kept, vec![false, false, true]);
    // An hour after the first, one more may go.
    assert!(!events(&run(&mut tr, 62, &[("a", 1, None)]))[0].2);
}

#[test]
fn a_huge_run_lists_at_most_max_targets() {
    let mut tr = tracker(vec![When::Failure]);
    let names: Vec<String> = (0..250).map(|i| format!("m{i}")).collect();
    let codes: Vec<(&str, i64, Option<&str>)> =
        names.iter().map(|n| (n.as_str(), 1, None)).collect();
    let d = run(&mut tr, 1, &codes).unwrap();
    let notice = &d.deliveries[0].notice;
    assert_eq!(notice.targets.len(), MAX_TARGETS);
    assert_eq!(notice.targets_omitted, 150);
    assert_eq!(notice.total, 250);
}

#[test]
fn a_retried_slot_is_told_once_after_its_last_attempt_with_every_target() {
    let mut tr = tracker(vec![When::Failure, When::Recovery]);
    let at = t(0);
    let start = |tr: &mut Tracker, instance: &str| {
        tr.observe(
            &RunEvent::Started {
                instance: instance.into(),
                job: "backup".into(),
                trigger: Trigger::Schedule,
                scheduled: Some(at),
                at,
                token: "x".into(),
            },
            Duration::ZERO,
            at,
        );
    };
    let end = |tr: &mut Tracker, instance: &str, codes: &[(&str, i64)]| {
        for (m, c) in codes {
            tr.observe(
                &RunEvent::TargetEnded {
                    instance: instance.into(),
                    machine: m.to_string(),
                    code: *c,
                    note: None,
                    at,
                },
                Duration::ZERO,
                at,
            );
        }
        let ok = codes.iter().filter(|c| c.1 == 0).count();
        tr.observe(
            &RunEvent::RunEnded {
                instance: instance.into(),
                success: ok == codes.len(),
                succeeded: ok,
                total: codes.len(),
                at,
            },
            Duration::ZERO,
            at,
        )
    };
    start(&mut tr, "backup_1");
    tr.will_retry("backup_1");
    assert!(
        end(&mut tr, "backup_1", &[("a", 0), ("b", 1)]).is_none(),
        "not the last attempt"
    );
    assert_eq!(
        tr.streak("backup"),
        Streak::default(),
        "the streak waits too"
    );
    start(&mut tr, "backup_1_retry2");
    tr.observe(
        &RunEvent::Attempt {
            instance: "backup_1_retry2".into(),
            first: "backup_1".into(),
            previous: "backup_1".into(),
            attempt: 2,
        },
        Duration::ZERO,
        at,
    );
    let d = end(&mut tr, "backup_1_retry2", &[("b", 3)]).unwrap();
    let notice = &d.deliveries[0].notice;
    assert_eq!(notice.event, Event::Failure);
    assert_eq!(notice.attempts, 2);
    assert_eq!(
        (notice.succeeded, notice.total),
        (1, 2),
        "a from the first attempt, b from the last"
    );
    assert_eq!(notice.summary, "failed on 1 of 2 targets");
    let machines: Vec<_> = notice
        .targets
        .iter()
        .map(|t| (t.machine.as_str(), t.code))
        .collect();
    assert_eq!(machines, [("b", Some(3)), ("a", Some(0))]);
    assert_eq!(notice.instance.as_deref(), Some("backup_1_retry2"));
}
