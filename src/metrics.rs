//! Prometheus metrics, counted from the run journal plus a few gauges the daemon sets, rendered
//! in the text exposition format (the API serves them at `GET /metrics`). Must not know: HTTP.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use crate::journal::{Claim, MissReason, RunEvent, SlotFate};

/// Histogram bucket bounds, in seconds.
const LATENESS_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const PHASE_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (i, b) in bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, bounds: &[f64]) {
        for (i, b) in bounds.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Reads the history store's commit health: (commits failed so far, failing now).
#[derive(Clone)]
pub struct StoreHealth(std::sync::Arc<dyn Fn() -> (u64, bool) + Send + Sync>);

impl std::fmt::Debug for StoreHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreHealth{:?}", (self.0)())
    }
}

#[derive(Debug, Default)]
struct Inner {
    runs: BTreeMap<(String, bool), u64>,
    results: BTreeMap<(String, i64), u64>,
    skipped: BTreeMap<(String, &'static str), u64>,
    /// Missed slots (a gap counts each of its slots), by job and reason.
    missed: BTreeMap<(String, &'static str), u64>,
    /// Due slots that could not be claimed (the store failed), by job.
    unclaimed: BTreeMap<String, u64>,
    /// Notification deliveries by (channel, outcome): delivered, retried, failed, suppressed.
    notifications: BTreeMap<(String, &'static str), u64>,
    /// Each job's latest slot that fired (its launch reached Salt).
    last_fired: BTreeMap<String, Timestamp>,
    /// Scheduled runs not yet published: instance → (job, slot).
    unlaunched: HashMap<String, (String, Timestamp)>,
    lateness: Histogram,
    /// One ledger claim transaction (a burst of due slots), start to commit.
    claims: Histogram,
    /// Slots another daemon of the shared store claimed first; runs adopted from a daemon
    /// whose lease lapsed; runs another daemon took over from this one.
    claimed_elsewhere: u64,
    adopted: u64,
    released: u64,
    phase1: Histogram,
    phase2: Histogram,
    /// The hub's own count of open wrapper connections.
    wrappers: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// The history store's (commits failed, failing now).
    store: Option<StoreHealth>,
    bus_connected: bool,
    bus_last_event: Option<Timestamp>,
    /// How late the last event arrived (its `_stamp` to now).
    bus_lag: Option<f64>,
    /// Runs in flight: instance → (job, start).
    started: HashMap<String, (String, Timestamp)>,
    confirmed: HashMap<(String, String), Timestamp>,
}

/// Shared counters; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Counts one journal event.
    pub fn observe(&self, event: &RunEvent) {
        self.with(|m| match event {
            RunEvent::Started {
                instance,
                job,
                at,
                scheduled,
                ..
            } => {
                m.started.insert(instance.clone(), (job.clone(), *at));
                if let Some(slot) = scheduled {
                    m.unlaunched.insert(instance.clone(), (job.clone(), *slot));
                }
            }
            RunEvent::Published { instance, .. } => {
                if let Some((job, slot)) = m.unlaunched.remove(instance) {
                    let last = m.last_fired.entry(job).or_insert(slot);
                    *last = (*last).max(slot);
                }
            }
            RunEvent::Confirmed {
                instance,
                machine,
                at,
            } => {
                if let Some((_, start)) = m.started.get(instance) {
                    m.phase1
                        .observe(PHASE_BUCKETS, secs(at.duration_since(*start)));
                }
                m.confirmed.insert((instance.clone(), machine.clone()), *at);
            }
            RunEvent::TargetEnded {
                instance,
                machine,
                code,
                at,
                ..
            } => {
                if let Some(c) = m.confirmed.remove(&(instance.clone(), machine.clone())) {
                    m.phase2.observe(PHASE_BUCKETS, secs(at.duration_since(c)));
                }
                let job = job_of(m, instance);
                *m.results.entry((job, *code)).or_default() += 1;
            }
            RunEvent::NotLaunched { instance, .. } => {
                m.unlaunched.remove(instance);
                let job = job_of(m, instance);
                *m.missed
                    .entry((job, MissReason::MasterUnreachable.as_str()))
                    .or_default() += 1;
            }
            RunEvent::RunEnded {
                instance, success, ..
            } => {
                let job = job_of(m, instance);
                m.started.remove(instance);
                m.unlaunched.remove(instance);
                m.confirmed.retain(|(i, _), _| i != instance);
                *m.runs.entry((job, *success)).or_default() += 1;
            }
            _ => {}
        });
    }

    /// Counts one ledger row the daemon claimed.
    pub fn slot(&self, claim: &Claim) {
        self.with(|m| match claim.fate {
            // Counted as fired once its launch reaches Salt (`Published`).
            SlotFate::Fired => {}
            SlotFate::Skipped(reason) => {
                *m.skipped
                    .entry((claim.job.clone(), reason.as_str()))
                    .or_default() += 1;
            }
            SlotFate::Missed(reason) => {
                *m.missed
                    .entry((claim.job.clone(), reason.as_str()))
                    .or_default() += claim.count;
            }
        });
    }

    /// A due slot that was not fired because the ledger could not record its claim.
    pub fn unclaimed(&self, job: &str) {
        self.with(|m| *m.unclaimed.entry(job.to_string()).or_default() += 1);
    }

    /// One notification delivery attempt's outcome (or one recorded as suppressed).
    pub fn notification(&self, channel: &str, outcome: &'static str) {
        self.with(|m| {
            *m.notifications
                .entry((channel.to_string(), outcome))
                .or_default() += 1
        });
    }

    /// A job's last fired slot as the ledger had it at start-up.
    pub fn last_fired(&self, job: &str, slot: Timestamp) {
        self.with(|m| {
            let last = m.last_fired.entry(job.to_string()).or_insert(slot);
            *last = (*last).max(slot);
        });
    }

    /// How late a scheduled fire was.
    pub fn fire_lateness(&self, late: std::time::Duration) {
        self.with(|m| m.lateness.observe(LATENESS_BUCKETS, late.as_secs_f64()));
    }

    /// How long one claim transaction took.
    pub fn claim_took(&self, took: std::time::Duration) {
        self.with(|m| m.claims.observe(LATENESS_BUCKETS, took.as_secs_f64()));
    }

    /// A slot another daemon of the store claimed first.
    pub fn claimed_elsewhere(&self) {
        self.with(|m| m.claimed_elsewhere += 1);
    }

    /// Runs adopted from a daemon whose lease lapsed, and runs another daemon took over.
    pub fn handed_over(&self, adopted: usize, released: usize) {
        self.with(|m| {
            m.adopted += adopted as u64;
            m.released += released as u64;
        });
    }

    /// The gauge of open wrapper connections reads the hub's own count.
    pub fn count_wrappers(&self, open: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        self.with(|m| m.wrappers = Some(open));
    }

    /// The store's commit failures are read from the store itself.
    pub fn watch_store(&self, read: impl Fn() -> (u64, bool) + Send + Sync + 'static) {
        let health = StoreHealth(std::sync::Arc::new(read));
        self.with(|m| m.store = Some(health));
    }

    pub fn bus_state(&self, connected: bool) {
        self.with(|m| m.bus_connected = connected);
    }

    /// An event arrived; `stamp` is when the master stamped it.
    pub fn bus_event(&self, stamp: Option<Timestamp>) {
        let now = crate::clock::now();
        self.with(|m| {
            m.bus_last_event = Some(now);
            if let Some(s) = stamp {
                m.bus_lag = Some(secs(now.duration_since(s)));
            }
        });
    }

    /// The exposition text; `db_bytes` is the database's size.
    pub fn render(&self, db_bytes: u64) -> String {
        self.with(|m| {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "# HELP saltpeter_runs_total Runs ended, by job and success."
            );
            let _ = writeln!(out, "# TYPE saltpeter_runs_total counter");
            for ((job, ok), n) in &m.runs {
                let _ = writeln!(
                    out,
                    "saltpeter_runs_total{{job=\"{}\",success=\"{ok}\"}} {n}",
                    label(job)
                );
            }
            let _ = writeln!(
                out,
                "# HELP saltpeter_target_results_total Target results, by job and exit code."
            );
            let _ = writeln!(out, "# TYPE saltpeter_target_results_total counter");
            for ((job, code), n) in &m.results {
                let _ = writeln!(
                    out,
                    "saltpeter_target_results_total{{job=\"{}\",code=\"{code}\"}} {n}",
                    label(job)
                );
            }
            let _ = writeln!(
                out,
                "# HELP saltpeter_skipped_slots_total Due slots not started, by job and reason."
            );
            let _ = writeln!(out, "# TYPE saltpeter_skipped_slots_total counter");
            for ((job, reason), n) in &m.skipped {
                let _ = writeln!(
                    out,
                    "saltpeter_skipped_slots_total{{job=\"{}\",reason=\"{reason}\"}} {n}",
                    label(job)
                );
            }
            let _ = writeln!(
                out,
                "# HELP saltpeter_missed_slots_total Due slots never fired (daemon down, clock jump, misfire policy, master unreachable), by job and reason."
            );
            let _ = writeln!(out, "# TYPE saltpeter_missed_slots_total counter");
            for ((job, reason), n) in &m.missed {
                let _ = writeln!(
                    out,
                    "saltpeter_missed_slots_total{{job=\"{}\",reason=\"{reason}\"}} {n}",
                    label(job)
                );
            }
            let _ = writeln!(
                out,
                "# HELP saltpeter_unclaimed_slots_total Due slots not fired because the ledger could not store their claim (the database failed)."
            );
            let _ = writeln!(out, "# TYPE saltpeter_unclaimed_slots_total counter");
            for (job, n) in &m.unclaimed {
                let _ = writeln!(
                    out,
                    "saltpeter_unclaimed_slots_total{{job=\"{}\"}} {n}",
                    label(job)
                );
            }
            let _ = writeln!(
                out,
                "# HELP saltpeter_notifications_total Notification deliveries by channel and outcome (delivered; retried: failed, tried again later; failed: given up; suppressed: past notify_max_per_hour)."
            );
            let _ = writeln!(out, "# TYPE saltpeter_notifications_total counter");
            for ((channel, outcome), n) in &m.notifications {
                let _ = writeln!(
                    out,
                    "saltpeter_notifications_total{{channel=\"{}\",outcome=\"{outcome}\"}} {n}",
                    label(channel)
                );
            }
            let _ = writeln!(
                out,
                "# HELP saltpeter_seconds_since_last_fired_slot Seconds since the slot that last fired, per job: alert when it exceeds the job's period."
            );
            let _ = writeln!(out, "# TYPE saltpeter_seconds_since_last_fired_slot gauge");
            let now = crate::clock::now();
            for (job, at) in &m.last_fired {
                let _ = writeln!(
                    out,
                    "saltpeter_seconds_since_last_fired_slot{{job=\"{}\"}} {}",
                    label(job),
                    secs(now.duration_since(*at)).floor()
                );
            }
            let _ = writeln!(
                out,
                "# HELP saltpeter_fire_lateness_seconds Actual minus scheduled fire time."
            );
            let _ = writeln!(out, "# TYPE saltpeter_fire_lateness_seconds histogram");
            m.lateness.render(
                &mut out,
                "saltpeter_fire_lateness_seconds",
                LATENESS_BUCKETS,
            );
            let _ = writeln!(
                out,
                "# HELP saltpeter_claim_seconds One fire-ledger claim transaction (a burst of due slots)."
            );
            let _ = writeln!(out, "# TYPE saltpeter_claim_seconds histogram");
            m.claims
                .render(&mut out, "saltpeter_claim_seconds", LATENESS_BUCKETS);
            for (name, help, v) in [
                (
                    "saltpeter_slots_claimed_elsewhere_total",
                    "Slots another daemon of the shared store claimed first.",
                    m.claimed_elsewhere,
                ),
                (
                    "saltpeter_runs_adopted_total",
                    "Runs adopted from a daemon whose lease lapsed.",
                    m.adopted,
                ),
                (
                    "saltpeter_runs_released_total",
                    "Runs another daemon took over from this one.",
                    m.released,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
                let _ = writeln!(out, "{name} {v}");
            }
            let _ = writeln!(
                out,
                "# HELP saltpeter_phase1_seconds From firing to Salt's confirmation of a target."
            );
            let _ = writeln!(out, "# TYPE saltpeter_phase1_seconds histogram");
            m.phase1
                .render(&mut out, "saltpeter_phase1_seconds", PHASE_BUCKETS);
            let _ = writeln!(
                out,
                "# HELP saltpeter_phase2_seconds From a target's confirmation to its result."
            );
            let _ = writeln!(out, "# TYPE saltpeter_phase2_seconds histogram");
            m.phase2
                .render(&mut out, "saltpeter_phase2_seconds", PHASE_BUCKETS);
            let _ = writeln!(
                out,
                "# HELP saltpeter_wrappers_connected Wrapper connections open now."
            );
            let _ = writeln!(out, "# TYPE saltpeter_wrappers_connected gauge");
            let open = m
                .wrappers
                .as_ref()
                .map_or(0, |n| n.load(std::sync::atomic::Ordering::Relaxed));
            let _ = writeln!(out, "saltpeter_wrappers_connected {open}");
            let _ = writeln!(
                out,
                "# HELP saltpeter_event_bus_connected Whether the Salt event bus is subscribed."
            );
            let _ = writeln!(out, "# TYPE saltpeter_event_bus_connected gauge");
            let _ = writeln!(
                out,
                "saltpeter_event_bus_connected {}",
                u8::from(m.bus_connected)
            );
            let _ = writeln!(
                out,
                "# HELP saltpeter_event_bus_idle_seconds Seconds since the last Salt event arrived."
            );
            let _ = writeln!(out, "# TYPE saltpeter_event_bus_idle_seconds gauge");
            if let Some(at) = m.bus_last_event {
                let idle = secs(crate::clock::now().duration_since(at));
                let _ = writeln!(out, "saltpeter_event_bus_idle_seconds {idle}");
            }
            let _ = writeln!(
                out,
                "# HELP saltpeter_database_bytes Size of the history database."
            );
            let _ = writeln!(out, "# TYPE saltpeter_database_bytes gauge");
            let _ = writeln!(out, "saltpeter_database_bytes {db_bytes}");
            let (failures, failing) = m.store.as_ref().map_or((0, false), |h| (h.0)());
            let _ = writeln!(
                out,
                "# HELP saltpeter_database_commit_failures_total Transactions the history store could not commit (full disk, read-only file system); their events are kept and retried."
            );
            let _ = writeln!(out, "# TYPE saltpeter_database_commit_failures_total counter");
            let _ = writeln!(out, "saltpeter_database_commit_failures_total {failures}");
            let _ = writeln!(
                out,
                "# HELP saltpeter_database_failing Whether events are waiting in memory because the last commit failed (nothing is acknowledged meanwhile)."
            );
            let _ = writeln!(out, "# TYPE saltpeter_database_failing gauge");
            let _ = writeln!(out, "saltpeter_database_failing {}", u8::from(failing));
            if let Some(lag) = m.bus_lag {
                let _ = writeln!(out, "# HELP saltpeter_event_bus_lag_seconds How late the last Salt event arrived (its _stamp to receipt).");
                let _ = writeln!(out, "# TYPE saltpeter_event_bus_lag_seconds gauge");
                let _ = writeln!(out, "saltpeter_event_bus_lag_seconds {lag}");
            }
            out
        })
    }
}

fn secs(d: jiff::SignedDuration) -> f64 {
    d.as_secs_f64().max(0.0)
}

/// The job of a run in flight (runs started before a restart count under their instance).
fn job_of(m: &Inner, instance: &str) -> String {
    m.started
        .get(instance)
        .map_or_else(|| instance.to_string(), |(job, _)| job.clone())
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{MissReason, SkipReason, Trigger};

    #[test]
    fn journal_events_become_counters_and_histograms() {
        let m = Metrics::default();
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        m.observe(&RunEvent::Started {
            instance: "my_job_1800000000_0".into(),
            job: "my_job".into(),
            trigger: Trigger::Schedule,
            scheduled: None,
            at: t(0),
            token: String::new(),
        });
        m.observe(&RunEvent::Confirmed {
            instance: "my_job_1800000000_0".into(),
            machine: "a".into(),
            at: t(1),
        });
        m.observe(&RunEvent::TargetEnded {
            instance: "my_job_1800000000_0".into(),
            machine: "a".into(),
            code: 124,
            note: None,
            at: t(4),
        });
        m.observe(&RunEvent::RunEnded {
            instance: "my_job_1800000000_0".into(),
            success: false,
            succeeded: 0,
            total: 1,
            at: t(4),
        });
        let claim = |fate, count| Claim {
            job: "my_job".into(),
            slot: Some(t(5)),
            last: None,
            count,
            fate,
            trigger: Trigger::Schedule,
            instance: None,
            detail: String::new(),
            at: t(5),
        };
        m.slot(&claim(SlotFate::Skipped(SkipReason::Overlap), 1));
        m.slot(&claim(SlotFate::Missed(MissReason::DaemonDown), 7));
        m.slot(&claim(SlotFate::Missed(MissReason::DaemonDown), 2));
        m.slot(&claim(SlotFate::Fired, 1));
        // Two scheduled runs: one reaches Salt, the other never does (missed after all).
        for (instance, slot) in [("my_job_1800000010", 10), ("my_job_1800000020", 20)] {
            m.observe(&RunEvent::Started {
                instance: instance.into(),
                job: "my_job".into(),
                trigger: Trigger::Schedule,
                scheduled: Some(t(slot)),
                at: t(slot),
                token: String::new(),
            });
        }
        m.observe(&RunEvent::Published {
            instance: "my_job_1800000010".into(),
            jid: "1".into(),
            machines: Vec::new(),
        });
        m.observe(&RunEvent::NotLaunched {
            instance: "my_job_1800000020".into(),
            why: "cannot connect".into(),
            at: t(21),
        });
        assert_eq!(m.with(|m| m.last_fired.get("my_job").copied()), Some(t(10)));
        m.fire_lateness(std::time::Duration::from_millis(3));
        m.claim_took(std::time::Duration::from_millis(20));
        m.claimed_elsewhere();
        m.handed_over(2, 1);
        let text = m.render(4096);
        for line in [
            "saltpeter_runs_total{job=\"my_job\",success=\"false\"} 1",
            "saltpeter_target_results_total{job=\"my_job\",code=\"124\"} 1",
            "saltpeter_skipped_slots_total{job=\"my_job\",reason=\"overlap\"} 1",
            "saltpeter_missed_slots_total{job=\"my_job\",reason=\"daemon down\"} 9",
            "saltpeter_missed_slots_total{job=\"my_job\",reason=\"master unreachable\"} 1",
            "saltpeter_seconds_since_last_fired_slot{job=\"my_job\"} ",
            "saltpeter_fire_lateness_seconds_bucket{le=\"0.005\"} 1",
            "saltpeter_fire_lateness_seconds_bucket{le=\"0.001\"} 0",
            "saltpeter_claim_seconds_bucket{le=\"0.01\"} 0",
            "saltpeter_claim_seconds_bucket{le=\"0.05\"} 1",
            "saltpeter_slots_claimed_elsewhere_total 1",
            "saltpeter_runs_adopted_total 2",
            "saltpeter_runs_released_total 1",
            "saltpeter_phase1_seconds_sum 1",
            "saltpeter_phase2_seconds_sum 3",
            "saltpeter_database_bytes 4096",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
