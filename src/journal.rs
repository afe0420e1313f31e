//! What happened to runs, as plain data: the coordinator reports every step of a run here, and
//! the history store (and through it the API) consumes them. Must not know: SQLite, HTTP, Salt.

use jiff::Timestamp;

/// Why a run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Its schedule was due.
    Schedule,
    /// Someone asked ("run now").
    Manual,
    /// Slots missed while the daemon stalled or the clock jumped, fired once.
    CatchUp,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::CatchUp => "catch-up",
        }
    }
}

/// Why a due slot did not start a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// An instance of the job was still running.
    Overlap,
    /// Global maintenance mode.
    Maintenance,
    /// The run could not be started (no randomness for its token).
    Failed,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overlap => "overlap",
            SkipReason::Maintenance => "maintenance",
            SkipReason::Failed => "failed",
        }
    }
}

/// One step of a run, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEvent {
    Started {
        instance: String,
        job: String,
        trigger: Trigger,
        /// The slot it was due at (`None` for a manual run).
        scheduled: Option<Timestamp>,
        at: Timestamp,
        /// The wrappers' credential, kept so a restarted daemon takes their reconnections.
        token: String,
    },
    /// Salt accepted a publish: these targets are expected (added to any earlier batch's).
    Published {
        instance: String,
        jid: String,
        machines: Vec<String>,
    },
    /// A launch is about to be published under `jid` (stored first: a restart before Salt's
    /// reply publishes it again under the same jid, which minions that got it ignore).
    Launching { instance: String, jid: String },
    /// The batches of the run not yet published, in order (`batch_size`), as of now.
    BatchesLeft {
        instance: String,
        batches: Vec<Vec<String>>,
    },
    /// A machine was left out of the run because it is under maintenance.
    MachineSkipped { instance: String, machine: String },
    /// Phase 1 is over for this target: its wrapper runs.
    Confirmed {
        instance: String,
        machine: String,
        at: Timestamp,
    },
    /// Why a target still waits in Phase 1 (a probe not delivered, and when it is tried
    /// again); `None`: that reason is over.
    Waiting {
        instance: String,
        machine: String,
        why: Option<String>,
    },
    WrapperStarted {
        instance: String,
        machine: String,
        pid: i64,
        version: String,
    },
    Heartbeat {
        instance: String,
        machine: String,
        at: Timestamp,
    },
    Output {
        instance: String,
        machine: String,
        data: String,
        /// The wrapper's message number (`None` for text saltpeter or Salt added).
        seq: Option<i64>,
    },
    TargetEnded {
        instance: String,
        machine: String,
        code: i64,
        /// Saltpeter's or Salt's text when the code is not the job's own.
        note: Option<String>,
        at: Timestamp,
    },
    /// The wrapper reported its result after the daemon had ended the target (heartbeat lost,
    /// timeout): kept as a note, the target's result stands.
    LateResult {
        instance: String,
        machine: String,
        retcode: i64,
        at: Timestamp,
    },
    RunEnded {
        instance: String,
        success: bool,
        succeeded: usize,
        total: usize,
        at: Timestamp,
    },
    /// A due slot that did not start.
    Skipped {
        job: String,
        reason: SkipReason,
        detail: String,
        at: Timestamp,
    },
}

impl RunEvent {
    /// The run the event belongs to (`None` for a skipped slot).
    pub fn instance(&self) -> Option<&str> {
        match self {
            RunEvent::Started { instance, .. }
            | RunEvent::Published { instance, .. }
            | RunEvent::BatchesLeft { instance, .. }
            | RunEvent::Launching { instance, .. }
            | RunEvent::MachineSkipped { instance, .. }
            | RunEvent::Confirmed { instance, .. }
            | RunEvent::Waiting { instance, .. }
            | RunEvent::WrapperStarted { instance, .. }
            | RunEvent::Heartbeat { instance, .. }
            | RunEvent::Output { instance, .. }
            | RunEvent::TargetEnded { instance, .. }
            | RunEvent::LateResult { instance, .. }
            | RunEvent::RunEnded { instance, .. } => Some(instance),
            RunEvent::Skipped { .. } => None,
        }
    }
}
