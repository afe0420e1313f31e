//! Planner tests with virtual time: every `now` is given, nothing sleeps.

use super::*;
use crate::config::{Loader, SourceFile};

fn jobs(yaml: &str) -> BTreeMap<String, Arc<Job>> {
    let file = SourceFile {
        path: "t.yaml".into(),
        group: "t".into(),
        text: Ok(yaml.into()),
    };
    let loaded = Loader::new("h").load(&[file]);
    assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
    loaded.config.jobs
}

fn job(name: &str, sec: &str, min: &str) -> String {
    format!(
        "{name}:\n  sec: '{sec}'\n  min: '{min}'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: '*'\n  command: 'true'\n"
    )
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn names(fires: &[Fire]) -> Vec<(String, String, u64)> {
    fires
        .iter()
        .map(|f| (f.job.name.clone(), f.slot.to_string(), f.missed))
        .collect()
}

#[test]
fn fires_each_slot_once_at_its_second() {
    let mut p = Planner::new();
    p.set_jobs(
        &jobs(&(job("a", "*/10", "*") + &job("b", "5", "*"))),
        t("2025-01-01T00:00:00Z"),
    );
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T00:00:05Z")));
    assert!(p.due(t("2025-01-01T00:00:04.999Z")).is_empty());
    assert_eq!(
        names(&p.due(t("2025-01-01T00:00:05Z"))),
        [("b".into(), "2025-01-01T00:00:05Z".into(), 0)]
    );
    // Asked again at the same instant: nothing fires twice.
    assert!(p.due(t("2025-01-01T00:00:05Z")).is_empty());
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T00:00:10Z")));
    assert_eq!(
        names(&p.due(t("2025-01-01T00:00:10.2Z"))),
        [("a".into(), "2025-01-01T00:00:10Z".into(), 0)]
    );
}

#[test]
fn a_stall_coalesces_missed_slots_into_one_fire() {
    let mut p = Planner::new();
    p.set_jobs(&jobs(&job("a", "0", "*")), t("2025-01-01T00:00:30Z"));
    let fires = p.due(t("2025-01-01T00:10:30Z"));
    assert_eq!(
        names(&fires),
        [("a".into(), "2025-01-01T00:10:00Z".into(), 9)]
    );
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T00:11:00Z")));
}

#[test]
fn reload_keeps_unchanged_slots_and_reschedules_changed_ones() {
    let mut p = Planner::new();
    let now = t("2025-01-01T00:00:00Z");
    p.set_jobs(
        &jobs(&(job("a", "0", "*/5") + &job("b", "0", "*/5") + &job("c", "0", "*"))),
        now,
    );
    let later = t("2025-01-01T00:02:00Z");
    let changes = p.set_jobs(
        &jobs(
            &(job("a", "0", "*/5")
                + &job("b", "0", "*/3").replace("'true'", "'x'")
                + &job("d", "0", "*")),
        ),
        later,
    );
    assert_eq!(changes.added, ["d"]);
    assert_eq!(changes.rescheduled, ["b"]);
    assert_eq!(changes.removed, ["c"]);
    assert_eq!(p.next_of("a"), Some(t("2025-01-01T00:05:00Z")));
    assert_eq!(p.next_of("b"), Some(t("2025-01-01T00:03:00Z")));
    let fired = names(&p.due(t("2025-01-01T00:03:00Z")));
    assert_eq!(
        fired,
        [
            ("b".into(), "2025-01-01T00:03:00Z".into(), 0),
            ("d".into(), "2025-01-01T00:03:00Z".into(), 0)
        ]
    );
    // A reloaded spec is what the next fire carries.
    assert_eq!(
        p.due(t("2025-01-01T00:06:00Z"))
            .iter()
            .find(|f| f.job.name == "b")
            .unwrap()
            .job
            .command,
        "x"
    );
}

#[test]
fn a_small_backward_jump_repeats_nothing_a_large_one_replans() {
    let mut p = Planner::new();
    p.set_jobs(&jobs(&job("a", "0", "*")), t("2025-01-01T10:00:30Z"));
    assert_eq!(p.due(t("2025-01-01T10:01:00Z")).len(), 1);
    // Back one hour: the plan stays ahead, 09:02..10:01 are not repeated.
    p.clock_changed(t("2025-01-01T09:01:30Z"));
    assert!(p.due(t("2025-01-01T09:02:00Z")).is_empty());
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T10:02:00Z")));
    // Back a day: re-planned from the new time.
    p.clock_changed(t("2024-12-31T09:00:30Z"));
    assert_eq!(p.next_deadline(), Some(t("2024-12-31T09:01:00Z")));
    assert_eq!(p.due(t("2024-12-31T09:01:00Z")).len(), 1);
}

#[test]
fn the_deadline_is_the_earliest_of_many_jobs() {
    let mut yaml = String::new();
    for i in 0..2_000 {
        yaml += &job(
            &format!("j{i}"),
            &(i % 60).to_string(),
            &((i / 60) % 60).to_string(),
        );
    }
    let mut p = Planner::new();
    p.set_jobs(&jobs(&yaml), t("2025-01-01T00:00:00Z"));
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T00:00:01Z")));
    let fired = p.due(t("2025-01-01T00:59:59Z"));
    // Every job once, except j0, whose slot (00:00:00) was not after the start.
    assert_eq!(fired.len(), 1_999);
    assert!(fired.iter().all(|f| f.job.name != "j0" && f.missed == 0));
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T01:00:00Z")));
}

#[test]
fn instance_ids_never_collide() {
    let mut ids = InstanceIds::default();
    let at = t("2025-01-01T00:00:00Z");
    assert_eq!(ids.next("a", at), "1735689600");
    assert_eq!(ids.next("a", at), "1735689600_1");
    assert_eq!(ids.next("b", at), "1735689600");
    assert_eq!(ids.next("a", t("2025-01-01T00:00:00.5Z")), "1735689600_2");
    assert_eq!(ids.next("a", t("2025-01-01T00:00:01Z")), "1735689601");
}
