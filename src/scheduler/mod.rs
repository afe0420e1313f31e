//! The planner: which jobs are due at `now` and when the next one is, for any number of jobs,
//! and what becomes of slots that were not fired at their second (the misfire policy).
//! Pure and driven by the `now` it is given, so its tests need no clock and no sleeping.
//!
//! Rules:
//! - each slot is decided once: fired, or missed (a whole gap as one [`Missed`]); what is
//!   fired and what is missed follows the job's [`crate::config::Misfire`] policy (`misfire.rs`);
//! - at start-up the plan resumes after each job's last claimed slot (from the ledger), so
//!   slots due while the daemon was down are decided, never forgotten;
//! - a reload keeps a job's next slot unless its schedule changed, so a reload never skips
//!   nor repeats a slot;
//! - a clock set forward makes the slots it skipped over misfires (reason `clock jump`); set
//!   back by less than [`BACKWARD_REPLAN_SECS`] it repeats nothing: jobs wait until the clock
//!   passes their last slot; set back further, the plan restarts from `now` (and the ledger
//!   refuses any slot already claimed).
//!
//! Must not know: Salt, sockets, the wall clock, the database.

mod misfire;
pub mod retry;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;

use crate::config::Job;
use crate::journal::MissReason;

/// A clock set back by more than this re-plans every job from the new time.
pub const BACKWARD_REPLAN_SECS: i64 = 3 * 3600;

/// One slot of one job to fire.
#[derive(Clone, Debug)]
pub struct Fire {
    pub job: Arc<Job>,
    /// The scheduled second this fire stands for.
    pub slot: Timestamp,
    /// Fired after its time by the misfire policy (the daemon was down, stalled past a later
    /// slot, or the clock jumped), rather than as the job's current slot.
    pub catch_up: bool,
}

/// A gap of slots of one job that were not fired: one record however many slots it holds.
#[derive(Clone, Debug)]
pub struct Missed {
    pub job: Arc<Job>,
    pub first: Timestamp,
    pub last: Timestamp,
    /// Slots from `first` to `last`; counted up to [`misfire::MAX_COUNTED`] (`exact` false
    /// past it).
    pub count: u64,
    pub exact: bool,
    pub reason: MissReason,
    /// Why, in words: the policy and the window.
    pub detail: String,
}

/// What the planner decided for a slot (or a gap of them).
#[derive(Clone, Debug)]
pub enum Decision {
    Fire(Fire),
    Missed(Missed),
}

impl Decision {
    pub fn job(&self) -> &Arc<Job> {
        match self {
            Decision::Fire(f) => &f.job,
            Decision::Missed(m) => &m.job,
        }
    }
}

#[derive(Debug)]
struct Entry {
    job: Arc<Job>,
    next: Option<Timestamp>,
    /// The slot most recently decided, so no slot is decided twice.
    last_slot: Option<Timestamp>,
    /// Bumped whenever `next` changes; heap items with an older generation are stale.
    generation: u64,
}

/// What a reload changed in the plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PlanChanges {
    pub added: Vec<String>,
    pub rescheduled: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    /// Added jobs planned from `now` (not resumed from the ledger): the daemon records when,
    /// so a restart knows slots from then on were due.
    pub fresh: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Planner {
    entries: HashMap<String, Entry>,
    /// Ordered by time, then name, so simultaneous fires come in a stable order.
    heap: BinaryHeap<Reverse<(Timestamp, String, u64)>>,
    last_now: Option<Timestamp>,
    /// When this daemon started planning: earlier slots were due while it was down.
    started: Option<Timestamp>,
    /// Each job's last claimed slot from the ledger, for the first job set only.
    resume: HashMap<String, Timestamp>,
    /// The clock was set forward from `.0` to `.1`: slots between were skipped over.
    jumped: Option<(Timestamp, Timestamp)>,
}

impl Planner {
    pub fn new() -> Planner {
        Planner::default()
    }

    /// A planner that goes on after each job's last claimed slot (from the ledger, or when it
    /// was last planned afresh): slots due since then, while the daemon was down, are decided by
    /// the misfire policy at the first [`Planner::due`]. Jobs it does not name start from
    /// `now` (and are listed in [`PlanChanges::fresh`]).
    pub fn resuming(last_claimed: HashMap<String, Timestamp>, now: Timestamp) -> Planner {
        Planner {
            started: Some(now),
            resume: last_claimed,
            ..Planner::default()
        }
    }

    /// Installs a new job set (start-up or reload).
    pub fn set_jobs(&mut self, jobs: &BTreeMap<String, Arc<Job>>, now: Timestamp) -> PlanChanges {
        let mut changes = PlanChanges::default();
        self.entries.retain(|name, _| {
            let keep = jobs.contains_key(name);
            if !keep {
                changes.removed.push(name.clone());
            }
            keep
        });
        // Only the first job set resumes from the ledger: a job added later starts afresh.
        let resume = std::mem::take(&mut self.resume);
        for (name, job) in jobs {
            match self.entries.get_mut(name) {
                Some(entry) if entry.job.schedule == job.schedule => {
                    if !Arc::ptr_eq(&entry.job, job) {
                        changes.updated.push(name.clone());
                    }
                    entry.job = job.clone();
                }
                Some(entry) => {
                    changes.rescheduled.push(name.clone());
                    entry.job = job.clone();
                    let from = entry.last_slot.map_or(now, |s| s.max(now));
                    let next = entry.job.schedule.next_after(from);
                    Self::reschedule(&mut self.heap, name, entry, next);
                }
                None => {
                    changes.added.push(name.clone());
                    // After the last claimed slot, unless that is far ahead of the clock (the
                    // clock was set back a lot while the daemon was down): then from now.
                    let from = match resume.get(name) {
                        Some(last)
                            if last.as_second() <= now.as_second() + BACKWARD_REPLAN_SECS =>
                        {
                            *last
                        }
                        _ => {
                            changes.fresh.push(name.clone());
                            now
                        }
                    };
                    let mut entry = Entry {
                        job: job.clone(),
                        next: None,
                        last_slot: resume.get(name).copied(),
                        generation: 0,
                    };
                    let next = job.schedule.next_after(from);
                    Self::reschedule(&mut self.heap, name, &mut entry, next);
                    self.entries.insert(name.clone(), entry);
                }
            }
        }
        self.drop_stale();
        changes
    }

