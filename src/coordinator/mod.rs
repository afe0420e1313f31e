//! The one owner of every run in flight, as a thin async shell around [`core::Core`] (the
//! decisions): it stamps each input with the time it happened, hands it to the core, and
//! carries out the core's [`Effect`]s in order — publishes through the Salt worker pool, hub
//! commands (some only after the store committed what came before), journal records, job-log
//! entries and job-cache reads. Nothing here waits on the hub or the store: the daemon loop
//! never blocks on a component that may be waiting on it.

pub mod core;
mod joblog_writer;
pub mod launch;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::info;

pub use self::core::Firing;
use self::core::{Core, Effect, Now, Purpose, Shuffle};
use self::joblog_writer::JobLogWriter;
pub use self::launch::accepts_tokenless;
use crate::agents::{Hub, HubCommand, HubEvent};
use crate::config::{Job, Settings};
use crate::control::Refusal;
use crate::history::{History, HistoryError, InFlight};
use crate::journal::RunEvent;
use crate::metrics::Metrics;
use crate::notify::tracker::{Decided, Streak, Tracker};
use crate::salt::bus::BusMessage;
use crate::salt::publisher::{Publisher, Reply, Request};
use crate::salt::{SaltSettings, jobcache};
use crate::scheduler::retry::{Plan, Retries};

/// What a publish's reply is matched by: the run and why it was published.
pub type SaltTag = (String, Purpose);
pub type SaltReply = Reply<SaltTag>;

/// Where every step of every run goes: the history store (in order), the metrics, and the
/// notification tracker, whose decisions are stored in the transaction of the event that
/// caused them.
struct Journal {
    history: History,
    metrics: Metrics,
    notify: Tracker,
    retries: Retries,
    origin: Instant,
}

impl Journal {
    fn record(&mut self, event: RunEvent) {
        self.metrics.observe(&event);
        // The bulk of a run's events concern neither retries nor notifications: straight to
        // the store, without a clock read.
        if matches!(
            event,
            RunEvent::Output { .. } | RunEvent::Heartbeat { .. } | RunEvent::Waiting { .. }
        ) {
            return self.history.record(event);
        }
        let wall = crate::clock::now();
        // A run whose failed targets are tried again ends without deciding notifications:
        // the slot's last attempt does.
        let plan = self.retries.observe(&event, wall);
        if let Some(plan) = &plan {
            info!(instance = %plan.previous, attempt = plan.attempt, targets = plan.machines.len(), due = %plan.due, "{} target(s) of {} failed; attempt {} of the slot at {}", plan.machines.len(), plan.previous, plan.attempt, plan.due);
            self.notify.will_retry(&plan.previous);
        }
        let decided = self.notify.observe(&event, self.origin.elapsed(), wall);
        if plan.is_none() && decided.is_none() {
            return self.history.record(event);
        }
        let mut events = Vec::with_capacity(3);
        if let Some(plan) = plan {
            events.push(RunEvent::RetryPlanned(plan));
        }
        events.push(event);
        if let Some(decided) = decided {
            events.push(self.count(decided).into_event(wall));
        }
        self.history.record_together(events);
    }

    fn count(&self, decided: Decided) -> Decided {
        for d in decided.deliveries.iter().filter(|d| d.suppressed) {
            self.metrics.notification(&d.channel, "suppressed");
        }
        decided
    }

    /// Decisions made without an event (a missed slot, a run past `running_longer_than`).
    fn decided(&mut self, decided: Decided) {
        let decided = self.count(decided);
        self.history.record(decided.into_event(crate::clock::now()));
    }
}

pub struct Coordinator {
    core: Core,
    origin: Instant,
    hub: Hub,
    salt: Publisher<SaltTag>,
    salt_settings: Option<SaltSettings>,
    journal: Journal,
    /// Hub commands that must wait until the store has committed what came before them.
    after_commit: mpsc::UnboundedSender<HubCommand>,
    job_log: JobLogWriter,
}

impl Coordinator {
    pub fn new(
        hub: Hub,
        salt: Publisher<SaltTag>,
        salt_settings: Option<SaltSettings>,
        history: History,
        metrics: Metrics,
    ) -> Coordinator {
        let (after_commit, mut pending) = mpsc::unbounded_channel::<HubCommand>();
        let (store, to_hub) = (history.clone(), hub.clone());
        tokio::spawn(async move {
            // In order, and one commit for every burst.
            while let Some(first) = pending.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = pending.try_recv() {
                    batch.push(more);
                }
                // Nothing is acknowledged before it is stored: while the store cannot commit
                // (a full disk), wrappers keep their results and the acknowledgements wait.
                loop {
                    match store.flush().await {
                        Ok(()) => break,
                        Err(HistoryError::Stopped) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "acknowledgements wait until the history store can commit");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
                for command in batch {
                    // A run another daemon took over meanwhile stored nothing more from here.
                    if let HubCommand::ConfirmComplete { instance, .. } = &command
                        && !store.holds(instance)
                    {
                        continue;
                    }
                    to_hub.send_now(command);
                }
            }
        });
        Coordinator {
            core: Core::default(),
            origin: Instant::now(),
            hub,
            salt,
            salt_settings,
            job_log: JobLogWriter::spawn(history.clone()),
            journal: Journal {
                history,
                metrics,
                notify: Tracker::new(&crate::hostname()),
                retries: Retries::default(),
                origin: Instant::now(),
            },
            after_commit,
        }
    }

