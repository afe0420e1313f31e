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
    /// Another attempt of a slot for the targets that failed the one before (`retries`).
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::CatchUp => "catch-up",
            Trigger::Retry => "retry",
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
    /// Every target of the run was under maintenance.
    MachineMaintenance,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overlap => "overlap",
            SkipReason::Maintenance => "maintenance",
            SkipReason::MachineMaintenance => "machine maintenance",
        }
    }
}

/// Why a due slot was not fired at all (see the misfire policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissReason {
    /// It was due while the daemon was not running.
    DaemonDown,
    /// The daemon was late for it (stalled past a later slot, or past `misfire_window`) and
    /// the policy did not fire it.
    MisfirePolicy,
    /// The clock was set forward over it.
    ClockJump,
    /// Its launch could not reach the Salt master within `misfire_window`.
    MasterUnreachable,
}

impl MissReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MissReason::DaemonDown => "daemon down",
            MissReason::MisfirePolicy => "misfire policy",
            MissReason::ClockJump => "clock jump",
            MissReason::MasterUnreachable => "master unreachable",
        }
    }
}

/// What became of a slot, as its ledger row says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotFate {
    Fired,
    Skipped(SkipReason),
    Missed(MissReason),
}

impl SlotFate {
    pub fn state(self) -> &'static str {
        match self {
            SlotFate::Fired => "fired",
            SlotFate::Skipped(_) => "skipped",
            SlotFate::Missed(_) => "missed",
        }
    }

    pub fn reason(self) -> Option<&'static str> {
        match self {
            SlotFate::Fired => None,
            SlotFate::Skipped(r) => Some(r.as_str()),
            SlotFate::Missed(r) => Some(r.as_str()),
        }
    }
}

/// A row for the fire ledger, claimed before anything is published: one scheduled slot (or a
/// gap of missed ones, `slot` to `last`), or a manual run (no slot). The database refuses a
/// second claim of the same `(job, slot)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    pub job: String,
    /// `None` for a manual run.
    pub slot: Option<Timestamp>,
    /// The last slot of a missed gap (`None`: the row stands for `slot` alone).
    pub last: Option<Timestamp>,
    /// Slots the row stands for (a gap's count; 1 otherwise).
    pub count: u64,
    pub fate: SlotFate,
    pub trigger: Trigger,
    /// The run it started (fired rows).
    pub instance: Option<String>,
    pub detail: String,
    /// When it was claimed.
    pub at: Timestamp,
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
    /// A wrapper connected to this daemon (every connection: a count past one is a reconnect).
    Connected {
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
    /// Nothing of the run reached the Salt master (it could not be reached while the launch
    /// was retried): its slot was missed after all.
    NotLaunched {
        instance: String,
        why: String,
        at: Timestamp,
    },
    RunEnded {
        instance: String,
        success: bool,
        succeeded: usize,
        total: usize,
        at: Timestamp,
    },
    /// The failed targets of `plan.previous` will be tried again (`retries`), recorded
    /// before that run's end.
    RetryPlanned(RetryPlan),
    /// The attempt planned for this run's failed targets will not run (its job is gone,
    /// global maintenance).
    RetryDropped { instance: String },
    /// This run is attempt `attempt` of the slot `first` started, trying again what failed
    /// in `previous` (recorded right after its start).
    Attempt {
        instance: String,
        first: String,
        previous: String,
        attempt: u32,
    },
    /// Notifications decided for a job, for the outbox, stored in the transaction of the
    /// event that caused them (recorded right after it, in one message).
    Notified(Notified),
}

/// Another attempt of a slot for the targets that failed the last one (`retries`): decided by
/// `scheduler::retry`, stored with the failed run, resumed after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPlan {
    pub job: String,
    /// The slot's first run: every attempt is named after it.
    pub first: String,
    /// The run whose failed targets are tried again.
    pub previous: String,
    /// This attempt's number (the first run is attempt 1).
    pub attempt: u32,
    /// The slot (`None` for a manual run).
    pub slot: Option<Timestamp>,
    pub machines: Vec<String>,
    pub due: Timestamp,
}

impl RetryPlan {
    /// The attempt's run: `<first>_retry<attempt>`.
    pub fn instance(&self) -> String {
        format!("{}_retry{}", self.first, self.attempt)
    }
}

/// What the notification tracker decided for a job: its failure streak from now on, and the
/// deliveries to make (one per channel).
#[derive(Clone, Debug, PartialEq)]
pub struct Notified {
    pub job: String,
    /// Failed runs in a row and whether someone was told in this streak; `None`: unchanged.
    pub streak: Option<(u32, bool)>,
    pub deliveries: Vec<NewDelivery>,
    pub at: Timestamp,
}

/// One notification for one channel, as the outbox stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDelivery {
    pub channel: String,
    /// `failure`, `recovery`, `missed`, ….
    pub event: String,
    pub instance: Option<String>,
    pub slot: Option<Timestamp>,
    /// The notice as JSON, sent as it is (a retry sends the same bytes).
    pub body: String,
    /// Past the job's hourly limit: recorded, never sent.
    pub suppressed: bool,
}
