//! The planner: which jobs are due at `now` and when the next one is, for any number of jobs.
//! Pure and driven by the `now` it is given, so its tests need no clock and no sleeping.
//!
//! Rules:
//! - each slot fires once; slots missed while the daemon was stalled or the clock jumped
//!   forward are coalesced into one fire of the latest missed slot (`missed` counts the rest);
//! - a reload keeps a job's next slot unless its schedule changed, so a reload never skips
//!   nor repeats a slot;
//! - a clock set back by less than [`BACKWARD_REPLAN_SECS`] repeats nothing: jobs wait until
//!   the clock passes their last fired slot; set back further, the plan restarts from `now`.
//!
//! Must not know: Salt, sockets, the wall clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;

use crate::config::Job;

/// A clock set back by more than this re-plans every job from the new time.
pub const BACKWARD_REPLAN_SECS: i64 = 3 * 3600;

/// Bound on the missed slots counted one by one when coalescing a long stall.
const MAX_MISSED_COUNTED: u64 = 100_000;

/// One due slot of one job.
#[derive(Clone, Debug)]
pub struct Fire {
    pub job: Arc<Job>,
    /// The scheduled second this fire stands for.
    pub slot: Timestamp,
    /// Earlier slots that were missed and coalesced into this fire.
    pub missed: u64,
}

#[derive(Debug)]
struct Entry {
    job: Arc<Job>,
    next: Option<Timestamp>,
    /// The slot most recently fired, so no slot fires twice.
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
}

#[derive(Debug, Default)]
pub struct Planner {
    entries: HashMap<String, Entry>,
    /// Ordered by time, then name, so simultaneous fires come in a stable order.
    heap: BinaryHeap<Reverse<(Timestamp, String, u64)>>,
    last_now: Option<Timestamp>,
}

impl Planner {
    pub fn new() -> Planner {
        Planner::default()
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
                    let mut entry = Entry {
                        job: job.clone(),
                        next: None,
                        last_slot: None,
                        generation: 0,
                    };
                    let next = job.schedule.next_after(now);
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

    /// Takes every job due at `now`, each once.
    pub fn due(&mut self, now: Timestamp) -> Vec<Fire> {
        self.observe(now);
        let mut fires = Vec::new();
        while let Some(Reverse((at, _, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Reverse((at, name, generation)) = self.heap.pop().expect("peeked");
            let Some(entry) = self.entries.get_mut(&name) else {
                continue;
            };
            if entry.generation != generation {
                continue;
            }
            // Coalesce slots that are already past into one fire of the latest.
            let mut slot = at;
            let mut missed = 0;
            let mut next = entry.job.schedule.next_after(slot);
            while let Some(n) = next.filter(|n| *n <= now) {
                missed += 1;
                slot = n;
                if missed >= MAX_MISSED_COUNTED {
                    next = entry.job.schedule.next_after(now);
                    break;
                }
                next = entry.job.schedule.next_after(n);
            }
            entry.last_slot = Some(slot);
            fires.push(Fire {
                job: entry.job.clone(),
                slot,
                missed,
            });
            Self::reschedule(&mut self.heap, &name, entry, next);
        }
        self.drop_stale();
        fires
    }

    /// The clock was set: re-plan if it went back far, else keep the plan (see module doc).
    pub fn clock_changed(&mut self, now: Timestamp) {
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

/// Allocates run instance ids: the fire's Unix second, as in the original, with a `_<n>`
/// suffix when the same job already used that second, so ids never collide.
#[derive(Debug, Default)]
pub struct InstanceIds {
    last: HashMap<String, (i64, u32)>,
}

impl InstanceIds {
    pub fn next(&mut self, job: &str, at: Timestamp) -> String {
        let secs = at.as_second();
        let slot = self.last.entry(job.to_string()).or_insert((i64::MIN, 0));
        if slot.0 >= secs {
            // Same second (or a clock set back): count up from the last id used.
            slot.1 += 1;
            format!("{}_{}", slot.0, slot.1)
        } else {
            *slot = (secs, 0);
            secs.to_string()
        }
    }
}

#[cfg(test)]
mod tests;
