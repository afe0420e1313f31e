//! Planner tests with virtual time: every `now` is given, nothing sleeps.

use super::*;
use crate::config::{Loader, SourceFile};
use jiff::SignedDuration;

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

/// Fires as (job, slot, catch-up); a missed gap as (job, "first..last", count) with "missed:"
/// and its reason before the job name.
fn names(decisions: &[Decision]) -> Vec<(String, String, u64)> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::Fire(f) => (
                f.job.name.clone(),
                f.slot.to_string(),
                u64::from(f.catch_up),
            ),
            Decision::Missed(m) => (
                format!("missed:{}:{}", m.reason.as_str(), m.job.name),
                format!("{}..{}", m.first, m.last),
                m.count,
            ),
        })
        .collect()
}

fn fires(decisions: &[Decision]) -> Vec<&Fire> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Fire(f) => Some(f),
            Decision::Missed(_) => None,
        })
        .collect()
}

fn with_misfire(yaml: &str, policy: &str, window: u64, max: u32) -> String {
    yaml.replace(
        "  command:",
        &format!(
            "  misfire: {policy}\n  misfire_window: {window}\n  misfire_max: {max}\n  command:"
        ),
    )
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
fn a_stall_fires_the_current_slot_and_records_the_earlier_ones_as_one_gap() {
    let mut p = Planner::new();
    p.set_jobs(&jobs(&job("a", "0", "*")), t("2025-01-01T00:00:30Z"));
    let decided = p.due(t("2025-01-01T00:10:30Z"));
    assert_eq!(
        names(&decided),
        [
            (
                "missed:misfire policy:a".into(),
                "2025-01-01T00:01:00Z..2025-01-01T00:09:00Z".into(),
                9
            ),
            ("a".into(), "2025-01-01T00:10:00Z".into(), 0),
        ]
    );
    let Decision::Missed(gap) = &decided[0] else {
        unreachable!()
    };
    assert_eq!(
        gap.detail,
        "the daemon was late for 9 slots; misfire: latest (window 60 s): the latest was fired"
    );
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T00:11:00Z")));
}

#[test]
fn a_slot_later_than_the_window_is_never_fired() {
    let mut p = Planner::new();
    p.set_jobs(&jobs(&job("a", "0", "0")), t("2025-01-01T00:00:30Z"));
    // Two minutes late for the 01:00 slot: the default window is one minute.
    assert_eq!(
        names(&p.due(t("2025-01-01T01:02:00Z"))),
        [(
            "missed:misfire policy:a".into(),
            "2025-01-01T01:00:00Z..2025-01-01T01:00:00Z".into(),
            1
        )]
    );
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T02:00:00Z")));
}

/// A job every 20 s; the daemon was down from 00:00:00 (its last claimed slot) to 00:03:10.
fn after_downtime(policy: &str, window: u64, max: u32) -> Vec<(String, String, u64)> {
    let set = jobs(&with_misfire(&job("a", "*/20", "*"), policy, window, max));
    let now = t("2025-01-01T00:03:10Z");
    let mut p = Planner::resuming([("a".to_string(), t("2025-01-01T00:00:00Z"))].into(), now);
    p.set_jobs(&set, now);
    let decided = names(&p.due(now));
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T00:03:20Z")));
    decided
}

#[test]
fn after_downtime_skip_fires_nothing() {
    assert_eq!(
        after_downtime("skip", 60, 10),
        [(
            "missed:daemon down:a".into(),
            "2025-01-01T00:00:20Z..2025-01-01T00:03:00Z".into(),
            9
        )]
    );
}

#[test]
fn after_downtime_latest_fires_the_latest_within_the_window() {
    assert_eq!(
        after_downtime("latest", 60, 10),
        [
            (
                "missed:daemon down:a".into(),
                "2025-01-01T00:00:20Z..2025-01-01T00:02:40Z".into(),
                8
            ),
            ("a".into(), "2025-01-01T00:03:00Z".into(), 1),
        ]
    );
    // A window shorter than the delay: nothing is fired.
    assert_eq!(
        after_downtime("latest", 5, 10),
        [(
            "missed:daemon down:a".into(),
            "2025-01-01T00:00:20Z..2025-01-01T00:03:00Z".into(),
            9
        )]
    );
}

#[test]
fn after_downtime_all_fires_each_slot_within_the_window_up_to_the_cap() {
    // 00:02:20, 00:02:40 and 00:03:00 are within 60 s of 00:03:10.
    assert_eq!(
        after_downtime("all", 60, 10),
        [
            (
                "missed:daemon down:a".into(),
                "2025-01-01T00:00:20Z..2025-01-01T00:02:00Z".into(),
                6
            ),
            ("a".into(), "2025-01-01T00:02:20Z".into(), 1),
            ("a".into(), "2025-01-01T00:02:40Z".into(), 1),
            ("a".into(), "2025-01-01T00:03:00Z".into(), 1),
        ]
    );
    assert_eq!(
        after_downtime("all", 600, 2),
        [
            (
                "missed:daemon down:a".into(),
                "2025-01-01T00:00:20Z..2025-01-01T00:02:20Z".into(),
                7
            ),
            ("a".into(), "2025-01-01T00:02:40Z".into(), 1),
            ("a".into(), "2025-01-01T00:03:00Z".into(), 1),
        ]
    );
}

#[test]
fn three_days_down_with_a_job_every_minute_is_one_row() {
    let set = jobs(&job("a", "0", "*"));
    let now = t("2025-01-04T00:00:30Z");
    let mut p = Planner::resuming([("a".to_string(), t("2025-01-01T00:00:00Z"))].into(), now);
    p.set_jobs(&set, now);
    assert_eq!(
        names(&p.due(now)),
        [
            (
                "missed:daemon down:a".into(),
                "2025-01-01T00:01:00Z..2025-01-03T23:59:00Z".into(),
                4319
            ),
            ("a".into(), "2025-01-04T00:00:00Z".into(), 1),
        ]
    );
}

#[test]
fn a_job_new_to_the_ledger_and_a_ledger_far_ahead_start_from_now() {
    let set = jobs(&(job("a", "0", "*") + &job("b", "0", "*")));
    let now = t("2025-01-01T12:00:30Z");
    let mut p = Planner::resuming([("b".to_string(), t("2025-01-02T12:00:00Z"))].into(), now);
    p.set_jobs(&set, now);
    assert!(p.due(now).is_empty());
    assert_eq!(p.next_of("a"), Some(t("2025-01-01T12:01:00Z")));
    assert_eq!(p.next_of("b"), Some(t("2025-01-01T12:01:00Z")));
}

#[test]
fn a_clock_set_forward_makes_the_slots_it_skipped_misfires() {
    let mut p = Planner::new();
    p.set_jobs(
        &jobs(&with_misfire(&job("a", "0", "*"), "skip", 60, 1)),
        t("2025-01-01T10:00:30Z"),
    );
    assert_eq!(fires(&p.due(t("2025-01-01T10:01:00Z"))).len(), 1);
    p.clock_changed(t("2025-01-01T10:05:10Z"));
    assert_eq!(
        names(&p.due(t("2025-01-01T10:05:10Z"))),
        [(
            "missed:clock jump:a".into(),
            "2025-01-01T10:02:00Z..2025-01-01T10:05:00Z".into(),
            4
        )]
    );
    // Later lateness is the daemon's own again.
    let late = names(&p.due(t("2025-01-01T10:06:01Z")));
    assert_eq!(late, [("a".into(), "2025-01-01T10:06:00Z".into(), 0)]);
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
        fires(&p.due(t("2025-01-01T00:06:00Z")))
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
    let decided = p.due(t("2025-01-01T00:00:59Z"));
    // j1..j59 (seconds 1..59 of minute 0) fire, each once and on time; j0's slot was not
    // after the start; the others are later.
    assert_eq!(decided.len(), 59);
    assert!(fires(&decided).iter().all(|f| !f.catch_up));
    assert_eq!(p.next_deadline(), Some(t("2025-01-01T00:01:00Z")));
}

#[test]
fn instance_ids_never_collide() {
    let mut ids = InstanceIds::default();
    let at = t("2025-01-01T00:00:00Z");
    assert_eq!(InstanceIds::slot("a", at), "a_1735689600");
    assert_eq!(ids.manual("a", at), "a_1735689600_manual");
    assert_eq!(ids.manual("a", at), "a_1735689600_manual_1");
    assert_eq!(ids.manual("b", at), "b_1735689600_manual");
    assert_eq!(
        ids.manual("a", t("2025-01-01T00:00:00.5Z")),
        "a_1735689600_manual_2"
    );
    assert_eq!(
        ids.manual("a", t("2025-01-01T00:00:01Z")),
        "a_1735689601_manual"
    );
}

/// What the daemon does to the planner's decisions, as a ledger in memory: one row per
/// `(job, first slot)`, a second claim refused.
#[derive(Default)]
struct Ledger {
    /// job → first slot → (last slot, count, fired).
    rows: BTreeMap<String, BTreeMap<Timestamp, (Timestamp, u64, bool)>>,
    /// When each job was last planned afresh.
    planned: HashMap<String, Timestamp>,
}

impl Ledger {
    fn claim(&mut self, d: &Decision, now: Timestamp) -> Result<(), String> {
        let (job, first, last, count, fired) = match d {
            Decision::Fire(f) => {
                let late = now.duration_since(f.slot).as_secs();
                let window = f.job.misfire.window_secs as i64;
                if late > window {
                    return Err(format!("{} fired {late} s late (window {window})", f.slot));
                }
                (&f.job.name, f.slot, f.slot, 1, true)
            }
            Decision::Missed(m) => (&m.job.name, m.first, m.last, m.count, false),
        };
        let rows = self.rows.entry(job.clone()).or_default();
        if rows.insert(first, (last, count, fired)).is_some() {
            return Err(format!("{job}: slot {first} claimed twice"));
        }
        Ok(())
    }

    fn heads(&self) -> HashMap<String, Timestamp> {
        let mut heads = self.planned.clone();
        for (job, rows) in &self.rows {
            if let Some(last) = rows.values().map(|r| r.0).max() {
                let head = heads.entry(job.clone()).or_insert(last);
                *head = (*head).max(last);
            }
        }
        heads
    }

    fn planned(&mut self, changes: PlanChanges, now: Timestamp) {
        for job in changes.fresh {
            self.planned.insert(job, now);
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// The loop wakes this many ms later (a stall when past a slot).
    Wake(u64),
    /// The daemon stops and starts again this many seconds later.
    Restart(u64),
    /// The clock is set forward this many seconds.
    Jump(u64),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (1u64..30_000).prop_map(Step::Wake),
        1 => (1u64..400).prop_map(Step::Restart),
        1 => (1u64..400).prop_map(Step::Jump),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// For random schedules, policies, stalls, restarts and forward clock jumps, every slot due
    /// after the first start is in the ledger exactly once (fired, or inside one missed gap
    /// whose count is right), none is claimed twice, and none fires later than its window.
    #[test]
    fn every_due_slot_is_decided_exactly_once(
        specs in proptest::collection::vec(
            (1u32..40, 0usize..3, proptest::sample::select(vec![1u64, 5, 30, 60, 300]), 1u32..5),
            1..4,
        ),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let policies = ["skip", "latest", "all"];
        let mut yaml = String::new();
        for (i, (every, policy, window, max)) in specs.iter().enumerate() {
            yaml += &with_misfire(&job(&format!("j{i}"), &format!("*/{every}"), "*"), policies[*policy], *window, *max);
        }
        let set = jobs(&yaml);
        let start = t("2025-03-01T00:00:00.250Z");
        let mut now = start;
        let mut ledger = Ledger::default();
        let mut p = Planner::new();
        ledger.planned(p.set_jobs(&set, now), now);
        for s in &steps {
            match s {
                Step::Wake(ms) => now += SignedDuration::from_millis(*ms as i64),
                Step::Restart(secs) => {
                    now += SignedDuration::from_secs(*secs as i64);
                    p = Planner::resuming(ledger.heads(), now);
                    ledger.planned(p.set_jobs(&set, now), now);
                }
                Step::Jump(secs) => {
                    now += SignedDuration::from_secs(*secs as i64);
                    p.clock_changed(now);
                }
            }
            for d in p.due(now) {
                ledger.claim(&d, now).map_err(proptest::test_runner::TestCaseError::fail)?;
            }
        }
        for (name, job) in &set {
            let rows = ledger.rows.get(name).cloned().unwrap_or_default();
            let mut slot = job.schedule.next_after(start);
            let mut seen = 0usize;
            while let Some(at) = slot.filter(|s| *s <= now) {
                // The row covering `at`: the last one starting at or before it.
                let row = rows.range(..=at).next_back();
                proptest::prop_assert!(
                    row.is_some_and(|(_, (last, _, _))| *last >= at),
                    "{name}: slot {at} is in no row"
                );
                let (first, (last, count, _)) = row.unwrap();
                if at == *last {
                    let counted = misfire::count(&job.schedule, *first, *last).0;
                    proptest::prop_assert_eq!(counted, *count, "{}: row {} count", name, first);
                    seen += 1;
                }
                slot = job.schedule.next_after(at);
            }
            proptest::prop_assert_eq!(seen, rows.len(), "{}: rows past the clock or overlapping", name);
        }
    }
}
