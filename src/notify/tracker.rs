//! When a job's runs call for a notification, as a sans-IO state machine: it follows every
//! run's journal events (and missed slots), keeps each job's failure streak, and decides which
//! notices go to which channels at a run's end, for a missed slot, or when a run has gone on
//! past `running_longer_than`. Driven by the events it is given and `now`; it sends nothing
//! (the outbox does, from the store).
//!
//! Must not know: channels' transports, the store, clocks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::notice::{Event, MAX_TARGETS, Notice, TargetResult};
use crate::config::notify::{NotifyPolicy, When};
use crate::engine::{codes, meaning};
use crate::journal::{Claim, NewDelivery, Notified, RunEvent, SlotFate};

/// A job's failures in a row, as stored with each decision (a restart resumes it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streak {
    /// Failed runs in a row (0 after a success).
    pub failures: u32,
    /// Someone was told of a failure in this streak (so its end is worth a `recovery`).
    pub told: bool,
}

/// One notice for one channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub channel: String,
    pub notice: Arc<Notice>,
    /// Past `notify_max_per_hour` for the job: recorded, not sent.
    pub suppressed: bool,
}

/// What one event decided for a job: its streak from now on, and what to send. Stored in one
/// transaction with the event that caused it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    pub job: String,
    /// `None`: the streak did not change (a missed slot, a long run).
    pub streak: Option<Streak>,
    pub deliveries: Vec<Outgoing>,
}

impl Decided {
    /// As the journal records it (for the outbox), decided at `at`.
    pub fn into_event(self, at: Timestamp) -> RunEvent {
        RunEvent::Notified(self.into_notified(at))
    }

    pub fn into_notified(self, at: Timestamp) -> Notified {
        Notified {
            job: self.job,
            streak: self.streak.map(|s| (s.failures, s.told)),
            deliveries: self
                .deliveries
                .into_iter()
                .map(|o| NewDelivery {
                    channel: o.channel,
                    event: o.notice.event.as_str().to_string(),
                    instance: o.notice.instance.clone(),
                    slot: o.notice.slot.as_deref().and_then(|s| s.parse().ok()),
                    body: o.notice.to_json(),
                    suppressed: o.suppressed,
                })
                .collect(),
            at,
        }
    }
}

/// A run in flight before a restart, as the store has it.
pub struct Adopted<'a> {
    pub instance: &'a str,
    pub job: &'a str,
    pub started: Timestamp,
    pub slot: Option<Timestamp>,
    /// Targets that had ended, with their codes.
    pub done: &'a [(String, i64)],
}

/// The runs followed, per instance.
struct Watch {
    job: String,
    trigger: String,
    slot: Option<Timestamp>,
    started: Timestamp,
    /// Failed targets first in the notice; both lists capped at [`MAX_TARGETS`].
    failed: Vec<TargetResult>,
    ok: Vec<TargetResult>,
    failed_count: usize,
    ok_count: usize,
    /// Why the launch failed (126/127, Salt refused, nothing reached the master).
    launch_failure: Option<String>,
    /// Another attempt of the slot follows this run: its end decides nothing.
    retrying: bool,
    /// The slot's first run, for an attempt after the first.
    first: Option<String>,
    /// This run's attempt of its slot.
    attempt: u32,
    /// Targets that succeeded in the slot's earlier attempts (`ok` holds them first).
    earlier_ok: usize,
}

impl Watch {
    fn new(job: &str, trigger: &str, slot: Option<Timestamp>, started: Timestamp) -> Watch {
        Watch {
            job: job.to_string(),
            trigger: trigger.to_string(),
            slot,
            started,
            failed: Vec::new(),
            ok: Vec::new(),
            failed_count: 0,
            ok_count: 0,
            launch_failure: None,
            retrying: false,
            first: None,
            attempt: 1,
            earlier_ok: 0,
        }
    }
}

/// What the attempts of a slot so far leave to its next: the targets that succeeded.
struct Chain {
    ok: Vec<TargetResult>,
    ok_count: usize,
}

pub struct Tracker {
    policies: HashMap<String, Arc<NotifyPolicy>>,
    max_per_hour: u32,
    daemon: String,
    runs: HashMap<String, Watch>,
    streaks: HashMap<String, Streak>,
    /// Per job, the wall-clock times of deliveries sent in the last hour (at most
    /// `max_per_hour` each).
    sent: HashMap<String, VecDeque<Timestamp>>,
    /// `running_longer_than` deadlines: (monotonic deadline, instance).
    long: BTreeSet<(Duration, String)>,
    /// Slots whose next attempt is planned, by their first run.
    chains: HashMap<String, Chain>,
}

