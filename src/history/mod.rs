//! Run history in SQLite (WAL): every run, each target's result and capped output, the fire
//! ledger (`ledger.rs`: every slot's fate, claimed before anything is published), and the
//! maintenance switches set through the API. One thread owns the connection;
//! everyone else holds a [`History`] handle. Events are applied in arrival order and in batches
//! (one transaction per burst), and a query sees every event sent before it. After each commit
//! live views get one small [`Committed`] notice naming what changed (never the output), and
//! the bytes waiting for the store are counted so that the producer can wait for the disk
//! ([`History::writable`]) instead of the queue growing without bound.
//!
//! Must not know: HTTP, Salt, the wrapper protocol, the engine's internals.

pub mod db;
pub mod fleet;
pub mod ledger;
pub mod outbox;
pub mod output;
pub mod probe;
pub mod schema;
pub mod tokens;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;

use db::{Database, Db, DbError, p};
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::{Notify, broadcast, oneshot};

use crate::journal::{Claim, RetryPlan, RunEvent};
use ledger::{ClaimResult, Head, SlotFilter, SlotRow};
use output::{CapState, Slice};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: DbError,
    },
    #[error("database {path}: {source}")]
    Migrate {
        path: String,
        #[source]
        source: schema::MigrateError,
    },
    #[error("cannot create {dir}: {source}")]
    Dir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the history store has stopped")]
    Stopped,
    /// The store could not commit (disk full, read-only file system...): what was sent before
    /// is kept in memory and retried, but it is not stored yet.
    #[error("not stored yet: {0}")]
    NotStored(String),
    #[error("database: {0}")]
    Sql(#[from] DbError),
}

/// Limits on what is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Output bytes kept per target (head and tail).
    pub output_cap: usize,
    /// Runs older than this are deleted (0: kept forever).
    pub max_age_days: u64,
    /// At most this many runs per job (0: no limit).
    pub max_runs_per_job: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            output_cap: 1 << 20,
            max_age_days: 30,
            max_runs_per_job: 1000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRow {
    pub instance: String,
    pub job: String,
    pub trigger: String,
    pub scheduled_at: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub jid: Option<String>,
    pub success: Option<bool>,
    pub succeeded: Option<u64>,
    pub total: Option<u64>,
    pub running: bool,
    /// This run's attempt of its slot (1: the first run; `retries` add more).
    pub attempt: u32,
    /// The slot's first run, for an attempt after the first.
    pub first_instance: Option<String>,
    /// An attempt planned for this run's failed targets, not started yet: when it is due.
    pub retry_at: Option<String>,
    /// The daemon that launched or adopted it (empty before owners were recorded).
    pub owner: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetRow {
    pub machine: String,
    /// `expected` (Phase 1), `running` (Phase 2), `done`, or `maintenance` (left out).
    pub state: String,
    pub exit_code: Option<i64>,
    pub meaning: Option<String>,
    pub note: Option<String>,
    pub confirmed_at: Option<String>,
    pub ended_at: Option<String>,
    pub wrapper_version: Option<String>,
    pub pid: Option<i64>,
    pub last_heartbeat: Option<String>,
    pub output_bytes: u64,
    pub dropped_bytes: u64,
    /// Times its wrapper connected; past one, it reconnected (a cut, a restart, an adoption).
    pub connections: u64,
    /// The daemon its wrapper last connected to, and when.
    pub connected_to: String,
    pub connected_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunRow,
    pub targets: Vec<TargetRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SkipRow {
    pub job: String,
    pub at: String,
    pub reason: String,
    pub detail: String,
}

/// A run that had not ended when the daemon stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    pub instance: String,
    pub job: String,
    pub token: String,
    pub jid: Option<String>,
    pub open: Vec<OpenTarget>,
    /// Targets that had their result, with its exit code.
    pub done: Vec<(String, i64)>,
    /// Batches not yet published (`batch_size`), in order.
    pub batches: Vec<Vec<String>>,
    /// A launch sent to Salt whose reply was not recorded: its jid, to publish it again.
    pub launching: Option<String>,
    /// Who claimed its slot in the ledger (`host:pid`), when known.
    pub claimed_by: Option<String>,
    pub started: Option<Timestamp>,
    /// The slot it was due at (`None`: a manual run).
    pub scheduled: Option<Timestamp>,
}

/// A target without a result in a run that had not ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenTarget {
    pub machine: String,
    /// Past Phase 1 (its wrapper runs).
    pub confirmed: bool,
    /// The next output message expected from its wrapper.
    pub next_seq: i64,
}

/// A target's start or result, for the timeline of recent runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineItem {
    pub cron: String,
    pub machine: String,
    pub timestamp: String,
    /// The exit code (`machine_result` only).
    pub ret_code: Option<i64>,
    /// `machine_start` or `machine_result`, as the original's records.
    pub msg_type: &'static str,
    pub job_instance: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MaintenanceState {
    pub global: bool,
    pub machines: Vec<String>,
}

/// What a heartbeat found: runs taken over from daemons whose lease ran out (to carry on),
/// runs another daemon took over from this one (to let go of, acting on them no more), where
/// the other live daemons' wrappers connect, commands waiting for this daemon, and the
/// maintenance switches as stored.
#[derive(Debug, Default)]
pub struct Beat {
    pub adopted: Vec<InFlight>,
    pub lost: Vec<String>,
    pub peers: Vec<String>,
    pub commands: Vec<fleet::CommandRow>,
    /// The maintenance switches as stored (another daemon's API may have set them).
    pub maintenance: MaintenanceState,
    /// The API tokens as stored (another daemon's operator may have added or revoked one).
    pub api_tokens: Vec<tokens::Digest>,
}

/// Deliveries due now, and when the next one not yet due is (unix ms).
pub type DueDeliveries = (Vec<outbox::Due>, Option<i64>);

enum Query {
    LastRuns(oneshot::Sender<HashMap<String, RunRow>>),
    Runs {
        job: String,
        before: Option<String>,
        limit: usize,
        reply: oneshot::Sender<Vec<RunRow>>,
    },
    Run {
        instance: String,
        reply: oneshot::Sender<Option<RunDetail>>,
    },
    Output {
        instance: String,
        machine: String,
        offset: u64,
        reply: oneshot::Sender<Option<(Slice, bool)>>,
    },
    Skips {
        job: String,
        limit: usize,
        reply: oneshot::Sender<Vec<SkipRow>>,
    },
    Claim {
        claims: Vec<Claim>,
        notices: Vec<Option<crate::journal::Notified>>,
        by: String,
        reply: oneshot::Sender<Result<Vec<ClaimResult>, HistoryError>>,
    },
    Slots {
        job: String,
        filter: SlotFilter,
        limit: usize,
        reply: oneshot::Sender<Vec<SlotRow>>,
    },
    Heads {
        /// One job's only, or every job's.
        job: Option<String>,
        reply: oneshot::Sender<HashMap<String, Head>>,
    },
    Planned {
        jobs: Vec<String>,
        at: Timestamp,
        reply: oneshot::Sender<Result<(), HistoryError>>,
    },
    InFlight(oneshot::Sender<Vec<InFlight>>),
    Maintenance(oneshot::Sender<MaintenanceState>),
    SetMaintenance {
        machine: Option<String>,
        on: bool,
        reply: oneshot::Sender<MaintenanceState>,
    },
    Size(oneshot::Sender<u64>),
    Running(oneshot::Sender<Vec<RunDetail>>),
    Timeline {
        from_ms: i64,
        to_ms: i64,
        reply: oneshot::Sender<Vec<TimelineItem>>,
    },
    Streaks(oneshot::Sender<HashMap<String, (u32, bool)>>),
    PendingRetries(oneshot::Sender<Vec<RetryPlan>>),
    DueDeliveries {
        now_ms: i64,
        limit: usize,
        busy: Vec<i64>,
        reply: oneshot::Sender<Result<DueDeliveries, HistoryError>>,
    },
    Attempted {
        id: i64,
        outcome: outbox::Attempt,
        at_ms: i64,
        reply: oneshot::Sender<Result<(), HistoryError>>,
    },
    Deliveries {
        job: Option<String>,
        before: Option<i64>,
        limit: usize,
        reply: oneshot::Sender<Vec<outbox::DeliveryRow>>,
    },
    Flush(oneshot::Sender<Result<(), HistoryError>>),
    Register {
        me: fleet::DaemonInfo,
        lease_ms: i64,
        reply: oneshot::Sender<Result<usize, HistoryError>>,
    },
    Beat {
        lease_ms: i64,
        reply: oneshot::Sender<Result<Beat, HistoryError>>,
    },
    Daemons {
        lease_ms: i64,
        reply: oneshot::Sender<Result<Vec<fleet::DaemonRow>, HistoryError>>,
    },
    ApiTokens(oneshot::Sender<Result<Vec<tokens::Digest>, HistoryError>>),
    OwnerOf {
        instance: String,
        reply: oneshot::Sender<Result<Option<String>, HistoryError>>,
    },
    SendCommand {
        daemon: String,
        command: fleet::CommandRow,
        reply: oneshot::Sender<Result<i64, HistoryError>>,
    },
    CommandDone {
        id: i64,
        outcome: String,
        reply: oneshot::Sender<Result<(), HistoryError>>,
    },
    CommandOutcome {
        id: i64,
        reply: oneshot::Sender<Result<Option<String>, HistoryError>>,
    },
    Commands(oneshot::Sender<Result<Vec<fleet::CommandRow>, HistoryError>>),
    /// Runs SQL on the store's connection (tests: a full disk through `max_page_count`).
    #[cfg(test)]
    Exec(String, oneshot::Sender<()>),
}

enum Msg {
    /// An event and what it counts against the queue limit.
    Event {
        event: RunEvent,
        weight: usize,
    },
    /// Events that go into one transaction (taken into a batch whole).
    Events {
        events: Vec<RunEvent>,
        weight: usize,
    },
    Query(Query),
    /// Holds the store thread (tests: a disk slower than the input).
    #[cfg(test)]
    Pause {
        reached: oneshot::Sender<()>,
        resume: std_mpsc::Receiver<()>,
    },
}