    /// The next time something is due, if any job has a future slot.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next slot of one job.
    pub fn next_of(&self, job: &str) -> Option<Timestamp> {
        self.entries.get(job).and_then(|e| e.next)
    }

    /// Decides every slot due at `now`, each once: per job, the gap of slots not fired first
    /// (as one [`Missed`]), then the fires in slot order.
    pub fn due(&mut self, now: Timestamp) -> Vec<Decision> {
        self.observe(now);
        let mut decisions = Vec::new();
        while let Some(Reverse((at, _, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Reverse((first, name, generation)) = self.heap.pop().expect("peeked");
            let Some(entry) = self.entries.get_mut(&name) else {
                continue;
            };
            if entry.generation != generation {
                continue;
            }
            let cause = if self.started.is_some_and(|s| first < s) {
                misfire::Cause::DaemonDown
            } else if self
                .jumped
                .is_some_and(|(from, to)| first > from && first <= to)
            {
                misfire::Cause::ClockJump
            } else {
                misfire::Cause::Late
            };
            let plan = misfire::plan(&entry.job.schedule, first, now, entry.job.misfire, cause);
            if let Some(gap) = plan.missed {
                decisions.push(Decision::Missed(Missed {
                    job: entry.job.clone(),
                    first: gap.first,
                    last: gap.last,
                    count: gap.count,
                    exact: gap.exact,
                    reason: cause.reason(),
                    detail: misfire::detail(entry.job.misfire, cause, &plan.fires, gap.count),
                }));
            }
            for &(slot, catch_up) in &plan.fires {
                decisions.push(Decision::Fire(Fire {
                    job: entry.job.clone(),
                    slot,
                    catch_up,
                }));
            }
            entry.last_slot = Some(plan.last);
            let next = entry.job.schedule.next_after(now.max(plan.last));
            Self::reschedule(&mut self.heap, &name, entry, next);
        }
        self.jumped = None;
        self.drop_stale();
        decisions
    }

    /// The clock was set: slots it skipped over going forward are misfires; going back far,
    /// the plan restarts (see module doc).
    pub fn clock_changed(&mut self, now: Timestamp) {
        if let Some(last) = self.last_now.filter(|last| now > *last) {
            self.jumped = Some((last, now));
        }
        self.observe(now);
    }

    /// Notes the time, re-planning after a large backward jump however it was noticed.
    fn observe(&mut self, now: Timestamp) {
        if self
            .last_now
            .is_some_and(|last| now.as_second() < last.as_second() - BACKWARD_REPLAN_SECS)
        {
            self.replan(now);
        }
        self.last_now = Some(now);
    }

    fn replan(&mut self, now: Timestamp) {
        for (name, entry) in &mut self.entries {
            entry.last_slot = None;
            let next = entry.job.schedule.next_after(now);
            Self::reschedule(&mut self.heap, name, entry, next);
        }
        self.drop_stale();
    }

    fn reschedule(
        heap: &mut BinaryHeap<Reverse<(Timestamp, String, u64)>>,
        name: &str,
        entry: &mut Entry,
        next: Option<Timestamp>,
    ) {
        entry.generation += 1;
        entry.next = next;
        if let Some(at) = next {
            heap.push(Reverse((at, name.to_string(), entry.generation)));
        }
    }

    /// Keeps the heap's top valid (so `next_deadline` is exact) and its size bounded.
    fn drop_stale(&mut self) {
        if self.heap.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.heap
                .retain(|Reverse((_, n, g))| entries.get(n).is_some_and(|e| e.generation == *g));
        }
        while let Some(Reverse((_, n, g))) = self.heap.peek() {
            if self.entries.get(n).is_some_and(|e| e.generation == *g) {
                break;
            }
            self.heap.pop();
        }
    }
}

/// Run instance ids. A scheduled run's is its slot's Unix second, as in the original, so a
/// slot launched again (after a restart) is recognisable by the wrappers' lock and the hub; a
/// manual run's is the second it was asked for with `_manual` (and `_<n>` within one second),
/// so it never takes a slot's id.
#[derive(Debug, Default)]
pub struct InstanceIds {
    last: HashMap<String, (i64, u32)>,
}

impl InstanceIds {
    pub fn slot(job: &str, slot: Timestamp) -> String {
        format!("{job}_{}", slot.as_second())
    }

    pub fn manual(&mut self, job: &str, at: Timestamp) -> String {
        let secs = at.as_second();
        let last = self.last.entry(job.to_string()).or_insert((i64::MIN, 0));
        if last.0 >= secs {
            // Same second (or a clock set back): count up from the last id used.
            last.1 += 1;
            format!("{job}_{}_manual_{}", last.0, last.1)
        } else {
            *last = (secs, 0);
            format!("{job}_{secs}_manual")
        }
    }
}

#[cfg(test)]
mod tests;
