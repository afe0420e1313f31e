//! What one notification says, as plain data: decided once (and stored in the outbox as its
//! JSON), then rendered by each channel — the webhook sends the stored JSON as it is, email
//! renders a subject and a text body from it.

use serde::{Deserialize, Serialize};

/// Why a notification was sent (`event` in the JSON body).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A run failed (`when: [failure]`, or the Nth in a row with `consecutive_failures: N`).
    Failure,
    /// The first success after failures someone was told of.
    Recovery,
    /// Slots that were not fired.
    Missed,
    /// Salt refused the launch, the wrapper could not start (126, 127), or nothing reached
    /// the master.
    LaunchFailure,
    /// A run still going past `running_longer_than`.
    RunningLong,
    /// `saltpeter notify-test`.
    Test,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Failure => "failure",
            Event::Recovery => "recovery",
            Event::Missed => "missed",
            Event::LaunchFailure => "launch_failure",
            Event::RunningLong => "running_long",
            Event::Test => "test",
        }
    }
}

/// One target's result in a notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetResult {
    pub machine: String,
    /// `None`: still running (a `running_long` notice).
    pub code: Option<i64>,
    /// What the code means (`engine::meaning`): "success", "job timeout", ….
    pub meaning: String,
    /// Saltpeter's or Salt's words when the code is not the job's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The body of a notification (schema version 1, documented in README "Notifications").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub version: u32,
    pub event: Event,
    pub job: String,
    /// The scheduled slot (RFC 3339), `None` for a manual run or a test.
    pub slot: Option<String>,
    /// For a missed gap: its last slot and how many slots it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_slot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u64>,
    /// The run (`None` for a missed slot).
    pub instance: Option<String>,
    pub trigger: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// When the notice was decided (RFC 3339).
    pub at: String,
    /// One line: "backup failed on 2 of 5 targets".
    pub summary: String,
    /// Failed runs in a row, this one included (0 after a success).
    pub consecutive_failures: u32,
    /// Attempts the slot took (`retries`; 1 without; 0 when nothing ran).
    #[serde(default)]
    pub attempts: u32,
    pub succeeded: usize,
    pub total: usize,
    /// Failed targets first, then the others; at most [`MAX_TARGETS`].
    pub targets: Vec<TargetResult>,
    /// Targets left out of `targets`.
    pub targets_omitted: usize,
    /// Why a slot was missed, a launch failed, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The host of the daemon that decided it.
    pub daemon: String,
}

/// Targets listed in one notice; a run of 10,000 failing targets must not make a 2 MB mail.
pub const MAX_TARGETS: usize = 100;

impl Notice {
    /// `[saltpeter] backup: failed on 2 of 5 targets`.
    pub fn subject(&self) -> String {
        format!("[saltpeter] {}: {}", self.job, self.summary)
    }

    /// A plain-text rendering, for email.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.summary);
        let _ = writeln!(s);
        let _ = writeln!(s, "Job:      {}", self.job);
        let _ = writeln!(s, "Event:    {}", self.event.as_str());
        if let Some(slot) = &self.slot {
            match (&self.last_slot, self.slots) {
                (Some(last), Some(n)) if n > 1 => {
                    let _ = writeln!(s, "Slots:    {slot} to {last} ({n})");
                }
                _ => {
                    let _ = writeln!(s, "Slot:     {slot}");
                }
            }
        }
        if let Some(instance) = &self.instance {
            let _ = writeln!(s, "Run:      {instance}");
        }
        if let Some(trigger) = &self.trigger {
            let _ = writeln!(s, "Trigger:  {trigger}");
        }
        if let Some(at) = &self.started_at {
            let _ = writeln!(s, "Started:  {at}");
        }
        if let Some(at) = &self.ended_at {
            let _ = writeln!(s, "Ended:    {at}");
        }
        if self.total > 0 {
            let _ = writeln!(
                s,
                "Targets:  {} of {} succeeded",
                self.succeeded, self.total
            );
        }
        if self.attempts > 1 {
            let _ = writeln!(s, "Attempts: {}", self.attempts);
        }
        if self.consecutive_failures > 1 {
            let _ = writeln!(s, "Failures in a row: {}", self.consecutive_failures);
        }
        if let Some(detail) = &self.detail {
            let _ = writeln!(s, "Detail:   {detail}");
        }
        if !self.targets.is_empty() {
            let _ = writeln!(s);
            for t in &self.targets {
                let code = t.code.map_or("-".to_string(), |c| c.to_string());
                let _ = write!(s, "  {}  {} ({})", t.machine, code, t.meaning);
                if let Some(note) = &t.note {
                    let _ = write!(s, ": {note}");
                }
                let _ = writeln!(s);
            }
            if self.targets_omitted > 0 {
                let _ = writeln!(s, "  … and {} more", self.targets_omitted);
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "-- saltpeter on {}", self.daemon);
        s
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a notice is plain data")
    }

    pub fn from_json(text: &str) -> Result<Notice, serde_json::Error> {
        serde_json::from_str(text)
    }
}