    fn at(&self, instant: Instant) -> Now {
        // The wall clock of an earlier instant: now, less the time since.
        let wall = crate::clock::now();
        let ago = Instant::now().saturating_duration_since(instant);
        Now {
            mono: instant.saturating_duration_since(self.origin),
            wall: wall
                .checked_sub(jiff::SignedDuration::try_from(ago).unwrap_or_default())
                .unwrap_or(wall),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.origin.elapsed(),
            wall: crate::clock::now(),
        }
    }

    /// Records one step of a run (or a skipped slot) in the history and the metrics.
    pub fn record(&mut self, event: RunEvent) {
        self.journal.record(event);
    }

    /// Each job's notification policy, the hourly limit, and each job's retries (on every
    /// config load).
    pub fn set_policies(&mut self, jobs: &BTreeMap<String, Arc<Job>>, max_per_hour: u32) {
        let policies = jobs
            .values()
            .filter_map(|j| Some((j.name.clone(), Arc::new(j.notify.clone()?))));
        self.journal.notify.set_policies(policies, max_per_hour);
        self.journal.retries.set_policies(
            jobs.values()
                .map(|j| (j.name.clone(), j.retries, j.retry_delay_secs)),
        );
    }

    /// Attempts planned before a restart.
    pub fn resume_retries(&mut self, plans: impl IntoIterator<Item = Plan>) {
        self.journal.retries.resume(plans);
    }

    /// When the next planned attempt of a slot is due (wall clock).
    pub fn next_retry(&self) -> Option<jiff::Timestamp> {
        self.journal.retries.next_due()
    }

    /// The attempts due by `now`, for the daemon to start.
    pub fn due_retries(&mut self, now: jiff::Timestamp) -> Vec<Plan> {
        self.journal.retries.due(now)
    }

    /// A planned attempt that will not run (its job is gone, maintenance): the store forgets
    /// the plan, so a restart does not start it either.
    pub fn retry_dropped(&mut self, plan: &Plan) {
        self.journal.record(RunEvent::RetryDropped {
            instance: plan.previous.clone(),
        });
    }

    /// The run of an attempt started (after [`Coordinator::fire`]): recorded as such.
    pub fn attempt_started(&mut self, plan: &Plan) {
        let instance = plan.instance();
        self.journal
            .retries
            .attempt_started(&instance, &plan.first, plan.attempt);
        self.journal.record(RunEvent::Attempt {
            instance,
            first: plan.first.clone(),
            previous: plan.previous.clone(),
            attempt: plan.attempt,
        });
    }

    /// The failure streaks stored before a restart.
    pub fn resume_streaks(&mut self, streaks: impl IntoIterator<Item = (String, (u32, bool))>) {
        self.journal.notify.resume(
            streaks
                .into_iter()
                .map(|(job, (failures, told))| (job, Streak { failures, told })),
        );
    }

    /// The notifications a ledger row calls for (a missed gap's), to be stored with it.
    pub fn notices_for(
        &mut self,
        claim: &crate::journal::Claim,
    ) -> Option<crate::journal::Notified> {
        let now = crate::clock::now();
        let decided = self.journal.notify.claimed(claim, now)?;
        Some(self.journal.count(decided).into_notified(now))
    }

    /// Appends a record to the job's text log (off the loop, in order with the runs' own).
    pub fn job_log(&self, logdir: &std::path::Path, job: &str, record: &crate::joblog::Record<'_>) {
        let text = crate::joblog::format(record, crate::clock::now());
        let entry = self::core::JobLogEntry::Text(text);
        self.job_log
            .send(logdir.to_path_buf(), job.to_string(), entry);
    }