/// Adds a message to a batch, a group of events as its events (the first carries the
/// group's weight), so they are applied, committed or kept for a retry together.
fn push_msg(batch: &mut Vec<Msg>, m: Msg) {
    match m {
        Msg::Events { events, weight } => {
            let mut weight = weight;
            batch.extend(events.into_iter().map(|event| Msg::Event {
                event,
                weight: std::mem::take(&mut weight),
            }));
        }
        m => batch.push(m),
    }
}

/// Bytes of events waiting for the store past which [`History::writable`] waits.
pub const QUEUE_LIMIT: usize = 32 << 20;

/// What an event counts besides its payload (its names, the channel's slot).
const EVENT_OVERHEAD: usize = 128;

/// Notices kept for a subscriber that has not read them; one that falls further behind gets
/// [`Notice::Missed`]. Notices hold names only, so this bounds memory whatever the output.
const NOTICES: usize = 64;

/// What an event weighs in the queue: its variable-size parts plus a constant.
fn weight(event: &RunEvent) -> usize {
    EVENT_OVERHEAD
        + match event {
            RunEvent::Output { data, .. } => data.len(),
            RunEvent::Published { machines, .. } => machines.iter().map(String::len).sum(),
            RunEvent::BatchesLeft { batches, .. } => {
                batches.iter().flatten().map(String::len).sum()
            }
            RunEvent::TargetEnded { note, .. } => note.as_ref().map_or(0, String::len),
            RunEvent::NotLaunched { why, .. } => why.len(),
            RunEvent::Notified(n) => n.deliveries.iter().map(|d| d.body.len()).sum(),
            _ => 0,
        }
}

/// The run an event concerns, and its target if it concerns one.
fn event_target(event: &RunEvent) -> Option<(&String, Option<&String>)> {
    Some(match event {
        RunEvent::RetryPlanned(RetryPlan {
            previous: instance, ..
        })
        | RunEvent::RetryDropped { instance }
        | RunEvent::Attempt { instance, .. } => (instance, None),
        RunEvent::Notified(_) => return None,
        RunEvent::Started { instance, .. }
        | RunEvent::Published { instance, .. }
        | RunEvent::BatchesLeft { instance, .. }
        | RunEvent::Launching { instance, .. }
        | RunEvent::NotLaunched { instance, .. }
        | RunEvent::RunEnded { instance, .. } => (instance, None),
        RunEvent::MachineSkipped { instance, machine }
        | RunEvent::Confirmed {
            instance, machine, ..
        }
        | RunEvent::Waiting {
            instance, machine, ..
        }
        | RunEvent::WrapperStarted {
            instance, machine, ..
        }
        | RunEvent::Heartbeat {
            instance, machine, ..
        }
        | RunEvent::Connected {
            instance, machine, ..
        }
        | RunEvent::Output {
            instance, machine, ..
        }
        | RunEvent::TargetEnded {
            instance, machine, ..
        }
        | RunEvent::LateResult {
            instance, machine, ..
        } => (instance, Some(machine)),
    })
}

/// What one transaction changed, sent to live views after its commit: names only, no output.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Committed {
    serial: u64,
    /// Instance → the machines whose rows it touched (empty when only the run's own row was).
    runs: HashMap<String, HashSet<String>>,
    /// Jobs with new ledger rows (slots fired, skipped or missed; manual runs).
    slots: HashSet<String>,
    /// A maintenance switch was set.
    maintenance: bool,
    /// Notifications were queued for delivery.
    deliveries: bool,
}

impl Committed {
    /// Counts commits that changed something, from 1 in each process.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The runs this commit touched.
    pub fn runs(&self) -> impl Iterator<Item = &str> {
        self.runs.keys().map(String::as_str)
    }

    pub fn touched_run(&self, instance: &str) -> bool {
        self.runs.contains_key(instance)
    }

    /// Whether the target's row or output changed.
    pub fn touched_target(&self, instance: &str, machine: &str) -> bool {
        self.runs.get(instance).is_some_and(|m| m.contains(machine))
    }

    /// Jobs with new ledger rows.
    pub fn slots(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(String::as_str)
    }

    /// New deliveries wait in the outbox.
    pub fn deliveries_queued(&self) -> bool {
        self.deliveries
    }

    pub fn maintenance_changed(&self) -> bool {
        self.maintenance
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.slots.is_empty() && !self.maintenance && !self.deliveries
    }

    fn note(&mut self, event: &RunEvent) {
        if let RunEvent::Notified(n) = event {
            self.deliveries |= n.deliveries.iter().any(|d| !d.suppressed);
            return;
        }
        let Some((instance, machine)) = event_target(event) else {
            return;
        };
        if !self.runs.contains_key(instance) {
            self.runs.insert(instance.clone(), HashSet::new());
        }
        let machines = self.runs.get_mut(instance).expect("inserted");
        let mut add = |m: &String| {
            if !machines.contains(m) {
                machines.insert(m.clone());
            }
        };
        if let RunEvent::Published { machines: new, .. } = event {
            new.iter().for_each(&mut add);
        }
        if let Some(m) = machine {
            add(m);
        }
    }
}

/// What a live view learns: one commit, or that it fell behind.
#[derive(Clone, Debug)]
pub enum Notice {
    Commit(Arc<Committed>),
    /// Notices were lost while the subscriber did not read: anything may have changed.
    Missed,
}

impl Notice {
    /// Whether the run may have changed (always, after [`Notice::Missed`]).
    pub fn touched_run(&self, instance: &str) -> bool {
        match self {
            Notice::Commit(c) => c.touched_run(instance),
            Notice::Missed => true,
        }
    }

    /// Whether the target may have changed (always, after [`Notice::Missed`]).
    pub fn touched_target(&self, instance: &str, machine: &str) -> bool {
        match self {
            Notice::Commit(c) => c.touched_target(instance, machine),
            Notice::Missed => true,
        }
    }
}

/// A live view's subscription: one [`Notice`] per commit, after the commit.
pub struct Commits {
    rx: broadcast::Receiver<Arc<Committed>>,
}

impl Commits {
    /// Waits for the next commit; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Notice> {
        match self.rx.recv().await {
            Ok(c) => Some(Notice::Commit(c)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Notice::Missed),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// What the handles and the store thread share: the queue's weight and the query count.
struct Shared {
    /// Bytes of events sent and not yet applied and committed.
    queued: AtomicUsize,
    limit: usize,
    /// Woken when `queued` falls under `limit` (or the store stops).
    drained: Notify,
    stopped: AtomicBool,
    queries: AtomicU64,
    /// Transactions that could not be committed, and whether the last one failed.
    commit_failures: AtomicU64,
    failing: AtomicBool,
    /// Runs another daemon took over from this one: nothing of theirs is stored from here,
    /// so nothing of theirs may be acknowledged either.
    lost: std::sync::Mutex<HashSet<String>>,
    /// The store's thread, woken by queries while it gathers a batch (events do not wake it).
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl Shared {
    /// Ends the store's wait for more events of a batch (a query is waiting, or the queue
    /// is past the point where the batch is committed at once).
    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Marks the store stopped when its thread ends, however it ends, so no writer waits forever.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.drained.notify_waiters();
    }
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct History {
    tx: std_mpsc::Sender<Msg>,
    commits: broadcast::Sender<Arc<Committed>>,
    shared: Arc<Shared>,
    database: Arc<Database>,
}

/// A read-only connection of its own, for a reader of committed output that must not end the
/// store's group commits with a query per target (the job log at the end of a large run).
pub struct OutputReader {
    db: Db,
}

impl OutputReader {
    /// Runs `f` in one read transaction: a burst of reads takes the database's read lock once
    /// and sees one snapshot, instead of a transaction per query.
    pub fn snapshot<T>(&self, f: impl FnOnce(&OutputReader) -> T) -> T {
        let began = self.db.begin().is_ok();
        let out = f(self);
        if began {
            let _ = self.db.commit();
        }
        out
    }

    /// A target's committed output from byte `offset`, and whether it has ended.
    pub fn output(
        &self,
        instance: &str,
        machine: &str,
        offset: u64,
    ) -> Result<Option<(Slice, bool)>, HistoryError> {
        Ok(read_output(&self.db, instance, machine, offset)?)
    }
}

impl History {
    /// Opens (creating and migrating) the SQLite database at `path` and starts its thread.
    pub fn open(path: &Path, retention: Retention) -> Result<History, HistoryError> {
        History::open_with_queue_limit(path, retention, QUEUE_LIMIT)
    }

    /// [`History::open`] with [`History::writable`] waiting past `queue_limit` bytes.
    pub fn open_with_queue_limit(
        path: &Path,
        retention: Retention,
        queue_limit: usize,
    ) -> Result<History, HistoryError> {
        History::connect(&Database::File(path.to_path_buf()), retention, queue_limit)
    }

    /// Opens the store where `database` says (a SQLite file, created if missing, or a
    /// PostgreSQL server), brings its schema up to date and starts its thread.
    pub fn connect(
        database: &Database,
        retention: Retention,
        queue_limit: usize,
    ) -> Result<History, HistoryError> {
        if let Database::File(path) = database
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::Dir {
                dir: dir.display().to_string(),
                source,
            })?;
        }
        let (tx, rx) = std_mpsc::channel();
        let (commits, _) = broadcast::channel(NOTICES);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            limit: queue_limit,
            drained: Notify::new(),
            stopped: AtomicBool::new(false),
            queries: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            lost: std::sync::Mutex::new(HashSet::new()),
            thread: std::sync::OnceLock::new(),
        });
        // The connection is opened and migrated on the store's own thread: PostgreSQL's
        // client blocks on a runtime of its own, which may not run inside the daemon's.
        let (opened_tx, opened) = std_mpsc::sync_channel(1);
        let guard = StopGuard(shared.clone());
        let (target, store_commits, store_shared) =
            (database.clone(), commits.clone(), shared.clone());
        std::thread::Builder::new()
            .name("history".into())
            .spawn(move || {
                let _guard = guard;
                let _ = store_shared.thread.set(std::thread::current());
                let shown = target.shown();
                let db = Db::open(&target)
                    .map_err(|source| HistoryError::Open {
                        path: shown.clone(),
                        source,
                    })
                    .and_then(|db| {
                        schema::migrate(&db)
                            .map(|()| db)
                            .map_err(|source| HistoryError::Migrate {
                                path: shown,
                                source,
                            })
                    });
                let db = db.and_then(|mut db| {
                    db.checkpoint_in_background(CHECKPOINT_PAGES)
                        .map(|()| db)
                        .map_err(|source| HistoryError::Open {
                            path: target.shown(),
                            source,
                        })
                });
                let db = match db {
                    Ok(db) => {
                        let _ = opened_tx.send(Ok(()));
                        db
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                let mut store = Store {
                    db,
                    retention,
                    outputs: HashMap::new(),
                    dirty: Vec::new(),
                    beats: HashMap::new(),
                    beats_written: std::time::Instant::now(),
                    pending_chunks: HashMap::new(),
                    commits: store_commits,
                    serial: 0,
                    shared: store_shared,
                    careful: false,
                    me: None,
                    owned: HashMap::new(),
                    newly_lost: Vec::new(),
                };
                store.serve(rx)
            })
            .map_err(|source| HistoryError::Dir {
                dir: "(history thread)".into(),
                source,
            })?;
        opened.recv().map_err(|_| HistoryError::Stopped)??;
        Ok(History {
            tx,
            commits,
            shared,
            database: Arc::new(database.clone()),
        })
    }

    /// Records one step of a run. Never blocks: a producer that may outrun the disk awaits
    /// [`History::writable`] between events.
    pub fn record(&self, event: RunEvent) {
        let weight = weight(&event);
        let queued = self.shared.queued.fetch_add(weight, Ordering::AcqRel) + weight;
        if self.tx.send(Msg::Event { event, weight }).is_err() {
            self.shared.queued.fetch_sub(weight, Ordering::AcqRel);
        } else if queued >= self.shared.limit / 4 {
            self.shared.wake();
        }
    }

    /// Resolves at once while the events waiting for the store weigh less than the queue
    /// limit; otherwise once the store has drained under it (or stopped). No polling.
    pub async fn writable(&self) {
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a drain in between is not missed.
            drained.as_mut().enable();
            if self.is_writable() {
                return;
            }
            drained.await;
        }
    }

