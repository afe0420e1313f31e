//! Retries of failed targets, as a sans-IO state machine: it follows the journal's runs, and
//! when a run of a job with `retries` ends with targets that failed (not those killed on
//! request), plans another attempt of the same slot for those targets only, after
//! `retry_delay` doubled for each attempt before. Driven by events and wall-clock `now`
//! (a restart resumes the stored plans at their due time).
//!
//! Must not know: the store, Salt, clocks.

use std::collections::{BTreeSet, HashMap};

use jiff::{SignedDuration, Timestamp};

use crate::engine::codes;
use crate::journal::RunEvent;

/// The longest wait between two attempts, whatever the doubling says.
pub const MAX_WAIT: SignedDuration = SignedDuration::from_hours(6);

/// The plan is plain journal data (the store keeps it for a restart).
pub use crate::journal::RetryPlan as Plan;

struct Watch {
    job: String,
    first: String,
    attempt: u32,
    slot: Option<Timestamp>,
    failed: Vec<String>,
}

#[derive(Default)]
pub struct Retries {
    /// Per job: (retries, first delay in seconds).
    policies: HashMap<String, (u32, u64)>,
    runs: HashMap<String, Watch>,
    /// Attempts planned, by due time (then the attempt's instance, unique).
    pending: BTreeSet<(Timestamp, String)>,
    plans: HashMap<String, Plan>,
}

impl Retries {
    /// Each job's `retries` and `retry_delay` (jobs without retries are left out).
    pub fn set_policies(&mut self, policies: impl IntoIterator<Item = (String, u32, u64)>) {
        self.policies = policies
            .into_iter()
            .filter(|(_, n, _)| *n > 0)
            .map(|(job, n, delay)| (job, (n, delay)))
            .collect();
    }

    /// Plans stored before a restart.
    pub fn resume(&mut self, plans: impl IntoIterator<Item = Plan>) {
        for plan in plans {
            self.pending.insert((plan.due, plan.instance()));
            self.plans.insert(plan.instance(), plan);
        }
    }

    /// A run of an attempt after the first started (so its end is attempt `attempt`).
    pub fn attempt_started(&mut self, instance: &str, first: &str, attempt: u32) {
        if let Some(w) = self.runs.get_mut(instance) {
            w.first = first.to_string();
            w.attempt = attempt;
        }
    }

    /// Follows one journal event; a run's end may plan another attempt.
    pub fn observe(&mut self, event: &RunEvent, now: Timestamp) -> Option<Plan> {
        match event {
            RunEvent::Started {
                instance,
                job,
                scheduled,
                ..
            } => {
                if self.policies.contains_key(job) {
                    self.runs.insert(
                        instance.clone(),
                        Watch {
                            job: job.clone(),
                            first: instance.clone(),
                            attempt: 1,
                            slot: *scheduled,
                            failed: Vec::new(),
                        },
                    );
                }
                None
            }
            RunEvent::TargetEnded {
                instance,
                machine,
                code,
                ..
            } => {
                // A kill on request is a decision, not a failure to try again.
                if *code != 0
                    && *code != codes::KILLED
                    && let Some(w) = self.runs.get_mut(instance)
                {
                    w.failed.push(machine.clone());
                }
                None
            }
            RunEvent::RunEnded { instance, .. } => {
                let w = self.runs.remove(instance)?;
                let &(retries, delay) = self.policies.get(&w.job)?;
                if w.failed.is_empty() || w.attempt > retries {
                    return None;
                }
                // retry_delay, doubled for each attempt before this one.
                let wait = SignedDuration::from_secs(delay as i64)
                    .checked_mul(1 << (w.attempt - 1).min(20))
                    .unwrap_or(MAX_WAIT)
                    .min(MAX_WAIT);
                let plan = Plan {
                    job: w.job,
                    previous: instance.clone(),
                    first: w.first,
                    attempt: w.attempt + 1,
                    slot: w.slot,
                    machines: w.failed,
                    due: now.checked_add(wait).unwrap_or(now),
                };
                self.pending.insert((plan.due, plan.instance()));
                self.plans.insert(plan.instance(), plan.clone());
                Some(plan)
            }
            _ => None,
        }
    }