    /// Carries out what the core decided, in order.
    fn drain(&mut self) {
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Publish {
                    instance,
                    purpose,
                    publish,
                    retry,
                } => self.salt.submit(Request {
                    publish,
                    tag: (instance, purpose),
                    retry_unreachable_for: retry.then_some(self::core::LAUNCH_RETRY_FOR),
                }),
                Effect::Hub(command) => self.hub.send_now(command),
                Effect::HubAfterCommit(command) => {
                    let _ = self.after_commit.send(command);
                }
                Effect::Record(event) => self.journal.record(event),
                Effect::JobLog { logdir, job, entry } => self.job_log.send(logdir, job, entry),
                Effect::ReadJobCache { instance, jid } => {
                    let returns = match &self.salt_settings {
                        Some(s) => {
                            jobcache::returns(&s.cachedir, &s.hash_type, &jid).unwrap_or_default()
                        }
                        None => Vec::new(),
                    };
                    let now = self.now();
                    self.core.handle_cached_returns(&instance, returns, now);
                }
            }
        }
    }

    /// Takes over a run that was in flight when the daemon stopped.
    pub fn adopt(&mut self, run: &InFlight, job: Option<&Arc<Job>>, settings: &Settings) {
        let now = self.now();
        let adopted = crate::notify::tracker::Adopted {
            instance: &run.instance,
            job: &run.job,
            started: run.started.unwrap_or(now.wall),
            slot: run.scheduled,
            done: &run.done,
        };
        let mono = self.journal.origin.elapsed();
        self.journal.notify.adopt(adopted, mono, now.wall);
        self.core.adopt(run, job, settings, now);
        self.drain();
    }

    /// Takes over a run whose owner's lease ran out (a shared store): the hub accepts its
    /// wrappers from now on, and it goes on as after a restart.
    pub fn adopt_live(
        &mut self,
        run: &InFlight,
        hub_run: crate::agents::Adopted,
        job: Option<&Arc<Job>>,
        settings: &Settings,
    ) {
        self.hub.send_now(HubCommand::Adopt(hub_run));
        self.adopt(run, job, settings);
    }

    /// Another daemon took `instance` over; see [`Core::release`].
    pub fn release(&mut self, instance: &str) -> bool {
        let released = self.core.release(instance);
        self.drain();
        released
    }

    pub fn set_peers(&mut self, peers: Vec<String>) {
        self.core.set_peers(peers);
    }

    /// The instance of `job` in flight, if any.
    pub fn running_instance(&self, job: &str) -> Option<String> {
        self.core.running_instance(job)
    }

    /// Starts a run; see [`Core::fire`]. Refused, with nothing started, when the kernel gives
    /// no randomness for its token (a guessable token would let anyone forge results).
    pub fn fire(&mut self, firing: Firing<'_>) -> Result<(), RandomnessError> {
        let token = random_token()?;
        let now = self.now();
        self.core.fire(firing, token, now);
        self.drain();
        Ok(())
    }

    pub fn handle_salt_reply(&mut self, reply: SaltReply) {
        let now = self.now();
        let (instance, purpose) = reply.tag;
        self.core
            .handle_salt_reply(&instance, purpose, reply.result, &mut Urandom, now);
        self.drain();
    }

    pub fn handle_bus(&mut self, message: BusMessage) {
        let now = self.now();
        self.core.handle_bus(message, &mut Urandom, now);
        self.drain();
    }

    /// A wrapper event, judged by when the hub received it.
    pub fn handle_hub(&mut self, event: HubEvent) {
        let now = self.at(event.at);
        self.core.handle_hub(event, now);
        self.drain();
    }

    /// Kills a run (or one target of it).
    pub fn kill(&mut self, instance: &str, machine: Option<&str>) -> Result<(), Refusal> {
        let now = self.now();
        let result = self.core.kill(instance, machine, now);
        self.drain();
        result
    }

    /// The next time something must be checked.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let runs = self.core.next_deadline().map(|d| self.origin + d);
        let notify = self
            .journal
            .notify
            .poll_timeout()
            .map(|d| self.journal.origin + d);
        runs.into_iter().chain(notify).min()
    }

    pub fn handle_timeout(&mut self) {
        let now = self.now();
        self.core.handle_timeout(&mut Urandom, now);
        self.drain();
        let long = self
            .journal
            .notify
            .handle_timeout(self.journal.origin.elapsed(), now.wall);
        for decided in long {
            self.journal.decided(decided);
        }
    }
}

/// The kernel's randomness for picking and batching targets.
struct Urandom;

impl Shuffle for Urandom {
    /// Fisher-Yates (a random subset per run, as the original).
    fn shuffle(&mut self, items: &mut [String]) {
        let mut bytes = vec![0u8; items.len() * 4];
        if let Err(e) = getrandom::fill(&mut bytes) {
            // Only the choice of targets is less random: the run still has its targets.
            tracing::warn!(error = %e, "no randomness from the kernel; targets are taken in Salt's order");
            return;
        }
        for i in (1..items.len()).rev() {
            let r = u32::from_le_bytes([
                bytes[i * 4],
                bytes[i * 4 + 1],
                bytes[i * 4 + 2],
                bytes[i * 4 + 3],
            ]);
            items.swap(i, r as usize % (i + 1));
        }
    }
}

/// The kernel gave no randomness (`getrandom(2)` failed).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw a run token: the kernel's randomness is unavailable ({0})")]
pub struct RandomnessError(getrandom::Error);

/// 128 random bits, hex; never a fallback value.
pub fn random_token() -> Result<String, RandomnessError> {
    crate::secret::random_hex::<16>().map_err(RandomnessError)
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_tokens_are_128_random_bits() {
        let a = super::random_token().unwrap();
        let b = super::random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_ne!(a, "0".repeat(32), "never a fallback value");
    }
}