    /// Whether [`History::writable`] would resolve at once.
    pub fn is_writable(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) < self.shared.limit
            || self.shared.stopped.load(Ordering::Acquire)
    }

    /// Bytes of events recorded and not yet committed (payloads plus a constant per event).
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// One [`Notice`] per commit from now on, for live views. Subscribe before the first
    /// read, so nothing committed in between is missed.
    pub fn subscribe(&self) -> Commits {
        Commits {
            rx: self.commits.subscribe(),
        }
    }

    /// Queries asked so far (tests prove with it that idle live views ask nothing).
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Query,
    ) -> Result<T, HistoryError> {
        self.shared.queries.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Query(make(reply)))
            .map_err(|_| HistoryError::Stopped)?;
        self.shared.wake();
        answer.await.map_err(|_| HistoryError::Stopped)
    }

    /// Each job's latest run.
    pub async fn last_runs(&self) -> Result<HashMap<String, RunRow>, HistoryError> {
        self.ask(Query::LastRuns).await
    }

    /// A job's runs, newest first, before the instance `before` (paging).
    pub async fn runs(
        &self,
        job: &str,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<RunRow>, HistoryError> {
        let job = job.to_string();
        self.ask(|reply| Query::Runs {
            job,
            before,
            limit,
            reply,
        })
        .await
    }

    pub async fn run(&self, instance: &str) -> Result<Option<RunDetail>, HistoryError> {
        let instance = instance.to_string();
        self.ask(|reply| Query::Run { instance, reply }).await
    }

    /// A target's output from `offset`, and whether the target has ended.
    pub async fn output(
        &self,
        instance: &str,
        machine: &str,
        offset: u64,
    ) -> Result<Option<(Slice, bool)>, HistoryError> {
        let (instance, machine) = (instance.to_string(), machine.to_string());
        self.ask(|reply| Query::Output {
            instance,
            machine,
            offset,
            reply,
        })
        .await
    }

    pub async fn skips(&self, job: &str, limit: usize) -> Result<Vec<SkipRow>, HistoryError> {
        let job = job.to_string();
        self.ask(|reply| Query::Skips { job, limit, reply }).await
    }

    /// Claims ledger rows in one transaction, after everything sent before is committed: each
    /// is ours, or refused with who claimed its slot first. `by` names the claimer.
    pub async fn claim(
        &self,
        claims: Vec<Claim>,
        by: &str,
    ) -> Result<Vec<ClaimResult>, HistoryError> {
        self.claim_notifying(claims, Vec::new(), by).await
    }

    /// As [`History::claim`], storing `notices[i]` with claim `i` when it is won (the
    /// notifications of a missed gap go with its row, or not at all).
    pub async fn claim_notifying(
        &self,
        claims: Vec<Claim>,
        notices: Vec<Option<crate::journal::Notified>>,
        by: &str,
    ) -> Result<Vec<ClaimResult>, HistoryError> {
        let by = by.to_string();
        self.ask(|reply| Query::Claim {
            claims,
            notices,
            by,
            reply,
        })
        .await?
    }

    /// A job's ledger rows, newest first.
    pub async fn slots(
        &self,
        job: &str,
        filter: SlotFilter,
        limit: usize,
    ) -> Result<Vec<SlotRow>, HistoryError> {
        let job = job.to_string();
        self.ask(|reply| Query::Slots {
            job,
            filter,
            limit,
            reply,
        })
        .await
    }

    /// Notes that `jobs` were planned afresh from `at` (see `PlanChanges::fresh`).
    pub async fn planned(&self, jobs: Vec<String>, at: Timestamp) -> Result<(), HistoryError> {
        self.ask(|reply| Query::Planned { jobs, at, reply }).await?
    }

    /// Each job's last claimed and last fired slot.
    pub async fn heads(&self) -> Result<HashMap<String, Head>, HistoryError> {
        self.ask(|reply| Query::Heads { job: None, reply }).await
    }

    /// One job's ledger head (one row read, whatever the number of jobs).
    pub async fn head(&self, job: &str) -> Result<Option<Head>, HistoryError> {
        let job = Some(job.to_string());
        let mut heads = self.ask(|reply| Query::Heads { job, reply }).await?;
        Ok(heads.drain().next().map(|(_, h)| h))
    }

    /// Runs that had not ended (after a restart: to be adopted again).
    pub async fn in_flight(&self) -> Result<Vec<InFlight>, HistoryError> {
        self.ask(Query::InFlight).await
    }

    pub async fn maintenance(&self) -> Result<MaintenanceState, HistoryError> {
        self.ask(Query::Maintenance).await
    }

    pub async fn set_maintenance(
        &self,
        machine: Option<String>,
        on: bool,
    ) -> Result<MaintenanceState, HistoryError> {
        self.ask(|reply| Query::SetMaintenance { machine, on, reply })
            .await
    }

    /// The database's size in bytes (file plus write-ahead log).
    pub async fn size(&self) -> Result<u64, HistoryError> {
        self.ask(Query::Size).await
    }

    /// Runs in flight, with their targets.
    pub async fn running(&self) -> Result<Vec<RunDetail>, HistoryError> {
        self.ask(Query::Running).await
    }

    /// Targets' starts and results between two instants (ms since the epoch), oldest first.
    pub async fn timeline(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<TimelineItem>, HistoryError> {
        self.ask(|reply| Query::Timeline {
            from_ms,
            to_ms,
            reply,
        })
        .await
    }

    /// A connection of its own to the same database (read-only for SQLite); it sees what is
    /// committed.
    pub fn output_reader(&self) -> Result<OutputReader, HistoryError> {
        let open = |source| HistoryError::Open {
            path: self.database.shown(),
            source,
        };
        let db = match &*self.database {
            Database::File(path) => db::open_sqlite_existing(path, true).map_err(open)?,
            pg => Db::open(pg).map_err(open)?,
        };
        Ok(OutputReader { db })
    }

    /// Where the store lives.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Records this daemon in the store and takes back the runs it owned before a restart
    /// (and those of no one, or of daemons whose lease ran out): [`History::in_flight`] then
    /// lists those. Returns how many other daemons hold a current lease.
    pub async fn register(
        &self,
        me: fleet::DaemonInfo,
        lease: std::time::Duration,
    ) -> Result<usize, HistoryError> {
        self.ask(|reply| Query::Register {
            me,
            lease_ms: lease.as_millis() as i64,
            reply,
        })
        .await?
    }

    /// Renews this daemon's lease (see [`Beat`]).
    pub async fn beat(&self, lease: std::time::Duration) -> Result<Beat, HistoryError> {
        self.ask(|reply| Query::Beat {
            lease_ms: lease.as_millis() as i64,
            reply,
        })
        .await?
    }

    /// The daemons sharing this store.
    pub async fn daemons(
        &self,
        lease: std::time::Duration,
    ) -> Result<Vec<fleet::DaemonRow>, HistoryError> {
        self.ask(|reply| Query::Daemons {
            lease_ms: lease.as_millis() as i64,
            reply,
        })
        .await?
    }

    /// The API tokens kept in the store (`saltpeter token`), as digests.
    pub async fn api_tokens(&self) -> Result<Vec<tokens::Digest>, HistoryError> {
        self.ask(Query::ApiTokens).await?
    }

    /// Which daemon owns the run in flight `instance`.
    pub async fn owner_of(&self, instance: &str) -> Result<Option<String>, HistoryError> {
        let instance = instance.to_string();
        self.ask(|reply| Query::OwnerOf { instance, reply }).await?
    }

    /// Queues a command for another daemon (and wakes it); its id.
    pub async fn send_command(
        &self,
        daemon: &str,
        command: fleet::CommandRow,
    ) -> Result<i64, HistoryError> {
        let daemon = daemon.to_string();
        self.ask(|reply| Query::SendCommand {
            daemon,
            command,
            reply,
        })
        .await?
    }

    pub async fn command_done(&self, id: i64, outcome: String) -> Result<(), HistoryError> {
        self.ask(|reply| Query::CommandDone { id, outcome, reply })
            .await?
    }

    /// Commands for this daemon not carried out yet.
    pub async fn commands(&self) -> Result<Vec<fleet::CommandRow>, HistoryError> {
        self.ask(Query::Commands).await?
    }

    /// What became of a command sent with [`History::send_command`] (`None`: pending).
    pub async fn command_outcome(&self, id: i64) -> Result<Option<String>, HistoryError> {
        self.ask(|reply| Query::CommandOutcome { id, reply })
            .await?
    }

    /// Whether this daemon still holds `instance` (not taken over by another daemon).
    pub fn holds(&self, instance: &str) -> bool {
        !self
            .shared
            .lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(instance)
    }

    /// Resolves once everything sent before it is committed; [`HistoryError::NotStored`] when
    /// the store could not commit it (it keeps it and retries; flush again later).
    /// Records events in one transaction (a run's end and the notifications it decided).
    pub fn record_together(&self, events: Vec<RunEvent>) {
        let weight = events.iter().map(weight).sum();
        let queued = self.shared.queued.fetch_add(weight, Ordering::AcqRel) + weight;
        if self.tx.send(Msg::Events { events, weight }).is_err() {
            self.shared.queued.fetch_sub(weight, Ordering::AcqRel);
        } else if queued >= self.shared.limit / 4 {
            self.shared.wake();
        }
    }

    /// Attempts planned for failed targets and not started yet.
    pub async fn pending_retries(&self) -> Result<Vec<RetryPlan>, HistoryError> {
        self.ask(Query::PendingRetries).await
    }

    /// Every job's stored failure streak: `(failures in a row, someone was told)`.
    pub async fn streaks(&self) -> Result<HashMap<String, (u32, bool)>, HistoryError> {
        self.ask(Query::Streaks).await
    }

    /// Pending deliveries due by `now_ms` (not those in `busy`), and when the next is due.
    pub async fn due_deliveries(
        &self,
        now_ms: i64,
        limit: usize,
        busy: Vec<i64>,
    ) -> Result<DueDeliveries, HistoryError> {
        self.ask(|reply| Query::DueDeliveries {
            now_ms,
            limit,
            busy,
            reply,
        })
        .await?
    }

    /// Records an attempt at a delivery (committed before this returns).
    pub async fn attempted(
        &self,
        id: i64,
        outcome: outbox::Attempt,
        at_ms: i64,
    ) -> Result<(), HistoryError> {
        self.ask(|reply| Query::Attempted {
            id,
            outcome,
            at_ms,
            reply,
        })
        .await?
    }

    /// Deliveries newest first (one job's, or all), before the id `before`.
    pub async fn deliveries(
        &self,
        job: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<outbox::DeliveryRow>, HistoryError> {
        self.ask(|reply| Query::Deliveries {
            job: job.map(str::to_string),
            before,
            limit,
            reply,
        })
        .await
    }

    pub async fn flush(&self) -> Result<(), HistoryError> {
        self.ask(Query::Flush).await?
    }

    /// How the store's commits fare, for `/metrics`: (commits failed so far, whether what was
    /// last sent is still waiting to be stored).
    pub fn health(&self) -> impl Fn() -> (u64, bool) + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || {
            (
                shared.commit_failures.load(Ordering::Relaxed),
                shared.failing.load(Ordering::Relaxed),
            )
        }
    }

    /// Runs `sql` on the store's own connection, between two transactions.
    #[cfg(test)]
    pub(crate) async fn exec(&self, sql: &str) {
        let sql = sql.to_string();
        self.ask(|reply| Query::Exec(sql, reply)).await.unwrap();
    }

    /// Holds the store thread until the returned sender is dropped.
    #[cfg(test)]
    pub(crate) async fn pause(&self) -> std_mpsc::Sender<()> {
        let (resume_tx, resume) = std_mpsc::channel();
        let (reached, paused) = oneshot::channel();
        self.tx
            .send(Msg::Pause { reached, resume })
            .expect("the store runs");
        self.shared.wake();
        paused.await.expect("the store pauses");
        resume_tx
    }
}

struct Store {
    db: Db,
    retention: Retention,
    /// Targets written to in this process, by instance then machine (a run's end drops its own).
    outputs: HashMap<String, HashMap<String, Written>>,
    /// Targets whose `Written` changed since the last flush (each listed once).
    dirty: Vec<(String, String)>,
    /// Heartbeats not yet written (instance → machine → ms): thousands of wrappers beat every
    /// 5 s, so they are written in one pass every [`BEATS_EVERY`] (and with the target's
    /// result); queries read them from here meanwhile.
    beats: HashMap<String, HashMap<String, i64>>,
    beats_written: std::time::Instant,
    /// Output chunks of the current batch, written before it commits (or any query).
    pending_chunks: HashMap<(String, String, u64), String>,
    commits: broadcast::Sender<Arc<Committed>>,
    /// The last [`Committed::serial`] sent.
    serial: u64,
    shared: Arc<Shared>,
    /// Each event on its own savepoint (PostgreSQL, after a statement failed a batch).
    careful: bool,
    /// This daemon's name in a shared store, once registered.
    me: Option<String>,
    /// Runs in flight this daemon owns, with the lease generation it holds each under.
    owned: HashMap<String, i64>,
    /// Runs lost to another daemon since the last heartbeat, to tell the daemon.
    newly_lost: Vec<String>,
}

/// A target written to in this process: its output cap's state and the next output seq, kept
/// until its run ends; `dirty` until they are written to its row.
struct Written {
    cap: CapState,
    next_seq: Option<i64>,
    dirty: bool,
}

/// A target's output from byte `from` as stored, and whether the target has ended.
fn read_output(
    db: &Db,
    instance: &str,
    machine: &str,
    from: u64,
) -> Result<Option<(Slice, bool)>, DbError> {
    let Some((total, state)) = db.row(
        "SELECT output_bytes, state FROM targets WHERE instance = ?1 AND machine = ?2",
        p![instance, machine],
        |r| Ok((r.get::<u64>(0)?, r.get::<String>(1)?)),
    )?
    else {
        return Ok(None);
    };
    let done = state == "done" || state == "maintenance";
    if from >= total {
        // Nothing past `from` (most targets of a large run print nothing): no chunk to read.
        return Ok(Some((output::assemble(&[], from, total), done)));
    }
    // From the chunk that holds `from` on (the index bounds the scan).
    let chunks = db.query(
        "SELECT pos, data FROM chunks WHERE instance = ?1 AND machine = ?2 AND pos >=
           COALESCE((SELECT MAX(pos) FROM chunks WHERE instance = ?1 AND machine = ?2 AND pos <= ?3), 0)
         ORDER BY pos",
        p![instance, machine, from as i64],
        |r| Ok((r.get::<u64>(0)?, r.get::<String>(1)?)),
    )?;
    Ok(Some((output::assemble(&chunks, from, total), done)))
}

/// The columns of a run row, in the order `select_runs` reads them (`r` is `runs`).
const RUN_COLUMNS: &str = "r.instance, r.job, r.trigger, r.scheduled_ms, r.started_ms, r.ended_ms,
    r.jid, r.success, r.succeeded, r.total, r.attempt, r.first_instance, r.retry_ms, r.owner";

/// Events are committed together for at most this long (queries do not wait for it).
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_millis(1000);

/// After a failed commit, the first retry; each further failure doubles the wait up to the max.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// WAL pages (4 KiB each) past which a commit wakes the checkpoint thread (SQLite): about
/// 32 MiB of WAL between checkpoints.
const CHECKPOINT_PAGES: u32 = 8_192;

/// How often pending heartbeats are written (queries see them at once regardless).
const BEATS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn iso(ms: Option<i64>) -> Option<String> {
    ms.and_then(|m| Timestamp::from_millisecond(m).ok())
        .map(|t| t.to_string())
}

impl Store {
    fn serve(&mut self, rx: std_mpsc::Receiver<Msg>) {
        let mut last_prune = std::time::Instant::now();
        let mut last_commit = std::time::Instant::now();
        // Events of a transaction that could not be committed, kept (and still counted in the
        // queue, so the daemon slows down rather than piling up more) until a commit succeeds.
        let mut unstored: Vec<(RunEvent, usize)> = Vec::new();
        let mut retry = RETRY_FIRST;
        self.prune();
        loop {
            let first = if unstored.is_empty() {
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(retry) {
                    Ok(m) => Some(m),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            // Group commit: events are gathered for up to COMMIT_EVERY after the last commit
            // (a commit rewrites every page it touched, so a thousand streaming targets must be
            // a few commits a second, not one per message), but a query (a flush, a read)
            // ends the batch at once. Bounded so a query never waits behind many writes.
            // Events that could not be stored before come first: they happened first.
            let mut batch: Vec<Msg> = unstored
                .drain(..)
                .map(|(event, weight)| Msg::Event { event, weight })
                .collect();
            if let Some(m) = first {
                push_msg(&mut batch, m);
            }
            let weight_of = |m: &Msg| match m {
                Msg::Event { weight, .. } => *weight,
                _ => 0,
            };
            let mut asked = batch.iter().any(|m| !matches!(m, Msg::Event { .. }));
            let mut gathered: usize = batch.iter().map(weight_of).sum();
            let gather_until = last_commit + COMMIT_EVERY;
            // Past a quarter of the queue's limit the batch is committed at once: the queue's
            // bytes are released only by a commit, and a writer must not wait for the window.
            let full = self.shared.limit / 4;
            while batch.len() < 5_000 && !asked && gathered < full {
                let m = match rx.try_recv() {
                    Ok(m) => m,
                    Err(std_mpsc::TryRecvError::Disconnected) => break,
                    Err(std_mpsc::TryRecvError::Empty) => {
                        let left =
                            gather_until.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        // Parked rather than waiting on the channel: a wait there is woken by
                        // every event (thousands a second, each a futex wake and two context
                        // switches); only a query or a queue past `full` unparks it. An
                        // unpark that comes before the park is kept, so none is lost.
                        std::thread::park_timeout(left);
                        continue;
                    }
                };
                asked = !matches!(m, Msg::Event { .. } | Msg::Events { .. });
                gathered += match &m {
                    Msg::Events { weight, .. } => *weight,
                    m => weight_of(m),
                };
                push_msg(&mut batch, m);
            }
            let mut changed = Committed::default();
            let mut applied = 0;
            // A batch ends at its first query, so queries come after its events: they are
            // answered after the commit (or the rollback), from what is stored.
            let mut queries: Vec<Query> = Vec::new();
            let mut flushes: Vec<oneshot::Sender<Result<(), HistoryError>>> = Vec::new();
            let mut kept: Vec<(RunEvent, usize)> = Vec::new();
            // The first error that means the storage itself failed: the batch is not stored.
            let mut failed: Option<DbError> = None;
            if let Err(e) = self.db.begin() {
                failed = Some(e);
            }
            for msg in batch {
                match msg {
                    Msg::Event { event, weight } => {
                        if failed.is_none()
                            && let Err(e) = self.apply_one(&event)
                        {
                            if e.is_storage_failure() || self.poisons(&e) {
                                failed = Some(e);
                            } else {
                                tracing::error!(error = %e, ?event, "history: cannot store an event");
                            }
                        }
                        changed.note(&event);
                        applied += weight;
                        kept.push((event, weight));
                    }
                    Msg::Events { events, .. } => {
                        // `push_msg` takes groups apart as they are batched.
                        tracing::error!(
                            events = events.len(),
                            "history: an event group reached the store whole; not stored"
                        );
                    }
                    Msg::Query(Query::Flush(tx)) => flushes.push(tx),
                    Msg::Query(q) => queries.push(q),
                    #[cfg(test)]
                    Msg::Pause { reached, resume } => {
                        let _ = reached.send(());
                        let _ = resume.recv();
                    }
                }
            }
            if failed.is_none()
                && let Err(e) = self.flush_outputs()
            {
                failed = Some(e);
            }
            if failed.is_none() && self.beats_written.elapsed() >= BEATS_EVERY {
                self.write_beats();
            }
            // Fencing: a run another daemon took over meanwhile keeps nothing of this batch.
            let fenced = match failed {
                None => self.fence(&changed),
                Some(_) => Ok(Vec::new()),
            };
            let fenced = match fenced {
                Ok(lost) => lost,
                Err(e) => {
                    failed = Some(e);
                    Vec::new()
                }
            };
            if !fenced.is_empty() {
                let _ = self.db.rollback();
                self.forget_unwritten();
                self.lose(&fenced);
                let gone: HashSet<&str> = fenced.iter().map(String::as_str).collect();
                let (dropped, rest): (Vec<_>, Vec<_>) = kept.into_iter().partition(|(e, _)| {
                    event_target(e).is_some_and(|(i, _)| gone.contains(i.as_str()))
                });
                // Their bytes leave the queue; the rest goes again at once.
                let freed: usize = dropped.iter().map(|(_, w)| w).sum();
                self.shared.queued.fetch_sub(freed, Ordering::AcqRel);
                self.shared.drained.notify_waiters();
                unstored = rest;
                retry = std::time::Duration::ZERO;
                for tx in flushes {
                    let _ = tx.send(Err(HistoryError::NotStored(
                        "runs were taken over by another daemon; storing the rest again".into(),
                    )));
                }
                for q in queries {
                    if let Some(answer) = self.answer(q) {
                        answer();
                    }
                }
                continue;
            }
            last_commit = std::time::Instant::now();
            let outcome = match failed {
                Some(e) => Err(e),
                None => self.db.commit(),
            };
            match outcome {
                Ok(()) => {
                    if self.shared.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("history: storing again; nothing sent meanwhile was lost");
                    }
                    retry = RETRY_FIRST;
                    self.careful = false;
                    // The batch's events are dropped by now: their bytes leave the queue.
                    drop(kept);
                    let left = self.shared.queued.fetch_sub(applied, Ordering::AcqRel) - applied;
                    if left < self.shared.limit {
                        self.shared.drained.notify_waiters();
                    }
                    // Live views and replies only after the commit: what they see is durable.
                    // The notice goes first, so a caller whose flush returned knows it is out.
                    if !changed.is_empty() {
                        self.serial += 1;
                        changed.serial = self.serial;
                        let _ = self.commits.send(Arc::new(changed));
                    }
                    for tx in flushes {
                        let _ = tx.send(Ok(()));
                    }
                }
                Err(e) if !e.is_storage_failure() && !self.careful => {
                    // One event's statement failed on PostgreSQL, which aborts the whole
                    // transaction: the batch goes again at once, each event on its own
                    // savepoint, so only that event is lost.
                    tracing::warn!(error = %e, events = kept.len(), "history: a statement failed; storing the batch again event by event");
                    let _ = self.db.rollback();
                    self.forget_unwritten();
                    self.careful = true;
                    unstored = kept;
                    retry = std::time::Duration::ZERO;
                    for tx in flushes {
                        let _ = tx.send(Err(HistoryError::NotStored(e.to_string())));
                    }
                }
                Err(e) => {
                    self.shared.commit_failures.fetch_add(1, Ordering::Relaxed);
                    self.shared.failing.store(true, Ordering::Relaxed);
                    retry = retry.max(RETRY_FIRST);
                    tracing::error!(error = %e, events = kept.len(), retry_in_ms = retry.as_millis() as u64, "history: cannot commit; keeping the events in memory and retrying (nothing is acknowledged meanwhile)");
                    let _ = self.db.rollback();
                    self.forget_unwritten();
                    unstored = kept;
                    retry = (retry * 2).min(RETRY_MAX);
                    for tx in flushes {
                        let _ = tx.send(Err(HistoryError::NotStored(e.to_string())));
                    }
                }
            }
            for q in queries {
                let maintenance = matches!(q, Query::SetMaintenance { .. });
                let answer = self.answer(q);
                if maintenance {
                    // Its own write, after the batch; views hear of it before the caller does,
                    // as of a commit.
                    self.serial += 1;
                    let notice = Committed {
                        serial: self.serial,
                        maintenance: true,
                        ..Committed::default()
                    };
                    let _ = self.commits.send(Arc::new(notice));
                }
                if let Some(answer) = answer {
                    answer();
                }
            }
            if unstored.is_empty() && last_prune.elapsed() > std::time::Duration::from_secs(3600) {
                self.prune();
                last_prune = std::time::Instant::now();
            }
        }
    }

    /// After a rollback: what this process remembers of targets' output must match the
    /// database again (it is reloaded from there on the next output), so the kept events are
    /// applied again exactly as the first time. Heartbeats written in the failed transaction
    /// are lost; the next beat of each target replaces them.
    fn forget_unwritten(&mut self) {
        self.outputs.clear();
        self.dirty.clear();
        self.pending_chunks.clear();
    }

    /// Of the runs this batch touched, those this daemon no longer holds (a shared store only).
    fn fence(&self, changed: &Committed) -> Result<Vec<String>, DbError> {
        let Some(me) = self.me.as_deref() else {
            return Ok(Vec::new());
        };
        if self.db.kind() != db::Kind::Postgres {
            return Ok(Vec::new());
        }
        let held: Vec<(&str, i64)> = changed
            .runs()
            .filter_map(|i| self.owned.get(i).map(|g| (i, *g)))
            .collect();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        fleet::lost(&self.db, me, &held)
    }

    /// Whether `e`, from one event's statement, spoils the whole transaction: PostgreSQL
    /// aborts a transaction at its first error (unless the event had its own savepoint).
    fn poisons(&self, _e: &DbError) -> bool {
        self.db.kind() == db::Kind::Postgres && !self.careful
    }

    /// Applies one event; in careful mode on its own savepoint, so that its failure leaves
    /// the rest of the transaction standing.
    fn apply_one(&mut self, event: &RunEvent) -> Result<(), DbError> {
        if !(self.careful && self.db.kind() == db::Kind::Postgres) {
            return self.apply(event);
        }
        self.db.batch("SAVEPOINT event")?;
        match self.apply(event) {
            Ok(()) => self.db.batch("RELEASE SAVEPOINT event"),
            Err(e) if e.is_storage_failure() => Err(e),
            Err(e) => {
                // What the event changed in memory stays: the batch's other output waits there.
                self.db.batch("ROLLBACK TO SAVEPOINT event")?;
                Err(e)
            }
        }
    }

    fn apply(&mut self, event: &RunEvent) -> Result<(), DbError> {
        match event {
            RunEvent::Notified(n) => outbox::apply(&self.db, n)?,
            RunEvent::RetryPlanned(RetryPlan {
                previous: instance,
                attempt,
                machines,
                due,
                ..
            }) => {
                self.db.exec("UPDATE runs SET retry_attempt = ?2, retry_ms = ?3, retry_machines = ?4 WHERE instance = ?1", p![
                        instance,
                        attempt,
                        ms(*due),
                        &serde_json::to_string(machines).unwrap_or_default()
                    ])?;
            }
            RunEvent::RetryDropped { instance } => {
                self.db.exec(
                    "UPDATE runs SET retry_ms = NULL WHERE instance = ?1",
                    p![instance],
                )?;
            }
            RunEvent::Attempt {
                instance,
                first,
                previous,
                attempt,
            } => {
                self.db.exec(
                    "UPDATE runs SET first_instance = ?2, attempt = ?3 WHERE instance = ?1",
                    p![instance, first, attempt],
                )?;
                // The plan is carried out; the slot's ledger row follows its latest attempt.
                self.db.exec(
                    "UPDATE runs SET retry_ms = NULL WHERE instance = ?1",
                    p![previous],
                )?;
                self.db.exec(
                    "UPDATE slots SET instance = ?1 WHERE instance = ?2",
                    p![instance, previous],
                )?;
            }
            RunEvent::NotLaunched { instance, why, .. } => {
                ledger::not_launched(&self.db, instance, why)?;
            }
            RunEvent::Started {
                instance,
                job,
                trigger,
                scheduled,
                at,
                token,
            } => {
                self.db.exec(
                    "INSERT INTO runs (instance, job, trigger, scheduled_ms, started_ms, token, owner)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (instance) DO UPDATE SET job = excluded.job,
                       trigger = excluded.trigger, scheduled_ms = excluded.scheduled_ms,
                       started_ms = excluded.started_ms, token = excluded.token,
                       owner = excluded.owner",
                    p![
                        instance,
                        job,
                        trigger.as_str(),
                        scheduled.map(ms),
                        ms(*at),
                        token,
                        self.me.as_deref().unwrap_or("")
                    ],
                )?;
                if self.me.is_some() {
                    self.owned.insert(instance.clone(), 0);
                }
            }
            RunEvent::Published {
                instance,
                jid,
                machines,
            } => {
                self.db.exec(
                    "UPDATE runs SET jid = ?2 WHERE instance = ?1",
                    p![instance, jid],
                )?;
                for m in machines {
                    self.db.exec(
                        "INSERT INTO targets (instance, machine, state) VALUES (?1, ?2, 'expected')
                             ON CONFLICT DO NOTHING",
                        p![instance, m],
                    )?;
                }
            }
            RunEvent::MachineSkipped { instance, machine } => {
                self.db.exec(
                    "INSERT INTO targets (instance, machine, state, note)
                     VALUES (?1, ?2, 'maintenance', 'Target under maintenance')
                     ON CONFLICT (instance, machine) DO UPDATE SET state = excluded.state,
                       note = excluded.note",
                    p![instance, machine],
                )?;
            }
            RunEvent::Confirmed {
                instance,
                machine,
                at,
            } => {
                self.ensure_target(instance, machine)?;
                self.db.exec(
                    "UPDATE targets SET state = 'running', confirmed_ms = ?3, heartbeat_ms = ?3
                     WHERE instance = ?1 AND machine = ?2 AND state = 'expected'",
                    p![instance, machine, ms(*at)],
                )?;
            }
            RunEvent::LateResult {
                instance,
                machine,
                retcode,
                at,
            } => {
                let line = format!(
                    "[saltpeter: the wrapper reported exit code {retcode} ({}) at {at}, after this target had ended]",
                    crate::engine::meaning(*retcode)
                );
                self.db.exec(
                    "UPDATE targets SET note = CASE WHEN note IS NULL OR note = '' THEN ?3
                                                        ELSE note || ?4 END
                         WHERE instance = ?1 AND machine = ?2",
                    p![instance, machine, &line, &format!("\n{line}")],
                )?;
            }
            RunEvent::Launching { instance, jid } => {
                self.db.exec(
                    "UPDATE runs SET launch_jid = ?2 WHERE instance = ?1",
                    p![instance, jid],
                )?;
            }
            RunEvent::BatchesLeft { instance, batches } => {
                let json = (!batches.is_empty())
                    .then(|| serde_json::to_string(batches).expect("lists of strings"));
                self.db.exec(
                    "UPDATE runs SET batches = ?2 WHERE instance = ?1",
                    p![instance, &json],
                )?;
            }
            RunEvent::Waiting {
                instance,
                machine,
                why,
            } => {
                // The note of a target still in Phase 1 says why it waits; its result's note
                // replaces it.
                self.ensure_target(instance, machine)?;
                self.db.exec(
                    "UPDATE targets SET note = ?3
                         WHERE instance = ?1 AND machine = ?2 AND state = 'expected'",
                    p![instance, machine, why],
                )?;
            }
            RunEvent::WrapperStarted {
                instance,
                machine,
                pid,
                version,
            } => {
                self.ensure_target(instance, machine)?;
                self.db.exec("UPDATE targets SET pid = ?3, wrapper_version = ?4 WHERE instance = ?1 AND machine = ?2", p![instance, machine, pid, version])?;
            }
            RunEvent::Connected {
                instance,
                machine,
                at,
            } => {
                self.ensure_target(instance, machine)?;
                let me = self.me.as_deref().unwrap_or_default();
                self.db.exec(
                    "UPDATE targets SET connections = connections + 1, connected_ms = ?3, connected_to = ?4
                     WHERE instance = ?1 AND machine = ?2",
                    p![instance, machine, ms(*at), me],
                )?;
            }
            RunEvent::Heartbeat {
                instance,
                machine,
                at,
            } => {
                let run = match self.beats.get_mut(instance.as_str()) {
                    Some(run) => run,
                    None => self.beats.entry(instance.clone()).or_default(),
                };
                match run.get_mut(machine.as_str()) {
                    Some(beat) => *beat = ms(*at),
                    None => {
                        run.insert(machine.clone(), ms(*at));
                    }
                }
            }
            RunEvent::Output {
                instance,
                machine,
                data,
                seq,
            } => {
                let known = self
                    .outputs
                    .get(instance.as_str())
                    .is_some_and(|run| run.contains_key(machine.as_str()));
                if !known {
                    self.ensure_target(instance, machine)?;
                    let cap = self.load_output(instance, machine)?;
                    let written = Written {
                        cap,
                        next_seq: None,
                        dirty: false,
                    };
                    let run = self.outputs.entry(instance.clone()).or_default();
                    run.insert(machine.clone(), written);
                }
                let written = self
                    .outputs
                    .get_mut(instance.as_str())
                    .and_then(|run| run.get_mut(machine.as_str()))
                    .expect("inserted");
                if let Some(seq) = seq {
                    written.next_seq = Some(seq + 1);
                }
                let (pos, drop) = written
                    .cap
                    .push(data.len() as u64, self.retention.output_cap as u64);
                if !std::mem::replace(&mut written.dirty, true) {
                    self.dirty.push((instance.clone(), machine.clone()));
                }
                // Written at the end of the batch: a chunk the cap drops within the same batch
                // (a runaway job) is never written at all.
                self.pending_chunks
                    .insert((instance.clone(), machine.clone(), pos), data.clone());
                for p in drop {
                    let pending = (instance.clone(), machine.clone(), p);
                    if self.pending_chunks.remove(&pending).is_none() {
                        self.db.exec(
                            "DELETE FROM chunks WHERE instance = ?1 AND machine = ?2 AND pos = ?3",
                            p![instance, machine, p as i64],
                        )?;
                    }
                }
            }
            RunEvent::TargetEnded {
                instance,
                machine,
                code,
                note,
                at,
            } => {
                self.ensure_target(instance, machine)?;
                // Its last heartbeat is written with its result.
                let beat = self
                    .beats
                    .get_mut(instance.as_str())
                    .and_then(|run| run.remove(machine.as_str()));
                self.db.exec(
                    "UPDATE targets SET state = 'done', code = ?3, note = ?4, ended_ms = ?5,
                           heartbeat_ms = COALESCE(?6, heartbeat_ms)
                         WHERE instance = ?1 AND machine = ?2",
                    p![instance, machine, code, note, ms(*at), beat],
                )?;
            }
            RunEvent::RunEnded {
                instance,
                success,
                succeeded,
                total,
                at,
            } => {
                self.flush_outputs()?;
                self.db.exec("UPDATE runs SET ended_ms = ?2, success = ?3, succeeded = ?4, total = ?5 WHERE instance = ?1", p![instance, ms(*at), success, *succeeded as i64, *total as i64])?;
                self.outputs.remove(instance.as_str());
                self.owned.remove(instance.as_str());
                self.write_beats_of(instance)?;
                ledger::ended(&self.db, instance)?;
                self.prune_job_of(instance)?;
            }
        }
        Ok(())
    }

    /// A target row exists before it is updated (events may name targets Salt's reply did not).
    fn ensure_target(&self, instance: &str, machine: &str) -> Result<(), DbError> {
        self.db.exec(
            "INSERT INTO targets (instance, machine, state)
             SELECT ?1, ?2, 'expected' WHERE EXISTS (SELECT 1 FROM runs WHERE instance = ?1)
             ON CONFLICT DO NOTHING",
            p![instance, machine],
        )?;
        Ok(())
    }

    /// Writes the heartbeats `instance`'s targets sent since they were last written.
    fn write_beats_of(&mut self, instance: &str) -> Result<(), DbError> {
        let Some(run) = self.beats.remove(instance) else {
            return Ok(());
        };
        for (machine, at) in run {
            self.db.exec(
                "UPDATE targets SET heartbeat_ms = ?3 WHERE instance = ?1 AND machine = ?2",
                p![instance, &machine, at],
            )?;
        }
        Ok(())
    }

    /// Writes every pending heartbeat (every [`BEATS_EVERY`], inside the current transaction).
    fn write_beats(&mut self) {
        let runs: Vec<String> = self.beats.keys().cloned().collect();
        for instance in runs {
            if let Err(e) = self.write_beats_of(&instance) {
                tracing::error!(error = %e, "history: cannot store heartbeats");
            }
        }
        self.beats_written = std::time::Instant::now();
    }

    /// The cap's state of a target written to before (by an earlier process).
    fn load_output(&self, instance: &str, machine: &str) -> Result<CapState, DbError> {
        let (total, dropped): (i64, i64) = self
            .db
            .row(
                "SELECT output_bytes, dropped FROM targets WHERE instance = ?1 AND machine = ?2",
                p![instance, machine],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .unwrap_or((0, 0));
        let mut state = CapState {
            total: total as u64,
            dropped: dropped as u64,
            ..CapState::default()
        };
        let chunks = self.db.query(
            "SELECT pos, octet_length(data) FROM chunks WHERE instance = ?1 AND machine = ?2 ORDER BY pos",
            p![instance, machine],
            |r| Ok((r.get::<u64>(0)?, r.get::<u64>(1)?)),
        )?;
        // Head chunks are the contiguous ones from 0 inside the first half of the cap.
        let half = self.retention.output_cap as u64 / 2;
        let mut head_open = true;
        for (pos, len) in chunks {
            if head_open && pos == state.head && pos < half {
                state.head += len;
            } else {
                head_open = false;
                state.tail.push_back((pos, len));
            }
        }
        Ok(state)
    }

    /// A target's output from `from`, and whether the target has ended.
    /// Writes the batch's output; the first storage failure is returned (the batch is then
    /// not stored), any other error is logged.
    fn flush_outputs(&mut self) -> Result<(), DbError> {
        let mut failed = None;
        let mut check = |e: DbError| {
            if e.is_storage_failure() || self.db.kind() == db::Kind::Postgres {
                failed.get_or_insert(e);
            } else {
                tracing::error!(error = %e, "history: cannot store output");
            }
        };
        for ((instance, machine, pos), data) in std::mem::take(&mut self.pending_chunks) {
            if let Err(e) = self.db.exec(
                "INSERT INTO chunks (instance, machine, pos, data) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (instance, machine, pos) DO UPDATE SET data = excluded.data",
                p![&instance, &machine, pos as i64, &data],
            ) {
                check(e);
            }
        }
        for (instance, machine) in std::mem::take(&mut self.dirty) {
            let Some(written) = self
                .outputs
                .get_mut(&instance)
                .and_then(|run| run.get_mut(&machine))
            else {
                continue;
            };
            written.dirty = false;
            let (total, dropped) = (written.cap.total as i64, written.cap.dropped as i64);
            let next_seq = written.next_seq;
            if let Err(e) = self.db.exec(
                "UPDATE targets SET output_bytes = ?3, dropped = ?4, next_seq = COALESCE(?5, next_seq)
                 WHERE instance = ?1 AND machine = ?2",
                p![&instance, &machine, total, dropped, next_seq],
            ) {
                check(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn answer(&mut self, q: Query) -> Option<Box<dyn FnOnce()>> {
        fn reply<T: 'static>(tx: oneshot::Sender<T>, v: T) -> Option<Box<dyn FnOnce()>> {
            Some(Box::new(move || {
                let _ = tx.send(v);
            }))
        }
        let log = |e: &DbError| {
            tracing::error!(error = %e, "history: query failed");
        };
        match q {
            Query::LastRuns(tx) => {
                let rows = self
                    .select_runs(
                        &format!("SELECT {RUN_COLUMNS} FROM runs r WHERE started_ms = (SELECT MAX(started_ms) FROM runs WHERE job = r.job)"),
                        p![],
                    )
                    .inspect_err(log)
                    .unwrap_or_default();
                reply(tx, rows.into_iter().map(|r| (r.job.clone(), r)).collect())
            }
            Query::Runs {
                job,
                before,
                limit,
                reply: tx,
            } => {
                let rows = match before {
                    Some(b) => self.select_runs(
                        &format!("SELECT {RUN_COLUMNS} FROM runs r WHERE job = ?1 AND (started_ms, instance) <
                           (SELECT started_ms, instance FROM runs WHERE instance = ?2)
                         ORDER BY started_ms DESC, instance DESC LIMIT ?3"),
                        p![&job, &b, limit as i64],
                    ),
                    None => self.select_runs(
                        &format!("SELECT {RUN_COLUMNS} FROM runs r WHERE job = ?1 ORDER BY started_ms DESC, instance DESC LIMIT ?2"),
                        p![&job, limit as i64],
                    ),
                };
                reply(tx, rows.inspect_err(log).unwrap_or_default())
            }
            Query::Run {
                instance,
                reply: tx,
            } => reply(
                tx,
                self.run_detail(&instance).inspect_err(log).ok().flatten(),
            ),
            Query::Output {
                instance,
                machine,
                offset,
                reply: tx,
            } => reply(
                tx,
                read_output(&self.db, &instance, &machine, offset)
                    .inspect_err(log)
                    .ok()
                    .flatten(),
            ),
            Query::Claim {
                claims,
                notices,
                by,
                reply: tx,
            } => {
                let result = ledger::claim(&self.db, &claims, &notices, &by).map_err(|e| {
                    tracing::error!(error = %e, "history: cannot claim slots");
                    HistoryError::NotStored(e.to_string())
                });
                if result.is_ok() {
                    // Its own transaction, after the batch: views hear of it as of a commit.
                    self.serial += 1;
                    let notice = Committed {
                        serial: self.serial,
                        slots: claims.iter().map(|c| c.job.clone()).collect(),
                        deliveries: notices
                            .iter()
                            .flatten()
                            .any(|n| n.deliveries.iter().any(|d| !d.suppressed)),
                        ..Committed::default()
                    };
                    let _ = self.commits.send(Arc::new(notice));
                }
                reply(tx, result)
            }
            Query::Slots {
                job,
                filter,
                limit,
                reply: tx,
            } => reply(
                tx,
                ledger::slots(&self.db, &job, &filter, limit)
                    .inspect_err(log)
                    .unwrap_or_default(),
            ),
            Query::Planned {
                jobs,
                at,
                reply: tx,
            } => reply(
                tx,
                ledger::planned(&self.db, &jobs, at).map_err(|e| {
                    tracing::error!(error = %e, "history: cannot note the jobs planned afresh");
                    HistoryError::NotStored(e.to_string())
                }),
            ),
            Query::Heads { job, reply: tx } => reply(
                tx,
                ledger::heads(&self.db, job.as_deref())
                    .inspect_err(log)
                    .unwrap_or_default(),
            ),
            Query::Skips {
                job,
                limit,
                reply: tx,
            } => {
                let rows = self.db.query(
                    "SELECT job, claimed_ms, reason, detail FROM slots WHERE job = ?1 AND state = 'skipped' ORDER BY at_ms DESC LIMIT ?2",
                    p![&job, limit as i64],
                    |r| {
                        Ok(SkipRow {
                            job: r.get(0)?,
                            at: iso(r.get(1)?).unwrap_or_default(),
                            reason: r.get(2)?,
                            detail: r.get(3)?,
                        })
                    },
                );
                reply(tx, rows.inspect_err(log).unwrap_or_default())
            }
            Query::InFlight(tx) => reply(tx, self.in_flight().inspect_err(log).unwrap_or_default()),
            Query::Maintenance(tx) => reply(tx, self.maintenance()),
            Query::SetMaintenance {
                machine,
                on,
                reply: tx,
            } => {
                let key = machine.unwrap_or_else(|| "*".into());
                let r = if on {
                    self.db.exec(
                        "INSERT INTO maintenance (machine) VALUES (?1) ON CONFLICT DO NOTHING",
                        p![&key],
                    )
                } else {
                    self.db
                        .exec("DELETE FROM maintenance WHERE machine = ?1", p![&key])
                };
                if let Err(e) = r {
                    log(&e);
                }
                reply(tx, self.maintenance())
            }
            Query::Size(tx) => reply(tx, self.db.size().inspect_err(log).unwrap_or(0)),
            // Answered after the commit, with its outcome (see `serve`).
            Query::Flush(tx) => reply(tx, Ok(())),
            Query::Register {
                me,
                lease_ms,
                reply: tx,
            } => {
                let held = self.in_tx(|db| fleet::register(db, &me, lease_ms));
                let result = held.map(|(held, others)| {
                    self.owned = held.into_iter().collect();
                    self.me = Some(me.name.clone());
                    others
                });
                reply(
                    tx,
                    result.map_err(|e| HistoryError::NotStored(e.to_string())),
                )
            }
            Query::Beat {
                lease_ms,
                reply: tx,
            } => reply(
                tx,
                self.beat(lease_ms)
                    .map_err(|e| HistoryError::NotStored(e.to_string())),
            ),
            Query::ApiTokens(tx) => {
                reply(tx, tokens::digests(&self.db).map_err(HistoryError::from))
            }
            Query::Daemons {
                lease_ms,
                reply: tx,
            } => reply(
                tx,
                fleet::daemons(&self.db, lease_ms).map_err(HistoryError::from),
            ),
            Query::OwnerOf {
                instance,
                reply: tx,
            } => reply(
                tx,
                fleet::owner_of(&self.db, &instance).map_err(HistoryError::from),
            ),
            Query::SendCommand {
                daemon,
                command,
                reply: tx,
            } => reply(
                tx,
                self.in_tx(|db| fleet::send_command(db, &daemon, &command))
                    .map_err(|e| HistoryError::NotStored(e.to_string())),
            ),
            Query::CommandDone {
                id,
                outcome,
                reply: tx,
            } => reply(
                tx,
                fleet::command_done(&self.db, id, &outcome)
                    .map_err(|e| HistoryError::NotStored(e.to_string())),
            ),
            Query::Commands(tx) => reply(
                tx,
                match &self.me {
                    Some(me) => fleet::pending_commands(&self.db, me).map_err(HistoryError::from),
                    None => Ok(Vec::new()),
                },
            ),
            Query::CommandOutcome { id, reply: tx } => reply(
                tx,
                fleet::command_outcome(&self.db, id).map_err(HistoryError::from),
            ),
            Query::PendingRetries(tx) => {
                let rows = self.db.query(
                        "SELECT job, instance, COALESCE(first_instance, instance), retry_attempt, scheduled_ms,
                                retry_machines, retry_ms
                         FROM runs WHERE retry_ms IS NOT NULL ORDER BY retry_ms",
                    p![],
                    |r| {
                        let machines: Option<String> = r.get(5)?;
                        Ok(RetryPlan {
                            job: r.get(0)?,
                            previous: r.get(1)?,
                            first: r.get(2)?,
                            attempt: r.get(3)?,
                            slot: r
                                .get::<Option<i64>>(4)?
                                .and_then(|m| Timestamp::from_millisecond(m).ok()),
                            machines: machines
                                .and_then(|m| serde_json::from_str(&m).ok())
                                .unwrap_or_default(),
                            due: Timestamp::from_millisecond(r.get(6)?).unwrap_or_default(),
                        })
                    },
                );
                reply(tx, rows.inspect_err(log).unwrap_or_default())
            }
            Query::Streaks(tx) => reply(
                tx,
                outbox::streaks(&self.db)
                    .inspect_err(log)
                    .unwrap_or_default(),
            ),
            Query::DueDeliveries {
                now_ms,
                limit,
                busy,
                reply: tx,
            } => reply(
                tx,
                outbox::due(&self.db, now_ms, limit, &busy)
                    .map_err(|e| HistoryError::NotStored(e.to_string())),
            ),
            Query::Attempted {
                id,
                outcome,
                at_ms,
                reply: tx,
            } => reply(
                tx,
                outbox::attempted(&self.db, id, &outcome, at_ms).map_err(|e| {
                    tracing::error!(error = %e, "history: cannot record a delivery attempt");
                    HistoryError::NotStored(e.to_string())
                }),
            ),
            Query::Deliveries {
                job,
                before,
                limit,
                reply: tx,
            } => reply(
                tx,
                outbox::list(&self.db, job.as_deref(), before, limit)
                    .inspect_err(log)
                    .unwrap_or_default(),
            ),
            #[cfg(test)]
            Query::Exec(sql, tx) => {
                self.db.batch(&sql).expect("test SQL");
                reply(tx, ())
            }
            Query::Running(tx) => {
                let rows = (|| -> Result<Vec<RunDetail>, DbError> {
                    let ids = self.db.query(
                        "SELECT instance FROM runs WHERE ended_ms IS NULL ORDER BY started_ms",
                        p![],
                        |r| r.get::<String>(0),
                    )?;
                    let mut out = Vec::new();
                    for id in ids {
                        out.extend(self.run_detail(&id)?);
                    }
                    Ok(out)
                })();
                reply(tx, rows.inspect_err(log).unwrap_or_default())
            }
            Query::Timeline {
                from_ms,
                to_ms,
                reply: tx,
            } => {
                let rows = (|| -> Result<Vec<TimelineItem>, DbError> {
                    let mut items = Vec::new();
                    let found = self.db.query(
                        "SELECT r.job, t.machine, t.confirmed_ms, t.ended_ms, t.code, t.instance
                         FROM targets t JOIN runs r ON r.instance = t.instance
                         WHERE (t.confirmed_ms BETWEEN ?1 AND ?2) OR (t.ended_ms BETWEEN ?1 AND ?2)",
                        p![from_ms, to_ms],
                        |r| {
                            Ok((
                                r.get::<String>(0)?,
                                r.get::<String>(1)?,
                                r.get::<Option<i64>>(2)?,
                                r.get::<Option<i64>>(3)?,
                                r.get::<Option<i64>>(4)?,
                                r.get::<String>(5)?,
                            ))
                        },
                    )?;
                    for (cron, machine, start, end, code, instance) in found {
                        let mut push = |at: i64, msg_type, ret_code| {
                            items.push((
                                at,
                                TimelineItem {
                                    cron: cron.clone(),
                                    machine: machine.clone(),
                                    timestamp: iso(Some(at)).unwrap_or_default(),
                                    ret_code,
                                    msg_type,
                                    job_instance: instance.clone(),
                                },
                            ))
                        };
                        if let Some(at) = start.filter(|t| (from_ms..=to_ms).contains(t)) {
                            push(at, "machine_start", None);
                        }
                        if let Some(at) = end.filter(|t| (from_ms..=to_ms).contains(t)) {
                            push(at, "machine_result", code);
                        }
                    }
                    items.sort_by_key(|(at, _)| *at);
                    Ok(items.into_iter().map(|(_, i)| i).collect())
                })();
                reply(tx, rows.inspect_err(log).unwrap_or_default())
            }
        }
    }

    /// Runs `f` in a transaction of its own (between the store's batches).
    fn in_tx<T>(&self, f: impl FnOnce(&Db) -> Result<T, DbError>) -> Result<T, DbError> {
        self.db.begin()?;
        match f(&self.db) {
            Ok(v) => {
                self.db.commit()?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.db.rollback();
                Err(e)
            }
        }
    }

    /// Renews the lease, takes over runs whose owner's lease ran out, and lets go of runs
    /// another daemon took over (see [`Beat`]).
    fn beat(&mut self, lease_ms: i64) -> Result<Beat, DbError> {
        let Some(me) = self.me.clone() else {
            return Ok(Beat::default());
        };
        let rows = self.in_tx(|db| fleet::beat(db, &me, lease_ms))?;
        let now_owned: HashMap<String, i64> = rows.owned.into_iter().collect();
        let lost: Vec<String> = self
            .owned
            .iter()
            .filter(|(instance, g)| now_owned.get(*instance) != Some(*g))
            .map(|(instance, _)| instance.clone())
            .filter(|instance| !rows.adopted.iter().any(|(a, _)| a == instance))
            .collect();
        self.lose(&lost);
        self.owned = now_owned;
        let adopted: HashSet<&str> = rows.adopted.iter().map(|(i, _)| i.as_str()).collect();
        let adopted = if adopted.is_empty() {
            Vec::new()
        } else {
            self.in_flight()?
                .into_iter()
                .filter(|run| adopted.contains(run.instance.as_str()))
                .collect()
        };
        let commands = fleet::pending_commands(&self.db, &me)?;
        let api_tokens = tokens::digests(&self.db)?;
        Ok(Beat {
            api_tokens,
            adopted,
            lost: std::mem::take(&mut self.newly_lost),
            peers: rows.peers,
            commands,
            maintenance: self.maintenance(),
        })
    }

    fn lost_guard(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.shared
            .lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs another daemon holds now: forgotten here, and never acknowledged from here.
    fn lose(&mut self, lost: &[String]) {
        for instance in lost {
            tracing::warn!(%instance, "{instance} was taken over by another daemon; this one no longer acts on it");
            self.owned.remove(instance);
            self.outputs.remove(instance);
            self.beats.remove(instance);
            self.newly_lost.push(instance.clone());
        }
        self.lost_guard().extend(lost.iter().cloned());
    }

    fn maintenance(&self) -> MaintenanceState {
        let mut state = MaintenanceState::default();
        let rows = self
            .db
            .query(
                "SELECT machine FROM maintenance ORDER BY machine",
                p![],
                |r| r.get::<String>(0),
            )
            .unwrap_or_default();
        for m in rows {
            if m == "*" {
                state.global = true;
            } else {
                state.machines.push(m);
            }
        }
        state
    }

    fn select_runs(&self, sql: &str, params: &[db::P<'_>]) -> Result<Vec<RunRow>, DbError> {
        self.db.query(sql, params, |r| {
            let ended: Option<i64> = r.get(5)?;
            Ok(RunRow {
                instance: r.get(0)?,
                job: r.get(1)?,
                trigger: r.get(2)?,
                scheduled_at: iso(r.get(3)?),
                started_at: iso(r.get(4)?).unwrap_or_default(),
                ended_at: iso(ended),
                jid: r.get(6)?,
                success: r.get(7)?,
                succeeded: r.get(8)?,
                total: r.get(9)?,
                running: ended.is_none(),
                attempt: r.get(10)?,
                first_instance: r.get(11)?,
                retry_at: iso(r.get(12)?),
                owner: r.get(13)?,
            })
        })
    }

    fn run_detail(&self, instance: &str) -> Result<Option<RunDetail>, DbError> {
        let Some(run) = self
            .select_runs(
                &format!("SELECT {RUN_COLUMNS} FROM runs r WHERE instance = ?1"),
                p![instance],
            )?
            .pop()
        else {
            return Ok(None);
        };
        let targets = self.db.query(
            "SELECT machine, state, code, note, confirmed_ms, ended_ms, wrapper_version, pid,
                    heartbeat_ms, output_bytes, dropped, connections, connected_to, connected_ms
             FROM targets WHERE instance = ?1 ORDER BY machine",
            p![instance],
            |r| {
                let code: Option<i64> = r.get(2)?;
                Ok(TargetRow {
                    machine: r.get(0)?,
                    state: r.get(1)?,
                    exit_code: code,
                    meaning: code.map(|c| crate::engine::meaning(c).to_string()),
                    note: r.get(3)?,
                    confirmed_at: iso(r.get(4)?),
                    ended_at: iso(r.get(5)?),
                    wrapper_version: r.get(6)?,
                    pid: r.get(7)?,
                    last_heartbeat: iso(r.get(8)?),
                    output_bytes: r.get(9)?,
                    dropped_bytes: r.get(10)?,
                    connections: r.get(11)?,
                    connected_to: r.get(12)?,
                    connected_at: iso(r.get(13)?),
                })
            },
        )?;
        let mut targets = targets;
        // Heartbeats not yet written are the freshest.
        if let Some(beats) = self.beats.get(instance) {
            for t in &mut targets {
                if let Some(at) = beats.get(&t.machine) {
                    t.last_heartbeat = iso(Some(*at));
                }
            }
        }
        Ok(Some(RunDetail { run, targets }))
    }

    fn in_flight(&self) -> Result<Vec<InFlight>, DbError> {
        let runs = self.db.query(
            "SELECT instance, job, token, jid, batches, launch_jid,
                    (SELECT claimed_by FROM slots s WHERE s.instance = runs.instance),
                    started_ms, scheduled_ms
             FROM runs WHERE ended_ms IS NULL AND (?1 = '' OR owner = ?1)",
            p![self.me.as_deref().unwrap_or("")],
            |r| {
                let batches: Option<String> = r.get(4)?;
                let jid: Option<String> = r.get(3)?;
                let launch_jid: Option<String> = r.get(5)?;
                Ok(InFlight {
                    instance: r.get(0)?,
                    job: r.get(1)?,
                    token: r.get(2)?,
                    launching: launch_jid.filter(|l| jid.as_ref() != Some(l)),
                    jid,
                    claimed_by: r.get(6)?,
                    started: Timestamp::from_millisecond(r.get(7)?).ok(),
                    scheduled: r
                        .get::<Option<i64>>(8)?
                        .and_then(|m| Timestamp::from_millisecond(m).ok()),
                    open: Vec::new(),
                    done: Vec::new(),
                    // Written by this module only; unreadable would mean a damaged row.
                    batches: batches
                        .and_then(|j| serde_json::from_str(&j).ok())
                        .unwrap_or_default(),
                })
            },
        )?;
        let mut out = Vec::new();
        for mut run in runs {
            run.open = self.db.query(
                "SELECT machine, state, next_seq FROM targets
                 WHERE instance = ?1 AND state IN ('expected', 'running') ORDER BY machine",
                p![&run.instance],
                |r| {
                    Ok(OpenTarget {
                        machine: r.get(0)?,
                        confirmed: r.get::<String>(1)? == "running",
                        next_seq: r.get(2)?,
                    })
                },
            )?;
            run.done = self.db.query(
                "SELECT machine, code FROM targets WHERE instance = ?1 AND state = 'done' AND code IS NOT NULL",
                p![&run.instance],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            out.push(run);
        }
        Ok(out)
    }

    /// Keeps at most `max_runs_per_job` runs of the job `instance` belongs to.
    fn prune_job_of(&self, instance: &str) -> Result<(), DbError> {
        if self.retention.max_runs_per_job == 0 {
            return Ok(());
        }
        self.db.exec(
            "DELETE FROM runs WHERE job = (SELECT job FROM runs WHERE instance = ?1)
               AND ended_ms IS NOT NULL
               AND instance NOT IN (SELECT instance FROM runs WHERE job = (SELECT job FROM runs WHERE instance = ?1)
                                    ORDER BY started_ms DESC LIMIT ?2)",
            p![instance, self.retention.max_runs_per_job as i64],
        )?;
        Ok(())
    }

    /// Drops runs and ledger rows older than `max_age_days`, and ledger rows past
    /// `max_runs_per_job` per job.
    fn prune(&self) {
        let cutoff = (self.retention.max_age_days > 0)
            .then(|| ms(crate::clock::now()) - (self.retention.max_age_days as i64) * 86_400_000);
        let r = cutoff
            .map_or(Ok(0), |cutoff| {
                self.db.exec(
                    "DELETE FROM runs WHERE ended_ms IS NOT NULL AND started_ms < ?1",
                    p![cutoff],
                )
            })
            .and_then(|_| ledger::prune(&self.db, cutoff, self.retention.max_runs_per_job as usize))
            .and_then(|_| outbox::prune(&self.db, cutoff));
        if let Err(e) = r {
            tracing::error!(error = %e, "history: pruning failed");
        }
    }
}

#[cfg(test)]
mod tests;