impl Tracker {
    /// `daemon`: this host's name, carried in every notice.
    pub fn new(daemon: &str) -> Tracker {
        Tracker {
            policies: HashMap::new(),
            max_per_hour: 20,
            daemon: daemon.to_string(),
            runs: HashMap::new(),
            streaks: HashMap::new(),
            sent: HashMap::new(),
            long: BTreeSet::new(),
            chains: HashMap::new(),
        }
    }

    /// Each job's policy (jobs without one are told nothing) and the rate limit; on every
    /// config load. Runs in flight keep being followed.
    pub fn set_policies(
        &mut self,
        policies: impl IntoIterator<Item = (String, Arc<NotifyPolicy>)>,
        max_per_hour: u32,
    ) {
        self.policies = policies.into_iter().collect();
        self.max_per_hour = max_per_hour.max(1);
    }

    /// The streaks stored before a restart.
    pub fn resume(&mut self, streaks: impl IntoIterator<Item = (String, Streak)>) {
        self.streaks.extend(streaks);
    }

    pub fn streak(&self, job: &str) -> Streak {
        self.streaks.get(job).copied().unwrap_or_default()
    }

    /// A run that was in flight before a restart, followed from now on (its targets that had
    /// ended are not in its notice; their count is).
    pub fn adopt(&mut self, run: Adopted<'_>, mono: Duration, wall: Timestamp) {
        if !self.policies.contains_key(run.job) {
            return;
        }
        let trigger = if run.slot.is_some() {
            "schedule"
        } else {
            "manual"
        };
        let mut watch = Watch::new(run.job, trigger, run.slot, run.started);
        for (machine, code) in run.done {
            let result = TargetResult {
                machine: machine.clone(),
                code: Some(*code),
                meaning: meaning(*code).to_string(),
                note: None,
            };
            let (list, count) = if *code == 0 {
                (&mut watch.ok, &mut watch.ok_count)
            } else {
                (&mut watch.failed, &mut watch.failed_count)
            };
            *count += 1;
            if list.len() < MAX_TARGETS {
                list.push(result);
            }
        }
        self.runs.insert(run.instance.to_string(), watch);
        self.arm_long(run.instance, run.job, run.started, mono, wall);
    }

    fn arm_long(
        &mut self,
        instance: &str,
        job: &str,
        started: Timestamp,
        mono: Duration,
        wall: Timestamp,
    ) {
        let Some(secs) = self.policies.get(job).and_then(|p| {
            p.when.iter().find_map(|w| match w {
                When::RunningLongerThan(s) => Some(*s),
                _ => None,
            })
        }) else {
            return;
        };
        // Counted from the run's start, on the monotonic clock from here on.
        let elapsed = wall.duration_since(started).unsigned_abs();
        let left = Duration::from_secs(secs).saturating_sub(elapsed);
        self.long.insert((mono + left, instance.to_string()));
    }

    /// Another attempt follows this run (`retries`): its end decides nothing; the slot's last
    /// attempt does, with the targets that succeeded before it.
    pub fn will_retry(&mut self, instance: &str) {
        if let Some(w) = self.runs.get_mut(instance) {
            w.retrying = true;
        }
    }