    /// When the next planned attempt is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.pending.first().map(|(at, _)| *at)
    }

    /// The attempts due by `now`, oldest first (each handed out once).
    pub fn due(&mut self, now: Timestamp) -> Vec<Plan> {
        let mut out = Vec::new();
        while let Some((at, instance)) = self.pending.first().cloned() {
            if at > now {
                break;
            }
            self.pending.pop_first();
            if let Some(plan) = self.plans.remove(&instance) {
                out.push(plan);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Trigger;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn started(r: &mut Retries, instance: &str, trigger: Trigger, at: i64) {
        r.observe(
            &RunEvent::Started {
                instance: instance.into(),
                job: "backup".into(),
                trigger,
                scheduled: Some(t(0)),
                at: t(at),
                token: "x".into(),
            },
            t(at),
        );
    }

    fn ended(r: &mut Retries, instance: &str, at: i64, codes: &[(&str, i64)]) -> Option<Plan> {
        for (machine, code) in codes {
            r.observe(
                &RunEvent::TargetEnded {
                    instance: instance.into(),
                    machine: machine.to_string(),
                    code: *code,
                    note: None,
                    at: t(at),
                },
                t(at),
            );
        }
        r.observe(
            &RunEvent::RunEnded {
                instance: instance.into(),
                success: codes.iter().all(|c| c.1 == 0),
                succeeded: codes.iter().filter(|c| c.1 == 0).count(),
                total: codes.len(),
                at: t(at),
            },
            t(at),
        )
    }

    /// A slot's first run, ending at `at` with these codes.
    fn run(r: &mut Retries, instance: &str, at: i64, codes: &[(&str, i64)]) -> Option<Plan> {
        started(r, instance, Trigger::Schedule, at);
        ended(r, instance, at, codes)
    }

    /// The run of `plan`, ending at `at` with these codes.
    fn attempt(r: &mut Retries, plan: &Plan, at: i64, codes: &[(&str, i64)]) -> Option<Plan> {
        let instance = plan.instance();
        started(r, &instance, Trigger::Retry, at);
        r.attempt_started(&instance, &plan.first, plan.attempt);
        ended(r, &instance, at, codes)
    }

    #[test]
    fn failed_targets_only_are_tried_again_with_a_doubling_delay() {
        let mut r = Retries::default();
        r.set_policies([("backup".to_string(), 2, 60)]);
        let plan = run(&mut r, "backup_1", 10, &[("a", 0), ("b", 1), ("c", 124)]).unwrap();
        assert_eq!(plan.machines, ["b", "c"]);
        assert_eq!((plan.attempt, plan.due), (2, t(70)));
        assert_eq!(plan.instance(), "backup_1_retry2");
        assert_eq!(plan.slot, Some(t(0)));
        assert_eq!(r.next_due(), Some(t(70)));
        assert!(r.due(t(69)).is_empty());
        assert_eq!(r.due(t(70)), std::slice::from_ref(&plan));
        assert!(r.due(t(1000)).is_empty(), "handed out once");
        // The second attempt fails on one: the third waits twice as long.
        let third = attempt(&mut r, &plan, 80, &[("b", 0), ("c", 1)]).unwrap();
        assert_eq!((third.attempt, third.due), (3, t(200)));
        assert_eq!(third.first, "backup_1");
        assert_eq!(third.previous, "backup_1_retry2");
        assert_eq!(third.instance(), "backup_1_retry3");
        assert_eq!(third.machines, ["c"]);
    }

    #[test]
    fn no_retry_past_the_last_attempt_for_kills_or_without_retries() {
        let mut r = Retries::default();
        r.set_policies([("backup".to_string(), 1, 5), ("other".to_string(), 0, 5)]);
        // Killed on request: not tried again.
        assert!(run(&mut r, "backup_1", 0, &[("a", codes::KILLED)]).is_none());
        // All good: nothing to try again.
        assert!(run(&mut r, "backup_2", 0, &[("a", 0)]).is_none());
        let plan = run(&mut r, "backup_3", 0, &[("a", 1)]).unwrap();
        r.due(plan.due);
        assert!(
            attempt(&mut r, &plan, 6, &[("a", 1)]).is_none(),
            "retries: 1 allows one more attempt only"
        );
    }

    #[test]
    fn a_restart_resumes_the_planned_attempts() {
        let mut before = Retries::default();
        before.set_policies([("backup".to_string(), 3, 60)]);
        let plan = run(&mut before, "backup_1", 0, &[("a", 1)]).unwrap();
        let mut after = Retries::default();
        after.resume([plan.clone()]);
        assert_eq!(after.next_due(), Some(plan.due));
        assert_eq!(after.due(plan.due), [plan]);
    }
}