    /// Follows one journal event; a run's end may decide notices.
    pub fn observe(
        &mut self,
        event: &RunEvent,
        mono: Duration,
        wall: Timestamp,
    ) -> Option<Decided> {
        match event {
            RunEvent::Started {
                instance,
                job,
                trigger,
                scheduled,
                at,
                ..
            } => {
                // Runs of jobs nobody is told of are not followed (a policy added by a reload
                // applies from the job's next run).
                if !self.policies.contains_key(job) {
                    return None;
                }
                self.runs.insert(
                    instance.clone(),
                    Watch::new(job, trigger.as_str(), *scheduled, *at),
                );
                self.arm_long(instance, job, *at, mono, wall);
                None
            }
            RunEvent::TargetEnded {
                instance,
                machine,
                code,
                note,
                ..
            } => {
                let watch = self.runs.get_mut(instance)?;
                let result = TargetResult {
                    machine: machine.clone(),
                    code: Some(*code),
                    meaning: meaning(*code).to_string(),
                    note: note.clone(),
                };
                if *code == 0 {
                    watch.ok_count += 1;
                    if watch.ok.len() < MAX_TARGETS {
                        watch.ok.push(result);
                    }
                } else {
                    // Saltpeter's or Salt's 126/127 carry a note; a command's own do not.
                    if matches!(*code, codes::NOT_EXECUTABLE | codes::NOT_FOUND)
                        && note.is_some()
                        && watch.launch_failure.is_none()
                    {
                        watch.launch_failure = Some(format!(
                            "the wrapper could not start on {machine}: {}",
                            note.as_deref().unwrap_or(meaning(*code))
                        ));
                    }
                    watch.failed_count += 1;
                    if watch.failed.len() < MAX_TARGETS {
                        watch.failed.push(result);
                    }
                }
                None
            }
            RunEvent::Attempt {
                instance,
                first,
                attempt,
                ..
            } => {
                let watch = self.runs.get_mut(instance)?;
                watch.first = Some(first.clone());
                watch.attempt = *attempt;
                if let Some(chain) = self.chains.remove(first) {
                    let mut ok = chain.ok;
                    ok.append(&mut watch.ok);
                    ok.truncate(MAX_TARGETS);
                    watch.ok = ok;
                    watch.earlier_ok = chain.ok_count;
                }
                None
            }
            RunEvent::NotLaunched { instance, why, .. } => {
                if let Some(watch) = self.runs.get_mut(instance) {
                    watch.launch_failure = Some(format!("nothing reached the Salt master: {why}"));
                }
                None
            }
            RunEvent::RunEnded {
                instance,
                success,
                succeeded,
                total,
                at,
            } => {
                let watch = self.runs.remove(instance)?;
                if watch.retrying {
                    let first = watch.first.clone().unwrap_or_else(|| instance.clone());
                    self.chains.insert(
                        first,
                        Chain {
                            ok_count: watch.earlier_ok + watch.ok_count,
                            ok: watch.ok,
                        },
                    );
                    return None;
                }
                // The slot's result counts the targets its earlier attempts settled.
                let (succeeded, total) = (succeeded + watch.earlier_ok, total + watch.earlier_ok);
                self.ended(instance, watch, *success, succeeded, total, *at, wall)
            }
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ended(
        &mut self,
        instance: &str,
        mut watch: Watch,
        success: bool,
        succeeded: usize,
        total: usize,
        ended: Timestamp,
        wall: Timestamp,
    ) -> Option<Decided> {
        let policy = self.policies.get(&watch.job).cloned()?;
        let mut streak = self.streak(&watch.job);
        if !success && total == 0 && watch.launch_failure.is_none() {
            watch.launch_failure = Some("Salt started it on no target".into());
        }
        let event = if success {
            let told = streak.told && streak.failures > 0;
            streak = Streak::default();
            (told && policy.wants(|w| *w == When::Recovery)).then_some(Event::Recovery)
        } else {
            streak.failures = streak.failures.saturating_add(1);
            let n = streak.failures;
            let event = if watch.launch_failure.is_some()
                && policy.wants(|w| *w == When::LaunchFailure)
            {
                Some(Event::LaunchFailure)
            } else if policy.wants(|w| *w == When::Failure || *w == When::ConsecutiveFailures(n)) {
                Some(Event::Failure)
            } else {
                None
            };
            if event.is_some() {
                streak.told = true;
            }
            event
        };
        self.streaks.insert(watch.job.clone(), streak);
        let deliveries = match event {
            Some(event) => {
                let summary = match event {
                    Event::Recovery => {
                        format!("recovered: succeeded on {succeeded} of {total} targets")
                    }
                    Event::LaunchFailure => format!(
                        "could not be launched ({})",
                        watch.launch_failure.as_deref().unwrap_or("launch failed")
                    ),
                    _ if total == 0 => "failed: no target ran".to_string(),
                    _ => format!("failed on {} of {total} targets", total - succeeded),
                };
                let ok_count = watch.ok_count + watch.earlier_ok;
                let omitted = (watch.failed_count - watch.failed.len())
                    + ok_count.saturating_sub(watch.ok.len())
                    + total.saturating_sub(watch.failed_count + ok_count);
                let mut targets = std::mem::take(&mut watch.failed);
                targets.append(&mut watch.ok);
                targets.truncate(MAX_TARGETS);
                let shown = targets.len();
                let notice = Notice {
                    version: 1,
                    event,
                    job: watch.job.clone(),
                    slot: watch.slot.map(|s| s.to_string()),
                    last_slot: None,
                    slots: None,
                    instance: Some(instance.to_string()),
                    trigger: Some(watch.trigger.clone()),
                    started_at: Some(watch.started.to_string()),
                    ended_at: Some(ended.to_string()),
                    at: wall.to_string(),
                    summary,
                    consecutive_failures: streak.failures,
                    attempts: watch.attempt,
                    succeeded,
                    total,
                    targets,
                    targets_omitted: omitted.min(total.saturating_sub(shown)),
                    detail: watch.launch_failure.clone(),
                    daemon: self.daemon.clone(),
                };
                self.route(&watch.job, &policy, notice, wall)
            }
            None => Vec::new(),
        };
        Some(Decided {
            job: watch.job,
            streak: Some(streak),
            deliveries,
        })
    }

    /// A ledger row the daemon claimed: a missed gap may be worth a notice.
    pub fn claimed(&mut self, claim: &Claim, wall: Timestamp) -> Option<Decided> {
        let SlotFate::Missed(reason) = claim.fate else {
            return None;
        };
        let policy = self.policies.get(&claim.job).cloned()?;
        if !policy.wants(|w| *w == When::Missed) {
            return None;
        }
        let count = claim.count.max(1);
        let summary = if count == 1 {
            format!("a slot was missed ({})", reason.as_str())
        } else {
            format!("{count} slots were missed ({})", reason.as_str())
        };
        let notice = Notice {
            version: 1,
            event: Event::Missed,
            job: claim.job.clone(),
            slot: claim.slot.map(|s| s.to_string()),
            last_slot: claim.last.map(|s| s.to_string()),
            slots: Some(count),
            instance: None,
            trigger: None,
            started_at: None,
            ended_at: None,
            at: wall.to_string(),
            summary,
            consecutive_failures: self.streak(&claim.job).failures,
            attempts: 0,
            succeeded: 0,
            total: 0,
            targets: Vec::new(),
            targets_omitted: 0,
            detail: Some(if claim.detail.is_empty() {
                reason.as_str().to_string()
            } else {
                claim.detail.clone()
            }),
            daemon: self.daemon.clone(),
        };
        let deliveries = self.route(&claim.job, &policy, notice, wall);
        Some(Decided {
            job: claim.job.clone(),
            streak: None,
            deliveries,
        })
    }

    /// The next `running_longer_than` deadline.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.long.first().map(|(at, _)| *at)
    }

    /// Runs past their `running_longer_than`, one notice each (once per run).
    pub fn handle_timeout(&mut self, mono: Duration, wall: Timestamp) -> Vec<Decided> {
        let mut out = Vec::new();
        while let Some((at, instance)) = self.long.first().cloned() {
            if at > mono {
                break;
            }
            self.long.pop_first();
            let Some(watch) = self.runs.get(&instance) else {
                continue; // ended meanwhile
            };
            let Some(policy) = self.policies.get(&watch.job).cloned() else {
                continue;
            };
            let running = wall.duration_since(watch.started).unsigned_abs();
            let notice = Notice {
                version: 1,
                event: Event::RunningLong,
                job: watch.job.clone(),
                slot: watch.slot.map(|s| s.to_string()),
                last_slot: None,
                slots: None,
                instance: Some(instance.clone()),
                trigger: Some(watch.trigger.clone()),
                started_at: Some(watch.started.to_string()),
                ended_at: None,
                at: wall.to_string(),
                summary: format!("still running after {} s", running.as_secs()),
                consecutive_failures: self.streak(&watch.job).failures,
                attempts: watch.attempt,
                succeeded: watch.ok_count,
                total: watch.ok_count + watch.failed_count,
                targets: watch
                    .failed
                    .iter()
                    .chain(&watch.ok)
                    .take(MAX_TARGETS)
                    .cloned()
                    .collect(),
                targets_omitted: 0,
                detail: None,
                daemon: self.daemon.clone(),
            };
            let job = watch.job.clone();
            let deliveries = self.route(&job, &policy, notice, wall);
            out.push(Decided {
                job,
                streak: None,
                deliveries,
            });
        }
        out
    }

    /// One delivery per channel of the policy; past the job's hourly limit they are
    /// recorded as suppressed.
    fn route(
        &mut self,
        job: &str,
        policy: &NotifyPolicy,
        notice: Notice,
        wall: Timestamp,
    ) -> Vec<Outgoing> {
        let notice = Arc::new(notice);
        let window = self.sent.entry(job.to_string()).or_default();
        let hour_ago = wall - jiff::SignedDuration::from_secs(3600);
        while window.front().is_some_and(|t| *t <= hour_ago) {
            window.pop_front();
        }
        let suppressed = window.len() >= self.max_per_hour as usize;
        if !suppressed {
            window.push_back(wall);
        }
        policy
            .to
            .iter()
            .map(|channel| Outgoing {
                channel: channel.clone(),
                notice: notice.clone(),
                suppressed,
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
